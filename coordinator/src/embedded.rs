//! A coordinator replica embedded in the edge process: the single-node default.
//!
//! TEMPORARY in-process stand-in; replaced by the openraft replica.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::error::CoordinatorError;
use crate::registry::{
    Command, Outcome, RegistryState, RoomEvent, RoomId, RoomSummary, RoomView, Stamped,
};

/// Room events buffered per subscriber before it must resynchronise.
pub const EVENT_BUFFER: usize = 16 * 1024;
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Where the Raft log, vote and snapshots are kept.
    pub data_dir: PathBuf,
    /// How long a detached peer stays a member before it is removed.
    pub grace: Duration,
}

/// Handle to the embedded replica. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedCoordinator {
    state: Arc<Mutex<RegistryState>>,
    events: broadcast::Sender<RoomEvent>,
}

impl EmbeddedCoordinator {
    pub async fn open(config: EmbeddedConfig) -> Result<Self, CoordinatorError> {
        let _ = config;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Self {
            state: Arc::new(Mutex::new(RegistryState::default())),
            events,
        })
    }

    /// Commits `command` (stamped with the leader's clock) and returns its outcome once it is
    /// applied on this replica.
    pub async fn execute(&self, command: Command) -> Result<Outcome, CoordinatorError> {
        let stamped = Stamped {
            at_ms: now_ms(),
            command,
        };
        let (outcome, events) = {
            let mut state = self
                .state
                .lock()
                .map_err(|_| CoordinatorError::Unavailable("poisoned".into()))?;
            state.apply(&stamped)
        };
        for e in events {
            let _ = self.events.send(e);
        }
        Ok(outcome)
    }

    /// Room events in apply order. A receiver that falls more than [`EVENT_BUFFER`] events
    /// behind gets `Lagged` and must re-read the rooms it cares about.
    pub fn subscribe(&self) -> broadcast::Receiver<RoomEvent> {
        self.events.subscribe()
    }

    /// The room as this replica has applied it.
    pub fn room(&self, room: &RoomId) -> Option<RoomView> {
        self.state.lock().ok()?.room(room)
    }

    pub fn rooms(&self) -> Vec<RoomSummary> {
        self.state.lock().map(|s| s.rooms()).unwrap_or_default()
    }

    pub fn is_ready(&self) -> bool {
        true
    }

    /// Stops the replica, flushing what it has.
    pub async fn shutdown(&self) {}
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
