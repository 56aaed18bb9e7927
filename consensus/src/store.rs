//! The storage of Raft on sled, behind openraft's storage traits only (so it can be
//! swapped): the log and the vote in one tree each, the state machine in memory with its
//! latest snapshot in sled.
//!
//! A log write is reported flushed only after sled's `flush` returned (sled otherwise
//! writes every 500 ms). Appends do not wait for it: a flusher thread takes every append
//! that arrived while the previous flush ran and makes them durable with one flush (group
//! commit), then reports each; meanwhile Raft goes on replicating. That is what makes
//! many concurrent writers cheap on a disk where a synced write costs ~3 ms. The state
//! machine is rebuilt at start from the snapshot, and openraft re-applies the committed
//! log after it (the committed index is stored too, but not flushed by itself: it becomes
//! durable with the next log flush, so a crash can bring back an older one; the node's
//! reads allow for that, see `node::Restored`).
//!
//! [`MemoryDisk`] stands in for the disk in the deterministic simulation
//! (`consensus/tests/sim.rs`): the same state machine, a log in memory that outlives a
//! crashed node.

// openraft's storage traits return its `StorageError`, which is large; these helpers
// return what the traits need.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bincode::Options;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{AnyError, EntryPayload, OptionalSend, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::state::{ClusterState, CommandResult};
use crate::typ::*;

/// Largest log entry or snapshot decoded from disk.
const MAX_RECORD: u64 = 256 << 20;

fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_RECORD)
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    codec().serialize(v).map_err(|e| StorageError::IO { source: StorageIOError::write(AnyError::error(e)) })
}

fn dec<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StorageError> {
    codec().deserialize(b).map_err(|e| {
        // The likeliest cause on a disk that is not damaged: a data directory written by
        // a Nave whose records have another layout (there is no migration between them).
        let why = format!(
            "a stored record does not decode ({e}): the data directory was written by another \
             version of Nave, or is damaged; restore a backup (nave admin restore) into a fresh \
             data directory"
        );
        StorageError::IO { source: StorageIOError::read(AnyError::error(why)) }
    })
}

fn io_write(e: impl std::fmt::Display) -> StorageError {
    StorageError::IO { source: StorageIOError::write_logs(AnyError::error(e)) }
}

fn io_read(e: impl std::fmt::Display) -> StorageError {
    StorageError::IO { source: StorageIOError::read_logs(AnyError::error(e)) }
}

/// The Raft log and vote on sled.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    logs: sled::Tree,
    meta: sled::Tree,
    /// Appends written to sled, waiting for the flusher to make them durable.
    flusher: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        let (flusher, pending) = std::sync::mpsc::channel();
        let flush_db = db.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || group_commit(&flush_db, &pending))
            .map_err(sled::Error::Io)?;
        Ok(Self { db: db.clone(), logs: db.open_tree("raft_log")?, meta: db.open_tree("raft_meta")?, flusher })
    }

    async fn flush(&self) -> Result<(), StorageError> {
        self.db.flush_async().await.map(|_| ()).map_err(io_write)
    }

    fn meta_get<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, StorageError> {
        match self.meta.get(key).map_err(io_read)? {
            Some(v) => dec(&v).map(Some),
            None => Ok(None),
        }
    }

    fn meta_put<T: Serialize>(&self, key: &str, v: &T) -> Result<(), StorageError> {
        self.meta.insert(key, enc(v)?).map_err(io_write)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in self.logs.range(start.to_be_bytes()..) {
            let (k, v) = item.map_err(io_read)?;
            let idx = u64::from_be_bytes(k.as_ref().try_into().map_err(io_read)?);
            if !range.contains(&idx) {
                break;
            }
            out.push(dec(&v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.meta_get("last_purged")?;
        let last = match self.logs.last().map_err(io_read)? {
            Some((_, v)) => Some(dec::<Entry>(&v)?.log_id),
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.meta_put("vote", vote)?;
        self.flush().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.meta_get("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.meta_put("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta_get::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(&e.log_id.index.to_be_bytes(), enc(&e)?);
        }
        self.logs.apply_batch(batch).map_err(io_write)?;
        // The flusher reports it once durable; it runs until the last store handle is gone.
        if let Err(unsent) = self.flusher.send(callback) {
            unsent.0.log_io_completed(Err(std::io::Error::other("the log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // One atomic batch: a crash in the middle must not leave a hole in the log.
        let mut batch = sled::Batch::default();
        for k in self.logs.range(log_id.index.to_be_bytes()..).keys() {
            batch.remove(k.map_err(io_read)?);
        }
        self.logs.apply_batch(batch).map_err(io_write)?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.meta_put("last_purged", &log_id)?;
        let keys: Vec<sled::IVec> =
            self.logs.range(..=log_id.index.to_be_bytes()).keys().collect::<Result<_, _>>().map_err(io_read)?;
        for k in keys {
            self.logs.remove(k).map_err(io_write)?;
        }
        self.flush().await
    }
}

/// Flushes sled once for every group of appends that arrived meanwhile, then reports
/// each of them in order. Ends when every sender (store handle) is gone.
fn group_commit(db: &sled::Db, pending: &std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = pending.recv() {
        let mut group = vec![first];
        group.extend(pending.try_iter());
        let flushed = db.flush().map(|_| ()).map_err(|e| e.to_string());
        for callback in group {
            callback.log_io_completed(flushed.clone().map_err(std::io::Error::other));
        }
    }
}

/// What a snapshot holds: the state and the Raft bookkeeping it corresponds to.
#[derive(Serialize, Deserialize, Default, Clone)]
struct SnapshotBody {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: ClusterState,
}

#[derive(Serialize, Deserialize, Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The applied state, shared with readers (the hub) through [`StateHandle`].
#[derive(Default)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub state: ClusterState,
}

/// Read access to the applied state. The lock is never held across an await (reads copy
/// out what they need), so a std RwLock is right here.
#[derive(Clone, Default)]
pub struct StateHandle(Arc<RwLock<Applied>>);

impl StateHandle {
    pub fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        f(&crate::sync::read(&self.0))
    }

    fn write<T>(&self, f: impl FnOnce(&mut Applied) -> T) -> T {
        f(&mut crate::sync::write(&self.0))
    }
}

/// Where the latest snapshot is kept: sled, or memory standing in for a disk (the
/// deterministic simulation; it outlives the node like a disk would).
#[derive(Clone)]
enum SnapshotHome {
    Sled { db: sled::Db, tree: sled::Tree },
    Memory(MemoryDisk),
}

impl SnapshotHome {
    fn load(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        match self {
            Self::Sled { tree, .. } => match tree.get("snapshot").map_err(io_read)? {
                Some(v) => dec(&v).map(Some),
                None => Ok(None),
            },
            Self::Memory(disk) => Ok(disk.lock().snapshot.clone()),
        }
    }

    async fn save(&self, snapshot: StoredSnapshot) -> Result<(), StorageError> {
        match self {
            Self::Sled { db, tree } => {
                tree.insert("snapshot", enc(&snapshot)?).map_err(io_write)?;
                db.flush_async().await.map(|_| ()).map_err(io_write)
            }
            Self::Memory(disk) => {
                let mut d = disk.lock();
                d.snapshot = Some(snapshot);
                d.flush();
                Ok(())
            }
        }
    }
}

/// The state machine: in memory, its latest snapshot kept (in sled).
pub struct StateMachineStore {
    pub handle: StateHandle,
    home: SnapshotHome,
    snapshot_count: u64,
    applied_tx: tokio::sync::watch::Sender<u64>,
}

impl StateMachineStore {
    /// Opens the state machine on sled, rebuilt from the stored snapshot if there is one.
    pub fn open(db: &sled::Db) -> Result<Self, StorageError> {
        let tree = db.open_tree("state_machine").map_err(io_read)?;
        Self::rebuild(SnapshotHome::Sled { db: db.clone(), tree })
    }

    fn rebuild(home: SnapshotHome) -> Result<Self, StorageError> {
        let handle = StateHandle::default();
        if let Some(snap) = home.load()? {
            let body: SnapshotBody = dec(&snap.data)?;
            handle.write(|a| {
                a.last_applied = body.last_applied;
                a.membership = body.membership;
                a.state = body.state;
            });
        }
        let (applied_tx, _) = tokio::sync::watch::channel(0);
        Ok(Self { handle, home, snapshot_count: 0, applied_tx })
    }

    /// A watch of the last applied log index (for caches and tests).
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let body = self.handle.read(|a| SnapshotBody {
            last_applied: a.last_applied,
            membership: a.membership.clone(),
            state: a.state.clone(),
        });
        let data = enc(&body)?;
        self.snapshot_count += 1;
        let id = match body.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.snapshot_count),
            None => format!("--{}", self.snapshot_count),
        };
        let meta = SnapshotMeta { last_log_id: body.last_applied, last_membership: body.membership, snapshot_id: id };
        self.home.save(StoredSnapshot { meta: meta.clone(), data: data.clone() }).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.handle.read(|a| (a.last_applied, a.membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut last = 0;
        self.handle.write(|a| {
            for e in entries {
                a.last_applied = Some(e.log_id);
                last = e.log_id.index;
                match e.payload {
                    EntryPayload::Blank => out.push(CommandResult::Done),
                    EntryPayload::Normal(p) => out.push(a.state.apply(&p)),
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(e.log_id), m);
                        out.push(CommandResult::Done);
                    }
                }
            }
        });
        self.applied_tx.send_replace(last);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Self {
            handle: self.handle.clone(),
            home: self.home.clone(),
            snapshot_count: self.snapshot_count,
            applied_tx: self.applied_tx.clone(),
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
        let data = snapshot.into_inner();
        let body: SnapshotBody = dec(&data)?;
        self.handle.write(|a| {
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            a.state = body.state;
        });
        self.home.save(StoredSnapshot { meta: meta.clone(), data }).await?;
        self.applied_tx.send_replace(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.home.load()?.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

/// Opens both stores on the sled database at `path`.
pub fn open(path: &std::path::Path) -> Result<(LogStore, StateMachineStore), StorageError> {
    let db = sled::open(path).map_err(io_read)?;
    Ok((LogStore::open(&db).map_err(io_read)?, StateMachineStore::open(&db)?))
}

/// Memory standing in for a node's disk, for the deterministic simulation: what the
/// stores wrote is there again when the node restarts. Like [`LogStore`] on sled, the log,
/// the vote and the snapshot are durable when their call returns, while the committed
/// log id is not flushed by itself: it becomes durable with the next log write, so a
/// crash can bring back an older one. Clones share it.
#[derive(Clone, Default)]
pub struct MemoryDisk(Arc<Mutex<MemoryData>>);

#[derive(Default)]
struct MemoryData {
    log: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    /// The committed log id as a restart finds it, and the one saved since (lost in a
    /// crash unless a log write made it durable).
    committed: Option<LogId>,
    committed_unflushed: Option<Option<LogId>>,
    last_purged: Option<LogId>,
    snapshot: Option<StoredSnapshot>,
}

impl MemoryDisk {
    fn lock(&self) -> MutexGuard<'_, MemoryData> {
        crate::sync::lock(&self.0)
    }

    /// What a crash does to the disk: writes never flushed are gone.
    pub fn crash(&self) {
        self.lock().committed_unflushed = None;
    }
}

impl MemoryData {
    /// A flush: everything saved so far is durable.
    fn flush(&mut self) {
        if let Some(c) = self.committed_unflushed.take() {
            self.committed = c;
        }
    }
}

/// The Raft log and vote in a [`MemoryDisk`].
#[derive(Clone)]
pub struct MemoryLogStore(MemoryDisk);

impl RaftLogReader<TypeConfig> for MemoryLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.0.lock().log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemoryLogStore {
    type LogReader = MemoryLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let d = self.0.lock();
        let last = d.log.last_key_value().map(|(_, e)| e.log_id).or(d.last_purged);
        Ok(LogState { last_purged_log_id: d.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut d = self.0.lock();
        d.vote = Some(*vote);
        d.flush();
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.0.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.0.lock().committed_unflushed = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let d = self.0.lock();
        Ok(d.committed_unflushed.unwrap_or(d.committed))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut d = self.0.lock();
        d.log.extend(entries.into_iter().map(|e| (e.log_id.index, e)));
        d.flush();
        drop(d);
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut d = self.0.lock();
        d.log.split_off(&log_id.index);
        d.flush();
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut d = self.0.lock();
        d.last_purged = Some(log_id);
        d.log = d.log.split_off(&(log_id.index + 1));
        d.flush();
        Ok(())
    }
}

/// Opens both stores on `disk`: the state machine rebuilt from its snapshot, as after a
/// restart.
pub fn open_memory(disk: &MemoryDisk) -> Result<(MemoryLogStore, StateMachineStore), StorageError> {
    Ok((MemoryLogStore(disk.clone()), StateMachineStore::rebuild(SnapshotHome::Memory(disk.clone()))?))
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
            let dir = tempfile::tempdir().map_err(io_read)?;
            let (l, s) = open(dir.path())?;
            Ok((dir, l, s))
        }
    }

    #[test]
    fn openraft_storage_conformance_suite() -> Result<(), StorageError> {
        Suite::test_all(Builder)
    }

    struct MemoryBuilder;

    impl StoreBuilder<TypeConfig, MemoryLogStore, StateMachineStore, ()> for MemoryBuilder {
        async fn build(&self) -> Result<((), MemoryLogStore, StateMachineStore), StorageError> {
            let (l, s) = open_memory(&MemoryDisk::default())?;
            Ok(((), l, s))
        }
    }

    #[test]
    fn the_memory_store_passes_the_conformance_suite_too() -> Result<(), StorageError> {
        Suite::test_all(MemoryBuilder)
    }
}
