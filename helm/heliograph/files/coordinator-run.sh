#!/bin/sh
# Heliograph coordinator entrypoint for Kubernetes (StatefulSet pods).
#
# Starts `heliograph-coordinator serve` and then, once per data volume, makes the replica a
# member of its Raft group. TOPOLOGY says which group:
#   regions (one Raft group per region, all voters inside the region):
#     * ordinal 0 bootstraps its region's group, unless one of this region's replicas
#       (SIBLINGS) already reports a leader: then it adds itself;
#     * every other replica adds itself (`add`) through this region's replicas. PEERS,
#       BOOTSTRAP and LEARNER_ONLY are not used;
#     * on every start (not only the first), in the background, the replica tells its group
#       where the other regions' gateways are: `heliograph-coordinator region` for each entry
#       of REGIONS ("eu=host:port,host:port;ap=host:port"), retried every few seconds until it
#       succeeds (it needs a leader) or the server has gone. Repeating it is harmless.
#   global (one Raft group whose voters span regions):
#     * ordinal 0 of the region with BOOTSTRAP=true bootstraps a fresh cluster, unless some
#       other coordinator (this region's replicas or PEERS) already reports a leader: then it
#       adds itself;
#     * every other replica adds itself (`add`) through whichever known coordinator accepts
#       it (the leader), as a learner when LEARNER_ONLY=true. REGIONS is not used.
# A marker file on the volume makes restarts skip the join; a replica that already sees a leader
# from its own API counts as a member too. Scale-up works the same way: new ordinals add
# themselves. Scale-down does NOT remove members: run `heliograph-coordinator remove` first.
#
# Environment (set by the chart): POD_NAME POD_NAMESPACE REGION ID_BASE RAFT_PORT API_PORT
# METRICS_PORT GRACE_MS DATA_ROOT HEADLESS_SERVICE CLUSTER_DOMAIN ADVERTISE_HOST_TEMPLATE
# TOPOLOGY SIBLINGS PEERS BOOTSTRAP LEARNER_ONLY REGIONS JOIN_TIMEOUT HELIOGRAPH_CLUSTER_SECRET.
# Extra arguments are passed to `serve`.
set -eu

log() { echo "coordinator-run: $*" >&2; }

topology="${TOPOLOGY:-global}"
case "$topology" in
  regions|global) ;;
  *) log "unknown TOPOLOGY '$topology' (regions or global)"; exit 64 ;;
esac

ordinal="${POD_NAME##*-}"
case "$ordinal" in
  ''|*[!0-9]*) log "cannot read the ordinal from pod name $POD_NAME"; exit 64 ;;
esac
id=$((ID_BASE + ordinal))
if [ -n "${ADVERTISE_HOST_TEMPLATE:-}" ]; then
  host=$(printf '%s' "$ADVERTISE_HOST_TEMPLATE" | sed "s/{ordinal}/$ordinal/g")
else
  host="$POD_NAME.$HEADLESS_SERVICE.$POD_NAMESPACE.svc.$CLUSTER_DOMAIN"
fi
data_dir="$DATA_ROOT/raft"
marker="$DATA_ROOT/.heliograph-member"
local_api="127.0.0.1:$API_PORT"
mkdir -p "$data_dir"

log "node $id of region $REGION ($topology topology), advertised as $host (raft $RAFT_PORT, api $API_PORT)"
heliograph-coordinator serve \
  --id "$id" \
  --raft-listen "0.0.0.0:$RAFT_PORT" \
  --api-listen "0.0.0.0:$API_PORT" \
  --advertise-raft "$host:$RAFT_PORT" \
  --advertise-api "$host:$API_PORT" \
  --region "$REGION" \
  --data-dir "$data_dir" \
  --grace-ms "$GRACE_MS" \
  --metrics-listen "0.0.0.0:$METRICS_PORT" \
  "$@" &
server=$!

# SIGTERM goes to the server, which drains within its own deadline; we then exit with its status.
trap 'kill -TERM "$server" 2>/dev/null || true' TERM INT

alive() { kill -0 "$server" 2>/dev/null; }
now() { date +%s; }
deadline=$(( $(now) + JOIN_TIMEOUT ))
in_time() { [ "$(now)" -lt "$deadline" ]; }

# Every known coordinator API but our own: this region's replicas, then (topology global only)
# other regions' peers.
candidates() {
  if [ "$topology" = regions ]; then
    known="${SIBLINGS:-}"
  else
    known=$(printf '%s,%s' "${SIBLINGS:-}" "${PEERS:-}")
  fi
  for a in $(printf '%s' "$known" | tr ',' ' '); do
    case "$a" in
      "$POD_NAME".*) ;;
      *) echo "$a" ;;
    esac
  done
}

# `status` prints JSON; a replica in a working cluster reports a numeric "leader". Only the first
# "leader" is its own group's: the other regions' groups follow, nested under "regions".
has_leader() {
  heliograph-coordinator status --api "$1" 2>/dev/null \
    | tr -d ' \n\t' | grep -o '"leader":[^,}]*' | head -n 1 | grep -q '"leader":[0-9]'
}

add_self() {
  set -- --id "$id" --raft "$host:$RAFT_PORT" --node-api "$host:$API_PORT" --region "$REGION"
  if [ "$topology" = global ] && [ "${LEARNER_ONLY:-false}" = true ]; then
    set -- "$@" --learner-only
  fi
  while alive && in_time; do
    for api in $(candidates); do
      if heliograph-coordinator add --api "$api" "$@"; then
        log "added to the cluster through $api"
        return 0
      fi
    done
    sleep 2
  done
  return 1
}

join() {
  until heliograph-coordinator status --api "$local_api" >/dev/null 2>&1; do
    alive && in_time || return 1
    sleep 1
  done
  if has_leader "$local_api"; then
    log "already a member of a cluster"
    return 0
  fi
  # Topology regions: ordinal 0 of every region starts its region's group. Global: ordinal 0
  # of the BOOTSTRAP region starts the one cluster.
  if [ "$ordinal" = 0 ] && { [ "$topology" = regions ] || [ "${BOOTSTRAP:-false}" = true ]; }; then
    for api in $(candidates); do
      if has_leader "$api"; then
        log "$api already belongs to a cluster: joining it instead of bootstrapping"
        add_self
        return
      fi
    done
    if [ "$topology" = regions ]; then
      log "bootstrapping region $REGION's group"
    else
      log "bootstrapping a new cluster"
    fi
    heliograph-coordinator bootstrap --api "$local_api"
    return
  fi
  add_self
}

# Topology regions: tell this region's group where the other regions' gateways are, one
# `region` command per REGIONS entry (region=host:port,host:port), each retried until it
# succeeds (the group needs a leader) or the server has gone.
announce() {
  name=${1%%=*}
  gateways=${1#*=}
  tries=0
  while alive; do
    tries=$((tries + 1))
    if out=$(heliograph-coordinator region --api "$local_api" --region "$name" --gateways "$gateways" 2>&1); then
      log "told the group that region $name's gateways are $gateways"
      return 0
    fi
    if [ "$tries" = 1 ]; then
      log "could not announce region $name yet (retrying every 3s): $out"
    fi
    sleep 3
  done
  return 1
}

announce_regions() {
  for entry in $(printf '%s' "$REGIONS" | tr ';' ' '); do
    case "$entry" in
      ?*=?*) ;;
      *) log "ignoring REGIONS entry '$entry' (expected region=host:port,...)"; continue ;;
    esac
    if ! announce "$entry"; then
      log "the server has stopped: no more region announcements"
      return 0
    fi
  done
}

if [ "$topology" = regions ] && [ -n "${REGIONS:-}" ]; then
  announce_regions &
fi

if [ ! -f "$marker" ]; then
  if join; then
    date -u +%Y-%m-%dT%H:%M:%SZ > "$marker"
  elif alive; then
    log "could not join the cluster within ${JOIN_TIMEOUT}s; restarting"
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" || true
    exit 1
  fi
fi

while :; do
  rc=0
  wait "$server" || rc=$?
  alive || break
done
exit "$rc"
