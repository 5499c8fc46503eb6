//! The region's Redis as the bus between its edges (pub/sub).
//!
//! Three tracked tasks per edge:
//! - the subscriber keeps a subscription to this edge's own channel and hands what arrives
//!   to the local targets; it reconnects with backoff when the connection drops;
//! - the health check keeps a publish connection, pings it, and after a failure retries
//!   with backoff until Redis answers again, then traffic switches back to Redis;
//! - the publisher takes signals from a bounded queue and publishes them in order, a batch
//!   per pipeline.
//!
//! Every signal is handed over by one Lua script ([`super::scripts::DELIVER`]): published on
//! the channel of the edge that owns the target's session now, or, when that edge does not
//! listen (it died) or the target has no socket, kept in the target's pending buffer until
//! it resumes. A target without a session in Redis, every signal while Redis is marked
//! down, and every signal of a failed or timed-out call take the coordinator path. A
//! publish that timed out may still have arrived, so a signal can then (rarely) arrive
//! twice; the timeout is long compared with a healthy publish to keep that rare.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use heliograph_coordinator::registry::EdgeId;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connect::RedisSettings;
use super::in_flight::InFlight;
use super::keys::{CHANNEL_PREFIX, channel, pending_key, session_key};
use super::scripts::DELIVER;
use crate::metrics::{EdgeMetrics, RedisOp, RoutingPath};
use crate::region::hooks::{Hook, Hooks};
use crate::signal::Envelope;

/// Signals queued for publishing before new ones take the coordinator path.
pub const DEFAULT_PUBLISH_QUEUE: usize = 4 * 1024;
/// Signals published in one pipeline at most.
const PUBLISH_BATCH: usize = 64;
/// Longest a publish (or a health ping) may take before Redis counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_millis(1_000);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Interval of health pings while Redis is up: an idle edge notices an outage this soon.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the bus needs to hand signals to resumable sessions (see [`super::store`]).
#[derive(Debug, Clone, Copy)]
pub struct Mailboxes {
    /// Signals a detached peer's pending buffer holds.
    pub max_pending: usize,
    /// TTL of a pending buffer, as of its last signal.
    pub ttl_ms: u64,
}

pub struct RedisBus {
    /// Where to connect: the settings' server, or the master Sentinel names at each connect.
    settings: Arc<RedisSettings>,
    mailboxes: Mailboxes,
    /// Where signals go that this bus does not publish (see [`Hooks`]).
    hooks: Hooks,
    in_flight: InFlight,
    /// Markers this edge published on its own channel, by nonce, and who waits for them.
    markers: std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    me: EdgeId,
    /// Signals to hand over, each with whether it is a deposit (this edge has no socket
    /// for its target).
    queue: mpsc::Sender<(Envelope, bool)>,
    /// The publish connection answered its last call.
    publish_up: AtomicBool,
    /// This edge's subscription is in place.
    subscribed: AtomicBool,
    manager: RwLock<Option<ConnectionManager>>,
    /// Wakes the health check at once after a failed publish.
    recheck: Notify,
    metrics: Arc<EdgeMetrics>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl RedisBus {
    /// Starts the bus tasks for edge `me`; what it does not publish goes to `hooks`.
    pub fn start(
        settings: Arc<RedisSettings>,
        me: EdgeId,
        queue: usize,
        mailboxes: Mailboxes,
        hooks: Hooks,
        metrics: Arc<EdgeMetrics>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let this = Arc::new(Self {
            settings,
            mailboxes,
            hooks: hooks.clone(),
            in_flight: InFlight::default(),
            markers: std::sync::Mutex::new(std::collections::HashMap::new()),
            me,
            queue: tx,
            publish_up: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            manager: RwLock::new(None),
            recheck: Notify::new(),
            metrics,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        this.tasks.spawn(Arc::clone(&this).subscribe(hooks.inbound));
        this.tasks.spawn(Arc::clone(&this).health());
        this.tasks.spawn(Arc::clone(&this).publish_loop(rx));
        this
    }

    pub fn is_up(&self) -> bool {
        self.publish_up.load(Ordering::SeqCst) && self.subscribed.load(Ordering::SeqCst)
    }

    /// Queues a signal; `Err` gives it back when Redis is down or the queue is full. With
    /// `deposit`, this edge has no socket for the target (it goes to its pending buffer
    /// unless another edge owns the session now).
    pub fn publish(&self, envelope: Envelope, deposit: bool) -> Result<(), Box<Envelope>> {
        if !self.is_up() {
            return Err(Box::new(envelope));
        }
        self.in_flight.add(&envelope);
        self.queue.try_send((envelope, deposit)).map_err(|e| {
            let e = match e {
                mpsc::error::TrySendError::Full((e, _))
                | mpsc::error::TrySendError::Closed((e, _)) => e,
            };
            self.in_flight.done(&e.to_peer, &e.from_peer);
            Box::new(e)
        })
    }

    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// Resolves once everything published on this edge's channel before the call has been
    /// read by its subscription (a marker went round); false when that could not be shown
    /// within `within` (Redis down, or slow).
    pub async fn round_trip(&self, within: Duration) -> bool {
        let nonce = format!("{:016x}", rand::random::<u64>());
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.markers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(nonce.clone(), tx);
        let marker = Envelope {
            to_edge: self.me.clone(),
            to_peer: String::new(),
            room: String::new(),
            frame: nonce.clone(),
            sent_at_us: 0,
            from_region: String::new(),
            from_peer: String::new(),
            reference: String::new(),
        };
        let manager = self
            .manager
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let done = match manager {
            Some(mut conn) => {
                let published = tokio::time::timeout(
                    within,
                    redis::cmd("PUBLISH")
                        .arg(channel(&self.me))
                        .arg(marker.encode())
                        .query_async::<i64>(&mut conn),
                )
                .await;
                matches!(published, Ok(Ok(n)) if n > 0)
                    && tokio::time::timeout(within, rx).await.is_ok()
            }
            None => false,
        };
        self.markers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&nonce);
        done
    }

    fn marker_seen(&self, nonce: &str) {
        let waiter = self
            .markers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(nonce);
        if let Some(tx) = waiter {
            let _ = tx.send(());
        }
    }

    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn set_up(&self, flag: &AtomicBool, up: bool) {
        flag.store(up, Ordering::SeqCst);
        self.metrics
            .redis_up
            .set(if self.is_up() { 1.0 } else { 0.0 });
    }

    /// Waits `backoff` (or until stopped); returns false when stopped.
    async fn pause(&self, backoff: &mut Duration) -> bool {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(wait) => true,
        }
    }

    async fn subscribe(self: Arc<Self>, inbound: Hook) {
        let channel = channel(&self.me);
        let mut backoff = BACKOFF_MIN;
        while !self.stop.is_cancelled() {
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let client = self.settings.master_client().await?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            let pubsub = match connected {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    self.failed(RedisOp::Subscribe, &e.to_string());
                    if !self.pause(&mut backoff).await {
                        return;
                    }
                    continue;
                }
                Err(_) => {
                    self.failed(RedisOp::Subscribe, "timed out");
                    if !self.pause(&mut backoff).await {
                        return;
                    }
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            self.set_up(&self.subscribed, true);
            tracing::info!(%channel, "subscribed to this edge's Redis channel");
            let mut messages = pubsub.into_on_message();
            loop {
                let next = tokio::select! {
                    () = self.stop.cancelled() => break,
                    m = messages.next() => m,
                };
                let Some(msg) = next else {
                    self.failed(RedisOp::Subscribe, "the subscription ended");
                    break;
                };
                match Envelope::decode(&self.me, msg.get_payload_bytes()) {
                    Ok(envelope) if envelope.to_peer.is_empty() => {
                        self.marker_seen(&envelope.frame)
                    }
                    Ok(envelope) => inbound(envelope),
                    Err(e) => self.failed(RedisOp::Decode, &e.to_string()),
                }
            }
            self.set_up(&self.subscribed, false);
        }
    }

    fn failed(&self, op: RedisOp, error: &str) {
        self.metrics.redis_error(op);
        tracing::warn!(op = op.as_str(), error, "Redis bus");
    }

    /// Keeps the publish connection and its health; see the module docs.
    async fn health(self: Arc<Self>) {
        let mut backoff = BACKOFF_MIN;
        while !self.stop.is_cancelled() {
            let manager = self
                .manager
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let manager = match manager {
                Some(m) => m,
                None => match self.connect().await {
                    Ok(m) => {
                        *self.manager.write().unwrap_or_else(PoisonError::into_inner) =
                            Some(m.clone());
                        m
                    }
                    Err(e) => {
                        self.failed(RedisOp::Connect, &e);
                        if !self.pause(&mut backoff).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let mut conn = manager;
            let ping = tokio::time::timeout(
                CALL_TIMEOUT,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            let ok = matches!(ping, Ok(Ok(_)));
            if !ok {
                let error = match ping {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                self.failed(RedisOp::Ping, &error);
                self.forget_master();
            }
            let was_up = self.publish_up.load(Ordering::SeqCst);
            self.set_up(&self.publish_up, ok);
            if ok && !was_up {
                tracing::info!("Redis bus reachable: same-region signals use Redis");
            }
            if ok {
                backoff = BACKOFF_MIN;
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    () = tokio::time::sleep(HEALTH_INTERVAL) => {}
                    () = self.recheck.notified() => {}
                }
            } else if !self.pause(&mut backoff).await {
                return;
            }
        }
    }

    /// With Sentinel, the next connection asks the sentinels again: a connection manager
    /// would otherwise keep reconnecting to a master that failed over.
    fn forget_master(&self) {
        if self.settings.sentinel.is_some() {
            *self.manager.write().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    async fn connect(&self) -> Result<ConnectionManager, String> {
        let client = tokio::time::timeout(CONNECT_TIMEOUT, self.settings.master_client())
            .await
            .map_err(|_| "naming the master timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(BACKOFF_MAX);
        tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())
    }

    async fn publish_loop(self: Arc<Self>, mut rx: mpsc::Receiver<(Envelope, bool)>) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            let first = tokio::select! {
                () = self.stop.cancelled() => break,
                e = rx.recv() => e,
            };
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < PUBLISH_BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            self.publish_batch(&mut batch).await;
        }
        // Stopping: what is still queued takes the coordinator path.
        rx.close();
        while let Ok((e, _)) = rx.try_recv() {
            self.in_flight.done(&e.to_peer, &e.from_peer);
            (self.hooks.fallback)(e);
        }
    }

    async fn publish_batch(&self, batch: &mut Vec<(Envelope, bool)>) {
        let manager = self
            .manager
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(mut conn) = manager.filter(|_| self.publish_up.load(Ordering::SeqCst)) else {
            batch.drain(..).for_each(|(e, _)| {
                self.in_flight.done(&e.to_peer, &e.from_peer);
                (self.hooks.fallback)(e)
            });
            return;
        };
        // Each signal goes to whichever edge owns its target's session now (not the edge
        // the registry named, which may be gone), or to the target's pending buffer.
        let mut pipe = redis::pipe();
        for (e, deposit) in batch.iter() {
            pipe.cmd("EVAL")
                .arg(DELIVER)
                .arg(2)
                .arg(session_key(&e.to_peer))
                .arg(pending_key(&e.to_peer))
                .arg(self.me.as_str())
                .arg(CHANNEL_PREFIX)
                .arg(e.encode())
                .arg(self.mailboxes.max_pending)
                .arg(self.mailboxes.ttl_ms)
                .arg(u8::from(*deposit));
        }
        let sent =
            tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<Vec<i64>>(&mut conn)).await;
        match sent {
            Ok(Ok(receivers)) if receivers.len() == batch.len() => {
                for ((e, _), outcome) in batch.drain(..).zip(receivers) {
                    // It stops counting once handed over (to the outbox, for outcome 3).
                    let (to, from) = (e.to_peer.clone(), e.from_peer.clone());
                    match outcome {
                        1 => self.metrics.routed(RoutingPath::Region),
                        2 => self.metrics.routed(RoutingPath::Pending),
                        -1 => (self.hooks.expired)(e),
                        // The target resumed on this edge meanwhile.
                        3 => (self.hooks.inbound)(e),
                        // No session in Redis (it was never stored, or Redis lost it): the
                        // edge the registry names is the best guess left.
                        _ => (self.hooks.fallback)(e),
                    }
                    self.in_flight.done(&to, &from);
                }
            }
            other => {
                let error = match other {
                    Ok(Ok(_)) => "unexpected reply".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
                self.failed(RedisOp::Publish, &error);
                self.set_up(&self.publish_up, false);
                self.forget_master();
                self.recheck.notify_one();
                batch.drain(..).for_each(|(e, _)| {
                    self.in_flight.done(&e.to_peer, &e.from_peer);
                    (self.hooks.fallback)(e)
                });
            }
        }
    }
}
