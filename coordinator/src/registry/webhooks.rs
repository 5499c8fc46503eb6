//! The webhook outbox: what the registry's changes owe the configured webhook endpoints.
//!
//! It lives in the replicated state, so it is produced once for the whole cluster (by the
//! apply of the command that made the change, identical on every replica) and survives a
//! restart or a leader change: whichever replica leads delivers what is still waiting.
//!
//! Invariants:
//! - Record ids increase by one per record, in apply order, and are never reused (the counter
//!   is part of the state), so receivers de-duplicate by id.
//! - A record waits for the endpoints configured when it was made; it leaves the outbox when
//!   every one of them has acknowledged it (delivered or given up on).
//! - The outbox holds at most `capacity` records; a new record pushes out the oldest one
//!   (counted in `dropped`): new events matter more than ones a receiver has not taken for a
//!   long time, and the state must stay bounded whatever a receiver does.

use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::event::LeaveReason;
use super::ids::{EdgeId, PeerId, Region, RoomId};

/// What happened, as a webhook tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookEvent {
    /// A room got its first member.
    RoomStarted { room: RoomId },
    /// A room's last member left.
    RoomFinished { room: RoomId },
    PeerJoined {
        room: RoomId,
        peer: PeerId,
        edge: EdgeId,
        region: Region,
        meta: String,
    },
    PeerLeft {
        room: RoomId,
        peer: PeerId,
        edge: EdgeId,
        reason: LeaveReason,
    },
}

impl WebhookEvent {
    /// The event's name in webhook bodies (`event` field).
    pub fn name(&self) -> &'static str {
        match self {
            Self::RoomStarted { .. } => "room_started",
            Self::RoomFinished { .. } => "room_finished",
            Self::PeerJoined { .. } => "peer_joined",
            Self::PeerLeft { .. } => "peer_left",
        }
    }
}

/// One event waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub id: u64,
    /// The apply time of the command that caused it (leader's clock, ms since the epoch).
    pub at_ms: u64,
    pub event: WebhookEvent,
    /// The endpoints (by name) that have not acknowledged it yet.
    pub pending: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookOutbox {
    /// Endpoint names each new record waits for; empty: nothing is recorded.
    endpoints: Vec<String>,
    capacity: u32,
    next_id: u64,
    records: VecDeque<WebhookRecord>,
    /// Records pushed out by newer ones before every endpoint had them.
    dropped: u64,
}

impl WebhookOutbox {
    pub fn configure(&mut self, endpoints: &[String], capacity: u32) {
        let mut names: Vec<String> = endpoints.to_vec();
        names.sort();
        names.dedup();
        self.endpoints = if capacity == 0 { Vec::new() } else { names };
        self.capacity = capacity;
        let keep: BTreeSet<&String> = self.endpoints.iter().collect();
        // Records no longer wait for endpoints that were removed.
        for r in &mut self.records {
            r.pending.retain(|e| keep.contains(e));
        }
        self.records.retain(|r| !r.pending.is_empty());
        self.trim();
    }

    /// Whether `endpoints` and `capacity` are what is configured already.
    pub fn is_configured(&self, endpoints: &[String], capacity: u32) -> bool {
        let mut names: Vec<String> = endpoints.to_vec();
        names.sort();
        names.dedup();
        if capacity == 0 {
            names.clear();
        }
        self.capacity == capacity && self.endpoints == names
    }

    pub fn record(&mut self, at_ms: u64, event: WebhookEvent) {
        if self.endpoints.is_empty() || self.capacity == 0 {
            return;
        }
        self.next_id += 1;
        self.records.push_back(WebhookRecord {
            id: self.next_id,
            at_ms,
            event,
            pending: self.endpoints.iter().cloned().collect(),
        });
        self.trim();
    }

    pub fn ack(&mut self, endpoint: &str, ids: &[u64]) {
        let ids: BTreeSet<u64> = ids.iter().copied().collect();
        for r in self.records.iter_mut().filter(|r| ids.contains(&r.id)) {
            r.pending.remove(endpoint);
        }
        self.records.retain(|r| !r.pending.is_empty());
    }

    fn trim(&mut self) {
        let capacity = self.capacity as usize;
        while self.records.len() > capacity {
            self.records.pop_front();
            self.dropped += 1;
        }
    }

    /// Up to `limit` records still waiting for `endpoint`, oldest first, whose id is above
    /// `after`.
    pub fn pending_for(&self, endpoint: &str, after: u64, limit: usize) -> Vec<WebhookRecord> {
        self.records
            .iter()
            .filter(|r| r.id > after && r.pending.contains(endpoint))
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(room: &str) -> WebhookEvent {
        WebhookEvent::RoomStarted {
            room: RoomId::new(room).unwrap(),
        }
    }

    #[test]
    fn records_wait_for_every_endpoint_and_the_oldest_is_dropped_when_full() {
        let mut o = WebhookOutbox::default();
        o.record(1, started("nobody-listens"));
        assert!(o.is_empty(), "nothing is recorded without endpoints");
        o.configure(&["b".into(), "a".into()], 2);
        for (at, room) in [(1, "r1"), (2, "r2"), (3, "r3")] {
            o.record(at, started(room));
        }
        assert_eq!((o.len(), o.dropped()), (2, 1));
        let ids: Vec<u64> = o.pending_for("a", 0, 10).iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![2, 3]);
        o.ack("a", &[2, 3]);
        assert!(o.pending_for("a", 0, 10).is_empty());
        assert_eq!(o.len(), 2, "b has not acknowledged them");
        o.ack("b", &[2]);
        assert_eq!(o.pending_for("b", 0, 10)[0].id, 3);
        // Removing an endpoint releases what waited only for it.
        o.configure(&["a".into()], 2);
        assert!(o.is_empty());
        assert!(o.is_configured(&["a".into()], 2));
        o.configure(&["a".into()], 0);
        o.record(9, started("off"));
        assert!(o.is_empty());
    }
}
