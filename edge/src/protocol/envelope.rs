//! A request frame's top-level fields, each still as its raw JSON text: read in one pass by
//! [`scan`] when the frame is of the usual kind, else by serde_json followed by the relayable
//! check. Either way, a frame read here is valid JSON that can be relayed verbatim.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{ErrorCode, ProtocolError, relayable, scan};

/// Every field any request may have, as raw JSON text; a `null` field is absent. Unknown
/// fields are ignored so that newer clients can talk to older edges.
#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Envelope<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "raw")]
    pub(super) ty: Option<&'a str>,
    #[serde(rename = "ref", default, borrow, deserialize_with = "raw")]
    pub(super) reference: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) room: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) to: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) kind: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) data: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) meta: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) token: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) key: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) last_seq: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) ack: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) publish: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) watch: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) public: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) room_meta: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) prefix: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) cursor: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "raw")]
    pub(super) limit: Option<&'a str>,
}

/// A field's raw text as serde_json delimits it (`null` reads as absent).
fn raw<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<&'a str>, D::Error> {
    Option::<&'de RawValue>::deserialize(d).map(|v| v.map(RawValue::get))
}

impl<'a> Envelope<'a> {
    /// Reads a frame, refusing invalid JSON and JSON that cannot be relayed verbatim.
    pub(super) fn read(text: &'a str) -> Result<Self, ProtocolError> {
        if let Some(envelope) = Self::scan(text) {
            return Ok(envelope);
        }
        let envelope: Envelope<'a> = serde_json::from_str(text)
            .map_err(|e| ProtocolError::new(ErrorCode::BadJson, format!("invalid JSON: {e}")))?;
        relayable::check_relayable(text)?;
        Ok(envelope)
    }

    /// The one-pass read; `None` where serde_json must decide (a repeated field too: serde_json
    /// refuses it, naming it).
    fn scan(text: &'a str) -> Option<Self> {
        let mut envelope = Envelope::default();
        let mut seen = 0u32;
        scan::object_members(text, |key, value| {
            let Some((bit, field)) = envelope.field(key) else {
                return Some(());
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            *field = (value != "null").then_some(value);
            Some(())
        })?;
        Some(envelope)
    }

    /// The field named `key` (as serde names it above), with a bit of its own.
    fn field(&mut self, key: &str) -> Option<(u32, &mut Option<&'a str>)> {
        Some(match key {
            "type" => (1 << 0, &mut self.ty),
            "ref" => (1 << 1, &mut self.reference),
            "room" => (1 << 2, &mut self.room),
            "to" => (1 << 3, &mut self.to),
            "kind" => (1 << 4, &mut self.kind),
            "data" => (1 << 5, &mut self.data),
            "meta" => (1 << 6, &mut self.meta),
            "token" => (1 << 7, &mut self.token),
            "key" => (1 << 8, &mut self.key),
            "last_seq" => (1 << 9, &mut self.last_seq),
            "ack" => (1 << 10, &mut self.ack),
            "publish" => (1 << 11, &mut self.publish),
            "watch" => (1 << 12, &mut self.watch),
            "public" => (1 << 13, &mut self.public),
            "room_meta" => (1 << 14, &mut self.room_meta),
            "prefix" => (1 << 15, &mut self.prefix),
            "cursor" => (1 << 16, &mut self.cursor),
            "limit" => (1 << 17, &mut self.limit),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy as _;

    use super::*;

    /// serde_json's read followed by the relayable check: what the one-pass read must agree
    /// with wherever it answers.
    fn slow(text: &str) -> Option<Envelope<'_>> {
        let envelope = serde_json::from_str::<Envelope<'_>>(text).ok()?;
        relayable::check_relayable(text).ok()?;
        Some(envelope)
    }

    #[test]
    fn the_usual_signal_is_read_in_one_pass() {
        let text = r#"{"type":"signal","room":"r","to":"p","kind":"offer","data":{"sdp":"v=0\r\n"},"ack":3,"x":[]}"#;
        let envelope = Envelope::scan(text).expect("read in one pass");
        assert_eq!(envelope.ty, Some(r#""signal""#));
        assert_eq!(envelope.data, Some(r#"{"sdp":"v=0\r\n"}"#));
        assert_eq!(envelope.ack, Some("3"));
        assert_eq!(Some(envelope), slow(text));
    }

    #[test]
    fn null_is_absent_and_a_repeated_field_is_left_to_serde_json() {
        let envelope = Envelope::scan(r#"{"type":"ping","ref":null}"#).expect("read");
        assert_eq!(envelope.reference, None);
        assert_eq!(Envelope::scan(r#"{"type":"ping","type":"join"}"#), None);
        assert_eq!(Envelope::scan(r#"{"ref":null,"ref":1}"#), None);
        let refused = Envelope::read(r#"{"type":"ping","type":"join"}"#).unwrap_err();
        assert!(
            refused.message.contains("duplicate field `type`"),
            "{refused:?}"
        );
        // Unknown fields may repeat, as serde_json lets them.
        assert!(Envelope::scan(r#"{"x":1,"x":2,"type":"ping"}"#).is_some());
    }

    /// Pieces of JSON text, valid and not, put together at random: the one-pass read, where
    /// it answers, must answer as serde_json with the relayable check does.
    fn frames() -> impl proptest::strategy::Strategy<Value = String> {
        let piece = proptest::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\n",
            "\"",
            "\"type\"",
            "\"ping\"",
            "\"ref\"",
            "\"data\"",
            "\"room\"",
            "\"ack\"",
            "null",
            "true",
            "fals",
            "0",
            "-1",
            "01",
            "2.5",
            "1.",
            "1e3",
            "1e999",
            "-",
            "\\",
            "\\n",
            "\\u00e9",
            "\\ud83d",
            "\\x",
            "\t",
            "\u{1}",
            "é",
            "x",
            "\"a string of more than eight bytes\"",
        ]);
        proptest::collection::vec(piece, 0..24).prop_map(|parts| parts.concat())
    }

    /// A mostly valid frame with a piece of [`frames`] put in somewhere.
    fn broken_objects() -> impl proptest::strategy::Strategy<Value = String> {
        (objects(), frames(), proptest::num::usize::ANY).prop_map(|(object, piece, at)| {
            let mut at = at % (object.len() + 1);
            while !object.is_char_boundary(at) {
                at -= 1;
            }
            format!("{}{piece}{}", &object[..at], &object[at..])
        })
    }

    /// Mostly valid frames: an object of members whose values are drawn from JSON values.
    fn objects() -> impl proptest::strategy::Strategy<Value = String> {
        let key = proptest::sample::select(vec![
            "type",
            "ref",
            "room",
            "to",
            "data",
            "ack",
            "meta",
            "x",
            "typ\\u0065",
        ]);
        let leaf = proptest::sample::select(vec![
            "null",
            "true",
            "1",
            "-0.5",
            "1e5",
            "\"s\"",
            "\"a\\\"b\"",
            "\"\\ud83d\"",
            "\"\\/\"",
            "01",
            "\"\u{7f}\"",
            "\"é\"",
            "\"a string of more than thirty-two bytes, read by memchr\"",
            "\"a string of more than thirty-two bytes with an \\n escape\"",
            "\"a string of more than thirty-two bytes with a raw \u{1f}\"",
        ])
        .prop_map(str::to_owned);
        let value = leaf.prop_recursive(4, 24, 4, |inner| {
            proptest::prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec(inner, 0..4).prop_map(|v| {
                    let members: Vec<String> = v.iter().map(|x| format!("\"k\" : {x}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        });
        proptest::collection::vec((key, value), 0..6).prop_map(|members| {
            let members: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!(" {{{}}}", members.join(", "))
        })
    }

    proptest::proptest! {
        // Cheap cases; broken frames are valid only now and then.
        #![proptest_config(proptest::test_runner::Config::with_cases(2048))]

        #[test]
        fn the_one_pass_read_agrees_with_serde_json_on_pieces(text in frames()) {
            if let Some(envelope) = Envelope::scan(&text) {
                proptest::prop_assert_eq!(Some(envelope), slow(&text), "{}", text);
            }
        }

        #[test]
        fn the_one_pass_read_agrees_with_serde_json_on_objects(text in objects()) {
            if let Some(envelope) = Envelope::scan(&text) {
                proptest::prop_assert_eq!(Some(envelope), slow(&text), "{}", text);
            }
        }

        #[test]
        fn the_one_pass_read_agrees_with_serde_json_on_broken_objects(text in broken_objects()) {
            if let Some(envelope) = Envelope::scan(&text) {
                proptest::prop_assert_eq!(Some(envelope), slow(&text), "{}", text);
            }
        }
    }
}
