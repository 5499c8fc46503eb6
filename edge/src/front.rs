//! Serving the main listener's connections.
//!
//! Each accepted connection gets a task that reads its first bytes. When they hold a whole,
//! valid WebSocket handshake for `/ws` ([`upgrade::direct`]), the task admits the client and
//! becomes its session, whose first write carries the `101` with the `welcome`. A client's
//! connection never meets HTTP again, so building
//! hyper's connection state, its request, the router's extractors and the hand-over of the
//! upgraded connection to another task was a large part of what a connection cost in a
//! reconnect storm. Every other connection (another path, a head that came in pieces, a
//! handshake the checks refuse) is served by hyper and axum's router as before, with the bytes
//! already read put back in front ([`Prefixed`]), so its answers are the ones it always got.
//!
//! A connection that sends no whole request head within `--handshake-timeout-ms` is closed
//! (the first read here, hyper's header timeout after it) and counted as refused.
//!
//! Shutdown: at `Draining` the listener stops accepting, connections not yet read are closed,
//! and HTTP connections finish the request in hand; [`serve`] returns once they have closed.
//! Sessions are tracked by the edge (`connection_tasks`), as before.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use futures_util::FutureExt as _;
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tower::ServiceExt;

use crate::admission;
use crate::connection;
use crate::context::EdgeContext;
use crate::limits::ConnectionSlot;
use crate::listener::{EdgeListener, Peer};
use crate::prefixed::Prefixed;
use crate::protocol::SUBPROTOCOL;
use crate::shutdown::Stage;
use crate::upgrade;

/// Bytes of the first read. A WebSocket handshake is 150–800 bytes (browsers send the
/// longest); a head that does not fit, like one with large cookies, is left to hyper.
const FIRST_READ: usize = 4096;
/// The path of the WebSocket endpoint. The router serves the same path, for handshakes left to
/// it (tests/it/handshake.rs checks both).
pub const WS_PATH: &str = "/ws";
/// The refusal counted when a connection sent no whole request head in time.
const HANDSHAKE_TIMEOUT: &str = "handshake_timeout";

/// Serves `listener` with `router` until the edge starts draining.
pub async fn serve(mut listener: EdgeListener, router: Router, ctx: Arc<EdgeContext>) {
    // Connections not yet a session: waited for before returning.
    let http = TaskTracker::new();
    let draining = ctx.shutdown.reached(Stage::Draining);
    tokio::pin!(draining);
    loop {
        let (stream, peer) = tokio::select! {
            conn = axum::serve::Listener::accept(&mut listener) => conn,
            () = &mut draining => break,
        };
        let conn = connection(stream, peer, router.clone(), Arc::clone(&ctx), http.token());
        tokio::spawn(conn);
    }
    drop(listener);
    http.close();
    http.wait().await;
}

/// One connection: a session if its first read is a handshake for `/ws`, else HTTP.
///
/// Two futures one after the other, not one async block: a block would keep its arguments and
/// the handshake's state in the task for the session's whole life, and most of the edge's
/// memory is idle sessions' tasks.
fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    ctx: Arc<EdgeContext>,
    http: TaskTrackerToken,
) -> impl Future<Output = ()> + Send {
    handshake(stream, peer, router, ctx, http).then(|session| match session {
        Some(session) => Either::Left(session.run()),
        None => Either::Right(std::future::ready(())),
    })
}

/// A client admitted on a direct handshake; its socket holds the `101`, to go out with the
/// `welcome`.
struct Session {
    socket: Box<connection::Socket>,
    ctx: Arc<EdgeContext>,
    slot: ConnectionSlot,
}

impl Session {
    fn run(self) -> impl Future<Output = ()> + Send {
        let tasks = self.ctx.connection_tasks.clone();
        tasks.track_future(connection::run(self.socket, self.ctx, self.slot))
    }
}

/// Reads the first bytes and answers a direct handshake, or serves the connection as HTTP to
/// its end; the session to run, if it became one.
async fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    ctx: Arc<EdgeContext>,
    http: TaskTrackerToken,
) -> Option<Session> {
    let head = tokio::select! {
        head = tokio::time::timeout(ctx.config.handshake_timeout, first_read(&stream)) => head,
        // Nothing read yet: the connection is closed, as hyper closes an idle one.
        () = ctx.shutdown.reached(Stage::Draining) => return None,
    };
    let Ok(head) = head else {
        ctx.metrics.refused(HANDSHAKE_TIMEOUT);
        return None;
    };
    let head = head.ok()?;
    let Some(direct) = upgrade::direct(&head, WS_PATH, SUBPROTOCOL) else {
        let io = Prefixed::new(head, stream);
        // Boxed: hyper's connection state would otherwise size every session's task.
        Box::pin(serve_http(io, peer, router, &ctx)).await;
        drop(http);
        return None;
    };
    drop((router, http));
    let slot = match admission::admit(&ctx, peer, &direct.headers) {
        Ok(slot) => slot,
        Err(refused) => {
            let answer = upgrade::refusal(refused.status(), &refused.to_string());
            let _ = stream.write_all(&answer).await;
            let _ = stream.shutdown().await;
            return None;
        }
    };
    // The `101` goes out with the `welcome`, in one write: the session writes it first thing.
    let rest = head[direct.len..].to_vec();
    let socket = Box::new(connection::Socket::new(stream, rest, direct.response, &ctx));
    Some(Session { socket, ctx, slot })
}

/// The connection's first bytes, as many as one read returns (at most [`FIRST_READ`]).
async fn first_read(stream: &TcpStream) -> std::io::Result<Vec<u8>> {
    // Allocated once the client has sent something: a silent connection holds no buffer.
    stream.readable().await?;
    let mut head = Vec::with_capacity(FIRST_READ);
    loop {
        match stream.try_read_buf(&mut head) {
            Ok(_) => return Ok(head),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stream.readable().await?,
            Err(e) => return Err(e),
        }
    }
}

/// Serves HTTP on `io` through the router until the client closes, the connection is
/// upgraded, or (after the edge starts draining) the request in hand is answered.
async fn serve_http(io: Prefixed, peer: SocketAddr, router: Router, ctx: &EdgeContext) {
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(Peer(peer)));
        router.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.config.handshake_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = ctx.shutdown.reached(Stage::Draining) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        if e.is_timeout() {
            ctx.metrics.refused(HANDSHAKE_TIMEOUT);
        }
        tracing::trace!(error = %e, "HTTP connection ended with an error");
    }
}
