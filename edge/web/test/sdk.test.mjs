import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';

import { createHmac } from 'node:crypto';

import { Heliograph, HeliographError, contactHash } from '../heliograph.js';
import { FakeClock, FakeWebSocket, flush } from './fakes.mjs';

let clock;

function client(options = {}) {
  return new Heliograph({
    WebSocket: FakeWebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    now: () => clock.now,
    pingInterval: 0,
    ...options,
  });
}

async function connected(options) {
  const c = client(options);
  const welcome = c.connect('ws://edge.test/ws');
  FakeWebSocket.last.welcome('p1');
  await welcome;
  return c;
}

beforeEach(() => {
  FakeWebSocket.reset();
  clock = new FakeClock();
});

test('connect uses the subprotocol and resolves with welcome', async () => {
  const c = client();
  const states = [];
  c.on('state', (e) => states.push(e.state));
  const p = c.connect('ws://edge.test/ws');
  const ws = FakeWebSocket.last;
  assert.equal(ws.url, 'ws://edge.test/ws');
  assert.equal(ws.protocol, 'heliograph.v1');
  ws.welcome('p1');
  const welcome = await p;
  assert.equal(welcome.peer_id, 'p1');
  assert.equal(c.peerId, 'p1');
  assert.equal(c.region, 'eu');
  assert.equal(c.edge, 'edge-1');
  assert.deepEqual(c.iceServers, [{ urls: ['stun:127.0.0.1:3478'] }]);
  assert.deepEqual(states, ['connecting', 'open']);
});

test('join resolves on the joined reply with the matching ref only', async () => {
  const c = await connected();
  const ws = FakeWebSocket.last;
  const a = c.join('alpha', { meta: { name: 'A' } });
  const b = c.join('beta');
  const [ja, jb] = ws.sent;
  assert.equal(ja.type, 'join');
  assert.deepEqual(ja.meta, { name: 'A' });
  assert.equal(jb.meta, undefined);
  assert.notEqual(ja.ref, jb.ref);
  let bDone = false;
  b.then(() => { bDone = true; });
  ws.receive({ type: 'joined', room: 'alpha', ref: ja.ref, peers: [{ id: 'p2', meta: {}, region: 'us' }] });
  assert.deepEqual((await a).map((p) => p.id), ['p2']);
  await flush();
  assert.equal(bDone, false, 'beta is still pending');
  ws.receive({ type: 'joined', room: 'beta', ref: jb.ref, peers: [] });
  assert.deepEqual(await b, []);
  assert.deepEqual(c.peers('alpha').map((p) => p.id), ['p2']);
});

test('an error with a ref rejects the matching request and is emitted', async () => {
  const c = await connected();
  const ws = FakeWebSocket.last;
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const p = c.join('full-room');
  const ref = ws.lastSent('join').ref;
  ws.receive({ type: 'error', code: 'room-full', message: 'the room is full', ref });
  await assert.rejects(p, (e) => e instanceof HeliographError && e.code === 'room-full'
    && e.request.room === 'full-room');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].request.type, 'join');
  assert.equal(c.rooms.has('full-room'), false, 'a failed join is not rejoined later');
});

test('leave resolves on left; roster events update the room', async () => {
  const c = await connected();
  const ws = FakeWebSocket.last;
  const j = c.join('r');
  ws.receive({ type: 'joined', room: 'r', ref: ws.lastSent('join').ref, peers: [] });
  await j;
  const seen = [];
  c.on('peer-joined', (e) => seen.push(['+', e.peer.id]));
  c.on('peer-left', (e) => seen.push(['-', e.peerId, e.reason]));
  ws.receive({ type: 'peer-joined', room: 'r', peer: { id: 'p9', meta: { name: 'Z' }, region: 'ap' } });
  assert.deepEqual(c.peers('r').map((p) => p.id), ['p9']);
  ws.receive({ type: 'peer-left', room: 'r', peer_id: 'p9', reason: 'left' });
  assert.deepEqual(c.peers('r'), []);
  assert.deepEqual(seen, [['+', 'p9'], ['-', 'p9', 'left']]);
  const l = c.leave('r');
  const msg = ws.lastSent('leave');
  ws.receive({ type: 'left', room: 'r', ref: msg.ref });
  await l;
  assert.equal(c.rooms.has('r'), false);
});

test('signal sends a ref; errors and expiry carry the original request', async () => {
  const c = await connected();
  const ws = FakeWebSocket.last;
  const errors = [];
  const expired = [];
  c.on('error', (e) => errors.push(e));
  c.on('expired', (e) => expired.push(e));
  const ref = c.signal('r', 'p2', 'offer', { sdp: 'x' });
  assert.deepEqual(ws.lastSent('signal'), { type: 'signal', room: 'r', to: 'p2', kind: 'offer', data: { sdp: 'x' }, ref });
  ws.receive({ type: 'error', code: 'unknown-peer', message: 'no such peer', ref });
  assert.equal(errors[0].code, 'unknown-peer');
  assert.equal(errors[0].request.to, 'p2');
  const ref2 = c.signal('r', 'p3', 'custom', { hi: 1 });
  ws.receive({ type: 'expired', to: 'p3', ref: ref2 });
  assert.equal(expired[0].to, 'p3');
  assert.equal(expired[0].request.kind, 'custom');
  const got = [];
  c.on('signal', (s) => got.push(s));
  ws.receive({ type: 'signal', room: 'r', from: 'p2', kind: 'answer', data: { sdp: 'y' } });
  assert.deepEqual(got, [{ room: 'r', from: 'p2', kind: 'answer', data: { sdp: 'y' } }]);
});

test('requests time out on the injected clock', async () => {
  const c = await connected({ requestTimeout: 1000 });
  const p = c.join('slow');
  clock.advance(999);
  await flush();
  clock.advance(1);
  await assert.rejects(p, (e) => e.code === 'timeout');
});

test('ping resolves on the matching pong with the round trip', async () => {
  const c = await connected();
  const ws = FakeWebSocket.last;
  const p = c.ping();
  clock.advance(42);
  ws.receive({ type: 'pong', ref: ws.lastSent('ping').ref });
  assert.equal(await p, 42);
});

test('reconnects with exponential backoff and jitter, also after 1001', async () => {
  const c = client({ initialDelay: 100, maxDelay: 1000, jitter: 0.5, random: () => 1 });
  const delays = [];
  c.on('reconnecting', (e) => delays.push(e.delay));
  const states = [];
  c.on('state', (e) => states.push(e.state));
  c.connect('ws://edge.test/ws');
  FakeWebSocket.last.welcome('p1');
  FakeWebSocket.last.serverClose(1001, 'server shutting down');
  assert.equal(c.state, 'reconnecting');
  assert.equal(FakeWebSocket.all.length, 1);
  // Each failed attempt doubles the delay (random() = 1 takes the full jitter: half).
  for (let i = 0; i < 5; i++) {
    clock.advance(delays.at(-1) - 1);
    assert.equal(FakeWebSocket.all.length, i + 1, 'not before the delay');
    clock.advance(1);
    assert.equal(FakeWebSocket.all.length, i + 2);
    FakeWebSocket.last.serverClose(1006);
  }
  assert.deepEqual(delays, [50, 100, 200, 400, 500, 500]);
  // A welcome resets the backoff.
  clock.advance(delays.at(-1));
  FakeWebSocket.last.welcome('p2');
  FakeWebSocket.last.serverClose(1006);
  assert.equal(delays.at(-1), 50);
  assert.equal(states[0], 'connecting');
  assert.ok(states.includes('reconnecting'));
});

test('jitter draws from the configured range', async () => {
  const c = client({ initialDelay: 1000, jitter: 0.5, random: () => 0 });
  const delays = [];
  c.on('reconnecting', (e) => delays.push(e.delay));
  c.connect('ws://edge.test/ws');
  FakeWebSocket.last.serverClose(1006);
  assert.deepEqual(delays, [1000]);
});

test('close() stops reconnecting and rejects pending requests', async () => {
  const c = await connected();
  const p = c.ping();
  c.close();
  await assert.rejects(p, (e) => e.code === 'closed');
  assert.equal(c.state, 'closed');
  clock.advance(60000);
  assert.equal(FakeWebSocket.all.length, 1);
  assert.equal(FakeWebSocket.last.closedWith.code, 1000);
});

test('after a reconnect it tries resume, then rejoins its rooms on resume-failed', async () => {
  const c = await connected({ initialDelay: 10 });
  let ws = FakeWebSocket.last;
  const j = c.join('r', { meta: { name: 'A', edge: 'edge-1' } });
  ws.receive({ type: 'joined', room: 'r', ref: ws.lastSent('join').ref, peers: [{ id: 'p2', meta: {}, region: 'eu' }] });
  await j;
  const rejoined = [];
  c.on('rejoined', (e) => rejoined.push(e.room));
  const errors = [];
  c.on('error', (e) => errors.push(e));
  ws.serverClose(1001);
  assert.deepEqual(c.peers('r'), [], 'the roster is unknown while disconnected');
  clock.advance(10);
  ws = FakeWebSocket.last;
  ws.welcome('p1b');
  assert.equal(c.peerId, 'p1b');
  const resume = ws.sent[0];
  assert.equal(resume.type, 'resume');
  assert.equal(resume.token, 'tok-p1');
  assert.equal(ws.sent.length, 1, 'no join before the resume is answered');
  ws.receive({ type: 'error', code: 'resume-failed', message: 'no sessions', ref: resume.ref });
  await flush();
  const join = ws.lastSent('join');
  assert.equal(join.room, 'r');
  assert.deepEqual(join.meta, { name: 'A', edge: 'edge-1' });
  ws.receive({ type: 'joined', room: 'r', ref: join.ref, peers: [{ id: 'p2', meta: {}, region: 'eu' }] });
  await flush();
  assert.deepEqual(rejoined, ['r']);
  assert.deepEqual(errors, [], 'resume-failed is expected, not an error event');
  assert.deepEqual(c.peers('r').map((p) => p.id), ['p2']);
});

test('a successful resume (future edges) keeps the rooms without rejoining', async () => {
  const c = await connected({ initialDelay: 10 });
  let ws = FakeWebSocket.last;
  const j = c.join('r');
  ws.receive({ type: 'joined', room: 'r', ref: ws.lastSent('join').ref, peers: [] });
  await j;
  ws.serverClose(1006);
  clock.advance(10);
  ws = FakeWebSocket.last;
  ws.welcome('p1b');
  const resumed = [];
  c.on('resumed', (e) => resumed.push(e));
  ws.receive({ type: 'resumed', ref: ws.sent[0].ref, peer_id: 'p1' });
  await flush();
  assert.equal(resumed.length, 1);
  assert.equal(c.peerId, 'p1');
  assert.equal(ws.lastSent('join'), undefined);
});

test('a join made while disconnected is sent after the next welcome', async () => {
  const c = await connected({ initialDelay: 10, resume: false });
  let ws = FakeWebSocket.last;
  ws.serverClose(1006);
  const p = c.join('later');
  clock.advance(10);
  ws = FakeWebSocket.last;
  assert.equal(ws.sent.length, 0);
  ws.welcome('p5');
  const join = ws.lastSent('join');
  assert.equal(join.room, 'later');
  assert.equal(ws.sent.filter((m) => m.type === 'join').length, 1, 'sent once');
  ws.receive({ type: 'joined', room: 'later', ref: join.ref, peers: [] });
  assert.deepEqual(await p, []);
});

test('a join in flight when the socket drops is re-sent and still resolves', async () => {
  const c = await connected({ initialDelay: 10, resume: false });
  let ws = FakeWebSocket.last;
  const p = c.join('r');
  ws.serverClose(1006);
  clock.advance(10);
  ws = FakeWebSocket.last;
  ws.welcome('p6');
  const joins = ws.sent.filter((m) => m.type === 'join');
  assert.equal(joins.length, 1);
  ws.receive({ type: 'joined', room: 'r', ref: joins[0].ref, peers: [] });
  assert.deepEqual(await p, []);
});

test('leave while disconnected resolves at once and is not rejoined', async () => {
  const c = await connected({ initialDelay: 10, resume: false });
  let ws = FakeWebSocket.last;
  const j = c.join('r');
  ws.receive({ type: 'joined', room: 'r', ref: ws.lastSent('join').ref, peers: [] });
  await j;
  ws.serverClose(1006);
  await c.leave('r');
  clock.advance(10);
  ws = FakeWebSocket.last;
  ws.welcome('p7');
  assert.equal(ws.sent.length, 0);
});

test('a rejoin refused with unavailable is retried', async () => {
  const c = await connected({ initialDelay: 10, resume: false });
  let ws = FakeWebSocket.last;
  const j = c.join('r');
  ws.receive({ type: 'joined', room: 'r', ref: ws.lastSent('join').ref, peers: [] });
  await j;
  ws.serverClose(1006);
  clock.advance(10);
  ws = FakeWebSocket.last;
  ws.welcome('p8');
  const first = ws.lastSent('join');
  ws.receive({ type: 'error', code: 'unavailable', message: 'retry', ref: first.ref });
  await flush();
  clock.advance(10);
  const second = ws.lastSent('join');
  assert.notEqual(second.ref, first.ref);
  assert.equal(second.room, 'r');
});

test('client pings detect a dead link and reconnect', async () => {
  const c = await connected({ pingInterval: 1000, pingTimeout: 500, initialDelay: 10 });
  const ws = FakeWebSocket.last;
  clock.advance(1000);
  const ping = ws.lastSent('ping');
  assert.ok(ping);
  ws.receive({ type: 'pong', ref: ping.ref });
  await flush();
  clock.advance(1000);
  assert.equal(ws.sent.filter((m) => m.type === 'ping').length, 2);
  clock.advance(500); // no pong this time
  assert.equal(c.state, 'reconnecting');
  assert.equal(ws.closedWith.code, 4000);
});

test('unknown message types and bad frames do not break the client', async () => {
  const c = await connected();
  const ws = FakeWebSocket.last;
  const errors = [];
  c.on('error', (e) => errors.push(e.code));
  ws.receive({ type: 'from-the-future', x: 1 });
  ws.receive('not json');
  assert.deepEqual(errors, ['bad-frame']);
  assert.equal(c.state, 'open');
});

test('a meta function is evaluated at every (re)join', async () => {
  const c = await connected({ initialDelay: 10, resume: false });
  let ws = FakeWebSocket.last;
  const j = c.join('r', { meta: (cl) => ({ name: 'A', edge: cl.edge }) });
  assert.deepEqual(ws.lastSent('join').meta, { name: 'A', edge: 'edge-1' });
  ws.receive({ type: 'joined', room: 'r', ref: ws.lastSent('join').ref, peers: [] });
  await j;
  ws.serverClose(1001);
  clock.advance(10);
  ws = FakeWebSocket.last;
  ws.welcome('p2', { edge: 'edge-2' });
  assert.deepEqual(ws.lastSent('join').meta, { name: 'A', edge: 'edge-2' });
});

// --- resumable sessions --------------------------------------------------------------------

/** A client (p1) in room `r` with peer p2; its session is at seq 2. */
async function inRoom(options = {}) {
  const c = client({ initialDelay: 10, ...options });
  const welcome = c.connect('ws://edge.test/ws');
  const ws = FakeWebSocket.last;
  ws.welcome('p1', { seq: 1 });
  await welcome;
  const j = c.join('r');
  ws.receive({ type: 'joined', room: 'r', ref: ws.lastSent('join').ref, peers: [{ id: 'p2', meta: {}, region: 'eu' }], seq: 2 });
  await j;
  return { c, ws };
}

/** Closes `ws` unexpectedly and answers the reconnect with a fresh welcome (p1b, seq 1). */
function reconnect(c, ws, code = 1006) {
  ws.serverClose(code);
  clock.advance(10);
  const next = FakeWebSocket.last;
  assert.notEqual(next, ws, 'a new socket');
  next.welcome('p1b', { seq: 1 });
  return next;
}

const sig = (seq, data) => ({ type: 'signal', room: 'r', from: 'p2', kind: 'custom', data, seq });

test('seq: lastSeq follows the frames, duplicates are dropped, frames without seq pass', async () => {
  const { c, ws } = await inRoom();
  assert.equal(c.lastSeq, 2);
  const got = [];
  const messages = [];
  c.on('signal', (s) => got.push(s.data));
  c.on('message', (m) => messages.push(m.type));
  ws.receive(sig(3, 'a'));
  ws.receive(sig(3, 'a again'));
  ws.receive(sig(2, 'older'));
  ws.receive({ type: 'signal', room: 'r', from: 'p2', kind: 'custom', data: 'unnumbered' });
  assert.equal(c.lastSeq, 3, 'a frame without seq leaves lastSeq alone');
  ws.receive(sig(4, 'b'));
  assert.deepEqual(got, ['a', 'unnumbered', 'b']);
  assert.deepEqual(messages, ['signal', 'signal', 'signal'], 'dropped frames are not even messages');
  assert.equal(c.lastSeq, 4);
});

test('requests acknowledge the last frame read (a resume does not: see the next test)', async () => {
  const { c, ws } = await inRoom();
  ws.receive(sig(3, 'a'));
  c.signal('r', 'p2', 'offer', { sdp: 'x' });
  const sent = ws.sent.at(-1);
  assert.equal(sent.type, 'signal');
  assert.equal(sent.ack, 3, 'frames up to 3 were read');
});

test('after an unexpected close the first request is resume with the old token and last_seq', async () => {
  const { c, ws } = await inRoom();
  ws.receive(sig(5, 'x'));
  const welcomes = [];
  c.on('welcome', (w) => welcomes.push(w));
  ws.serverClose(1006);
  c.join('later'); // made while disconnected: must wait for the resume's outcome
  clock.advance(10);
  const ws2 = FakeWebSocket.last;
  ws2.welcome('p1b', { seq: 1 });
  assert.equal(ws2.sent.length, 1, 'nothing but the resume while it is in flight');
  const resume = ws2.sent[0];
  assert.deepEqual(resume, { type: 'resume', token: 'tok-p1', last_seq: 5, ref: resume.ref });
  assert.equal(welcomes[0].reconnect, true);
  assert.equal(welcomes[0].resuming, true);
  c.join('even-later');
  await flush();
  assert.equal(ws2.sent.length, 1, 'no join, no rejoin');
});

test('a successful resume delivers the replay, keeps rooms and peer id, stores the new token', async () => {
  const { c, ws } = await inRoom();
  ws.receive(sig(3, 'before'));
  const ws2 = reconnect(c, ws);
  const resume = ws2.sent[0];
  assert.equal(resume.last_seq, 3);
  const got = [];
  const roster = [];
  const resumed = [];
  const rejoined = [];
  c.on('signal', (s) => got.push(s.data));
  c.on('peer-joined', (e) => roster.push(['+', e.peer.id]));
  c.on('peer-left', (e) => roster.push(['-', e.peerId]));
  c.on('resumed', (e) => resumed.push(e));
  c.on('rejoined', (e) => rejoined.push(e.room));
  // Missed frames of the old session (original seqs), a duplicate, queued signals, resumed.
  ws2.receive({ type: 'peer-joined', room: 'r', peer: { id: 'p3', meta: {}, region: 'us' }, seq: 4 });
  ws2.receive(sig(3, 'before')); // already processed on the old socket
  ws2.receive(sig(5, 'missed'));
  ws2.receive({ type: 'peer-left', room: 'r', peer_id: 'p2', reason: 'left', seq: 6 });
  ws2.receive(sig(7, 'queued'));
  ws2.receive({ type: 'resumed', peer_id: 'p1', replayed: 3, resume_token: 'tok-p1-2', ref: resume.ref, seq: 8 });
  await flush();
  assert.deepEqual(got, ['missed', 'queued']);
  assert.deepEqual(roster, [['+', 'p3'], ['-', 'p2']]);
  assert.deepEqual(c.peers('r').map((p) => p.id), ['p3'], 'the old roster, updated by the replay');
  assert.equal(c.peerId, 'p1');
  assert.equal(c.resumeToken, 'tok-p1-2');
  assert.equal(c.lastSeq, 8);
  assert.deepEqual(resumed, [{ peerId: 'p1', replayed: 3 }]);
  assert.deepEqual(rejoined, []);
  assert.equal(ws2.lastSent('join'), undefined, 'rooms are not re-joined');
  assert.equal([...c.pending.values()].some((r) => r.msg.type === 'resume'), false, 'resume settled');
  assert.deepEqual([...c.rooms.keys()], ['r']);
  // The next resume uses the new token and the resumed session's seq.
  const ws3 = reconnect(c, ws2);
  assert.deepEqual(ws3.sent[0], { type: 'resume', token: 'tok-p1-2', last_seq: 8, ref: ws3.sent[0].ref });
});

test('requests queued during a resume are sent once it succeeds', async () => {
  const { c, ws } = await inRoom();
  ws.serverClose(1006);
  const p = c.join('s');
  clock.advance(10);
  const ws2 = FakeWebSocket.last;
  ws2.welcome('p1b', { seq: 1 });
  ws2.receive({ type: 'resumed', peer_id: 'p1', replayed: 0, resume_token: 't2', ref: ws2.sent[0].ref, seq: 3 });
  const join = ws2.lastSent('join');
  assert.equal(join.room, 's');
  assert.equal(ws2.sent.filter((m) => m.type === 'join').length, 1, 'only the new room');
  ws2.receive({ type: 'joined', room: 's', ref: join.ref, peers: [], seq: 4 });
  assert.deepEqual(await p, []);
});

test('a room left while disconnected is left again after a resume', async () => {
  const { c, ws } = await inRoom();
  const errors = [];
  c.on('error', (e) => errors.push(e));
  ws.serverClose(1006);
  await c.leave('r');
  clock.advance(10);
  const ws2 = FakeWebSocket.last;
  ws2.welcome('p1b', { seq: 1 });
  ws2.receive({ type: 'resumed', peer_id: 'p1', replayed: 0, resume_token: 't2', ref: ws2.sent[0].ref, seq: 3 });
  const leave = ws2.lastSent('leave');
  assert.equal(leave.room, 'r');
  ws2.receive({ type: 'error', code: 'not-in-room', message: 'gone', ref: leave.ref, seq: 4 });
  await flush();
  assert.deepEqual(errors, [], 'the session had already left: not an error');
});

test('resume-failed: the fresh session from welcome is kept and rooms are re-joined', async () => {
  const { c, ws } = await inRoom();
  for (let seq = 3; seq <= 9; seq++) ws.receive(sig(seq, seq));
  const ws2 = reconnect(c, ws);
  const resume = ws2.sent[0];
  assert.equal(resume.last_seq, 9);
  const rejoined = [];
  const errors = [];
  const resumed = [];
  c.on('rejoined', (e) => rejoined.push(e.room));
  c.on('error', (e) => errors.push(e));
  c.on('resumed', (e) => resumed.push(e));
  // Numbered in the fresh session: lower than the old lastSeq, and still not a duplicate.
  ws2.receive({ type: 'error', code: 'resume-failed', message: 'unknown session', ref: resume.ref, seq: 2 });
  assert.equal(c.peerId, 'p1b');
  assert.equal(c.resumeToken, 'tok-p1b');
  assert.equal(c.lastSeq, 2);
  const join = ws2.lastSent('join');
  assert.equal(join.room, 'r');
  ws2.receive({ type: 'joined', room: 'r', ref: join.ref, peers: [{ id: 'p2', meta: {}, region: 'eu' }], seq: 3 });
  await flush();
  assert.deepEqual(rejoined, ['r']);
  assert.deepEqual(errors, []);
  assert.deepEqual(resumed, []);
  assert.deepEqual(c.peers('r').map((p) => p.id), ['p2']);
  const got = [];
  c.on('signal', (s) => got.push(s.data));
  ws2.receive(sig(4, 'fresh'));
  assert.deepEqual(got, ['fresh']);
  assert.equal(c.lastSeq, 4);
});

test('a resume cut short by another close is retried for the same old session', async () => {
  const { c, ws } = await inRoom();
  const ws2 = reconnect(c, ws);
  assert.equal(ws2.sent[0].token, 'tok-p1');
  ws2.receive(sig(3, 'replayed'));
  const ws3 = reconnect(c, ws2);
  assert.deepEqual(ws3.sent[0], { type: 'resume', token: 'tok-p1', last_seq: 3, ref: ws3.sent[0].ref },
    'not the token of the welcome in between');
  ws3.receive({ type: 'resumed', peer_id: 'p1', replayed: 0, resume_token: 't3', ref: ws3.sent[0].ref, seq: 4 });
  assert.equal(c.peerId, 'p1');
  assert.equal(ws3.lastSent('join'), undefined);
});

test('a resume without an answer drops the socket and tries again', async () => {
  const { c, ws } = await inRoom({ requestTimeout: 1000 });
  const ws2 = reconnect(c, ws);
  clock.advance(1000);
  await flush();
  assert.equal(ws2.closedWith.code, 4002);
  assert.equal(c.state, 'reconnecting');
  clock.advance(10);
  FakeWebSocket.last.welcome('p1c', { seq: 1 });
  assert.equal(FakeWebSocket.last.sent[0].token, 'tok-p1');
});

test('a reconnect notice then a 1001 close reconnects at once and resumes', async () => {
  const { c, ws } = await inRoom({ initialDelay: 1000, jitter: 0 });
  const notices = [];
  const delays = [];
  c.on('reconnect', (e) => notices.push(e));
  c.on('reconnecting', (e) => delays.push(e.delay));
  ws.receive({ type: 'reconnect', after_ms: 2000, seq: 3 });
  assert.deepEqual(notices, [{ after_ms: 2000 }]);
  assert.equal(c.lastSeq, 3);
  clock.advance(1500);
  ws.serverClose(1001, 'draining');
  assert.deepEqual(delays, [50], 'only a jitter of up to 100 ms (random() = 0.5)');
  clock.advance(50);
  const ws2 = FakeWebSocket.last;
  assert.notEqual(ws2, ws);
  ws2.welcome('p1b', { seq: 1 });
  assert.deepEqual(ws2.sent[0], { type: 'resume', token: 'tok-p1', last_seq: 3, ref: ws2.sent[0].ref });
  // The notice is spent: a later 1001 without one backs off as usual.
  ws2.receive({ type: 'resumed', peer_id: 'p1', replayed: 0, resume_token: 't2', ref: ws2.sent[0].ref, seq: 4 });
  ws2.serverClose(1001);
  assert.equal(delays.at(-1), 1000);
});

test('a socket still open after a reconnect notice is closed by the client, which resumes', async () => {
  const { c, ws } = await inRoom({ initialDelay: 1000, random: () => 1 });
  const delays = [];
  c.on('reconnecting', (e) => delays.push(e.delay));
  ws.receive({ type: 'reconnect', after_ms: 1000, seq: 3 });
  clock.advance(5999);
  assert.equal(ws.closedWith, null);
  assert.equal(c.state, 'open');
  clock.advance(1);
  assert.equal(ws.closedWith.code, 4001);
  assert.equal(c.state, 'reconnecting');
  assert.deepEqual(delays, [100]);
  clock.advance(100);
  const ws2 = FakeWebSocket.last;
  assert.notEqual(ws2, ws);
  ws2.welcome('p1b', { seq: 1 });
  assert.deepEqual(ws2.sent[0], { type: 'resume', token: 'tok-p1', last_seq: 3, ref: ws2.sent[0].ref });
});

test('expired reports an undeliverable signal with its room and ref', async () => {
  const { c, ws } = await inRoom();
  const expired = [];
  c.on('expired', (e) => expired.push(e));
  const ref = c.signal('r', 'p2', 'offer', { sdp: 'x' });
  ws.receive({ type: 'expired', to: 'p2', room: 'r', ref, seq: 3 });
  ws.receive({ type: 'expired', to: 'p2', room: 'r', seq: 4 });
  assert.equal(expired.length, 2);
  assert.deepEqual({ ...expired[0], request: undefined }, { to: 'p2', room: 'r', ref, request: undefined });
  assert.equal(expired[0].request.kind, 'offer');
  assert.deepEqual(expired[1], { to: 'p2', room: 'r', ref: null, request: null });
});

test('close() ends the session: a later connect() does not resume', async () => {
  const { c } = await inRoom();
  c.close();
  const p = c.connect('ws://edge.test/ws');
  const ws2 = FakeWebSocket.last;
  ws2.welcome('p9', { seq: 1 });
  await p;
  assert.equal(ws2.sent[0].type, 'join');
  assert.equal(ws2.sent.some((m) => m.type === 'resume'), false);
});

test('a join carries its token; with getToken every join and rejoin asks for a fresh one', async () => {
  const asked = [];
  const c = await connected({
    initialDelay: 10,
    getToken: async (room) => { asked.push(room); return `jwt-${room}-${asked.length}`; },
  });
  let ws = FakeWebSocket.last;
  const j = c.join('r', { meta: { name: 'A' } });
  await flush();
  const join = ws.lastSent('join');
  assert.equal(join.token, 'jwt-r-1');
  assert.deepEqual(join.meta, { name: 'A' });
  ws.receive({ type: 'joined', room: 'r', ref: join.ref, peers: [] });
  await j;
  // A reconnect whose resume fails rejoins with a token asked for anew.
  ws.serverClose(1006);
  clock.advance(10);
  ws = FakeWebSocket.last;
  ws.welcome('p1b');
  ws.receive({ type: 'error', code: 'resume-failed', message: 'gone', ref: ws.sent[0].ref });
  await flush();
  assert.equal(ws.lastSent('join').token, 'jwt-r-2');
  assert.deepEqual(asked, ['r', 'r']);
});

test('a static token is sent as given when there is no getToken', async () => {
  const c = await connected();
  const ws = FakeWebSocket.last;
  c.join('r', { token: 'static-jwt' });
  assert.equal(ws.lastSent('join').token, 'static-jwt', 'sent at once, without waiting');
});

test('token-expired asks getToken once more and joins; a second refusal rejects', async () => {
  let n = 0;
  const c = await connected({ getToken: async () => `jwt-${++n}` });
  const ws = FakeWebSocket.last;
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const j = c.join('r');
  await flush();
  ws.receive({ type: 'error', code: 'token-expired', message: 'expired', ref: ws.lastSent('join').ref });
  await flush();
  const again = ws.lastSent('join');
  assert.equal(again.token, 'jwt-2');
  ws.receive({ type: 'joined', room: 'r', ref: again.ref, peers: [] });
  assert.deepEqual(await j, []);
  assert.deepEqual(errors, [], 'the first refusal is handled, not reported');
  assert.ok(c.rooms.has('r'));

  const k = c.join('s');
  await flush();
  ws.receive({ type: 'error', code: 'token-expired', message: 'expired', ref: ws.lastSent('join').ref });
  await flush();
  ws.receive({ type: 'error', code: 'token-expired', message: 'expired', ref: ws.lastSent('join').ref });
  await assert.rejects(k, (e) => e.code === 'token-expired');
  assert.equal(c.rooms.has('s'), false);
});

test('a getToken that fails rejects the join with token-fetch-failed', async () => {
  const c = await connected({ getToken: async () => { throw new Error('backend down'); } });
  await assert.rejects(c.join('r'), (e) => e instanceof HeliographError
    && e.code === 'token-fetch-failed' && /backend down/.test(e.message));
  assert.equal(c.rooms.has('r'), false, 'not rejoined later');
});

test('contactHash is base64url HMAC-SHA256 of the trimmed, lowercased handle', async () => {
  const h = await contactHash('  +1 555 0100 Ada@Example.ORG ', 'app-key');
  const want = createHmac('sha256', 'app-key').update('+1 555 0100 ada@example.org').digest('base64url');
  assert.equal(h, want);
  assert.match(h, /^[A-Za-z0-9_-]{43}$/);
  assert.notEqual(await contactHash('ada', 'other-app'), await contactHash('ada', 'app-key'));
});

test('contacts: sets are sent, presence is tracked, invites carry a ref, a fresh session gets the sets again', async () => {
  const { c, ws } = await inRoom();
  const set = c.setContacts({ publish: ['pa'], watch: ['pb'] });
  const req = ws.lastSent('contacts');
  assert.deepEqual([req.publish, req.watch], [['pa'], ['pb']]);
  const events = [];
  c.on('contact', (e) => events.push(e));
  ws.receive({ type: 'contact', hash: 'pb', online: true, peer: 'p2', region: 'us', seq: 3 });
  ws.receive({ type: 'contacts-set', ref: req.ref, seq: 4 });
  await set;
  assert.deepEqual(c.onlineContacts(), [{ hash: 'pb', peer: 'p2', region: 'us' }]);
  const invites = [];
  c.on('invite', (e) => invites.push(e));
  ws.receive({ type: 'invite', from: 'p2', room: 'call', data: { x: 1 }, seq: 5 });
  assert.deepEqual(invites, [{ from: 'p2', room: 'call', data: { x: 1 } }]);
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const ref = c.invite('p9', 'call', { x: 2 });
  const sent = ws.lastSent('invite');
  assert.deepEqual([sent.to, sent.room, sent.data, sent.ref], ['p9', 'call', { x: 2 }, ref]);
  ws.receive({ type: 'error', code: 'not-a-contact', message: 'no', ref, seq: 6 });
  assert.equal(errors[0].code, 'not-a-contact');
  assert.equal(errors[0].request.to, 'p9');

  // The session is lost: presence is unknown (offline), and the new session gets the sets.
  const ws2 = reconnect(c, ws);
  ws2.receive({ type: 'error', code: 'resume-failed', message: 'gone', ref: ws2.sent[0].ref, seq: 2 });
  assert.deepEqual(events.at(-1), { hash: 'pb', online: false, peer: 'p2', region: null });
  assert.deepEqual(c.onlineContacts(), []);
  const again = ws2.lastSent('contacts');
  assert.deepEqual([again.publish, again.watch], [['pa'], ['pb']]);
});

test('contacts: a resumed session keeps its sets and is not sent them again', async () => {
  const { c, ws } = await inRoom();
  const set = c.setContacts({ publish: ['pa'], watch: [] });
  ws.receive({ type: 'contacts-set', ref: ws.lastSent('contacts').ref, seq: 3 });
  await set;
  const ws2 = reconnect(c, ws);
  ws2.receive({ type: 'resumed', peer_id: 'p1', replayed: 0, resume_token: 't2', ref: ws2.sent[0].ref, seq: 4 });
  await flush();
  assert.equal(ws2.lastSent('contacts'), undefined);
});

test('join passes public and roomMeta; listRooms sends list-rooms and resolves with the page', async () => {
  const c = await connected();
  const ws = FakeWebSocket.last;
  c.join('arena', { public: true, roomMeta: { title: 'Arena' } });
  const join = ws.lastSent('join');
  assert.equal(join.public, true);
  assert.deepEqual(join.room_meta, { title: 'Arena' });
  c.join('quiet');
  assert.equal(ws.lastSent('join').public, undefined, 'private by default');
  assert.equal(ws.lastSent('join').room_meta, undefined);

  const first = c.listRooms({ prefix: 'ar', limit: 2 });
  const req = ws.lastSent('list-rooms');
  assert.deepEqual(
    { prefix: req.prefix, limit: req.limit, cursor: req.cursor },
    { prefix: 'ar', limit: 2, cursor: undefined },
  );
  ws.receive({
    type: 'rooms', ref: req.ref, next: 'YXJlbmE',
    items: [{ room: 'arena', members: 3, regions: ['eu', 'us'], meta: { title: 'Arena' } }],
  });
  const page = await first;
  assert.deepEqual(page, {
    items: [{ room: 'arena', members: 3, regions: ['eu', 'us'], meta: { title: 'Arena' } }],
    next: 'YXJlbmE', partial: false, unreachable: [],
  });
  const second = c.listRooms({ cursor: page.next });
  const req2 = ws.lastSent('list-rooms');
  assert.equal(req2.cursor, 'YXJlbmE');
  ws.receive({ type: 'rooms', ref: req2.ref, items: [], partial: true, unreachable: ['ap'] });
  assert.deepEqual(await second, { items: [], next: null, partial: true, unreachable: ['ap'] });

  const limited = c.listRooms();
  const req3 = ws.lastSent('list-rooms');
  ws.receive({ type: 'error', code: 'rate-limited', message: 'slow down', ref: req3.ref });
  await assert.rejects(limited, (e) => e instanceof HeliographError && e.code === 'rate-limited');
});
