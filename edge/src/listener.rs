//! The edge's TCP listener for axum: `TCP_NODELAY` on every socket and, with
//! `--proxy-protocol`, the PROXY protocol header (v1 or v2, parsed with `ppp`) read from each
//! connection before HTTP sees it. The source address the header names becomes the
//! connection's [`Peer`]; a connection from outside the trusted proxies, or one without a
//! valid header within [`PROXY_HEADER_TIMEOUT`], is closed and counted.
//!
//! Headers are read off the accept loop, each in a task of its own, so that one silent
//! connection never holds up the others.
//!
//! Imports `client_addr` and `metrics`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::client_addr::TrustedProxies;
use crate::metrics::EdgeMetrics;

/// A load balancer writes the header as soon as it has connected; a connection that has not
/// sent it by then is not from one (or is stuck) and only holds a socket.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections whose header is still being read; beyond it the listener stops accepting until
/// one finishes, which bounds the memory and sockets slow headers can hold.
const MAX_PENDING_HEADERS: usize = 1024;
/// Connections the kernel completes and queues for accepting. When every client of a dead
/// edge reconnects at once, tens of thousands of handshakes arrive within a second; a full
/// queue drops the client's final ACK and the connection only completes when the SYN-ACK is
/// sent again, 1 s, 3 s, 7 s later. The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 65_535;
/// The v2 signature, the first 12 bytes of a binary header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included (the specification's bound).
const V1_MAX_BYTES: usize = 107;
/// Longest v2 header accepted: the 16-byte fixed part plus addresses and TLVs. Load
/// balancers add a few small TLVs (AWS: the VPC endpoint id); this bounds a pending
/// connection's buffer.
const V2_MAX_BYTES: usize = 4096;

/// A listener on `addr` with a queue of [`LISTEN_BACKLOG`] (tokio's `bind` gives 1024), and
/// address reuse as `bind` sets it, so that a restarted edge can bind while old
/// connections linger in TIME_WAIT.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Where a connection came from: the TCP peer, or the source its PROXY header names. Routes
/// take it as `ConnectInfo<Peer>`.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, EdgeListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, EdgeListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Who may send PROXY headers, and where refusals are counted.
pub struct ProxyProtocol {
    pub trusted: TrustedProxies,
    pub metrics: Arc<EdgeMetrics>,
}

pub struct EdgeListener {
    tcp: TcpListener,
    proxy: Option<Arc<ProxyProtocol>>,
    /// Connections whose PROXY header is being read; aborted when the listener is dropped.
    pending: JoinSet<Option<(TcpStream, SocketAddr)>>,
}

impl EdgeListener {
    /// `proxy`: require a PROXY header on every connection.
    pub fn new(tcp: TcpListener, proxy: Option<ProxyProtocol>) -> Self {
        Self {
            tcp,
            proxy: proxy.map(Arc::new),
            pending: JoinSet::new(),
        }
    }
}

impl Listener for EdgeListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    // Cancel-safe (axum drops it at shutdown): a connection accepted is either refused at
    // once or parked in `pending`, which outlives this future.
    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        let Self {
            tcp,
            proxy,
            pending,
        } = self;
        loop {
            let Some(proxy) = proxy else {
                let (stream, peer) = Listener::accept(tcp).await;
                no_delay(&stream);
                return (stream, peer);
            };
            tokio::select! {
                (stream, peer) = Listener::accept(tcp), if pending.len() < MAX_PENDING_HEADERS => {
                    no_delay(&stream);
                    if !proxy.trusted.contains(peer.ip()) {
                        proxy.metrics.refused("proxy_untrusted");
                        tracing::debug!(%peer, "connection refused: not from a trusted proxy");
                        continue;
                    }
                    pending.spawn(read_header(stream, peer, Arc::clone(proxy)));
                }
                Some(done) = pending.join_next(), if !pending.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Signals are small frames that must leave at once; Nagle would hold one back for up to the
/// peer's delayed-ACK time (~40 ms) while another is unacknowledged.
fn no_delay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// Reads the PROXY header; the stream and the client's address, or `None` (counted) when the
/// header is missing, malformed or late.
async fn read_header(
    mut stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<ProxyProtocol>,
) -> Option<(TcpStream, SocketAddr)> {
    match tokio::time::timeout(PROXY_HEADER_TIMEOUT, proxy_source(&mut stream)).await {
        Ok(Ok(source)) => Some((stream, source.unwrap_or(peer))),
        Ok(Err(e)) => {
            proxy.metrics.refused("proxy_header");
            tracing::debug!(%peer, error = %e, "connection refused: bad PROXY header");
            None
        }
        Err(_) => {
            proxy.metrics.refused("proxy_header");
            tracing::debug!(%peer, "connection refused: no PROXY header in time");
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum HeaderError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY header too long")]
    TooLong,
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Reads exactly the header (nothing of the HTTP request after it) and returns the source
/// address it names; `None` for a v2 `LOCAL` command or a v1 `UNKNOWN` (the load balancer's
/// own health checks), which keep the TCP peer.
async fn proxy_source(stream: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    // 12 bytes: the v2 signature, and less than the shortest v1 header ("PROXY UNKNOWN\r\n").
    let mut buf = vec![0u8; V2_SIGNATURE.len()];
    stream.read_exact(&mut buf).await?;
    if buf.as_slice() == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        stream.read_exact(&mut fixed).await?;
        buf.extend_from_slice(&fixed);
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if buf.len() + len > V2_MAX_BYTES {
            return Err(HeaderError::TooLong);
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        stream.read_exact(&mut buf[start..]).await?;
        let header = ppp::v2::Header::try_from(buf.as_slice())
            .map_err(|e| HeaderError::Malformed(e.to_string()))?;
        if header.command == ppp::v2::Command::Local {
            return Ok(None);
        }
        return Ok(match header.addresses {
            ppp::v2::Addresses::IPv4(a) => Some(socket(a.source_address.into(), a.source_port)),
            ppp::v2::Addresses::IPv6(a) => Some(socket(a.source_address.into(), a.source_port)),
            ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
        });
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(HeaderError::NotProxy);
    }
    // One byte at a time, to leave the request that follows the CRLF in the socket.
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX_BYTES {
            return Err(HeaderError::TooLong);
        }
        buf.push(stream.read_u8().await?);
    }
    let header = ppp::v1::Header::try_from(buf.as_slice())
        .map_err(|e| HeaderError::Malformed(e.to_string()))?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(socket(a.source_address.into(), a.source_port)),
        ppp::v1::Addresses::Tcp6(a) => Some(socket(a.source_address.into(), a.source_port)),
        ppp::v1::Addresses::Unknown => None,
    })
}

fn socket(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.to_canonical(), port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Writes `bytes` then `GET`, and returns what `proxy_source` made of it and what was
    /// left in the socket.
    async fn parse(bytes: Vec<u8>) -> (Result<Option<SocketAddr>, String>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&bytes).await.unwrap();
            c.write_all(b"GET").await.unwrap();
            c.shutdown().await.unwrap();
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let got = proxy_source(&mut s).await.map_err(|e| e.to_string());
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        writer.await.unwrap();
        (got, rest)
    }

    #[tokio::test]
    async fn headers_are_read_exactly_and_name_the_source() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n".to_vec();
        let (got, rest) = parse(v1).await;
        assert_eq!(got.unwrap(), Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(rest, b"GET");

        let (got, rest) = parse(b"PROXY UNKNOWN\r\n".to_vec()).await;
        assert_eq!(got.unwrap(), None);
        assert_eq!(rest, b"GET");

        let src: SocketAddr = "[2001:db8::7]:4711".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (src, dst),
        )
        .write_tlv(ppp::v2::Type::NoOp, b"padding")
        .unwrap()
        .build()
        .unwrap();
        let (got, rest) = parse(v2).await;
        assert_eq!(got.unwrap(), Some(src));
        assert_eq!(rest, b"GET");

        let local = ppp::v2::Builder::new(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::AddressFamily::Unspecified | ppp::v2::Protocol::Unspecified,
        )
        .build()
        .unwrap();
        let (got, rest) = parse(local).await;
        assert_eq!(got.unwrap(), None);
        assert_eq!(rest, b"GET");
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let (got, _) = parse(b"GET /ws HTTP/1.1\r\n".to_vec()).await;
        assert!(got.unwrap_err().contains("not a PROXY"));
        let (got, _) = parse(b"PROXY TCP4 nonsense\r\n".to_vec()).await;
        assert!(got.unwrap_err().contains("malformed"));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        let (got, _) = parse(long).await;
        assert!(got.unwrap_err().contains("too long"));
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let (got, _) = parse(big).await;
        assert!(got.unwrap_err().contains("too long"));
    }
}
