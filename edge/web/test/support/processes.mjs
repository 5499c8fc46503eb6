// Real edge and coordinator processes for the browser tests, on loopback ports they choose.
// Every child is killed when the test process exits; `scratch` holds their data dirs.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../../../..');
export const EDGE_BIN = process.env.HELIOGRAPH_EDGE_BIN
  ?? [process.env.CARGO_TARGET_DIR, path.join(ROOT, 'target')]
    .filter(Boolean)
    .map((dir) => path.join(dir, 'debug', 'heliograph-edge'))
    .find((p) => existsSync(p))
  ?? path.join(ROOT, 'target', 'debug', 'heliograph-edge');
export const COORDINATOR_BIN = process.env.HELIOGRAPH_COORDINATOR_BIN
  ?? path.join(path.dirname(EDGE_BIN), 'heliograph-coordinator');
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--allow-loopback-in-peer-connection',
];
const CLUSTER_SECRET = randomBytes(24).toString('hex');
/** The coordinator's server API key (`HELIOGRAPH_API_KEYS`), to read rosters from the registry. */
export const API_KEY = randomBytes(24).toString('hex');

/** Only loopback may be reachable: the tests refuse to run on a host network. */
export const onlyLoopback = Object.values(networkInterfaces()).flat().every((a) => a.internal);

export const scratch = mkdtempSync(path.join(tmpdir(), 'hg-browser-'));
const children = new Set();

export function killChildren() {
  for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
  rmSync(scratch, { recursive: true, force: true });
}
process.on('exit', killChildren);

/** Spawns `bin` and resolves with its first stdout line (JSON with its bound addresses). */
function spawnWithJsonLine(bin, args, label, env = {}) {
  if (!existsSync(bin)) {
    throw new Error(`no binary at ${bin}: run \`cargo build --workspace\` `
      + '(it honours CARGO_TARGET_DIR) or set HELIOGRAPH_EDGE_BIN / HELIOGRAPH_COORDINATOR_BIN');
  }
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  children.add(child);
  const stderr = [];
  child.stderr.on('data', (d) => { stderr.push(String(d)); if (stderr.length > 200) stderr.shift(); });
  child.once('exit', () => children.delete(child));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`${label} did not start within 20 s`)), 20_000);
    const fail = (e) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${e.message}\n${stderr.join('')}`));
    };
    child.once('error', fail);
    child.once('exit', (code) => fail(new Error(`${label} exited with ${code}`)));
    createInterface({ input: child.stdout }).once('line', (line) => {
      clearTimeout(timer);
      child.removeAllListeners('exit');
      child.once('exit', () => children.delete(child));
      resolve({ child, line: JSON.parse(line), stderr });
    });
  });
}

/** A one-replica coordinator cluster; `api` is its server API (HTTP, `API_KEY`). */
export async function startCoordinator() {
  const env = { HELIOGRAPH_CLUSTER_SECRET: CLUSTER_SECRET, HELIOGRAPH_LOG: 'warn' };
  const { child, line, stderr } = await spawnWithJsonLine(COORDINATOR_BIN, [
    'serve', '--id', '1', '--raft-listen', '127.0.0.1:0', '--api-listen', '127.0.0.1:0',
    '--region', 'eu-test', '--metrics-listen', '127.0.0.1:0', '--grace-ms', '3000',
    '--data-dir', mkdtempSync(path.join(scratch, 'coordinator-')),
  ], 'coordinator', { ...env, HELIOGRAPH_API_KEYS: `test=${API_KEY}` });
  const bootstrap = spawn(COORDINATOR_BIN, ['bootstrap', '--api', line.api],
    { stdio: 'ignore', env: { ...process.env, ...env } });
  const code = await new Promise((r) => bootstrap.once('exit', r));
  if (code !== 0) throw new Error(`bootstrap exited with ${code}`);
  return { name: 'coordinator', child, api: `http://${line.api}`, http: `http://${line.metrics}`, stderr };
}

/** The members of `room` as the registry has them (the coordinator's server API). */
export async function registryMembers(coordinator, room) {
  const res = await fetch(`${coordinator.http}/api/v1/rooms/${encodeURIComponent(room)}`,
    { headers: { authorization: `Bearer ${API_KEY}` } });
  if (res.status === 404) return [];
  if (!res.ok) throw new Error(`server API: ${res.status} ${await res.text()}`);
  return (await res.json()).members.map((m) => m.peer_id).sort();
}

/** Starts an edge (embedded registry, or `coordinator`'s cluster) once it is listening. */
export async function startEdge({ name, listen = '127.0.0.1:0', region = 'local', coordinator = null, extra = [] }) {
  const args = [
    '--listen', listen, '--data-dir', path.join(scratch, `edge-${name}`), '--region', region,
    '--edge-id', `edge-${name}`, '--shutdown-grace-ms', '3000', '--log', 'warn', ...extra,
  ];
  const env = {};
  if (coordinator) {
    args.push('--coordinator', coordinator.api);
    env.HELIOGRAPH_CLUSTER_SECRET = CLUSTER_SECRET;
  }
  const { child, line, stderr } = await spawnWithJsonLine(EDGE_BIN, args, `edge ${name}`, env);
  const addr = line.listening;
  return { name, child, addr, http: `http://${addr}`, ws: `ws://${addr}/ws`, region, stderr };
}

/** SIGTERM, then SIGKILL if the process overruns its deadline. */
export async function stopProcess(proc) {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return;
  const exited = new Promise((r) => proc.child.once('exit', r));
  proc.child.kill('SIGTERM');
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** The sum of every sample of `name` on `/metrics` whose labels include `labels`. */
export async function metricSum(edge, name, labels = {}) {
  const text = await (await fetch(`${edge.http}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const ok = Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`));
    if (ok) sum += Number(line.split(' ').at(-1));
  }
  return sum;
}
