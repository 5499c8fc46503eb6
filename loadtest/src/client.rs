//! A lean WebSocket client of protocol `heliograph.v1`: connect from a chosen source address,
//! read `welcome`, join a room, and send or receive JSON text frames. It remembers what a
//! later `resume` needs: the `resume_token` of `welcome` and the highest `seq` it has read.
//!
//! Buffers are kept small (4 KiB) so that tens of thousands of clients fit in memory, and the
//! socket is bound to a loopback source address before connecting so that many source
//! addresses share the load of ephemeral ports.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// WebSocket subprotocol the edge speaks.
pub const SUBPROTOCOL: &str = "heliograph.v1";
/// Per-socket read and write buffer size.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024;
/// Longest wait for one handshake step (connect, welcome, joined).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

pub type Ws = WebSocketStream<TcpStream>;

/// Small buffers for both the generator's clients and the reference server.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(SOCKET_BUFFER_BYTES)
        .max_write_buffer_size(16 * SOCKET_BUFFER_BYTES + 64 * 1024)
}

/// Where to connect, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
}

impl Target {
    pub async fn resolve(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow!("only ws:// URLs are supported, got {url}"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let addr = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| anyhow!("{authority} has no IPv4 address"))?;
        Ok(Self {
            url: url.to_owned(),
            addr,
        })
    }
}

/// The loopback source address of client `index` when spreading over `count` addresses
/// (127.0.0.1 … 127.0.0.count). Only loopback targets are spread; others use the default.
pub fn source_addr(target: &Target, index: usize, count: usize) -> Option<IpAddr> {
    if !target.addr.ip().is_loopback() || count <= 1 {
        return None;
    }
    let n = (index % count.min(254)) as u8 + 1;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
}

/// A frame from the server, with the fields any scenario looks at.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    pub ty: Cow<'a, str>,
    #[serde(borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
    /// The frame's number within its session (edges with resumable sessions stamp every frame).
    #[serde(default)]
    pub seq: Option<u64>,
}

impl<'a> Incoming<'a> {
    pub fn parse(text: &'a str) -> Result<Self> {
        serde_json::from_str(text).with_context(|| format!("bad frame from server: {text:.200}"))
    }
}

/// A connected client that has read its `welcome`.
pub struct Client {
    pub ws: Ws,
    pub peer_id: String,
    /// From `welcome` (empty if the edge sent none): resumes this session elsewhere.
    pub resume_token: String,
    /// The highest `seq` read so far by [`Client::recv_type`] (0: none).
    pub last_seq: u64,
}

/// A TCP connection to `target` (from `source` when given), without Nagle's delay.
pub async fn tcp_connect(
    target: &Target,
    source: Option<IpAddr>,
    within: Duration,
) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding a socket to {ip}"))?;
    }
    let stream = tokio::time::timeout(within, socket.connect(target.addr))
        .await
        .map_err(|_| anyhow!("TCP connect to {} timed out", target.addr))?
        .with_context(|| format!("TCP connect to {}", target.addr))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Client {
    /// Connects (from `source` when given), performs the handshake and reads `welcome`.
    pub async fn connect(target: &Target, source: Option<IpAddr>) -> Result<Self> {
        let stream = tcp_connect(target, source, STEP_TIMEOUT).await?;
        let mut request = target.url.as_str().into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let (ws, _) = tokio::time::timeout(
            STEP_TIMEOUT,
            tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config())),
        )
        .await
        .map_err(|_| anyhow!("WebSocket handshake timed out"))?
        .context("WebSocket handshake")?;
        let mut client = Self {
            ws,
            peer_id: String::new(),
            resume_token: String::new(),
            last_seq: 0,
        };
        let welcome = client.recv_type("welcome").await?;
        let v: serde_json::Value = serde_json::from_str(&welcome)?;
        client.peer_id = v
            .get("peer_id")
            .and_then(|p| p.as_str())
            .ok_or_else(|| anyhow!("welcome without peer_id: {welcome:.200}"))?
            .to_owned();
        client.resume_token = v
            .get("resume_token")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_owned();
        Ok(client)
    }

    /// Joins `room` and returns the `joined` frame's text.
    pub async fn join(&mut self, room: &str) -> Result<String> {
        self.send_json(&serde_json::json!({"type": "join", "room": room}))
            .await?;
        self.recv_type("joined").await
    }

    /// Leaves `room` and waits for `left`.
    pub async fn leave(&mut self, room: &str) -> Result<String> {
        self.send_json(&serde_json::json!({"type": "leave", "room": room}))
            .await?;
        self.recv_type("left").await
    }

    pub async fn send_json(&mut self, value: &serde_json::Value) -> Result<()> {
        self.send_text(value.to_string()).await
    }

    pub async fn send_text(&mut self, text: String) -> Result<()> {
        self.ws.send(Message::Text(Utf8Bytes::from(text))).await?;
        Ok(())
    }

    /// Reads the next text frame, skipping control frames.
    pub async fn recv_text(&mut self) -> Result<Utf8Bytes> {
        recv_text(&mut self.ws).await
    }

    /// Reads frames until one of type `ty` arrives (skipping peer notifications); an `error`
    /// frame or a close fails.
    pub async fn recv_type(&mut self, ty: &str) -> Result<String> {
        // Bounded: a handful of notifications may precede the answer.
        for _ in 0..1024 {
            let text = tokio::time::timeout(STEP_TIMEOUT, self.recv_text())
                .await
                .map_err(|_| anyhow!("no `{ty}` within {STEP_TIMEOUT:?}"))??;
            let frame = Incoming::parse(&text)?;
            if let Some(seq) = frame.seq {
                self.last_seq = self.last_seq.max(seq);
            }
            if frame.ty == ty {
                return Ok(text.as_str().to_owned());
            }
            if frame.ty == "error" {
                bail!(
                    "server error while waiting for `{ty}`: {} {}",
                    frame.code.unwrap_or_default(),
                    frame.message.unwrap_or_default()
                );
            }
        }
        bail!("too many frames without `{ty}`")
    }
}

/// Reads the next text frame from `ws`, skipping control frames; a close is an error.
pub async fn recv_text(ws: &mut Ws) -> Result<Utf8Bytes> {
    loop {
        match ws.next().await {
            None => bail!("connection closed"),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Close(c))) => bail!("server closed the connection: {c:?}"),
            Some(Ok(_)) => {}
        }
    }
}
