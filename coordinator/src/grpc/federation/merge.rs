//! The same room name created in two regions before either heard of the other (a partition,
//! or two creations within one inter-region delay) ends as one room: the older creation's
//! (ties: the region whose name sorts first; see [`super::directory::loses_to`]).
//!
//! The losing group's leader moves its room into the winner's: it joins every member there
//! (as a member of its own edge and region, so nothing about signalling changes), then
//! commits [`Command::Rehome`], which drops the room here without `peer-left` and tells the
//! members' edges to re-read it from its new home. Members of the winning room see each
//! moved member join once; moved members see each winning member join once (their edges
//! announce only what the re-read adds). A member that joins the losing room during the
//! move makes the `Rehome` refuse, and the move starts again.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::super::proto;
use super::directory::loses_to;
use super::{Call, Federation};
use crate::metrics;
use crate::registry::{Command, Outcome, Region, RoomId};

/// How often the leader looks for rooms to move.
const ROUND: Duration = Duration::from_millis(200);
/// Rooms checked per round at most (the rest wait for the next).
const ROOMS_PER_ROUND: usize = 256;

/// Rooms that may have lost their name to another region (a claim arrived for a room this
/// group homes), for the leader to check.
#[derive(Default)]
pub struct Suspects {
    rooms: Mutex<BTreeSet<RoomId>>,
}

impl Suspects {
    pub fn add(&self, room: RoomId) {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(room);
    }

    fn take(&self, n: usize) -> Vec<RoomId> {
        let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        let mut taken = Vec::new();
        while taken.len() < n {
            let Some(room) = rooms.pop_first() else { break };
            taken.push(room);
        }
        taken
    }

    fn clear(&self) {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// Runs until `stop`: on the leader, moves every room that lost its name.
pub async fn run(federation: std::sync::Arc<Federation>, stop: CancellationToken) {
    let mut leading = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(ROUND) => {}
        }
        if !federation.replica.is_leader() {
            // A new leader checks every room once (it may have dropped claims meanwhile).
            leading = false;
            federation.suspects.clear();
            continue;
        }
        if !leading {
            leading = true;
            for (room, _) in federation.replica.homes() {
                federation.suspects.add(room);
            }
        }
        for room in federation.suspects.take(ROOMS_PER_ROUND) {
            if let Some(winner) = federation.loses(&room)
                && let Err(e) = federation.merge(&room, &winner).await
            {
                tracing::warn!(%room, %winner, error = %e, "could not move a room to the region that created it first; will retry");
                federation.suspects.add(room);
            }
        }
    }
}

impl Federation {
    /// The region `room` (homed here) must move to, if another region created it earlier.
    pub fn loses(&self, room: &RoomId) -> Option<Region> {
        let created = self.replica.created_at_ms(room)?;
        let (region, claim) = self.directory.winner(room)?;
        let mine = Region::new(self.replica.region()).ok()?;
        loses_to((created, &mine), (claim.created_at_ms, &region)).then_some(region)
    }

    async fn merge(&self, room: &RoomId, winner: &Region) -> Result<(), String> {
        let gateways = self
            .replica
            .region_gateways(winner)
            .ok_or_else(|| format!("no gateways known for {winner}"))?;
        let Some(view) = self.replica.room(room) else {
            return Ok(());
        };
        let listing = self.replica.listing(room);
        let join: Call<proto::JoinRequest, proto::JoinResponse> =
            |mut c, r| Box::pin(async move { c.join(r).await });
        for m in &view.members {
            let request = proto::JoinRequest {
                room: room.to_string(),
                peer_id: m.peer.to_string(),
                edge_id: m.edge.to_string(),
                meta_json: m.meta.clone(),
                max_members: 0,
                attempt: 0,
                deadline_ms: 0,
                edge_region: m.region.to_string(),
                // Changes nothing when the winner's room is there (it keeps its own flag);
                // re-creates this one's should the winner's have emptied meanwhile.
                public: listing.public,
                room_meta_json: listing.meta.clone().unwrap_or_default(),
            };
            let answer = self
                .call(winner, &gateways, request, "join", join)
                .await
                .map_err(|s| s.message().to_owned())?
                .into_inner();
            if answer.rejected != 0 {
                // (E.g. the peer is attached to another edge there: it resumed meanwhile.)
                return Err(format!(
                    "{} refused {}: {}",
                    winner, m.peer, answer.rejected
                ));
            }
        }
        let members = view.members.iter().map(|m| m.peer.clone()).collect();
        let outcome = self
            .replica
            .execute(Command::Rehome {
                room: room.clone(),
                to: winner.clone(),
                members,
            })
            .await
            .map_err(|e| e.to_string())?;
        match outcome {
            Outcome::Left { .. } => {
                metrics::homing_conflict();
                tracing::info!(%room, %winner, members = view.members.len(), "moved a room to the region that created it first");
                Ok(())
            }
            other => Err(format!("the move was refused: {other:?}")),
        }
    }
}
