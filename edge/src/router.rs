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
//! 4. Target without a socket (detached, it may resume): its pending buffer, in this
//!    process or in the region's Redis. A signal that cannot be kept there (buffer full, no
//!    such session) is answered with `expired` to its sender, wherever the sender is.

use std::sync::{Arc, Weak};
use std::time::Instant;

use heliograph_coordinator::registry::{EdgeId, PeerId, Region as RegionName, RoomId};
use heliograph_coordinator::telemetry;

use crate::clock;
use crate::metrics::{EdgeMetrics, RelayPath, RoutingPath};
use crate::outbox::{Origin, Outgoing, SignalMeta};
use crate::protocol::{self, ErrorCode, Ref, ServerMessage};
use crate::region::{Backend, Hooks, Region};
use crate::registry::Registry;
use crate::rooms::{RoomIndex, Route};
use crate::session::StoreLimits;
use crate::signal::Envelope;

/// How often [`Router::settle`] looks at the bus's queue.
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// A signal ready to leave the sender's edge.
pub struct Outbound<'a> {
    pub room: RoomId,
    pub from: &'a PeerId,
    /// The target's id, as checked by the room index.
    pub to: &'a str,
    /// The sender's `ref`, echoed in `expired` if the signal is never delivered.
    pub reference: Option<Ref>,
    /// The encoded client frame, `from` stamped.
    pub text: String,
    pub received_at: Instant,
}

/// A signal that could not be sent, with its `ref` for the error frame.
#[derive(Debug)]
pub struct Refused {
    pub error: RouteError,
    pub reference: Option<Ref>,
}

/// Why a signal could not be sent; answered to the sender as an error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the target peer's edge cannot be reached right now; retry")]
    Unreachable,
}

impl RouteError {
    pub fn code(self) -> ErrorCode {
        match self {
            Self::Unreachable => ErrorCode::Unavailable,
        }
    }
}

pub struct Router {
    me: EdgeId,
    region_name: RegionName,
    registry: Registry,
    /// The region's bus and session store.
    region: Region,
    index: Arc<RoomIndex>,
    metrics: Arc<EdgeMetrics>,
}

impl Router {
    /// Starts the region backend; signals that arrive on it are handed to `index`'s
    /// sessions.
    pub fn start(
        me: EdgeId,
        region_name: RegionName,
        registry: Registry,
        backend: Backend,
        limits: StoreLimits,
        index: Arc<RoomIndex>,
        metrics: Arc<EdgeMetrics>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this: &Weak<Router>| {
            let hook = |act: fn(&Router, Envelope)| -> crate::region::Hook {
                let this = this.clone();
                Arc::new(move |e| {
                    if let Some(router) = this.upgrade() {
                        act(&router, e);
                    }
                })
            };
            let hooks = Hooks {
                inbound: hook(|r, e| r.deliver_inbound(e, RelayPath::Region)),
                expired: hook(Router::expire),
                fallback: hook(Router::fallback),
            };
            let region = Region::start(backend, me.clone(), limits, hooks, Arc::clone(&metrics));
            Self {
                me,
                region_name,
                registry,
                region,
                index,
                metrics,
            }
        })
    }

    /// Sends a signal along `route` (from [`RoomIndex::route_signal`]).
    pub fn send(&self, route: Route, signal: Outbound<'_>) -> Result<(), Box<Refused>> {
        let (edge, region) = match route {
            // Signals for this target still queued on the bus go first: this one queues too.
            Route::Local(_) if self.region.busy(signal.to) => {
                let (envelope, _) = self.envelope(signal, self.me.clone());
                if let Err(envelope) = self.region.publish(envelope) {
                    self.deposit(*envelope);
                }
                return Ok(());
            }
            Route::Local(target) => {
                let out = Outgoing::signal(
                    "signal",
                    signal.text,
                    SignalMeta {
                        relayed_at: Some(signal.received_at),
                        path: RelayPath::Local,
                        origin: Origin::Local {
                            room: signal.room,
                            reference: signal.reference,
                        },
                    },
                );
                match target.try_send(out) {
                    Ok(()) => self.metrics.routed(RoutingPath::Local),
                    // Its socket is ending: the peer is being detached here.
                    Err((_, out)) => {
                        if let Ok(e) = out.into_envelope(signal.to, &self.me, &self.region_name) {
                            self.deposit(e);
                        }
                    }
                }
                return Ok(());
            }
            Route::Detached => {
                let (envelope, _) = self.envelope(signal, self.me.clone());
                self.deposit(envelope);
                return Ok(());
            }
            Route::Remote { edge, region } => (edge, region),
        };
        let (envelope, reference) = self.envelope(signal, edge);
        let sent = if region != self.region_name {
            via_coordinator(
                &self.registry,
                &self.metrics,
                envelope,
                RoutingPath::CrossRegion,
                region.as_str(),
            )
        } else {
            match self.region.publish(envelope) {
                Ok(()) => Ok(()),
                Err(envelope) => via_coordinator(
                    &self.registry,
                    &self.metrics,
                    *envelope,
                    RoutingPath::CoordinatorFallback,
                    "",
                ),
            }
        };
        sent.map_err(|error| Box::new(Refused { error, reference }))
    }

    /// The signal as an envelope for `to_edge`; its `ref` is given back too, for an error.
    fn envelope(&self, signal: Outbound<'_>, to_edge: EdgeId) -> (Envelope, Option<Ref>) {
        let envelope = Envelope {
            to_edge,
            to_peer: signal.to.to_owned(),
            room: signal.room.into(),
            frame: signal.text,
            sent_at_us: clock::now_us(),
            from_region: self.region_name.to_string(),
            from_peer: signal.from.to_string(),
            reference: signal
                .reference
                .as_ref()
                .map(|r| r.raw().get().to_owned())
                .unwrap_or_default(),
        };
        (envelope, signal.reference)
    }

    /// A signal for a peer that has no socket on this edge: into its pending buffer (or, with
    /// Redis, to the edge it resumed on), else its sender is told `expired`.
    pub fn deposit(&self, envelope: Envelope) {
        if let Err(envelope) = self.region.deposit(envelope) {
            self.expire(*envelope);
        }
    }

    /// A signal that reached this edge (from the bus or the coordinator), for a local peer.
    pub fn deliver_inbound(&self, e: Envelope, path: RelayPath) {
        let Ok(peer) = PeerId::new(e.to_peer.clone()) else {
            self.metrics.relay_undeliverable.increment(1);
            return;
        };
        // An `expired` notice (no room) goes to the session whatever its rooms.
        let notice = e.room.is_empty();
        let target = if notice {
            self.index.session(&peer)
        } else {
            RoomId::new(e.room.clone())
                .ok()
                .and_then(|room| self.index.local_member(&peer, &room))
        };
        let Some(target) = target else {
            if self.index.session(&peer).is_none() {
                // No socket here any more (detached, or resumed elsewhere).
                self.deposit(e);
            } else {
                // Still here, but no longer in that room.
                self.metrics.relay_undeliverable.increment(1);
            }
            return;
        };
        let mut origin = e;
        let text = std::mem::take(&mut origin.frame);
        let origin = Origin::Relayed(origin);
        let out = Outgoing::signal(
            if notice { "expired" } else { "signal" },
            text,
            SignalMeta {
                relayed_at: match &origin {
                    Origin::Relayed(e) if !notice => clock::sent_at(e.sent_at_us),
                    _ => None,
                },
                path,
                origin,
            },
        );
        if let Err((_, out)) = target.try_send(out)
            && let Ok(envelope) = out.into_envelope(peer.as_str(), &self.me, &self.region_name)
        {
            self.deposit(envelope);
        }
    }

    /// Tells the sender of `e` that it will never be delivered.
    pub fn expire(&self, e: Envelope) {
        let Ok(sender) = PeerId::new(e.from_peer.clone()) else {
            // A notice itself, or a signal relayed without its sender: nobody to tell.
            self.metrics.relay_undeliverable.increment(1);
            return;
        };
        self.metrics.signals_expired.increment(1);
        let reference = (!e.reference.is_empty()).then(|| protocol::raw_json(e.reference.clone()));
        let frame = protocol::encode(&ServerMessage::Expired {
            to: &e.to_peer,
            room: &e.room,
            reference: reference.as_deref(),
        });
        if let Some(handle) = self.index.session(&sender)
            && handle
                .try_send(Outgoing::new("expired", frame.clone()))
                .is_ok()
        {
            return;
        }
        // The sender is on another edge, or has no socket itself right now.
        let notice = Envelope {
            to_edge: self.me.clone(),
            to_peer: e.from_peer,
            room: String::new(),
            frame,
            sent_at_us: clock::now_us(),
            from_region: self.region_name.to_string(),
            from_peer: String::new(),
            reference: String::new(),
        };
        if !self.region.deposit_notice(notice) {
            self.metrics.relay_undeliverable.increment(1);
        }
    }

    /// What the bus could not carry takes the coordinator path, unless it is for a peer of
    /// this edge (its session is missing in Redis): relaying it to ourselves would loop.
    fn fallback(&self, e: Envelope) {
        if e.to_edge == self.me {
            self.expire(e);
            return;
        }
        if let Err(err) = via_coordinator(
            &self.registry,
            &self.metrics,
            e,
            RoutingPath::CoordinatorFallback,
            "",
        ) {
            // Nothing can take it now (no replica link either); the sender already had its
            // answer, so it is counted and logged.
            self.metrics.relay_undeliverable.increment(1);
            tracing::warn!(error = %err, "a signal could take neither Redis nor the coordinator");
        }
    }

    /// Waits (at most `within`) until nothing that concerns `peer` is still on its way
    /// through this edge: signals it sent, signals for it queued on the bus, and signals
    /// published to this edge for it before now (they go to its pending buffer). Its session
    /// is handed over only then, or what comes by a shorter path later could overtake them.
    pub async fn settle(&self, peer: &PeerId, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        if !self.region.round_trip(within).await {
            tracing::debug!("could not confirm this edge's channel is drained");
        }
        while (self.region.sending(peer.as_str()) || self.region.busy(peer.as_str()))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    pub fn metrics(&self) -> &EdgeMetrics {
        &self.metrics
    }

    /// The region backend (its session store, for connections).
    pub fn region(&self) -> &Region {
        &self.region
    }

    pub async fn shutdown(&self) {
        self.region.shutdown().await;
    }
}

/// Hands a signal to this edge's replica; counts it under `path` once it is on its way.
/// With tracing on, this is the first span of the signal's trace, and its context goes with
/// the signal.
fn via_coordinator(
    registry: &Registry,
    metrics: &EdgeMetrics,
    e: Envelope,
    path: RoutingPath,
    to_region: &str,
) -> Result<(), RouteError> {
    let span = if telemetry::enabled() {
        tracing::info_span!(
            target: telemetry::TARGET,
            "signal.relay",
            path = path.as_str(),
            room = %e.room,
        )
    } else {
        tracing::Span::none()
    };
    let _entered = span.enter();
    match registry.relay(e, telemetry::traceparent(&span), to_region) {
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
