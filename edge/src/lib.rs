//! Heliograph's edge: the WebSocket server that clients talk to.
//!
//! - [`config`]: flags and validation.
//! - [`protocol`]: the v1 wire format (decode, validate, encode).
//! - [`session`]: one socket: read loop, outbox, keepalive, close.
//! - [`outbox`]: the bounded per-client queue.
//! - [`rooms`]: the local index of peers and the rooms they are in.
//! - [`registry`]: the room registry, embedded or a remote coordinator cluster.
//! - [`membership`]: applies the registry's events to the index, delivers relayed signals.
//! - [`router`]: where a signal goes (in process, the region's bus, or the replicas).
//! - [`bus`]: the region's bus between edges (Redis pub/sub, or in memory).
//! - [`sessions`]: resumable sessions (replay window, pending buffers, resume tokens).
//! - [`server`]: HTTP routes (WebSocket, health, readiness, metrics, demo page).
//! - [`metrics`]: metric names and handles.
//!
//! [`start`] takes the shutdown token as an argument: the library never reads signals.

#![forbid(unsafe_code)]

pub mod auth;
pub mod bus;
pub mod config;
pub mod limits;
pub mod membership;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod registry;
pub mod rooms;
pub mod router;
pub mod server;
pub mod session;
pub mod sessions;
pub mod turn;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use heliograph_coordinator::registry::{Command, EdgeId, Outcome, Region};
use heliograph_coordinator::{CoordinatorError, EmbeddedConfig, Replica as EmbeddedCoordinator};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{JoinAuth, JoinKey};
use crate::bus::redis::Mailboxes;
use crate::config::{Config, JoinKeySource};
use crate::limits::ConnectionLimiter;
use crate::metrics::EdgeMetrics;
use crate::registry::{Events, Registry, RemoteRegistry, RemoteSettings};
use crate::rooms::RoomIndex;
use crate::router::{BusConfig, Router};
use crate::sessions::memory::MemoryStore;
use crate::sessions::redis::RedisStore;
use crate::sessions::{Sessions, StoreLimits, TokenKey};

/// How much longer than the registry's grace period a detached session is kept.
const SESSION_TTL_MARGIN: Duration = Duration::from_secs(60);
/// How often the session keeper looks at Redis's health.
const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(250);
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
    #[error("join-token key: {0}")]
    JoinKey(String),
    #[error("{0}")]
    Redis(#[from] crate::bus::redis::UrlError),
}

/// What every session and route shares.
pub struct EdgeContext {
    pub config: Config,
    pub edge_id: EdgeId,
    pub region: Region,
    pub index: Arc<RoomIndex>,
    pub registry: Registry,
    /// Regions: sends signals for peers on other edges (router.rs).
    pub router: Arc<Router>,
    pub metrics: Arc<EdgeMetrics>,
    pub ice_servers: Box<RawValue>,
    /// Cancelled when the edge starts draining: sessions are told to `reconnect`, then closed
    /// with 1001 over `--drain-window-ms`.
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown grace period is over: whatever still runs stops now.
    pub hard_stop: CancellationToken,
    pub sessions_store: Sessions,
    pub tokens: TokenKey,
    /// Readiness fails as soon as shutdown begins.
    pub draining: AtomicBool,
    pub prometheus: Option<PrometheusHandle>,
    pub sessions: TaskTracker,
    pub join_auth: JoinAuth,
    pub connections: ConnectionLimiter,
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
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
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
    let incarnation = heliograph_coordinator::clock::now_ms();
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
    // Regions: the bus between this region's edges, and the router that chooses paths.
    let bus = match &config.redis {
        Some(r) => BusConfig::Redis {
            client: crate::bus::redis::parse_url(&r.url)?,
            queue: r.publish_queue,
            mailboxes: Mailboxes {
                max_pending: store_limits.pending,
                ttl_ms: store_limits.ttl_ms(),
            },
        },
        None => BusConfig::Local,
    };
    let sessions = match &config.redis {
        Some(r) => Sessions::Redis(Arc::new(RedisStore::new(
            crate::bus::redis::parse_url(&r.url)?,
            edge_id.clone(),
            store_limits,
        ))),
        None => Sessions::Memory(Arc::new(MemoryStore::new(store_limits))),
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
        bus,
        Arc::clone(&index),
        sessions.clone(),
        Arc::clone(&metrics),
    );
    let ctx = Arc::new(EdgeContext {
        ice_servers: ice_servers_json(&config.ice_servers),
        region: config.region.clone(),
        config,
        edge_id: edge_id.clone(),
        index: Arc::clone(&index),
        registry: registry.clone(),
        router: Arc::clone(&router),
        metrics: Arc::clone(&metrics),
        shutdown: shutdown.clone(),
        hard_stop: CancellationToken::new(),
        sessions_store: sessions.clone(),
        tokens,
        draining: AtomicBool::new(false),
        prometheus,
        sessions: TaskTracker::new(),
        join_auth,
        connections: ConnectionLimiter::new(config_limits.0, config_limits.1),
    });

    let background = TaskTracker::new();
    let stop_background = CancellationToken::new();
    background.spawn(membership::run(
        Arc::clone(&index),
        registry.clone(),
        events,
        Arc::clone(&router),
        Arc::clone(&metrics),
        ctx.region.clone(),
        stop_background.clone(),
    ));
    background.spawn(keep_sessions(
        sessions,
        index,
        Arc::clone(&router),
        metrics,
        store_limits,
        stop_background.clone(),
    ));
    if let Registry::Embedded(embedded) = &registry {
        // A remote registry renews the lease in its own session with the replica.
        background.spawn(renew_lease(
            embedded.clone(),
            edge_id.clone(),
            incarnation,
            lease_ms,
            stop_background.clone(),
        ));
    }

    let finished = tokio::spawn(async move {
        let http = tokio::spawn(server::serve(
            listener,
            server::router(Arc::clone(&ctx)),
            shutdown.clone(),
        ));
        let metrics_http = metrics_listener.map(|l| {
            tokio::spawn(server::serve(
                l,
                server::metrics_router(Arc::clone(&ctx)),
                shutdown.clone(),
            ))
        });
        shutdown.cancelled().await;
        ctx.draining.store(true, Ordering::SeqCst);
        // A session that enters the index after this looks at `draining` itself.
        ctx.index.drain_sessions();
        tracing::info!(
            window_ms = ctx.config.sessions.drain_window.as_millis() as u64,
            "draining: clients are told to reconnect elsewhere"
        );
        ctx.sessions.close();
        if tokio::time::timeout(ctx.config.shutdown_grace, ctx.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions did not finish within the shutdown grace period");
            ctx.hard_stop.cancel();
            let _ = tokio::time::timeout(HARD_STOP_WAIT, ctx.sessions.wait()).await;
        }
        let _ = http.await;
        if let Some(m) = metrics_http {
            let _ = m.await;
        }
        stop_background.cancel();
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

/// Opens the embedded replica and registers this edge with it.
async fn open_embedded(
    config: &Config,
    edge_id: &EdgeId,
    http_addr: SocketAddr,
    incarnation: u64,
    lease_ms: u64,
) -> Result<(Registry, Events), StartError> {
    let coordinator = EmbeddedCoordinator::open(EmbeddedConfig {
        data_dir: config.data_dir.clone(),
        grace: config.detach_grace,
    })
    .await?;
    let registered = coordinator
        .execute(Command::RegisterEdge {
            edge: edge_id.clone(),
            region: config.region.clone(),
            address: http_addr.to_string(),
            incarnation,
            lease_ms,
            // Sessions live in this process only, so peers of a previous run cannot resume.
            resumable_sessions: false,
            replica: 0,
        })
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

/// Keeps this edge's sessions alive in the store (at a third of their TTL, and at once when
/// Redis comes back, since a restarted Redis has lost them) and delivers what reached their
/// pending buffers; without Redis, forgets sessions detached for too long.
async fn keep_sessions(
    sessions: Sessions,
    index: Arc<RoomIndex>,
    router: Arc<Router>,
    metrics: Arc<EdgeMetrics>,
    limits: StoreLimits,
    stop: CancellationToken,
) {
    let every = match &sessions {
        Sessions::Redis(_) => limits.ttl / 3,
        Sessions::Memory(_) => Duration::from_secs(1),
    };
    let mut tick = tokio::time::interval(SESSION_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_refresh = tokio::time::Instant::now();
    let mut bus_was_up = router.bus_up();
    let mut failed = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let bus_up = router.bus_up();
        let came_back = bus_up && !bus_was_up;
        bus_was_up = bus_up;
        // A failed refresh is retried at the next check.
        if !came_back && !failed && last_refresh.elapsed() < every {
            continue;
        }
        last_refresh = tokio::time::Instant::now();
        // In Redis: keep this edge's sessions alive and take what reached their buffers. In
        // memory: forget sessions detached too long; their pending signals expire.
        let refreshed = match &sessions {
            Sessions::Redis(r) => r.refresh(&index.local_sessions()).await,
            Sessions::Memory(m) => Ok(m.purge()),
        };
        failed = refreshed.is_err();
        match refreshed {
            Ok(found) => {
                for e in found {
                    match &sessions {
                        Sessions::Memory(_) => router.expire(e),
                        Sessions::Redis(_) => {
                            router.deliver_inbound(e, crate::metrics::RelayPath::Region)
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not refresh sessions"),
        }
        if let Sessions::Memory(m) = &sessions {
            metrics.signals_pending.set(m.pending_total() as f64);
        }
    }
}

/// Renews the edge's lease at a third of its length, so two renewals may fail in a row.
async fn renew_lease(
    registry: EmbeddedCoordinator,
    edge: EdgeId,
    incarnation: u64,
    lease_ms: u64,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(lease_ms / 3));
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let renewed = registry
            .execute(Command::RenewLease {
                edge: edge.clone(),
                incarnation,
                lease_ms,
            })
            .await;
        match renewed {
            Ok(Outcome::Done) => {}
            Ok(other) => tracing::error!(?other, "the registry refused to renew this edge's lease"),
            Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
        }
    }
}

fn join_auth(source: Option<&JoinKeySource>) -> Result<JoinAuth, StartError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| StartError::JoinKey(format!("{}: {e}", path.display())))
    };
    let key = match source {
        None => return Ok(JoinAuth::open()),
        Some(JoinKeySource::Hs256Secret(s)) => JoinKey::Hs256(s.as_bytes().to_vec()),
        Some(JoinKeySource::Es256PemFile(p)) => JoinKey::Es256(read(p)?),
        Some(JoinKeySource::Rs256PemFile(p)) => JoinKey::Rs256(read(p)?),
    };
    JoinAuth::with_key(key).map_err(|e| StartError::JoinKey(e.to_string()))
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
