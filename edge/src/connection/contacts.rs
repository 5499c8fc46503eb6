//! The contact requests of a connection: `contacts` (replace the session's published and
//! watched hashes) and `invite` (to a mutual contact). See `crate::contacts` for how the
//! registry indexes the hashes.
//!
//! A `contacts` request becomes registry commands for the difference only: a leave of each
//! contact room whose role changed or that is no longer wanted, then a join of each new one
//! (a role is the member's `meta`, fixed at join). They run concurrently, a few at a time, so
//! that a whole address book costs a few batched commits rather than one round trip each.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use heliograph_coordinator::registry::{Command, Listing, Outcome, PeerId, Rejection, RoomId};
use serde_json::value::RawValue;

use super::commit::{COMMIT_DEADLINE, commit, fence_ms, save_rooms};
use super::step::{Caller, Done, Handled, SessionState, error_out};
use crate::contacts::{self, ContactHash, Role};
use crate::context::EdgeContext;
use crate::outbox::Outgoing;
use crate::protocol::{self, ErrorCode, ProtocolError, Ref, ServerMessage};
use crate::rooms::JoinStart;
use crate::router::Outbound;

/// Registry commands of one `contacts` request in flight at once: enough for the batcher to
/// fill a log entry, few enough not to crowd out other clients' joins.
const CONCURRENT_COMMANDS: usize = 32;

fn refuse(ctx: &EdgeContext, code: ErrorCode, message: String, reference: Option<Ref>) -> Handled {
    let err = ProtocolError {
        code,
        message,
        reference,
    };
    Handled::Reply(vec![error_out(&err, ctx)])
}

/// `contacts {publish, watch}`: replaces this session's sets.
pub(super) fn set(
    ctx: &Arc<EdgeContext>,
    caller: &Caller<'_>,
    state: &mut SessionState,
    publish: &[ContactHash],
    watch: &[ContactHash],
    reference: Option<Ref>,
) -> Handled {
    let limits = &ctx.config.limits;
    let per_minute = limits.contacts_per_minute;
    let limiter = state
        .contacts
        .updates
        .get_or_insert_with(|| crate::limits::RateLimiter::per_minute(per_minute));
    if !limiter.allow(caller.received_at) {
        ctx.metrics.contacts_request("rate_limited");
        return refuse(
            ctx,
            ErrorCode::RateLimited,
            format!("at most {per_minute} `contacts` requests a minute"),
            reference,
        );
    }
    if publish.len() > limits.max_contact_publish || watch.len() > limits.max_contact_watch {
        ctx.metrics.contacts_request("too_many");
        return refuse(
            ctx,
            ErrorCode::TooManyContacts,
            format!(
                "at most {} published and {} watched hashes",
                limits.max_contact_publish, limits.max_contact_watch
            ),
            reference,
        );
    }
    let wanted = contacts::roles(publish, watch);
    let current = ctx.index.contact_roles(caller.peer);
    let leaves: Vec<RoomId> = current
        .iter()
        .filter(|(hash, role)| wanted.get(*hash) != Some(*role))
        .map(|(hash, _)| contacts::room_for(hash))
        .collect();
    let joins: Vec<(RoomId, Role)> = wanted
        .iter()
        .filter(|(hash, role)| current.get(*hash) != Some(*role))
        .map(|(hash, role)| (contacts::room_for(hash), *role))
        .collect();
    let ctx = Arc::clone(ctx);
    let peer = caller.peer.clone();
    let owner = caller.owner.clone();
    Handled::Later(Box::pin(async move {
        let _updating = Updating::start(&ctx, &peer);
        let left = futures_util::stream::iter(leaves)
            .map(|room| leave(&ctx, &peer, room))
            .buffer_unordered(CONCURRENT_COMMANDS)
            .fold(true, |all, ok| async move { all && ok })
            .await;
        let joined = futures_util::stream::iter(joins)
            .map(|(room, role)| join(&ctx, &peer, room, role))
            .buffer_unordered(CONCURRENT_COMMANDS)
            .fold(true, |all, ok| async move { all && ok })
            .await;
        save_rooms(&ctx, &peer, &owner).await;
        let frame = if left && joined {
            ctx.metrics.contacts_request("ok");
            Outgoing::new(
                "contacts-set",
                protocol::encode(&ServerMessage::ContactsSet {
                    reference: protocol::ref_raw(reference.as_ref()),
                }),
            )
        } else {
            ctx.metrics.contacts_request("unavailable");
            let err = ProtocolError {
                code: ErrorCode::Unavailable,
                message: "the registry could not record every contact hash; send the sets again"
                    .into(),
                reference,
            };
            error_out(&err, &ctx)
        };
        Done::frames(vec![frame])
    }))
}

/// While alive, the session's matches wait for its `contacts` request to finish: computing
/// them after each of up to a thousand commands would cost the square of that. Dropped
/// however the request ends (answered, or its connection gone), it computes them once.
struct Updating<'a> {
    ctx: &'a EdgeContext,
    peer: &'a PeerId,
}

impl<'a> Updating<'a> {
    fn start(ctx: &'a EdgeContext, peer: &'a PeerId) -> Self {
        ctx.index.contacts_updating(peer, true);
        Self { ctx, peer }
    }
}

impl Drop for Updating<'_> {
    fn drop(&mut self) {
        self.ctx.index.contacts_updating(self.peer, false);
    }
}

/// Leaves one contact room; whether the peer is out of it.
async fn leave(ctx: &EdgeContext, peer: &PeerId, room: RoomId) -> bool {
    let command = Command::Leave {
        room: room.clone(),
        peer: peer.clone(),
        attempt: 0,
        deadline_ms: fence_ms(),
    };
    match commit(ctx, command, COMMIT_DEADLINE).await.result {
        Ok(Outcome::Left { .. } | Outcome::Rejected(Rejection::NotInRoom)) => {
            ctx.index.local_leave(peer, &room);
            true
        }
        other => {
            tracing::warn!(?other, "a contact room could not be left");
            false
        }
    }
}

/// Joins one contact room with `role` as its member `meta`; whether the registry took it.
async fn join(ctx: &EdgeContext, peer: &PeerId, room: RoomId, role: Role) -> bool {
    match ctx.index.begin_join(peer, &room, None, usize::MAX, false) {
        Ok((JoinStart::Pending, _)) => {}
        // Already in it with this role (a request raced an earlier one's events).
        Ok((JoinStart::AlreadyMember, _)) => return true,
        Err(_) => return false,
    }
    // Random, like a client's join: names the request should it have to be taken back.
    let attempt = rand::random::<u64>().max(1);
    let command = Command::Join {
        room: room.clone(),
        peer: peer.clone(),
        edge: ctx.edge_id.clone(),
        meta: role.to_meta(),
        max_members: None,
        attempt,
        deadline_ms: fence_ms(),
        remote_region: None,
        // Never listed: contact rooms are private.
        listing: Listing::default(),
    };
    match commit(ctx, command, COMMIT_DEADLINE).await.result {
        Ok(Outcome::Joined { epoch, .. }) => {
            // Completed when the room's events reach `epoch` (now, or when they arrive).
            ctx.index.join_committed(peer, &room, epoch);
            true
        }
        Err(e) => {
            // Outcome unknown: if it committed, the follower takes it back.
            tracing::warn!(error = %e, "a contact room join failed");
            ctx.index.abort_join(peer, &room, Some(attempt));
            false
        }
        other => {
            tracing::warn!(?other, "a contact room join was refused");
            ctx.index.abort_join(peer, &room, None);
            false
        }
    }
}

/// `invite {to, room, data?}`: delivered only to a mutual contact, like a signal through the
/// contact room they share; anyone else (unknown, offline, not mutual) is `not-a-contact`.
pub(super) fn invite(
    ctx: &EdgeContext,
    caller: &Caller<'_>,
    state: &mut SessionState,
    to: &PeerId,
    room: &RoomId,
    data: Option<&RawValue>,
    reference: Option<Ref>,
) -> Handled {
    let per_minute = ctx.config.limits.invites_per_minute;
    let limiter = state
        .contacts
        .invites
        .get_or_insert_with(|| crate::limits::RateLimiter::per_minute(per_minute));
    if !limiter.allow(caller.received_at) {
        ctx.metrics.invite("rate_limited");
        return refuse(
            ctx,
            ErrorCode::RateLimited,
            format!("at most {per_minute} invites a minute"),
            reference,
        );
    }
    let not_a_contact = |reference| {
        ctx.metrics.invite("not_a_contact");
        refuse(
            ctx,
            ErrorCode::NotAContact,
            "that peer is not a mutual contact of yours".into(),
            reference,
        )
    };
    let Some(via) = ctx.index.contact_room(caller.peer, to) else {
        return not_a_contact(reference);
    };
    let Ok(route) = ctx.index.route_signal(caller.peer, &via, to) else {
        return not_a_contact(reference);
    };
    let text = protocol::encode(&ServerMessage::Invite {
        from: caller.peer.as_str(),
        room: room.as_str(),
        data,
    });
    let sent = ctx.router.send(
        route,
        Outbound {
            room: via,
            from: caller.peer,
            to: to.as_str(),
            reference,
            text,
            received_at: Instant::now(),
        },
    );
    match sent {
        Ok(()) => {
            ctx.metrics.invite("sent");
            Handled::Done
        }
        Err(refused) => {
            ctx.metrics.invite("unavailable");
            refuse(
                ctx,
                refused.error.code(),
                refused.error.to_string(),
                refused.reference,
            )
        }
    }
}
