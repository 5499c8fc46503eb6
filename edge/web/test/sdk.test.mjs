import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';

import { Heliograph, HeliographError } from '../heliograph.js';
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
  const a = c.join('alpha', { name: 'A' });
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
  const j = c.join('r', { name: 'A', edge: 'edge-1' });
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
  const j = c.join('r', (cl) => ({ name: 'A', edge: cl.edge }));
  assert.deepEqual(ws.lastSent('join').meta, { name: 'A', edge: 'edge-1' });
  ws.receive({ type: 'joined', room: 'r', ref: ws.lastSent('join').ref, peers: [] });
  await j;
  ws.serverClose(1001);
  clock.advance(10);
  ws = FakeWebSocket.last;
  ws.welcome('p2', { edge: 'edge-2' });
  assert.deepEqual(ws.lastSent('join').meta, { name: 'A', edge: 'edge-2' });
});
