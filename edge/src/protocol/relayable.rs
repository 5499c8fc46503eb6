//! Whether a valid JSON text can be passed on verbatim. serde_json lets through, in the
//! values it skips over, things that strict JSON parsers on the receiving side refuse; a frame
//! holding one is refused rather than relayed or echoed.

use super::{ErrorCode, ProtocolError, scan};

/// Whether `text` (valid JSON) can be passed on verbatim: no number beyond a 64-bit float,
/// no unpaired surrogate escape (see below). Every frame a client sends is checked so, and so
/// is a payload another ingress relays without decoding it.
pub fn check_relayable(text: &str) -> Result<(), ProtocolError> {
    match first_unrelayable(text) {
        None => Ok(()),
        Some(Unrelayable::Number) => Err(ProtocolError::new(
            ErrorCode::BadJson,
            "invalid JSON: a number is out of the range of a 64-bit float",
        )),
        Some(Unrelayable::Surrogate) => Err(ProtocolError::new(
            ErrorCode::BadJson,
            "invalid JSON: unpaired UTF-16 surrogate escape",
        )),
    }
}

/// What serde_json lets through in the values it skips over (`ref`, `data`, `meta`, unknown
/// fields) but strict JSON parsers on the receiving side refuse, so that echoing or relaying
/// it would hand peers a frame they cannot read:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unrelayable {
    /// a number too large for a 64-bit float (serde_json refuses it only when parsing);
    Number,
    /// an unpaired surrogate escape such as `"\ud83d"` (skipped values are not unescaped).
    /// Found by `edge/fuzz`.
    Surrogate,
}

/// The first unrelayable thing in `text` (valid JSON). One scan finds the numbers between
/// strings, skipping over strings; only a text with escapes is looked at again for
/// surrogates.
fn first_unrelayable(text: &str) -> Option<Unrelayable> {
    // Without an exponent, a number of at most 308 characters has at most 308 integer
    // digits and is below 1e308: finite, with nothing to parse.
    const MAX_PLAIN_FINITE_NUMBER: usize = 308;
    let bytes = text.as_bytes();
    let mut escapes = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'"' {
            // Inside a string: jump to its end (escapes skip the byte after the backslash).
            let mut j = i + 1;
            loop {
                // The text is valid JSON: no raw control character stops the search inside a string.
                let k = scan::special(bytes.get(j..).unwrap_or_default())?;
                if bytes[j + k] == b'\\' {
                    escapes = true;
                    j += k + 2;
                } else {
                    j += k + 1;
                    break;
                }
            }
            i = j;
        } else if b == b'-' || b.is_ascii_digit() {
            let start = i;
            // The integer digits in a loop of their own: most numbers are only that.
            i += 1;
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let mut exponent = false;
            while let Some(&c) = bytes.get(i) {
                match c {
                    b'0'..=b'9' | b'-' | b'+' | b'.' => {}
                    b'e' | b'E' => exponent = true,
                    _ => break,
                }
                i += 1;
            }
            if !exponent && i - start <= MAX_PLAIN_FINITE_NUMBER {
                continue;
            }
            let finite = text
                .get(start..i)
                .and_then(|t| t.parse::<f64>().ok())
                .is_some_and(f64::is_finite);
            if !finite {
                return Some(Unrelayable::Number);
            }
        } else {
            i += 1;
        }
    }
    (escapes && has_unpaired_surrogate(text)).then_some(Unrelayable::Surrogate)
}

fn has_unpaired_surrogate(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut expect_low = false;
    // Only escapes matter: jump from one backslash to the next.
    while let Some(k) = memchr::memchr(b'\\', &bytes[i..]) {
        if expect_low && k > 0 {
            return true;
        }
        i += k;
        if bytes.get(i + 1) == Some(&b'u') {
            let unit = bytes
                .get(i + 2..i + 6)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            let Some(unit) = unit else {
                return true;
            };
            let low = (0xDC00..0xE000).contains(&unit);
            if low != expect_low {
                return true;
            }
            expect_low = (0xD800..0xDC00).contains(&unit);
            i += 6;
        } else {
            if expect_low {
                return true;
            }
            i += 2;
        }
        if i >= bytes.len() {
            break;
        }
    }
    expect_low
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number check as first written, a plain scan over the whole text: the faster scan
    /// (and its surrogate check, run only when there are escapes) must agree with it and
    /// `has_unpaired_surrogate` run on every text.
    mod two_scans {
        pub fn out_of_range_number(text: &str) -> bool {
            let bytes = text.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                let b = bytes[i];
                if b == b'"' {
                    let mut j = i + 1;
                    loop {
                        match bytes[j.min(bytes.len())..]
                            .iter()
                            .position(|&c| c == b'"' || c == b'\\')
                        {
                            None => return false,
                            Some(k) if bytes[j + k] == b'\\' => j += k + 2,
                            Some(k) => {
                                j += k + 1;
                                break;
                            }
                        }
                    }
                    i = j;
                } else if b == b'-' || b.is_ascii_digit() {
                    let start = i;
                    while i < bytes.len()
                        && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                    {
                        i += 1;
                    }
                    let finite = text[start..i].parse::<f64>().is_ok_and(f64::is_finite);
                    if !finite {
                        return true;
                    }
                } else {
                    i += 1;
                }
            }
            false
        }
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #[test]
        fn the_scan_agrees_with_two_plain_scans(
            items in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::collection::vec(
                        proptest::sample::select(vec![
                            "\\ud83d", "\\ude00", "\\udc00", "\\u00e9", "\\n", "\\\\",
                            "\\\"", "x", "é", "1e999", " ",
                            "a string of more than thirty-two bytes, searched by memchr",
                        ]),
                        0..8,
                    )
                    .prop_map(|parts| format!("\"{}\"", parts.concat())),
                    proptest::sample::select(vec![
                        "1e999", "-2.5E3", "12", "0", "1e308", "-0", "12345678901234567890.5",
                    ])
                        .prop_map(str::to_owned),
                ],
                0..8,
            )
        ) {
            let text = format!(r#"{{"a":[{}]}}"#, items.join(","));
            // Only valid JSON is ever checked (serde_json read it first).
            proptest::prop_assume!(serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok());
            let expected = if two_scans::out_of_range_number(&text) {
                Some(Unrelayable::Number)
            } else if has_unpaired_surrogate(&text) {
                Some(Unrelayable::Surrogate)
            } else {
                None
            };
            // Either problem refuses the frame; which one is named first may differ.
            proptest::prop_assert_eq!(first_unrelayable(&text).is_some(), expected.is_some());
        }
    }
}
