//! Signals relayed through the coordinator: the protobuf `RelayedSignal` converted to and
//! from the edge's [`Envelope`] here, at the registry client, and nowhere else.

use heliograph_coordinator::grpc::proto::RelayedSignal;
use heliograph_coordinator::registry::EdgeId;

use crate::signal::Envelope;

/// The signal as the coordinator carries it, with the trace context of the span that sent
/// it (empty: none). The relay does not carry the sender or its `ref`: a signal relayed this
/// way cannot be answered with `expired`.
pub(super) fn to_proto(e: Envelope, traceparent: String) -> RelayedSignal {
    RelayedSignal {
        to_edge: e.to_edge.to_string(),
        to_peer: e.to_peer,
        room: e.room,
        frame: e.frame.into_bytes(),
        sent_at_us: e.sent_at_us,
        from_region: e.from_region,
        traceparent,
        // Numbered by `delivery` when sent.
        ..RelayedSignal::default()
    }
}

/// A relayed signal for a peer of this edge, and its trace context; `None` when it cannot be
/// read (counted as undeliverable by the follower).
pub(super) fn from_proto(signal: RelayedSignal) -> Option<(Envelope, String)> {
    let frame = String::from_utf8(signal.frame).ok()?;
    let to_edge = EdgeId::new(signal.to_edge).ok()?;
    let envelope = Envelope {
        to_edge,
        to_peer: signal.to_peer,
        room: signal.room,
        frame,
        sent_at_us: signal.sent_at_us,
        from_region: signal.from_region,
        from_peer: String::new(),
        reference: String::new(),
    };
    Some((envelope, signal.traceparent))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_relayed_signal_keeps_everything_the_relay_carries() {
        let e = Envelope {
            to_edge: EdgeId::new("edge-b").unwrap(),
            to_peer: "p1".into(),
            room: "r".into(),
            frame: "{\"type\":\"signal\"}".into(),
            sent_at_us: 42,
            from_region: "eu".into(),
            from_peer: "p0".into(),
            reference: "1".into(),
        };
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (back, traceparent) = from_proto(to_proto(e.clone(), tp.into())).unwrap();
        assert_eq!(traceparent, tp);
        assert_eq!(
            back,
            Envelope {
                from_peer: String::new(),
                reference: String::new(),
                ..e
            }
        );
        let mut bad = to_proto(back, String::new());
        bad.frame = vec![0xff];
        assert!(from_proto(bad).is_none(), "a frame that is not UTF-8");
    }
}
