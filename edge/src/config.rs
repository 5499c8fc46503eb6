//! Edge configuration: flags and environment variables (and a file, merged by the binary),
//! validated before anything binds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use heliograph_coordinator::registry::{EdgeId, Region};
use heliograph_coordinator::telemetry::{self, LogFormat};
use heliograph_coordinator::transport::ClusterSecret;
use heliograph_coordinator::transport::MutualTls;

use crate::client_addr::{Cidr, ForwardedHeader, TrustedProxies};
use crate::socketio::dialect::Dialect;
use crate::turn::TurnConfig;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_FORWARDED_HEADER: &str = "x-forwarded-for";
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_META_BYTES: usize = 4 * 1024;
pub const DEFAULT_MAX_ROOMS_PER_CONNECTION: usize = 32;
/// Contact hashes one session may publish: a person has a few handles (phone, e-mail).
pub const DEFAULT_MAX_CONTACT_PUBLISH: usize = 16;
/// Contact hashes one session may watch: an address book, not a phone-number space.
pub const DEFAULT_MAX_CONTACT_WATCH: usize = 1000;
/// `contacts` requests one connection may make per minute (each replaces whole sets, so an
/// app needs few; each costs registry commits, and an enumerating client many).
pub const DEFAULT_CONTACTS_PER_MINUTE: u32 = 10;
/// `invite` requests one connection may make per minute.
pub const DEFAULT_INVITES_PER_MINUTE: u32 = 30;
pub const DEFAULT_OUTBOX_MESSAGES: usize = 256;
pub const DEFAULT_PING_INTERVAL_MS: u64 = 15_000;
pub const DEFAULT_KEEPALIVE_TIMEOUT_MS: u64 = 45_000;
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_DETACH_GRACE_MS: u64 = 10_000;
pub const DEFAULT_LEASE_MS: u64 = 10_000;
pub const DEFAULT_RATE_LIMIT_PER_SECOND: u32 = 50;
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 200;
/// A listing reads every region's registry: a page a second on average is plenty for a
/// lobby, and bounds what one connection costs the replicas.
pub const DEFAULT_LIST_ROOMS_PER_MINUTE: u32 = 60;
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;
pub const DEFAULT_TURN_TTL_SECS: u64 = 3_600;
pub const DEFAULT_CLUSTER_NAME: &str = "heliograph";
pub const DEFAULT_RESUME_TOKEN_TTL_MS: u64 = 24 * 3_600 * 1_000;
pub const DEFAULT_PENDING_SIGNALS: usize = 256;
pub const DEFAULT_REPLAY_WINDOW: usize = 32;
pub const DEFAULT_DRAIN_WINDOW_MS: u64 = 2_000;
/// tungstenite's defaults (128 KiB read buffer) cost ~900 MB at 10k sockets.
pub const DEFAULT_SOCKET_BUFFER_BYTES: usize = 4 * 1024;
/// Most runtime worker threads accepted.
const MAX_WORKER_THREADS: usize = 1024;

/// Command-line flags; every flag also reads a `HELIOGRAPH_*` environment variable.
#[derive(Debug, Clone, Parser)]
#[command(name = "heliograph-edge", version, about = "Heliograph signaling edge")]
pub struct Args {
    /// Address of the HTTP/WebSocket listener (WebSocket at /ws).
    #[arg(long, env = "HELIOGRAPH_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Serve /metrics on a separate listener instead of the main one.
    #[arg(long, env = "HELIOGRAPH_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory of the embedded coordinator replica's Raft log and snapshots.
    #[arg(long, env = "HELIOGRAPH_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Log entries of the embedded registry between its snapshots (10,000). Benchmarks set
    /// it above a run's entries, so that a snapshot does not land inside a measurement.
    #[arg(long, env = "HELIOGRAPH_SNAPSHOT_AFTER_ENTRIES", hide = true)]
    pub snapshot_after_entries: Option<u64>,
    /// Region this edge serves.
    #[arg(long, env = "HELIOGRAPH_REGION", default_value = "local")]
    pub region: String,
    /// Stable id of this edge; by default one is generated and kept in the data directory.
    #[arg(long, env = "HELIOGRAPH_EDGE_ID")]
    pub edge_id: Option<String>,
    /// ICE servers handed to clients in `welcome` (repeatable), e.g. stun:stun.example.org:3478.
    #[arg(
        long = "ice-server",
        env = "HELIOGRAPH_ICE_SERVERS",
        value_delimiter = ','
    )]
    pub ice_servers: Vec<String>,
    /// Largest accepted frame; larger frames close the socket with 1009.
    #[arg(long, env = "HELIOGRAPH_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// Largest `meta` object a peer may attach when joining.
    #[arg(long, env = "HELIOGRAPH_MAX_META_BYTES", default_value_t = DEFAULT_MAX_META_BYTES)]
    pub max_meta_bytes: usize,
    /// Rooms one connection may be in at once.
    #[arg(long, env = "HELIOGRAPH_MAX_ROOMS_PER_CONNECTION", default_value_t = DEFAULT_MAX_ROOMS_PER_CONNECTION)]
    pub max_rooms_per_connection: usize,
    /// Members a room may hold (0: no limit).
    #[arg(long, env = "HELIOGRAPH_MAX_ROOM_SIZE", default_value_t = 0)]
    pub max_room_size: u32,
    /// Contact hashes one session may publish (`contacts` request, `publish`).
    #[arg(long, env = "HELIOGRAPH_MAX_CONTACT_PUBLISH", default_value_t = DEFAULT_MAX_CONTACT_PUBLISH)]
    pub max_contact_publish: usize,
    /// Contact hashes one session may watch (`contacts` request, `watch`).
    #[arg(long, env = "HELIOGRAPH_MAX_CONTACT_WATCH", default_value_t = DEFAULT_MAX_CONTACT_WATCH)]
    pub max_contact_watch: usize,
    /// `contacts` requests one connection may make per minute (a burst of that many).
    #[arg(long, env = "HELIOGRAPH_CONTACTS_PER_MINUTE", default_value_t = DEFAULT_CONTACTS_PER_MINUTE)]
    pub contacts_per_minute: u32,
    /// `invite` requests one connection may make per minute (a burst of that many).
    #[arg(long, env = "HELIOGRAPH_INVITES_PER_MINUTE", default_value_t = DEFAULT_INVITES_PER_MINUTE)]
    pub invites_per_minute: u32,
    /// Messages queued for one client before it counts as a slow consumer and is cut off.
    #[arg(long, env = "HELIOGRAPH_OUTBOX_MESSAGES", default_value_t = DEFAULT_OUTBOX_MESSAGES)]
    pub outbox_messages: usize,
    /// Interval of server-sent WebSocket pings.
    #[arg(long, env = "HELIOGRAPH_PING_INTERVAL_MS", default_value_t = DEFAULT_PING_INTERVAL_MS)]
    pub ping_interval_ms: u64,
    /// A socket that sends nothing (not even a pong) for this long is closed and its peer leaves.
    #[arg(long, env = "HELIOGRAPH_KEEPALIVE_TIMEOUT_MS", default_value_t = DEFAULT_KEEPALIVE_TIMEOUT_MS)]
    pub keepalive_timeout_ms: u64,
    /// A write to a client that stays blocked this long (the client stopped reading and the
    /// socket buffers are full) cuts the client off as a slow consumer (close 1008).
    #[arg(long, env = "HELIOGRAPH_WRITE_TIMEOUT_MS", default_value_t = DEFAULT_WRITE_TIMEOUT_MS)]
    pub write_timeout_ms: u64,
    /// A connection that has not sent a whole request head this long after it was opened (or,
    /// kept alive, after its last answer) is closed: the WebSocket handshake, or any HTTP request.
    #[arg(long, env = "HELIOGRAPH_HANDSHAKE_TIMEOUT_MS", default_value_t = DEFAULT_HANDSHAKE_TIMEOUT_MS)]
    pub handshake_timeout_ms: u64,
    /// Longest time shutdown may take before the process exits anyway.
    #[arg(long, env = "HELIOGRAPH_SHUTDOWN_GRACE_MS", default_value_t = DEFAULT_SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,
    /// How long a detached peer (its edge died) keeps its place before it is removed.
    #[arg(long, env = "HELIOGRAPH_DETACH_GRACE_MS", default_value_t = DEFAULT_DETACH_GRACE_MS)]
    pub detach_grace_ms: u64,
    /// Registry lease of this edge; renewed at a third of it.
    #[arg(long, env = "HELIOGRAPH_LEASE_MS", default_value_t = DEFAULT_LEASE_MS)]
    pub lease_ms: u64,
    /// Per-socket read and write buffer size.
    #[arg(long, env = "HELIOGRAPH_SOCKET_BUFFER_BYTES", default_value_t = DEFAULT_SOCKET_BUFFER_BYTES)]
    pub socket_buffer_bytes: usize,
    /// Messages per second one connection may send on average (token bucket refill rate).
    #[arg(long, env = "HELIOGRAPH_RATE_LIMIT_PER_SECOND", default_value_t = DEFAULT_RATE_LIMIT_PER_SECOND)]
    pub rate_limit_per_second: u32,
    /// Messages one connection may send in a burst (token bucket size).
    #[arg(long, env = "HELIOGRAPH_RATE_LIMIT_BURST", default_value_t = DEFAULT_RATE_LIMIT_BURST)]
    pub rate_limit_burst: u32,
    /// `list-rooms` requests one connection may make a minute (all at once at most);
    /// more are answered `rate-limited`.
    #[arg(long, env = "HELIOGRAPH_LIST_ROOMS_PER_MINUTE", default_value_t = DEFAULT_LIST_ROOMS_PER_MINUTE)]
    pub list_rooms_per_minute: u32,
    /// Connections this edge accepts at once; more are refused with HTTP 503.
    #[arg(long, env = "HELIOGRAPH_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Connections one source IP address may hold at once; more are refused with HTTP 429.
    #[arg(long, env = "HELIOGRAPH_MAX_CONNECTIONS_PER_IP", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,
    /// Proxies and load balancers in front of the edge (CIDR ranges or addresses, repeatable):
    /// only from these is the client address in --forwarded-header believed, and only these
    /// may send PROXY headers. Without any, the TCP peer is the client.
    #[arg(
        long = "trusted-proxy",
        env = "HELIOGRAPH_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// The header trusted proxies append the client address to: x-forwarded-for or
    /// forwarded (RFC 7239). The other one is never read.
    #[arg(long, env = "HELIOGRAPH_FORWARDED_HEADER", default_value = DEFAULT_FORWARDED_HEADER)]
    pub forwarded_header: String,
    /// Every connection must open with a PROXY protocol header (v1 or v2) from a
    /// --trusted-proxy; its source address is the client. Connections without one are closed.
    #[arg(
        long,
        env = "HELIOGRAPH_PROXY_PROTOCOL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub proxy_protocol: bool,
    /// Origins allowed to open browser connections (repeatable); others get HTTP 403.
    /// Without any, every origin is allowed.
    #[arg(
        long = "allowed-origin",
        env = "HELIOGRAPH_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Serve Socket.IO clients at /socket.io/ (Engine.IO v4, WebSocket and long-polling) in
    /// the dialect of common Node.js signaling servers (docs/MIGRATING.md). Off by default.
    #[arg(
        long,
        env = "HELIOGRAPH_SOCKETIO",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub socketio: bool,
    /// TOML file renaming the Socket.IO dialect's events (an `[events]` table; see
    /// docs/MIGRATING.md). Needs --socketio.
    #[arg(long, env = "HELIOGRAPH_SOCKETIO_EVENTS")]
    pub socketio_events: Option<PathBuf>,
    /// HS256 secret (≥ 32 bytes) for join tokens; with a key, every join needs a token.
    #[arg(long, env = "HELIOGRAPH_JOIN_TOKEN_SECRET", hide_env_values = true)]
    pub join_token_secret: Option<String>,
    /// PEM file of the ES256 or RS256 public key for join tokens (see --join-token-alg).
    #[arg(long, env = "HELIOGRAPH_JOIN_TOKEN_PUBLIC_KEY")]
    pub join_token_public_key: Option<PathBuf>,
    /// Algorithm of --join-token-public-key: es256 or rs256.
    #[arg(long, env = "HELIOGRAPH_JOIN_TOKEN_ALG", default_value = "es256")]
    pub join_token_alg: String,
    /// Shared secret of the TURN server (coturn `static-auth-secret`).
    #[arg(long, env = "HELIOGRAPH_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// TURN URLs of this region handed out with credentials (repeatable).
    #[arg(long = "turn-url", env = "HELIOGRAPH_TURN_URLS", value_delimiter = ',')]
    pub turn_urls: Vec<String>,
    /// Lifetime of TURN credentials.
    #[arg(long, env = "HELIOGRAPH_TURN_TTL_SECS", default_value_t = DEFAULT_TURN_TTL_SECS)]
    pub turn_ttl_secs: u64,
    /// Use a remote coordinator cluster instead of the embedded replica: the edge-facing API
    /// URLs of its replicas (comma-separated or repeated), e.g. http://10.0.0.5:7100. The
    /// first reachable one is used; the others are tried when it fails. List only replicas
    /// of this edge's own --region: the replica an edge attaches to is its region's gateway
    /// for cross-region signals.
    #[arg(long, env = "HELIOGRAPH_COORDINATOR", value_delimiter = ',')]
    pub coordinator: Vec<String>,
    /// Shared secret of the coordinator cluster (required with --coordinator).
    #[arg(long, env = "HELIOGRAPH_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// PEM client certificate for mutual TLS to the coordinator (with --tls-key, --tls-ca).
    #[arg(long, env = "HELIOGRAPH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "HELIOGRAPH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA that signed the coordinator replicas' certificates.
    #[arg(long, env = "HELIOGRAPH_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Redis of this edge's region (e.g. redis://10.0.0.7:6379/): signals to other edges of
    /// the region go over its pub/sub. Without it they go through the coordinator.
    #[arg(long, env = "HELIOGRAPH_REDIS")]
    pub redis: Option<String>,
    /// Signals queued for Redis before new ones take the coordinator path.
    #[arg(long, env = "HELIOGRAPH_REDIS_PUBLISH_QUEUE", default_value_t = crate::region::DEFAULT_PUBLISH_QUEUE)]
    pub redis_publish_queue: usize,
    /// PEM CA bundle that signed the Redis server's certificate (a `rediss://` URL; without
    /// it the system's roots are used).
    #[arg(long, env = "HELIOGRAPH_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// PEM client certificate chain, when Redis asks for client certificates.
    #[arg(
        long,
        env = "HELIOGRAPH_REDIS_CLIENT_CERT",
        requires = "redis_client_key"
    )]
    pub redis_client_cert: Option<PathBuf>,
    /// PEM private key of `--redis-client-cert`.
    #[arg(
        long,
        env = "HELIOGRAPH_REDIS_CLIENT_KEY",
        requires = "redis_client_cert"
    )]
    pub redis_client_key: Option<PathBuf>,
    /// Redis ACL user (AUTH); overrides a user in the URL.
    #[arg(long, env = "HELIOGRAPH_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// File holding the Redis password. The password is never a flag: this file, or the
    /// environment variable HELIOGRAPH_REDIS_PASSWORD.
    #[arg(long, env = "HELIOGRAPH_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// HELIOGRAPH_REDIS_PASSWORD, read from the environment only.
    #[arg(skip = std::env::var("HELIOGRAPH_REDIS_PASSWORD").ok())]
    pub redis_password_env: Option<String>,
    /// Redis Sentinel (repeatable, or comma-separated): `host:port` of each sentinel. The edge
    /// then connects to the master the sentinels name, and asks again after a failover;
    /// `--redis` gives only the scheme (`rediss://` for TLS), credentials and database.
    #[arg(
        long = "redis-sentinel",
        env = "HELIOGRAPH_REDIS_SENTINELS",
        value_delimiter = ','
    )]
    pub redis_sentinels: Vec<String>,
    /// The master group the sentinels monitor (`sentinel monitor <name> …`).
    #[arg(long, env = "HELIOGRAPH_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,
    /// ACL user on the sentinels, when they require one.
    #[arg(long, env = "HELIOGRAPH_REDIS_SENTINEL_USERNAME")]
    pub redis_sentinel_username: Option<String>,
    /// File holding the sentinels' password (or HELIOGRAPH_REDIS_SENTINEL_PASSWORD).
    #[arg(long, env = "HELIOGRAPH_REDIS_SENTINEL_PASSWORD_FILE")]
    pub redis_sentinel_password_file: Option<PathBuf>,
    /// HELIOGRAPH_REDIS_SENTINEL_PASSWORD, read from the environment only.
    #[arg(skip = std::env::var("HELIOGRAPH_REDIS_SENTINEL_PASSWORD").ok())]
    pub redis_sentinel_password_env: Option<String>,
    /// Multiplexed Redis connections the session store spreads its calls over.
    #[arg(long, env = "HELIOGRAPH_REDIS_CONNECTIONS", default_value_t = crate::region::DEFAULT_REDIS_CONNECTIONS)]
    pub redis_connections: usize,
    /// Key that signs resume tokens; every edge of a cluster needs the same one so that a
    /// client can resume on any of them. Default: derived from --cluster-secret; a single
    /// node (no --coordinator) makes up its own, and its sessions resume on it only.
    #[arg(long, env = "HELIOGRAPH_SESSION_SECRET", hide_env_values = true)]
    pub session_secret: Option<String>,
    /// Name of this cluster, written into resume tokens: a token of another cluster is
    /// refused even if it shares the secret.
    #[arg(long, env = "HELIOGRAPH_CLUSTER_NAME", default_value = DEFAULT_CLUSTER_NAME)]
    pub cluster_name: String,
    /// How long a resume token stays valid after it was issued.
    #[arg(long, env = "HELIOGRAPH_RESUME_TOKEN_TTL_MS", default_value_t = DEFAULT_RESUME_TOKEN_TTL_MS)]
    pub resume_token_ttl_ms: u64,
    /// Signals kept for a peer without a socket (detached) until it resumes; beyond it each
    /// new signal's sender is told `expired`.
    #[arg(long, env = "HELIOGRAPH_PENDING_SIGNALS", default_value_t = DEFAULT_PENDING_SIGNALS)]
    pub pending_signals: usize,
    /// Frames a session keeps, as sent, to replay after its socket drops (a client that
    /// missed more cannot resume). Each kept frame costs memory and relay CPU (measured in
    /// docs/BENCHMARKS.md).
    #[arg(long, env = "HELIOGRAPH_REPLAY_WINDOW", default_value_t = DEFAULT_REPLAY_WINDOW)]
    pub replay_window: usize,
    /// On SIGTERM, sockets are told to `reconnect` and closed 1 s later plus a random delay
    /// within this window, so that their clients do not all resume elsewhere at once (both
    /// shortened as needed to fit in --shutdown-grace-ms with time to store the sessions).
    #[arg(long, env = "HELIOGRAPH_DRAIN_WINDOW_MS", default_value_t = DEFAULT_DRAIN_WINDOW_MS)]
    pub drain_window_ms: u64,
    /// Runtime worker threads (0: one per core available to the process, cgroup quotas
    /// included). With one, the edge runs a single-threaded runtime.
    #[arg(long, env = "HELIOGRAPH_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `heliograph_edge=debug`.
    #[arg(long, env = "HELIOGRAPH_LOG", default_value = "info")]
    pub log: String,
    /// Log lines as `text` or `json` (one object per line), on stderr.
    #[arg(long, env = "HELIOGRAPH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Send traces (joins, relayed signals) to this OTLP/gRPC receiver, e.g.
    /// http://otel-collector:4317. Off when not set.
    #[arg(long, env = "HELIOGRAPH_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// TOML file of settings, keyed by flag name in snake_case (`max_connections_per_ip = 50`);
    /// flags and environment variables override it.
    #[arg(long, env = "HELIOGRAPH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (TOML, secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub region: Region,
    pub edge_id: Option<EdgeId>,
    pub ice_servers: Vec<String>,
    pub limits: Limits,
    pub ping_interval: Duration,
    pub keepalive_timeout: Duration,
    pub write_timeout: Duration,
    pub handshake_timeout: Duration,
    pub shutdown_grace: Duration,
    pub detach_grace: Duration,
    /// The embedded registry's snapshot interval in log entries (`None`: its default).
    pub snapshot_after_entries: Option<u64>,
    pub lease: Duration,
    pub socket_buffer_bytes: usize,
    /// Runtime worker threads, resolved (at least 1).
    pub worker_threads: usize,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    pub list_rooms_per_minute: u32,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub client_addresses: ClientAddresses,
    pub allowed_origins: Vec<String>,
    pub join_key: Option<JoinKeySource>,
    pub turn: Option<TurnConfig>,
    /// `None`: run the embedded single replica.
    pub coordinator: Option<RemoteCoordinator>,
    /// `None`: the in-memory bus (edges of this process only).
    pub redis: Option<RedisConfig>,
    pub sessions: SessionConfig,
    log: String,
    pub log_format: LogFormat,
    /// `None`: no traces.
    pub otlp_endpoint: Option<String>,
    /// The Socket.IO ingress and its event names; `None`: off.
    pub socketio: Option<Dialect>,
}

/// How the client's address is found behind proxies.
#[derive(Debug, Clone)]
pub struct ClientAddresses {
    pub trusted: TrustedProxies,
    pub header: ForwardedHeader,
    /// Every connection opens with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// Resumable sessions.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub secret: Option<String>,
    pub cluster_name: String,
    pub token_ttl: Duration,
    pub pending_signals: usize,
    pub replay_window: usize,
    pub drain_window: Duration,
}

/// Where the join-token key comes from; read when the edge starts.
#[derive(Debug, Clone)]
pub enum JoinKeySource {
    Hs256Secret(String),
    Es256PemFile(PathBuf),
    Rs256PemFile(PathBuf),
}

/// The region's Redis: the bus between its edges and the session store.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub settings: crate::region::RedisSettings,
}

/// A remote coordinator cluster.
#[derive(Debug, Clone)]
pub struct RemoteCoordinator {
    pub urls: Vec<String>,
    pub secret: ClusterSecret,
}

impl Config {
    /// The tracing filter, checked at validation.
    pub fn log_filter(&self) -> String {
        self.log.clone()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_meta_bytes: usize,
    pub max_rooms_per_connection: usize,
    pub max_room_size: Option<u32>,
    pub outbox_messages: usize,
    pub max_contact_publish: usize,
    pub max_contact_watch: usize,
    pub contacts_per_minute: u32,
    pub invites_per_minute: u32,
}

/// A configuration that cannot work; the message names the flag.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

fn check(ok: bool, msg: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError(msg.to_owned()))
    }
}

impl Args {
    /// Validates the flags without side effects.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let region =
            Region::new(self.region.clone()).map_err(|e| ConfigError(format!("--region {e}")))?;
        let edge_id = self
            .edge_id
            .clone()
            .map(EdgeId::new)
            .transpose()
            .map_err(|e| ConfigError(format!("--edge-id {e}")))?;
        check(
            (128..=16 * 1024 * 1024).contains(&self.max_frame_bytes),
            "--max-frame-bytes must be between 128 and 16777216",
        )?;
        check(
            self.max_meta_bytes >= 2 && self.max_meta_bytes < self.max_frame_bytes,
            "--max-meta-bytes must be at least 2 and below --max-frame-bytes",
        )?;
        check(
            self.max_rooms_per_connection >= 1,
            "--max-rooms-per-connection must be at least 1",
        )?;
        check(
            self.max_contact_publish <= 1_000 && self.max_contact_watch <= 100_000,
            "--max-contact-publish must be at most 1000 and --max-contact-watch at most 100000",
        )?;
        check(
            self.contacts_per_minute >= 1 && self.invites_per_minute >= 1,
            "--contacts-per-minute and --invites-per-minute must be at least 1",
        )?;
        check(
            (8..=1_000_000).contains(&self.outbox_messages),
            "--outbox-messages must be between 8 and 1000000",
        )?;
        check(
            self.ping_interval_ms >= 10,
            "--ping-interval-ms must be at least 10",
        )?;
        check(
            self.keepalive_timeout_ms > self.ping_interval_ms,
            "--keepalive-timeout-ms must be greater than --ping-interval-ms",
        )?;
        check(
            self.shutdown_grace_ms >= 100,
            "--shutdown-grace-ms must be at least 100",
        )?;
        check(self.lease_ms >= 300, "--lease-ms must be at least 300")?;
        check(
            self.handshake_timeout_ms >= 100,
            "--handshake-timeout-ms must be at least 100",
        )?;
        check(
            (1..=100_000).contains(&self.pending_signals),
            "--pending-signals must be between 1 and 100000",
        )?;
        check(
            self.replay_window <= 100_000,
            "--replay-window must be at most 100000",
        )?;
        check(
            self.drain_window_ms < self.shutdown_grace_ms,
            "--drain-window-ms must be less than --shutdown-grace-ms",
        )?;
        check(
            self.resume_token_ttl_ms >= 1_000,
            "--resume-token-ttl-ms must be at least 1000",
        )?;
        check(
            self.session_secret.as_ref().is_none_or(|s| s.len() >= 16),
            "--session-secret must be at least 16 bytes",
        )?;
        check(
            !self.cluster_name.is_empty() && !self.cluster_name.contains('|'),
            "--cluster-name must be non-empty and must not contain '|'",
        )?;
        check(
            self.worker_threads <= MAX_WORKER_THREADS,
            "--worker-threads must be at most 1024",
        )?;
        check(
            (256..=1024 * 1024).contains(&self.socket_buffer_bytes),
            "--socket-buffer-bytes must be between 256 and 1048576",
        )?;
        for s in &self.ice_servers {
            check(
                ["stun:", "stuns:", "turn:", "turns:"]
                    .iter()
                    .any(|p| s.starts_with(p)),
                "--ice-server URLs must start with stun:, stuns:, turn: or turns:",
            )?;
        }
        check(
            self.rate_limit_per_second >= 1,
            "--rate-limit-per-second must be at least 1",
        )?;
        check(
            self.rate_limit_burst >= 1,
            "--rate-limit-burst must be at least 1",
        )?;
        check(
            self.list_rooms_per_minute >= 1,
            "--list-rooms-per-minute must be at least 1",
        )?;
        check(
            self.max_connections >= 1,
            "--max-connections must be at least 1",
        )?;
        check(
            self.max_connections_per_ip >= 1,
            "--max-connections-per-ip must be at least 1",
        )?;
        let trusted = self
            .trusted_proxies
            .iter()
            .map(|c| c.parse::<Cidr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError(format!("--trusted-proxy: {e}")))?;
        let client_addresses = ClientAddresses {
            trusted: TrustedProxies::new(trusted),
            header: ForwardedHeader::parse(&self.forwarded_header).ok_or_else(|| {
                ConfigError("--forwarded-header must be x-forwarded-for or forwarded".into())
            })?,
            proxy_protocol: self.proxy_protocol,
        };
        check(
            !self.proxy_protocol || !client_addresses.trusted.is_empty(),
            "--proxy-protocol needs --trusted-proxy (the load balancers that send the header)",
        )?;
        for o in &self.allowed_origins {
            check(
                o.starts_with("http://") || o.starts_with("https://"),
                "--allowed-origin values must be origins like https://app.example.com",
            )?;
        }
        let join_key = match (&self.join_token_secret, &self.join_token_public_key) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "--join-token-secret and --join-token-public-key exclude each other".into(),
                ));
            }
            (Some(secret), None) => {
                check(
                    secret.len() >= 32,
                    "--join-token-secret must be at least 32 bytes",
                )?;
                Some(JoinKeySource::Hs256Secret(secret.clone()))
            }
            (None, Some(path)) => match self.join_token_alg.as_str() {
                "es256" => Some(JoinKeySource::Es256PemFile(path.clone())),
                "rs256" => Some(JoinKeySource::Rs256PemFile(path.clone())),
                _ => {
                    return Err(ConfigError(
                        "--join-token-alg must be es256 or rs256".into(),
                    ));
                }
            },
            (None, None) => None,
        };
        let turn = match &self.turn_secret {
            Some(secret) => {
                check(!secret.is_empty(), "--turn-secret must not be empty")?;
                check(
                    !self.turn_urls.is_empty(),
                    "--turn-secret needs at least one --turn-url",
                )?;
                for u in &self.turn_urls {
                    check(
                        u.starts_with("turn:") || u.starts_with("turns:"),
                        "--turn-url values must start with turn: or turns:",
                    )?;
                }
                check(
                    (60..=7 * 24 * 3600).contains(&self.turn_ttl_secs),
                    "--turn-ttl-secs must be between 60 and 604800",
                )?;
                Some(TurnConfig::new(
                    secret.as_bytes().to_vec(),
                    self.turn_urls.clone(),
                    Duration::from_secs(self.turn_ttl_secs),
                ))
            }
            None => {
                check(self.turn_urls.is_empty(), "--turn-url needs --turn-secret")?;
                None
            }
        };
        tracing_subscriber::EnvFilter::try_new(&self.log)
            .map_err(|e| ConfigError(format!("--log is not a valid filter: {e}")))?;
        if let Some(endpoint) = &self.otlp_endpoint {
            telemetry::check_endpoint(endpoint).map_err(|e| ConfigError(e.to_string()))?;
        }
        if let Some(m) = self.metrics_listen {
            check(
                m != self.listen,
                "--metrics-listen must differ from --listen",
            )?;
        }
        check(
            self.snapshot_after_entries != Some(0),
            "--snapshot-after-entries must be at least 1",
        )?;
        check(
            self.snapshot_after_entries.is_none() || self.coordinator.is_empty(),
            "--snapshot-after-entries is only used with the embedded registry (no --coordinator)",
        )?;
        let coordinator = if self.coordinator.is_empty() {
            check(
                self.cluster_secret.is_none(),
                "--cluster-secret is only used with --coordinator",
            )?;
            check(
                self.tls_cert.is_none() && self.tls_key.is_none() && self.tls_ca.is_none(),
                "--tls-cert, --tls-key and --tls-ca are only used with --coordinator",
            )?;
            None
        } else {
            for url in &self.coordinator {
                check(
                    (url.starts_with("http://") || url.starts_with("https://"))
                        && tonic::transport::Endpoint::from_shared(url.clone()).is_ok(),
                    "--coordinator URLs must look like http://host:port",
                )?;
            }
            let secret = self
                .cluster_secret
                .as_deref()
                .ok_or_else(|| ConfigError("--coordinator needs --cluster-secret".into()))?;
            let secret = ClusterSecret::new(secret)
                .map_err(|e| ConfigError(format!("--cluster-secret: {e}")))?;
            let tls = MutualTls::from_flags(
                self.tls_cert.as_deref(),
                self.tls_key.as_deref(),
                self.tls_ca.as_deref(),
            )
            .map_err(|e| ConfigError(e.to_string()))?;
            let secret = secret.with_tls(tls);
            Some(RemoteCoordinator {
                urls: self.coordinator.clone(),
                secret,
            })
        };
        let redis_url = match (&self.redis, self.redis_sentinels.is_empty()) {
            (Some(url), _) => Some(url.clone()),
            (None, false) => Some("redis://".to_owned()),
            (None, true) => None,
        };
        let redis = match &redis_url {
            Some(url) => {
                check(
                    (1..=1_000_000).contains(&self.redis_publish_queue),
                    "--redis-publish-queue must be between 1 and 1000000",
                )?;
                check(
                    (1..=256).contains(&self.redis_connections),
                    "--redis-connections must be between 1 and 256",
                )?;
                let read = |flag: &str, path: &Path| {
                    std::fs::read(path)
                        .map_err(|e| ConfigError(format!("{flag} {}: {e}", path.display())))
                };
                let ca = self
                    .redis_ca
                    .as_deref()
                    .map(|p| read("--redis-ca", p))
                    .transpose()?;
                let client = match (&self.redis_client_cert, &self.redis_client_key) {
                    (Some(cert), Some(key)) => Some((
                        read("--redis-client-cert", cert)?,
                        read("--redis-client-key", key)?,
                    )),
                    _ => None,
                };
                let secret = |flag: &str, file: &Option<PathBuf>, env: &Option<String>| match file {
                    Some(path) => {
                        let bytes = read(flag, path)?;
                        let text = String::from_utf8(bytes)
                            .map_err(|_| ConfigError(format!("{flag} is not UTF-8")))?;
                        Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
                    }
                    None => Ok(env.clone()),
                };
                let password = secret(
                    "--redis-password-file",
                    &self.redis_password_file,
                    &self.redis_password_env,
                )?;
                let sentinel = if self.redis_sentinels.is_empty() {
                    None
                } else {
                    let master = self.redis_sentinel_master.clone().ok_or_else(|| {
                        ConfigError("--redis-sentinel needs --redis-sentinel-master".into())
                    })?;
                    Some(crate::region::Sentinel {
                        addrs: self.redis_sentinels.clone(),
                        master,
                        username: self.redis_sentinel_username.clone(),
                        password: secret(
                            "--redis-sentinel-password-file",
                            &self.redis_sentinel_password_file,
                            &self.redis_sentinel_password_env,
                        )?,
                    })
                };
                let tls = (ca.is_some() || client.is_some())
                    .then_some(crate::region::RedisTls { ca, client });
                let settings = crate::region::RedisSettings {
                    url: url.clone(),
                    tls,
                    username: self.redis_username.clone(),
                    password,
                    connections: self.redis_connections,
                    publish_queue: self.redis_publish_queue,
                    sentinel,
                };
                crate::region::Backend::redis(settings.clone())
                    .map_err(|e| ConfigError(format!("--redis: {e}")))?;
                Some(RedisConfig { settings })
            }
            None => None,
        };
        let socketio = match (self.socketio, &self.socketio_events) {
            (false, Some(_)) => {
                return Err(ConfigError("--socketio-events needs --socketio".into()));
            }
            (false, None) => None,
            (true, None) => Some(Dialect::default()),
            (true, Some(path)) => Some(
                Dialect::load(path).map_err(|e| ConfigError(format!("--socketio-events {e}")))?,
            ),
        };
        Ok(Config {
            socketio,
            coordinator,
            redis,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            data_dir: self.data_dir,
            region,
            edge_id,
            ice_servers: self.ice_servers,
            limits: Limits {
                max_frame_bytes: self.max_frame_bytes,
                max_meta_bytes: self.max_meta_bytes,
                max_rooms_per_connection: self.max_rooms_per_connection,
                max_room_size: (self.max_room_size > 0).then_some(self.max_room_size),
                outbox_messages: self.outbox_messages,
                max_contact_publish: self.max_contact_publish,
                max_contact_watch: self.max_contact_watch,
                contacts_per_minute: self.contacts_per_minute,
                invites_per_minute: self.invites_per_minute,
            },
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            detach_grace: Duration::from_millis(self.detach_grace_ms),
            snapshot_after_entries: self.snapshot_after_entries,
            lease: Duration::from_millis(self.lease_ms),
            socket_buffer_bytes: self.socket_buffer_bytes,
            worker_threads: match self.worker_threads {
                0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
                n => n,
            },
            rate_limit_per_second: self.rate_limit_per_second,
            rate_limit_burst: self.rate_limit_burst,
            list_rooms_per_minute: self.list_rooms_per_minute,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            client_addresses,
            allowed_origins: self.allowed_origins,
            join_key,
            turn,
            sessions: SessionConfig {
                secret: self.session_secret,
                cluster_name: self.cluster_name,
                token_ttl: Duration::from_millis(self.resume_token_ttl_ms),
                pending_signals: self.pending_signals,
                replay_window: self.replay_window,
                drain_window: Duration::from_millis(self.drain_window_ms),
            },
            log: self.log,
            log_format: self.log_format,
            otlp_endpoint: self.otlp_endpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["heliograph-edge"];
        v.extend_from_slice(args);
        Args::try_parse_from(v).unwrap().validate()
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.limits.max_frame_bytes, 64 * 1024);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = parse(&["--keepalive-timeout-ms", "10", "--ping-interval-ms", "20"]).unwrap_err();
        assert!(e.to_string().contains("--keepalive-timeout-ms"), "{e}");
        let e = parse(&["--region", ""]).unwrap_err();
        assert!(e.to_string().contains("--region"), "{e}");
        let e = parse(&["--ice-server", "http://x"]).unwrap_err();
        assert!(e.to_string().contains("--ice-server"), "{e}");
        let e = parse(&["--coordinator", "http://127.0.0.1:1"]).unwrap_err();
        assert!(e.to_string().contains("--cluster-secret"), "{e}");
        let e = parse(&[
            "--coordinator",
            "ftp://x",
            "--cluster-secret",
            "0123456789abcdef",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--coordinator"), "{e}");
        let c = parse(&[
            "--coordinator",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--cluster-secret",
            "0123456789abcdef",
        ])
        .unwrap();
        assert_eq!(c.coordinator.unwrap().urls.len(), 2);
        let e = parse(&["--handshake-timeout-ms", "10"]).unwrap_err();
        assert!(e.to_string().contains("--handshake-timeout-ms"), "{e}");
        let e = parse(&["--snapshot-after-entries", "0"]).unwrap_err();
        assert!(e.to_string().contains("--snapshot-after-entries"), "{e}");
        let e = parse(&[
            "--snapshot-after-entries",
            "100",
            "--coordinator",
            "http://127.0.0.1:1",
            "--cluster-secret",
            "0123456789abcdef",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--snapshot-after-entries"), "{e}");
        let c = parse(&["--snapshot-after-entries", "1000000"]).unwrap();
        assert_eq!(c.snapshot_after_entries, Some(1_000_000));
        let e = parse(&["--trusted-proxy", "10.0.0.0/33"]).unwrap_err();
        assert!(e.to_string().contains("--trusted-proxy"), "{e}");
        let e = parse(&["--proxy-protocol"]).unwrap_err();
        assert!(e.to_string().contains("--trusted-proxy"), "{e}");
        let e = parse(&["--forwarded-header", "x-real-ip"]).unwrap_err();
        assert!(e.to_string().contains("--forwarded-header"), "{e}");
        let c = parse(&[
            "--trusted-proxy",
            "10.0.0.0/8,127.0.0.1",
            "--proxy-protocol",
        ])
        .unwrap();
        assert!(c.client_addresses.proxy_protocol);
        assert!(
            c.client_addresses
                .trusted
                .contains("127.0.0.1".parse().unwrap())
        );
    }
}
