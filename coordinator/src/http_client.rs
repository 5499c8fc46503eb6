//! A small HTTP/1.1 client (hyper's pooled client) for the webhook delivery and the `rooms`
//! subcommands. Every request has a deadline; bodies read back are capped.
//!
//! `http://` and `https://` URLs. TLS is rustls (the ring provider, as the gRPC transport's)
//! and trusts the platform's CA certificates (the system store, or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR`; the image installs Debian's `ca-certificates`), plus the certificates of an
//! optional PEM bundle for receivers with a private CA ([`Trust::load`], `--webhook-ca`). The
//! server's certificate must name the URL's host. The bundle is parsed when the configuration
//! is validated, so a bad file fails at start-up.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Longest response body read back; the rest is an error.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid request: {0}")]
    Request(String),
    #[error("{0}")]
    Transport(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("reading the answer: {0}")]
    Body(String),
}

/// Why a CA bundle or the TLS configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} is not a PEM bundle: {message}")]
    Pem { path: String, message: String },
    #[error("{0} holds no PEM certificate")]
    Empty(String),
    #[error("{path}: certificate {index} is unusable: {message}")]
    Certificate {
        path: String,
        index: usize,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The CA certificates `https://` servers are verified against. Cheap to clone.
#[derive(Clone)]
pub struct Trust {
    config: Arc<rustls::ClientConfig>,
    platform: usize,
    extra: usize,
    platform_errors: usize,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("platform_cas", &self.platform)
            .field("extra_cas", &self.extra)
            .field("platform_errors", &self.platform_errors)
            .finish()
    }
}

impl Trust {
    /// The platform's CA certificates, and every certificate of the PEM bundle `extra_ca`
    /// (which must hold at least one, each usable as a trust anchor). A platform store that
    /// cannot be read is not an error here: it leaves `https://` to the extra certificates
    /// (see [`Trust::platform_cas`]).
    pub fn load(extra_ca: Option<&Path>) -> Result<Trust, TrustError> {
        let mut roots = rustls::RootCertStore::empty();
        let extra = match extra_ca {
            Some(path) => add_bundle(&mut roots, path)?,
            None => 0,
        };
        let native = rustls_native_certs::load_native_certs();
        let (platform, _) = roots.add_parsable_certificates(native.certs);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TrustError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Trust {
            config: Arc::new(config),
            platform,
            extra,
            platform_errors: native.errors.len(),
        })
    }

    /// CA certificates taken from the platform's store.
    pub fn platform_cas(&self) -> usize {
        self.platform
    }

    /// CA certificates taken from the extra bundle.
    pub fn extra_cas(&self) -> usize {
        self.extra
    }
}

/// Adds every certificate of the PEM file at `path`; how many.
fn add_bundle(roots: &mut rustls::RootCertStore, path: &Path) -> Result<usize, TrustError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|e| TrustError::Read {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrustError::Pem {
            path: shown.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TrustError::Empty(shown));
    }
    let n = certs.len();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TrustError::Certificate {
            path: shown.clone(),
            index: i + 1,
            message: e.to_string(),
        })?;
    }
    Ok(n)
}

/// One answer: status code and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    /// `connect_timeout` bounds each new TCP connection; `trust` verifies `https://` servers.
    pub fn new(connect_timeout: Duration, trust: &Trust) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_nodelay(true);
        // The TLS layer above it takes `https://` URLs.
        tcp.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config((*trust.config).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build(connector);
        Self { client }
    }

    /// Sends `method url` with `headers` and `body`; the whole exchange, body included,
    /// must finish within `deadline`.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        deadline: Duration,
    ) -> Result<Answer, HttpError> {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, value.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HttpError::Request(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| HttpError::Transport(error_chain(&e)))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| HttpError::Body(e.to_string()))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| HttpError::Timeout(deadline))?
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn an_extra_ca_bundle_is_checked_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap().pem();
        let two = bundle(dir.path(), "two.pem", &format!("{ca}{ca}"));
        assert_eq!(Trust::load(Some(&two)).unwrap().extra_cas(), 2);

        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            Trust::load(Some(&missing)),
            Err(TrustError::Read { .. })
        ));
        let text = bundle(dir.path(), "text.pem", "not a certificate\n");
        assert!(matches!(
            Trust::load(Some(&text)),
            Err(TrustError::Empty(_))
        ));
        let key_only = bundle(dir.path(), "key.pem", &key.serialize_pem());
        assert!(matches!(
            Trust::load(Some(&key_only)),
            Err(TrustError::Empty(_))
        ));
        let cut = bundle(dir.path(), "cut.pem", &ca[..ca.len() / 2]);
        assert!(matches!(
            Trust::load(Some(&cut)),
            Err(TrustError::Pem { .. })
        ));
        let garbage = bundle(
            dir.path(),
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        );
        let e = Trust::load(Some(&garbage)).unwrap_err();
        assert!(matches!(e, TrustError::Certificate { index: 1, .. }), "{e}");
    }
}
