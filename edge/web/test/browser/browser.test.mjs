// Real-browser tests: two Chromium instances drive the demo page against real edges.
//
// Run through test/run-browser-tests.sh, which puts this process, the edges and Chromium in a
// fresh network namespace whose only interface is `lo`: there WebRTC gathers 127.0.0.1 host
// candidates, and nothing can reach beyond the loopback interface.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import {
  CHROMIUM, CHROMIUM_ARGS, killChildren, onlyLoopback, scratch, startCoordinator, startEdge,
  stopProcess as stopEdge,
} from '../support/processes.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const STEP = 30_000; // deadline of one waited-for condition
const FILE_BYTES = 5 * 1024 * 1024;

// Only loopback may be reachable: refuse to run on a host network.
const skip = onlyLoopback ? false
  : 'not in a loopback-only network namespace; run test/run-browser-tests.sh';

const browsers = new Set();

after(async () => {
  for (const b of browsers) await b.close().catch(() => {});
  killChildren();
});

/** A fresh browser (own user-data dir) with the demo page from `pageEdge`, signaling via `wsUrl`. */
async function openDemo(label, pageEdge, wsUrl) {
  const context = await chromium.launchPersistentContext(mkdtempSync(path.join(scratch, `chrome-${label}-`)), {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
  });
  browsers.add(context);
  await context.grantPermissions(['microphone', 'camera']);
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(STEP);
  page.logs = [];
  page.on('console', (m) => page.logs.push(`[${label} console] ${m.text()}`));
  page.on('pageerror', (e) => page.logs.push(`[${label} pageerror] ${e.message}`));
  await page.goto(`${pageEdge.http}/?edge=${encodeURIComponent(wsUrl)}`);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'open');
  return page;
}

async function join(page, room, name) {
  await page.fill('[data-testid=room-input]', room);
  await page.fill('[data-testid=name-input]', name);
  await page.click('[data-testid=join-button]');
}

/** Waits until the page has an open data channel to a peer other than `notId`; returns its id. */
async function openChannelPeer(page, notId = null) {
  const handle = await page.waitForFunction((old) => {
    const li = [...document.querySelectorAll('[data-testid=peer]')]
      .find((e) => e.dataset.channel === 'open' && e.dataset.peerId !== old);
    return li?.dataset.peerId ?? false;
  }, notId, { timeout: STEP });
  return handle.jsonValue();
}

async function chat(from, to, text) {
  await from.fill('[data-testid=chat-input]', text);
  await from.click('[data-testid=chat-send]');
  await to.waitForFunction((t) => [...document.querySelectorAll('[data-testid=chat-message][data-mine=false]')]
    .some((m) => m.textContent.endsWith(t)), text, { timeout: STEP });
}

const selfId = (page) => page.textContent('[data-testid=self-id]');

/** Runs `fn`; on failure prints the pages' event logs and console to help diagnose. */
async function withDiagnostics(pages, edges, fn) {
  try {
    await fn();
  } catch (e) {
    for (const p of pages) {
      const log = await p.textContent('[data-testid=log]').catch(() => '(page gone)');
      console.error(`--- page log ---\n${log}\n${p.logs.join('\n')}`);
    }
    for (const edge of edges) console.error(`--- edge ${edge.name} stderr ---\n${edge.stderr.join('')}`);
    throw e;
  }
}

test('A: two pages on two edges in two regions: chat both ways and a 5 MiB file over a DataChannel', { skip, timeout: 180_000 }, async () => {
  const coordinator = await startCoordinator();
  const edgeA = await startEdge({ name: 'a', region: 'eu-test', coordinator });
  const edgeB = await startEdge({ name: 'b', region: 'us-test', coordinator });
  // Each page loads the demo from its own edge and signals through it: the room spans both.
  const signaling = { a: edgeA.ws, b: edgeB.ws };

  for (const edge of [edgeA, edgeB]) {
    const res = await fetch(`${edge.http}/sdk/heliograph.js`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/javascript/);
    assert.match(await res.text(), /export class PeerMesh/);
    const dts = await fetch(`${edge.http}/sdk/heliograph.d.ts`);
    assert.equal(dts.status, 200);
    assert.match(await dts.text(), /export declare class Heliograph/);
  }

  const pageA = await openDemo('a', edgeA, signaling.a);
  const pageB = await openDemo('b', edgeB, signaling.b);
  await withDiagnostics([pageA, pageB], [edgeA, edgeB], async () => {
    await join(pageA, 'test-room', 'Alice');
    await join(pageB, 'test-room', 'Bob');
    const idA = await selfId(pageA);
    const idB = await selfId(pageB);
    assert.equal(await openChannelPeer(pageA), idB);
    assert.equal(await openChannelPeer(pageB), idA);

    // The signaling path panel shows the peer's edge (from its join meta) and region.
    const edgeId = await pageA.textContent('[data-testid=self-edge]');
    assert.ok(edgeId.length > 0 && edgeId !== '–');
    assert.equal(await pageA.textContent('[data-testid=self-region]'), 'eu-test');
    const pathB = await pageA.textContent(`[data-testid=path-peer][data-peer-id="${idB}"]`);
    assert.ok(pathB.includes('Bob') && pathB.includes('edge-b') && pathB.includes('us-test'), pathB);
    assert.equal(await pageB.textContent('[data-testid=self-region]'), 'us-test');

    await chat(pageA, pageB, 'hello from Alice');
    await chat(pageB, pageA, 'hello back from Bob');

    const payload = randomBytes(FILE_BYTES);
    const expected = createHash('sha256').update(payload).digest('hex');
    await pageA.setInputFiles('[data-testid=file-input]',
      { name: 'payload.bin', mimeType: 'application/octet-stream', buffer: payload });
    await pageA.click('[data-testid=file-send]');
    const recv = '[data-testid=transfer][data-direction=recv]';
    await pageB.waitForFunction((sel) => {
      const s = document.querySelector(sel)?.dataset.status;
      return s === 'verified' || s === 'mismatch';
    }, recv, { timeout: 120_000 });
    assert.equal(await pageB.getAttribute(recv, 'data-status'), 'verified');
    assert.equal(await pageB.getAttribute(recv, 'data-sha256'), expected);
    assert.equal(await pageB.getAttribute(recv, 'data-size'), String(FILE_BYTES));
    assert.equal(await pageB.$eval(`${recv} progress`, (p) => p.value), FILE_BYTES);
    await pageA.waitForFunction(() => document.querySelector('[data-testid=transfer][data-direction=send]')?.dataset.status === 'sent');
    assert.equal(await pageA.getAttribute('[data-testid=transfer][data-direction=send]', 'data-sha256'), expected);
  });
  await pageA.context().close();
  await pageB.context().close();
  await stopEdge(edgeA);
  await stopEdge(edgeB);
  await stopEdge(coordinator);
});

test('B: the edge of one page restarts mid-session; the SDK comes back and a new DataChannel works', { skip, timeout: 180_000 }, async () => {
  const coordinator = await startCoordinator();
  let edge = await startEdge({ name: 'restart', region: 'eu-test', coordinator });
  const other = await startEdge({ name: 'steady', region: 'us-test', coordinator });
  const port = edge.addr.split(':').at(-1);
  // Page A signals through the edge that restarts; page B through one that stays up.
  const pageA = await openDemo('a', edge, edge.ws);
  const pageB = await openDemo('b', other, other.ws);
  await withDiagnostics([pageA, pageB], [edge, other, coordinator], async () => {
    await join(pageA, 'restart-room', 'Alice');
    await join(pageB, 'restart-room', 'Bob');
    const oldA = await selfId(pageA);
    const oldB = await selfId(pageB);
    assert.equal(await openChannelPeer(pageA), oldB);
    assert.equal(await openChannelPeer(pageB), oldA);
    await chat(pageA, pageB, 'before the restart');

    await stopEdge(edge);
    await pageA.waitForFunction(() => document.getElementById('status').textContent !== 'open');
    edge = await startEdge({ name: 'restart', listen: `127.0.0.1:${port}`, region: 'eu-test', coordinator });

    // Page A reconnects and rejoins; page B's mesh replaces the old connection with a new
    // negotiation to A.
    await pageA.waitForFunction(() => document.getElementById('status').textContent === 'open',
      null, { timeout: STEP });
    const newA = await selfId(pageA);
    assert.equal(await selfId(pageB), oldB, 'page B kept its session');
    assert.equal(await openChannelPeer(pageA), oldB);
    await pageB.waitForFunction((id) => [...document.querySelectorAll('[data-testid=peer]')]
      .some((e) => e.dataset.channel === 'open' && e.dataset.peerId === id), newA, { timeout: STEP });
    await chat(pageA, pageB, 'after the restart, from Alice');
    await chat(pageB, pageA, 'after the restart, from Bob');
  });
  await pageA.context().close();
  await pageB.context().close();
  await stopEdge(edge);
  await stopEdge(other);
  await stopEdge(coordinator);
});

test('C: SDK requests against a real edge: refs, errors, leave, ping', { skip, timeout: 60_000 }, async () => {
  const edge = await startEdge({ name: 'sdk', region: 'eu-test' });
  const page = await openDemo('c', edge, edge.ws);
  await withDiagnostics([page], [edge], async () => {
    const result = await page.evaluate(async (wsUrl) => {
      const { Heliograph } = await import('/sdk/heliograph.js');
      const a = new Heliograph();
      const b = new Heliograph();
      const welcome = await a.connect(wsUrl);
      await b.connect(wsUrl);
      const out = { welcome: { protocol: welcome.protocol, region: welcome.region } };
      const code = (p) => p.then(() => 'resolved', (e) => e.code);
      out.badRoom = await code(a.join(''));
      out.peersA = await a.join('sdk-room', { meta: { name: 'a' } });
      const joinedB = new Promise((r) => a.once('peer-joined', r));
      out.peersB = (await b.join('sdk-room', { meta: { name: 'b' } })).map((p) => p.id === a.peerId);
      out.peerJoined = (await joinedB).peer.id === b.peerId;
      const got = new Promise((r) => b.once('signal', r));
      a.signal('sdk-room', b.peerId, 'custom', { hello: 'b' });
      const sig = await got;
      out.signal = { from: sig.from === a.peerId, kind: sig.kind, data: sig.data };
      const err = new Promise((r) => a.once('error', r));
      const ref = a.signal('sdk-room', 'no-such-peer', 'custom', {});
      const e = await err;
      out.signalError = { code: e.code, sameRef: e.ref === ref, to: e.request?.to };
      out.notInRoom = await code(a.leave('other-room'));
      out.rtt = typeof await a.ping();
      const left = new Promise((r) => b.once('peer-left', r));
      out.leave = await code(a.leave('sdk-room'));
      out.peerLeft = (await left).peerId === a.peerId;
      a.close();
      b.close();
      return out;
    }, edge.ws);
    assert.deepEqual(result, {
      welcome: { protocol: 'heliograph.v1', region: 'eu-test' },
      badRoom: 'invalid-room',
      peersA: [],
      peersB: [true],
      peerJoined: true,
      signal: { from: true, kind: 'custom', data: { hello: 'b' } },
      signalError: { code: 'unknown-peer', sameRef: true, to: 'no-such-peer' },
      notInRoom: 'not-in-room',
      rtt: 'number',
      leave: 'resolved',
      peerLeft: true,
    });
  });
  await page.context().close();
  await stopEdge(edge);
});

/** An HS256 join token, as an app's backend would mint it. */
function joinToken(secret, claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

test('D: the SDK joins with tokens from getToken, asks again after token-expired and for every rejoin', { skip, timeout: 90_000 }, async () => {
  const secret = randomBytes(32).toString('hex');
  const extra = ['--join-token-secret', secret];
  let edge = await startEdge({ name: 'tokens', extra });
  const page = await openDemo('d', edge, edge.ws);
  // The page's getToken asks this test, playing the app's backend; `expired` mints one that
  // ran out a minute ago.
  const issued = [];
  await page.exposeFunction('mintToken', (room, expired) => {
    issued.push({ room, expired });
    const now = Math.floor(Date.now() / 1000);
    return joinToken(secret, { sub: 'user-1', room, exp: expired ? now - 60 : now + 600 });
  });
  await withDiagnostics([page], [edge], async () => {
    const first = await page.evaluate(async (wsUrl) => {
      const { Heliograph } = await import('/sdk/heliograph.js');
      window.expireNext = false;
      const c = new Heliograph({
        initialDelay: 50,
        maxDelay: 500,
        getToken: async (room) => {
          const expired = window.expireNext;
          window.expireNext = false;
          return window.mintToken(room, expired);
        },
      });
      window.tokenClient = c;
      window.rejoined = [];
      c.on('rejoined', (e) => window.rejoined.push(e.room));
      await c.connect(wsUrl);
      const code = (p) => p.then(() => 'joined', (e) => e.code);
      const withToken = await code(c.join('tok-a'));
      // Without getToken the edge refuses: the token is what admits.
      const bare = new Heliograph();
      await bare.connect(wsUrl);
      const withoutToken = await code(bare.join('tok-a'));
      bare.close();
      window.expireNext = true;
      const afterExpiry = await code(c.join('tok-b'));
      return { withToken, withoutToken, afterExpiry };
    }, edge.ws);
    assert.deepEqual(first, { withToken: 'joined', withoutToken: 'token-required', afterExpiry: 'joined' });
    assert.deepEqual(issued, [
      { room: 'tok-a', expired: false },
      { room: 'tok-b', expired: true },
      { room: 'tok-b', expired: false },
    ], 'one token per join, and one more after token-expired');

    // The edge restarts: its sessions are gone, the resume fails, the SDK rejoins each room
    // with a fresh token.
    const listen = edge.addr;
    edge.child.kill('SIGKILL');
    await new Promise((r) => (edge.child.exitCode !== null || edge.child.signalCode !== null
      ? r() : edge.child.once('exit', r)));
    edge = await startEdge({ name: 'tokens', listen, extra });
    await page.waitForFunction(() => window.rejoined.length === 2, null, { timeout: STEP });
    const rejoined = await page.evaluate(() => [...window.rejoined].sort());
    assert.deepEqual(rejoined, ['tok-a', 'tok-b']);
    assert.deepEqual(issued.slice(3).map((t) => t.room).sort(), ['tok-a', 'tok-b']);
    assert.ok(issued.slice(3).every((t) => !t.expired));
    await page.evaluate(() => window.tokenClient.close());
  });
  await page.context().close();
  await stopEdge(edge);
});

// The official Socket.IO client's browser bundle, as a page of a Socket.IO app loads it.
const SOCKET_IO_BUNDLE = path.join(HERE, '../../node_modules/socket.io-client/dist/socket.io.min.js');

test('E: a Socket.IO app page (socket.io-client, RTCPeerConnection) and an SDK page meet through the edge: DataChannel open, a message echoed', { skip, timeout: 90_000 }, async () => {
  const edge = await startEdge({ name: 'socketio', region: 'eu-test', extra: ['--socketio'] });
  const sdkPage = await openDemo('e-sdk', edge, edge.ws);
  const sioPage = await openDemo('e-sio', edge, edge.ws);
  await withDiagnostics([sdkPage, sioPage], [edge], async () => {
    // The SDK side: a PeerMesh that answers (polite) and echoes what its channels receive.
    const sdkId = await sdkPage.evaluate(async (wsUrl) => {
      const { Heliograph, PeerMesh } = await import('/sdk/heliograph.js');
      const c = new Heliograph();
      await c.connect(wsUrl);
      const mesh = new PeerMesh(c, 'sio-room', { polite: () => true });
      window.meshPeers = () => [...mesh.peers.keys()];
      mesh.on('channel', ({ channel }) => {
        channel.addEventListener('message', (e) => channel.send(`echo:${e.data}`));
      });
      mesh.start();
      await c.join('sio-room');
      return c.peerId;
    }, edge.ws);

    // The Socket.IO side: code written for a Node.js Socket.IO signaling server, unchanged.
    await sioPage.addScriptTag({ path: SOCKET_IO_BUNDLE });
    const result = await sioPage.evaluate(async (step) => {
      const socket = io();
      const pcs = new Map();
      const echoed = new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error('no echo in time')), step);
        const call = async (id) => {
          const pc = new RTCPeerConnection();
          pcs.set(id, pc);
          pc.onicecandidate = ({ candidate }) => {
            if (candidate) socket.emit('ice-candidate', { to: id, ...candidate.toJSON() });
          };
          const channel = pc.createDataChannel('data');
          channel.onopen = () => channel.send('hello over a DataChannel');
          channel.onmessage = (e) => resolve({ echoed: e.data, peer: id });
          await pc.setLocalDescription(await pc.createOffer());
          socket.emit('offer', { to: id, type: 'offer', sdp: pc.localDescription.sdp });
        };
        socket.on('room-users', (users) => users.forEach((id) => call(id).catch(reject)));
        socket.on('answer', ({ from, sdp }) => pcs.get(from)?.setRemoteDescription({ type: 'answer', sdp }));
        socket.on('ice-candidate', ({ from, candidate, sdpMid, sdpMLineIndex }) => {
          pcs.get(from)?.addIceCandidate({ candidate, sdpMid, sdpMLineIndex });
        });
        socket.on('connect', () => socket.emit('join-room', 'sio-room'));
      });
      const r = await echoed;
      return { ...r, self: socket.id, transport: socket.io.engine.transport.name };
    }, STEP);
    assert.equal(result.echoed, 'echo:hello over a DataChannel');
    assert.equal(result.peer, sdkId, 'room-users named the SDK peer');
    // The SDK peer knows the Socket.IO peer by its socket.id.
    assert.deepEqual(await sdkPage.evaluate(() => window.meshPeers()), [result.self]);
    assert.equal(result.transport, 'websocket', 'upgraded from long-polling');
  });
  await sdkPage.context().close();
  await sioPage.context().close();
  await stopEdge(edge);
});

test('F: two demo pages list each other as contacts: each sees the other online, an invite arrives, a third page that lists one of them sees nothing', { skip, timeout: 90_000 }, async () => {
  const edge = await startEdge({ name: 'contacts', region: 'eu-test' });
  const [ada, bob, eve] = await Promise.all(['ada', 'bob', 'eve'].map((l) => openDemo(l, edge, edge.ws)));
  const setContacts = async (page, mine, watch) => {
    await page.fill('[data-testid=my-handle]', mine);
    await page.fill('[data-testid=watch-handles]', watch);
    await page.click('[data-testid=contacts-save]');
    await page.waitForFunction(() => document.getElementById('log').textContent.includes('contacts set'));
  };
  const online = (page, handle) => page.waitForFunction((h) =>
    [...document.querySelectorAll('[data-testid=contact]')].some((e) => e.dataset.handle === h), handle);
  await withDiagnostics([ada, bob, eve], [edge], async () => {
    await setContacts(ada, 'Ada@Example.org', 'bob@example.org');
    await setContacts(eve, 'eve@example.org', 'ada@example.org');
    await setContacts(bob, 'bob@example.org', ' ADA@example.org , nobody@example.org');
    await online(ada, 'bob@example.org');
    await online(bob, ' ADA@example.org '.trim());
    // Ada invites Bob into her room: Bob's page offers it.
    await join(ada, 'contacts-call', 'ada');
    await ada.waitForFunction(() => !document.querySelector('[data-testid=contact-invite]').disabled);
    await ada.click('[data-testid=contact-invite]');
    await bob.waitForFunction(() => document.getElementById('room').value === 'contacts-call');
    // Eve lists Ada, Ada does not list Eve: nothing about Ada reaches Eve.
    const eveSees = await eve.evaluate(() => ({
      contacts: document.querySelectorAll('[data-testid=contact]').length,
      online: window.heliograph.client.onlineContacts().length,
    }));
    assert.deepEqual(eveSees, { contacts: 0, online: 0 });
  });
  for (const p of [ada, bob, eve]) await p.context().close();
  await stopEdge(edge);
});

test('discovery: a room joined as public on one demo page is listed on another, which joins it with a click', { skip, timeout: 90_000 }, async () => {
  const edge = await startEdge({ name: 'discovery' });
  const host = await openDemo('host', edge, edge.ws);
  const guest = await openDemo('guest', edge, edge.ws);
  await withDiagnostics([host, guest], [edge], async () => {
    await host.check('[data-testid=public-checkbox]');
    await join(host, 'arena', 'host');
    await host.waitForFunction(() => [...document.querySelectorAll('[data-testid=log]')]
      .some((e) => e.textContent.includes('joined arena')));

    await guest.click('[data-testid=rooms-refresh]');
    const listed = '[data-testid=public-room][data-room=arena]';
    await guest.waitForSelector(`${listed}[data-members="1"]`);
    const rooms = await guest.$$eval('[data-testid=public-room]', (els) => els.map((e) => e.dataset.room));
    assert.deepEqual(rooms, ['arena']);
    await guest.click(listed);
    await guest.waitForFunction(() => document.querySelector('[data-testid=room-name]').textContent === 'arena');
    await openChannelPeer(guest);
    await host.click('[data-testid=rooms-refresh]');
    await host.waitForSelector(`${listed}[data-members="2"]`);
    // The SDK's own call, in the page: one page, nothing partial on a single node.
    const page = await guest.evaluate(() => window.heliograph.client.listRooms({ prefix: 'ar' }));
    assert.deepEqual(page, {
      items: [{ room: 'arena', members: 2, regions: ['local'] }], next: null, partial: false, unreachable: [],
    });
  });
  await host.context().close();
  await guest.context().close();
  await stopEdge(edge);
});
