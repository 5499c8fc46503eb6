// Unit tests of the brokering primitives: member keys in joins, the signed envelope, room
// listing with an edge that does not answer it. (The full flows run in real browsers:
// test/browser/brokering.test.mjs.)

import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';

import { Heliograph, PeerMesh, canonicalEnvelope } from '../heliograph.js';
import { FakeClock, FakePeerConnection, FakeWebSocket, flush } from './fakes.mjs';

let clock;

async function connected(options = {}) {
  const c = new Heliograph({
    WebSocket: FakeWebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    now: () => clock.now,
    pingInterval: 0,
    ...options,
  });
  const welcome = c.connect('ws://edge.test/ws');
  FakeWebSocket.last.welcome('p1');
  await welcome;
  return c;
}

beforeEach(() => {
  FakeWebSocket.reset();
  clock = new FakeClock();
});

const b64 = (text) => Buffer.from(text.replace(/-/g, '+').replace(/_/g, '/'), 'base64');

test('a client without keys joins as before; with enableKeys every join carries its public key', async () => {
  const c = await connected();
  const ws = FakeWebSocket.last;
  c.join('plain');
  assert.equal(ws.lastSent('join').key, undefined);
  const keys = await c.enableKeys();
  assert.equal(c.enableKeys() === c.enableKeys(), true, 'made once');
  const raw = b64(keys.raw);
  assert.equal(raw.length, 65);
  assert.equal(raw[0], 0x04);
  assert.match(keys.raw, /^[A-Za-z0-9_-]{87}$/);
  assert.equal(keys.privateKey.extractable, false);
  c.join('keyed', { public: true });
  await flush();
  const join = ws.lastSent('join');
  assert.deepEqual({ room: join.room, key: join.key, public: join.public },
    { room: 'keyed', key: keys.raw, public: true });
});

test('a join made while the key is being generated waits for it', async () => {
  const c = await connected();
  const ws = FakeWebSocket.last;
  const made = c.enableKeys();
  c.join('early');
  const keys = await made;
  await flush();
  assert.equal(ws.lastSent('join').key, keys.raw);
});

test('a brokered envelope is signed over its canonical text; any change breaks the signature', async () => {
  const c = await connected();
  const keys = await c.enableKeys();
  const env = { v: 1, from: 'a', to: 'b', room: 'r', kind: 'offer', body: '{"sdp":"v=0"}', ts: 5, nonce: 'n1' };
  const text = new TextEncoder().encode(canonicalEnvelope(env));
  const sig = await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, keys.privateKey, text);
  const pub = await crypto.subtle.importKey('raw', b64(keys.raw), { name: 'ECDSA', namedCurve: 'P-256' }, false, ['verify']);
  const verify = (e) => crypto.subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, pub, sig,
    new TextEncoder().encode(canonicalEnvelope(e)));
  assert.equal(await verify(env), true);
  for (const change of [{ from: 'x' }, { to: 'x' }, { room: 'x' }, { kind: 'answer' },
    { body: '{"sdp":"v=1"}' }, { ts: 6 }, { nonce: 'n2' }]) {
    assert.equal(await verify({ ...env, ...change }), false, JSON.stringify(change));
  }
  // Field boundaries are part of the text: moving characters between fields changes it.
  assert.notEqual(canonicalEnvelope({ ...env, from: 'ab', to: '' }), canonicalEnvelope({ ...env, from: 'a', to: 'b' }));
});

test('listRooms sends list-rooms and resolves with the rooms reply', async () => {
  const c = await connected();
  const ws = FakeWebSocket.last;
  const p = c.listRooms({ prefix: 'lo', limit: 10 });
  const req = ws.lastSent('list-rooms');
  assert.deepEqual({ prefix: req.prefix, limit: req.limit, cursor: req.cursor }, { prefix: 'lo', limit: 10, cursor: undefined });
  ws.receive({ type: 'rooms', items: [{ room: 'lobby', members: 2, regions: ['eu'] }], next: 'c2', ref: req.ref });
  assert.deepEqual(await p, { items: [{ room: 'lobby', members: 2, regions: ['eu'] }], next: 'c2' });
});

test('discoverRooms without a server answer lists the public rooms the client is in, marked self', async () => {
  const c = await connected();
  const ws = FakeWebSocket.last;
  const mesh = new PeerMesh(c, 'lobby', { RTCPeerConnection: FakePeerConnection }).start();
  const joined = c.join('lobby', { public: true });
  ws.receive({ type: 'joined', room: 'lobby', peers: [{ id: 'p2', meta: {}, region: 'us' }], ref: ws.lastSent('join').ref });
  await joined;
  const found = mesh.discoverRooms({ prefix: 'lob' });
  const req = ws.lastSent('list-rooms');
  // An edge without room listing answers unknown-type: no server answer.
  ws.receive({ type: 'error', code: 'unknown-type', message: 'unknown message type', ref: req.ref });
  const result = await found;
  assert.equal(result.server, false);
  assert.deepEqual(result.items, [{ room: 'lobby', members: 2, regions: ['eu', 'us'], source: 'self', age: 0 }]);
  mesh.close();
});
