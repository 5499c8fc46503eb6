//! Short-lived TURN credentials in coturn's REST API scheme (`use-auth-secret`).
//!
//! username = `<expiry unix seconds>:<peer id>`,
//! credential = base64(HMAC-SHA1(shared secret, username)). The TURN server recomputes the
//! HMAC with the same secret, so no per-user state is shared with it.

use std::time::Duration;

use base64::Engine as _;
use heliograph_coordinator::registry::PeerId;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;

#[derive(Clone)]
pub struct TurnConfig {
    secret: Vec<u8>,
    urls: Vec<String>,
    ttl: Duration,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// One `RTCIceServer` entry with credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

impl TurnConfig {
    pub fn new(secret: impl Into<Vec<u8>>, urls: Vec<String>, ttl: Duration) -> Self {
        Self {
            secret: secret.into(),
            urls,
            ttl,
        }
    }

    /// Credentials for `peer`, valid until `now_unix + ttl`.
    pub fn credentials(&self, peer: &PeerId, now_unix: u64) -> TurnServer {
        let expiry = now_unix.saturating_add(self.ttl.as_secs());
        let username = format!("{expiry}:{peer}");
        TurnServer {
            urls: self.urls.clone(),
            credential: sign(&self.secret, &username),
            username,
        }
    }
}

fn sign(secret: &[u8], username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha1> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        assert_eq!(
            sign(b"Jefe", "what do ya want for nothing?"),
            base64::engine::general_purpose::STANDARD
                .encode(hex::decode("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79").unwrap())
        );
    }

    #[test]
    fn username_is_expiry_colon_peer() {
        let cfg = TurnConfig::new(
            "s3cret",
            vec!["turn:turn.example:3478".into()],
            Duration::from_secs(600),
        );
        let peer = PeerId::new("abc").unwrap();
        let c = cfg.credentials(&peer, 1_000);
        assert_eq!(c.username, "1600:abc");
        assert_eq!(c.urls, vec!["turn:turn.example:3478".to_owned()]);
        assert!(!c.credential.is_empty());
    }
}
