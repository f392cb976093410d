//! The master's view of ZooKeeper: every write is fenced by its election
//! znode (zookeeper-client's `OwnedLockClient` adds a check of it to each
//! transaction), so a deposed master can change nothing.
//!
//! Here: taking over, publishing and abdicating, and the one fenced
//! transaction helper every write goes through. By concern: [`jobs`]
//! (records, tasks, status), [`commits`] (shard commits, lost attempts,
//! finishing), [`batch`] (shard commits grouped into transactions),
//! [`outputs`] (inline or store objects), [`gc`] (collection).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use zookeeper_client::{CheckWriter, Client, Error as ZkError, OwnedLockClient};

mod batch;
pub use batch::Amend;
use batch::Op;
mod commits;
mod gc;
mod jobs;
mod outputs;
mod settings;

use super::records::{JobRecord, MasterInfo, ResultRecord, ShardRecord};
use super::session::{Connections, Session, Won};
use crate::store::Store;

use super::zk::{encode_record, CoordError, Layout};
use crate::core::CommittedShard;

/// Outputs above this size are written to the cluster's store and
/// referenced from ZooKeeper by name.
pub const INLINE_LIMIT: usize = 256 * 1024;
/// Reads of one [`LeaderStore::read_all`] on their way at once.
const READS_IN_FLIGHT: usize = 256;
/// Transactions retried on connection loss at most this many times.
const RETRIES: u32 = 20;

/// A job read back from ZooKeeper.
#[derive(Debug, Clone)]
pub struct StoredJob {
    /// Job id.
    pub id: String,
    /// Its record.
    pub record: JobRecord,
    /// Version of the record's znode.
    pub version: i32,
}

/// Which job a commit is for.
#[derive(Debug, Clone, Copy)]
pub struct JobRef<'a> {
    /// Job id.
    pub id: &'a str,
    /// Its incarnation ([`JobRecord::incarnation`]).
    pub incarnation: u64,
    /// Its record says [`JobRecord::is_compact`].
    pub compact: bool,
}

impl<'a> JobRef<'a> {
    /// The job a stored record is.
    pub fn of(job: &'a StoredJob) -> Self {
        JobRef {
            id: &job.id,
            incarnation: job.record.incarnation,
            compact: job.record.is_compact(),
        }
    }
}

/// A shard's commit, durable.
#[derive(Debug)]
pub struct Committed {
    /// The shard's outcome as committed.
    pub record: ShardRecord,
    /// The commit record that holds it (see [`crate::coord::RecordName`]).
    pub at: Arc<str>,
}

/// A job's end, durable: as written, or as ZooKeeper holds it when the
/// write had applied once already (its answer lost).
#[derive(Debug)]
pub struct Finished {
    /// The job's result.
    pub result: ResultRecord,
    /// The job's record as stored.
    pub record: JobRecord,
    /// Whether the stored record is marked fetched: only then may the
    /// result be handed to a client from memory.
    pub fetched: bool,
    /// The result's bytes when they went to the store as an object of
    /// their own (the result names it): handed over from memory as an
    /// inline result is, not read back.
    pub object: Option<bytes::Bytes>,
}

/// See the module doc. Clones share one lock: the candidacy is given up
/// (its znode deleted) when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct LeaderStore {
    lock: Arc<OwnedLockClient>,
    /// Every fenced write but publication and abdication goes through it:
    /// one transaction for those that wait together.
    batcher: batch::Batcher,
    layout: Layout,
    epoch: u64,
    /// Version of `/epoch` when it was read (still `epoch - 1`).
    epoch_version: i32,
    store: Store,
    /// The cluster's feature level, as last read (at the takeover, then
    /// at each change: [`LeaderStore::follow_features`]).
    level: Arc<std::sync::atomic::AtomicU32>,
    /// Dropped with the last clone of the store: the task that follows the
    /// level then ends, and lets go of its session (a live clone of the
    /// client would keep the session open after the node's actors stop).
    _following: Arc<tokio::sync::oneshot::Sender<()>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LeaderStore {
    /// Reads `/epoch` under the lock and returns the store of the next
    /// epoch. Nothing is written yet: the bump is part of [`Self::publish`],
    /// so that a takeover costs one write (and one fsync on the servers).
    /// A candidate that dies before publishing leaves the epoch as it was,
    /// and the next one takes the same number: no master ever served with it.
    pub async fn take_over(won: Won, store: Store) -> Result<Self, CoordError> {
        let Won { lock, layout } = won;
        let path = layout.epoch();
        let client = lock.client().clone();
        let (jobs_path, workers_path) = (layout.jobs(), layout.workers());
        // One round trip when the paths exist (the usual case).
        let (jobs, workers, first) = futures::join!(
            super::zk::ensure_path(&client, &jobs_path, layout.acl()),
            super::zk::ensure_path(&client, &workers_path, layout.acl()),
            client.get_data(&path)
        );
        jobs?;
        workers?;
        let mut first = Some(first);
        loop {
            let read = match first.take() {
                Some(r) => r,
                None => client.get_data(&path).await,
            };
            let (data, stat) = match read {
                Ok(v) => v,
                Err(ZkError::NoNode) => {
                    match client
                        .create(&path, &0u64.to_be_bytes(), &layout.acl().persistent())
                        .await
                    {
                        Ok(_) | Err(ZkError::NodeExists) => continue,
                        Err(e) => return Err(CoordError::zk(&path, e)),
                    }
                }
                Err(ZkError::ConnectionLoss) => continue,
                Err(e) => return Err(CoordError::zk(&path, e)),
            };
            let old = <[u8; 8]>::try_from(data.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| CoordError::Garbage {
                    path: path.clone(),
                    reason: format!("{} bytes, want 8", data.len()),
                })?;
            // Commit records are named after this candidacy (the election
            // znode's sequence number), unique even where two candidates
            // took the same epoch.
            let candidacy = lock
                .lock_path()
                .rsplit('-')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| CoordError::Garbage {
                    path: lock.lock_path().to_string(),
                    reason: "an election znode without a sequence number".into(),
                })?;
            let records = format!("c{}.{candidacy}", old + 1);
            let lock = Arc::new(lock);
            let level = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let (following, stopped) = tokio::sync::oneshot::channel();
            let store = LeaderStore {
                batcher: batch::Batcher::start(Arc::downgrade(&lock), layout.acl(), records),
                lock,
                layout,
                epoch: old + 1,
                epoch_version: stat.version,
                store,
                level,
                _following: Arc::new(following),
            };
            store.follow_features(stopped).await?;
            return Ok(store);
        }
    }

    /// Fenced transactions sent so far, by the group-commit writer (for
    /// tests and benchmarks: below one per write under load).
    pub fn commit_transactions(&self) -> u64 {
        self.batcher.transactions()
    }

    /// This master's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The session's client, unfenced: for reads only.
    fn client(&self) -> &Client {
        self.lock.client()
    }

    /// The registered workers, each time they change (see [`Session::workers`]).
    pub fn workers(
        &self,
    ) -> impl futures::Stream<Item = Result<BTreeMap<String, super::WorkerInfo>, CoordError>> + 'static
    {
        Session::of(self.client().clone(), self.layout.clone()).workers()
    }

    /// Changes of the session's connection.
    pub fn connections(&self) -> Connections {
        Session::of(self.client().clone(), self.layout.clone()).connections()
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Reads the cluster's feature level, and keeps reading it at each
    /// change while the session lives (a task of its own, on a watch).
    /// A level this build does not follow is an error: a master of it
    /// could not read what the cluster writes.
    async fn follow_features(
        &self,
        mut stopped: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<(), CoordError> {
        let client = self.client().clone();
        let path = self.layout.features();
        let read = |data: &[u8]| -> Result<u32, CoordError> {
            let level = super::zk::decode_record::<super::FeaturesRecord>(&path, data)?.level;
            crate::core::features::may_join(level).map_err(|e| CoordError::Garbage {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            Ok(level)
        };
        let watcher = match client.get_and_watch_data(&path).await {
            Ok((data, _, w)) => {
                self.level.store(read(&data)?, Ordering::Relaxed);
                Some(w)
            }
            Err(ZkError::NoNode) => match client.check_and_watch_stat(&path).await {
                Ok((_, w)) => Some(w),
                Err(e) => return Err(CoordError::zk(&path, e)),
            },
            Err(e) => return Err(CoordError::zk(&path, e)),
        };
        let level = Arc::downgrade(&self.level);
        let mut watcher = watcher;
        tokio::spawn(async move {
            while let Some(w) = watcher.take() {
                tokio::select! {
                    event = w.changed() => if event.session_state.is_terminated() {
                        return;
                    },
                    _ = &mut stopped => return,
                }
                // Held by the store: gone with it.
                let Some(level) = level.upgrade() else { return };
                watcher = match client.get_and_watch_data(&path).await {
                    Ok((data, _, w)) => {
                        match super::zk::decode_record::<super::FeaturesRecord>(&path, &data) {
                            Ok(r) => {
                                tracing::info!(
                                    level = r.level,
                                    "the cluster's feature level changed"
                                );
                                level.store(r.level, Ordering::Relaxed);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "ignoring a garbage feature level")
                            }
                        }
                        Some(w)
                    }
                    Err(ZkError::NoNode) => client
                        .check_and_watch_stat(&path)
                        .await
                        .ok()
                        .map(|(_, w)| w),
                    Err(_) => None,
                };
            }
        });
        Ok(())
    }

    /// The cluster's feature level, as last read.
    pub fn feature_level(&self) -> u32 {
        self.level.load(Ordering::Relaxed)
    }

    /// How this master writes result records, by the feature level.
    pub(super) fn result_form(&self) -> super::ResultForm {
        if self.feature_level() >= crate::core::features::NAMED_RESULTS {
            super::ResultForm::Named
        } else {
            super::ResultForm::Array
        }
    }

    /// Publishes `/master` and bumps `/epoch` in one fenced transaction: the
    /// last step of a takeover, after recovery.
    pub async fn publish(&self, node_id: &str, addr: &str, build: &str) -> Result<(), CoordError> {
        let path = self.layout.master();
        let epoch_path = self.layout.epoch();
        let info = MasterInfo {
            node_id: node_id.to_string(),
            addr: addr.to_string(),
            epoch: self.epoch,
            session_timeout_ms: self.client().session_timeout().as_millis() as u64,
            store: self.store.url().to_string(),
            protocol: Some([crate::wire::PROTOCOL_MIN, crate::wire::PROTOCOL_VERSION]),
            build: build.to_string(),
        };
        let data = encode_record(&path, &info)?;
        let ours = |found: &Option<MasterInfo>| found.as_ref() == Some(&info);
        loop {
            let res = self
                .fenced_once(|w| {
                    w.add_set_data(
                        &epoch_path,
                        &self.epoch.to_be_bytes(),
                        Some(self.epoch_version),
                    )?;
                    w.add_create(&path, &data, &self.layout.acl().discovery())
                })
                .await;
            match res {
                Ok(()) => return Ok(()),
                // Left by this very session before a connection loss, or stale.
                Err(ZkError::NodeExists) => match self.lock.delete(&path, None).await {
                    Ok(()) | Err(ZkError::NoNode) => continue,
                    Err(e) => return Err(CoordError::zk(&path, e)),
                },
                // The transaction may have been applied before the connection broke.
                Err(e @ (ZkError::ConnectionLoss | ZkError::BadVersion)) => {
                    let found = super::zk::read_master(self.client(), &self.layout).await;
                    match found {
                        Ok(found) if ours(&found) => return Ok(()),
                        Ok(_) if matches!(e, ZkError::BadVersion) => {
                            return Err(CoordError::Garbage {
                                path: epoch_path,
                                reason: "the epoch moved while this node held the lock".into(),
                            })
                        }
                        _ => continue,
                    }
                }
                Err(e) => return Err(CoordError::zk(&path, e)),
            }
        }
    }

    /// Gives up leadership at once: deletes `/master` and this node's
    /// election znode in one transaction. Writes already sent are ordered
    /// before it; any write after it fails its fence. The next candidate is
    /// woken by the deletion instead of by this session's close.
    pub async fn abdicate(&self) {
        let latch = self.lock.lock_path().to_string();
        let master = self.layout.master();
        // Under the lock, `/master` is ours or absent (not yet published).
        let res = self
            .fenced_once(|w| {
                w.add_delete(&master, None)?;
                w.add_delete(&latch, None)
            })
            .await;
        let res = match res {
            Err(ZkError::NoNode) => self.lock.delete(&latch, None).await,
            other => other,
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, "abdication failed; closing the session will do it");
        }
    }

    /// Reads the data of every path, pipelined on the session, each read
    /// retried on connection loss; in the order given.
    async fn read_all(&self, paths: &[String]) -> Result<Vec<Vec<u8>>, CoordError> {
        use futures::StreamExt;
        // Pipelined, but at most READS_IN_FLIGHT at a time: a takeover that
        // reads a big job's hundred thousand records at once would queue
        // every other session's requests (and this one's pings) behind
        // them, long enough for their connections to be given up.
        let reads = paths
            .iter()
            .map(|p| async move { (p, retry_loss(move || self.client().get_data(p)).await) });
        let mut reads = futures::stream::iter(reads).buffered(READS_IN_FLIGHT);
        let mut out = Vec::with_capacity(paths.len());
        while let Some((path, r)) = reads.next().await {
            out.push(r.map_err(|e| CoordError::zk(path, e))?.0);
        }
        Ok(out)
    }

    /// Runs one fenced transaction: the election znode's check, then the
    /// operations `ops` adds. Not retried (see [`Self::fenced`]).
    async fn fenced_once(
        &self,
        ops: impl FnOnce(&mut CheckWriter<'_>) -> Result<(), ZkError>,
    ) -> Result<(), ZkError> {
        let mut w = self.lock.new_check_writer();
        ops(&mut w)?;
        w.commit().await.map(|_| ()).map_err(ZkError::from)
    }

    /// Applies `ops` together in a fenced transaction, shared with the
    /// writes waiting at the same time (see [`batch`]), connection losses
    /// retried. A retry of a write that was applied before the connection
    /// broke fails on its first create (`NodeExists`) or delete (`NoNode`):
    /// callers read those as done. Measured under `name`.
    async fn fenced(&self, name: &'static str, path: &str, ops: Vec<Op>) -> Result<(), CoordError> {
        self.batcher
            .write(name, ops)
            .await
            .map_err(|e| CoordError::zk(path, e))
    }

    /// Applies `ops` in a fenced transaction of their own, sent at once
    /// beside the writer's (connection losses retried): for background
    /// deletions, which would otherwise hold the writer's one transaction
    /// in flight while commits wait behind them.
    async fn fenced_alone(
        &self,
        name: &'static str,
        path: &str,
        ops: &[Op],
    ) -> Result<(), CoordError> {
        let acl = self.layout.acl();
        self.retry(name, path, || {
            self.fenced_once(move |w| ops.iter().try_for_each(|op| op.add(w, acl)))
        })
        .await
    }

    /// Runs a ZooKeeper request, retrying on connection loss, and measures
    /// it under `name` (one of [`crate::metrics::ZK_OPS`]).
    async fn retry<T, F, Fut>(
        &self,
        name: &'static str,
        path: &str,
        mut op: F,
    ) -> Result<T, CoordError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ZkError>>,
    {
        let started = std::time::Instant::now();
        let result = retry_loss(&mut op).await;
        metrics::histogram!(crate::metrics::ZK_OP_SECONDS, "op" => name)
            .record(started.elapsed().as_secs_f64());
        // NodeExists and NoNode are answers the callers expect, not failures.
        if matches!(&result, Err(e) if !matches!(e, ZkError::NodeExists | ZkError::NoNode)) {
            metrics::counter!(crate::metrics::ZK_ERRORS, "op" => name).increment(1);
        }
        result.map_err(|e| CoordError::zk(path, e))
    }
}

/// Runs a ZooKeeper request again while it fails with `ConnectionLoss`
/// (a read or an idempotent write; a server of the ensemble going away),
/// with a backoff from 10 ms to 500 ms, at most [`RETRIES`] times.
async fn retry_loss<T, F, Fut>(mut op: F) -> Result<T, ZkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ZkError>>,
{
    let mut delay = Duration::from_millis(10);
    let mut result = Err(ZkError::ConnectionLoss);
    for _ in 0..RETRIES {
        result = op().await;
        if !matches!(result, Err(ZkError::ConnectionLoss)) {
            break;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
    result
}

/// A shard's output as the master receives it.
#[derive(Debug)]
pub enum ShardOutput {
    /// The encoded bytes (stored inline, or in the store if big).
    Bytes(Vec<u8>),
    /// The name of the store object its worker wrote.
    Object(String),
}

impl From<&ShardRecord> for CommittedShard {
    fn from(r: &ShardRecord) -> Self {
        CommittedShard {
            attempt: r.attempt,
            failures: r.failures.clone(),
        }
    }
}
