//! The `chaos` scenario's membership checks once the storm has stopped: what the registry
//! lists for each room, read by a fresh observer client (join the room, read
//! `joined.peers`, leave), against what every client believes and sees.
//!
//! - a **ghost**: a member the registry lists whose client believes it is not in the room
//!   (or that is no client of the run);
//! - **missing**: a client believes it is in the room and the registry does not list it;
//! - a **view mismatch**: a client's own view of a room (its `joined` peers and the events
//!   since) differs from the registry's members minus itself;
//! - **unavailable then member**: of the ghosts, those whose last answer for the room was
//!   `unavailable` (the answer did not match the registry).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use futures_util::{StreamExt, stream};
use serde_json::json;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::member::{Answer, Shared, lock};
use crate::client::{Client, Incoming, Target, recv_text};

/// Observers at work at once.
const OBSERVERS: usize = 8;
/// Longest wait for one observer's answer.
const STEP: Duration = Duration::from_secs(10);
/// Attempts of one observer's join (answered `unavailable` right after a fault).
const OBSERVER_ATTEMPTS: usize = 20;
/// Violations described at most.
const SAMPLES: usize = 10;

/// The registry's members of each room.
pub type Registry = HashMap<String, HashSet<String>>;

/// Reads every room's members through observers on the edges in turn.
pub async fn observe(targets: &[Target], rooms: &[String]) -> Result<Registry> {
    let jobs = rooms.iter().enumerate().map(|(i, room)| {
        let target = targets[i % targets.len()].clone();
        async move { (room.clone(), observe_room(&target, room).await) }
    });
    let mut found = Registry::new();
    let mut results = stream::iter(jobs).buffer_unordered(OBSERVERS);
    while let Some((room, r)) = results.next().await {
        found.insert(
            room.clone(),
            r.map_err(|e| anyhow!("observing {room}: {e:#}"))?,
        );
    }
    Ok(found)
}

/// Joins `room` with a fresh client, reads `joined.peers`, leaves and closes.
async fn observe_room(target: &Target, room: &str) -> Result<HashSet<String>> {
    let mut c = Client::connect(target, None).await?;
    let mut members = None;
    for attempt in 0..OBSERVER_ATTEMPTS {
        c.send_json(&json!({"type": "join", "room": room, "ref": attempt}))
            .await?;
        match answer(&mut c, "joined").await? {
            Ok(v) => {
                let peers = v["peers"]
                    .as_array()
                    .ok_or_else(|| anyhow!("joined without peers: {v}"))?;
                members = Some(
                    peers
                        .iter()
                        .filter_map(|p| p["id"].as_str().map(str::to_owned))
                        .collect(),
                );
                break;
            }
            Err(code) if code == "unavailable" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(code) => bail!("join answered {code}"),
        }
    }
    let members = members.ok_or_else(|| anyhow!("every join answered unavailable"))?;
    for attempt in 0..OBSERVER_ATTEMPTS {
        c.send_json(&json!({"type": "leave", "room": room, "ref": 100 + attempt}))
            .await?;
        match answer(&mut c, "left").await? {
            Ok(_) => break,
            Err(code) if code == "unavailable" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // A retry that finds the observer gone: the first attempt left.
            Err(code) if code == "not-in-room" && attempt > 0 => break,
            Err(code) => bail!("leave answered {code}"),
        }
    }
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: Utf8Bytes::from_static("observed"),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), c.ws.close(Some(frame))).await;
    Ok(members)
}

/// The next `ty` frame, or the code of an `error`; room events are skipped.
async fn answer(
    c: &mut Client,
    ty: &str,
) -> Result<std::result::Result<serde_json::Value, String>> {
    for _ in 0..10_000 {
        let text = tokio::time::timeout(STEP, recv_text(&mut c.ws))
            .await
            .map_err(|_| anyhow!("no `{ty}` within {STEP:?}"))??;
        let frame = Incoming::parse(&text)?;
        if frame.ty == ty {
            return Ok(Ok(serde_json::from_str(&text)?));
        }
        if frame.ty == "error" {
            return Ok(Err(frame.code.unwrap_or_default().into_owned()));
        }
    }
    bail!("too many frames without `{ty}`")
}

/// What one look found.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    pub ghosts: u64,
    pub missing: u64,
    pub view_mismatches: u64,
    pub unavailable_then_member: u64,
    pub members: u64,
    pub samples: Vec<String>,
}

impl Findings {
    pub fn clean(&self) -> bool {
        self.ghosts == 0 && self.missing == 0 && self.view_mismatches == 0
    }

    fn sample(&mut self, s: String) {
        if self.samples.len() < SAMPLES {
            self.samples.push(s);
        }
    }
}

/// Compares the registry with every client's belief and view. Clients with a request
/// still unanswered are left out (they are counted as unanswered).
pub fn compare(registry: &Registry, clients: &[Shared]) -> Findings {
    let mut f = Findings::default();
    let mut believed: HashMap<&str, (usize, bool)> = HashMap::new();
    let states: Vec<_> = clients.iter().map(lock).collect();
    for (i, s) in states.iter().enumerate() {
        believed.insert(s.peer_id.as_str(), (i, !s.stuck));
    }
    for (room, members) in registry {
        f.members += members.len() as u64;
        for m in members {
            let Some((i, checkable)) = believed.get(m.as_str()).copied() else {
                f.ghosts += 1;
                f.sample(format!("ghost in {room}: {m} is no client of this run"));
                continue;
            };
            if !checkable {
                continue;
            }
            let view = states[i].rooms.get(room);
            if !view.is_some_and(|v| v.member) {
                f.ghosts += 1;
                let last = view.map(|v| v.last).unwrap_or_default();
                if last == Answer::Unavailable {
                    f.unavailable_then_member += 1;
                }
                let history = view.map(|v| v.history_line()).unwrap_or_default();
                f.sample(format!(
                    "ghost in {room}: {m} (edge {}) believes it is not in the room (last answer {last:?}; history: {history})",
                    states[i].edge
                ));
            }
        }
    }
    for s in states.iter().filter(|s| !s.stuck) {
        for (room, view) in s.rooms.iter().filter(|(_, v)| v.member) {
            let Some(members) = registry.get(room) else {
                continue;
            };
            if !members.contains(&s.peer_id) {
                f.missing += 1;
                f.sample(format!(
                    "missing in {room}: {} (edge {}) believes it is in the room",
                    s.peer_id, s.edge
                ));
                continue;
            }
            let mut expected = members.clone();
            expected.remove(&s.peer_id);
            if view.peers != expected {
                f.view_mismatches += 1;
                let extra: Vec<_> = view.peers.difference(&expected).collect();
                let absent: Vec<_> = expected.difference(&view.peers).collect();
                f.sample(format!(
                    "view of {room} by {} (edge {}): {} extra {extra:?}, {} absent {absent:?} (history: {})",
                    s.peer_id,
                    s.edge,
                    extra.len(),
                    absent.len(),
                    view.history_line()
                ));
            }
        }
    }
    f
}

/// Polls [`compare`] until its views match `registry` (events still on their way) or
/// `within` passes; returns the last findings.
pub async fn settle(registry: &Registry, clients: &[Shared], within: Duration) -> Findings {
    let deadline = Instant::now() + within;
    loop {
        let f = compare(registry, clients);
        if f.view_mismatches == 0 || Instant::now() >= deadline {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
