//! How cluster connections notice a peer that stopped answering (a frozen process, a
//! half-open connection) within about a second, rather than at the next call's timeout:
//! HTTP/2 pings, idle or not, on the channels whose users must move on (an edge's link to its
//! replica, writes forwarded to the leader, relays between replicas). Raft's own channels
//! keep a slow keepalive: openraft notices an unresponsive peer by itself.

use std::time::Duration;

/// Interval of HTTP/2 pings on those channels.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(400);
/// A ping unanswered this long closes the connection; its calls fail and its users move on.
/// Pings are answered by the connection's own task, not behind the calls on it, so a live
/// process answers well within this even under load.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(600);
/// Streams a client may open and reset before the server has accepted them. A replica that
/// was frozen wakes up to every stream its callers opened and then gave up on meanwhile;
/// h2's default (20) would make it drop those connections with an error.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 4_096;
