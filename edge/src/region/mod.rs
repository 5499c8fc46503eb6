//! The region backend: how this edge reaches the other edges of its region and where the
//! sessions of its peers are stored, behind one type, so that nothing outside this folder
//! knows which backend runs.
//!
//! - `memory/`: no `--redis`. An in-memory bus between edges of this process and a session
//!   store of this process (a peer resumes on this process only).
//! - `redis/`: the region's Redis. Pub/sub between the region's edges (one channel per
//!   edge), and sessions shared by every edge of the region; keys, Lua scripts, bus and
//!   store together, since the scripts that deliver a signal and resume a session must agree
//!   on every key.
//!
//! The bus is best effort by design: whatever it cannot carry (Redis unreachable, no
//! subscriber on the target's channel, a full publish queue) goes to [`Hooks::fallback`],
//! the coordinator path, so a signal is slower then, never lost.
//!
//! May import: `signal`, `session` (types), `metrics`, `clock`; never the router, the room
//! index or connections (it hands signals back through [`Hooks`]).

mod error;
mod hooks;
mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use heliograph_coordinator::registry::{EdgeId, PeerId};

pub use error::{StoreError, UrlError};
pub use hooks::{Hook, Hooks};
pub use redis::bus::DEFAULT_PUBLISH_QUEUE;
pub use redis::connect::{DEFAULT_REDIS_CONNECTIONS, RedisSettings, RedisTls, Sentinel};

use crate::metrics::{EdgeMetrics, RoutingPath};
use crate::session::{LocalSession, Owner, Restored, StoreLimits, StoredRoom};
use crate::signal::Envelope;

use memory::bus::{LocalBus, LocalHub};
use memory::store::MemoryStore;
use redis::bus::{Mailboxes, RedisBus};
use redis::store::RedisStore;

/// How often the in-memory store forgets sessions detached for too long.
const MEMORY_PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// The backend as configured (checked before anything connects).
pub enum Backend {
    /// This process only.
    Memory,
    /// The region's Redis.
    Redis { settings: Box<RedisSettings> },
}

impl Backend {
    /// The Redis backend, or why its settings cannot be used.
    pub fn redis(settings: RedisSettings) -> Result<Self, UrlError> {
        settings.client()?;
        Ok(Self::Redis {
            settings: Box::new(settings),
        })
    }
}

/// What [`Region::upkeep`] found.
#[derive(Debug, Default)]
pub struct Upkeep {
    /// Signals that reached the pending buffers of peers with a socket here: deliver them.
    pub arrived: Vec<Envelope>,
    /// Signals of sessions that ended for good: their senders are told `expired`.
    pub expired: Vec<Envelope>,
}

/// This edge's region backend. Cheap to clone.
#[derive(Clone)]
pub struct Region {
    kind: Kind,
    limits: StoreLimits,
    metrics: Arc<EdgeMetrics>,
}

#[derive(Clone)]
enum Kind {
    Memory {
        bus: Arc<LocalBus>,
        store: Arc<MemoryStore>,
    },
    Redis {
        bus: Arc<RedisBus>,
        store: Arc<RedisStore>,
    },
}

impl Region {
    /// Starts the backend for edge `me`; what it does not deliver itself goes to `hooks`.
    pub fn start(
        backend: Backend,
        me: EdgeId,
        limits: StoreLimits,
        hooks: Hooks,
        metrics: Arc<EdgeMetrics>,
    ) -> Self {
        let kind = match backend {
            Backend::Memory => Kind::Memory {
                bus: LocalBus::join(LocalHub::global(), me, hooks.inbound, Arc::clone(&metrics)),
                store: Arc::new(MemoryStore::new(limits)),
            },
            Backend::Redis { settings } => {
                let mailboxes = Mailboxes {
                    max_pending: limits.pending,
                    ttl_ms: limits.ttl_ms(),
                };
                let settings = Arc::new(*settings);
                Kind::Redis {
                    store: Arc::new(RedisStore::new(Arc::clone(&settings), me.clone(), limits)),
                    bus: RedisBus::start(
                        Arc::clone(&settings),
                        me,
                        settings.publish_queue,
                        mailboxes,
                        hooks,
                        Arc::clone(&metrics),
                    ),
                }
            }
        };
        Self {
            kind,
            limits,
            metrics,
        }
    }

    /// Hands a signal for a peer on another edge of the region to the bus, which accounts
    /// for it from then on (including its own fallback); `Err` gives it back when the bus
    /// cannot take it now.
    pub fn publish(&self, envelope: Envelope) -> Result<(), Box<Envelope>> {
        match &self.kind {
            Kind::Memory { bus, .. } => bus.publish(envelope),
            Kind::Redis { bus, .. } => bus.publish(envelope, false),
        }
    }

    /// Keeps a signal for a peer without a socket on this edge: its pending buffer (with
    /// Redis: or the edge it resumed on). `Err` gives it back when it cannot be kept: its
    /// sender must be told `expired`.
    pub fn deposit(&self, envelope: Envelope) -> Result<(), Box<Envelope>> {
        match &self.kind {
            Kind::Memory { store, .. } => match store.deposit(envelope) {
                Ok(()) => {
                    self.metrics.routed(RoutingPath::Pending);
                    Ok(())
                }
                Err((_, envelope)) => Err(envelope),
            },
            // The bus's script decides: the owner's edge, or the pending buffer.
            Kind::Redis { bus, .. } => bus.publish(envelope, true),
        }
    }

    /// Keeps an `expired` notice for a sender without a socket here; false when it cannot.
    pub fn deposit_notice(&self, notice: Envelope) -> bool {
        match &self.kind {
            Kind::Memory { store, .. } => store.deposit(notice).is_ok(),
            Kind::Redis { bus, .. } => bus.publish(notice, true).is_ok(),
        }
    }

    /// Whether signals for `peer` are still queued on the bus (a newer one must queue too, or
    /// it would overtake them). The in-memory bus hands over at once.
    pub fn busy(&self, peer: &str) -> bool {
        match &self.kind {
            Kind::Memory { .. } => false,
            Kind::Redis { bus, .. } => bus.in_flight().busy(peer),
        }
    }

    /// Whether signals from `peer` are still queued on the bus.
    pub fn sending(&self, peer: &str) -> bool {
        match &self.kind {
            Kind::Memory { .. } => false,
            Kind::Redis { bus, .. } => bus.in_flight().sending(peer),
        }
    }

    /// Waits until what was published to this edge before has been read (Redis only);
    /// false when that could not be shown within `within`.
    pub async fn round_trip(&self, within: Duration) -> bool {
        match &self.kind {
            Kind::Memory { .. } => true,
            Kind::Redis { bus, .. } => bus.round_trip(within).await,
        }
    }

    /// Whether the bus can carry signals right now (Redis reachable and subscribed).
    pub fn is_up(&self) -> bool {
        match &self.kind {
            Kind::Memory { .. } => true,
            Kind::Redis { bus, .. } => bus.is_up(),
        }
    }

    /// Creates the session of a new socket, owned by this edge.
    pub async fn open(&self, peer: &PeerId, owner: &Owner) -> Result<(), StoreError> {
        match &self.kind {
            Kind::Memory { store, .. } => {
                store.open(peer, owner);
                Ok(())
            }
            Kind::Redis { store, .. } => store.open(peer, owner).await,
        }
    }

    /// Records the peer's rooms (after a join or a leave), if this edge still owns it.
    pub async fn save_rooms(
        &self,
        peer: &PeerId,
        owner: &Owner,
        rooms: &[StoredRoom],
    ) -> Result<(), StoreError> {
        match &self.kind {
            Kind::Memory { store, .. } => {
                store.save_rooms(peer, owner, rooms);
                Ok(())
            }
            Kind::Redis { store, .. } => store.save_rooms(peer, owner, rooms).await,
        }
    }

    /// The socket ended but the peer may resume: saves what it may not have read (the
    /// replay window; the signals never written go in front of its pending buffer, so that
    /// their senders are told if it never comes back), and from now on signals for it go to
    /// its pending buffer. Returns false when another socket owns the session already.
    pub async fn detach(
        &self,
        peer: &PeerId,
        owner: &Owner,
        seq: u64,
        window: Vec<String>,
        unsent: Vec<Envelope>,
    ) -> Result<bool, StoreError> {
        match &self.kind {
            Kind::Memory { store, .. } => Ok(store.detach(peer, owner, seq, window, unsent)),
            Kind::Redis { store, .. } => store.detach(peer, owner, seq, window, unsent).await,
        }
    }

    /// Makes this edge the session's owner and takes what the peer missed. `None`: no such
    /// session (it ended, or expired).
    pub async fn resume(
        &self,
        peer: &PeerId,
        owner: &Owner,
    ) -> Result<Option<Restored>, StoreError> {
        match &self.kind {
            Kind::Memory { store, .. } => Ok(store.resume(peer, owner)),
            Kind::Redis { store, .. } => store.resume(peer, owner).await,
        }
    }

    /// Ends the session for good; returns the signals still pending for it, whose senders
    /// must be told `expired`. With an `owner`, a session that another socket owns now is
    /// left alone (and nothing is returned).
    pub async fn end(
        &self,
        peer: &PeerId,
        owner: Option<&Owner>,
    ) -> Result<Vec<Envelope>, StoreError> {
        match &self.kind {
            Kind::Memory { store, .. } => Ok(store.end(peer, owner)),
            Kind::Redis { store, .. } => store.end(peer, owner).await,
        }
    }

    /// How often [`Region::upkeep`] must run: at a third of the sessions' TTL in Redis (two
    /// refreshes may fail in a row), every second in memory.
    pub fn upkeep_interval(&self) -> Duration {
        match &self.kind {
            Kind::Memory { .. } => MEMORY_PURGE_INTERVAL,
            Kind::Redis { .. } => self.limits.ttl / 3,
        }
    }

    /// In Redis: keeps this edge's sessions (from `local`, read only when needed) alive and
    /// takes what reached their pending buffers. In memory: forgets sessions detached too
    /// long; their pending signals expire.
    pub async fn upkeep(
        &self,
        local: impl FnOnce() -> Vec<LocalSession>,
    ) -> Result<Upkeep, StoreError> {
        match &self.kind {
            Kind::Memory { store, .. } => {
                let expired = store.purge();
                self.metrics
                    .signals_pending
                    .set(store.pending_total() as f64);
                Ok(Upkeep {
                    arrived: Vec::new(),
                    expired,
                })
            }
            Kind::Redis { store, .. } => Ok(Upkeep {
                arrived: store.refresh(&local()).await?,
                expired: Vec::new(),
            }),
        }
    }

    pub async fn shutdown(&self) {
        match &self.kind {
            Kind::Memory { bus, .. } => bus.close(),
            Kind::Redis { bus, .. } => bus.shutdown().await,
        }
    }
}
