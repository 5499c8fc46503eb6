//! Where a signal between edges goes from this replica: down the target edge's link when it
//! is attached here, else over one `Relay` stream to the replica it is attached to (from the
//! registry's edge record). Signals never take a second replica hop, and never touch Raft.
//! A signal for another region leaves through the sender's replica (its region's gateway) and
//! arrives at the target edge's replica: one inter-region hop, whichever replica leads Raft.

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
use crate::registry::EdgeId;
use crate::replica::Replica;
use crate::telemetry;
use crate::transport::ClusterSecret;

/// Signals queued for one other replica before new ones are dropped.
pub const FORWARD_BUFFER: usize = 4 * 1024;

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
        if !receipt && origin == Origin::Replica && signal.from_region != self.replica.region() {
            metrics::cross_region_message(false);
        }
        if self.links.is_linked(&to_edge) || origin == Origin::Replica {
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
            metrics::relay_dropped("unknown_edge");
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
