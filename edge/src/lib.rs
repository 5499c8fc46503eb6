//! Heliograph's edge: the WebSocket server that clients talk to.
//!
//! The map (each module: what it owns; what it may import is in its own `//!` header and in
//! `docs/ARCHITECTURE.md`):
//!
//! - [`config`]: flags and validation (public: the binary parses them).
//! - [`protocol`]: the v1 wire format (decode, validate, encode); domain, no transport
//!   (public: the fuzz target drives the decoder).
//! - `signal`: a signal between edges (the envelope) and its bus wire form; `clock`.
//! - `rooms`: the room index, a pure core (`rooms::core`) behind one lock.
//! - `contacts`: contact hashes, the hidden rooms that index them, the mutual-match rule.
//! - `session`: what a resumable session is (records, claim, sequence numbers, tokens).
//! - `region`: the region backend, memory or Redis, behind one type: the bus between the
//!   region's edges and the session store.
//! - `router`: where a signal goes (in process, the region's bus, or the replicas).
//! - `registry`: the registry client (embedded replica or remote cluster); protobuf types
//!   stop there. `follower`: the one task that applies its events to the room index.
//! - `outbox`: the bounded per-client queue, its handle and kick.
//! - `connection`: one socket: its select loop, requests, resume, writer, drain.
//! - `server`: HTTP routes; `context`: what routes and connections share; `shutdown`: the
//!   one shutdown signal and its stages; `background`: session upkeep and lease renewal.
//! - [`socketio`]: the Socket.IO ingress (`--socketio`): the dialect of Node.js signaling
//!   servers, served through `connection::ingress` sessions; `admission`: who may connect,
//!   on either ingress.
//! - `auth`, `limits`, `turn`, `metrics`: join tokens, limits, TURN credentials, metrics.
//!   `member`: what peers see of a member (`meta` with the verified `identity` and `key`).
//! - `client_addr`: trusted proxies and the client address they forward; `listener`: the
//!   TCP listener, which reads PROXY protocol headers when asked to.
//!
//! [`start`] takes the shutdown token as an argument: the library never reads signals.

#![forbid(unsafe_code)]

mod admission;
mod auth;
mod background;
mod client_addr;
mod clock;
pub mod config;
mod connection;
mod contacts;
mod context;
mod follower;
mod front;
mod limits;
mod listener;
mod member;
mod metrics;
mod outbox;
mod prefixed;
pub mod protocol;
mod region;
mod registry;
mod rooms;
mod router;
mod server;
mod session;
mod shutdown;
mod signal;
pub mod socketio;
mod turn;
mod upgrade;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use heliograph_coordinator::registry::{Command, EdgeId, Outcome};
use heliograph_coordinator::{CoordinatorError, EmbeddedConfig, Replica};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::metrics::ALLOCATOR_COLLECTIONS;

use crate::auth::{JoinAuth, JoinKey};
use crate::config::{Config, JoinKeySource};
use crate::context::EdgeContext;
use crate::limits::ConnectionLimiter;
use crate::listener::{EdgeListener, ProxyProtocol};
use crate::metrics::EdgeMetrics;
use crate::region::Backend;
use crate::registry::{Events, Registry, RemoteRegistry, RemoteSettings};
use crate::rooms::RoomIndex;
use crate::router::Router;
use crate::session::{StoreLimits, TokenKey};
use crate::shutdown::{Shutdown, Stage};

/// How much longer than the registry's grace period a detached session is kept.
const SESSION_TTL_MARGIN: Duration = Duration::from_secs(60);
/// After the grace period, how long sessions get to close their sockets.
const HARD_STOP_WAIT: Duration = Duration::from_secs(1);

/// File in the data directory that keeps a generated edge id across restarts.
const EDGE_ID_FILE: &str = "edge-id";

/// Errors that stop the edge from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("coordinator: {0}")]
    Coordinator(#[from] CoordinatorError),
    #[error("edge id file {path}: {source}")]
    EdgeId { path: String, source: io::Error },
    #[error("the registry refused this edge: {0:?}")]
    Registration(Outcome),
    #[error("join-token key file {path}: {source}")]
    JoinKeyFile { path: String, source: io::Error },
    #[error("{0}")]
    JoinKey(#[from] crate::auth::KeyError),
    #[error("{0}")]
    Redis(#[from] crate::region::UrlError),
}

/// A started edge.
pub struct Running {
    pub http_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// Resolves when the edge has shut down completely.
    pub finished: tokio::task::JoinHandle<()>,
}

/// Binds the listeners, opens the embedded registry and starts serving until `shutdown`.
pub async fn start(
    config: Config,
    prometheus: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    let listener = listener::bind(config.listen).map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?,
        ),
        None => None,
    };
    let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

    let edge_id = match &config.edge_id {
        Some(id) => id.clone(),
        None => stored_edge_id(&config.data_dir)?,
    };
    let incarnation = clock::now_ms();
    let lease_ms = u64::try_from(config.lease.as_millis()).unwrap_or(u64::MAX);
    let (registry, events) = match &config.coordinator {
        None => open_embedded(&config, &edge_id, http_addr, incarnation, lease_ms).await?,
        Some(remote) => {
            let (tx, rx) = tokio::sync::mpsc::channel(registry::EVENTS_BUFFER);
            let settings = RemoteSettings {
                urls: remote.urls.clone(),
                secret: remote.secret.clone(),
                edge: edge_id.clone(),
                region: config.region.clone(),
                address: http_addr.to_string(),
                incarnation,
                lease_ms,
                resumable_sessions: config.redis.is_some(),
            };
            tracing::info!(urls = ?remote.urls, "using a remote coordinator cluster");
            (
                Registry::Remote(RemoteRegistry::start(settings, tx)),
                Events::Remote(rx),
            )
        }
    };

    let join_auth = join_auth(config.join_key.as_ref())?;
    if join_auth.is_open() {
        tracing::warn!(
            "no join-token key is configured: this edge is OPEN, anyone who can reach it may \
             join any room (set --join-token-secret or --join-token-public-key)"
        );
    }
    let metrics = Arc::new(EdgeMetrics::new());
    let index = Arc::new(RoomIndex::new(edge_id.clone()));
    let config_limits = (config.max_connections, config.max_connections_per_ip);
    let store_limits = StoreLimits {
        // A detached session must outlive the registry's grace period, or its senders could
        // not be told `expired` when it ends.
        ttl: config.detach_grace + SESSION_TTL_MARGIN,
        pending: config.sessions.pending_signals,
    };
    let backend = match &config.redis {
        Some(r) => Backend::redis(r.settings.clone())?,
        None => Backend::Memory,
    };
    // Resume tokens must check out on every edge of the cluster: an explicit secret, else
    // a key derived from the cluster secret the edges share already.
    let tokens = match (&config.sessions.secret, &config.coordinator) {
        (Some(secret), _) => TokenKey::new(secret.as_bytes()),
        (None, Some(remote)) => TokenKey::new(&remote.secret.derive("heliograph resume tokens v1")),
        (None, None) => TokenKey::random(),
    };
    let router = Router::start(
        edge_id.clone(),
        config.region.clone(),
        registry.clone(),
        backend,
        store_limits,
        Arc::clone(&index),
        Arc::clone(&metrics),
    );
    let stages = Arc::new(Shutdown::default());
    let ctx = Arc::new(EdgeContext {
        ice_servers: ice_servers_json(&config.ice_servers),
        region: config.region.clone(),
        config,
        edge_id: edge_id.clone(),
        index: Arc::clone(&index),
        registry: registry.clone(),
        router: Arc::clone(&router),
        metrics: Arc::clone(&metrics),
        shutdown: Arc::clone(&stages),
        tokens,
        prometheus,
        connection_tasks: TaskTracker::new(),
        join_auth,
        connections: ConnectionLimiter::new(config_limits.0, config_limits.1),
    });

    let background = TaskTracker::new();
    background.spawn(follower::follow(
        Arc::clone(&index),
        registry.clone(),
        events,
        Arc::clone(&router),
        Arc::clone(&metrics),
        ctx.region.clone(),
        Arc::clone(&stages),
    ));
    background.spawn(background::keep_sessions(
        Arc::clone(&router),
        index,
        Arc::clone(&stages),
    ));
    if let Registry::Embedded(embedded) = &registry {
        background.spawn(background::renew_lease(
            embedded.clone(),
            embedded_registration(&ctx.config, &edge_id, http_addr, incarnation, lease_ms),
            Arc::clone(&stages),
        ));
    }

    let proxy = ctx
        .config
        .client_addresses
        .proxy_protocol
        .then(|| ProxyProtocol {
            trusted: ctx.config.client_addresses.trusted.clone(),
            metrics: Arc::clone(&ctx.metrics),
        });
    let listener = EdgeListener::new(listener, proxy);
    let metrics_listener = metrics_listener.map(|l| EdgeListener::new(l, None));
    let finished = tokio::spawn(async move {
        let socketio = ctx
            .config
            .socketio
            .clone()
            .map(|dialect| socketio::SocketIoIngress::new(&ctx, dialect));
        let http = tokio::spawn(front::serve(
            listener,
            server::router(Arc::clone(&ctx), socketio),
            Arc::clone(&ctx),
        ));
        let metrics_http = metrics_listener.map(|l| {
            tokio::spawn(server::serve(
                l,
                server::metrics_router(Arc::clone(&ctx)),
                Arc::clone(&ctx),
            ))
        });
        shutdown.cancelled().await;
        stages.advance(Stage::Draining);
        // A session that enters the index after this looks at the stage itself.
        ctx.index.drain_sessions();
        tracing::info!(
            window_ms = ctx.config.sessions.drain_window.as_millis() as u64,
            "draining: clients are told to reconnect elsewhere"
        );
        ctx.connection_tasks.close();
        if tokio::time::timeout(ctx.config.shutdown_grace, ctx.connection_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions did not finish within the shutdown grace period");
            stages.advance(Stage::HardStop);
            let _ = tokio::time::timeout(HARD_STOP_WAIT, ctx.connection_tasks.wait()).await;
        }
        let _ = http.await;
        if let Some(m) = metrics_http {
            let _ = m.await;
        }
        stages.advance(Stage::Stopped);
        background.close();
        background.wait().await;
        router.shutdown().await;
        let released = registry
            .execute(Command::ReleaseEdge {
                edge: edge_id,
                incarnation,
            })
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not release the edge's lease");
        }
        registry.shutdown().await;
        tracing::info!("edge stopped");
    });
    Ok(Running {
        http_addr,
        metrics_addr,
        finished,
    })
}

/// This edge's registration with its embedded replica.
fn embedded_registration(
    config: &Config,
    edge_id: &EdgeId,
    http_addr: SocketAddr,
    incarnation: u64,
    lease_ms: u64,
) -> Command {
    Command::RegisterEdge {
        edge: edge_id.clone(),
        region: config.region.clone(),
        address: http_addr.to_string(),
        incarnation,
        lease_ms,
        // Sessions live in this process only, so peers of a previous run cannot resume.
        resumable_sessions: false,
        replica: 0,
    }
}

/// Opens the embedded replica and registers this edge with it.
async fn open_embedded(
    config: &Config,
    edge_id: &EdgeId,
    http_addr: SocketAddr,
    incarnation: u64,
    lease_ms: u64,
) -> Result<(Registry, Events), StartError> {
    let coordinator = Replica::open(EmbeddedConfig {
        data_dir: config.data_dir.clone(),
        grace: config.detach_grace,
        snapshot_after_entries: config.snapshot_after_entries,
    })
    .await?;
    let registered = coordinator
        .execute(embedded_registration(
            config,
            edge_id,
            http_addr,
            incarnation,
            lease_ms,
        ))
        .await;
    let registered = match registered {
        Ok(r) => r,
        Err(e) => {
            coordinator.shutdown().await;
            return Err(e.into());
        }
    };
    if registered != Outcome::Done {
        coordinator.shutdown().await;
        return Err(StartError::Registration(registered));
    }
    tracing::info!(edge = %edge_id, region = %config.region, %http_addr, "edge registered");
    let events = Events::Embedded(coordinator.subscribe());
    Ok((Registry::Embedded(coordinator), events))
}

fn join_auth(source: Option<&JoinKeySource>) -> Result<JoinAuth, StartError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| StartError::JoinKeyFile {
            path: path.display().to_string(),
            source,
        })
    };
    let key = match source {
        None => return Ok(JoinAuth::open()),
        Some(JoinKeySource::Hs256Secret(s)) => JoinKey::Hs256(s.as_bytes().to_vec()),
        Some(JoinKeySource::Es256PemFile(p)) => JoinKey::Es256(read(p)?),
        Some(JoinKeySource::Rs256PemFile(p)) => JoinKey::Rs256(read(p)?),
    };
    Ok(JoinAuth::with_key(key)?)
}

fn stored_edge_id(data_dir: &Path) -> Result<EdgeId, StartError> {
    let path = data_dir.join(EDGE_ID_FILE);
    let err = |source| StartError::EdgeId {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => EdgeId::new(s.trim())
            .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = EdgeId::random();
            std::fs::create_dir_all(data_dir).map_err(err)?;
            std::fs::write(&path, id.as_str()).map_err(err)?;
            Ok(id)
        }
        Err(e) => Err(err(e)),
    }
}

/// The `ice_servers` array of `welcome`, in RTCIceServer form.
fn ice_servers_json(urls: &[String]) -> Box<RawValue> {
    let servers: Vec<serde_json::Value> = urls
        .iter()
        .map(|u| serde_json::json!({ "urls": [u] }))
        .collect();
    protocol::raw_json(serde_json::Value::Array(servers).to_string())
}
