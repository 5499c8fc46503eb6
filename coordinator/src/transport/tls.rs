//! Optional mutual TLS for every gRPC connection of the cluster: edge → replica, replica →
//! replica (Raft and the edge-facing relay/forwarding) and the admin CLI → replica.
//!
//! One set of PEM files per process: its certificate and key (presented as a server and as a
//! client) and the CA that signed every member's certificate. Servers require a client
//! certificate signed by that CA; clients verify the server's certificate against the same CA
//! and the host they dialled (so certificates name the advertised host names or IP addresses).
//! TLS is in addition to the cluster secret, never instead of it. The files are parsed when
//! the configuration is validated, so a bad file fails at start-up, not at the first call.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

use super::liveness;

/// A process's TLS identity and the cluster CA.
#[derive(Clone)]
pub struct MutualTls(Arc<Inner>);

struct Inner {
    identity: Identity,
    ca: Certificate,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert, --tls-key and --tls-ca go together; {0} is missing")]
    Incomplete(&'static str),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{0} holds no PEM private key")]
    NoKey(PathBuf),
    #[error("unusable TLS files: {0}")]
    Invalid(String),
}

impl MutualTls {
    /// From PEM text: this process's certificate chain and private key, and the cluster CA.
    pub fn from_pem(
        cert: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
        ca: impl AsRef<[u8]>,
    ) -> Result<Self, TlsError> {
        let tls = Self(Arc::new(Inner {
            identity: Identity::from_pem(cert, key),
            ca: Certificate::from_pem(ca),
        }));
        // Both builders parse the PEM and build the rustls configuration right away.
        Server::builder()
            .tls_config(tls.server_config())
            .map_err(|e| TlsError::Invalid(error_chain(&e)))?;
        Endpoint::from_static("https://localhost")
            .tls_config(tls.client_config())
            .map_err(|e| TlsError::Invalid(error_chain(&e)))?;
        Ok(tls)
    }

    /// Reads the three PEM files.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let (cert_pem, key_pem, ca_pem) = (read(cert)?, read(key)?, read(ca)?);
        for (pem, path) in [(&cert_pem, cert), (&ca_pem, ca)] {
            if !contains(pem, b"-----BEGIN CERTIFICATE-----") {
                return Err(TlsError::NoCertificate(path.to_owned()));
            }
        }
        if !contains(&key_pem, b"PRIVATE KEY-----") {
            return Err(TlsError::NoKey(key.to_owned()));
        }
        Self::from_pem(cert_pem, key_pem, ca_pem)
    }

    /// From the optional `--tls-cert`, `--tls-key`, `--tls-ca` flags: all three or none.
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Self::load(cert, key, ca).map(Some),
            (None, _, _) => Err(TlsError::Incomplete("--tls-cert")),
            (_, None, _) => Err(TlsError::Incomplete("--tls-key")),
            (_, _, None) => Err(TlsError::Incomplete("--tls-ca")),
        }
    }

    /// Server side: present this identity and require a client certificate from the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.0.identity.clone())
            .client_ca_root(self.0.ca.clone())
            .client_auth_optional(false)
    }

    /// Client side: trust only the CA, and present this identity.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.0.ca.clone())
            .identity(self.0.identity.clone())
    }
}

impl fmt::Debug for MutualTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MutualTls(…)")
    }
}

/// A server builder, with TLS when `tls` is set and room for the streams a frozen replica
/// finds reset when it wakes (see [`liveness`](super::liveness)). Liveness is the clients'
/// business: they ping (see [`endpoint_with_liveness`]).
pub fn server(tls: Option<&MutualTls>) -> Result<Server, tonic::transport::Error> {
    let builder = Server::builder()
        .http2_max_pending_accept_reset_streams(Some(liveness::MAX_PENDING_ACCEPT_RESETS));
    match tls {
        None => Ok(builder),
        Some(tls) => builder.tls_config(tls.server_config()),
    }
}

/// An endpoint for `addr` (`host:port`, or an `http://`/`https://` URL). With `tls` it is
/// always `https` with this identity (an `http://` URL is upgraded); without, a bare address
/// becomes `http://`.
pub fn endpoint(addr: &str, tls: Option<&MutualTls>) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = match tls {
        None => Endpoint::from_shared(endpoint_uri(addr)),
        Some(tls) => {
            let authority = addr
                .strip_prefix("https://")
                .or_else(|| addr.strip_prefix("http://"))
                .unwrap_or(addr);
            Endpoint::from_shared(format!("https://{authority}"))?.tls_config(tls.client_config())
        }
    }?;
    Ok(endpoint.tcp_nodelay(true))
}

/// [`endpoint`] with fast HTTP/2 keepalive (see [`liveness`](super::liveness)): for channels
/// whose user must move on when the peer stops answering (an edge's link to its replica,
/// writes forwarded to the leader, relays to other replicas). Not for Raft's own channels:
/// openraft notices an unresponsive peer by itself, and a connection dropped by a ping that a
/// busy peer answered late would have to be re-made within one heartbeat.
pub fn endpoint_with_liveness(
    addr: &str,
    tls: Option<&MutualTls>,
) -> Result<Endpoint, tonic::transport::Error> {
    Ok(endpoint(addr, tls)?
        .http2_keep_alive_interval(liveness::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(liveness::KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Adds a scheme to a bare `host:port` address, as tonic endpoints need one.
fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An error with its sources, since tonic's transport errors hide the rustls reason.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_go_together() {
        let p = Path::new("/nonexistent");
        assert!(MutualTls::from_flags(None, None, None).unwrap().is_none());
        assert!(matches!(
            MutualTls::from_flags(Some(p), None, Some(p)),
            Err(TlsError::Incomplete("--tls-key"))
        ));
        assert!(matches!(
            MutualTls::from_flags(Some(p), Some(p), Some(p)),
            Err(TlsError::Read { .. })
        ));
    }

    #[test]
    fn garbage_pem_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.pem");
        std::fs::write(&f, "not a pem").unwrap();
        assert!(matches!(
            MutualTls::load(&f, &f, &f),
            Err(TlsError::NoCertificate(_))
        ));
        let bogus = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            MutualTls::from_pem(bogus, key, bogus),
            Err(TlsError::Invalid(_))
        ));
    }

    #[test]
    fn endpoints_use_https_with_tls_only() {
        let e = endpoint("127.0.0.1:7000", None).unwrap();
        assert_eq!(e.uri().to_string(), "http://127.0.0.1:7000/");
        let e = endpoint("http://10.0.0.1:7000", None).unwrap();
        assert_eq!(e.uri().scheme_str(), Some("http"));
    }
}
