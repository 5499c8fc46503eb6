//! Sequence numbers of one session's frames, and the replay window of the last ones sent.

use std::collections::VecDeque;

use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Numbers every frame a session writes, and keeps the last `capacity` so they can be
/// replayed after the socket drops.
#[derive(Debug)]
pub struct Sequencer {
    last: u64,
    capacity: usize,
    /// Each kept frame's `seq` and length, oldest first.
    frames: VecDeque<(u64, usize)>,
    /// The kept frames' bytes end to end, in the same order, as they were before they were
    /// numbered (numbered again only when the window is stored, which is rare). One ring per
    /// session rather than one allocation per frame: a client that never acknowledges keeps
    /// `capacity` frames, and over many sessions they are out of the CPU's caches; a frame
    /// kept in its own allocation cost a cache miss to allocate (the allocator reads its list
    /// of free blocks from the block it hands out, last used a whole window earlier) and
    /// another to free, and the frame written to the socket came from that cold memory too.
    /// Copied into the ring, the frame and its numbered copy are freed at once, and the
    /// allocator keeps handing out the same few warm blocks (docs/BENCHMARKS.md, "Relay").
    bytes: VecDeque<u8>,
}

/// A ring this large that holds a quarter of it or less is made smaller: a window that once
/// held large frames does not keep their room for the session's life.
const RING_KEPT_BYTES: usize = 4096;

impl Sequencer {
    pub fn new(capacity: usize) -> Self {
        Self {
            last: 0,
            capacity,
            frames: VecDeque::new(),
            bytes: VecDeque::new(),
        }
    }

    /// The last `seq` handed out.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Stamps the next `seq` into a copy of `frame`, and keeps the frame in the window.
    pub fn stamp(&mut self, frame: &str) -> Utf8Bytes {
        self.last += 1;
        let stamped = Utf8Bytes::from(with_seq(frame, self.last));
        if self.capacity > 0 {
            if self.frames.len() == self.capacity {
                self.pop_front();
            }
            self.keep(self.last, frame);
        }
        stamped
    }

    /// Stamps the session's `welcome` (`seq` 1) without keeping it: a client that resumes
    /// holds the token the welcome carried, so it has read it (a resume takes a `last_seq`
    /// below 1 as 1), and every parked session would otherwise keep its largest frame.
    pub fn stamp_welcome(&mut self, frame: &str) -> Utf8Bytes {
        Utf8Bytes::from(self.stamp_unkept(frame))
    }

    /// The client has read every frame up to `ack`: they leave the window (a resume names a
    /// `last_seq` at least as high, so they can never be asked for again).
    pub fn acknowledge(&mut self, ack: u64) {
        while self.frames.front().is_some_and(|(s, _)| *s <= ack) {
            self.pop_front();
        }
    }

    /// Continues a resumed session: after `last`, with `window` (frames already stamped).
    pub fn resume_from(&mut self, last: u64, window: impl IntoIterator<Item = String>) {
        self.last = last;
        self.frames.clear();
        self.bytes.clear();
        for frame in window {
            if self.frames.len() == self.capacity {
                self.pop_front();
            }
            // Stored frames were stamped here: a frame without its `seq` cannot be replayed.
            if let Some((s, frame)) = without_seq(&frame) {
                self.keep(s, &frame);
            }
        }
    }

    /// Numbers a frame that is never written (it was still queued when the socket ended):
    /// it goes straight into the stored window.
    pub fn stamp_unkept(&mut self, frame: &str) -> String {
        self.last += 1;
        with_seq(frame, self.last)
    }

    /// The replay window, oldest first, each frame with its `seq`.
    pub fn window(&self) -> Vec<String> {
        let mut start = 0;
        self.frames
            .iter()
            .map(|&(s, len)| {
                let bytes: Vec<u8> = self.bytes.range(start..start + len).copied().collect();
                start += len;
                // Copied from a `String`, so always UTF-8.
                with_seq(&String::from_utf8_lossy(&bytes), s)
            })
            .collect()
    }

    fn keep(&mut self, seq: u64, frame: &str) {
        self.bytes.extend(frame.as_bytes());
        self.frames.push_back((seq, frame.len()));
    }

    fn pop_front(&mut self) {
        if let Some((_, len)) = self.frames.pop_front() {
            self.bytes.drain(..len.min(self.bytes.len()));
            let cap = self.bytes.capacity();
            if cap > RING_KEPT_BYTES && self.bytes.len() <= cap / 4 {
                self.bytes
                    .shrink_to((self.bytes.len() * 2).max(RING_KEPT_BYTES / 2));
            }
        }
    }
}

/// Puts `"seq":N` first into an encoded server message (always a JSON object).
pub fn with_seq(frame: &str, seq: u64) -> String {
    let rest = frame.strip_prefix('{').unwrap_or(frame);
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(seq);
    // Sized exactly: a frame is written once and kept as it is.
    let comma = rest != "}";
    let mut out = String::with_capacity(7 + digits.len() + usize::from(comma) + rest.len());
    out.push_str("{\"seq\":");
    out.push_str(digits);
    if comma {
        out.push(',');
    }
    out.push_str(rest);
    out
}

/// A stamped frame's `seq`, and the frame as it was before [`with_seq`].
fn without_seq(frame: &str) -> Option<(u64, String)> {
    let seq = seq_of(frame)?;
    let rest = frame.strip_prefix("{\"seq\":")?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest.strip_prefix(',').unwrap_or(rest);
    Some((seq, format!("{{{rest}")))
}

/// The `seq` of a stamped frame (it comes first).
pub fn seq_of(frame: &str) -> Option<u64> {
    let rest = frame.strip_prefix("{\"seq\":")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// The frames of `window` with a `seq` above `last_seq`; `None` when some of them are no
/// longer in the window (the client missed more than it holds).
pub fn replay_after(window: &[String], last_seq: u64, window_last: u64) -> Option<Vec<String>> {
    if last_seq >= window_last {
        return Some(Vec::new());
    }
    let missed: Vec<String> = window
        .iter()
        .filter(|f| seq_of(f).is_some_and(|s| s > last_seq))
        .cloned()
        .collect();
    let first = missed.first().and_then(|f| seq_of(f))?;
    (first == last_seq + 1 && missed.len() as u64 == window_last - last_seq).then_some(missed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_window_is_taken_back_as_it_was_written() {
        let mut s = Sequencer::new(4);
        s.stamp(r#"{"type":"x","n":1}"#);
        s.stamp("{}");
        let stored = s.window();
        assert_eq!(
            stored,
            vec![r#"{"seq":1,"type":"x","n":1}"#, r#"{"seq":2}"#]
        );
        let mut resumed = Sequencer::new(4);
        resumed.resume_from(2, stored.clone());
        assert_eq!(resumed.window(), stored);
        assert_eq!(resumed.stamp("{}").as_str(), r#"{"seq":3}"#);
    }

    #[test]
    fn seq_goes_first() {
        assert_eq!(
            with_seq(r#"{"type":"pong"}"#, 7),
            r#"{"seq":7,"type":"pong"}"#
        );
        assert_eq!(with_seq("{}", 1), r#"{"seq":1}"#);
        assert_eq!(seq_of(r#"{"seq":42,"type":"pong"}"#), Some(42));
    }

    #[test]
    fn the_window_replays_exactly_what_was_missed() {
        let mut s = Sequencer::new(3);
        for _ in 0..5 {
            s.stamp(r#"{"type":"x"}"#);
        }
        assert_eq!(s.last(), 5);
        let w = s.window();
        assert_eq!(w.len(), 3);
        let r = replay_after(&w, 3, 5).unwrap_or_default();
        assert_eq!(
            r.iter().map(|f| seq_of(f)).collect::<Vec<_>>(),
            vec![Some(4), Some(5)]
        );
        assert_eq!(replay_after(&w, 5, 5), Some(Vec::new()));
        assert_eq!(replay_after(&w, 9, 5), Some(Vec::new()));
        assert_eq!(replay_after(&w, 1, 5), None, "seq 2 is gone");
    }

    #[test]
    fn the_welcome_is_numbered_but_not_kept() {
        let mut s = Sequencer::new(4);
        let welcome = s.stamp_welcome(r#"{"type":"welcome"}"#);
        assert_eq!(seq_of(welcome.as_str()), Some(1));
        s.stamp(r#"{"type":"joined"}"#);
        let w = s.window();
        assert_eq!(
            w.iter().map(|f| seq_of(f)).collect::<Vec<_>>(),
            vec![Some(2)]
        );
        // A resume names at least the welcome's `seq`: what followed it is all there.
        assert_eq!(replay_after(&w, 1, 2).map(|r| r.len()), Some(1));
    }

    #[test]
    fn a_window_that_held_large_frames_gives_their_room_back() {
        let mut s = Sequencer::new(4);
        let large = format!(r#"{{"data":"{}"}}"#, "x".repeat(20_000));
        for _ in 0..4 {
            s.stamp(&large);
        }
        assert!(s.bytes.capacity() >= 80_000);
        // Small frames push the large ones out; the ring shrinks as they go.
        for _ in 0..4 {
            s.stamp(r#"{"type":"x"}"#);
        }
        assert!(
            s.bytes.capacity() <= RING_KEPT_BYTES,
            "{}",
            s.bytes.capacity()
        );
        assert_eq!(s.window().len(), 4);
        // An acknowledged window keeps no large room either.
        for _ in 0..4 {
            s.stamp(&large);
        }
        s.acknowledge(s.last());
        assert!(s.window().is_empty());
        assert!(
            s.bytes.capacity() <= RING_KEPT_BYTES,
            "{}",
            s.bytes.capacity()
        );
    }

    proptest::proptest! {
        /// The ring keeps exactly what a plain list of the last frames would: frames of any
        /// size (the ring wraps and grows and shrinks), acknowledgements, and a store and
        /// resume at any point.
        #[test]
        fn the_ring_keeps_what_a_list_of_the_last_frames_would(
            capacity in 0usize..6,
            steps in proptest::collection::vec((0usize..6000, 0u8..10), 0..60),
        ) {
            let mut s = Sequencer::new(capacity);
            let mut model: VecDeque<String> = VecDeque::new();
            for (i, (size, action)) in steps.into_iter().enumerate() {
                match action {
                    // Acknowledge everything but the last frame or two.
                    0 => {
                        let ack = s.last().saturating_sub(u64::from(i as u8 % 3));
                        s.acknowledge(ack);
                        model.retain(|f| seq_of(f).is_some_and(|q| q > ack));
                    }
                    // Store the window and resume from it.
                    1 => {
                        let stored = s.window();
                        let mut resumed = Sequencer::new(capacity);
                        resumed.resume_from(s.last(), stored);
                        s = resumed;
                    }
                    _ => {
                        let frame = format!(r#"{{"n":{i},"d":"{}"}}"#, "é".repeat(size / 2));
                        let stamped = s.stamp(&frame);
                        proptest::prop_assert_eq!(stamped.as_str(), with_seq(&frame, s.last()));
                        if capacity > 0 {
                            if model.len() == capacity {
                                model.pop_front();
                            }
                            model.push_back(with_seq(&frame, s.last()));
                        }
                    }
                }
                proptest::prop_assert_eq!(s.window(), Vec::from(model.clone()));
            }
        }
    }

    #[test]
    fn acknowledged_frames_leave_the_window_and_are_never_needed() {
        let mut s = Sequencer::new(8);
        for _ in 0..6 {
            s.stamp(r#"{"type":"x"}"#);
        }
        s.acknowledge(4);
        let w = s.window();
        assert_eq!(
            w.iter().map(|f| seq_of(f)).collect::<Vec<_>>(),
            vec![Some(5), Some(6)]
        );
        // A resume names at least what was acknowledged: the window still covers it.
        assert_eq!(replay_after(&w, 4, 6).map(|r| r.len()), Some(2));
        assert_eq!(replay_after(&w, 6, 6), Some(Vec::new()));
        // Acknowledging more than was sent empties the window and harms nothing else.
        s.acknowledge(100);
        assert!(s.window().is_empty());
        assert_eq!(s.last(), 6);
    }
}
