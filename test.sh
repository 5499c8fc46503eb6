#!/usr/bin/env bash
# Runs every Heliograph test on a fresh machine: installs what is missing, then builds and
# runs the Rust suites and the SDK's unit and browser tests. CI calls exactly this.
set -euo pipefail
cd "$(dirname "$0")"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
if [ -f helm/requirements-test.txt ]; then
  python3 -m pip install --quiet --disable-pip-version-check -r helm/requirements-test.txt
fi

# A from-scratch build gains nothing from incremental state, which would double its size on disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

echo "== format, lints and layering"
cargo fmt --all -- --check
python3 tools/layering.py
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings

echo "== build (the binaries are used by other packages' tests)"
cargo build --workspace --locked --quiet

# The edge's Socket.IO tests drive the official socket.io-client (pinned in edge/web's
# package-lock.json) from the Rust suite, so the npm packages come first.
if [ ! -d edge/web/node_modules/socket.io-client ] || [ ! -d edge/web/node_modules/playwright-core ]; then
  echo "== npm packages of edge/web"
  (cd edge/web && npm ci --no-audit --no-fund)
fi
# The loadtest's Socket.IO comparison runs a Node.js Socket.IO server (pinned in its lock file).
if [ ! -d loadtest/socketio-node/node_modules/socket.io ]; then
  (cd loadtest/socketio-node && npm ci --no-audit --no-fund)
fi

echo "== Rust tests"
cargo nextest run --workspace --locked --no-fail-fast

if [ -f helm/tests/run.sh ]; then
  echo "== Helm chart, image and monitoring tests"
  bash helm/tests/run.sh
fi

if [ -f edge/web/test/run-all.sh ]; then
  echo "== SDK and browser tests"
  # The binaries built above: building them again per package would compile a second copy
  # (other feature set) for nothing.
  bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/debug"
  HELIOGRAPH_EDGE_BIN="$bin_dir/heliograph-edge" \
    HELIOGRAPH_COORDINATOR_BIN="$bin_dir/heliograph-coordinator" \
    bash edge/web/test/run-all.sh
fi
