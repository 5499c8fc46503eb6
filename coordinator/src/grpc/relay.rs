//! Where a signal between edges goes from this replica: down the target edge's link when it
//! is attached here, else over one `Relay` stream to the replica it is attached to (from the
//! registry's edge record). Signals never take a second replica hop, and never touch Raft.
//! A signal for another region leaves through the sender's replica (its region's gateway) and
//! arrives at the target edge's replica: one inter-region hop, whichever replica leads Raft.
//!
//! With region-homed rooms, an edge of another region's group is not in this replica's
//! registry: the signal names the target's region (`to_region`, set by the sending edge) and
//! goes to a gateway of that region, which passes it to the replica the edge is attached to
//! (a second hop inside that region, when it is another replica). Receipts going back to an
//! edge of another region find its region from the signals that edge sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::leader::Clients;
use super::links::{Links, Push};
use super::proto::{RelayedSignal, ReplicaToEdge, replica_to_edge};
use crate::metrics::{self, RelayRoute};
use crate::registry::{EdgeId, Region};
use crate::replica::Replica;
use crate::telemetry;
use crate::transport::ClusterSecret;

/// Signals queued for one other replica before new ones are dropped.
pub const FORWARD_BUFFER: usize = 4 * 1024;
/// Edges of other regions' groups remembered with their region (from the signals they sent)
/// before the memory is cleared and starts again.
const REMOTE_EDGES_MAX: usize = 64 * 1024;

/// Where a signal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An edge's link to this replica.
    Edge,
    /// Another replica's `Relay` stream: deliver locally or drop.
    Replica,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Self::Edge => "edge",
            Self::Replica => "replica",
        }
    }
}

pub struct Relay {
    replica: Replica,
    links: Arc<Links>,
    clients: Arc<Clients>,
    secret: ClusterSecret,
    forwarders: Arc<Mutex<HashMap<String, mpsc::Sender<RelayedSignal>>>>,
    /// Edge id → region, for edges of other regions' groups.
    remote_edges: Mutex<HashMap<String, String>>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Relay {
    pub fn new(
        replica: Replica,
        links: Arc<Links>,
        clients: Arc<Clients>,
        secret: ClusterSecret,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Self {
            replica,
            links,
            clients,
            secret,
            forwarders: Arc::default(),
            remote_edges: Mutex::default(),
            tasks,
            stop,
        }
    }

    /// Passes `signal` on. A signal that carries a trace context gets a span here, whose
    /// context replaces the one it carries, so the next process's span is its child.
    pub fn route(&self, mut signal: RelayedSignal, origin: Origin) {
        let span = if telemetry::enabled() && !signal.traceparent.is_empty() {
            let span = tracing::info_span!(
                target: telemetry::TARGET,
                "relay.route",
                from = origin.as_str(),
                to = tracing::field::Empty,
            );
            telemetry::set_parent(&span, &signal.traceparent);
            signal.traceparent = telemetry::traceparent(&span);
            span
        } else {
            tracing::Span::none()
        };
        let _entered = span.enter();
        let Ok(to_edge) = EdgeId::new(signal.to_edge.clone()) else {
            metrics::relay_dropped("invalid");
            return;
        };
        // The edges' receipts for signals (see the edge's `registry/delivery.rs`) take the
        // same routes; they are counted apart so that the signal counts stay signals.
        let receipt = signal.to_peer.is_empty() && signal.ack_through > 0;
        if receipt {
            metrics::relayed_receipt();
        }
        let from_other_region = origin == Origin::Replica
            && !signal.from_region.is_empty()
            && signal.from_region != self.replica.region();
        if from_other_region {
            if !receipt {
                metrics::cross_region_message(false);
            }
            if !signal.from_edge.is_empty() {
                self.remember(&signal.from_edge, &signal.from_region);
            }
        }
        // From a replica of this region: deliver or drop (no second hop). From another
        // region: deliver, or pass to the edge's replica below.
        let deliver_here = origin == Origin::Replica && !from_other_region;
        if self.links.is_linked(&to_edge) || deliver_here {
            let msg = ReplicaToEdge {
                msg: Some(replica_to_edge::Msg::Signal(signal)),
            };
            match self.links.push(&to_edge, msg) {
                Push::Queued if receipt => {}
                Push::Queued => {
                    span.record("to", "edge");
                    metrics::relayed(RelayRoute::Local);
                }
                Push::Dropped => metrics::relay_dropped("queue_full"),
                // From another replica: the edge moved away meanwhile; no second hop.
                Push::NotLinked => metrics::relay_dropped("no_route"),
            }
            return;
        }
        let Some(record) = self.replica.edge(&to_edge) else {
            if !from_other_region {
                self.to_region(signal, &to_edge, &span);
            } else {
                metrics::relay_dropped("unknown_edge");
            }
            return;
        };
        let target = record.replica;
        // The target edge's replica serves the target's region (edges attach to a replica of
        // their own region), so this is the one inter-region hop when the regions differ.
        let cross_region = record.region.as_str() != self.replica.region();
        let addr = (target != self.replica.node_id())
            .then(|| self.replica.replica_api_addr(target))
            .flatten();
        let Some(addr) = addr else {
            // Attached here but not linked right now (reconnecting), or attached to a replica
            // this one cannot reach.
            metrics::relay_dropped("no_route");
            return;
        };
        span.record("to", if cross_region { "region" } else { "replica" });
        match self.forwarder(&addr).try_send(signal) {
            Ok(()) if receipt => {}
            Ok(()) if cross_region => {
                metrics::relayed(RelayRoute::CrossRegion);
                metrics::cross_region_message(true);
            }
            Ok(()) => metrics::relayed(RelayRoute::Forwarded),
            Err(_) => metrics::relay_dropped("queue_full"),
        }
    }

    /// A signal for `to_edge`, an edge this group does not know: to a gateway of its region
    /// (named by the signal, or remembered from the edge's own signals).
    fn to_region(&self, signal: RelayedSignal, to_edge: &EdgeId, span: &tracing::Span) {
        let region = if signal.to_region.is_empty() {
            self.remote_edges
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(to_edge.as_str())
                .cloned()
        } else {
            Some(signal.to_region.clone())
        };
        let receipt = signal.to_peer.is_empty() && signal.ack_through > 0;
        let gateway = region
            .filter(|r| r != self.replica.region())
            .and_then(|r| Region::new(r).ok())
            .and_then(|r| self.replica.region_gateways(&r))
            .and_then(|gateways| gateways.into_iter().next());
        let Some(addr) = gateway else {
            metrics::relay_dropped("unknown_edge");
            return;
        };
        span.record("to", "region");
        match self.forwarder(&addr).try_send(signal) {
            Ok(()) if receipt => {}
            Ok(()) => {
                metrics::relayed(RelayRoute::CrossRegion);
                metrics::cross_region_message(true);
            }
            Err(_) => metrics::relay_dropped("queue_full"),
        }
    }

    fn remember(&self, edge: &str, region: &str) {
        let mut map = self
            .remote_edges
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.get(edge).is_some_and(|r| r == region) {
            return;
        }
        if map.len() >= REMOTE_EDGES_MAX {
            map.clear();
        }
        map.insert(edge.to_owned(), region.to_owned());
    }

    /// The queue of the `Relay` stream to `addr`, opening the stream when there is none.
    fn forwarder(&self, addr: &str) -> mpsc::Sender<RelayedSignal> {
        let mut map = self
            .forwarders
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = map.get(addr).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(FORWARD_BUFFER);
        map.insert(addr.to_owned(), tx.clone());
        let stream = ForwardStream {
            addr: addr.to_owned(),
            clients: Arc::clone(&self.clients),
            secret: self.secret.clone(),
            forwarders: Arc::clone(&self.forwarders),
            tx: tx.clone(),
        };
        self.tasks.spawn(stream.run(rx, self.stop.clone()));
        tx
    }
}

/// One client-streaming `Relay` call to another replica, fed from a bounded queue.
struct ForwardStream {
    addr: String,
    clients: Arc<Clients>,
    secret: ClusterSecret,
    forwarders: Arc<Mutex<HashMap<String, mpsc::Sender<RelayedSignal>>>>,
    tx: mpsc::Sender<RelayedSignal>,
}

impl ForwardStream {
    async fn run(self, rx: mpsc::Receiver<RelayedSignal>, stop: CancellationToken) {
        let call = async {
            let mut client = self.clients.get(&self.addr).map_err(|e| e.to_string())?;
            let mut request = tonic::Request::new(ReceiverStream::new(rx));
            self.secret.attach(&mut request);
            client.relay(request).await.map_err(|e| e.to_string())
        };
        tokio::select! {
            () = stop.cancelled() => {}
            result = call => if let Err(e) = result {
                tracing::warn!(addr = %self.addr, error = %e, "relay stream to a replica ended");
            },
        }
        // Signals still queued are lost with the stream; the next signal opens a new one.
        let mut map = self
            .forwarders
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map
            .get(&self.addr)
            .is_some_and(|tx| tx.same_channel(&self.tx))
        {
            map.remove(&self.addr);
        }
    }
}
