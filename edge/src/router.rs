//! Where a signal goes, decided at the sender's edge from its membership cache; the signal
//! path never waits on the registry (Raft).
//!
//! 1. Target on this edge: handed over in process.
//! 2. Target on another edge of this region: published on that edge's channel of the
//!    region's bus (Redis, or the in-memory bus). When the bus cannot carry it (Redis down,
//!    target not subscribed, queue full), it takes the coordinator path instead: this edge's
//!    replica → the target edge's replica → the target edge. Slower, never lost.
//! 3. Target in another region: this edge's replica (its region's gateway) → the target
//!    edge's replica (in the target's region) → the target edge, over the long-lived gRPC
//!    streams: one inter-region hop, whichever replica leads Raft.

use std::sync::Arc;
use std::time::Instant;

use heliograph_coordinator::grpc::proto::RelayedSignal;
use heliograph_coordinator::registry::{EdgeId, PeerId, Region, RoomId};

use crate::bus::local::{LocalBus, LocalHub};
use crate::bus::redis::RedisBus;
use crate::bus::{Bus, Envelope, Fallback, Inbound};
use crate::membership;
use crate::metrics::{EdgeMetrics, RelayPath, RoutingPath};
use crate::outbox::{Delivery, Outgoing};
use crate::protocol::ErrorCode;
use crate::registry::Registry;
use crate::rooms::{RoomIndex, Route};

/// A signal ready to leave the sender's edge.
pub struct Outbound<'a> {
    pub room: &'a RoomId,
    pub to: &'a PeerId,
    /// The encoded client frame, `from` stamped.
    pub text: String,
    pub received_at: Instant,
}

/// Why a signal could not be sent; answered to the sender as an error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the target peer's connection is closing")]
    TargetClosing,
    #[error("the target peer's edge cannot be reached right now; retry")]
    Unreachable,
}

impl RouteError {
    pub fn code(self) -> ErrorCode {
        match self {
            Self::TargetClosing => ErrorCode::UnknownPeer,
            Self::Unreachable => ErrorCode::Unavailable,
        }
    }
}

/// The region's bus of this edge, as configured.
pub enum BusConfig {
    /// Redis pub/sub at this client's URL, with a publish queue of this many signals.
    Redis { client: redis::Client, queue: usize },
    /// The in-memory bus of this process.
    Local,
}

pub struct Router {
    region: Region,
    registry: Registry,
    bus: Bus,
    metrics: Arc<EdgeMetrics>,
}

impl Router {
    /// Starts the bus; signals that arrive on it are handed to `index`'s sessions.
    pub fn start(
        me: EdgeId,
        region: Region,
        registry: Registry,
        bus: BusConfig,
        index: Arc<RoomIndex>,
        metrics: Arc<EdgeMetrics>,
    ) -> Arc<Self> {
        let inbound: Inbound = {
            let metrics = Arc::clone(&metrics);
            Arc::new(move |e| deliver_from_bus(&index, &metrics, e))
        };
        let fallback: Fallback = {
            let registry = registry.clone();
            let metrics = Arc::clone(&metrics);
            Arc::new(move |e| {
                if let Err(e) =
                    via_coordinator(&registry, &metrics, e, RoutingPath::CoordinatorFallback)
                {
                    // Nothing can take it now (no replica link either); the sender already
                    // had its answer, so it is counted and logged.
                    metrics.relay_undeliverable.increment(1);
                    tracing::warn!(error = %e, "a signal could take neither Redis nor the coordinator");
                }
            })
        };
        let bus = match bus {
            BusConfig::Redis { client, queue } => Bus::Redis(RedisBus::start(
                client,
                me,
                queue,
                inbound,
                fallback,
                Arc::clone(&metrics),
            )),
            BusConfig::Local => Bus::Local(LocalBus::join(
                LocalHub::global(),
                me,
                inbound,
                Arc::clone(&metrics),
            )),
        };
        Arc::new(Self {
            region,
            registry,
            bus,
            metrics,
        })
    }

    /// Sends a signal along `route` (from [`RoomIndex::route_signal`]).
    pub fn send(&self, route: Route, signal: Outbound<'_>) -> Result<(), RouteError> {
        let (edge, region) = match route {
            Route::Local(target) => {
                self.metrics.routed(RoutingPath::Local);
                let out = Outgoing {
                    text: signal.text,
                    kind: "signal",
                    relayed_at: Some(signal.received_at),
                    path: RelayPath::Local,
                };
                return match target.send(out) {
                    Delivery::Queued => Ok(()),
                    Delivery::Kicked | Delivery::Closed => Err(RouteError::TargetClosing),
                };
            }
            Route::Remote { edge, region } => (edge, region),
        };
        let envelope = Envelope {
            to_edge: edge,
            to_peer: signal.to.to_string(),
            room: signal.room.to_string(),
            frame: signal.text,
            sent_at_us: membership::now_us(),
            from_region: self.region.to_string(),
        };
        if region != self.region {
            return via_coordinator(
                &self.registry,
                &self.metrics,
                envelope,
                RoutingPath::CrossRegion,
            );
        }
        match self.bus.publish(envelope) {
            Ok(()) => Ok(()),
            Err(envelope) => via_coordinator(
                &self.registry,
                &self.metrics,
                *envelope,
                RoutingPath::CoordinatorFallback,
            ),
        }
    }

    /// Whether same-region signals currently take the bus.
    pub fn bus_up(&self) -> bool {
        self.bus.is_up()
    }

    pub async fn shutdown(&self) {
        self.bus.shutdown().await;
    }
}

/// Hands a signal to this edge's replica; counts it under `path` once it is on its way.
fn via_coordinator(
    registry: &Registry,
    metrics: &EdgeMetrics,
    e: Envelope,
    path: RoutingPath,
) -> Result<(), RouteError> {
    let relayed = registry.relay(RelayedSignal {
        to_edge: e.to_edge.to_string(),
        to_peer: e.to_peer,
        room: e.room,
        frame: e.frame.into_bytes(),
        sent_at_us: e.sent_at_us,
        from_region: e.from_region,
    });
    match relayed {
        Ok(()) => {
            metrics.routed(path);
            Ok(())
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot relay a signal to another edge");
            Err(RouteError::Unreachable)
        }
    }
}

/// A signal read from this edge's channel on the bus: to its local target if it is still in
/// the room (the sender's edge checked the sender's side).
fn deliver_from_bus(index: &RoomIndex, metrics: &EdgeMetrics, e: Envelope) {
    let target = PeerId::new(e.to_peer)
        .ok()
        .zip(RoomId::new(e.room).ok())
        .and_then(|(peer, room)| index.local_member(&peer, &room));
    let Some(target) = target else {
        metrics.relay_undeliverable.increment(1);
        return;
    };
    let out = Outgoing {
        text: e.frame,
        kind: "signal",
        relayed_at: membership::sent_at(e.sent_at_us),
        path: RelayPath::Region,
    };
    if target.send(out) != Delivery::Queued {
        metrics.relay_undeliverable.increment(1);
    }
}
