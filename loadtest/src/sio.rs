//! A lean Socket.IO client for the `relay` workload in the signaling dialect (`--wire
//! socketio`): Engine.IO v4 over WebSocket only (`/socket.io/?EIO=4&transport=websocket`),
//! namespace `/`, text packets. Enough to connect, join a room, emit `offer`/`answer` and
//! answer the server's pings; the same against a Heliograph edge (`--socketio`) and against
//! the Node.js reference server (`socketio-node/`).
//!
//! Packets: Engine.IO `0` open, `2` ping (answered `3`), `4` message; a message carries a
//! Socket.IO packet: `0` connect, `2` event (`42["name",arg]` on the wire).

use std::borrow::Cow;
use std::net::IpAddr;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::SinkExt;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::client::{Client, STEP_TIMEOUT, Target, recv_text, ws_config};

/// The Engine.IO pong, the answer to a ping (`2`).
pub const PONG: &str = "3";

/// What a text frame from the server is, as far as the workload cares.
pub enum Packet<'a> {
    Ping,
    /// An event: its name and its first argument.
    Event(Cow<'a, str>, &'a RawValue),
    Other,
}

/// Reads one frame.
pub fn parse(text: &str) -> Packet<'_> {
    if text == "2" {
        return Packet::Ping;
    }
    let Some(body) = text.strip_prefix("42") else {
        return Packet::Other;
    };
    match serde_json::from_str::<(Cow<'_, str>, &RawValue)>(body) {
        Ok((name, arg)) => Packet::Event(name, arg),
        Err(_) => Packet::Other,
    }
}

/// The WebSocket URL of the Socket.IO endpoint under `base` (`ws://host:port`).
fn endpoint(base: &str) -> String {
    format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        base.trim_end_matches('/')
    )
}

/// Connects (from `source` when given) and connects to namespace `/`; the client's id is its
/// Socket.IO id.
pub async fn connect(target: &Target, source: Option<IpAddr>) -> Result<Client> {
    let stream = crate::client::tcp_connect(target, source, STEP_TIMEOUT).await?;
    let request = endpoint(&target.url).into_client_request()?;
    let (mut ws, _) = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config())),
    )
    .await
    .map_err(|_| anyhow!("WebSocket handshake timed out"))?
    .context("WebSocket handshake")?;
    let open = step(recv_text(&mut ws)).await?;
    if !open.starts_with('0') {
        bail!("expected the Engine.IO open packet, got {open:.200}");
    }
    ws.send(Message::Text(Utf8Bytes::from_static("40"))).await?;
    let id = loop {
        let text = step(recv_text(&mut ws)).await?;
        if text.as_str() == "2" {
            ws.send(Message::Text(Utf8Bytes::from_static(PONG))).await?;
            continue;
        }
        if let Some(body) = text.strip_prefix("40") {
            let v: serde_json::Value = serde_json::from_str(body)?;
            break v
                .get("sid")
                .and_then(|s| s.as_str())
                .ok_or_else(|| anyhow!("connect without sid: {text:.200}"))?
                .to_owned();
        }
        if text.starts_with("44") {
            bail!("namespace connection refused: {text:.200}");
        }
    };
    Ok(Client {
        ws,
        peer_id: id,
        resume_token: String::new(),
        last_seq: 0,
    })
}

/// Emits `join-room` and waits for `room-users`.
pub async fn join(client: &mut Client, room: &str) -> Result<()> {
    let packet = format!("42{}", serde_json::json!(["join-room", room]));
    client
        .ws
        .send(Message::Text(Utf8Bytes::from(packet)))
        .await?;
    // Bounded: a handful of notifications may precede the answer.
    for _ in 0..1024 {
        let text = step(recv_text(&mut client.ws)).await?;
        match parse(&text) {
            Packet::Ping => {
                client
                    .ws
                    .send(Message::Text(Utf8Bytes::from_static(PONG)))
                    .await?;
            }
            Packet::Event(name, _) if name == "room-users" => return Ok(()),
            Packet::Event(name, arg) if name == "error" => bail!("error joining: {}", arg.get()),
            _ => {}
        }
    }
    bail!("too many frames without `room-users`")
}

async fn step<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| anyhow!("no answer within {STEP_TIMEOUT:?}"))?
}
