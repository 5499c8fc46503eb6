//! A one-pass reader of the usual request frame. It checks that the whole text is a JSON
//! object that can be relayed verbatim, and hands over each top-level member, raw, in that
//! same pass. A relayed signal is otherwise read twice: once by serde_json, which validates it
//! and finds its fields, and once more by the relayable check, which serde_json cannot do.
//!
//! It answers only when it is sure. It reads a plain subset of JSON: strings whose escapes
//! are all one of `\" \\ \/ \b \f \n \r \t`, numbers without an exponent of at most 308
//! characters, nesting at most 32 deep, and top-level keys without escapes. On anything else
//! (a `\u` escape, `1e5`, an error of any kind) it gives up, and the frame is read by
//! serde_json and the relayable check as before, which then also name what is wrong. So
//! whatever it accepts, those two accept too, with the same fields (a property test in
//! `envelope` holds it to that); and everything it accepts is relayable, since surrogate
//! escapes and out-of-range numbers are outside its subset.

/// Deeper nesting is left to serde_json (whose own limit is 128).
const MAX_DEPTH: usize = 32;
/// A number without an exponent of at most 308 characters has at most 308 integer digits:
/// it is below 1e308, finite as a 64-bit float.
const MAX_NUMBER_CHARS: usize = 308;

/// Reads `text` as a JSON object, calling `member(key, raw value)` for each top-level member
/// in order. `None` when the text is outside the subset read here, or when `member` returns
/// `None`; then nothing can be concluded from it.
pub(super) fn object_members<'a>(
    text: &'a str,
    mut member: impl FnMut(&'a str, &'a str) -> Option<()>,
) -> Option<()> {
    let mut r = Reader {
        bytes: text.as_bytes(),
        at: 0,
    };
    r.whitespace();
    r.expect(b'{')?;
    r.whitespace();
    if r.peek()? == b'}' {
        r.at += 1;
    } else {
        loop {
            let key_start = r.at + 1;
            if r.peek()? != b'"' || r.string()? {
                // Not a key, or one with escapes (serde_json unescapes it before matching).
                return None;
            }
            let key = text.get(key_start..r.at - 1)?;
            r.whitespace();
            r.expect(b':')?;
            r.whitespace();
            let start = r.at;
            r.value(1)?;
            member(key, text.get(start..r.at)?)?;
            r.whitespace();
            match r.next()? {
                b',' => r.whitespace(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    r.whitespace();
    (r.at == r.bytes.len()).then_some(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// One value, its first byte not whitespace; `depth` counts the containers it is in.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        self.container(depth, b'}', |r| {
            if r.peek()? != b'"' {
                return None;
            }
            r.string()?;
            r.whitespace();
            r.expect(b':')?;
            r.whitespace();
            r.value(depth)
        })
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.container(depth, b']', |r| r.value(depth))
    }

    /// An object or an array from its opening bracket: `item`s separated by commas, up to
    /// `close`.
    fn container(
        &mut self,
        depth: usize,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.whitespace();
        if self.peek()? == close {
            self.at += 1;
            return Some(());
        }
        loop {
            item(self)?;
            self.whitespace();
            match self.next()? {
                b',' => self.whitespace(),
                b if b == close => return Some(()),
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, of at most [`MAX_NUMBER_CHARS`]. A digit right after a
    /// leading `0` ends the number here, and the caller, finding no `,` or bracket after it,
    /// gives up, as it should (`01` is not JSON).
    fn number(&mut self) -> Option<()> {
        let start = self.at;
        if self.peek()? == b'-' {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            let fraction = self.at;
            self.digits();
            if self.at == fraction {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            return None;
        }
        (self.at - start <= MAX_NUMBER_CHARS).then_some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    /// A string from its opening quote; whether it had escapes.
    fn string(&mut self) -> Option<bool> {
        self.at += 1;
        let mut escaped = false;
        loop {
            self.at += special(self.bytes.get(self.at..)?)?;
            match self.next()? {
                b'"' => return Some(escaped),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => escaped = true,
                    // `\u` (and anything invalid) is left to serde_json and the
                    // relayable check, which looks for unpaired surrogates.
                    _ => return None,
                },
                // A raw control character: invalid in a string.
                _ => return None,
            }
        }
    }
}

/// Where the first byte of `bytes` that ends a plain run of string text is: a `"`, a `\\` or
/// a control character (below 0x20). Most strings of a frame are short (keys, ids, kinds):
/// their first 32 bytes are searched a word at a time in place, which costs less than
/// setting up a vector search. The rest of a long string (a payload) goes to `memchr` for the
/// first `"` or `\\`, and the run before it is checked for control characters in a loop
/// without branches, which the compiler turns into vector instructions.
pub(super) fn special(bytes: &[u8]) -> Option<usize> {
    const SHORT: usize = 32;
    let head = &bytes[..bytes.len().min(SHORT)];
    if let Some(k) = special_in_words(head) {
        return Some(k);
    }
    let rest = &bytes[head.len()..];
    let end = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
    let run = &rest[..end];
    let controls = run.iter().fold(0u8, |any, &b| any | u8::from(b < 0x20));
    if controls != 0 {
        return run.iter().position(|&b| b < 0x20).map(|k| head.len() + k);
    }
    (end < rest.len()).then_some(head.len() + end)
}

/// [`special`], a word at a time.
fn special_in_words(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_le_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_le_bytes([b'\\'; 8]);
    const SPACES: u64 = u64::from_le_bytes([0x20; 8]);
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let w = u64::from_le_bytes(w);
        // `(x - n) & !x & 0x80` per byte marks the lowest byte below n exactly (bytes above it
        // may be marked falsely through the borrow, and are not looked at). A byte equal to
        // the one searched for is zero after the xor: below 1. Bytes of 0x80 and up (UTF-8)
        // are never marked, their high bit being cleared by `!x`.
        let (q, s) = (w ^ QUOTES, w ^ BACKSLASHES);
        let found = ((q.wrapping_sub(ONES) & !q)
            | (s.wrapping_sub(ONES) & !s)
            | (w.wrapping_sub(SPACES) & !w))
            & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|k| at + k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(text: &str) -> Option<Vec<(&str, &str)>> {
        let mut found = Vec::new();
        object_members(text, |k, v| {
            found.push((k, v));
            Some(())
        })
        .map(|()| found)
    }

    #[test]
    fn a_usual_frame_is_read_member_by_member() {
        assert_eq!(
            members(r#" {"type":"signal", "data" : {"s":[1,-2.5,true,null],"p":"a\"\n"} } "#),
            Some(vec![
                ("type", r#""signal""#),
                ("data", r#"{"s":[1,-2.5,true,null],"p":"a\"\n"}"#)
            ])
        );
        assert_eq!(members("{}"), Some(vec![]));
    }

    #[test]
    fn anything_outside_the_plain_subset_is_left_alone() {
        for text in [
            r#"{"a":"\ud83d"}"#,
            r#"{"a":1e5}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":"\x"}"#,
            r#"{"typ\u0065":1}"#,
            r#"{"a\n":1}"#,
            r#"{"a":1,}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":tru}"#,
            r#"{"a":1} x"#,
            r#"{"a":1"#,
            r#"{"a":"#,
            r#"{"a" 1}"#,
            r#"[1]"#,
            "",
        ] {
            assert_eq!(members(text), None, "{text}");
        }
        let deep = format!(r#"{{"a":{}{}}}"#, "[".repeat(32), "]".repeat(32));
        assert_eq!(members(&deep), None);
        let shallow = format!(r#"{{"a":{}{}}}"#, "[".repeat(31), "]".repeat(31));
        assert!(members(&shallow).is_some());
        let long = format!(r#"{{"a":{}}}"#, "9".repeat(309));
        assert_eq!(members(&long), None);
    }

    #[test]
    fn the_word_search_finds_the_first_stop() {
        let text = "abcdefgh\u{e9}ijklmnopq\"rs\\";
        assert_eq!(special(text.as_bytes()), text.find('"'));
        assert_eq!(special(b"0123456789\x1f\""), Some(10));
        assert_eq!(special(b"0123456\\"), Some(7));
        assert_eq!(special("\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}".as_bytes()), None);
        // Past the first 32 bytes.
        let long = "x".repeat(40);
        for stop in ['"', '\\', '\n'] {
            let text = format!("{long}{stop}{long}\"");
            assert_eq!(special(text.as_bytes()), Some(40), "{stop:?}");
        }
        let text = format!("{long}\u{1}{long}\"");
        assert_eq!(special(text.as_bytes()), Some(40));
        assert_eq!(special(long.as_bytes()), None);
    }
}
