#!/usr/bin/env bash
# Runs a complete Heliograph cluster on this machine as separate processes on 127.0.0.1:
# three coordinator replicas (the first bootstrapped, the others added) and two edges linked
# to all three.
#
#   deploy/local-cluster.sh up     [DIR]   start everything (DIR defaults to ./.heliograph-local)
#   deploy/local-cluster.sh status [DIR]   each process, its PID and liveness, and the cluster
#   deploy/local-cluster.sh down   [DIR]   SIGTERM everything, SIGKILL what is left after 10 s
#
# Ports (add HELIOGRAPH_PORT_OFFSET to each):
#   replica N (1-3): raft 710N, API 720N, /metrics /healthz /readyz 730N
#   edge a, b:       WebSocket, /metrics and health on 8101 and 8102
# DIR holds one folder per process (data and logs), the PID files and the cluster secret.
#
# Binaries come from target/release (built when missing), or from HELIOGRAPH_BIN_DIR.
# HELIOGRAPH_LOCAL_LEASE_MS and HELIOGRAPH_LOCAL_GRACE_MS set the edges' lease and the
# replicas' detach grace (defaults: the binaries' own); HELIOGRAPH_LOCAL_EDGE_ARGS adds flags to
# both edges (e.g. "--rate-limit-per-second 1000000" for benchmarks).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-}"
dir="${2:-./.heliograph-local}"
offset="${HELIOGRAPH_PORT_OFFSET:-0}"
replicas=(1 2 3)
edges=(a b)
# How long `up` waits for each process, and `down` for each process to exit (in 0.1 s steps).
wait_steps=200
stop_steps=100

die() { echo "local-cluster: $*" >&2; exit 1; }

bin_dir() {
  if [ -n "${HELIOGRAPH_BIN_DIR:-}" ]; then
    echo "$HELIOGRAPH_BIN_DIR"
  else
    echo "${CARGO_TARGET_DIR:-$repo/target}/release"
  fi
}

ensure_binaries() {
  local b
  b="$(bin_dir)"
  if [ ! -x "$b/heliograph-coordinator" ] || [ ! -x "$b/heliograph-edge" ]; then
    [ -z "${HELIOGRAPH_BIN_DIR:-}" ] || die "no heliograph binaries in HELIOGRAPH_BIN_DIR=$b"
    echo "local-cluster: building release binaries" >&2
    (cd "$repo" && cargo build --release --quiet -p heliograph-coordinator -p heliograph-edge)
  fi
  coordinator="$b/heliograph-coordinator"
  edge="$b/heliograph-edge"
}

raft_addr() { echo "127.0.0.1:$((7100 + offset + $1))"; }
api_addr() { echo "127.0.0.1:$((7200 + offset + $1))"; }
metrics_addr() { echo "127.0.0.1:$((7300 + offset + $1))"; }
edge_addr() {
  case "$1" in a) echo "127.0.0.1:$((8101 + offset))" ;; *) echo "127.0.0.1:$((8102 + offset))" ;; esac
}

alive() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

# Starts a process detached from this shell, with its PID recorded as $dir/$name.pid.
launch() {
  local name="$1"
  shift
  mkdir -p "$dir/$name"
  setsid "$@" >"$dir/$name/stdout.log" 2>"$dir/$name/stderr.log" </dev/null &
  echo $! >"$dir/$name.pid"
}

admin() { HELIOGRAPH_CLUSTER_SECRET="$(cat "$dir/secret")" "$coordinator" "$@"; }

# Polls `check` (a command) until it succeeds, at most wait_steps times.
wait_until() {
  local what="$1"
  shift
  local i
  for ((i = 0; i < wait_steps; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "timed out waiting for $what (logs under $dir)"
}

replica_answers() { admin status --api "$(api_addr "$1")"; }
# Whether replica 1's status JSON (whitespace removed) matches the regular expression $1.
status_has() { admin status --api "$(api_addr 1)" | tr -d ' \n' | grep -q "$1"; }
edge_ready() { curl -fsS "http://$(edge_addr "$1")/readyz"; }

up() {
  ensure_binaries
  for r in "${replicas[@]}"; do alive "coordinator-$r" && die "coordinator-$r is already running"; done
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [ ! -f "$dir/secret" ]; then
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/secret")
  fi
  local grace=() lease=() urls=""
  [ -z "${HELIOGRAPH_LOCAL_GRACE_MS:-}" ] || grace=(--grace-ms "$HELIOGRAPH_LOCAL_GRACE_MS")
  [ -z "${HELIOGRAPH_LOCAL_LEASE_MS:-}" ] || lease=(--lease-ms "$HELIOGRAPH_LOCAL_LEASE_MS")
  for r in "${replicas[@]}"; do
    HELIOGRAPH_CLUSTER_SECRET="$(cat "$dir/secret")" launch "coordinator-$r" "$coordinator" serve \
      --id "$r" --region local --data-dir "$dir/coordinator-$r/data" \
      --raft-listen "$(raft_addr "$r")" --api-listen "$(api_addr "$r")" \
      --metrics-listen "$(metrics_addr "$r")" "${grace[@]}"
    urls="${urls:+$urls,}http://$(api_addr "$r")"
  done
  for r in "${replicas[@]}"; do wait_until "coordinator-$r to answer" replica_answers "$r"; done
  # Replicas restarted on their data directories elect a leader among themselves; a new
  # cluster is bootstrapped on the first and grown one replica at a time.
  if status_has '"members":\[\]'; then
    admin bootstrap --api "$(api_addr 1)" >/dev/null
    for r in "${replicas[@]:1}"; do
      admin add --api "$(api_addr 1)" --id "$r" --raft "$(raft_addr "$r")" \
        --node-api "$(api_addr "$r")" --region local >/dev/null
    done
  fi
  wait_until "a leader" status_has '"leader":[0-9]'
  for e in "${edges[@]}"; do
    HELIOGRAPH_CLUSTER_SECRET="$(cat "$dir/secret")" launch "edge-$e" "$edge" \
      --listen "$(edge_addr "$e")" --data-dir "$dir/edge-$e/data" --region local \
      --edge-id "edge-$e" --coordinator "$urls" "${lease[@]}" ${HELIOGRAPH_LOCAL_EDGE_ARGS:-}
  done
  for e in "${edges[@]}"; do wait_until "edge-$e to be ready" edge_ready "$e"; done
  echo "local-cluster: up in $dir"
  for e in "${edges[@]}"; do echo "  edge-$e         ws://$(edge_addr "$e")/ws"; done
  for r in "${replicas[@]}"; do
    echo "  coordinator-$r  api $(api_addr "$r")  metrics http://$(metrics_addr "$r")/metrics"
  done
}

status() {
  [ -d "$dir" ] || die "no cluster state in $dir"
  ensure_binaries
  local name pid state api=""
  for name in "${edges[@]/#/edge-}" "${replicas[@]/#/coordinator-}"; do
    pid="$(cat "$dir/$name.pid" 2>/dev/null || echo -)"
    if alive "$name"; then state=alive; else state=dead; fi
    printf '%-14s pid %-8s %s\n' "$name" "$pid" "$state"
    if [ "$state" = alive ] && [ -z "$api" ] && [[ "$name" == coordinator-* ]]; then
      api="$(api_addr "${name#coordinator-}")"
    fi
  done
  [ -n "$api" ] || die "no coordinator replica is running"
  admin status --api "$api"
}

down() {
  [ -d "$dir" ] || die "no cluster state in $dir"
  local name pid i
  # Edges first, so that they release their peers while the registry is still there.
  for name in "${edges[@]/#/edge-}" "${replicas[@]/#/coordinator-}"; do
    alive "$name" || { rm -f "$dir/$name.pid"; continue; }
    pid="$(cat "$dir/$name.pid")"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < stop_steps; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "local-cluster: $name (pid $pid) ignored SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/$name.pid"
    echo "local-cluster: stopped $name (pid $pid)"
  done
}

case "$cmd" in
  up) up ;;
  status) status ;;
  down) down ;;
  *) die "usage: $0 up|status|down [DIR]" ;;
esac
