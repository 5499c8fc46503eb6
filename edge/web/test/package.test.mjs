// The SDK as an app installs it: its types cover every error code the edge can send, an
// exhaustive switch over them compiles, and `npm pack` ships the SDK and its types.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const read = (p) => readFileSync(path.join(WEB, p), 'utf8');

/** The codes of the edge's `ErrorCode::as_str`, read from its source. */
function edgeErrorCodes() {
  const src = read('../src/protocol/mod.rs');
  const start = src.indexOf('impl ErrorCode');
  assert.ok(start >= 0, 'impl ErrorCode in edge/src/protocol/mod.rs');
  const body = src.slice(start, src.indexOf('\n}\n', start));
  return [...body.matchAll(/Self::\w+ => "([a-z-]+)"/g)].map((m) => m[1]).sort();
}

/** The literals of a string-union type alias in heliograph.d.ts. */
function unionOf(name) {
  const dts = read('heliograph.d.ts');
  const m = dts.match(new RegExp(`export type ${name} =([^;]+);`));
  assert.ok(m, `type ${name} in heliograph.d.ts`);
  return [...m[1].matchAll(/'([a-z-]+)'/g)].map((x) => x[1]).sort();
}

test('the SDK types list exactly the error codes the edge sends', () => {
  const edge = edgeErrorCodes();
  assert.ok(edge.length >= 20, `found ${edge.length} codes in the edge`);
  assert.deepEqual(unionOf('ServerErrorCode'), edge);
  // The protocol document lists them too.
  const doc = readFileSync(path.join(WEB, '../../docs/PROTOCOL.md'), 'utf8');
  for (const code of edge) assert.match(doc, new RegExp(`\\| \`${code}\` \\|`), `${code} in PROTOCOL.md`);
});

test('an exhaustive switch over every error code compiles (tsc --noEmit)', () => {
  const tsc = path.join(WEB, 'node_modules', '.bin', 'tsc');
  execFileSync(tsc, ['--noEmit', '-p', path.join(WEB, 'test', 'types')], { stdio: 'pipe' });
});

test('npm pack ships the SDK, its types and the package description', () => {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json'], { cwd: WEB, encoding: 'utf8' });
  const [pack] = JSON.parse(out);
  assert.equal(pack.name, '@heliograph/client');
  assert.deepEqual(pack.files.map((f) => f.path).sort(), ['heliograph.d.ts', 'heliograph.js', 'package.json']);
  const pkg = JSON.parse(read('package.json'));
  assert.equal(pkg.private, undefined, 'installable, not private');
  assert.equal(pkg.exports['.'].types, './heliograph.d.ts');
  assert.equal(pkg.exports['.'].default, './heliograph.js');
});
