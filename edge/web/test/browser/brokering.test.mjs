// Real-browser tests of peer-assisted signaling (PeerMesh `brokering`) and room gossip:
// Chromium pages (one browser, a page each) against real edge and coordinator processes.
//
// Run through test/run-browser-tests.sh (a network namespace with only `lo`), e.g.
//   bash test/run-browser-tests.sh test/browser/brokering.test.mjs

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import {
  CHROMIUM, CHROMIUM_ARGS, killChildren, metricSum, onlyLoopback, registryMembers, scratch,
  startCoordinator, startEdge, stopProcess,
} from '../support/processes.mjs';

const STEP = 30_000; // deadline of one waited-for condition
const skip = onlyLoopback ? false
  : 'not in a loopback-only network namespace; run test/run-browser-tests.sh';

let browser = null;
after(async () => {
  await browser?.close().catch(() => {});
  killChildren();
});

/** One Chromium for every page of this file (pages are cheaper than browsers on 2 cores). */
async function context() {
  if (!browser) {
    browser = await chromium.launchPersistentContext(mkdtempSync(path.join(scratch, 'chrome-')), {
      executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS,
    });
    // Turns off mDNS hiding of host candidates: WebRTC then uses 127.0.0.1.
    await browser.grantPermissions(['microphone', 'camera']);
    // While editing the SDK: serve the source file instead of the copy compiled into the edge.
    if (process.env.HELIOGRAPH_SDK_FROM_SOURCE === '1') {
      const source = fileURLToPath(new URL('../../heliograph.js', import.meta.url));
      await browser.route('**/sdk/heliograph.js', (r) => r.fulfill({ path: source, contentType: 'text/javascript' }));
    }
  }
  return browser;
}

/**
 * A blank page of `edge`'s origin with a client and a PeerMesh in `room` (`window.hg`).
 * `tamper`: this page alters every offer it relays for others ('alter') or loses all it relays
 * ('drop') (a test hook of the SDK).
 */
async function meshPage(label, edge, room, { brokering = true, tamper = false, join = true } = {}) {
  const ctx = await context();
  const page = await ctx.newPage();
  page.setDefaultTimeout(STEP);
  page.label = label;
  page.logs = [];
  page.on('console', (m) => page.logs.push(`[${label} console] ${m.text()}`));
  page.on('pageerror', (e) => page.logs.push(`[${label} pageerror] ${e.message}`));
  await page.goto(`${edge.http}/healthz`);
  await page.evaluate(async ({ ws, room, brokering, tamper, label }) => {
    const { Heliograph, PeerMesh } = await import('/sdk/heliograph.js');
    const client = new Heliograph({ initialDelay: 100, maxDelay: 1000, pingInterval: 2000, pingTimeout: 2000 });
    // 'alter': change the offers this page relays; 'drop': lose everything it relays.
    const alter = (env) => (env.kind !== 'offer' ? env : {
      ...env, body: JSON.stringify({ ...JSON.parse(env.body), sdp: `${JSON.parse(env.body).sdp}a=tampered\r\n` }),
    });
    const testHooks = tamper ? { tamperRelayed: tamper === 'drop' ? () => null : alter } : undefined;
    const mesh = new PeerMesh(client, room, { brokering, testHooks, gossipInterval: 500, connectTimeout: 4000 }).start();
    const events = [];
    mesh.on('refused', (e) => events.push({ type: 'refused', from: e.from, via: e.via, reason: e.reason }));
    mesh.on('fallback', (e) => events.push({ type: 'fallback', peer: e.peer.id, reason: e.reason }));
    mesh.on('close', (e) => events.push({ type: 'close', peer: e.peer.id, reason: e.reason }));
    mesh.on('rebound', (e) => events.push({ type: 'rebound', peer: e.peer.id, previous: e.previous }));
    mesh.on('error', (e) => console.log(`mesh error ${e.peer?.id ?? ''}: ${e.error?.message ?? e.error}`));
    const channels = [];
    mesh.on('channel', ({ peer, channel }) => {
      channels.push({ peer: peer.id, label: channel.label });
      channel.addEventListener('message', (m) => {
        if (typeof m.data === 'string' && m.data.startsWith('ping:')) channel.send(`pong:${m.data.slice(5)}`);
      });
    });
    window.hg = { client, mesh, events, channels, label };
    /** Peers whose connection is up and whose default channel is open. */
    window.connected = () => [...mesh.peers.values()]
      .filter((p) => p.pc.connectionState === 'connected' && p.channel?.readyState === 'open')
      .map((p) => p.id).sort();
    await client.connect(ws);
  }, { ws: edge.ws, room, brokering, tamper, label });
  if (join) await joinRoom(page, room);
  return page;
}

async function joinRoom(page, room, opts = { public: true }) {
  return page.evaluate(async ({ room, opts }) => {
    await window.hg.client.join(room, { ...opts, meta: { name: window.hg.label } });
    return window.hg.client.peerId;
  }, { room, opts });
}

const peerId = (page) => page.evaluate(() => window.hg.client.peerId);
const stats = (page) => page.evaluate(() => window.hg.mesh.stats());

/** Waits until `page` is connected (channel open) to exactly `ids`. */
async function waitConnected(page, ids, timeout = STEP) {
  const want = [...ids].sort();
  await page.waitForFunction((w) => JSON.stringify(window.connected()) === JSON.stringify(w),
    want, { timeout, polling: 100 });
}

/** Waits until the sum of `f` over the pages stops changing for `quiet` ms (bounded). */
async function settled(pages, f, quiet = 700, deadline = STEP) {
  const end = Date.now() + deadline;
  let last = null;
  let since = Date.now();
  while (Date.now() < end) {
    const now = JSON.stringify(await Promise.all(pages.map(f)));
    if (now !== last) { last = now; since = Date.now(); } else if (Date.now() - since >= quiet) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the pages kept signalling');
}

/** Runs `fn`; on failure prints the pages' consoles and the edges' stderr. */
async function withDiagnostics(pages, procs, fn) {
  try {
    await fn();
  } catch (e) {
    for (const p of pages) {
      const s = await p.evaluate(() => JSON.stringify({ stats: window.hg.mesh.stats(), events: window.hg.events }))
        .catch(() => '(page gone)');
      console.error(`--- page ${p.label} ---\n${s}\n${p.logs.join('\n')}`);
    }
    for (const proc of procs) console.error(`--- ${proc.name} stderr ---\n${proc.stderr.join('')}`);
    throw e;
  }
}

async function closePages(pages) {
  for (const p of pages) await p.close().catch(() => {});
}

/** Six pages in a full mesh, then a seventh joins; returns the edge's signals for its join. */
async function seventhJoins(edge, room, brokering) {
  const pages = [];
  let result = null;
  await withDiagnostics(pages, [edge], async () => {
    for (let i = 0; i < 6; i += 1) {
      const page = await meshPage(`${room}-${i}`, edge, room, { brokering });
      pages.push(page);
      const ids = await Promise.all(pages.map(peerId));
      await Promise.all(pages.map((p, k) => waitConnected(p, ids.filter((_, j) => j !== k))));
    }
    const counted = (p) => p.evaluate(() => window.hg.mesh.stats().signalsViaServer);
    await settled(pages, counted);
    const before = await metricSum(edge, 'heliograph_edge_messages_received_total', { type: 'signal' });
    const started = Date.now();
    const newcomer = await meshPage(`${room}-new`, edge, room, { brokering });
    pages.push(newcomer);
    const ids = await Promise.all(pages.map(peerId));
    await Promise.all(pages.map((p, k) => waitConnected(p, ids.filter((_, j) => j !== k))));
    const took = Date.now() - started;
    await settled(pages, counted);
    const after = await metricSum(edge, 'heliograph_edge_messages_received_total', { type: 'signal' });
    result = { signals: after - before, took, newcomer: await stats(newcomer), ids };
  });
  await closePages(pages);
  return result;
}

test('1: a seventh page joins a six-page mesh with at least 60 % fewer signals through the edge when peers broker', { skip, timeout: 300_000 }, async () => {
  const edge = await startEdge({ name: 'seven' });
  const off = await seventhJoins(edge, 'seven-off', false);
  const on = await seventhJoins(edge, 'seven-on', true);
  console.log(`seventh join: ${off.signals} signals through the edge without brokering (${off.took} ms), `
    + `${on.signals} with (${on.took} ms); newcomer ${JSON.stringify(on.newcomer)}`);
  assert.ok(off.signals >= 6 * 2, `without brokering each connection is signalled through the edge (${off.signals})`);
  assert.ok(on.signals <= 0.4 * off.signals, `${on.signals} vs ${off.signals}: at least 60 % fewer`);
  const paths = Object.values(on.newcomer.connections);
  assert.equal(paths.length, 6);
  assert.equal(paths.filter((p) => p === 'server').length, 1, `one introduction through the server: ${paths}`);
  assert.equal(paths.filter((p) => p === 'peer').length, 5);
  assert.ok(on.newcomer.signalsViaPeers > 0);
  assert.equal(on.newcomer.brokeredRefused, 0);
  assert.deepEqual(Object.values(off.newcomer.connections).filter((p) => p !== 'server'), []);
  await stopProcess(edge);
});

test('2: an offer altered by the relaying page is refused (signature) and the connection is made through the server', { skip, timeout: 120_000 }, async () => {
  const edge = await startEdge({ name: 'tamper' });
  const room = 'tamper-room';
  const pages = [];
  await withDiagnostics(pages, [edge], async () => {
    // Both relays tamper: whichever the newcomer is introduced through first relays the other
    // introduction, and alters it.
    pages.push(await meshPage('a', edge, room, { tamper: 'alter' }));
    pages.push(await meshPage('b', edge, room, { tamper: 'alter' }));
    const [a, b] = pages;
    const [idA, idB] = await Promise.all([peerId(a), peerId(b)]);
    await waitConnected(a, [idB]);
    await waitConnected(b, [idA]);
    const c = await meshPage('c', edge, room);
    pages.push(c);
    const idC = await peerId(c);
    await waitConnected(c, [idA, idB]);
    await waitConnected(a, [idB, idC]);
    await waitConnected(b, [idA, idC]);

    const sa = await stats(a);
    const sb = await stats(b);
    const sc = await stats(c);
    // The relay was the one introduced first; the other refused what it forwarded.
    const [relay, victim, idVictim] = sa.relayed > 0 ? ['a', b, idB] : ['b', a, idA];
    assert.equal(sa.relayed + sb.relayed > 0, true, 'an introduction was relayed');
    const victimStats = relay === 'a' ? sb : sa;
    assert.ok(victimStats.brokeredRefused >= 1, JSON.stringify(victimStats));
    const refused = await victim.evaluate(() => window.hg.events.filter((e) => e.type === 'refused'));
    assert.equal(refused[0].reason, 'bad-signature');
    assert.equal(refused[0].from, idC);
    assert.equal(sc.fallbacks >= 1, true, JSON.stringify(sc));
    assert.equal(sc.connections[idVictim], 'server', 'the introduction was made through the server');
    assert.equal(victimStats.connections[idC], 'server');
    // The channel works.
    const echoed = await c.evaluate(async (id) => {
      const ch = window.hg.mesh.channel(id);
      const got = new Promise((r) => ch.addEventListener('message', (m) => r(m.data), { once: true }));
      ch.send('ping:x');
      return got;
    }, idVictim);
    assert.equal(echoed, 'pong:x');
  });
  await closePages(pages);
  await stopProcess(edge);
});

test('2b: a relaying page that loses what it relays: the introduction goes through the server after connectTimeout', { skip, timeout: 120_000 }, async () => {
  const edge = await startEdge({ name: 'drop' });
  const room = 'drop-room';
  const pages = [];
  await withDiagnostics(pages, [edge], async () => {
    pages.push(await meshPage('a', edge, room, { tamper: 'drop' }));
    pages.push(await meshPage('b', edge, room, { tamper: 'drop' }));
    const [a, b] = pages;
    const [idA, idB] = await Promise.all([peerId(a), peerId(b)]);
    await waitConnected(a, [idB]);
    await waitConnected(b, [idA]);
    const c = await meshPage('c', edge, room);
    pages.push(c);
    const idC = await peerId(c);
    await waitConnected(c, [idA, idB]);
    await waitConnected(a, [idB, idC]);
    await waitConnected(b, [idA, idC]);
    const sc = await stats(c);
    assert.deepEqual(Object.values(sc.connections).sort(), ['server', 'server'], JSON.stringify(sc));
    assert.equal(sc.fallbacks, 1, JSON.stringify(sc));
    const fallback = await c.evaluate(() => window.hg.events.filter((e) => e.type === 'fallback'));
    assert.equal(fallback[0].reason, 'timeout');
  });
  await closePages(pages);
  await stopProcess(edge);
});

test('3+4: every edge stops; an ICE restart and a new DataChannel complete through the peers; rooms are discovered from neighbours; the edges come back, rosters agree with the registry and the connections are kept', { skip, timeout: 240_000 }, async () => {
  const coordinator = await startCoordinator();
  let edge1 = await startEdge({ name: 'one', region: 'eu-test', coordinator });
  let edge2 = await startEdge({ name: 'two', region: 'eu-test', coordinator });
  const room = 'outage-room';
  const pages = [];
  const procs = () => [edge1, edge2, coordinator];
  await withDiagnostics(pages, procs(), async () => {
    pages.push(await meshPage('a', edge1, room));
    pages.push(await meshPage('b', edge1, room));
    pages.push(await meshPage('c', edge2, room));
    const [a, b, c] = pages;
    let ids = await Promise.all(pages.map(peerId));
    await Promise.all(pages.map((p, k) => waitConnected(p, ids.filter((_, j) => j !== k))));
    // A is also alone in another public room, which only its neighbours can tell C of.
    await joinRoom(a, 'side-room');
    await c.waitForFunction(() => window.hg.mesh.knownRooms.has('side-room'), null, { timeout: STEP });

    const viaServer = await Promise.all(pages.map((p) => stats(p).then((s) => s.signalsViaServer)));
    // Each connection object is marked, to tell later whether it was kept.
    await Promise.all(pages.map((p) => p.evaluate(() => {
      for (const peer of window.hg.mesh.peers.values()) peer.pc.kept = true;
    })));
    await stopProcess(edge1);
    await stopProcess(edge2);
    await Promise.all(pages.map((p) => p.waitForFunction(() => window.hg.client.state !== 'open')));

    // 4: C's edge is unreachable; the rooms its neighbours advertised are still found.
    const found = await c.evaluate(() => window.hg.mesh.discoverRooms());
    assert.equal(found.server, false);
    const side = found.items.find((i) => i.room === 'side-room');
    assert.ok(side, JSON.stringify(found));
    assert.equal(side.source, 'gossip');
    assert.equal(side.members, 1);
    assert.ok(side.age >= 0 && side.age < 60_000);
    assert.equal(found.items.find((i) => i.room === room)?.source, 'self');

    // 3: A restarts ICE with B and opens a new channel to it, with no edge at all.
    const [idA, idB] = [ids[0], ids[1]];
    const ufrag = (p, id) => p.evaluate((peer) => /a=ice-ufrag:(\S+)/.exec(window.hg.mesh.peers.get(peer).pc.remoteDescription.sdp)[1], id);
    const before = await ufrag(b, idA);
    await a.evaluate((peer) => {
      const pc = window.hg.mesh.peers.get(peer).pc;
      pc.restartIce();
      const ch = pc.createDataChannel('after-outage');
      ch.onopen = () => ch.send('ping:outage');
      ch.onmessage = (m) => { window.outageReply = m.data; };
    }, idB);
    await b.waitForFunction(({ peer, old }) => {
      const p = window.hg.mesh.peers.get(peer);
      const u = /a=ice-ufrag:(\S+)/.exec(p.pc.remoteDescription.sdp)[1];
      return u !== old && p.pc.connectionState === 'connected' && p.pc.signalingState === 'stable';
    }, { peer: idA, old: before }, { timeout: STEP });
    assert.notEqual(await ufrag(b, idA), before);
    await b.waitForFunction((peer) => window.hg.channels.some((ch) => ch.peer === peer && ch.label === 'after-outage'), idA);
    await a.waitForFunction(() => window.outageReply === 'pong:outage');
    // Nothing went to the (unreachable) server, and the mesh is whole.
    const afterOutage = await Promise.all(pages.map((p) => stats(p).then((s) => s.signalsViaServer)));
    assert.deepEqual(afterOutage, viaServer);
    assert.ok((await stats(a)).signalsViaPeers > 0);
    await Promise.all(pages.map((p, k) => waitConnected(p, ids.filter((_, j) => j !== k))));

    // The edges come back on their addresses: the pages resume or rejoin, the mesh is rebuilt
    // with the roster, and every roster is the registry's.
    edge1 = await startEdge({ name: 'one', listen: edge1.addr, region: 'eu-test', coordinator });
    edge2 = await startEdge({ name: 'two', listen: edge2.addr, region: 'eu-test', coordinator });
    await Promise.all(pages.map((p) => p.waitForFunction(() => window.hg.client.state === 'open'
      && window.hg.client.resume == null, null, { timeout: STEP })));
    const oldIds = ids;
    ids = await Promise.all(pages.map(peerId));
    const backAt = Date.now();
    const rosterOf = (p) => p.evaluate((r) => [window.hg.client.peerId,
      ...window.hg.client.peers(r).map((x) => x.id)].sort(), room);
    const want = [...ids].sort();
    const end = Date.now() + 60_000;
    let seen = null;
    while (Date.now() < end) {
      seen = { registry: await registryMembers(coordinator, room), pages: await Promise.all(pages.map(rosterOf)) };
      if (JSON.stringify(seen.registry) === JSON.stringify(want)
        && seen.pages.every((r) => JSON.stringify(r) === JSON.stringify(want))) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.deepEqual(seen.registry, want, JSON.stringify(seen));
    for (const r of seen.pages) assert.deepEqual(r, want);
    await Promise.all(pages.map((p, k) => waitConnected(p, ids.filter((_, j) => j !== k), 60_000)));
    const kept = ids.filter((id, k) => id === oldIds[k]).length;
    // The connections were kept across the rejoins: rebound to the new ids, none closed.
    for (const p of pages) {
      const { allKept, closes } = await p.evaluate(() => ({
        allKept: [...window.hg.mesh.peers.values()].every((peer) => peer.pc.kept === true),
        closes: window.hg.events.filter((e) => e.type === 'close'),
      }));
      assert.equal(allKept, true, `${p.label}: a connection was replaced`);
      assert.deepEqual(closes, [], `${p.label}: ${JSON.stringify(closes)}`);
    }
    console.log(`edges back: ${kept} of 3 sessions resumed, ${3 - kept} rejoined; rosters agreed with the `
      + `registry and the mesh was whole again ${Date.now() - backAt} ms after the pages reconnected, `
      + 'on the same connections');
  });
  await closePages(pages);
  await stopProcess(edge1);
  await stopProcess(edge2);
  await stopProcess(coordinator);
});
