//! Edges of one process hand signals to each other directly, and sessions stay in this
//! process.

pub(super) mod bus;
pub(super) mod store;
