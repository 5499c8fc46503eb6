//! `reference-server`: a minimal tokio-tungstenite forwarder speaking just enough of
//! `heliograph.v1` for the load generator to drive it — the practical ceiling for relay.
//!
//! It sends `welcome`, answers `join`/`leave`/`ping`, and forwards a `signal` by reading only
//! its `to` field and writing the frame to that socket with `"from"` spliced in. There is no
//! validation beyond that: it is the yardstick, not the product.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::client::{SUBPROTOCOL, ws_config};

/// Frames written before a flush.
const BATCH: usize = 64;
/// The accept queue, as large as the edge's (`heliograph_edge` asks for the same; the
/// kernel caps both at `net.core.somaxconn`), so that a connection storm meets the same
/// queue on either server.
const LISTEN_BACKLOG: u32 = 65_535;

type Outbox = mpsc::UnboundedSender<Utf8Bytes>;

#[derive(Default)]
struct Registry {
    peers: HashMap<String, Outbox>,
    rooms: HashMap<String, Vec<String>>,
}

type Shared = Arc<Mutex<Registry>>;

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
}

/// Serves until the process is killed, after printing `{"listening":"ADDR"}`.
pub async fn serve(listen: SocketAddr) -> Result<()> {
    let socket = match listen {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(listen)
        .with_context(|| format!("binding {listen}"))?;
    let listener: TcpListener = socket.listen(LISTEN_BACKLOG)?;
    println!(
        "{}",
        serde_json::json!({ "listening": listener.local_addr()?.to_string() })
    );
    let registry: Shared = Arc::default();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the existing sockets.
                eprintln!("reference-server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, registry.clone()));
    }
}

// The signature is tungstenite's handshake `Callback`; its error type is not ours to shrink.
#[allow(clippy::result_large_err)]
fn add_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == SUBPROTOCOL));
    if offered {
        resp.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(resp)
}

async fn connection(stream: TcpStream, registry: Shared) {
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, add_subprotocol, Some(ws_config()))
            .await
    else {
        return;
    };
    let id = format!("{:032x}", rand::random::<u128>());
    let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
    if let Ok(mut reg) = registry.lock() {
        reg.peers.insert(id.clone(), tx.clone());
    }
    let welcome = serde_json::json!({
        "type": "welcome", "peer_id": id, "resume_token": "", "region": "reference",
        "edge": "reference", "ice_servers": [], "protocol": SUBPROTOCOL,
    });
    let mut ok = ws
        .send(Message::Text(welcome.to_string().into()))
        .await
        .is_ok();
    // `"from":"<id>",` spliced after the opening brace of a forwarded signal.
    let from_field = format!(r#"{{"from":"{id}","#);
    let mut joined: Vec<String> = Vec::new();
    while ok {
        tokio::select! {
            out = rx.recv() => {
                let Some(first) = out else { break };
                let mut next = Some(first);
                let mut n = 0;
                while let Some(text) = next {
                    if ws.feed(Message::Text(text)).await.is_err() {
                        ok = false;
                        break;
                    }
                    n += 1;
                    next = if n < BATCH { rx.recv().now_or_never().flatten() } else { None };
                }
                ok = ok && ws.flush().await.is_ok();
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                for reply in handle(&text, &id, &from_field, &registry, &mut joined) {
                    if ws.feed(Message::Text(reply.into())).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                // Flush when nothing else is ready to be read in this batch.
                ok = ok && ws.flush().await.is_ok();
            }
        }
    }
    if let Ok(mut reg) = registry.lock() {
        reg.peers.remove(&id);
        for room in joined {
            leave(&mut reg, &room, &id);
        }
    }
}

fn leave(reg: &mut Registry, room: &str, id: &str) {
    let Some(members) = reg.rooms.get_mut(room) else {
        return;
    };
    members.retain(|m| m != id);
    let others = members.clone();
    if others.is_empty() {
        reg.rooms.remove(room);
    }
    let note = serde_json::json!({
        "type": "peer-left", "room": room, "peer_id": id, "reason": "left",
    })
    .to_string();
    for other in others {
        if let Some(tx) = reg.peers.get(&other) {
            let _ = tx.send(note.clone().into());
        }
    }
}

/// Handles one client frame; returns frames for the client itself.
fn handle(
    text: &str,
    id: &str,
    from_field: &str,
    registry: &Shared,
    joined: &mut Vec<String>,
) -> Vec<String> {
    let error = |code: &str| {
        vec![serde_json::json!({"type": "error", "code": code, "message": code}).to_string()]
    };
    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
        return error("bad-json");
    };
    let Ok(mut reg) = registry.lock() else {
        return error("internal");
    };
    match (&*frame.ty, frame.to, frame.room) {
        ("signal", Some(to), _) => {
            let Some(body) = text.trim_start().strip_prefix('{') else {
                return error("bad-json");
            };
            match reg.peers.get(&*to) {
                Some(tx) => {
                    let _ = tx.send(format!("{from_field}{body}").into());
                    Vec::new()
                }
                None => error("unknown-peer"),
            }
        }
        ("join", _, Some(room)) => {
            let members = reg.rooms.entry(room.to_string()).or_default();
            let peers: Vec<_> = members
                .iter()
                .map(|m| serde_json::json!({"id": m, "meta": {}, "region": "reference"}))
                .collect();
            let others = members.clone();
            if !members.iter().any(|m| m == id) {
                members.push(id.to_owned());
                joined.push(room.to_string());
            }
            let note = serde_json::json!({
                "type": "peer-joined", "room": room,
                "peer": {"id": id, "meta": {}, "region": "reference"},
            })
            .to_string();
            for other in others.iter().filter(|o| *o != id) {
                if let Some(tx) = reg.peers.get(other) {
                    let _ = tx.send(note.clone().into());
                }
            }
            vec![serde_json::json!({"type": "joined", "room": room, "peers": peers}).to_string()]
        }
        ("leave", _, Some(room)) => {
            leave(&mut reg, &room, id);
            joined.retain(|r| *r != *room);
            vec![serde_json::json!({"type": "left", "room": room}).to_string()]
        }
        ("ping", _, _) => vec![r#"{"type":"pong"}"#.to_owned()],
        _ => error("unknown-type"),
    }
}

/// A reference server run as a child process of this binary; killed on drop.
pub struct ReferenceChild {
    child: tokio::process::Child,
    pub url: String,
    pub pid: u32,
}

impl ReferenceChild {
    /// Starts `<this exe> reference-server --listen 127.0.0.1:0`, under `taskset -c CPUS` when
    /// given, and reads its address line.
    pub async fn spawn(taskset: Option<&str>, threads: usize) -> Result<Self> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let mut cmd = match taskset {
            Some(cpus) => {
                let mut c = tokio::process::Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&exe);
                c
            }
            None => tokio::process::Command::new(&exe),
        };
        cmd.args(["reference-server", "--listen", "127.0.0.1:0", "--threads"])
            .arg(threads.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawning the reference server")?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("reference server exited at once"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from the reference server"))?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .map_err(|_| anyhow!("reference server printed no address within 10 s"))??;
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .with_context(|| format!("reference server said {line:?}"))?;
        let addr = v
            .get("listening")
            .and_then(|a| a.as_str())
            .ok_or_else(|| anyhow!("reference server said {line:?}"))?;
        Ok(Self {
            child,
            url: format!("ws://{addr}/ws"),
            pid,
        })
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
