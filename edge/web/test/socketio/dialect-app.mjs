// A signaling client written for a single Node.js + Socket.IO server (the common dialect:
// join-room, room-users, user-joined, offer/answer/ice-candidate with `to`, user-left), run
// unchanged against a Heliograph edge with --socketio. Exits 0 when every step happened in
// time, 1 otherwise (edge/tests/it/socketio.rs runs it).
//
// Usage: node dialect-app.mjs http://EDGE [ROOM]
import { io } from 'socket.io-client';

const [url, room = 'dialect-app'] = process.argv.slice(2);
const DEADLINE_MS = 20_000;

/** The application: what a page of such an app does with its socket. */
function app(name, log) {
  const socket = io(url);
  const peers = new Set();
  socket.on('connect', () => socket.emit('join-room', room));
  // The joiner calls everyone already there.
  socket.on('room-users', (users) => {
    log.push({ name, got: 'room-users', users });
    for (const id of users) {
      peers.add(id);
      socket.emit('offer', { to: id, sdp: `offer from ${name}` });
    }
  });
  socket.on('user-joined', (id) => { peers.add(id); log.push({ name, got: 'user-joined', id }); });
  socket.on('user-left', (id) => { peers.delete(id); log.push({ name, got: 'user-left', id }); });
  socket.on('offer', ({ from, sdp }) => {
    log.push({ name, got: 'offer', from, sdp });
    socket.emit('answer', { to: from, sdp: `answer from ${name}` });
    socket.emit('ice-candidate', { to: from, candidate: { candidate: `candidate from ${name}`, sdpMid: '0' } });
  });
  socket.on('answer', ({ from, sdp }) => {
    log.push({ name, got: 'answer', from, sdp });
    socket.emit('ice-candidate', { to: from, candidate: { candidate: `candidate from ${name}`, sdpMid: '0' } });
  });
  socket.on('ice-candidate', ({ from, candidate }) => log.push({ name, got: 'candidate', from, candidate }));
  return socket;
}

const log = [];
const until = (what, pred) => new Promise((resolve, reject) => {
  const started = Date.now();
  const look = () => {
    const hit = log.find(pred);
    if (hit) return resolve(hit);
    if (Date.now() - started > DEADLINE_MS) return reject(new Error(`no ${what} within ${DEADLINE_MS} ms`));
    setTimeout(look, 20);
  };
  look();
});
const connected = (s) => new Promise((r) => (s.connected ? r() : s.once('connect', r)));
const check = (ok, what) => { if (!ok) throw new Error(`wrong: ${what}`); };

const alice = app('alice', log);
let bob;
try {
  await connected(alice);
  await until('alice in the room', (e) => e.name === 'alice' && e.got === 'room-users');
  check(log.find((e) => e.name === 'alice' && e.got === 'room-users').users.length === 0, 'alice is first');
  bob = app('bob', log);
  await connected(bob);
  const bobUsers = await until('room-users for bob', (e) => e.name === 'bob' && e.got === 'room-users');
  check(JSON.stringify(bobUsers.users) === JSON.stringify([alice.id]), `bob sees alice: ${JSON.stringify(bobUsers)}`);
  await until('user-joined for alice', (e) => e.name === 'alice' && e.got === 'user-joined' && e.id === bob.id);
  const offer = await until('offer at alice', (e) => e.name === 'alice' && e.got === 'offer');
  check(offer.from === bob.id && offer.sdp === 'offer from bob', `offer: ${JSON.stringify(offer)}`);
  const answer = await until('answer at bob', (e) => e.name === 'bob' && e.got === 'answer');
  check(answer.from === alice.id && answer.sdp === 'answer from alice', `answer: ${JSON.stringify(answer)}`);
  const atBob = await until('candidate at bob', (e) => e.name === 'bob' && e.got === 'candidate');
  check(atBob.from === alice.id && atBob.candidate.candidate === 'candidate from alice', `candidate at bob: ${JSON.stringify(atBob)}`);
  const atAlice = await until('candidate at alice', (e) => e.name === 'alice' && e.got === 'candidate');
  check(atAlice.from === bob.id && atAlice.candidate.sdpMid === '0', `candidate at alice: ${JSON.stringify(atAlice)}`);

  // Leaving the room, then disconnecting, are both seen by the others.
  bob.emit('leave-room', room);
  await until('user-left (leave) at alice', (e) => e.name === 'alice' && e.got === 'user-left' && e.id === bob.id);
  const carol = app('carol', log);
  await until('user-joined carol', (e) => e.name === 'alice' && e.got === 'user-joined' && e.id === carol.id);
  const aliceId = alice.id; // (socket.id is unset by the disconnect)
  alice.disconnect();
  await until('user-left (disconnect) at carol', (e) => e.name === 'carol' && e.got === 'user-left' && e.id === aliceId);
  bob.disconnect();
  carol.disconnect();
  console.log(JSON.stringify({ ok: true, events: log.length }));
  process.exit(0);
} catch (e) {
  console.error(`${e.message}\n${log.map((l) => JSON.stringify(l)).join('\n')}`);
  process.exit(1);
}
