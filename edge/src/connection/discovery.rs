//! `list-rooms`: a page of public rooms from the registry (every region's group, through this
//! edge's replica), within a per-connection budget (`--list-rooms-per-minute`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use heliograph_coordinator::registry::{ListingQuery, RoomListing};

use super::step::{Done, Handled, SessionState, error_out};
use crate::context::EdgeContext;
use crate::limits::RateLimiter;
use crate::outbox::Outgoing;
use crate::protocol::{self, ErrorCode, ListedRoom, ProtocolError, Ref, ServerMessage};

/// How long a listing may take at this edge: the replica gives other regions less than this
/// (750 ms) and answers without those that are late, so this is reached only when the
/// replica itself does not answer.
pub(crate) const LIST_ROOMS_TIMEOUT: Duration = Duration::from_millis(2_000);

pub(super) fn list_rooms(
    ctx: &Arc<EdgeContext>,
    state: &mut SessionState,
    query: ListingQuery,
    reference: Option<Ref>,
) -> Handled {
    let per_minute = ctx.config.list_rooms_per_minute;
    let budget = state
        .list_rooms
        .get_or_insert_with(|| RateLimiter::per_minute(per_minute));
    if !budget.allow(Instant::now()) {
        ctx.metrics.list_rooms("rate_limited");
        let err = ProtocolError {
            code: ErrorCode::RateLimited,
            message: format!("at most {per_minute} list-rooms requests a minute"),
            reference,
        };
        return Handled::Reply(vec![error_out(&err, ctx)]);
    }
    let ctx = Arc::clone(ctx);
    Handled::Later(Box::pin(async move {
        let started = Instant::now();
        let answer = ctx.registry.public_rooms(&query, LIST_ROOMS_TIMEOUT).await;
        ctx.metrics
            .list_rooms_seconds
            .record(started.elapsed().as_secs_f64());
        let frame = match answer {
            Ok((page, unreachable)) => {
                ctx.metrics.list_rooms(if unreachable.is_empty() {
                    "complete"
                } else {
                    "partial"
                });
                let next = page
                    .more
                    .then(|| page.rooms.last().map(|r| protocol::encode_cursor(&r.room)))
                    .flatten();
                let text = protocol::encode(&ServerMessage::Rooms {
                    items: page.rooms.iter().map(listed).collect(),
                    next,
                    partial: !unreachable.is_empty(),
                    unreachable: unreachable.iter().map(|r| r.as_str()).collect(),
                    reference: protocol::ref_raw(reference.as_ref()),
                });
                Outgoing::new("rooms", text)
            }
            Err(e) => {
                ctx.metrics.list_rooms("unavailable");
                tracing::warn!(error = %e, "could not list public rooms");
                error_out(
                    &ProtocolError {
                        code: ErrorCode::Unavailable,
                        message: "the room registry is unavailable; retry".into(),
                        reference,
                    },
                    &ctx,
                )
            }
        };
        Done::frames(vec![frame])
    }))
}

fn listed(r: &RoomListing) -> ListedRoom<'_> {
    ListedRoom {
        room: r.room.as_str(),
        members: r.members,
        regions: r.regions.iter().map(|g| g.as_str()).collect(),
        meta: r.meta.clone().map(protocol::raw_json),
    }
}
