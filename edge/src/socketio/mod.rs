//! The Socket.IO ingress (`--socketio`): `/socket.io/`, Engine.IO v4 over WebSocket and HTTP
//! long-polling, served by `socketioxide` as a tower layer on the edge's router. Its clients
//! speak the dialect of common Node.js signaling servers (`dialect`) and are full members of
//! Heliograph rooms: each one is an [`IngressSession`](crate::connection::ingress), so joins,
//! leaves and signals go through the native session's code (`translate` maps the events).
//!
//! - this file: the layer, admission (the native limits, refused as `connect_error`) and the
//!   socket's handlers, which queue events in order for its task;
//! - [`session`]: that task; [`translate`]: events ↔ native frames; [`dialect`]: event names.
//!
//! A Socket.IO peer's id is its socket's id (`socket.id` on the client). Its session cannot
//! be resumed: a client that reconnects gets a new id and joins again.

mod cors;
pub mod dialect;
mod session;
mod translate;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::middleware;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts, MessageHandler, Value as SioValue};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::Socket;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admission;
use crate::context::EdgeContext;
use crate::limits::ConnectionSlot;
use crate::listener::Peer;
use crate::protocol::{ErrorCode, SignalKind};
use crate::shutdown::Stage;
use dialect::Dialect;
use session::{EventArgs, Feed, Input};
use translate::Request;

/// Events of one client read but not yet served: `--rate-limit-burst`, within these bounds.
/// Beyond it events are dropped and the client told `rate-limited` (the rate limit proper is
/// the native one, applied by the session as it serves them).
const INPUT_QUEUE_BOUNDS: (usize, usize) = (16, 4096);
/// How much larger than `--max-frame-bytes` a Socket.IO packet may be before the transport
/// itself refuses it (closing the connection): below that, an event over the limit is
/// answered with `too-large` and the connection stays.
const TRANSPORT_LIMIT_FACTOR: usize = 4;

/// A connection's place in the limits, from admission to its session (socket extensions
/// hold clonable values only).
type SlotCell = Arc<Mutex<Option<ConnectionSlot>>>;

/// The ingress, ready to mount on the edge's router.
pub struct SocketIoIngress {
    layer: SocketIoLayer,
    origins: cors::AllowedOrigins,
}

impl SocketIoIngress {
    /// Builds the layer and its namespace; call within the edge's runtime.
    pub(crate) fn new(ctx: &Arc<EdgeContext>, dialect: Dialect) -> SocketIoIngress {
        let config = &ctx.config;
        let transport_limit = config
            .limits
            .max_frame_bytes
            .saturating_mul(TRANSPORT_LIMIT_FACTOR);
        let (layer, io) = SocketIo::builder()
            .ping_interval(config.ping_interval)
            // A client silent this long after a ping is gone: the native keepalive deadline.
            .ping_timeout(
                config
                    .keepalive_timeout
                    .saturating_sub(config.ping_interval),
            )
            .max_payload(u64::try_from(transport_limit).unwrap_or(u64::MAX))
            .ws_max_message_size(transport_limit)
            .ws_max_frame_size(transport_limit)
            .ws_read_buffer_size(config.socket_buffer_bytes)
            // Socket.IO's own queue per client: full means a slow reader, as for the outbox.
            .max_buffer_size(config.limits.outbox_messages)
            .build_layer();
        let dialect = Arc::new(dialect);
        let admit_ctx = Arc::clone(ctx);
        let connect_ctx = Arc::clone(ctx);
        let admit = move |socket: SocketRef| {
            let ctx = Arc::clone(&admit_ctx);
            async move { admit(&socket, &ctx) }
        };
        let connect = move |socket: SocketRef, TryData(auth): TryData<Value>| {
            let ctx = Arc::clone(&connect_ctx);
            let dialect = Arc::clone(&dialect);
            async move { connected(socket, ctx, dialect, auth.ok()) }
        };
        io.ns("/", connect.with(admit));
        tokio::spawn(close_on_drain(io, Arc::clone(ctx)));
        SocketIoIngress {
            layer,
            origins: cors::AllowedOrigins(Arc::new(config.allowed_origins.clone())),
        }
    }

    /// Wraps `router`: Socket.IO answers `/socket.io/` (with CORS headers for long-polling
    /// from the application's pages) and passes every other request on.
    pub fn mount(self, router: Router) -> Router {
        router
            .layer(self.layer)
            .layer(middleware::from_fn_with_state(self.origins, cors::cors))
    }
}

/// The native admission, for a Socket.IO connection: refused ones get `connect_error` with
/// the reason as its message.
fn admit(socket: &SocketRef, ctx: &EdgeContext) -> Result<(), admission::Refused> {
    let parts = socket.req_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(Peer(addr))| *addr)
        // Every request of the edge's server carries it; without, no address can be counted.
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let slot = admission::admit(ctx, peer, &parts.headers)?;
    socket
        .extensions
        .insert::<SlotCell>(Arc::new(Mutex::new(Some(slot))));
    Ok(())
}

/// Sets up an admitted socket: handlers that queue its events, and its session's task.
fn connected(socket: SocketRef, ctx: Arc<EdgeContext>, dialect: Arc<Dialect>, auth: Option<Value>) {
    let slot = socket
        .extensions
        .remove::<SlotCell>()
        .and_then(|cell| cell.lock().ok()?.take());
    let Some(slot) = slot else {
        tracing::error!("a Socket.IO connection was not admitted");
        let _ = socket.disconnect();
        return;
    };
    let burst = usize::try_from(ctx.config.rate_limit_burst).unwrap_or(usize::MAX);
    let (tx, inputs) = mpsc::channel(burst.clamp(INPUT_QUEUE_BOUNDS.0, INPUT_QUEUE_BOUNDS.1));
    let gone = CancellationToken::new();
    let queue = Queue {
        tx,
        request: None,
        error_event: Arc::from(dialect.error.as_str()),
    };
    let d = &*dialect;
    let events = [
        (&d.join_room, Request::Join),
        (&d.leave_room, Request::Leave),
        (&d.offer, Request::Signal(SignalKind::Offer)),
        (&d.answer, Request::Signal(SignalKind::Answer)),
        (&d.ice_candidate, Request::Signal(SignalKind::Candidate)),
        (&d.signal, Request::Signal(SignalKind::Custom)),
    ];
    for (event, request) in events {
        let queue = Queue {
            request: Some(request),
            ..queue.clone()
        };
        socket.on(event.clone(), queue);
    }
    socket.on_fallback(queue);
    let cancel = gone.clone();
    socket.on_disconnect(move || {
        cancel.cancel();
        async {}
    });
    let auth = translate::Auth::from_payload(auth.as_ref());
    let feed = Feed { inputs, gone };
    let task = session::run(socket, Arc::clone(&ctx), dialect, auth, feed, slot);
    ctx.connection_tasks.spawn(task);
}

/// The handler of a client's events: queues each one, undecoded, for the socket's task, in
/// the order they arrive. Called by Socket.IO as it reads the event, so it neither decodes
/// nor spawns (a handler of closures would run as one task per event).
#[derive(Clone)]
struct Queue {
    tx: mpsc::Sender<Input>,
    /// What the events it handles ask for; `None` for the fallback (unknown events).
    request: Option<Request>,
    error_event: Arc<str>,
}

/// [`Queue`]'s type parameter of [`MessageHandler`].
struct Queued;

impl MessageHandler<LocalAdapter, Queued> for Queue {
    fn call(&self, socket: Arc<Socket<LocalAdapter>>, mut value: SioValue, ack_id: Option<i64>) {
        let ack = ack_id.map(|_| {
            let Ok(ack) = AckSender::from_message_parts(&socket, &mut value, &ack_id);
            ack
        });
        let request = match self.request {
            Some(request) => Ok(request),
            None => Err(Event::from_message_parts(&socket, &mut value, &ack_id)
                .map(|Event(name)| name)
                .unwrap_or_default()),
        };
        let args = match &value {
            SioValue::Str(_, None) => EventArgs::Packet(value),
            SioValue::Str(_, Some(binaries)) if binaries.is_empty() => EventArgs::Packet(value),
            // Binary attachments: Socket.IO puts them in place of their placeholders.
            _ => {
                let decoded = TryData::<Value>::from_message_parts(&socket, &mut value, &ack_id);
                let decoded = match decoded {
                    Ok(TryData(Ok(Value::Array(args)))) => Value::Array(args),
                    Ok(TryData(Ok(arg))) => Value::Array(vec![arg]),
                    _ => Value::Array(Vec::new()),
                };
                EventArgs::Decoded(decoded.to_string())
            }
        };
        let input = Input {
            request,
            args,
            ack,
            at: Instant::now(),
        };
        // Full: the client sends faster than it is served. Closed: the session has ended (the
        // socket is going too), nothing to tell.
        if let Err(mpsc::error::TrySendError::Full(input)) = self.tx.try_send(input) {
            let code = ErrorCode::RateLimited;
            let payload = json!({"code": code.as_str(), "message": "too many events queued"});
            let _ = socket.emit(&*self.error_event, &payload);
            if let Some(ack) = input.ack {
                let _ = ack.send(&json!({"ok": false, "code": code.as_str()}));
            }
        }
    }
}

/// When the edge drains, every Socket.IO transport is closed (not the namespace): client
/// libraries then reconnect by themselves, through the load balancer, to another edge.
async fn close_on_drain(io: SocketIo, ctx: Arc<EdgeContext>) {
    ctx.shutdown.reached(Stage::Draining).await;
    let open = io.sockets().len();
    if open > 0 {
        tracing::info!(open, "draining: closing the Socket.IO connections");
        ctx.metrics.drain_notices.increment(open as u64);
    }
    io.close().await;
}
