//! The in-memory bus: edges of one process hand signals to each other directly.
//!
//! Every edge of the process joins one hub under its id; a signal for an edge that has not
//! joined (it runs in another process) is given back to the sender, which uses the
//! coordinator path instead.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use heliograph_coordinator::registry::EdgeId;

use crate::metrics::{EdgeMetrics, RoutingPath};
use crate::region::hooks::Hook;
use crate::signal::Envelope;

#[derive(Default)]
pub struct LocalHub {
    edges: RwLock<HashMap<EdgeId, Hook>>,
}

impl LocalHub {
    /// The hub shared by every edge of this process.
    pub fn global() -> Arc<LocalHub> {
        static HUB: OnceLock<Arc<LocalHub>> = OnceLock::new();
        Arc::clone(HUB.get_or_init(Arc::default))
    }
}

/// One edge's membership of a [`LocalHub`].
pub struct LocalBus {
    hub: Arc<LocalHub>,
    me: EdgeId,
    metrics: Arc<EdgeMetrics>,
}

impl LocalBus {
    /// Joins `hub` as `me`; signals for `me` go to `inbound`.
    pub fn join(
        hub: Arc<LocalHub>,
        me: EdgeId,
        inbound: Hook,
        metrics: Arc<EdgeMetrics>,
    ) -> Arc<Self> {
        hub.edges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(me.clone(), inbound);
        Arc::new(Self { hub, me, metrics })
    }

    pub fn publish(&self, envelope: Envelope) -> Result<(), Box<Envelope>> {
        let target = self
            .hub
            .edges
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&envelope.to_edge)
            .cloned();
        match target {
            Some(inbound) => {
                self.metrics.routed(RoutingPath::Region);
                inbound(envelope);
                Ok(())
            }
            None => Err(Box::new(envelope)),
        }
    }

    /// Leaves the hub: signals for this edge go the coordinator path from now on.
    pub fn close(&self) {
        self.hub
            .edges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.me);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use super::*;

    fn envelope(to: &EdgeId) -> Envelope {
        Envelope {
            to_edge: to.clone(),
            to_peer: "p".into(),
            room: "r".into(),
            frame: "{}".into(),
            sent_at_us: 1,
            from_region: "eu".into(),
            from_peer: String::new(),
            reference: String::new(),
        }
    }

    #[test]
    fn signals_reach_edges_of_the_hub_and_come_back_for_others() {
        let hub = Arc::new(LocalHub::default());
        let metrics = Arc::new(EdgeMetrics::new());
        let got = Arc::new(Mutex::new(Vec::new()));
        let a = EdgeId::new("a").unwrap();
        let b = EdgeId::new("b").unwrap();
        let sink = Arc::clone(&got);
        let bus_a = LocalBus::join(
            Arc::clone(&hub),
            a.clone(),
            Arc::new(|_| {}),
            Arc::clone(&metrics),
        );
        let bus_b = LocalBus::join(
            Arc::clone(&hub),
            b.clone(),
            Arc::new(move |e| sink.lock().unwrap().push(e)),
            metrics,
        );
        assert_eq!(bus_a.publish(envelope(&b)), Ok(()));
        assert_eq!(got.lock().unwrap().as_slice(), [envelope(&b)]);
        let elsewhere = EdgeId::new("c").unwrap();
        assert_eq!(
            bus_a.publish(envelope(&elsewhere)),
            Err(Box::new(envelope(&elsewhere)))
        );
        bus_b.close();
        assert_eq!(bus_a.publish(envelope(&b)), Err(Box::new(envelope(&b))));
    }
}
