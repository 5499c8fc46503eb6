//! The region's Redis: bus and session store, with the keys and scripts they share.

pub(super) mod bus;
pub(super) mod connect;
mod in_flight;
mod keys;
mod scripts;
pub(super) mod store;
