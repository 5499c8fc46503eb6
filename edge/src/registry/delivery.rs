//! Reliable relaying between edges through the coordinator.
//!
//! A signal for a peer on another edge crosses the sender edge's link, at most two replicas
//! and the target edge's link. Any of them can die with signals in flight (a replica killed
//! with signals queued on a link or a forward stream), and while the registry has no quorum
//! a replica may still route to one that is gone. So the edges keep their own end-to-end
//! channel, as TCP does over IP:
//!
//! - the sender numbers its signals per target edge and keeps each until the target
//!   acknowledges it ([`Outbound`]); what is not acknowledged after [`RETRANSMIT_AFTER`] is
//!   sent again, and everything unacknowledged goes first on a new link;
//! - the receiver delivers each channel in number order, exactly once ([`Inbound`]): a copy
//!   is dropped, a signal that overtook a lost one waits for it, and it acknowledges what it
//!   delivered in one cumulative receipt per channel every [`RECEIPT_EVERY`].
//!
//! Both sides are bounded: the sender refuses new signals for a target with
//! [`MAX_UNACKED_PER_TARGET`] unacknowledged (the sender is told, as for a congested link)
//! and gives up on a signal after [`GIVE_UP_AFTER`] (the target edge is gone: its peers
//! resume elsewhere or expire); the receiver holds at most [`MAX_EARLY_PER_CHANNEL`] signals
//! ahead of a gap and stops waiting for a gap after [`GAP_WAIT`].
//!
//! This module is the pure state; `remote` drives it from the link and its timers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use heliograph_coordinator::grpc::proto::RelayedSignal;

/// How long a signal may stay unacknowledged before it is sent again. Above the slowest
/// round trip between regions plus [`RECEIPT_EVERY`], so that a healthy path does not resend.
pub const RETRANSMIT_AFTER: Duration = Duration::from_millis(1_000);
/// How often the receiver acknowledges, and the sender checks what to send again.
pub const RECEIPT_EVERY: Duration = Duration::from_millis(25);
/// How long a sender keeps trying one signal.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(15);
/// Unacknowledged signals kept per target edge; past it new signals to that edge are refused.
pub const MAX_UNACKED_PER_TARGET: usize = 4 * 1024;
/// Signals held behind a gap per channel; past it the gap is skipped.
pub const MAX_EARLY_PER_CHANNEL: usize = 1024;
/// How long the receiver waits for a missing signal before delivering what came after it.
/// Longer than a retransmission plus a move to another replica.
pub const GAP_WAIT: Duration = Duration::from_secs(5);
/// A channel from an edge process not heard from for this long is forgotten by the receiver.
const IDLE_CHANNEL: Duration = Duration::from_secs(120);
/// A sender forgets an idle channel (and numbers from 1 again) only after the receiver has
/// forgotten it too.
const IDLE_OUT_CHANNEL: Duration = Duration::from_secs(600);

/// A signal was refused: too many are unacknowledged for its target edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog;

struct Unacked {
    signal: RelayedSignal,
    first_sent: Instant,
    last_sent: Instant,
}

struct OutChannel {
    next_seq: u64,
    unacked: VecDeque<Unacked>,
    used: Instant,
}

/// The sender's side: every channel from this edge process.
pub struct Outbound {
    edge: String,
    incarnation: u64,
    channels: HashMap<String, OutChannel>,
}

/// What a periodic check of the sender's side found.
#[derive(Default)]
pub struct Due {
    /// Signals to send again, in number order per channel.
    pub resend: Vec<RelayedSignal>,
    /// Signals given up on.
    pub given_up: usize,
}

impl Outbound {
    pub fn new(edge: String, incarnation: u64) -> Self {
        Self {
            edge,
            incarnation,
            channels: HashMap::new(),
        }
    }

    /// Numbers `signal` on its target's channel and keeps a copy until it is acknowledged;
    /// returns what to send.
    pub fn send(
        &mut self,
        mut signal: RelayedSignal,
        now: Instant,
    ) -> Result<RelayedSignal, Backlog> {
        let channel = self
            .channels
            .entry(signal.to_edge.clone())
            .or_insert_with(|| OutChannel {
                next_seq: 0,
                unacked: VecDeque::new(),
                used: now,
            });
        channel.used = now;
        if channel.unacked.len() >= MAX_UNACKED_PER_TARGET {
            return Err(Backlog);
        }
        channel.next_seq += 1;
        signal.from_edge.clone_from(&self.edge);
        signal.from_incarnation = self.incarnation;
        signal.seq = channel.next_seq;
        signal.base = channel.unacked.front().map_or(signal.seq, |u| u.signal.seq);
        channel.unacked.push_back(Unacked {
            signal: signal.clone(),
            first_sent: now,
            last_sent: now,
        });
        Ok(signal)
    }

    /// A receipt from `from_edge`: everything through `through` arrived.
    pub fn acknowledge(&mut self, from_edge: &str, incarnation: u64, through: u64) {
        if incarnation != self.incarnation {
            // For an earlier process of this edge.
            return;
        }
        let Some(channel) = self.channels.get_mut(from_edge) else {
            return;
        };
        while channel
            .unacked
            .front()
            .is_some_and(|u| u.signal.seq <= through)
        {
            channel.unacked.pop_front();
        }
    }

    /// Everything unacknowledged, in order, to send first on a new link.
    pub fn all(&mut self, now: Instant) -> Vec<RelayedSignal> {
        self.check(now, Duration::ZERO).resend
    }

    /// Signals unacknowledged for `after` since they were last sent; drops those older than
    /// [`GIVE_UP_AFTER`].
    pub fn check(&mut self, now: Instant, after: Duration) -> Due {
        let mut due = Due::default();
        for channel in self.channels.values_mut() {
            while channel
                .unacked
                .front()
                .is_some_and(|u| now.duration_since(u.first_sent) >= GIVE_UP_AFTER)
            {
                channel.unacked.pop_front();
                due.given_up += 1;
            }
            let base = channel.unacked.front().map(|u| u.signal.seq);
            for u in channel
                .unacked
                .iter_mut()
                .filter(|u| now.duration_since(u.last_sent) >= after)
            {
                u.last_sent = now;
                let mut signal = u.signal.clone();
                signal.base = base.unwrap_or(signal.seq);
                due.resend.push(signal);
            }
        }
        self.channels
            .retain(|_, c| !c.unacked.is_empty() || now.duration_since(c.used) < IDLE_OUT_CHANNEL);
        due
    }

    pub fn unacked(&self) -> usize {
        self.channels.values().map(|c| c.unacked.len()).sum()
    }
}

struct InChannel {
    /// Every signal numbered up to this one was delivered (or skipped).
    delivered: u64,
    /// Signals that arrived ahead of a missing one.
    early: BTreeMap<u64, RelayedSignal>,
    /// Since when the first missing signal has been missing.
    gap_since: Option<Instant>,
    /// A receipt is owed.
    owed: bool,
    heard: Instant,
}

/// The receiver's side: every channel into this edge process.
#[derive(Default)]
pub struct Inbound {
    channels: HashMap<(String, u64), InChannel>,
}

/// What became of one arriving signal.
#[derive(Default)]
pub struct Arrival {
    /// Signals to deliver now, in order.
    pub deliver: Vec<RelayedSignal>,
    /// The signal had arrived already.
    pub duplicate: bool,
    /// Missing signals stopped being waited for (not those below the sender's `base`).
    pub skipped: u64,
}

impl Inbound {
    /// A numbered signal arrived (unnumbered ones are delivered as they come, by the caller).
    pub fn receive(&mut self, signal: RelayedSignal, now: Instant) -> Arrival {
        let key = (signal.from_edge.clone(), signal.from_incarnation);
        let channel = self.channels.entry(key).or_insert_with(|| InChannel {
            delivered: 0,
            early: BTreeMap::new(),
            gap_since: None,
            owed: false,
            heard: now,
        });
        channel.heard = now;
        channel.owed = true;
        let mut arrival = Arrival::default();
        // The sender no longer keeps anything below `base`: it was delivered here (to an
        // earlier process of this edge, say) or given up; do not wait for it.
        if signal.base > 0 && channel.delivered + 1 < signal.base {
            skip_to(channel, signal.base - 1, &mut arrival.deliver);
        }
        if signal.seq <= channel.delivered || channel.early.contains_key(&signal.seq) {
            arrival.duplicate = true;
            return arrival;
        }
        if signal.seq == channel.delivered + 1 {
            channel.delivered = signal.seq;
            arrival.deliver.push(signal);
            drain_ready(channel, &mut arrival.deliver);
        } else {
            channel.early.insert(signal.seq, signal);
            channel.gap_since.get_or_insert(now);
            if channel.early.len() > MAX_EARLY_PER_CHANNEL {
                let first = channel.early.keys().next().copied().unwrap_or(0);
                arrival.skipped += skip_to(channel, first - 1, &mut arrival.deliver);
            }
        }
        if channel.early.is_empty() {
            channel.gap_since = None;
        }
        arrival
    }

    /// Gaps waited on for [`GAP_WAIT`] are skipped: what came after them is delivered.
    pub fn expire_gaps(&mut self, now: Instant) -> Arrival {
        let mut arrival = Arrival::default();
        for channel in self.channels.values_mut() {
            if channel
                .gap_since
                .is_some_and(|since| now.duration_since(since) >= GAP_WAIT)
            {
                let first = channel.early.keys().next().copied().unwrap_or(0);
                arrival.skipped += skip_to(channel, first.saturating_sub(1), &mut arrival.deliver);
                channel.gap_since = (!channel.early.is_empty()).then_some(now);
            }
        }
        self.channels
            .retain(|_, c| now.duration_since(c.heard) < IDLE_CHANNEL);
        arrival
    }

    /// Receipts owed since the last call: (sender edge, its incarnation, delivered through).
    pub fn receipts(&mut self) -> Vec<(String, u64, u64)> {
        self.channels
            .iter_mut()
            .filter_map(|((edge, incarnation), c)| {
                std::mem::take(&mut c.owed).then(|| (edge.clone(), *incarnation, c.delivered))
            })
            .collect()
    }
}

/// Marks everything through `through` delivered: the early signals up to it go out, the
/// missing ones are skipped. Returns how many were skipped.
fn skip_to(channel: &mut InChannel, through: u64, out: &mut Vec<RelayedSignal>) -> u64 {
    let mut skipped = 0;
    while channel.delivered < through {
        let next = channel.delivered + 1;
        match channel.early.remove(&next) {
            Some(signal) => out.push(signal),
            None => skipped += 1,
        }
        channel.delivered = next;
    }
    drain_ready(channel, out);
    if channel.early.is_empty() {
        channel.gap_since = None;
    }
    skipped
}

fn drain_ready(channel: &mut InChannel, out: &mut Vec<RelayedSignal>) {
    while let Some(signal) = channel.early.remove(&(channel.delivered + 1)) {
        channel.delivered += 1;
        out.push(signal);
    }
}

/// A receipt as the coordinator carries it: a signal with no peer and no frame.
pub fn receipt(
    to_edge: String,
    from_edge: String,
    incarnation: u64,
    through: u64,
) -> RelayedSignal {
    RelayedSignal {
        to_edge,
        from_edge,
        ack_through: through,
        acked_incarnation: incarnation,
        ..RelayedSignal::default()
    }
}

pub fn is_receipt(signal: &RelayedSignal) -> bool {
    signal.ack_through > 0 && signal.to_peer.is_empty()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn signal(to: &str, n: u8) -> RelayedSignal {
        RelayedSignal {
            to_edge: to.into(),
            to_peer: "p".into(),
            frame: vec![n],
            ..RelayedSignal::default()
        }
    }

    fn frames(signals: &[RelayedSignal]) -> Vec<u8> {
        signals.iter().map(|s| s.frame[0]).collect()
    }

    #[test]
    fn a_lost_signal_is_sent_again_and_delivered_in_order_once() {
        let t0 = Instant::now();
        let mut out = Outbound::new("a".into(), 7);
        let mut inb = Inbound::default();
        let sent: Vec<_> = (1..=3)
            .map(|n| out.send(signal("b", n), t0).unwrap())
            .collect();
        // The second is lost; the third overtakes nothing but must wait for it.
        assert_eq!(frames(&inb.receive(sent[0].clone(), t0).deliver), [1]);
        let a = inb.receive(sent[2].clone(), t0);
        assert!(a.deliver.is_empty());
        // Nothing is due before RETRANSMIT_AFTER.
        assert!(out.check(t0, RETRANSMIT_AFTER).resend.is_empty());
        let later = t0 + RETRANSMIT_AFTER;
        let due = out.check(later, RETRANSMIT_AFTER);
        assert_eq!(frames(&due.resend), [1, 2, 3], "none acknowledged yet");
        let mut delivered = Vec::new();
        let mut duplicates = 0;
        for s in due.resend {
            let a = inb.receive(s, later);
            duplicates += u32::from(a.duplicate);
            delivered.extend(a.deliver);
        }
        assert_eq!(frames(&delivered), [2, 3]);
        assert_eq!(duplicates, 2);
        // The receipt clears the sender.
        let receipts = inb.receipts();
        assert_eq!(receipts, [("a".to_owned(), 7, 3)]);
        out.acknowledge("b", 7, 3);
        assert_eq!(out.unacked(), 0);
        assert!(inb.receipts().is_empty(), "one receipt per progress");
    }

    #[test]
    fn a_receipt_for_an_earlier_process_is_ignored() {
        let t0 = Instant::now();
        let mut out = Outbound::new("a".into(), 8);
        out.send(signal("b", 1), t0).unwrap();
        out.acknowledge("b", 7, 1);
        assert_eq!(out.unacked(), 1);
    }

    #[test]
    fn a_new_sender_process_starts_a_new_channel() {
        let t0 = Instant::now();
        let mut inb = Inbound::default();
        let mut first = Outbound::new("a".into(), 1);
        let s = first.send(signal("b", 1), t0).unwrap();
        assert_eq!(frames(&inb.receive(s, t0).deliver), [1]);
        let mut second = Outbound::new("a".into(), 2);
        let s = second.send(signal("b", 2), t0).unwrap();
        assert_eq!(
            frames(&inb.receive(s, t0).deliver),
            [2],
            "not taken for a copy"
        );
    }

    #[test]
    fn the_receiver_does_not_wait_below_the_senders_base() {
        // A new receiver process (the target edge restarted) gets signal 5 first: the sender
        // keeps nothing below 5, so it is delivered at once.
        let t0 = Instant::now();
        let mut out = Outbound::new("a".into(), 1);
        for n in 1..=4 {
            out.send(signal("b", n), t0).unwrap();
        }
        out.acknowledge("b", 1, 4);
        let s = out.send(signal("b", 5), t0).unwrap();
        assert_eq!(s.base, 5);
        let mut inb = Inbound::default();
        let a = inb.receive(s, t0);
        assert_eq!(frames(&a.deliver), [5]);
        assert_eq!(a.skipped, 0, "nothing was lost");
    }

    #[test]
    fn a_gap_is_skipped_after_the_wait() {
        let t0 = Instant::now();
        let mut out = Outbound::new("a".into(), 1);
        let sent: Vec<_> = (1..=3)
            .map(|n| out.send(signal("b", n), t0).unwrap())
            .collect();
        let mut inb = Inbound::default();
        inb.receive(sent[0].clone(), t0);
        inb.receive(sent[2].clone(), t0);
        assert!(inb.expire_gaps(t0 + GAP_WAIT / 2).deliver.is_empty());
        let a = inb.expire_gaps(t0 + GAP_WAIT);
        assert_eq!((frames(&a.deliver), a.skipped), (vec![3], 1));
        // The lost one, arriving at last, is a copy now.
        assert!(inb.receive(sent[1].clone(), t0 + GAP_WAIT).duplicate);
    }

    #[test]
    fn the_sender_is_bounded_and_gives_up() {
        let t0 = Instant::now();
        let mut out = Outbound::new("a".into(), 1);
        for _ in 0..MAX_UNACKED_PER_TARGET {
            out.send(signal("b", 0), t0).unwrap();
        }
        assert_eq!(out.send(signal("b", 0), t0).unwrap_err(), Backlog);
        assert!(out.send(signal("c", 0), t0).is_ok(), "per target");
        let due = out.check(t0 + GIVE_UP_AFTER, RETRANSMIT_AFTER);
        assert_eq!(due.given_up, MAX_UNACKED_PER_TARGET + 1);
        assert_eq!(out.unacked(), 0);
    }

    #[test]
    fn receipts_are_told_apart_from_signals() {
        assert!(is_receipt(&receipt("a".into(), "b".into(), 1, 3)));
        assert!(!is_receipt(&signal("a", 1)));
    }
}
