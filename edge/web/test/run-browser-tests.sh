#!/usr/bin/env bash
# Runs the real-browser tests inside a fresh network namespace whose only interface is `lo`:
# WebRTC then gathers 127.0.0.1 candidates and nothing can leave the machine. Needs root.
# Usage: test/run-browser-tests.sh [node --test arguments]   (default: test/browser/)
set -euo pipefail
cd "$(dirname "$0")/.."

ns="hgtest-$$-$RANDOM"
ip netns add "$ns"
trap 'ip netns delete "$ns" 2>/dev/null || true' EXIT
ip -n "$ns" link set lo up

if [ "$#" -eq 0 ]; then
  set -- test/browser/
fi
ip netns exec "$ns" node --test "$@"
