#!/usr/bin/env bash
# The web suite: SDK unit tests (Node, fakes) and real-browser tests (Chromium, in a
# loopback-only network namespace), in one `node --test` run so that it ends with one summary.
#
# Needs: node, /usr/bin/chromium (apt-get install -y chromium), root for `ip netns`.
# The edge binary: $HELIOGRAPH_EDGE_BIN, or built here into ${CARGO_TARGET_DIR:-<repo>/target}.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/typescript ] || [ ! -d node_modules/socket.io-client ]; then
  npm ci --no-audit --no-fund
fi
if [ -z "${HELIOGRAPH_EDGE_BIN:-}" ]; then
  cargo build --quiet -p heliograph-edge -p heliograph-coordinator
fi

exec bash test/run-browser-tests.sh test/*.test.mjs test/browser/
