//! The registry state machine: applies committed entries to [`RegistryState`], publishes the
//! room events they cause, and builds and installs snapshots.
//!
//! Invariants:
//! - The registry, `last_applied` and `last_membership` change together under one lock, which
//!   is never held across an await; readers see a state that some log prefix produced.
//! - Room events are published in apply order, after the state that caused them is visible.
//! - The snapshot on disk only moves forward: an older build never replaces a newer snapshot.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, Entry, EntryPayload, RaftSnapshotBuilder, Snapshot, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::background_build;
use super::snapshot_file::SnapshotFile;
use super::types::{
    Batch, BatchOutcome, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::clock::now_ms;
use crate::registry::{RegistryState, RoomEvent};

/// What the log has produced so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub registry: RegistryState,
}

/// Shared read access to the applied state, for reads that need not go through Raft.
pub type SharedState = Arc<RwLock<Applied>>;

/// The bytes of a snapshot (and of `snapshot.json`).
#[derive(Serialize, Deserialize)]
struct Payload {
    snapshot_id: String,
    applied: Applied,
}

impl Payload {
    fn meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.last_membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        }
    }
}

/// A snapshot's meta alone, read from its bytes without building the registry they hold.
#[derive(Deserialize)]
struct PayloadMeta {
    snapshot_id: String,
    applied: AppliedMeta,
}

#[derive(Deserialize)]
struct AppliedMeta {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

impl PayloadMeta {
    fn meta(self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.last_membership,
            snapshot_id: self.snapshot_id,
        }
    }
}

/// Why the state machine could not be restored from the data directory's snapshot.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("reading the snapshot: {0}")]
    Read(#[source] std::io::Error),
    #[error("decoding the snapshot: {0}")]
    Decode(#[source] serde_json::Error),
}

pub struct StateMachineStore {
    state: SharedState,
    /// Snapshots received from a leader since this process started.
    installed: Arc<AtomicU64>,
    events: broadcast::Sender<RoomEvent>,
    snapshots: Snapshots,
}

/// The snapshot file and the last log id it covers, shared with snapshot builders.
#[derive(Clone)]
struct Snapshots {
    file: SnapshotFile,
    covers: Arc<Mutex<Option<LogId>>>,
}

impl Snapshots {
    /// Writes `payload` unless a snapshot at least as recent is already stored; returns its
    /// bytes.
    async fn persist(&self, payload: &Payload) -> Result<Vec<u8>, StorageError> {
        let meta = payload.meta();
        let bytes = serde_json::to_vec(payload).map_err(|e| snapshot_write_err(&meta, &e))?;
        self.persist_bytes(&meta, bytes).await
    }

    /// Writes `bytes`, the encoding of a payload with `meta`, unless a snapshot at least as
    /// recent is already stored; hands the bytes back (never copied: a snapshot of a large
    /// registry is hundreds of megabytes).
    async fn persist_bytes(
        &self,
        meta: &SnapshotMeta,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, StorageError> {
        let this = self.clone();
        let last = meta.last_log_id;
        tokio::task::spawn_blocking(move || this.write_blocking(last, bytes))
            .await
            .map_err(|e| snapshot_write_err(meta, &e))?
            .map_err(|e| snapshot_write_err(meta, &e))
    }

    /// [`Self::persist_bytes`] on the calling (blocking) thread.
    fn write_blocking(&self, last: Option<LogId>, bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
        // Held across the write so that two writers cannot interleave compare and replace.
        let mut covers = self.covers.lock().unwrap_or_else(PoisonError::into_inner);
        if *covers > last {
            return Ok(bytes);
        }
        self.file.write(&bytes)?;
        *covers = last;
        Ok(bytes)
    }
}

/// Why a snapshot build on its own thread failed.
#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error("encoding the snapshot: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("writing the snapshot: {0}")]
    Write(#[source] std::io::Error),
}

impl StateMachineStore {
    /// Restores the state from `dir`'s snapshot, if any; log replay does the rest.
    pub fn open(dir: &Path, events: broadcast::Sender<RoomEvent>) -> Result<Self, RestoreError> {
        let file = SnapshotFile::new(dir);
        let applied = match file.read().map_err(RestoreError::Read)? {
            Some(bytes) => {
                let mut applied = serde_json::from_slice::<Payload>(&bytes)
                    .map_err(RestoreError::Decode)?
                    .applied;
                applied.registry.share_ids();
                applied
            }
            None => Applied::default(),
        };
        let covers = applied.last_applied;
        Ok(Self {
            state: Arc::new(RwLock::new(applied)),
            installed: Arc::new(AtomicU64::new(0)),
            events,
            snapshots: Snapshots {
                file,
                covers: Arc::new(Mutex::new(covers)),
            },
        })
    }

    pub fn state(&self) -> SharedState {
        Arc::clone(&self.state)
    }

    /// How many snapshots a leader has sent this replica since it started.
    pub fn installed_snapshots(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.installed)
    }
}

pub struct SnapshotBuilder {
    copy: Applied,
    snapshots: Snapshots,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let id = match self.copy.last_applied {
            Some(log_id) => format!("{}-{}", log_id.leader_id, log_id.index),
            None => "empty".to_owned(),
        };
        let payload = Payload {
            // Two builds of the same log prefix hold the same data; the time keeps ids unique.
            snapshot_id: format!("{id}-{}", now_ms()),
            applied: std::mem::take(&mut self.copy),
        };
        let meta = payload.meta();
        let snapshots = self.snapshots.clone();
        // Encoded and written on a thread of its own at the lowest priority: seconds of CPU at
        // a million members, which the joins applied meanwhile should not wait behind. The
        // copy is dropped there too (it frees what the live state changed since).
        let bytes = background_build::run("snapshot-build", move || {
            let bytes = serde_json::to_vec(&payload).map_err(BuildError::Encode)?;
            drop(payload);
            snapshots
                .write_blocking(meta.last_log_id, bytes)
                .map_err(BuildError::Write)
        })
        .await
        .map_err(|e| snapshot_write_err(&meta, &e))?
        .map_err(|e| snapshot_write_err(&meta, &e))?;
        crate::metrics::snapshot_built();
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Ok((st.last_applied, st.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut outcomes = Vec::new();
        let mut events = Vec::new();
        let rooms = {
            let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
            for entry in entries {
                st.last_applied = Some(entry.log_id);
                let outcome = match entry.payload {
                    EntryPayload::Blank => BatchOutcome::default(),
                    EntryPayload::Normal(Batch(commands)) => {
                        let mut outcomes = Vec::with_capacity(commands.len());
                        for stamped in &commands {
                            let (outcome, caused) = st.registry.apply(stamped);
                            events.extend(caused);
                            outcomes.push(outcome);
                        }
                        BatchOutcome(outcomes)
                    }
                    EntryPayload::Membership(membership) => {
                        st.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                        BatchOutcome::default()
                    }
                };
                outcomes.push(outcome);
            }
            st.registry.room_count()
        };
        for event in events {
            // Nobody listening is fine: the state is the source of truth.
            let _ = self.events.send(event);
        }
        crate::metrics::registry_rooms(rooms);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The copy is taken now, in apply order; the build itself runs concurrently with apply.
        // Taking it walks no member: the registry's large maps share their records with the
        // copy until the apply changes them (see `RegistryState`).
        let copy = {
            let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
            Applied {
                last_applied: st.last_applied,
                last_membership: st.last_membership.clone(),
                registry: st.registry.snapshot_copy(),
            }
        };
        SnapshotBuilder {
            copy,
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let received: Payload = serde_json::from_slice(snapshot.get_ref()).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        // The meta is authoritative; only the registry is taken from the data. The leader
        // sends its snapshot file, whose own meta is the one given: then those bytes are
        // stored as they are, rather than encoded again.
        let same = received.meta() == *meta;
        let mut applied = Applied {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            registry: received.applied.registry,
        };
        applied.registry.share_ids();
        let applied = if same {
            self.snapshots
                .persist_bytes(meta, (*snapshot).into_inner())
                .await?;
            applied
        } else {
            drop(snapshot);
            let payload = Payload {
                snapshot_id: meta.snapshot_id.clone(),
                applied,
            };
            self.snapshots.persist(&payload).await?;
            payload.applied
        };
        let rooms = applied.registry.room_count();
        // Subscribers get no events for the jump; they resynchronise from the rooms they read.
        let previous = std::mem::replace(
            &mut *self.state.write().unwrap_or_else(PoisonError::into_inner),
            applied,
        );
        // Freed off the lock.
        drop(previous);
        self.installed.fetch_add(1, Ordering::Relaxed);
        crate::metrics::snapshot_installed();
        crate::metrics::registry_rooms(rooms);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let file = self.snapshots.file.clone();
        let bytes = tokio::task::spawn_blocking(move || file.read())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        // The meta is read from the same bytes, so it cannot disagree with them; the registry
        // in them is skipped, not built.
        let payload: PayloadMeta = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        Ok(Some(Snapshot {
            meta: payload.meta(),
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

fn snapshot_write_err(meta: &SnapshotMeta, e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(e)).into()
}

#[cfg(test)]
#[path = "state_machine_tests.rs"]
mod tests;
