//! `heliograph-coordinator`: runs one replica of the room registry (`serve`), or administers a
//! running cluster (`bootstrap`, `add`, `remove`, `status`, `region`, `snapshot`).
//!
//! Flow of `serve`: parse and validate the configuration (flags > environment > `--config`
//! file > defaults; nothing bound yet; a bad one exits with code 64) → open the replica → bind both listeners and print their addresses as one JSON
//! line → serve until SIGTERM/SIGINT → drain (within `DRAIN_DEADLINE`) → close the replica.

#![forbid(unsafe_code)]

mod rooms;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use heliograph_coordinator::api::{ApiConfig, ApiKeys};
use heliograph_coordinator::config_file;
use heliograph_coordinator::grpc::admin_client::{self, AdminCall};
use heliograph_coordinator::grpc::registry_service::RegistryService;
use heliograph_coordinator::http_client::Trust;
use heliograph_coordinator::telemetry::{self, LogFormat, Telemetry};
use heliograph_coordinator::transport::{ClusterSecret, MutualTls, SecretError, TlsError};
use heliograph_coordinator::webhooks::WebhookConfig;
use heliograph_coordinator::{CoordinatorError, Replica, ReplicaConfig, ReplicaOptions};
use heliograph_proto::admin::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Exit code for a bad configuration (sysexits' EX_USAGE).
const EXIT_CONFIG: u8 = 64;
const DEFAULT_GRACE_MS: u64 = 10_000;
/// Listeners default to loopback; the image (HELIOGRAPH_*_LISTEN) and the chart use 0.0.0.0.
const DEFAULT_RAFT_LISTEN: &str = "127.0.0.1:7000";
const DEFAULT_API_LISTEN: &str = "127.0.0.1:7001";
/// Health, readiness and metrics.
const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:7002";
/// How long connections get to finish after a shutdown signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// How long the replica gets to stop and close its data directory.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "heliograph-coordinator",
    version,
    about = "Heliograph coordinator replica"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once at start: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a replica.
    Serve(ServeArgs),
    /// Start a new cluster with the replica at --api as its only voter.
    Bootstrap {
        #[command(flatten)]
        target: Target,
    },
    /// Add a replica (as learner, then voter once caught up).
    Add {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: u64,
        /// The new replica's advertised raft address.
        #[arg(long)]
        raft: String,
        /// The new replica's advertised API address.
        #[arg(long)]
        node_api: String,
        #[arg(long, default_value = "")]
        region: String,
        #[arg(long)]
        learner_only: bool,
    },
    /// Remove a replica from the cluster.
    Remove {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: u64,
    },
    /// Tell the replica's group where another region's gateways are (region-homed rooms: rooms
    /// homed there are reached through them); no --gateways forgets the region. Run it in
    /// each region for every other region.
    Region {
        #[command(flatten)]
        target: Target,
        /// The other region's name (its replicas' --region).
        #[arg(long)]
        region: String,
        /// API addresses (host:port) of that region's replicas, comma-separated.
        #[arg(long, value_delimiter = ',')]
        gateways: Vec<String>,
    },
    /// Print the replica's view of the cluster as JSON.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Build a snapshot of the replica's applied state now and print its last log index,
    /// size and build time as JSON (any replica; each builds its own).
    Snapshot {
        #[command(flatten)]
        target: Target,
    },
    /// The server API from the command line: list, show, kick, close, send (prints the
    /// answer's JSON; exits 1 on an error answer, with it on stderr).
    Rooms(RoomsArgs),
}

#[derive(Debug, Args)]
struct RoomsArgs {
    /// Base URL of any replica's HTTP listener (its --metrics-listen), e.g.
    /// http://127.0.0.1:7002; https:// (an ingress in front of it) is verified against the
    /// platform's CA certificates.
    #[arg(long, env = "HELIOGRAPH_SERVER_API")]
    server: String,
    /// File holding the API key. Without it the key is read from HELIOGRAPH_API_KEY (never
    /// from a flag's value, which other users can see in the process list).
    #[arg(long, env = "HELIOGRAPH_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    #[command(subcommand)]
    op: RoomsOp,
}

#[derive(Debug, Subcommand)]
enum RoomsOp {
    /// Rooms with their member counts and regions, one page.
    List {
        #[arg(long)]
        limit: Option<usize>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One room's members (meta, region, edge, join time).
    Show { room: String },
    /// Remove a peer from a room (the others see `peer-left` with reason `removed`).
    Kick { room: String, peer: String },
    /// Close a room: every member leaves with reason `closed`.
    Close { room: String },
    /// Send a `message` frame from the server to every member, or to one (--to).
    Send {
        room: String,
        /// The message's `data`, as JSON.
        #[arg(long)]
        data: String,
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Debug, Args)]
struct Target {
    /// API address of a replica (membership changes follow the leader).
    #[arg(long, env = "HELIOGRAPH_API")]
    api: String,
    #[arg(long, env = "HELIOGRAPH_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: String,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Mutual TLS for gRPC: all three or none. The cluster secret is still required.
#[derive(Debug, Args)]
struct TlsArgs {
    /// PEM certificate (chain) this process presents, as server and as client.
    #[arg(long, env = "HELIOGRAPH_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "HELIOGRAPH_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA that signs every replica's, edge's and admin's certificate.
    #[arg(long, env = "HELIOGRAPH_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    fn load(&self) -> Result<Option<MutualTls>, TlsError> {
        MutualTls::from_flags(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_ca.as_deref(),
        )
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[arg(long, env = "HELIOGRAPH_ID")]
    id: u64,
    /// Raft listener (other replicas only).
    #[arg(long, env = "HELIOGRAPH_RAFT_LISTEN", default_value = DEFAULT_RAFT_LISTEN)]
    raft_listen: SocketAddr,
    /// gRPC API listener: edges, admin subcommands, cross-region relay.
    #[arg(long, env = "HELIOGRAPH_API_LISTEN", default_value = DEFAULT_API_LISTEN)]
    api_listen: SocketAddr,
    /// HTTP listener of /healthz, /readyz and /metrics.
    #[arg(long, env = "HELIOGRAPH_METRICS_LISTEN", default_value = DEFAULT_METRICS_LISTEN)]
    metrics_listen: SocketAddr,
    /// Raft address peers use; defaults to the bound raft listener.
    #[arg(long, env = "HELIOGRAPH_ADVERTISE_RAFT")]
    advertise_raft: Option<SocketAddr>,
    /// API address edges and admin clients use; defaults to the bound API listener.
    #[arg(long, env = "HELIOGRAPH_ADVERTISE_API")]
    advertise_api: Option<String>,
    #[arg(long, env = "HELIOGRAPH_REGION")]
    region: String,
    #[arg(long, env = "HELIOGRAPH_DATA_DIR")]
    data_dir: PathBuf,
    #[arg(long, env = "HELIOGRAPH_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: String,
    /// How long a detached peer stays a member.
    #[arg(long, env = "HELIOGRAPH_GRACE_MS", default_value_t = DEFAULT_GRACE_MS)]
    grace_ms: u64,
    /// Refuse to start unless the data directory is new or belongs to this cluster.
    #[arg(long, env = "HELIOGRAPH_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Log entries between snapshots (tests use small values).
    #[arg(long, env = "HELIOGRAPH_SNAPSHOT_AFTER_ENTRIES", hide = true)]
    snapshot_after_entries: Option<u64>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Dial the replica advertised at FROM at TO instead (repeatable, FROM=TO), e.g. through
    /// a tunnel, or the delay proxies of the multi-region simulation.
    #[arg(long = "dial-via", env = "HELIOGRAPH_DIAL_VIA", value_delimiter = ',')]
    dial_via: Vec<String>,
    /// Raft heartbeat interval in ms (elections wait 5–10 of them); above the longest
    /// round trip between replicas when they span regions.
    #[arg(long, env = "HELIOGRAPH_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// TOML file of settings, keyed by flag name in snake_case (`grace_ms = 10000`); flags
    /// and environment variables override it.
    #[arg(long, env = "HELIOGRAPH_CONFIG")]
    config: Option<PathBuf>,
    /// Send traces (joins, forwarded writes, relayed signals) to this OTLP/gRPC receiver,
    /// e.g. http://otel-collector:4317. Off when not set.
    #[arg(long, env = "HELIOGRAPH_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Log lines as `text` or `json` (one object per line), on stderr. The filter is
    /// HELIOGRAPH_LOG (or RUST_LOG).
    #[arg(long, env = "HELIOGRAPH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Print the effective configuration (TOML, secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
    /// Server API key, as NAME=PATH of a file holding it (repeatable; several keys are
    /// valid at once, for rotation). Keys can also come from HELIOGRAPH_API_KEYS
    /// (NAME=KEY,...); never from a flag's value. Without any key the API refuses every call.
    #[arg(
        long = "api-key-file",
        env = "HELIOGRAPH_API_KEY_FILES",
        value_delimiter = ','
    )]
    api_key_file: Vec<String>,
    /// Largest request body the server API reads, in bytes.
    #[arg(long, env = "HELIOGRAPH_API_MAX_BODY_BYTES", default_value_t = heliograph_coordinator::api::DEFAULT_MAX_BODY_BYTES)]
    api_max_body_bytes: usize,
    /// Webhook endpoint, NAME=URL (repeatable; http:// or https://). Each needs a secret:
    /// --webhook-secret-file NAME=PATH or HELIOGRAPH_WEBHOOK_SECRETS (NAME=SECRET,...).
    /// Every replica must be given the same endpoints.
    #[arg(long = "webhook", env = "HELIOGRAPH_WEBHOOKS", value_delimiter = ',')]
    webhook: Vec<String>,
    /// NAME=PATH of a file holding a webhook endpoint's signing secret (repeatable).
    #[arg(
        long = "webhook-secret-file",
        env = "HELIOGRAPH_WEBHOOK_SECRET_FILES",
        value_delimiter = ','
    )]
    webhook_secret_file: Vec<String>,
    /// PEM bundle of extra CA certificates for https:// webhook endpoints (receivers with a
    /// private CA), trusted in addition to the platform's CA certificates.
    #[arg(long, env = "HELIOGRAPH_WEBHOOK_CA", value_name = "FILE")]
    webhook_ca: Option<PathBuf>,
    /// Webhook records the replicated outbox holds; when full the oldest is dropped (counted).
    #[arg(long, env = "HELIOGRAPH_WEBHOOK_QUEUE_RECORDS", default_value_t = heliograph_coordinator::webhooks::DEFAULT_QUEUE_RECORDS)]
    webhook_queue_records: u32,
    /// Attempts per record and endpoint before it is given up (counted as failed).
    #[arg(long, env = "HELIOGRAPH_WEBHOOK_MAX_ATTEMPTS", default_value_t = heliograph_coordinator::webhooks::DEFAULT_MAX_ATTEMPTS)]
    webhook_max_attempts: u32,
    /// Deadline of one delivery attempt (connect, send, answer), in ms.
    #[arg(long, env = "HELIOGRAPH_WEBHOOK_TIMEOUT_MS", default_value_t = heliograph_coordinator::webhooks::DEFAULT_TIMEOUT_MS)]
    webhook_timeout_ms: u64,
    /// Requests in flight per endpoint at most.
    #[arg(long, env = "HELIOGRAPH_WEBHOOK_CONCURRENCY", default_value_t = heliograph_coordinator::webhooks::DEFAULT_CONCURRENCY)]
    webhook_concurrency: usize,
    /// First retry delay (doubling per attempt, with jitter), in ms.
    #[arg(long, env = "HELIOGRAPH_WEBHOOK_BACKOFF_MIN_MS", default_value_t = heliograph_coordinator::webhooks::DEFAULT_BACKOFF_MIN_MS)]
    webhook_backoff_min_ms: u64,
    /// Longest retry delay, in ms.
    #[arg(long, env = "HELIOGRAPH_WEBHOOK_BACKOFF_MAX_MS", default_value_t = heliograph_coordinator::webhooks::DEFAULT_BACKOFF_MAX_MS)]
    webhook_backoff_max_ms: u64,
}

/// A validated `serve` configuration; nothing bound yet.
struct ServeConfig {
    args: ServeArgs,
    secret: ClusterSecret,
    dial: std::collections::HashMap<String, String>,
    api: ApiConfig,
    webhooks: WebhookConfig,
}

#[derive(Debug, thiserror::Error)]
enum ConfigError {
    #[error("invalid --cluster-secret: {0}")]
    Secret(#[from] SecretError),
    #[error("--id must be at least 1")]
    NodeId,
    #[error("--region must not be empty")]
    Region,
    #[error("--heartbeat-ms must be between 10 and 10000")]
    Heartbeat,
    #[error("--snapshot-after-entries must be at least 1")]
    SnapshotThreshold,
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Dial(#[from] heliograph_coordinator::transport::dial::DialError),
    #[error("{0} listens on an unspecified address; set {1}")]
    NeedsAdvertise(&'static str, &'static str),
    #[error("{0}")]
    Telemetry(#[from] telemetry::EndpointError),
    #[error("{0}")]
    ApiKey(#[from] heliograph_coordinator::api::KeyError),
    #[error("{0}")]
    Webhook(#[from] heliograph_coordinator::webhooks::WebhookConfigError),
    #[error("--webhook-ca: {0}")]
    WebhookCa(#[from] heliograph_coordinator::http_client::TrustError),
    #[error("--api-max-body-bytes must be between 1024 and 1048576")]
    ApiBody,
}

impl ServeConfig {
    fn validate(args: ServeArgs) -> Result<Self, ConfigError> {
        let (secret, dial) = Self::check(&args)?;
        let (api, webhooks) = Self::check_api(&args)?;
        Ok(Self {
            args,
            secret,
            dial,
            api,
            webhooks,
        })
    }

    /// The server API's keys and the webhooks (reads the key and secret files and the
    /// HELIOGRAPH_API_KEYS / HELIOGRAPH_WEBHOOK_SECRETS variables).
    fn check_api(args: &ServeArgs) -> Result<(ApiConfig, WebhookConfig), ConfigError> {
        let keys_env = std::env::var("HELIOGRAPH_API_KEYS").ok();
        let keys = ApiKeys::load(
            &args.api_key_file,
            keys_env.as_deref(),
            &args.cluster_secret,
        )?;
        if !(1024..=1024 * 1024).contains(&args.api_max_body_bytes) {
            return Err(ConfigError::ApiBody);
        }
        let secrets_env = std::env::var("HELIOGRAPH_WEBHOOK_SECRETS").ok();
        let endpoints = heliograph_coordinator::webhooks::endpoints(
            &args.webhook,
            &args.webhook_secret_file,
            secrets_env.as_deref(),
        )?;
        let webhooks = WebhookConfig {
            endpoints,
            queue_records: args.webhook_queue_records,
            max_attempts: args.webhook_max_attempts,
            timeout: Duration::from_millis(args.webhook_timeout_ms),
            concurrency: args.webhook_concurrency,
            backoff_min: Duration::from_millis(args.webhook_backoff_min_ms),
            backoff_max: Duration::from_millis(
                args.webhook_backoff_max_ms.max(args.webhook_backoff_min_ms),
            ),
            trust: Trust::load(args.webhook_ca.as_deref())?,
        };
        webhooks.validate()?;
        Ok((
            ApiConfig {
                keys,
                max_body_bytes: args.api_max_body_bytes,
            },
            webhooks,
        ))
    }

    /// Checks the arguments without side effects beyond reading the TLS files.
    fn check(
        args: &ServeArgs,
    ) -> Result<(ClusterSecret, std::collections::HashMap<String, String>), ConfigError> {
        let secret = ClusterSecret::new(&args.cluster_secret)?;
        if args.id == 0 {
            return Err(ConfigError::NodeId);
        }
        if args.region.trim().is_empty() {
            return Err(ConfigError::Region);
        }
        if args
            .heartbeat_ms
            .is_some_and(|h| !(10..=10_000).contains(&h))
        {
            return Err(ConfigError::Heartbeat);
        }
        if args.snapshot_after_entries == Some(0) {
            return Err(ConfigError::SnapshotThreshold);
        }
        if args.raft_listen.ip().is_unspecified() && args.advertise_raft.is_none() {
            return Err(ConfigError::NeedsAdvertise(
                "--raft-listen",
                "--advertise-raft",
            ));
        }
        if args.api_listen.ip().is_unspecified() && args.advertise_api.is_none() {
            return Err(ConfigError::NeedsAdvertise(
                "--api-listen",
                "--advertise-api",
            ));
        }
        if let Some(endpoint) = &args.otlp_endpoint {
            telemetry::check_endpoint(endpoint)?;
        }
        let secret = secret.with_tls(args.tls.load()?);
        let dial = heliograph_coordinator::transport::dial::parse(&args.dial_via)?;
        Ok((secret, dial))
    }
}

fn main() -> ExitCode {
    let parsed = config_file::parse(Cli::command(), std::env::args_os().collect(), Some("serve"))
        .and_then(|p| Ok((Cli::from_arg_matches(&p.matches)?, p)));
    let (cli, parsed) = match parsed {
        Ok(c) => c,
        Err(config_file::FileError::Args(e)) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("heliograph-coordinator: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Cmd::Serve(args) = &cli.command
        && args.print_config
    {
        return print_config(&parsed, args);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heliograph-coordinator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The same variable as the edge's (`HELIOGRAPH_LOG`); `RUST_LOG` is still read.
    let filter = tracing_subscriber::EnvFilter::try_from_env("HELIOGRAPH_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let settings = match &cli.command {
        Cmd::Serve(args) => telemetry::Settings {
            service: "heliograph-coordinator",
            instance: format!("replica-{}", args.id),
            region: args.region.clone(),
            otlp_endpoint: args.otlp_endpoint.as_deref(),
            log_format: args.log_format,
            filter,
        },
        _ => telemetry::Settings {
            service: "heliograph-coordinator",
            instance: String::new(),
            region: String::new(),
            otlp_endpoint: None,
            log_format: LogFormat::Text,
            filter,
        },
    };
    let telemetry = telemetry::init_on(&runtime, settings);
    let telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => {
            eprintln!("heliograph-coordinator: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    runtime.block_on(async {
        let code = run(cli.command).await;
        Telemetry::shutdown(telemetry).await;
        code
    })
}

/// `serve --print-config`: validates, prints the effective configuration, exits.
fn print_config(parsed: &config_file::Parsed, args: &ServeArgs) -> ExitCode {
    if let Err(e) = ServeConfig::check(args).and_then(|_| ServeConfig::check_api(args)) {
        eprintln!("heliograph-coordinator: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let cmd = Cli::command();
    let (Some(serve), Some(matches)) = (
        cmd.find_subcommand("serve"),
        parsed.matches.subcommand_matches("serve"),
    ) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    print!(
        "{}",
        config_file::render("heliograph-coordinator serve", serve, parsed, matches)
    );
    ExitCode::SUCCESS
}

async fn run(command: Cmd) -> ExitCode {
    let (target, call) = match command {
        Cmd::Serve(args) => {
            let config = match ServeConfig::validate(args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("heliograph-coordinator: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            return match serve(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("heliograph-coordinator: {e:#}");
                    match e.downcast_ref::<CoordinatorError>() {
                        Some(CoordinatorError::DataDir { .. } | CoordinatorError::Config(_)) => {
                            ExitCode::from(EXIT_CONFIG)
                        }
                        _ => ExitCode::FAILURE,
                    }
                }
            };
        }
        Cmd::Bootstrap { target } => (target, AdminCall::Bootstrap),
        Cmd::Add {
            target,
            id,
            raft,
            node_api,
            region,
            learner_only,
        } => (
            target,
            AdminCall::Add(pb::AddMemberRequest {
                id,
                raft_addr: raft,
                api_addr: node_api,
                region,
                learner_only,
            }),
        ),
        Cmd::Remove { target, id } => (target, AdminCall::Remove(pb::RemoveMemberRequest { id })),
        Cmd::Status { target } => (target, AdminCall::Status),
        Cmd::Region {
            target,
            region,
            gateways,
        } => (
            target,
            AdminCall::SetRegion(pb::SetRegionRequest { region, gateways }),
        ),
        Cmd::Rooms(args) => return rooms::run(args).await,
        Cmd::Snapshot { target } => {
            let secret = match admin_secret(&target) {
                Ok(s) => s,
                Err(code) => return code,
            };
            return match admin_client::snapshot(&target.api, Some(&secret)).await {
                Ok(built) => {
                    println!("{}", admin_client::snapshot_json(&built));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("heliograph-coordinator: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let secret = match admin_secret(&target) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match admin_client::call(&target.api, Some(&secret), call).await {
        Ok(status) => {
            println!("{}", admin_client::status_json(&status));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("heliograph-coordinator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The secret (and TLS identity) an admin subcommand presents; a bad one exits 64.
fn admin_secret(target: &Target) -> Result<ClusterSecret, ExitCode> {
    let secret = ClusterSecret::new(&target.cluster_secret).map_err(|e| {
        eprintln!("heliograph-coordinator: invalid --cluster-secret: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    match target.tls.load() {
        Ok(tls) => Ok(secret.with_tls(tls)),
        Err(e) => {
            eprintln!("heliograph-coordinator: {e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let ServeConfig {
        args,
        secret,
        dial,
        api,
        webhooks,
    } = config;
    heliograph_coordinator::transport::dial::install(dial)?;
    let prometheus = heliograph_coordinator::metrics::install_prometheus()?;
    heliograph_coordinator::metrics::describe();
    heliograph_coordinator::metrics::describe_process("heliograph-coordinator");
    let raft_listener = TcpListener::bind(args.raft_listen).await?;
    let api_listener = TcpListener::bind(args.api_listen).await?;
    let metrics_listener = TcpListener::bind(args.metrics_listen).await?;
    let metrics_addr = metrics_listener.local_addr()?;
    let raft_addr = args.advertise_raft.unwrap_or(raft_listener.local_addr()?);
    let api_addr = match args.advertise_api {
        Some(a) => a,
        None => api_listener.local_addr()?.to_string(),
    };
    let replica = Replica::open_replica_with(
        ReplicaConfig {
            node_id: args.id,
            data_dir: args.data_dir,
            raft_addr,
            api_addr: api_addr.clone(),
            region: args.region,
            grace: Duration::from_millis(args.grace_ms),
            secret: secret.clone(),
        },
        ReplicaOptions {
            expected_cluster_id: args.cluster_id,
            snapshot_after_entries: args.snapshot_after_entries,
            heartbeat_ms: args.heartbeat_ms,
        },
    )
    .await?;
    let shutdown = CancellationToken::new();
    if api.keys.is_empty() {
        tracing::info!("no server API keys: /api/v1/ refuses every call");
    } else {
        let names: Vec<&str> = api.keys.names().collect();
        tracing::info!(keys = ?names, "server API on the HTTP listener");
    }
    // Shared by the gRPC server and the server API (kicks forwarded to the leader, server
    // messages relayed like signals).
    let registry = RegistryService::new(replica.clone(), secret.clone(), shutdown.clone());
    let mut server = tokio::spawn(heliograph_coordinator::server::serve_with(
        replica.clone(),
        secret,
        registry.clone(),
        raft_listener,
        api_listener,
        shutdown.clone(),
    ));
    let router = heliograph_coordinator::http::router(replica.clone(), Some(prometheus)).merge(
        heliograph_coordinator::api::router(replica.clone(), registry, api),
    );
    let mut http = tokio::spawn(heliograph_coordinator::http::serve(
        metrics_listener,
        router,
        shutdown.clone(),
    ));
    let webhook_task = tokio::spawn(heliograph_coordinator::webhooks::run(
        replica.clone(),
        webhooks,
        shutdown.clone(),
    ));
    let signalled = shutdown_signal()?;
    println!(
        "{}",
        serde_json::json!({
            "raft": raft_addr.to_string(),
            "api": api_addr,
            "admin": api_addr,
            "metrics": metrics_addr.to_string(),
            "node_id": replica.node_id(),
        })
    );
    let outcome = tokio::select! {
        () = signalled => {
            tracing::info!("shutting down");
            shutdown.cancel();
            match tokio::time::timeout(DRAIN_DEADLINE, &mut server).await {
                Ok(joined) => joined.map_err(anyhow::Error::from).and_then(|r| Ok(r?)),
                Err(_) => {
                    tracing::warn!("connections did not drain in time");
                    server.abort();
                    Ok(())
                }
            }
        }
        joined = &mut server => joined.map_err(anyhow::Error::from).and_then(|r| Ok(r?)),
        joined = &mut http => {
            // The gRPC servers must not outlive the HTTP listener's failure unnoticed.
            shutdown.cancel();
            server.abort();
            joined.map_err(anyhow::Error::from).and_then(|r| Ok(r?))
        }
    };
    // Cancelled by now on every path; the HTTP listener has no long-lived connections. A
    // finished handle may already have been consumed by the select above.
    shutdown.cancel();
    if !http.is_finished()
        && tokio::time::timeout(DRAIN_DEADLINE, &mut http)
            .await
            .is_err()
    {
        http.abort();
    }
    if tokio::time::timeout(DRAIN_DEADLINE, webhook_task)
        .await
        .is_err()
    {
        tracing::warn!("webhook delivery did not stop in time");
    }
    if tokio::time::timeout(CLOSE_DEADLINE, replica.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("the replica did not stop in time");
    }
    outcome
}

/// Installs the SIGTERM/SIGINT handlers at once (before the replica announces its addresses, so
/// that an early SIGTERM still drains) and resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
