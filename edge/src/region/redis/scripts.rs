//! The Lua scripts of the region's Redis. Each operation that reads and writes is one script,
//! so it is atomic: in particular [`DELIVER`] (run by the bus for every signal to a peer on
//! another edge) and [`RESUME`] cannot interleave, which is what makes a signal either
//! pending when the resume takes the buffer, or published to the new owner.

/// A signal for a peer on another edge, or for a peer without a socket. The owner is
/// `<edge>/<nonce>`: a signal goes to the owner's edge unless that is the caller (which has
/// no socket for the peer: it is being detached there).
/// KEYS: session, pending. ARGV: caller edge, channel prefix, envelope, max pending, ttl ms,
/// deposit (1: the caller has no socket for the peer).
/// Returns 1: published to the owner's channel; 2: queued in the pending buffer; 0: no
/// session; -1: the pending buffer is full; 3: the caller owns the session (the peer
/// resumed there since the caller routed the signal): deliver it there.
pub(super) const DELIVER: &str = r#"
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
pub(super) const OPEN: &str = r#"
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'rooms', '[]', 'seq', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: session. ARGV: owner, rooms json, ttl ms.
pub(super) const SAVE_ROOMS: &str = r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'rooms', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// KEYS: session, window, pending. ARGV: owner, ttl ms, seq, window length, window frames...,
/// unsent signals... (oldest first; they go in front of the pending buffer).
pub(super) const DETACH: &str = r#"
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
pub(super) const RESUME: &str = r#"
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
pub(super) const END: &str = r#"
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {} end
local pending = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return pending
"#;

/// KEYS: session, pending. ARGV: owner, rooms json, ttl ms.
/// Keeps a connected session alive (and stores it again if Redis lost it, e.g. after a
/// restart); hands back signals that reached its pending buffer.
pub(super) const REFRESH: &str = r#"
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
