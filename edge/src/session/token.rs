//! Resume tokens: `base64url(peer|region|cluster|expiry_unix) "." base64url(HMAC-SHA256)`.
//!
//! Signed with the cluster-wide `--session-secret`, so any edge of the cluster can check a
//! token another edge handed out. Without a configured secret each process generates its own,
//! and only that process accepts its tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token of another region or cluster")]
    OtherCluster,
}

/// The verified content of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub peer: String,
    pub region: String,
    pub cluster: String,
    pub expires_unix: u64,
}

#[derive(Clone)]
pub struct TokenKey {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            secret: secret.to_vec(),
        }
    }

    /// A key of this process only.
    pub fn random() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self::new(&bytes)
    }

    fn mac(&self, payload: &[u8]) -> Result<HmacSha256, TokenError> {
        let mut mac =
            HmacSha256::new_from_slice(&self.secret).map_err(|_| TokenError::Malformed)?;
        mac.update(payload);
        Ok(mac)
    }

    pub fn sign(&self, claims: &TokenClaims) -> String {
        let payload = format!(
            "{}|{}|{}|{}",
            claims.peer, claims.region, claims.cluster, claims.expires_unix
        );
        let tag = self
            .mac(payload.as_bytes())
            .map(|m| m.finalize().into_bytes().to_vec())
            .unwrap_or_default();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Checks the signature, the expiry, and that the token belongs to `region`/`cluster`.
    pub fn verify(
        &self,
        token: &str,
        region: &str,
        cluster: &str,
        now_unix: u64,
    ) -> Result<TokenClaims, TokenError> {
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        self.mac(&payload)?
            .verify_slice(&tag)
            .map_err(|_| TokenError::Signature)?;
        let text = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
        let mut parts = text.split('|');
        let mut next = || parts.next().ok_or(TokenError::Malformed);
        let claims = TokenClaims {
            peer: next()?.to_owned(),
            region: next()?.to_owned(),
            cluster: next()?.to_owned(),
            expires_unix: next()?.parse().map_err(|_| TokenError::Malformed)?,
        };
        if claims.region != region || claims.cluster != cluster {
            return Err(TokenError::OtherCluster);
        }
        if claims.expires_unix <= now_unix {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> TokenClaims {
        TokenClaims {
            peer: "p".into(),
            region: "eu".into(),
            cluster: "c".into(),
            expires_unix: exp,
        }
    }

    #[test]
    fn signs_and_verifies() {
        let key = TokenKey::new(b"secret");
        let t = key.sign(&claims(100));
        assert_eq!(key.verify(&t, "eu", "c", 50), Ok(claims(100)));
        assert_eq!(key.verify(&t, "eu", "c", 100), Err(TokenError::Expired));
        assert_eq!(key.verify(&t, "us", "c", 50), Err(TokenError::OtherCluster));
        assert_eq!(key.verify(&t, "eu", "d", 50), Err(TokenError::OtherCluster));
        let other = TokenKey::new(b"other");
        assert_eq!(other.verify(&t, "eu", "c", 50), Err(TokenError::Signature));
        assert_eq!(
            key.verify("nope", "eu", "c", 50),
            Err(TokenError::Malformed)
        );
    }
}
