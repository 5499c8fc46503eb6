//! A signal on its way between edges: the envelope that carries a client frame (with `from`
//! stamped by the sender's edge) across the region's bus, a pending buffer or the
//! coordinator path, and its wire form on the bus.

use heliograph_coordinator::registry::EdgeId;

/// A signal for a peer on another edge of this region. `frame` is the client frame as the
/// sender's edge encoded it (with `from` stamped there); nobody re-encodes it on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub to_edge: EdgeId,
    pub to_peer: String,
    pub room: String,
    pub frame: String,
    /// Sender edge's wall clock when it read the signal (µs since the Unix epoch).
    pub sent_at_us: u64,
    pub from_region: String,
    /// The sender, to be told `expired` if the signal is never delivered (empty: nobody,
    /// e.g. for an `expired` notice itself).
    pub from_peer: String,
    /// The sender's `ref` as raw JSON (a string or a number; empty: none).
    pub reference: String,
}

/// Why a message on the bus could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the bus message is truncated")]
    Truncated,
    #[error("the bus message is not UTF-8")]
    NotUtf8,
    #[error("the bus message has an unknown version")]
    Version,
}

/// Wire version of [`Envelope::encode`].
const WIRE_VERSION: &str = "h2";

impl Envelope {
    /// `h2\n<to_peer>\n<room>\n<sent_at_us>\n<from_region>\n<from_peer>\n<ref>\n<frame>`:
    /// ids, regions and a `ref` (a JSON string or number) hold no raw newline, so a newline
    /// separates them; the frame is the rest as is.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.frame.len() + 96);
        for part in [
            WIRE_VERSION,
            &self.to_peer,
            &self.room,
            &self.sent_at_us.to_string(),
            &self.from_region,
            &self.from_peer,
            &self.reference,
        ] {
            out.extend_from_slice(part.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(self.frame.as_bytes());
        out
    }

    /// Reads a message published on `to_edge`'s channel.
    pub fn decode(to_edge: &EdgeId, bytes: &[u8]) -> Result<Self, DecodeError> {
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
        let mut parts = text.splitn(8, '\n');
        let mut next = || parts.next().ok_or(DecodeError::Truncated);
        if next()? != WIRE_VERSION {
            return Err(DecodeError::Version);
        }
        let to_peer = next()?.to_owned();
        let room = next()?.to_owned();
        let sent_at_us = next()?.parse().map_err(|_| DecodeError::Truncated)?;
        let from_region = next()?.to_owned();
        let from_peer = next()?.to_owned();
        let reference = next()?.to_owned();
        let frame = next()?.to_owned();
        Ok(Self {
            to_edge: to_edge.clone(),
            to_peer,
            room,
            frame,
            sent_at_us,
            from_region,
            from_peer,
            reference,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_envelope_survives_the_wire() {
        let edge = EdgeId::new("edge-b").unwrap();
        let e = Envelope {
            to_edge: edge.clone(),
            to_peer: "p1".into(),
            room: "room one".into(),
            frame: "{\"type\":\"signal\",\n\"data\":\"x\ny\"}".into(),
            sent_at_us: 1_700_000_000_000_123,
            from_region: "eu".into(),
            from_peer: "p0".into(),
            reference: "\"r1\"".into(),
        };
        assert_eq!(Envelope::decode(&edge, &e.encode()), Ok(e));
        assert_eq!(
            Envelope::decode(&edge, b"h2\np1\nroom"),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            Envelope::decode(&edge, b"h9\np\nr\n1\neu\n{}"),
            Err(DecodeError::Version)
        );
    }
}
