//! Sessions in the region's Redis, shared by every edge of the region (keys in
//! [`super::keys`], one atomic Lua script per operation in [`super::scripts`]).

use ::redis::Script;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use heliograph_coordinator::registry::{EdgeId, PeerId};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore};

use super::connect::RedisSettings;
use super::keys::{CHANNEL_PREFIX, pending_key, session_key, window_key};
use super::scripts::{DETACH, END, OPEN, REFRESH, RESUME, SAVE_ROOMS};
use crate::region::error::StoreError;
use crate::session::{LocalSession, Owner, Restored, StoreLimits, StoredRoom};
use crate::signal::Envelope;

const CALL_TIMEOUT: Duration = Duration::from_millis(2_000);
/// Calls in flight on the pool at once; further calls wait their turn, at most
/// `QUEUE_TIMEOUT`, before their own `CALL_TIMEOUT` starts. When every client of a dead edge
/// reconnects here at once, tens of thousands of calls would otherwise be written to Redis
/// together and the last ones time out while Redis is still working through the first.
const MAX_CALLS_IN_FLIGHT: usize = 128;
const QUEUE_TIMEOUT: Duration = Duration::from_millis(10_000);
/// Longest a resume waits for a socket on another live edge that still holds the session
/// (it is storing what it holds) before taking the session anyway.
const REMOTE_HOLDER_WAIT: Duration = Duration::from_millis(2_000);
const TAKEOVER_POLL: Duration = Duration::from_millis(20);

pub struct RedisStore {
    /// Where to connect: the settings' server, or the master Sentinel names at each connect.
    settings: Arc<RedisSettings>,
    me: EdgeId,
    limits: StoreLimits,
    /// A small pool: each call takes the next multiplexed connection, so that many
    /// concurrent calls (a storm of resumes) do not queue behind one socket.
    conns: Vec<Mutex<Option<ConnectionManager>>>,
    next: AtomicUsize,
    /// Places for calls in flight (see [`MAX_CALLS_IN_FLIGHT`]).
    calls: Semaphore,
    open: Script,
    save_rooms: Script,
    detach: Script,
    resume: Script,
    end: Script,
    refresh: Script,
}

impl RedisStore {
    pub fn new(settings: Arc<RedisSettings>, me: EdgeId, limits: StoreLimits) -> Self {
        let connections = settings.connections.max(1);
        Self {
            settings,
            me,
            limits,
            conns: (0..connections).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            calls: Semaphore::new(MAX_CALLS_IN_FLIGHT),
            open: Script::new(OPEN),
            save_rooms: Script::new(SAVE_ROOMS),
            detach: Script::new(DETACH),
            resume: Script::new(RESUME),
            end: Script::new(END),
            refresh: Script::new(REFRESH),
        }
    }

    /// The next connection of the pool (multiplexed; it reconnects by itself after a failure,
    /// or with Sentinel is made anew to the current master, see [`Self::call`]).
    async fn conn(&self) -> Result<(usize, ConnectionManager), StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let mut slot = self.conns[i].lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok((i, conn.clone()));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(CALL_TIMEOUT, async {
            let client = self.settings.master_client().await?;
            ConnectionManager::new_with_config(client, config).await
        })
        .await
        .map_err(|_| StoreError::TimedOut)?
        .map_err(StoreError::Redis)?;
        *slot = Some(conn.clone());
        Ok((i, conn))
    }

    async fn call<T: ::redis::FromRedisValue>(
        &self,
        invocation: &mut ::redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let _place = tokio::time::timeout(QUEUE_TIMEOUT, self.calls.acquire())
            .await
            .map_err(|_| StoreError::TimedOut)?
            .map_err(|_| StoreError::TimedOut)?;
        let (slot, mut conn) = self.conn().await?;
        let result = tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| StoreError::TimedOut)
            .and_then(|r| r.map_err(StoreError::Redis));
        if result.is_err() && self.settings.sentinel.is_some() {
            // The master may have failed over: the next call on this slot asks again.
            *self.conns[slot].lock().await = None;
        }
        result
    }

    fn keys3(peer: &str) -> [String; 3] {
        [session_key(peer), window_key(peer), pending_key(peer)]
    }

    pub async fn open(&self, peer: &PeerId, owner: &Owner) -> Result<(), StoreError> {
        let mut inv = self.open.prepare_invoke();
        inv.key(&Self::keys3(peer.as_str())[..])
            .arg(owner.as_str())
            .arg(self.limits.ttl_ms());
        self.call::<i64>(&mut inv).await.map(|_| ())
    }

    pub async fn save_rooms(
        &self,
        peer: &PeerId,
        owner: &Owner,
        rooms: &[StoredRoom],
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(rooms).map_err(StoreError::Json)?;
        let mut inv = self.save_rooms.prepare_invoke();
        inv.key(session_key(peer.as_str()))
            .arg(owner.as_str())
            .arg(json)
            .arg(self.limits.ttl_ms());
        self.call::<i64>(&mut inv).await.map(|_| ())
    }

    pub async fn detach(
        &self,
        peer: &PeerId,
        owner: &Owner,
        seq: u64,
        window: Vec<String>,
        unsent: Vec<Envelope>,
    ) -> Result<bool, StoreError> {
        let mut inv = self.detach.prepare_invoke();
        inv.key(&Self::keys3(peer.as_str())[..])
            .arg(owner.as_str())
            .arg(self.limits.ttl_ms())
            .arg(seq)
            .arg(window.len());
        for frame in window {
            inv.arg(frame);
        }
        for e in unsent {
            inv.arg(e.encode());
        }
        self.call::<i64>(&mut inv).await.map(|n| n == 1)
    }

    pub async fn resume(
        &self,
        peer: &PeerId,
        owner: &Owner,
    ) -> Result<Option<Restored>, StoreError> {
        // A socket on a live edge that still holds the session is storing what it holds
        // (a drain closes first, then stores): wait for it, but not for ever.
        let deadline = tokio::time::Instant::now() + REMOTE_HOLDER_WAIT;
        let reply = loop {
            let force = tokio::time::Instant::now() >= deadline;
            let mut inv = self.resume.prepare_invoke();
            inv.key(&Self::keys3(peer.as_str())[..])
                .arg(owner.as_str())
                .arg(self.limits.ttl_ms())
                .arg(u8::from(force))
                .arg(CHANNEL_PREFIX);
            let reply: Vec<Vec<u8>> = self.call(&mut inv).await?;
            if reply.len() == 1 && reply[0] == b"busy" {
                tokio::time::sleep(TAKEOVER_POLL).await;
                continue;
            }
            break reply;
        };
        if reply.is_empty() {
            return Ok(None);
        }
        let text =
            |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| StoreError::BadReply("not UTF-8"));
        let mut parts = reply.into_iter();
        let mut next = || {
            parts
                .next()
                .ok_or(StoreError::BadReply("short resume reply"))
        };
        let rooms: Vec<StoredRoom> = serde_json::from_slice(&next()?).map_err(StoreError::Json)?;
        let seq: u64 = text(&next()?)?
            .parse()
            .map_err(|_| StoreError::BadReply("seq is not a number"))?;
        let window_len: usize = text(&next()?)?
            .parse()
            .map_err(|_| StoreError::BadReply("window length is not a number"))?;
        let rest: Vec<Vec<u8>> = parts.collect();
        let (window, pending) = rest.split_at(window_len.min(rest.len()));
        Ok(Some(Restored {
            rooms,
            seq,
            window: window.iter().map(|b| text(b)).collect::<Result<_, _>>()?,
            pending: self.envelopes(pending),
        }))
    }

    pub async fn end(
        &self,
        peer: &PeerId,
        owner: Option<&Owner>,
    ) -> Result<Vec<Envelope>, StoreError> {
        let mut inv = self.end.prepare_invoke();
        inv.key(&Self::keys3(peer.as_str())[..])
            .arg(owner.map_or("", Owner::as_str));
        let reply: Vec<Vec<u8>> = self.call(&mut inv).await?;
        Ok(self.envelopes(&reply))
    }

    pub async fn refresh(&self, sessions: &[LocalSession]) -> Result<Vec<Envelope>, StoreError> {
        let mut found = Vec::new();
        for s in sessions {
            let rooms = serde_json::to_string(&s.rooms).map_err(StoreError::Json)?;
            let mut inv = self.refresh.prepare_invoke();
            inv.key(session_key(s.peer.as_str()))
                .key(pending_key(s.peer.as_str()))
                .arg(s.owner.as_str())
                .arg(rooms)
                .arg(self.limits.ttl_ms());
            let reply: Vec<Vec<u8>> = self.call(&mut inv).await?;
            found.extend(self.envelopes(&reply));
        }
        Ok(found)
    }

    fn envelopes(&self, raw: &[Vec<u8>]) -> Vec<Envelope> {
        raw.iter()
            .filter_map(|b| match Envelope::decode(&self.me, b) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable pending signal in Redis");
                    None
                }
            })
            .collect()
    }
}
