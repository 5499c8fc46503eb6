//! The coordinator's metrics, through the `metrics` facade (the binary installs a recorder).
//!
//! Invariant: names carry units and label values come from fixed sets (command names), never
//! from room or peer ids.

use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for latencies, in seconds (50 µs to 10 s).
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder of a Heliograph binary (`_seconds` histograms get
/// [`LATENCY_BUCKETS_SECONDS`]) and starts its upkeep: histogram samples are kept until
/// folded into buckets, and an edge records one per relayed signal, so without upkeep they
/// would grow until the next scrape (or forever). The upkeep runs on a thread of its own,
/// never on the runtime's workers, where it would stall sessions.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS_SECONDS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        // Scrapes still fold the samples; only an unscraped process grows.
        tracing::warn!(error = %e, "could not start the metrics upkeep thread");
    }
    Ok(handle)
}

/// `heliograph_build_info{binary, version}`: always 1; tells dashboards what runs where.
pub const BUILD_INFO: &str = "heliograph_build_info";

/// The `process_*` metrics (CPU seconds, resident and virtual memory, open and maximum file
/// descriptors, threads, start time), read from `/proc` at each scrape.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Records what every Heliograph binary exposes besides its own metrics: the build info
/// gauge of `binary` and the descriptions of the `process_*` metrics (taken by [`render`]).
pub fn describe_process(binary: &'static str) {
    metrics::describe_gauge!(
        BUILD_INFO,
        "the binary and version of this process (always 1)"
    );
    metrics::gauge!(BUILD_INFO, "binary" => binary, "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    let process = process_collector();
    process.describe();
    process.collect();
}

/// The text a `/metrics` scrape answers: the `process_*` figures are read now, then
/// everything is rendered.
pub fn render(handle: &PrometheusHandle) -> String {
    process_collector().collect();
    handle.render()
}

pub const RAFT_TERM: &str = "heliograph_raft_term";
pub const RAFT_COMMIT_INDEX: &str = "heliograph_raft_commit_index";
pub const RAFT_LAST_APPLIED_INDEX: &str = "heliograph_raft_last_applied_index";
pub const RAFT_LEADER_CHANGES: &str = "heliograph_raft_leader_changes_total";
pub const RAFT_SNAPSHOTS_BUILT: &str = "heliograph_raft_snapshots_built_total";
pub const RAFT_SNAPSHOTS_INSTALLED: &str = "heliograph_raft_snapshots_installed_total";
pub const RAFT_APPLY_LAG: &str = "heliograph_raft_apply_lag_entries";
pub const RAFT_IS_LEADER: &str = "heliograph_raft_is_leader";
pub const REGISTRY_BATCHES: &str = "heliograph_registry_batches_total";
pub const REGISTRY_BATCHED_COMMANDS: &str = "heliograph_registry_batched_commands_total";
pub const REGISTRY_ROOMS: &str = "heliograph_registry_rooms";
pub const REGISTRY_COMMAND_DURATION: &str = "heliograph_registry_command_duration_seconds";
pub const RAFT_LOG_SYNC: &str = "heliograph_raft_log_sync_seconds";

// Gauges are f64; indexes and counts stay exact up to 2^53, far beyond what a registry reaches.
#[allow(clippy::cast_precision_loss)]
fn as_gauge(v: u64) -> f64 {
    v as f64
}

/// 1 on the replica that leads its group, 0 on the others.
pub(crate) fn raft_is_leader(leading: bool) {
    metrics::gauge!(RAFT_IS_LEADER).set(f64::from(u8::from(leading)));
}

pub(crate) fn raft_term(term: u64) {
    metrics::gauge!(RAFT_TERM).set(as_gauge(term));
}

pub(crate) fn raft_commit_index(index: u64) {
    metrics::gauge!(RAFT_COMMIT_INDEX).set(as_gauge(index));
}

pub(crate) fn raft_last_applied_index(index: u64) {
    metrics::gauge!(RAFT_LAST_APPLIED_INDEX).set(as_gauge(index));
}

pub(crate) fn raft_leader_changed() {
    metrics::counter!(RAFT_LEADER_CHANGES).increment(1);
}

pub(crate) fn snapshot_built() {
    metrics::counter!(RAFT_SNAPSHOTS_BUILT).increment(1);
}

pub(crate) fn snapshot_installed() {
    metrics::counter!(RAFT_SNAPSHOTS_INSTALLED).increment(1);
}

/// Committed entries this replica has not applied yet.
pub(crate) fn raft_apply_lag(entries: u64) {
    metrics::gauge!(RAFT_APPLY_LAG).set(as_gauge(entries));
}

/// One log entry proposed with `commands` commands. Two counters rather than a histogram:
/// their ratio is the mean batch size, and histograms here are reserved for durations.
pub(crate) fn batch_size(commands: usize) {
    metrics::counter!(REGISTRY_BATCHES).increment(1);
    metrics::counter!(REGISTRY_BATCHED_COMMANDS)
        .increment(u64::try_from(commands).unwrap_or(u64::MAX));
}

pub(crate) fn registry_rooms(rooms: usize) {
    metrics::gauge!(REGISTRY_ROOMS).set(as_gauge(u64::try_from(rooms).unwrap_or(u64::MAX)));
}

/// One durable write of the Raft log (its fsync included). openraft 0.9 holds the group's
/// Raft task until the write is durable, on the leader before it replicates: a slow disk
/// shows here first, and every join of the group waits for it.
pub(crate) fn log_sync(elapsed: Duration) {
    metrics::histogram!(RAFT_LOG_SYNC).record(elapsed.as_secs_f64());
}

/// `command` is one of `registry::Command::name`'s fixed names.
pub(crate) fn command_duration(command: &'static str, elapsed: Duration) {
    metrics::histogram!(REGISTRY_COMMAND_DURATION, "command" => command)
        .record(elapsed.as_secs_f64());
}

pub const RELAYED_SIGNALS: &str = "heliograph_coordinator_relayed_signals_total";
pub const RELAY_DROPPED: &str = "heliograph_coordinator_relay_dropped_total";
pub const RELAYED_RECEIPTS: &str = "heliograph_coordinator_relayed_receipts_total";
pub const LINKS_OPEN: &str = "heliograph_coordinator_edge_links_open";
pub const LINKS_DROPPED: &str = "heliograph_coordinator_edge_links_dropped_total";
pub const FANOUT_RESYNCS: &str = "heliograph_coordinator_fanout_resyncs_total";
pub const CROSS_REGION_MESSAGES: &str =
    "heliograph_coordinator_cross_region_streams_messages_total";

/// Directions of [`CROSS_REGION_MESSAGES`]: `out` to a replica of another region, `in` from one.
pub const CROSS_REGION_DIRECTIONS: [&str; 2] = ["in", "out"];
/// Labels of [`RELAYED_SIGNALS`].
pub const RELAY_ROUTES: [&str; 3] = ["local", "forwarded", "cross_region"];

/// Where a relayed signal went from this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRoute {
    /// Down a link to an edge attached to this replica.
    Local,
    /// To the replica the target edge is attached to, in this replica's region.
    Forwarded,
    /// To the replica the target edge is attached to, in another region (this replica is the
    /// sender's gateway).
    CrossRegion,
}

pub(crate) fn relayed(route: RelayRoute) {
    let route = match route {
        RelayRoute::Local => RELAY_ROUTES[0],
        RelayRoute::Forwarded => RELAY_ROUTES[1],
        RelayRoute::CrossRegion => RELAY_ROUTES[2],
    };
    metrics::counter!(RELAYED_SIGNALS, "route" => route).increment(1);
}

/// One edge-to-edge receipt passed on (routed like a signal, counted apart from them).
pub(crate) fn relayed_receipt() {
    metrics::counter!(RELAYED_RECEIPTS).increment(1);
}

/// One signal on a relay stream between replicas of different regions.
pub(crate) fn cross_region_message(outgoing: bool) {
    let direction = if outgoing {
        CROSS_REGION_DIRECTIONS[1]
    } else {
        CROSS_REGION_DIRECTIONS[0]
    };
    metrics::counter!(CROSS_REGION_MESSAGES, "direction" => direction).increment(1);
}

pub const RAFT_MESSAGES: &str = "heliograph_coordinator_raft_messages_total";
pub const REGION_REQUESTS: &str = "heliograph_coordinator_region_requests_total";
pub const DIRECTORY_LOOKUPS: &str = "heliograph_coordinator_directory_lookups_total";
pub const DIRECTORY_HITS: &str = "heliograph_coordinator_directory_hits_total";
pub const HOMING_CONFLICTS: &str = "heliograph_coordinator_homing_conflicts_total";
pub const FEDERATE_STREAMS: &str = "heliograph_coordinator_federate_streams";
pub const FEDERATE_DROPPED: &str = "heliograph_coordinator_federate_streams_dropped_total";
pub const REGIONS_FOLLOWED: &str = "heliograph_coordinator_regions_followed";
/// Labels of [`RAFT_MESSAGES`]: to a member of this replica's region, or of another.
pub const RAFT_SCOPES: [&str; 2] = ["region", "cross_region"];
/// Operations of [`REGION_REQUESTS`].
pub const REGION_OPS: [&str; 10] = [
    "join",
    "leave",
    "get_room",
    "remove",
    "close",
    "disconnect",
    "detach",
    "rebind",
    "edge_states",
    "discover_rooms",
];
/// Outcomes of [`REGION_REQUESTS`]: a call made, or given up (the region was unreachable).
pub const REGION_OUTCOMES: [&str; 2] = ["sent", "unavailable"];

/// One Raft RPC sent to another member (openraft's appends, votes and snapshots).
pub(crate) fn raft_message(cross_region: bool) {
    let scope = RAFT_SCOPES[usize::from(cross_region)];
    metrics::counter!(RAFT_MESSAGES, "scope" => scope).increment(1);
}

/// A request passed to another region's group (`op` from [`REGION_OPS`]).
pub(crate) fn region_request(op: &'static str, outcome: &'static str) {
    metrics::counter!(REGION_REQUESTS, "op" => op, "outcome" => outcome).increment(1);
}

/// One look-up of a room in the directory of other regions' rooms; `hit` when found there.
pub(crate) fn directory_lookup(hit: bool) {
    metrics::counter!(DIRECTORY_LOOKUPS).increment(1);
    if hit {
        metrics::counter!(DIRECTORY_HITS).increment(1);
    }
}

pub const DISCOVERY_REQUESTS: &str = "heliograph_coordinator_discovery_requests_total";
/// Outcomes of [`DISCOVERY_REQUESTS`]: an edge's listing with every region's rooms, one
/// missing the regions that did not answer in time, or another region's request for this
/// group's rooms alone.
pub const DISCOVERY_OUTCOMES: [&str; 3] = ["complete", "partial", "region"];

/// One discovery (public-room listing) request answered by this replica.
pub(crate) fn discovery_request(outcome: &'static str) {
    metrics::counter!(DISCOVERY_REQUESTS, "outcome" => outcome).increment(1);
}

/// A room this group homes that another region created too, and earlier.
pub(crate) fn homing_conflict() {
    metrics::counter!(HOMING_CONFLICTS).increment(1);
}

/// Streams of other regions' replicas following this one.
pub(crate) fn federate_streams(n: usize) {
    metrics::gauge!(FEDERATE_STREAMS).set(as_gauge(u64::try_from(n).unwrap_or(u64::MAX)));
}

pub(crate) fn federate_dropped() {
    metrics::counter!(FEDERATE_DROPPED).increment(1);
}

/// Other regions whose groups this replica follows right now (its streams to them are open).
pub(crate) fn regions_followed(n: usize) {
    metrics::gauge!(REGIONS_FOLLOWED).set(as_gauge(u64::try_from(n).unwrap_or(u64::MAX)));
}

/// Registers every labelled series at zero, so that a scrape shows them before the first
/// signal (tests and dashboards compare against 0 rather than a missing series).
pub fn describe() {
    for route in RELAY_ROUTES {
        metrics::counter!(RELAYED_SIGNALS, "route" => route).absolute(0);
    }
    for direction in CROSS_REGION_DIRECTIONS {
        metrics::counter!(CROSS_REGION_MESSAGES, "direction" => direction).absolute(0);
    }
    for reason in RELAY_DROP_REASONS {
        metrics::counter!(RELAY_DROPPED, "reason" => reason).absolute(0);
    }
    for scope in RAFT_SCOPES {
        metrics::counter!(RAFT_MESSAGES, "scope" => scope).absolute(0);
    }
    for op in REGION_OPS {
        for outcome in REGION_OUTCOMES {
            metrics::counter!(REGION_REQUESTS, "op" => op, "outcome" => outcome).absolute(0);
        }
    }
    for outcome in DISCOVERY_OUTCOMES {
        metrics::counter!(DISCOVERY_REQUESTS, "outcome" => outcome).absolute(0);
    }
    for counter in [
        RAFT_LEADER_CHANGES,
        RAFT_SNAPSHOTS_BUILT,
        RAFT_SNAPSHOTS_INSTALLED,
        REGISTRY_BATCHES,
        REGISTRY_BATCHED_COMMANDS,
        LINKS_DROPPED,
        FANOUT_RESYNCS,
        RELAYED_RECEIPTS,
        WEBHOOKS_DELIVERED,
        WEBHOOKS_RETRIED,
        WEBHOOKS_FAILED,
        WEBHOOKS_DROPPED,
        DIRECTORY_LOOKUPS,
        DIRECTORY_HITS,
        HOMING_CONFLICTS,
        FEDERATE_DROPPED,
    ] {
        metrics::counter!(counter).absolute(0);
    }
    for gauge in [
        RAFT_APPLY_LAG,
        RAFT_IS_LEADER,
        REGISTRY_ROOMS,
        LINKS_OPEN,
        WEBHOOKS_QUEUED,
        FEDERATE_STREAMS,
        REGIONS_FOLLOWED,
    ] {
        metrics::gauge!(gauge).increment(0.0);
    }
}

/// Why a relayed signal could not be passed on.
pub const RELAY_DROP_REASONS: [&str; 4] = ["unknown_edge", "no_route", "queue_full", "invalid"];

/// `reason` is one of a fixed set: `unknown_edge`, `no_route`, `queue_full`, `invalid`.
pub(crate) fn relay_dropped(reason: &'static str) {
    metrics::counter!(RELAY_DROPPED, "reason" => reason).increment(1);
}

pub(crate) fn links_open(delta: f64) {
    metrics::gauge!(LINKS_OPEN).increment(delta);
}

pub(crate) fn link_dropped() {
    metrics::counter!(LINKS_DROPPED).increment(1);
}

pub(crate) fn fanout_resynced() {
    metrics::counter!(FANOUT_RESYNCS).increment(1);
}

pub const API_REQUESTS: &str = "heliograph_coordinator_api_requests_total";
pub const WEBHOOKS_DELIVERED: &str = "heliograph_coordinator_webhooks_delivered_total";
pub const WEBHOOKS_RETRIED: &str = "heliograph_coordinator_webhooks_retried_total";
pub const WEBHOOKS_FAILED: &str = "heliograph_coordinator_webhooks_failed_total";
pub const WEBHOOKS_QUEUED: &str = "heliograph_coordinator_webhooks_queued";
pub const WEBHOOKS_DROPPED: &str = "heliograph_coordinator_webhooks_dropped_total";

/// One answer of the server API. `operation` is the method and route template (e.g.
/// `GET /api/v1/rooms/{room}`, or `other` for unknown routes): a fixed set, never an id.
pub(crate) fn api_request(operation: &str, status: u16) {
    metrics::counter!(API_REQUESTS, "operation" => operation.to_owned(), "status" => status.to_string())
        .increment(1);
}

/// Webhook deliveries by the leader: `delivered` (a 2xx), `retried` (an attempt failed and
/// will be tried again), `failed` (given up after the last attempt).
pub(crate) fn webhook_delivered() {
    metrics::counter!(WEBHOOKS_DELIVERED).increment(1);
}

pub(crate) fn webhook_retried() {
    metrics::counter!(WEBHOOKS_RETRIED).increment(1);
}

pub(crate) fn webhook_failed() {
    metrics::counter!(WEBHOOKS_FAILED).increment(1);
}

/// The replicated outbox as this replica applied it: records waiting, and records pushed out
/// by newer ones while full (the same on every replica).
pub(crate) fn webhook_outbox(queued: usize, dropped: u64) {
    metrics::gauge!(WEBHOOKS_QUEUED).set(as_gauge(u64::try_from(queued).unwrap_or(u64::MAX)));
    metrics::counter!(WEBHOOKS_DROPPED).absolute(dropped);
}
