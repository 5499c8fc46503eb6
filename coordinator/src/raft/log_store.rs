//! The Raft log, vote and commit pointer, kept in one redb file (`raft.redb`).
//!
//! Invariants:
//! - One writer thread applies every change in the order it was issued, all changes queued at
//!   that moment in one durable redb transaction. The blocking commits (fsync) thus never run on
//!   a runtime worker, and the commit pointer rides along with the next append for free.
//! - An appended entry is readable as soon as `append` returns (it sits in an in-memory
//!   `staged` map until it is durable), and its [`LogFlushed`] callback fires only after the redb
//!   transaction holding it has committed durably.
//! - Vote, truncate and purge are durable before they return.
//! - The commit pointer is a hint (openraft re-commits after an election), so it is written with
//!   the next batch without waiting for it.
//!
//! openraft 0.9 awaits each append's callback before it appends again, so today every client
//! write costs one durable commit; the queue batches more once appends are pipelined.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::types::{LogId, NodeId, StorageError, TypeConfig};

/// Name of the database file under the data directory.
pub const DB_FILE: &str = "raft.redb";
/// redb's page cache for the log (its default is 1 GiB). The log is written once, read back
/// only to replicate to a lagging follower (from the operating system's page cache when not
/// from this one), and purged after each snapshot: a small cache keeps a replica's memory
/// proportional to its rooms, not to its write history. (16 MiB cost an embedded single
/// node 1.1 KiB per connection at 15,000 joined connections.)
const LOG_CACHE_BYTES: usize = 1024 * 1024;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE_KEY: &str = "vote";
const PURGED_KEY: &str = "last_purged";
const COMMITTED_KEY: &str = "committed";

/// Why the log store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{} is already open (is another coordinator running on this data directory?)", .0.display())]
    AlreadyOpen(PathBuf),
    #[error("{}: {reason}", path.display())]
    Database { path: PathBuf, reason: String },
    #[error("cannot start the log writer thread: {0}")]
    Thread(io::Error),
}

/// The log store handed to openraft. Clones share one database and writer.
#[derive(Clone)]
pub struct LogStore {
    handle: Arc<Handle>,
    /// The last commit index openraft reported plus one (0: none), for status and metrics;
    /// openraft 0.9's metrics do not carry it.
    committed: Arc<AtomicU64>,
}

/// Reads the commit index a [`LogStore`] last saw.
#[derive(Clone)]
pub struct CommittedIndex(Arc<AtomicU64>);

impl CommittedIndex {
    pub fn get(&self) -> Option<u64> {
        self.0.load(Ordering::Relaxed).checked_sub(1)
    }
}

/// Resolves once the writer thread has exited and the database file is closed.
pub struct Closed(oneshot::Receiver<()>);

impl Closed {
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

/// Tells the writer to finish once the last [`LogStore`] clone is gone.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
    }
}

struct Shared {
    db: Database,
    staged: Mutex<Staged>,
    wake: Condvar,
}

#[derive(Default)]
struct Staged {
    /// Appended entries not yet durable, by index; readers see them.
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// Changes waiting for the writer, in issue order.
    queue: Vec<Op>,
    closing: bool,
}

enum Op {
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        flushed: LogFlushed<TypeConfig>,
    },
    PutMeta {
        key: &'static str,
        value: Vec<u8>,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    Truncate {
        from: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    Purge {
        upto: u64,
        purged: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Staged> {
        // The staged map stays consistent under every panic-free path; a poisoned lock only
        // means another thread panicked, which must not take the log down with it.
        self.staged.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// The helpers return openraft's `StorageError`, the error type its storage traits demand.
#[allow(clippy::result_large_err)]
impl LogStore {
    /// Opens (or creates) `dir/raft.redb` and starts its writer thread.
    pub fn open(dir: &Path) -> Result<(Self, Closed), OpenError> {
        let path = dir.join(DB_FILE);
        let db = Database::builder()
            .set_cache_size(LOG_CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => OpenError::AlreadyOpen(path.clone()),
                other => OpenError::Database {
                    path: path.clone(),
                    reason: other.to_string(),
                },
            })?;
        let init = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            txn.commit()?;
            Ok(())
        })();
        init.map_err(|e| OpenError::Database {
            path: path.clone(),
            reason: e.to_string(),
        })?;

        let shared = Arc::new(Shared {
            db,
            staged: Mutex::new(Staged::default()),
            wake: Condvar::new(),
        });
        let (closed_tx, closed_rx) = oneshot::channel();
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || {
                run_writer(&writer);
                drop(writer);
                let _ = closed_tx.send(());
            })
            .map_err(OpenError::Thread)?;
        Ok((
            Self {
                handle: Arc::new(Handle { shared }),
                committed: Arc::new(AtomicU64::new(0)),
            },
            Closed(closed_rx),
        ))
    }

    /// The commit index last reported to this store, shared by every clone.
    pub fn committed_index(&self) -> CommittedIndex {
        CommittedIndex(Arc::clone(&self.committed))
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Queues `op` for the writer.
    fn submit(&self, op: Op) -> Result<(), StorageError> {
        let mut staged = self.shared().lock();
        if staged.closing {
            return Err(write_err("the log writer has stopped"));
        }
        staged.queue.push(op);
        drop(staged);
        self.shared().wake.notify_one();
        Ok(())
    }

    async fn submit_and_wait(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Op,
    ) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.submit(op(tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_err(e)),
            Err(_) => Err(write_err("the log writer stopped before finishing")),
        }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let read = || -> Result<Option<T>, String> {
            let txn = self.shared().db.begin_read().map_err(|e| e.to_string())?;
            let table = txn.open_table(META).map_err(|e| e.to_string())?;
            let Some(value) = table.get(key).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            serde_json::from_slice(value.value())
                .map(Some)
                .map_err(|e| e.to_string())
        };
        read().map_err(read_err)
    }

    fn last_durable_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let read = || -> Result<Option<LogId>, String> {
            let txn = self.shared().db.begin_read().map_err(|e| e.to_string())?;
            let table = txn.open_table(LOG).map_err(|e| e.to_string())?;
            let Some((_, value)) = table.last().map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let entry: Entry<TypeConfig> =
                serde_json::from_slice(value.value()).map_err(|e| e.to_string())?;
            Ok(Some(entry.log_id))
        };
        read().map_err(read_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        // Staged entries first: one that leaves the staged map has been committed before, so the
        // read transaction opened afterwards sees it; no entry can fall between the two reads.
        let staged: Vec<Entry<TypeConfig>> = self
            .shared()
            .lock()
            .entries
            .range(range.clone())
            .map(|(_, e)| e.clone())
            .collect();
        let read = || -> Result<BTreeMap<u64, Entry<TypeConfig>>, String> {
            let txn = self.shared().db.begin_read().map_err(|e| e.to_string())?;
            let table = txn.open_table(LOG).map_err(|e| e.to_string())?;
            let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
            let mut out = BTreeMap::new();
            for row in table
                .range::<u64>((start, end))
                .map_err(|e| e.to_string())?
            {
                let (key, value) = row.map_err(|e| e.to_string())?;
                let entry: Entry<TypeConfig> =
                    serde_json::from_slice(value.value()).map_err(|e| e.to_string())?;
                out.insert(key.value(), entry);
            }
            Ok(out)
        };
        let mut entries = read().map_err(read_err)?;
        for e in staged {
            entries.insert(e.log_id.index, e);
        }
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let staged_last = self
            .shared()
            .lock()
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id);
        let last_purged_log_id: Option<LogId> = self.read_meta(PURGED_KEY)?;
        let last_log_id = match staged_last {
            Some(id) => Some(id),
            None => self.last_durable_log_id()?.or(last_purged_log_id),
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let value = serde_json::to_vec(vote).map_err(|e| write_err(e.to_string()))?;
        self.submit_and_wait(|done| Op::PutMeta {
            key: VOTE_KEY,
            value,
            done: Some(done),
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(id) = committed {
            crate::metrics::raft_commit_index(id.index);
            self.committed
                .store(id.index.saturating_add(1), Ordering::Relaxed);
        }
        let value = serde_json::to_vec(&committed).map_err(|e| write_err(e.to_string()))?;
        self.submit(Op::PutMeta {
            key: COMMITTED_KEY,
            value,
            done: None,
        })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self.read_meta::<Option<LogId>>(COMMITTED_KEY)?.flatten();
        if let Some(id) = committed {
            self.committed
                .store(id.index.saturating_add(1), Ordering::Relaxed);
        }
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut rows = Vec::with_capacity(entries.len());
        for e in &entries {
            let bytes = serde_json::to_vec(e)
                .map_err(|err| StorageIOError::write_log_entry(e.log_id, AnyError::new(&err)))?;
            rows.push((e.log_id, bytes));
        }
        let mut staged = self.shared().lock();
        if staged.closing {
            return Err(write_err("the log writer has stopped"));
        }
        for e in entries {
            staged.entries.insert(e.log_id.index, e);
        }
        staged.queue.push(Op::Append {
            entries: rows,
            flushed: callback,
        });
        drop(staged);
        self.shared().wake.notify_one();
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        // Stops readers from seeing the removed entries before the writer gets to them.
        drop(self.shared().lock().entries.split_off(&from));
        self.submit_and_wait(|done| Op::Truncate { from, done })
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let upto = log_id.index;
        let purged = serde_json::to_vec(&log_id).map_err(|e| write_err(e.to_string()))?;
        {
            let mut staged = self.shared().lock();
            let keep = staged.entries.split_off(&(upto.saturating_add(1)));
            staged.entries = keep;
        }
        self.submit_and_wait(|done| Op::Purge { upto, purged, done })
            .await
    }
}

/// The writer thread: takes every queued change, writes them in one durable transaction, then
/// reports completion. Returns once the store is closing and the queue is empty.
fn run_writer(shared: &Shared) {
    loop {
        let ops = {
            let mut staged = shared.lock();
            while staged.queue.is_empty() && !staged.closing {
                staged = shared
                    .wake
                    .wait(staged)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if staged.queue.is_empty() {
                return;
            }
            std::mem::take(&mut staged.queue)
        };
        let started = std::time::Instant::now();
        let result = write_batch(&shared.db, &ops).map_err(|e| e.to_string());
        crate::metrics::log_sync(started.elapsed());
        if result.is_ok() {
            let mut staged = shared.lock();
            for op in &ops {
                if let Op::Append { entries, .. } = op {
                    for (log_id, _) in entries {
                        // A truncate and re-append may have staged a different entry at this
                        // index meanwhile; that one stays until its own batch is durable.
                        if staged
                            .entries
                            .get(&log_id.index)
                            .is_some_and(|e| e.log_id == *log_id)
                        {
                            staged.entries.remove(&log_id.index);
                        }
                    }
                }
            }
        }
        for op in ops {
            let outcome = result.clone();
            match op {
                Op::Append { flushed, .. } => {
                    flushed.log_io_completed(outcome.map_err(io::Error::other));
                }
                Op::PutMeta { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(outcome);
                    }
                }
                Op::Truncate { done, .. } | Op::Purge { done, .. } => {
                    let _ = done.send(outcome);
                }
            }
        }
    }
}

fn write_batch(db: &Database, ops: &[Op]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        for op in ops {
            match op {
                Op::Append { entries, .. } => {
                    for (log_id, bytes) in entries {
                        log.insert(log_id.index, bytes.as_slice())?;
                    }
                }
                Op::PutMeta { key, value, .. } => {
                    meta.insert(*key, value.as_slice())?;
                }
                Op::Truncate { from, .. } => {
                    log.retain_in::<u64, _>((Bound::Included(*from), Bound::Unbounded), |_, _| {
                        false
                    })?;
                }
                Op::Purge { upto, purged, .. } => {
                    log.retain_in::<u64, _>(..=*upto, |_, _| false)?;
                    meta.insert(PURGED_KEY, purged.as_slice())?;
                }
            }
        }
    }
    // redb commits with `Durability::Immediate` unless told otherwise: this is the fsync.
    txn.commit()?;
    Ok(())
}

fn write_err(e: impl ToString) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

fn read_err(e: impl ToString) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}
