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
  assert.deepEqual(await p, {
    items: [{ room: 'lobby', members: 2, regions: ['eu'] }], next: 'c2', partial: false, unreachable: [],
  });
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

// --- the trust model, driven through a control channel of fakes ---------------------------

const te = new TextEncoder();
const b64url = (bytes) => Buffer.from(bytes).toString('base64url');

/** A member of the room as another page would be: its key pair, and its roster entry. */
async function member(id) {
  const pair = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
  const raw = b64url(new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey)));
  return { id, pair, info: { id, meta: { key: raw }, region: 'eu' } };
}

async function seal(from, to, kind, data, overrides = {}) {
  const env = {
    v: 1, from: from.id, to, room: 'lobby', kind, body: JSON.stringify(data), ts: clock.now, nonce: `n-${Math.random()}`,
    ...overrides,
  };
  const sig = await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, from.pair.privateKey, te.encode(canonicalEnvelope(env)));
  return { ...env, sig: b64url(new Uint8Array(sig)) };
}

/** Waits (bounded, real time) until the mesh has checked every relayed envelope it was given. */
async function settle(mesh) {
  for (let i = 0; i < 3; i++) {
    await mesh.verifying;
    await flush();
  }
}

/** A brokering mesh `p1` in `lobby` with members b (a connected relay) and c (being introduced). */
async function brokeringMesh() {
  const c = await connected();
  const ws = FakeWebSocket.last;
  const mesh = new PeerMesh(c, 'lobby', { RTCPeerConnection: FakePeerConnection, brokering: true }).start();
  await c.enableKeys();
  const b = await member('p2');
  const cc = await member('p3');
  const joined = c.join('lobby');
  await flush();
  ws.receive({ type: 'joined', room: 'lobby', peers: [b.info, cc.info], ref: ws.lastSent('join').ref });
  await joined;
  await flush();
  const relay = mesh.peers.get('p2');
  relay.pc.connectionState = 'connected';
  relay.ctrl.fireOpen();
  const events = [];
  mesh.on('refused', (e) => events.push(e));
  /** What the relay passes on to us. */
  const deliver = async (env) => {
    relay.ctrl.dispatchEvent(Object.assign(new Event('message'), { data: JSON.stringify({ t: 'relay', env }) }));
    await settle(mesh);
  };
  return { c, ws, mesh, b, cc, relay, events, deliver };
}

test('a brokering mesh opens a negotiated control channel with each keyed peer it calls', async () => {
  const { mesh } = await brokeringMesh();
  for (const id of ['p2', 'p3']) {
    const channels = mesh.peers.get(id).pc.channels;
    assert.deepEqual(channels.map((ch) => ch.label), ['heliograph-control', 'data']);
    assert.deepEqual(channels[0].options, { negotiated: true, id: 1000, ordered: true });
  }
  mesh.close();
});

test('a relayed signal signed by its sender is handled; a replay, an altered one and one from a non-member are refused', async () => {
  const { ws, mesh, cc, events, deliver } = await brokeringMesh();
  const offer = await seal(cc, 'p1', 'offer', { type: 'offer', sdp: 'offer-from-c' });
  await deliver(offer);
  assert.equal(mesh.peers.get('p3').pc.remoteDescription?.sdp, 'offer-from-c');
  assert.equal(mesh.stats().connections.p3, 'peer');
  assert.deepEqual(events, []);

  await deliver(offer);
  assert.deepEqual(events.map((e) => e.reason), ['replay']);

  const candidate = await seal(cc, 'p1', 'candidate', { candidate: 'c1' });
  await deliver({ ...candidate, body: JSON.stringify({ candidate: 'forged' }) });
  assert.deepEqual(events.map((e) => [e.reason, e.from, e.via]), [['replay', 'p3', 'p2'], ['bad-signature', 'p3', 'p2']]);
  // The claimed sender is told through the server, naming the refused signal.
  const notice = ws.lastSent('signal');
  assert.deepEqual({ to: notice.to, kind: notice.kind, data: notice.data },
    { to: 'p3', kind: 'custom', data: { 'heliograph-mesh': 'refused', nonce: candidate.nonce } });
  assert.equal(mesh.stats().brokeredRefused, 2);

  // A sender not in the roster is held for its peer-joined, then refused.
  const stranger = await member('p9');
  await deliver(await seal(stranger, 'p1', 'offer', { type: 'offer', sdp: 'x' }));
  assert.equal(events.length, 2, 'held, not refused yet');
  clock.advance(2000);
  await settle(mesh);
  assert.deepEqual(events.at(-1).reason, 'not-a-member');

  // Signed by a member, but with another member's id as `from`: the roster's key of `from` fails it.
  await deliver(await seal(stranger, 'p1', 'offer', { type: 'offer', sdp: 'y' }, { from: 'p3' }));
  assert.equal(events.at(-1).reason, 'bad-signature');
  // Too old.
  await deliver(await seal(cc, 'p1', 'candidate', {}, { ts: clock.now - 10 * 60 * 1000 }));
  assert.equal(events.at(-1).reason, 'stale');
  mesh.close();
});

test('a relayed signal from a sender whose peer-joined was still on its way is handled once it comes', async () => {
  const { ws, mesh, events, deliver } = await brokeringMesh();
  const late = await member('p4');
  await deliver(await seal(late, 'p1', 'offer', { type: 'offer', sdp: 'late-offer' }));
  ws.receive({ type: 'peer-joined', room: 'lobby', peer: late.info });
  await settle(mesh);
  assert.deepEqual(events, []);
  assert.equal(mesh.peers.get('p4').pc.remoteDescription?.sdp, 'late-offer');
  mesh.close();
});

test('room gossip: entries are checked and bounded, aged, and listed as gossip when the server does not answer', async () => {
  const { ws, mesh, relay } = await brokeringMesh();
  const items = [
    { room: 'x', members: 3, regions: ['eu'], age: 1000 },
    { room: 'neg', members: -1, age: 0 },
    { room: 'r'.repeat(129), members: 1, age: 0 },
    { room: 'old', members: 1, age: 10 * 60 * 1000 },
    { room: 'meta', members: 1, age: 0, meta: { topic: 't' } },
    ...Array.from({ length: 100 }, (_, i) => ({ room: `bulk-${String(i).padStart(3, '0')}`, members: 1, age: 0 })),
  ];
  relay.ctrl.dispatchEvent(Object.assign(new Event('message'), { data: JSON.stringify({ t: 'rooms', items }) }));
  clock.advance(500);
  const found = mesh.discoverRooms({ prefix: '' });
  ws.receive({ type: 'error', code: 'unknown-type', message: 'no', ref: ws.lastSent('list-rooms').ref });
  const { items: listed, server } = await found;
  assert.equal(server, false);
  const byRoom = new Map(listed.map((i) => [i.room, i]));
  assert.deepEqual(byRoom.get('x'), { room: 'x', members: 3, regions: ['eu'], source: 'gossip', age: 1500 });
  assert.deepEqual(byRoom.get('meta').meta, { topic: 't' });
  for (const bad of ['neg', 'r'.repeat(129), 'old']) assert.equal(byRoom.has(bad), false, bad);
  // At most maxGossipRooms (64) entries are read from one advertisement: 3 of those were bad.
  assert.equal(listed.length, 61);
  // After the TTL nothing is left.
  clock.advance(60_001);
  const later = mesh.discoverRooms();
  ws.receive({ type: 'error', code: 'unknown-type', message: 'no', ref: ws.lastSent('list-rooms').ref });
  assert.deepEqual((await later).items, []);
  mesh.close();
});

test('a neighbour handing over more relayed envelopes than relayRate allows is cut short', async () => {
  const { mesh, relay } = await brokeringMesh();
  const junk = { v: 1, from: 'p2', to: 'p9', room: 'lobby', kind: 'candidate', body: '{}', ts: clock.now, nonce: 'n', sig: 'x' };
  for (let i = 0; i < 150; i++) {
    relay.ctrl.dispatchEvent(Object.assign(new Event('message'), { data: JSON.stringify({ t: 'relay', env: { ...junk, nonce: `n${i}` } }) }));
  }
  assert.equal(mesh.stats().relayDropped, 50, 'a burst of 100 passes');
  clock.advance(1000);
  relay.ctrl.dispatchEvent(Object.assign(new Event('message'), { data: JSON.stringify({ t: 'relay', env: junk }) }));
  assert.equal(mesh.stats().relayDropped, 50, 'refilled at 50 a second');
  mesh.close();
});
