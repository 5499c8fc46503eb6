//! One client connection: welcome, the read loop, the bounded outbox, keepalive and close.
//!
//! A connection processes its client's requests one at a time (a join finishes before the
//! next frame is read), but keeps writing its outbox and answering keepalive while a registry
//! call is in flight, so a slow commit never makes a peer look dead or slow.
//!
//! - this file: the select loop, and nothing else;
//! - [`requests`](requests): join, leave, signal, ping; [`resume`](resume): taking over a
//!   stored session; [`discovery`](discovery): `list-rooms`;
//! - [`writer`](writer): the socket's writing side (numbering, batching, write deadlines);
//! - [`drain`](drain): `reconnect` and close during a drain; [`ending`](ending): ending or
//!   detaching the session; [`close`](close): close codes and reasons;
//! - [`step`](step): one request's inputs and results; [`welcome`](welcome): token and ICE
//!   servers;
//! - [`ingress`](ingress): the same session for another ingress (Socket.IO), fed native
//!   request frames instead of a socket.

mod close;
mod commit;
mod contacts;
mod discovery;
mod drain;
mod ending;
pub(crate) mod ingress;
mod requests;
mod resume;
mod socket;
mod step;
mod welcome;
mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use heliograph_coordinator::registry::PeerId;
use tokio_tungstenite::tungstenite::Message;

use close::close_code;

use crate::context::EdgeContext;
use crate::limits::{ConnectionSlot, RateLimiter};
use crate::metrics::{CloseReason, Ingress};
use crate::outbox::outbox;
use crate::protocol::{self, DecodeLimits, ErrorCode, ProtocolError, ServerMessage};
use crate::session::Owner;
use crate::session::sequencer::Sequencer;
use crate::shutdown::Stage;
use ending::Identity;
pub use socket::Socket;
use step::{Caller, Handled, Reply, SessionState, error_out};
use writer::Writer;

/// Frames already read from a socket that are served one after the other, before the loop
/// looks at the outbox again.
const READ_BURST: usize = 16;
/// Sends at most one `rate-limited` error per this interval, so a flood is not mirrored.
const RATE_LIMIT_NOTICE_INTERVAL: Duration = Duration::from_secs(1);

/// Serves one client until it leaves, fails, or the edge shuts down. `slot` holds this
/// connection's place in the connection limits until the session ends.
#[allow(clippy::manual_async_fn)] // deliberately not an async fn: see the comment inside
pub fn run(
    socket: Box<Socket>,
    ctx: Arc<EdgeContext>,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send {
    // An async block rather than an async fn: an async fn keeps a second copy of its
    // by-value arguments in every session's task. The socket comes boxed: moved into the
    // writer, it would otherwise still size the block's own copy of it.
    async move {
        let mut me = Identity {
            peer: PeerId::random(),
            owner: Owner::new(&ctx.edge_id),
        };
        let (handle, mut outbox) = outbox(ctx.config.limits.outbox_messages);
        ctx.index
            .add_session(me.peer.clone(), handle.clone(), me.owner.clone());
        // Entered after the drain told the sessions of the index: it drains too.
        if ctx.shutdown.is_draining() {
            handle.drain();
        }
        ctx.metrics.opened(Ingress::Ws);
        // Cold steps are boxed: their futures would otherwise size every idle session's task.
        if let Err(e) = Box::pin(ctx.store().open(&me.peer, &me.owner)).await {
            // The session works; it just cannot be resumed.
            tracing::warn!(error = %e, "could not store a new session");
        }
        let mut writer = Writer::new(socket, Sequencer::new(ctx.config.sessions.replay_window));

        // In a block of its own: the encoded `welcome` (half a kilobyte, with its token and
        // ICE servers) is freed once written, not kept for the session's life.
        let welcomed = {
            let welcome = protocol::encode(&ServerMessage::Welcome {
                peer_id: me.peer.as_str(),
                resume_token: &welcome::issue_token(&ctx, &me.peer),
                region: ctx.region.as_str(),
                edge: ctx.edge_id.as_str(),
                ice_servers: &welcome::ice_servers(&ctx, &me.peer),
                protocol: protocol::SUBPROTOCOL,
            });
            writer.welcome(&welcome, &outbox.kicked, &ctx).await
        };
        let mut reason = None;
        if welcomed.is_err() {
            reason = Some(CloseReason::Abrupt);
        }

        let limits = DecodeLimits {
            max_meta_bytes: ctx.config.limits.max_meta_bytes,
            max_contact_hashes: ctx
                .config
                .limits
                .max_contact_publish
                .max(ctx.config.limits.max_contact_watch),
        };
        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval(ctx.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut inflight: Option<Reply> = None;
        // A resume in flight: the outbox waits, so that what the resumed session missed is
        // written before anything newer.
        let mut resuming = false;
        let mut state = SessionState::default();
        let mut rate = RateLimiter::new(
            ctx.config.rate_limit_per_second,
            ctx.config.rate_limit_burst,
        );
        let mut last_rate_notice: Option<Instant> = None;
        let mut drain_close_at: Option<tokio::time::Instant> = None;

        // Each branch yields `Err(reason)` when the socket must end; one place breaks.
        let reason = match reason {
            Some(r) => r,
            None => loop {
                let step: Result<(), CloseReason> = tokio::select! {
                    biased;
                    // The frequent events first: when one is ready the rarer ones are not even
                    // polled. None of those is urgent to the frame (a kicked or draining
                    // session ends once nothing else is ready; a stuck write is cut by the
                    // writer's deadline).
                    out = outbox.rx.recv(), if !resuming => match out {
                        Some(out) => writer.send_batch(out, &mut outbox.rx, &outbox.kicked, &ctx).await,
                        None => Err(CloseReason::Abrupt),
                    },
                    msg = writer.socket.recv(), if inflight.is_none() => {
                        let mut msg = msg;
                        let mut served = 0;
                        // One clock read for the frames served in one burst: they came in
                        // together (for the rate limit, the keepalive and relay latency alike).
                        last_heard = Instant::now();
                        loop {
                            let step: Result<(), CloseReason> = {
                                if matches!(msg, Some(Ok(Message::Text(_) | Message::Binary(_))))
                                    && !rate.allow(last_heard)
                                {
                                    // Over its rate: the frame is dropped, and the client told (sparingly).
                                    ctx.metrics.received(Ingress::Ws, "invalid");
                                    let due = last_rate_notice
                                        .is_none_or(|t| t.elapsed() >= RATE_LIMIT_NOTICE_INTERVAL);
                                    if due {
                                        last_rate_notice = Some(last_heard);
                                        let err = ProtocolError::new(
                                            ErrorCode::RateLimited,
                                            "too many messages; frames are being dropped",
                                        );
                                        writer.send(vec![error_out(&err, &ctx)], &outbox.kicked, &ctx).await
                                    } else {
                                        ctx.metrics.error(ErrorCode::RateLimited);
                                        Ok(())
                                    }
                                } else {
                                    match msg {
                                        None => Err(CloseReason::Abrupt),
                                        Some(Err(e)) => Err(close::read_error(e)),
                                        Some(Ok(Message::Close(frame))) => Err(match frame {
                                            Some(f) if close_code::RESUME_LATER.contains(&u16::from(f.code)) => {
                                                CloseReason::ClientDetach
                                            }
                                            _ => CloseReason::ClientClose,
                                        }),
                                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
                                        Some(Ok(Message::Binary(_))) => {
                                            ctx.metrics.received(Ingress::Ws, "invalid");
                                            let err = ProtocolError::new(
                                                ErrorCode::BinaryUnsupported,
                                                "binary frames are not part of heliograph.v1; send JSON text",
                                            );
                                            writer.send(vec![error_out(&err, &ctx)], &outbox.kicked, &ctx).await
                                        }
                                        Some(Ok(Message::Text(text))) => {
                                            let caller = Caller {
                                                peer: &me.peer,
                                                owner: &me.owner,
                                                handle: &handle,
                                                received_at: last_heard,
                                                ingress: Ingress::Ws,
                                            };
                                            let handled =
                                                requests::handle_text(&text, &caller, &limits, &ctx, &mut state);
                                            if let Some(ack) = state.acked.take() {
                                                writer.seq.acknowledge(ack);
                                            }
                                            match handled {
                                                Handled::Done => Ok(()),
                                                Handled::Reply(replies) => {
                                                    writer
                                                        .send_after_queued(replies, &mut outbox.rx, &outbox.kicked, &ctx)
                                                        .await
                                                }
                                                Handled::Later(fut) => {
                                                    inflight = Some(fut);
                                                    Ok(())
                                                }
                                                Handled::Resume(fut) => {
                                                    inflight = Some(fut);
                                                    resuming = true;
                                                    Ok(())
                                                }
                                            }
                                        }
                                    }
                                }
                            };
                            served += 1;
                            // Frames already read are served here rather than each after a round of the
                            // loop, which looks at the outbox first; at most `READ_BURST` of them, so that
                            // the outbox does not wait long. Polled without the task's waker: when nothing
                            // is ready, the loop polls the socket again, with it, before the task waits.
                            if step.is_err() || inflight.is_some() || served == READ_BURST {
                                break step;
                            }
                            match writer.socket.recv().now_or_never() {
                                Some(next) => msg = next,
                                None => break step,
                            }
                        }
                    }
                    done = async {
                        match inflight.as_mut() {
                            Some(f) => f.await,
                            None => std::future::pending().await,
                        }
                    }, if inflight.is_some() => {
                        inflight = None;
                        resuming = false;
                        // The client was not read while the request ran; that is not its silence.
                        last_heard = Instant::now();
                        let mut frames = done.frames;
                        let mut replayed = Ok(());
                        let resumed = done.switch.is_some();
                        if let Some(switch) = done.switch {
                            let count = switch.replay.len() + switch.pending.len();
                            let previous = std::mem::replace(
                                &mut me,
                                Identity {
                                    peer: switch.peer.clone(),
                                    owner: switch.owner.clone(),
                                },
                            );
                            // The fresh session of this socket's `welcome` is not needed.
                            ctx.index.remove_session(&previous.peer, &handle);
                            let store = ctx.store().clone();
                            tokio::spawn(async move {
                                let _ = store.end(&previous.peer, Some(&previous.owner)).await;
                            });
                            state.receive_only = switch.receive_only.clone();
                            writer.seq.resume_from(switch.last_seq, switch.window.clone());
                            replayed = writer.replay(&switch.replay, &outbox.kicked, &ctx).await;
                            frames = switch.into_frames(welcome::issue_token(&ctx, &me.peer));
                            if replayed.is_ok() {
                                ctx.metrics.signals_replayed.increment(count as u64);
                                ctx.metrics.resume("ok");
                            }
                        }
                        match replayed {
                            // A resumed session's frames go first: what came in meanwhile
                            // follows them.
                            Ok(()) if resumed => writer.send(frames, &outbox.kicked, &ctx).await,
                            Ok(()) => {
                                writer
                                    .send_after_queued(frames, &mut outbox.rx, &outbox.kicked, &ctx)
                                    .await
                            }
                            Err(reason) => Err(reason),
                        }
                    }
                    () = outbox.kicked.raised() => Err(close::kicked(&outbox.kicked)),
                    // (After the drain notice the socket closes by itself, within the shutdown
                    // grace; a write stuck past it is cut by the writer's deadline.)
                    () = outbox.drain.raised(), if drain_close_at.is_none() => {
                        let (notice, after) = drain::schedule(&ctx);
                        drain_close_at = Some(tokio::time::Instant::now() + after);
                        writer.send(vec![notice], &outbox.kicked, &ctx).await
                    }
                    () = async {
                        match drain_close_at {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => Err(CloseReason::Shutdown),
                    _ = ping.tick() => {
                        if inflight.is_none() && last_heard.elapsed() > ctx.config.keepalive_timeout {
                            Err(CloseReason::KeepaliveTimeout)
                        } else {
                            // Quiet since the last tick: the socket gives its buffers back,
                            // and the outbox its slots.
                            writer.socket.tick();
                            if writer.socket.is_parked() {
                                outbox.rx.release_idle();
                            }
                            writer.ping(&outbox.kicked, &ctx).await
                        }
                    }
                };
                if let Err(reason) = step {
                    break reason;
                }
            },
        };

        ctx.metrics.closed(Ingress::Ws, reason);
        if reason.ends_session() {
            Box::pin(writer.close(reason)).await;
            Box::pin(ending::end_for_good(&ctx, &me, &handle)).await;
            outbox.rx.close();
        } else {
            let draining =
                reason == CloseReason::Shutdown && ctx.shutdown.stage() < Stage::HardStop;
            if draining {
                // The close goes first, and what the client sent before it read the close is
                // still served; a resume elsewhere waits until the state below is stored.
                let caller = Caller {
                    peer: &me.peer,
                    owner: &me.owner,
                    handle: &handle,
                    received_at: Instant::now(),
                    ingress: Ingress::Ws,
                };
                Box::pin(drain::serve_until_closed(
                    &mut writer.socket,
                    &caller,
                    &limits,
                    &ctx,
                    &mut state,
                ))
                .await;
            }
            // The peer may resume: what it may not have read is stored before it can.
            outbox.rx.close();
            let mut leftovers = Vec::new();
            while let Ok(out) = outbox.rx.try_recv() {
                leftovers.push(out);
            }
            Box::pin(ending::detach(
                &ctx,
                &me,
                &handle,
                &mut writer.seq,
                leftovers,
                reason,
            ))
            .await;
            if !draining {
                Box::pin(writer.close(reason)).await;
            }
        }
        outbox.finished.cancel();
        drop(slot);
    }
}
