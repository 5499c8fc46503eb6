//! The edge's background tasks besides the registry follower: session upkeep in the region
//! backend, and the lease renewal of an edge running with the embedded registry. Both stop
//! when the edge reaches [`Stage::Stopped`].

use std::sync::Arc;
use std::time::Duration;

use heliograph_coordinator::Replica;
use heliograph_coordinator::registry::{Command, Outcome, Rejection};

use crate::metrics::RelayPath;
use crate::rooms::RoomIndex;
use crate::router::Router;
use crate::shutdown::{Shutdown, Stage};

/// How often the session keeper looks at the bus's health.
const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Keeps this edge's sessions alive in the store (at the backend's upkeep interval, and at
/// once when Redis comes back, since a restarted Redis has lost them) and delivers what
/// reached their pending buffers; in memory, forgets sessions detached for too long.
pub(crate) async fn keep_sessions(
    router: Arc<Router>,
    index: Arc<RoomIndex>,
    shutdown: Arc<Shutdown>,
) {
    let region = router.region().clone();
    let every = region.upkeep_interval();
    let mut tick = tokio::time::interval(SESSION_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_refresh = tokio::time::Instant::now();
    let mut bus_was_up = region.is_up();
    let mut failed = false;
    let stopped = shutdown.reached(Stage::Stopped);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let (published, watched) = index.contact_counts();
        router.metrics().contact_published.set(published as f64);
        router.metrics().contact_watches.set(watched as f64);
        let bus_up = region.is_up();
        let came_back = bus_up && !bus_was_up;
        bus_was_up = bus_up;
        // A failed refresh is retried at the next check.
        if !came_back && !failed && last_refresh.elapsed() < every {
            continue;
        }
        last_refresh = tokio::time::Instant::now();
        let upkeep = region.upkeep(|| index.local_sessions()).await;
        failed = upkeep.is_err();
        match upkeep {
            Ok(found) => {
                for e in found.arrived {
                    router.deliver_inbound(e, RelayPath::Region);
                }
                for e in found.expired {
                    router.expire(e);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not refresh sessions"),
        }
    }
}

/// Renews the edge's lease at a third of its length, so two renewals may fail in a row. (A
/// remote registry renews the lease in its own session with the replica.) A lease that ran out
/// anyway (the process was starved for longer than the lease) is taken again by registering
/// once more with the same incarnation: the registry has let the edge's peers go meanwhile, as
/// for any edge that went silent, and the edge goes on serving instead of refusing every join.
pub(crate) async fn renew_lease(registry: Replica, registration: Command, shutdown: Arc<Shutdown>) {
    let Command::RegisterEdge {
        edge,
        incarnation,
        lease_ms,
        ..
    } = registration.clone()
    else {
        tracing::error!("renew_lease needs the edge's registration");
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(lease_ms / 3));
    tick.tick().await;
    let stopped = shutdown.reached(Stage::Stopped);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
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
            Ok(Outcome::Rejected(Rejection::UnknownEdge)) => {
                tracing::warn!(
                    "this edge's lease ran out before it was renewed; registering again"
                );
                match registry.execute(registration.clone()).await {
                    Ok(Outcome::Done) => {}
                    Ok(other) => {
                        tracing::error!(?other, "the registry refused to register this edge again")
                    }
                    Err(e) => tracing::warn!(error = %e, "registering this edge again failed"),
                }
            }
            Ok(other) => tracing::error!(?other, "the registry refused to renew this edge's lease"),
            Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use heliograph_coordinator::EmbeddedConfig;
    use heliograph_coordinator::registry::{EdgeId, Region};

    use super::*;

    /// The registry no longer knows the edge (its lease ran out and the sweep let it go while
    /// the process was starved): the next renewal registers it again.
    #[tokio::test]
    async fn a_lease_that_ran_out_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(EmbeddedConfig::new(dir.path().to_owned()))
            .await
            .unwrap();
        let edge = EdgeId::new("edge-1").unwrap();
        let registration = Command::RegisterEdge {
            edge: edge.clone(),
            region: Region::new("local").unwrap(),
            address: "127.0.0.1:1".into(),
            incarnation: 7,
            lease_ms: 300,
            resumable_sessions: false,
            replica: 0,
        };
        assert!(replica.edge(&edge).is_none(), "never registered: unknown");
        let shutdown = Arc::new(Shutdown::default());
        let renewing = tokio::spawn(renew_lease(
            replica.clone(),
            registration,
            Arc::clone(&shutdown),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while replica.edge(&edge).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not registered again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(replica.edge(&edge).unwrap().incarnation, 7);
        shutdown.advance(Stage::Stopped);
        renewing.await.unwrap();
        replica.shutdown().await;
    }
}
