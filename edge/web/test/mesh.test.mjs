import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';

import { Heliograph, PeerMesh, isPolite } from '../heliograph.js';
import { FakeClock, FakePeerConnection, FakeWebSocket, flush } from './fakes.mjs';

let clock;

async function setup(selfId, peers, options = {}) {
  const c = new Heliograph({
    WebSocket: FakeWebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0,
    pingInterval: 0,
    initialDelay: 10,
    resume: false,
    ...options,
  });
  const welcome = c.connect('ws://edge.test/ws');
  FakeWebSocket.last.welcome(selfId);
  await welcome;
  const mesh = new PeerMesh(c, 'room', { RTCPeerConnection: FakePeerConnection }).start();
  const events = [];
  for (const t of ['peer', 'channel', 'close', 'error']) mesh.on(t, (e) => events.push([t, e.peer.id, e.reason ?? e.error?.message]));
  const j = c.join('room', { meta: { name: selfId } });
  const ws = FakeWebSocket.last;
  ws.receive({ type: 'joined', room: 'room', ref: ws.lastSent('join').ref, peers });
  await j;
  await flush();
  return { c, mesh, ws, events };
}

const signals = (ws) => ws.sent.filter((m) => m.type === 'signal');

beforeEach(() => {
  FakeWebSocket.reset();
  FakePeerConnection.all = [];
  clock = new FakeClock();
});

test('polite rule is deterministic and antisymmetric', () => {
  assert.equal(isPolite('a', 'b'), true);
  assert.equal(isPolite('b', 'a'), false);
});

test('impolite side opens the channel and offers; ICE config comes from welcome', async () => {
  const { mesh, ws, events } = await setup('zz', [{ id: 'aa', meta: { name: 'A' }, region: 'us' }]);
  const p = mesh.peers.get('aa');
  assert.equal(p.polite, false);
  assert.equal(p.region, 'us');
  assert.deepEqual(p.pc.config.iceServers, [{ urls: ['stun:127.0.0.1:3478'] }]);
  assert.equal(p.pc.channels[0].label, 'data');
  const [offer] = signals(ws);
  assert.equal(offer.kind, 'offer');
  assert.equal(offer.to, 'aa');
  assert.equal(offer.data.type, 'offer');
  ws.receive({ type: 'signal', room: 'room', from: 'aa', kind: 'answer', data: { type: 'answer', sdp: 'ans' } });
  ws.receive({ type: 'signal', room: 'room', from: 'aa', kind: 'candidate', data: { candidate: 'c1' } });
  await flush();
  assert.equal(p.pc.signalingState, 'stable');
  assert.deepEqual(p.pc.candidates, [{ candidate: 'c1' }]);
  p.pc.channels[0].fireOpen();
  assert.deepEqual(events.map((e) => e[0]), ['peer', 'channel']);
  assert.equal(mesh.channel('aa'), p.pc.channels[0]);
  assert.equal(mesh.broadcast('hi'), 1);
});

test('polite side answers offers, and yields on a collision', async () => {
  const { mesh, ws } = await setup('aa', [{ id: 'zz', meta: {}, region: 'eu' }]);
  const p = mesh.peers.get('zz');
  assert.equal(p.polite, true);
  assert.equal(signals(ws).length, 0, 'the polite side waits');
  // Make our own offer, then receive theirs: polite rolls back and answers.
  p.pc.createDataChannel('extra');
  await flush();
  assert.equal(signals(ws).at(-1).kind, 'offer');
  ws.receive({ type: 'signal', room: 'room', from: 'zz', kind: 'offer', data: { type: 'offer', sdp: 'o' } });
  await flush();
  assert.equal(p.pc.rolledBack, true);
  const answer = signals(ws).at(-1);
  assert.equal(answer.kind, 'answer');
  assert.equal(answer.to, 'zz');
});

test('impolite side ignores a colliding offer and its candidates', async () => {
  const { mesh, ws, events } = await setup('zz', [{ id: 'aa', meta: {}, region: 'eu' }]);
  const p = mesh.peers.get('aa');
  assert.equal(p.pc.signalingState, 'have-local-offer');
  ws.receive({ type: 'signal', room: 'room', from: 'aa', kind: 'offer', data: { type: 'offer', sdp: 'o' } });
  ws.receive({ type: 'signal', room: 'room', from: 'aa', kind: 'candidate', data: { candidate: 'c' } });
  await flush();
  assert.equal(p.ignoreOffer, true);
  assert.equal(signals(ws).filter((s) => s.kind === 'answer').length, 0);
  assert.equal(events.filter((e) => e[0] === 'error').length, 0);
});

test('signals are routed per peer and per room', async () => {
  const { mesh, ws } = await setup('mm', [{ id: 'aa', meta: {}, region: 'eu' }, { id: 'zz', meta: {}, region: 'eu' }]);
  ws.receive({ type: 'signal', room: 'room', from: 'zz', kind: 'offer', data: { type: 'offer', sdp: 'from-zz' } });
  ws.receive({ type: 'signal', room: 'other', from: 'aa', kind: 'offer', data: { type: 'offer', sdp: 'other-room' } });
  await flush();
  assert.equal(mesh.peers.get('zz').pc.remoteDescription.sdp, 'from-zz');
  assert.equal(mesh.peers.get('aa').pc.remoteDescription, null);
});

test('a signal from a peer not yet in the roster creates its connection', async () => {
  const { mesh, ws, events } = await setup('aa', []);
  ws.receive({ type: 'signal', room: 'room', from: 'zz', kind: 'offer', data: { type: 'offer', sdp: 'o' } });
  await flush();
  assert.ok(mesh.peers.get('zz'));
  assert.equal(signals(ws).at(-1).kind, 'answer');
  assert.deepEqual(events[0].slice(0, 2), ['peer', 'zz']);
});

test('peer-left closes; a new peer-joined starts a new connection', async () => {
  const { mesh, ws, events } = await setup('aa', [{ id: 'zz', meta: {}, region: 'eu' }]);
  const old = mesh.peers.get('zz').pc;
  ws.receive({ type: 'peer-left', room: 'room', peer_id: 'zz', reason: 'disconnected' });
  assert.equal(old.closed, true);
  assert.equal(mesh.peers.size, 0);
  ws.receive({ type: 'peer-joined', room: 'room', peer: { id: 'zy', meta: {}, region: 'eu' } });
  assert.ok(mesh.peers.get('zy'));
  assert.deepEqual(events.map((e) => e.slice(0, 3)), [
    ['peer', 'zz', undefined], ['close', 'zz', 'disconnected'], ['peer', 'zy', undefined]]);
});

test('unknown-peer errors for our signals close that peer', async () => {
  const { mesh, ws } = await setup('zz', [{ id: 'aa', meta: {}, region: 'eu' }]);
  const offer = signals(ws)[0];
  ws.receive({ type: 'error', code: 'unknown-peer', message: 'gone', ref: offer.ref });
  assert.equal(mesh.peers.size, 0);
});

test('after a reconnect with a new id, old connections close and the roster is rebuilt', async () => {
  const { c, mesh, events } = await setup('mm', [{ id: 'aa', meta: {}, region: 'eu' }]);
  const old = mesh.peers.get('aa').pc;
  FakeWebSocket.last.serverClose(1001);
  assert.equal(mesh.peers.size, 1, 'peer connections survive a signaling outage');
  clock.advance(10);
  const ws = FakeWebSocket.last;
  ws.welcome('mn');
  assert.equal(old.closed, true);
  const join = ws.lastSent('join');
  ws.receive({ type: 'joined', room: 'room', ref: join.ref, peers: [{ id: 'ab', meta: {}, region: 'eu' }] });
  await flush();
  assert.equal(c.peerId, 'mn');
  assert.deepEqual([...mesh.peers.keys()], ['ab']);
  assert.ok(events.some((e) => e[0] === 'close' && e[2] === 'reconnected'));
});

test('a resumed session keeps its connections; a failed resume rebuilds them', async () => {
  const { c, mesh, events } = await setup('mm', [{ id: 'aa', meta: {}, region: 'eu' }], { resume: true });
  const old = mesh.peers.get('aa').pc;
  FakeWebSocket.last.serverClose(1006);
  clock.advance(10);
  let ws = FakeWebSocket.last;
  ws.welcome('a0'); // the fresh session's id, polite towards 'ab' where 'mm' is not
  assert.equal(old.closed, false, 'not while the resume is in flight');
  ws.receive({ type: 'peer-joined', room: 'room', peer: { id: 'ab', meta: {}, region: 'eu' }, seq: 5 });
  ws.receive({ type: 'resumed', peer_id: 'mm', replayed: 1, resume_token: 't2', ref: ws.sent[0].ref, seq: 6 });
  await flush();
  assert.equal(c.peerId, 'mm');
  assert.equal(old.closed, false);
  assert.deepEqual([...mesh.peers.keys()].sort(), ['aa', 'ab']);
  assert.equal(mesh.peers.get('ab').polite, false, 'negotiated as mm, the resumed id');
  // The next outage outlives the session: a fresh id, so every connection is rebuilt.
  ws.serverClose(1006);
  clock.advance(10);
  ws = FakeWebSocket.last;
  ws.welcome('mo');
  ws.receive({ type: 'error', code: 'resume-failed', message: 'gone', ref: ws.sent[0].ref });
  const join = ws.lastSent('join');
  ws.receive({ type: 'joined', room: 'room', ref: join.ref, peers: [{ id: 'aa', meta: {}, region: 'eu' }] });
  await flush();
  assert.equal(old.closed, true);
  assert.ok(events.some((e) => e[0] === 'close' && e[2] === 'reconnected'));
  assert.notEqual(mesh.peers.get('aa').pc, old);
});

test('close() stops the mesh', async () => {
  const { mesh, ws } = await setup('aa', [{ id: 'zz', meta: {}, region: 'eu' }]);
  const pc = mesh.peers.get('zz').pc;
  mesh.close();
  assert.equal(pc.closed, true);
  ws.receive({ type: 'peer-joined', room: 'room', peer: { id: 'zy', meta: {}, region: 'eu' } });
  assert.equal(mesh.peers.size, 0);
});
