//! The other regions' replicas that follow this replica's group (their `Federate` streams):
//! owned by the fan-out task, which feeds them in apply order, so that the list of homes a
//! stream starts with and the changes after it never miss or repeat a room.

use tokio::sync::mpsc;
use tonic::Status;

use super::super::proto::{self, FederateMessage, federate_message};
use crate::metrics;
use crate::registry::{EdgeId, Region, RoomId};

/// Messages queued for one following replica before its stream counts as too slow and is
/// closed (it opens a new one and starts again from the list of homes).
pub const FEDERATE_BUFFER: usize = 16 * 1024;

pub type FederateItem = Result<FederateMessage, Status>;

/// A stream opened by a replica of `region`.
pub struct Watcher {
    pub region: Region,
    pub tx: mpsc::Sender<FederateItem>,
}

#[derive(Default)]
pub struct Watchers {
    list: Vec<Watcher>,
}

fn message(msg: federate_message::Msg) -> FederateMessage {
    FederateMessage { msg: Some(msg) }
}

impl Watchers {
    /// Starts `watcher` with every room homed here (`homes`: room and creation time).
    pub fn add(&mut self, watcher: Watcher, homes: Vec<(RoomId, u64)>) {
        let homes = proto::Homes {
            homes: homes
                .into_iter()
                .map(|(room, created_at_ms)| proto::Home {
                    room: room.to_string(),
                    created_at_ms,
                })
                .collect(),
        };
        if watcher
            .tx
            .try_send(Ok(message(federate_message::Msg::Homes(homes))))
            .is_ok()
        {
            tracing::info!(region = %watcher.region, "a region follows this replica");
            self.list.push(watcher);
            metrics::federate_streams(self.list.len());
        }
    }

    /// A room event for `edge`, an edge of `region`.
    pub fn event(&mut self, region: &Region, edge: &EdgeId, event: proto::RoomEvent) {
        let msg = message(federate_message::Msg::Event(proto::EdgeEvent {
            edge_id: edge.to_string(),
            event: Some(event),
        }));
        self.send(|w| &w.region == region, &msg);
    }

    pub fn created(&mut self, room: &RoomId, created_at_ms: u64) {
        let msg = message(federate_message::Msg::Created(proto::Home {
            room: room.to_string(),
            created_at_ms,
        }));
        self.send(|_| true, &msg);
    }

    pub fn emptied(&mut self, room: &RoomId) {
        let msg = message(federate_message::Msg::Emptied(room.to_string()));
        self.send(|_| true, &msg);
    }

    /// Closes every stream (this replica lost track of its events: the followers start again).
    pub fn clear(&mut self) {
        self.list.clear();
        metrics::federate_streams(0);
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn send(&mut self, to: impl Fn(&Watcher) -> bool, msg: &FederateMessage) {
        let before = self.list.len();
        self.list.retain(|w| {
            if !to(w) {
                return !w.tx.is_closed();
            }
            match w.tx.try_send(Ok(msg.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(region = %w.region, "a following region reads too slowly: its stream is closed");
                    metrics::federate_dropped();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if self.list.len() != before {
            metrics::federate_streams(self.list.len());
        }
    }
}
