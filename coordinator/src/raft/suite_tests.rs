//! The openraft storage conformance suite against the redb log store and the state machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageIOError};
use tempfile::TempDir;
use tokio::sync::broadcast;

use super::log_store::LogStore;
use super::state_machine::StateMachineStore;
use super::types::{StorageError, TypeConfig};

/// Each case gets a fresh directory, removed when the case ends.
struct RedbStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let io = |e: String| StorageError::from(StorageIOError::write(AnyError::error(e)));
        let dir = tempfile::tempdir().map_err(|e| io(e.to_string()))?;
        let (log, _closed) = LogStore::open(dir.path()).map_err(|e| io(e.to_string()))?;
        let (events, _) = broadcast::channel(16);
        let sm = StateMachineStore::open(dir.path(), events).map_err(|e| io(e.to_string()))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn storage_conformance() {
    Suite::test_all(RedbStores).unwrap();
}
