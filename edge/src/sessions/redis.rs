//! Sessions in the region's Redis, shared by every edge of the region.
//!
//! Each operation that reads and writes is one Lua script, so it is atomic: in particular
//! [`DELIVER`] (run by the bus for every signal to a peer on another edge) and [`RESUME`]
//! cannot interleave, which is what makes a signal either pending when the resume takes the
//! buffer, or published to the new owner. Keys per peer (all with the session TTL):
//! `heliograph:s:<peer>` (hash: owner, rooms, seq), `heliograph:w:<peer>` (list: replay
//! window), `heliograph:m:<peer>` (list: pending signals, as bus envelopes).

use ::redis::Script;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use heliograph_coordinator::registry::{EdgeId, PeerId};
use std::time::Duration;
use tokio::sync::OnceCell;

use super::{Owner, Restored, StoreError, StoreLimits, StoredRoom};
use crate::bus::Envelope;
use crate::rooms::LocalSession;

const CALL_TIMEOUT: Duration = Duration::from_millis(2_000);
/// Longest a resume waits for the session's previous socket to let go of it.
const TAKEOVER_WAIT: Duration = Duration::from_millis(2_000);
const TAKEOVER_POLL: Duration = Duration::from_millis(20);

pub fn session_key(peer: &str) -> String {
    format!("heliograph:s:{peer}")
}
fn window_key(peer: &str) -> String {
    format!("heliograph:w:{peer}")
}
pub fn pending_key(peer: &str) -> String {
    format!("heliograph:m:{peer}")
}

/// A signal for a peer on another edge, or for a peer without a socket. The owner is
/// `<edge>/<nonce>`: a signal goes to the owner's edge unless that is the caller (which has
/// no socket for the peer: it is being detached there).
/// KEYS: session, pending. ARGV: caller edge, channel prefix, envelope, max pending, ttl ms,
/// deposit (1: the caller has no socket for the peer).
/// Returns 1: published to the owner's channel; 2: queued in the pending buffer; 0: no
/// session; -1: the pending buffer is full; 3: the caller owns the session (the peer
/// resumed there since the caller routed the signal): deliver it there.
pub const DELIVER: &str = r#"
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return 0 end
local edge = string.match(owner, '^(.*)/')
if edge and edge ~= ARGV[1] then
  if redis.call('PUBLISH', ARGV[2] .. edge, ARGV[3]) > 0 then return 1 end
elseif edge and ARGV[6] == '0' then
  return 3
end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[4]) then return -1 end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 2
"#;

/// KEYS: session, window, pending. ARGV: owner, ttl ms.
const OPEN: &str = r#"
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'rooms', '[]', 'seq', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: session. ARGV: owner, rooms json, ttl ms.
const SAVE_ROOMS: &str = r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'rooms', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// KEYS: session, window, pending. ARGV: owner, ttl ms, seq, window length, window frames...,
/// unsent signals... (oldest first; they go in front of the pending buffer).
const DETACH: &str = r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', '', 'seq', ARGV[3])
redis.call('DEL', KEYS[2])
local n = tonumber(ARGV[4])
for i = 5, 4 + n do redis.call('RPUSH', KEYS[2], ARGV[i]) end
for i = #ARGV, 5 + n, -1 do redis.call('LPUSH', KEYS[3], ARGV[i]) end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
return 1
"#;

/// KEYS: session, window, pending. ARGV: owner, ttl ms, force (0/1), channel prefix.
/// Returns {} without a session; {'busy'} while another socket still holds the session on
/// a live edge (it is storing what it holds; unless `force`); else
/// {rooms, seq, #window, window..., pending...}.
const RESUME: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local current = redis.call('HGET', KEYS[1], 'owner')
local edge = string.match(current, '^(.*)/')
if ARGV[3] == '0' and edge and current ~= ARGV[1] then
  local subs = redis.call('PUBSUB', 'NUMSUB', ARGV[4] .. edge)
  if tonumber(subs[2]) > 0 then return {'busy'} end
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
local rooms = redis.call('HGET', KEYS[1], 'rooms') or '[]'
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
local window = redis.call('LRANGE', KEYS[2], 0, -1)
local pending = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local out = {rooms, seq, tostring(#window)}
for _, f in ipairs(window) do out[#out + 1] = f end
for _, f in ipairs(pending) do out[#out + 1] = f end
return out
"#;

/// KEYS: session, window, pending. ARGV: owner ('' = whoever owns it).
/// Returns the pending signals, and deletes the session.
const END: &str = r#"
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {} end
local pending = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return pending
"#;

/// KEYS: session, pending. ARGV: owner, rooms json, ttl ms.
/// Keeps a connected session alive (and stores it again if Redis lost it, e.g. after a
/// restart); hands back signals that reached its pending buffer.
const REFRESH: &str = r#"
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'rooms', ARGV[2], 'seq', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {}
end
if owner ~= ARGV[1] then return {} end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if redis.call('LLEN', KEYS[2]) == 0 then return {} end
local pending = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return pending
"#;

pub struct RedisStore {
    client: ::redis::Client,
    me: EdgeId,
    limits: StoreLimits,
    conn: OnceCell<ConnectionManager>,
    open: Script,
    save_rooms: Script,
    detach: Script,
    resume: Script,
    end: Script,
    refresh: Script,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl RedisStore {
    pub fn new(client: ::redis::Client, me: EdgeId, limits: StoreLimits) -> Self {
        Self {
            client,
            me,
            limits,
            conn: OnceCell::new(),
            open: Script::new(OPEN),
            save_rooms: Script::new(SAVE_ROOMS),
            detach: Script::new(DETACH),
            resume: Script::new(RESUME),
            end: Script::new(END),
            refresh: Script::new(REFRESH),
        }
    }

    /// The shared, multiplexed connection; it reconnects by itself after a failure.
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CALL_TIMEOUT))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_number_of_retries(1);
                tokio::time::timeout(
                    CALL_TIMEOUT,
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
                .await
                .map_err(|_| StoreError("connecting timed out".into()))?
                .map_err(err)
            })
            .await?;
        Ok(conn.clone())
    }

    async fn call<T: ::redis::FromRedisValue>(
        &self,
        invocation: &mut ::redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| StoreError("timed out".into()))?
            .map_err(err)
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
        let json = serde_json::to_string(rooms).map_err(err)?;
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
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        let reply = loop {
            let force = tokio::time::Instant::now() >= deadline;
            let mut inv = self.resume.prepare_invoke();
            inv.key(&Self::keys3(peer.as_str())[..])
                .arg(owner.as_str())
                .arg(self.limits.ttl_ms())
                .arg(u8::from(force))
                .arg(crate::bus::CHANNEL_PREFIX);
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
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(err);
        let mut parts = reply.into_iter();
        let mut next = || {
            parts
                .next()
                .ok_or_else(|| StoreError("short resume reply".into()))
        };
        let rooms: Vec<StoredRoom> = serde_json::from_slice(&next()?).map_err(err)?;
        let seq: u64 = text(&next()?)?.parse().map_err(err)?;
        let window_len: usize = text(&next()?)?.parse().map_err(err)?;
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
            let rooms = serde_json::to_string(&s.rooms).map_err(err)?;
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
