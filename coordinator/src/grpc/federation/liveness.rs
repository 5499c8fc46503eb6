//! Members of this group's rooms whose edges belong to other regions' groups: their edges'
//! leases are kept there, so this group's leader asks those regions about them once a
//! second, and applies the same grace rules as to its own edges. A peer on an edge that is
//! down, or whose region has been unreachable for [`REGION_LEASE`], is detached (removed
//! after the grace period unless the edge comes back, which attaches it again); a peer on an
//! edge its region no longer knows is removed at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::super::proto;
use super::{Call, Federation};
use crate::registry::{Command, EdgeId, Region};

/// How often the leader asks.
const ROUND: Duration = Duration::from_secs(1);
/// How long a region may stay unreachable before its members here are detached.
pub const REGION_LEASE: Duration = Duration::from_secs(5);

/// Runs until `stop`.
pub async fn run(federation: Arc<Federation>, stop: CancellationToken) {
    // When each region last answered (reset when leadership is gained).
    let mut answered: HashMap<Region, Instant> = HashMap::new();
    let mut leading = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(ROUND) => {}
        }
        if !federation.replica.is_leader() {
            leading = false;
            continue;
        }
        if !leading {
            leading = true;
            answered.clear();
        }
        let mut alive = Vec::new();
        let mut down = Vec::new();
        let mut gone = Vec::new();
        for (region, edges) in federation.replica.remote_edges() {
            let last = *answered.entry(region.clone()).or_insert_with(Instant::now);
            match federation.edge_states(&region, edges.keys()).await {
                Ok(states) => {
                    answered.insert(region.clone(), Instant::now());
                    for (edge, (any_attached, any_remotely_detached)) in edges {
                        match states.get(&edge) {
                            Some(true) if any_remotely_detached => alive.push(edge),
                            Some(true) => {}
                            Some(false) if any_attached => down.push(edge),
                            Some(false) => {}
                            None => gone.push(edge),
                        }
                    }
                }
                Err(e) if last.elapsed() >= REGION_LEASE => {
                    tracing::warn!(%region, error = %e, "region unreachable: its members here are detached");
                    down.extend(edges.into_iter().filter(|(_, (a, _))| *a).map(|(e, _)| e));
                }
                Err(e) => tracing::debug!(%region, error = %e, "region did not answer"),
            }
        }
        if alive.is_empty() && down.is_empty() && gone.is_empty() {
            continue;
        }
        let command = Command::RemoteEdges { alive, down, gone };
        if let Err(e) = federation.replica.execute(command).await {
            tracing::warn!(error = %e, "could not record the state of other regions' edges");
        }
    }
}

impl Federation {
    /// Asks `region` whether `edges` are alive: `Some(alive)` per edge it knows.
    async fn edge_states(
        &self,
        region: &Region,
        edges: impl Iterator<Item = &EdgeId>,
    ) -> Result<HashMap<EdgeId, bool>, String> {
        let gateways = self
            .replica
            .region_gateways(region)
            .ok_or_else(|| format!("no gateways known for {region}"))?;
        let request = proto::EdgeStatesRequest {
            edge_ids: edges.map(ToString::to_string).collect(),
        };
        let call: Call<proto::EdgeStatesRequest, proto::EdgeStatesResponse> =
            |mut c, r| Box::pin(async move { c.edge_states(r).await });
        let answer = self
            .call(region, &gateways, request, "edge_states", call)
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner();
        Ok(answer
            .states
            .into_iter()
            .filter(|s| s.known)
            .filter_map(|s| Some((EdgeId::new(s.edge_id).ok()?, s.alive)))
            .collect())
    }
}
