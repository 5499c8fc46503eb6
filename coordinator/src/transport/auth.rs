//! Cluster authentication: every gRPC call between edges and replicas, and between replicas,
//! carries the shared cluster secret as `authorization: Bearer <secret>`. When the process
//! has a TLS identity ([`MutualTls`]) it travels with the secret, so every place that dials or
//! serves with the secret also uses mutual TLS.

use std::fmt;
use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use super::tls::MutualTls;

/// Metadata key that carries the secret.
pub const AUTHORIZATION: &str = "authorization";
/// Shortest secret accepted; shorter ones are guessable.
pub const MIN_SECRET_BYTES: usize = 16;

/// The shared cluster secret, and this process's optional TLS identity. Never printed.
#[derive(Clone)]
pub struct ClusterSecret(Arc<str>, Option<MutualTls>);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the cluster secret must be at least {MIN_SECRET_BYTES} bytes")]
    TooShort,
    #[error("the cluster secret must be printable ASCII without spaces")]
    NotPrintable,
}

impl ClusterSecret {
    pub fn new(secret: &str) -> Result<Self, SecretError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort);
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecretError::NotPrintable);
        }
        Ok(Self(Arc::from(secret), None))
    }

    /// The same secret, with mutual TLS on every connection made or served with it.
    pub fn with_tls(self, tls: Option<MutualTls>) -> Self {
        Self(self.0, tls)
    }

    /// A key for `purpose`, derived from the secret (HMAC-SHA256), so that one configured
    /// secret can key other things every member of the cluster must agree on (e.g. the
    /// edges' resume tokens) without the secret itself being used twice.
    pub fn derive(&self, purpose: &str) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(self.0.as_bytes()) else {
            return Vec::new();
        };
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The TLS identity, when the cluster uses mutual TLS.
    pub fn tls(&self) -> Option<&MutualTls> {
        self.1.as_ref()
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Adds the secret to an outgoing request.
    pub fn attach<T>(&self, request: &mut Request<T>) {
        if let Ok(v) = MetadataValue::try_from(self.bearer()) {
            request.metadata_mut().insert(AUTHORIZATION, v);
        }
    }

    /// Checks an incoming request; a missing or wrong secret is `Unauthenticated`.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let presented = request
            .metadata()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("missing cluster credentials"))?;
        if constant_time_eq(presented.as_bytes(), self.bearer().as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid cluster credentials"))
        }
    }

    /// A tonic interceptor that refuses requests without the secret. It owns a copy of the
    /// secret (`use<>`), so services built from it need not borrow this value.
    pub fn interceptor(
        &self,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let secret = self.clone();
        move |request: Request<()>| {
            secret.check(&request)?;
            Ok(request)
        }
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(…)")
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_secret() {
        let s = ClusterSecret::new("0123456789abcdef-secret").unwrap();
        let mut ok = Request::new(());
        s.attach(&mut ok);
        assert!(s.check(&ok).is_ok());
        let missing = Request::new(());
        assert_eq!(
            s.check(&missing).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let other = ClusterSecret::new("another-secret-of-16+").unwrap();
        let mut wrong = Request::new(());
        other.attach(&mut wrong);
        assert_eq!(
            s.check(&wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(ClusterSecret::new("short").is_err());
        assert_eq!(format!("{s:?}"), "ClusterSecret(…)");
    }
}
