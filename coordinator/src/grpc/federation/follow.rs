//! This replica follows every other region it is federated with: one `Federate` stream per
//! region, to one of its gateways (the next one after a failure), re-opened until the
//! region is forgotten. What arrives feeds the [`Directory`] and the edges linked here.
//!
//! When a stream opens, every linked edge is told to resync: events of rooms homed there may
//! have been missed while it was closed, and the edges re-read their rooms (through this
//! replica, from the rooms' homes).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::super::leader::Clients;
use super::super::links::Links;
use super::super::proto::{self, ReplicaToEdge, federate_message, replica_to_edge};
use super::directory::{Claim, Directory};
use super::merge::Suspects;
use crate::metrics;
use crate::registry::{EdgeId, Region, RoomId};
use crate::replica::Replica;
use crate::transport::ClusterSecret;

/// How often the set of federated regions is read again.
const REGIONS_POLL: Duration = Duration::from_millis(500);
/// How long opening a stream may take before the next gateway is tried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Whether this replica's stream to each region is open now (for `status`).
#[derive(Default)]
pub struct Connected {
    regions: Mutex<BTreeMap<Region, bool>>,
}

impl Connected {
    fn set(&self, region: &Region, up: bool) {
        let mut map = self.regions.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(region.clone(), up);
        metrics::regions_followed(map.values().filter(|up| **up).count());
    }

    fn forget(&self, region: &Region) {
        let mut map = self.regions.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(region);
        metrics::regions_followed(map.values().filter(|up| **up).count());
    }

    pub fn is_connected(&self, region: &Region) -> bool {
        let map = self.regions.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(region).copied().unwrap_or(false)
    }
}

/// What every per-region task shares.
#[derive(Clone)]
pub struct Follow {
    pub replica: Replica,
    pub directory: Arc<Directory>,
    pub links: Arc<Links>,
    pub clients: Arc<Clients>,
    pub secret: ClusterSecret,
    pub connected: Arc<Connected>,
    pub suspects: Arc<Suspects>,
}

/// Keeps one following task per federated region until `stop`.
pub async fn run(follow: Follow, tasks: TaskTracker, stop: CancellationToken) {
    let mut running: HashMap<Region, (Vec<String>, CancellationToken)> = HashMap::new();
    loop {
        let wanted = follow.replica.regions();
        running.retain(|region, (gateways, token)| {
            let keep = wanted.get(region) == Some(gateways);
            if !keep {
                token.cancel();
                follow.directory.forget(region);
                follow.connected.forget(region);
            }
            keep
        });
        for (region, gateways) in wanted {
            if region.as_str() == follow.replica.region() || running.contains_key(&region) {
                continue;
            }
            let token = stop.child_token();
            tasks.spawn(follow_region(
                follow.clone(),
                region.clone(),
                gateways.clone(),
                token.clone(),
            ));
            running.insert(region, (gateways, token));
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REGIONS_POLL) => {}
        }
    }
}

async fn follow_region(
    follow: Follow,
    region: Region,
    gateways: Vec<String>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut next = 0usize;
    while !stop.is_cancelled() {
        let Some(addr) = gateways.get(next % gateways.len().max(1)) else {
            return;
        };
        next += 1;
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(OPEN_TIMEOUT, open(&follow, addr)) => r,
        };
        match opened {
            Ok(Ok(stream)) => {
                follow.connected.set(&region, true);
                tracing::info!(%region, %addr, "following a region");
                let read = read(&follow, &region, stream, &stop).await;
                follow.connected.set(&region, false);
                if let Err(e) = read {
                    tracing::warn!(%region, %addr, error = %e, "region stream ended");
                }
                backoff = BACKOFF_MIN;
            }
            Ok(Err(e)) => tracing::debug!(%region, %addr, error = %e, "region unreachable"),
            Err(_) => tracing::debug!(%region, %addr, "region did not answer in time"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn open(
    follow: &Follow,
    addr: &str,
) -> Result<tonic::Streaming<proto::FederateMessage>, String> {
    let mut client = follow.clients.get(addr).map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(proto::FederateRequest {
        region: follow.replica.region().to_owned(),
        node: follow.replica.node_id(),
    });
    follow.secret.attach(&mut request);
    client
        .federate(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| e.to_string())
}

async fn read(
    follow: &Follow,
    region: &Region,
    mut stream: tonic::Streaming<proto::FederateMessage>,
    stop: &CancellationToken,
) -> Result<(), String> {
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            m = stream.message() => m.map_err(|e| e.to_string())?,
        };
        let Some(proto::FederateMessage { msg: Some(msg) }) = next else {
            return Ok(());
        };
        match msg {
            federate_message::Msg::Homes(homes) => {
                let homes: Vec<(RoomId, Claim)> = homes
                    .homes
                    .into_iter()
                    .filter_map(|h| {
                        let room = RoomId::new(h.room).ok()?;
                        let claim = Claim {
                            created_at_ms: h.created_at_ms,
                        };
                        Some((room, claim))
                    })
                    .collect();
                for (room, _) in &homes {
                    if follow.replica.created_at_ms(room).is_some() {
                        follow.suspects.add(room.clone());
                    }
                }
                follow.directory.replace(region, homes);
                // Events may have been missed while no stream was open.
                for edge in follow.links.edges() {
                    follow.links.push(
                        &edge,
                        ReplicaToEdge {
                            msg: Some(replica_to_edge::Msg::Resync(proto::Resync {})),
                        },
                    );
                }
            }
            federate_message::Msg::Created(h) => {
                if let Ok(room) = RoomId::new(h.room) {
                    let claim = Claim {
                        created_at_ms: h.created_at_ms,
                    };
                    if follow.replica.created_at_ms(&room).is_some() {
                        follow.suspects.add(room.clone());
                    }
                    follow.directory.created(region, room, claim);
                }
            }
            federate_message::Msg::Emptied(room) => {
                if let Ok(room) = RoomId::new(room) {
                    follow.directory.emptied(region, &room);
                }
            }
            federate_message::Msg::Event(e) => {
                let (Ok(edge), Some(event)) = (EdgeId::new(e.edge_id), e.event) else {
                    continue;
                };
                // A room this group homes too (created on both sides before either knew):
                // until this group's leader has moved it there, the edges follow this
                // group's room only, so that the two rooms' events never mix. The move tells
                // them to re-read the room from its home.
                if RoomId::new(event.room.clone())
                    .is_ok_and(|room| follow.replica.created_at_ms(&room).is_some())
                {
                    continue;
                }
                // Not linked here: the edge is linked to another replica of this region, which
                // follows the same region and gets the same event.
                follow.links.push(
                    &edge,
                    ReplicaToEdge {
                        msg: Some(replica_to_edge::Msg::Event(event)),
                    },
                );
            }
        }
    }
}
