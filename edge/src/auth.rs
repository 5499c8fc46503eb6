//! Join tokens: JWTs that say which room a peer may join, as whom, until when, and with which
//! permissions.
//!
//! When no key is configured the edge runs open (anyone may join any room) and says so at
//! start. With a key, every `join` needs a token; each way a token can be wrong has its own
//! error code so that clients and operators can tell them apart.

use base64::Engine as _;
use heliograph_coordinator::registry::RoomId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::protocol::ErrorCode;

/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_SECONDS: u64 = 5;

/// The claims of a join token.
#[derive(Debug, Clone, Deserialize)]
pub struct JoinClaims {
    /// The identity shown to the other peers.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch: required here so that a token without one does
    /// not decode; `jsonwebtoken` checks its value.
    #[allow(dead_code)]
    pub exp: u64,
    /// The one room this token admits to…
    #[serde(default)]
    pub room: Option<String>,
    /// …or every room whose id starts with this prefix.
    #[serde(default)]
    pub room_prefix: Option<String>,
    /// May this peer send signals? (`false`: receive only.) Default `true`.
    #[serde(default = "default_true")]
    pub publish: bool,
    /// Refuse the join when the room already has this many members.
    #[serde(default)]
    pub max_room_size: Option<u32>,
    /// Whether a room this join creates is listed to discovery; when present it decides,
    /// whatever the client's `public` says (absent: the client's flag decides).
    #[serde(default)]
    pub public: Option<bool>,
}

fn default_true() -> bool {
    true
}

/// What a valid token grants for one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub identity: String,
    pub can_publish: bool,
    pub max_room_size: Option<u32>,
    /// The token's `public` claim, if it has one.
    pub public: Option<bool>,
}

impl Grant {
    /// The grant of an open edge (no key configured).
    pub fn open() -> Self {
        Self {
            identity: String::new(),
            can_publish: true,
            max_room_size: None,
            public: None,
        }
    }
}

/// Why a token was refused; each maps to its own error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this edge requires a join token")]
    Missing,
    #[error("the join token has expired")]
    Expired,
    #[error("the join token's signature is not valid")]
    BadSignature,
    #[error("the join token's algorithm is not accepted")]
    AlgorithmRefused,
    #[error("the join token is malformed or lacks a required claim")]
    Malformed,
    #[error("the join token does not admit to this room")]
    WrongRoom,
}

impl TokenError {
    pub fn code(self) -> ErrorCode {
        match self {
            Self::Missing => ErrorCode::TokenRequired,
            Self::Expired => ErrorCode::TokenExpired,
            Self::BadSignature => ErrorCode::TokenInvalidSignature,
            Self::AlgorithmRefused => ErrorCode::TokenAlgorithmRefused,
            Self::Malformed => ErrorCode::TokenMalformed,
            Self::WrongRoom => ErrorCode::TokenWrongRoom,
        }
    }
}

/// The configured verification key.
pub enum JoinKey {
    Hs256(Vec<u8>),
    /// PEM-encoded public key.
    Es256(Vec<u8>),
    /// PEM-encoded public key.
    Rs256(Vec<u8>),
}

/// Why a join-token key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid join-token key: an HS256 secret must be at least 32 bytes")]
    ShortSecret,
    #[error("invalid join-token key: {0}")]
    Pem(#[source] jsonwebtoken::errors::Error),
}

/// Verifies join tokens, or admits everyone when no key is configured.
pub struct JoinAuth {
    verifier: Option<(DecodingKey, Validation)>,
}

impl JoinAuth {
    pub fn open() -> Self {
        Self { verifier: None }
    }

    pub fn with_key(key: JoinKey) -> Result<Self, KeyError> {
        let (key, alg) = match key {
            JoinKey::Hs256(secret) => {
                if secret.len() < 32 {
                    return Err(KeyError::ShortSecret);
                }
                (DecodingKey::from_secret(&secret), Algorithm::HS256)
            }
            JoinKey::Es256(pem) => (
                DecodingKey::from_ec_pem(&pem).map_err(KeyError::Pem)?,
                Algorithm::ES256,
            ),
            JoinKey::Rs256(pem) => (
                DecodingKey::from_rsa_pem(&pem).map_err(KeyError::Pem)?,
                Algorithm::RS256,
            ),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        Ok(Self {
            verifier: Some((key, validation)),
        })
    }

    pub fn is_open(&self) -> bool {
        self.verifier.is_none()
    }

    /// Checks `token` for joining `room`.
    pub fn authorize(&self, token: Option<&str>, room: &RoomId) -> Result<Grant, TokenError> {
        let Some((key, validation)) = &self.verifier else {
            return Ok(Grant::open());
        };
        let token = token.ok_or(TokenError::Missing)?;
        if header_alg(token).is_some_and(|alg| {
            !validation
                .algorithms
                .iter()
                .any(|a| alg == format!("{a:?}"))
        }) {
            // Includes `alg: none`, which must never be accepted.
            return Err(TokenError::AlgorithmRefused);
        }
        let data =
            jsonwebtoken::decode::<JoinClaims>(token, key, validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        TokenError::AlgorithmRefused
                    }
                    _ => TokenError::Malformed,
                }
            })?;
        let claims = data.claims;
        let admitted = match (&claims.room, &claims.room_prefix) {
            (Some(exact), _) if exact == room.as_str() => true,
            (_, Some(prefix))
                if !prefix.is_empty() && room.as_str().starts_with(prefix.as_str()) =>
            {
                true
            }
            _ => false,
        };
        if !admitted {
            return Err(TokenError::WrongRoom);
        }
        Ok(Grant {
            identity: claims.sub,
            can_publish: claims.publish,
            max_room_size: claims.max_room_size,
            public: claims.public,
        })
    }
}

/// The `alg` named in the token's header, read without trusting anything else in it.
fn header_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn now() -> u64 {
        heliograph_coordinator::clock::now_ms() / 1000
    }

    fn room(s: &str) -> RoomId {
        RoomId::new(s).unwrap()
    }

    #[test]
    fn each_token_case() {
        let auth = JoinAuth::with_key(JoinKey::Hs256(SECRET.to_vec())).unwrap();
        let valid = token(json!({"sub": "alice", "exp": now() + 60, "room": "a"}));
        let g = auth.authorize(Some(&valid), &room("a")).unwrap();
        assert_eq!((g.identity.as_str(), g.can_publish), ("alice", true));
        assert_eq!(
            auth.authorize(Some(&valid), &room("b")),
            Err(TokenError::WrongRoom)
        );
        assert_eq!(auth.authorize(None, &room("a")), Err(TokenError::Missing));

        let expired = token(json!({"sub": "alice", "exp": now() - 600, "room": "a"}));
        assert_eq!(
            auth.authorize(Some(&expired), &room("a")),
            Err(TokenError::Expired)
        );

        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "mallory", "exp": now() + 60, "room": "a"}),
            &EncodingKey::from_secret(b"not-the-secret-not-the-secret-xx"),
        )
        .unwrap();
        assert_eq!(
            auth.authorize(Some(&forged), &room("a")),
            Err(TokenError::BadSignature)
        );

        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "mallory", "exp": now() + 60, "room": "a"}))
        );
        assert_eq!(
            auth.authorize(Some(&none), &room("a")),
            Err(TokenError::AlgorithmRefused)
        );
        assert_eq!(
            auth.authorize(Some("garbage"), &room("a")),
            Err(TokenError::Malformed)
        );

        let prefix = token(
            json!({"sub": "bob", "exp": now() + 60, "room_prefix": "team-", "publish": false, "max_room_size": 4}),
        );
        let g = auth.authorize(Some(&prefix), &room("team-7")).unwrap();
        assert_eq!((g.can_publish, g.max_room_size), (false, Some(4)));
        assert_eq!(g.public, None, "no claim: the client's flag decides");
        let public = token(json!({"sub": "ann", "exp": now() + 60, "room": "a", "public": true}));
        assert_eq!(
            auth.authorize(Some(&public), &room("a")).unwrap().public,
            Some(true)
        );
        assert_eq!(
            auth.authorize(Some(&prefix), &room("other")),
            Err(TokenError::WrongRoom)
        );

        let no_room = token(json!({"sub": "eve", "exp": now() + 60}));
        assert_eq!(
            auth.authorize(Some(&no_room), &room("a")),
            Err(TokenError::WrongRoom)
        );
    }

    #[test]
    fn open_edge_admits_everyone() {
        let auth = JoinAuth::open();
        assert!(auth.is_open());
        assert_eq!(auth.authorize(None, &room("x")), Ok(Grant::open()));
    }

    #[test]
    fn short_hs256_secret_is_refused() {
        assert!(JoinAuth::with_key(JoinKey::Hs256(b"short".to_vec())).is_err());
    }
}
