//! A webhook receiver on a real socket: an HTTP/1.1 server (keep-alive, `Content-Length`
//! bodies), over plain TCP or TLS, that records every request and answers by a policy: 200,
//! 500 for the first N requests, or never (it reads and holds the connection).
//!
//! The TLS receiver's certificate (for 127.0.0.1) is signed by a CA made for it with `rcgen`
//! ([`crate::redis_tls::certificates`]); its PEM file is [`Receiver::ca`].

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ServerConfig, crypto::ring};

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// 200 to everything.
    Accept,
    /// 500 to the first `n` requests, then 200.
    FailFirst(usize),
    /// Reads requests and never answers.
    Never,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: String,
    /// Whether it was answered 2xx.
    pub accepted: bool,
}

pub struct Receiver {
    pub addr: String,
    /// The CA that signed a TLS receiver's certificate (PEM); `None` for plain HTTP.
    pub ca: Option<PathBuf>,
    received: Arc<Mutex<Vec<Received>>>,
    handshakes_failed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// What every connection of one receiver shares.
#[derive(Clone)]
struct Shared {
    policy: Policy,
    log: Arc<Mutex<Vec<Received>>>,
    count: Arc<AtomicUsize>,
}

impl Receiver {
    /// A plain HTTP receiver on 127.0.0.1.
    pub async fn start(policy: Policy) -> Receiver {
        Self::start_with(policy, None, None).await
    }

    /// An HTTPS receiver on 127.0.0.1; its CA and certificate are written to `dir`.
    pub async fn start_tls(policy: Policy, dir: &Path) -> Receiver {
        let certs = crate::redis_tls::certificates(dir).unwrap();
        let chain = CertificateDer::pem_file_iter(&certs.server_cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&certs.server_key).unwrap();
        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        Self::start_with(policy, Some(acceptor), Some(certs.ca)).await
    }

    async fn start_with(policy: Policy, tls: Option<TlsAcceptor>, ca: Option<PathBuf>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let handshakes_failed = Arc::new(AtomicUsize::new(0));
        let shared = Shared {
            policy,
            log: Arc::clone(&received),
            count: Arc::new(AtomicUsize::new(0)),
        };
        let failed = Arc::clone(&handshakes_failed);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                let tls = tls.clone();
                let failed = Arc::clone(&failed);
                tokio::spawn(async move {
                    match tls {
                        None => serve(stream, shared).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => serve(stream, shared).await,
                            Err(_) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
        });
        Receiver {
            addr,
            ca,
            received,
            handshakes_failed,
            task,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/hook", self.addr)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// TLS connections whose handshake failed (a client that does not trust the CA).
    pub fn handshakes_failed(&self) -> usize {
        self.handshakes_failed.load(Ordering::SeqCst)
    }
}

/// Reads requests from one connection and answers them by the policy.
async fn serve<S: AsyncRead + AsyncWrite>(stream: S, shared: Shared) {
    let Shared { policy, log, count } = shared;
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    loop {
        let mut headers = HashMap::new();
        let mut line = String::new();
        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if read.read_exact(&mut body).await.is_err() {
            return;
        }
        let n = count.fetch_add(1, Ordering::SeqCst);
        let status = match policy {
            Policy::Never => None,
            Policy::FailFirst(k) if n < k => Some(500),
            _ => Some(200),
        };
        log.lock().unwrap().push(Received {
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            accepted: status == Some(200),
        });
        let Some(status) = status else {
            // Hold the connection: keep reading until the client gives up.
            let mut sink = Vec::new();
            let _ = read.read_to_end(&mut sink).await;
            return;
        };
        let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        // TLS buffers what is written: send it now.
        if write.flush().await.is_err() {
            return;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
