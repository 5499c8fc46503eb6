//! What the other peers of a room see of a member: the `meta` it joined with, with the fields
//! the edge vouches for written over the client's: `identity` (a join token's verified `sub`)
//! and `key` (the public key the join carried, which peers use to check the signatures of
//! signals relayed to them by other peers). Domain: no transport.

use base64::Engine as _;

/// Bytes of an uncompressed P-256 point (`0x04 ‖ x ‖ y`), as WebCrypto's `exportKey('raw')`
/// gives it.
pub const KEY_BYTES: usize = 65;
/// The first byte of an uncompressed elliptic-curve point.
const UNCOMPRESSED: u8 = 0x04;

/// A member's ECDSA P-256 public key: base64url (no padding) of the 65-byte uncompressed
/// point. Checked for its shape only; whether it is on the curve is for the peers that verify
/// with it to find out (WebCrypto refuses to import a point that is not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberKey(String);

/// Why a `key` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("`key` is not base64url")]
    NotBase64Url,
    #[error("`key` must decode to {KEY_BYTES} bytes (an uncompressed P-256 point)")]
    WrongLength,
    #[error("`key` must be an uncompressed point (first byte 0x04)")]
    NotUncompressed,
}

impl MemberKey {
    /// Parses the wire form; trailing `=` padding is tolerated and dropped, so that the key
    /// peers see is always in one spelling.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let trimmed = text.trim_end_matches('=');
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(trimmed)
            .map_err(|_| KeyError::NotBase64Url)?;
        if bytes.len() != KEY_BYTES {
            return Err(KeyError::WrongLength);
        }
        if bytes.first() != Some(&UNCOMPRESSED) {
            return Err(KeyError::NotUncompressed);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The metadata other peers see: the client's `meta` (a JSON object, `{}` when absent) with
/// `identity` set to the token's subject when there is one, and `key` set to the join's key,
/// or removed when the join had none: a `meta.key` is always one the edge checked.
pub fn member_meta(meta: Option<&str>, identity: &str, key: Option<&MemberKey>) -> String {
    let raw = meta.unwrap_or("{}");
    // Parse only when something is to be written or may have to be removed: a field name can
    // be spelled with escapes, so any backslash counts as a possible `key`.
    let may_hold_key = raw.contains("key") || raw.contains('\\');
    if identity.is_empty() && key.is_none() && !may_hold_key {
        return raw.to_owned();
    }
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(raw).unwrap_or_default();
    if !identity.is_empty() {
        object.insert(
            "identity".into(),
            serde_json::Value::String(identity.to_owned()),
        );
    }
    match key {
        Some(key) => {
            object.insert("key".into(), serde_json::Value::String(key.0.clone()));
        }
        None => {
            object.remove("key");
        }
    }
    serde_json::Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point() -> String {
        let mut bytes = vec![UNCOMPRESSED];
        bytes.extend((1..KEY_BYTES).map(|i| i as u8));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn parses_an_uncompressed_point_in_base64url() {
        let text = point();
        assert_eq!(text.len(), 87);
        assert_eq!(MemberKey::parse(&text).unwrap().as_str(), text);
        // Padding is dropped: one spelling per key.
        let padded = format!("{text}=");
        assert_eq!(MemberKey::parse(&padded).unwrap().as_str(), text);
    }

    #[test]
    fn refuses_other_shapes() {
        let std = base64::engine::general_purpose::STANDARD_NO_PAD;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        assert_eq!(MemberKey::parse("not base64!"), Err(KeyError::NotBase64Url));
        // Standard base64's alphabet (`+`, `/`) is not base64url.
        let mut with_plus = vec![UNCOMPRESSED];
        with_plus.extend([0xfb_u8; KEY_BYTES - 1]);
        assert_eq!(
            MemberKey::parse(&std.encode(&with_plus)),
            Err(KeyError::NotBase64Url)
        );
        assert_eq!(
            MemberKey::parse(&url.encode([UNCOMPRESSED; 33])),
            Err(KeyError::WrongLength)
        );
        assert_eq!(MemberKey::parse(""), Err(KeyError::WrongLength));
        let mut compressed = vec![0x02_u8];
        compressed.extend([7_u8; KEY_BYTES - 1]);
        assert_eq!(
            MemberKey::parse(&url.encode(compressed)),
            Err(KeyError::NotUncompressed)
        );
    }

    #[test]
    fn meta_carries_the_checked_key_only() {
        let key = MemberKey::parse(&point()).unwrap();
        let v = |s: String| serde_json::from_str::<serde_json::Value>(&s).unwrap();
        // Untouched when there is nothing to vouch for.
        assert_eq!(member_meta(Some(r#"{"n":1}"#), "", None), r#"{"n":1}"#);
        assert_eq!(member_meta(None, "", None), "{}");
        // The join's key replaces the client's.
        let m = v(member_meta(
            Some(r#"{"n":1,"key":"forged"}"#),
            "",
            Some(&key),
        ));
        assert_eq!(m, serde_json::json!({"n": 1, "key": key.as_str()}));
        // No key in the join: a client-supplied one is removed, escaped spellings included.
        let m = v(member_meta(Some(r#"{"n":1,"key":"forged"}"#), "", None));
        assert_eq!(m, serde_json::json!({"n": 1}));
        let m = v(member_meta(Some(r#"{"\u006bey":"forged"}"#), "", None));
        assert_eq!(m, serde_json::json!({}));
        // With a token, both verified fields.
        let m = v(member_meta(None, "alice", Some(&key)));
        assert_eq!(
            m,
            serde_json::json!({"identity": "alice", "key": key.as_str()})
        );
    }
}
