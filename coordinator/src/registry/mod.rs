//! The room registry as a pure, deterministic state machine.
//!
//! Every replica applies the same [`Stamped`] commands in log order and so reaches the same
//! state and emits the same [`RoomEvent`]s. Nothing here reads a clock, draws randomness or
//! knows about a transport: the leader stamps the time into each command.

mod command;
mod event;
pub mod ids;
mod index;
mod listing;
mod persistent;
mod small;
mod state;
mod webhooks;

pub use command::{Command, Listing, Outcome, Rejection, Stamped};
pub use event::{LeaveReason, Member, RoomEvent, RoomEventKind};
pub use ids::{EdgeId, HIDDEN_ROOM_PREFIX, IdError, PeerId, Region, RoomId};
pub use listing::{
    ListingPage, ListingQuery, MAX_LISTING_LIMIT, MAX_LISTING_PREFIX_BYTES, RoomListing,
    merge_pages,
};
pub(crate) use small::SmallMap;
pub use state::{EdgeRecord, RegistryState, RoomSummary, RoomView};
pub use webhooks::{WebhookEvent, WebhookOutbox, WebhookRecord};
