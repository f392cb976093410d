//! The master's view of ZooKeeper: every write is fenced by its election
//! znode (zookeeper-client's `OwnedLockClient` adds a check of it to each
//! transaction), so a deposed master can change nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_bytes::ByteBuf;
use zookeeper_client::{CheckWriter, Client, Error as ZkError, OwnedLockClient};

use super::records::{JobRecord, JobStatus, MasterInfo, OutputRef, ResultRecord, ShardRecord};
use super::session::{Connections, Session};
use crate::store::Store;

use super::zk::{
    decode_record, encode_record, CoordError, Layout, EPHEMERAL, PERSISTENT, REQUEST_BUDGET,
};
use crate::core::{shard_count, CommittedShard, ShardKey};

/// Outputs above this size are written to the cluster's store and
/// referenced from ZooKeeper by name.
pub const INLINE_LIMIT: usize = 256 * 1024;
/// Transactions retried on connection loss at most this many times.
const RETRIES: u32 = 20;

/// A job read back from ZooKeeper.
#[derive(Debug)]
pub struct StoredJob {
    /// Job id.
    pub id: String,
    /// Its record.
    pub record: JobRecord,
    /// Version of the record's znode.
    pub version: i32,
}

/// Result of a shard commit.
#[derive(Debug)]
pub enum CommitOutcome {
    /// Our record is now the shard's commit.
    Committed(ShardRecord),
    /// The shard was already committed (by us before a connection loss, or
    /// earlier); this is the record that counts.
    AlreadyCommitted(ShardRecord),
}

/// See the module doc. Clones share one lock: the candidacy is given up
/// (its znode deleted) when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct LeaderStore {
    lock: Arc<OwnedLockClient>,
    layout: Layout,
    epoch: u64,
    /// Version of `/epoch` when it was read (still `epoch - 1`).
    epoch_version: i32,
    store: Store,
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
    pub async fn take_over(
        lock: OwnedLockClient,
        layout: Layout,
        store: Store,
    ) -> Result<Self, CoordError> {
        let path = layout.epoch();
        let client = lock.client().clone();
        let (jobs_path, workers_path) = (layout.jobs(), layout.workers());
        // One round trip when the paths exist (the usual case).
        let (jobs, workers, first) = futures::join!(
            super::zk::ensure_path(&client, &jobs_path),
            super::zk::ensure_path(&client, &workers_path),
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
                    match client.create(&path, &0u64.to_be_bytes(), &PERSISTENT).await {
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
            return Ok(LeaderStore {
                lock: Arc::new(lock),
                layout,
                epoch: old + 1,
                epoch_version: stat.version,
                store,
            });
        }
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

    /// Publishes `/master` and bumps `/epoch` in one fenced transaction: the
    /// last step of a takeover, after recovery.
    pub async fn publish(&self, node_id: &str, addr: &str) -> Result<(), CoordError> {
        let path = self.layout.master();
        let epoch_path = self.layout.epoch();
        let info = MasterInfo {
            node_id: node_id.to_string(),
            addr: addr.to_string(),
            epoch: self.epoch,
            session_timeout_ms: self.client().session_timeout().as_millis() as u64,
            store: self.store.url().to_string(),
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
                    w.add_create(&path, &data, &EPHEMERAL)
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

    /// [`Self::fenced_once`], retried on connection loss and measured
    /// under `name`. A retry of a transaction that was applied before the
    /// connection broke fails on its first create (`NodeExists`) or
    /// delete (`NoNode`): callers read those as done.
    async fn fenced(
        &self,
        name: &'static str,
        path: &str,
        ops: impl Fn(&mut CheckWriter<'_>) -> Result<(), ZkError>,
    ) -> Result<(), CoordError> {
        self.retry(name, path, || self.fenced_once(&ops)).await
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

    /// Reads a job's record.
    pub async fn read_job(&self, id: &str) -> Result<Option<StoredJob>, CoordError> {
        let path = self.layout.job(id);
        match retry_loss(|| self.client().get_data(&path)).await {
            Ok((data, stat)) => Ok(Some(StoredJob {
                id: id.to_string(),
                record: decode_record(&path, &data)?,
                version: stat.version,
            })),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(CoordError::zk(path, e)),
        }
    }

    /// Lists every job.
    pub async fn list_jobs(&self) -> Result<Vec<StoredJob>, CoordError> {
        let path = self.layout.jobs();
        let ids = match retry_loss(|| self.client().list_children(&path)).await {
            Ok(ids) => ids,
            Err(ZkError::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(CoordError::zk(path, e)),
        };
        let reads: Vec<_> = ids.iter().map(|id| self.read_job(id)).collect();
        let mut jobs = Vec::with_capacity(ids.len());
        for (id, r) in ids.iter().zip(futures::future::join_all(reads).await) {
            match r {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) => {}
                Err(CoordError::Garbage { path, reason }) => {
                    tracing::warn!(%path, %reason, job = %id, "ignoring a job whose record is garbage");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(jobs)
    }

    /// Writes a new job: record (`Writing`), batches and commit buckets,
    /// then `Accepted`. Only then is the submission acknowledged. Returns
    /// the job as written.
    pub async fn create_job(
        &self,
        id: &str,
        mut record: JobRecord,
        tasks: &[ByteBuf],
    ) -> Result<StoredJob, CoordError> {
        let job_path = self.layout.job(id);
        // Cut tasks into batches under the budget.
        let mut batches: Vec<Vec<u8>> = Vec::new();
        let mut current: Vec<&ByteBuf> = Vec::new();
        let mut size = 0;
        for t in tasks {
            if t.len() + 16 > REQUEST_BUDGET - 1024 {
                return Err(CoordError::TooLarge {
                    what: format!("a task of job {id}"),
                    len: t.len(),
                });
            }
            if size + t.len() + 16 > REQUEST_BUDGET - 1024 && !current.is_empty() {
                batches.push(encode_record(&job_path, &current)?);
                current.clear();
                size = 0;
            }
            size += t.len() + 16;
            current.push(t);
        }
        if !current.is_empty() {
            batches.push(encode_record(&job_path, &current)?);
        }
        record.batches = batches.len() as u32;
        record.status = JobStatus::Writing;
        record.created_ms = now_ms();
        let data = encode_record(&job_path, &record)?;
        let batches_path = format!("{job_path}/batches");
        let (lost, done) = (self.layout.lost(id), self.layout.done(id));
        self.fenced("create_job", &job_path, |w| {
            w.add_create(&job_path, &data, &PERSISTENT)?;
            w.add_create(&batches_path, &[], &PERSISTENT)?;
            w.add_create(&lost, &[], &PERSISTENT)?;
            w.add_create(&done, &[], &PERSISTENT)
        })
        .await?;
        let buckets = shard_count(record.tasks_total, record.options.shard_size).div_ceil(1000);
        let mut nodes: Vec<(String, &[u8])> = batches
            .iter()
            .enumerate()
            .map(|(k, b)| (self.layout.batch(id, k as u32), b.as_slice()))
            .collect();
        nodes.extend((0..buckets).map(|b| (self.layout.bucket(id, b * 1000), &[][..])));
        let writes = nodes.iter().map(|(path, data)| async move {
            self.retry("create_job", path, || {
                self.lock.create(path, data, &PERSISTENT)
            })
            .await
            .map(|_| ())
        });
        // Pipelined: requests are sent when the futures are created.
        for r in futures::future::join_all(writes).await {
            match r {
                Ok(())
                | Err(CoordError::Zk {
                    source: ZkError::NodeExists,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        record.status = JobStatus::Accepted;
        let data = encode_record(&job_path, &record)?;
        let stat = self
            .retry("create_job", &job_path, || {
                self.lock.set_data(&job_path, &data, None)
            })
            .await?;
        // What was written, not read back: a read that fails here would
        // leave an accepted job that this master never schedules.
        Ok(StoredJob {
            id: id.to_string(),
            record,
            version: stat.version,
        })
    }

    /// Reads a job's encoded tasks, in order.
    pub async fn read_tasks(&self, id: &str, batches: u32) -> Result<Vec<ByteBuf>, CoordError> {
        let paths: Vec<String> = (0..batches).map(|k| self.layout.batch(id, k)).collect();
        let reads: Vec<_> = paths
            .iter()
            .map(|p| retry_loss(move || self.client().get_data(p)))
            .collect();
        let mut tasks = Vec::new();
        for (path, r) in paths.iter().zip(futures::future::join_all(reads).await) {
            let (data, _) = r.map_err(|e| CoordError::zk(path, e))?;
            let batch: Vec<ByteBuf> = decode_record(path, &data)?;
            tasks.extend(batch);
        }
        Ok(tasks)
    }

    /// Reads every committed shard of a job.
    pub async fn read_commits(
        &self,
        id: &str,
    ) -> Result<BTreeMap<ShardKey, ShardRecord>, CoordError> {
        let done = self.layout.done(id);
        let buckets = retry_loss(|| self.client().list_children(&done))
            .await
            .map_err(|e| CoordError::zk(&done, e))?;
        let buckets: Vec<String> = buckets.iter().map(|b| format!("{done}/{b}")).collect();
        let listed = futures::future::join_all(
            buckets
                .iter()
                .map(|bucket| retry_loss(move || self.client().list_children(bucket))),
        )
        .await;
        let mut paths = Vec::new();
        for (bucket, names) in buckets.iter().zip(listed) {
            let names = names.map_err(|e| CoordError::zk(bucket, e))?;
            for n in names {
                match n.parse::<ShardKey>() {
                    Ok(key) => paths.push((key, format!("{bucket}/{n}"))),
                    Err(_) => {
                        tracing::warn!(path = %format!("{bucket}/{n}"), "ignoring a znode that is not a shard commit")
                    }
                }
            }
        }
        let reads: Vec<_> = paths
            .iter()
            .map(|(_, p)| retry_loss(move || self.client().get_data(p)))
            .collect();
        let mut out = BTreeMap::new();
        for ((key, path), r) in paths.iter().zip(futures::future::join_all(reads).await) {
            let (data, _) = r.map_err(|e| CoordError::zk(path, e))?;
            match decode_record::<ShardRecord>(path, &data) {
                Ok(rec) => {
                    out.insert(*key, rec);
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a garbage shard commit"),
            }
        }
        Ok(out)
    }

    /// Records that a shard's next run is attempt `next_attempt` (workers
    /// died running it). One small fenced write per lost run.
    pub async fn record_loss(
        &self,
        job: &str,
        key: ShardKey,
        next_attempt: u32,
    ) -> Result<(), CoordError> {
        let path = self.layout.lost_shard(job, key);
        let data = next_attempt.to_be_bytes();
        loop {
            match self
                .retry("record_loss", &path, || {
                    self.lock.set_data(&path, &data, None)
                })
                .await
            {
                Ok(_) => return Ok(()),
                Err(CoordError::Zk {
                    source: ZkError::NoNode,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
            match self
                .retry("record_loss", &path, || {
                    self.lock.create(&path, &data, &PERSISTENT)
                })
                .await
            {
                Ok(_) => return Ok(()),
                Err(CoordError::Zk {
                    source: ZkError::NodeExists,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a job's lost-attempt records.
    pub async fn read_losses(&self, job: &str) -> Result<BTreeMap<ShardKey, u32>, CoordError> {
        let dir = self.layout.lost(job);
        let names = match retry_loss(|| self.client().list_children(&dir)).await {
            Ok(n) => n,
            Err(ZkError::NoNode) => return Ok(BTreeMap::new()),
            Err(e) => return Err(CoordError::zk(&dir, e)),
        };
        let paths: Vec<String> = names.iter().map(|n| format!("{dir}/{n}")).collect();
        let reads = futures::future::join_all(
            paths
                .iter()
                .map(|p| retry_loss(move || self.client().get_data(p))),
        )
        .await;
        let mut out = BTreeMap::new();
        for ((n, path), read) in names.iter().zip(&paths).zip(reads) {
            let key = n.parse::<ShardKey>().ok();
            let (data, _) = read.map_err(|e| CoordError::zk(path, e))?;
            match (key, <[u8; 4]>::try_from(data.as_slice())) {
                (Some(key), Ok(b)) => {
                    out.insert(key, u32::from_be_bytes(b));
                }
                _ => tracing::warn!(%path, "ignoring a garbage lost-attempt record"),
            }
        }
        Ok(out)
    }

    /// The cluster's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where an output goes: inline if small, else a new object of the
    /// store (create-only, a name no other writer uses).
    async fn output_ref(&self, name: String, bytes: Vec<u8>) -> Result<OutputRef, CoordError> {
        if bytes.len() <= INLINE_LIMIT {
            return Ok(OutputRef::Inline(ByteBuf::from(bytes)));
        }
        self.store.put_new(&name, bytes).await?;
        Ok(OutputRef::Object(name))
    }

    /// Reads an output stored inline, in the store, or (written by earlier
    /// versions) in a file.
    pub async fn read_output(&self, output: &OutputRef) -> Result<Vec<u8>, CoordError> {
        match output {
            OutputRef::Inline(b) => Ok(b.to_vec()),
            OutputRef::Object(name) => Ok(self.store.get(name).await?.to_vec()),
            OutputRef::File(p) => tokio::fs::read(p).await.map_err(|source| CoordError::File {
                path: p.clone(),
                source,
            }),
        }
    }

    /// Deletes the store objects among `outputs` (inline outputs have
    /// none). Exactly the names records referenced: nothing is listed, so
    /// no other job's objects can be touched. A failure is logged, and the
    /// object is left behind rather than the caller stopped.
    pub async fn delete_outputs<'a>(&self, outputs: impl IntoIterator<Item = &'a OutputRef>) {
        for o in outputs {
            if let OutputRef::Object(name) = o {
                if let Err(e) = self.store.delete(name).await {
                    tracing::warn!(object = %name, error = %e, "cannot delete an object from the store");
                }
            }
        }
    }

    /// Commits a shard's outcome, exactly once: the create fails with
    /// NodeExists if any master already committed it.
    pub async fn commit(
        &self,
        job: &str,
        key: ShardKey,
        attempt: u32,
        output: ShardOutput,
        failures: Vec<crate::core::TaskFailure>,
    ) -> Result<CommitOutcome, CoordError> {
        let path = self.layout.commit(job, key);
        let output = match output {
            ShardOutput::Object(name) => {
                Store::check_shard_output(job, &name)?;
                OutputRef::Object(name)
            }
            ShardOutput::Bytes(bytes) => {
                let name = Store::shard_output_name(job, &key.to_string(), self.epoch, attempt)?;
                self.output_ref(name, bytes).await?
            }
        };
        let mut record = ShardRecord {
            epoch: self.epoch,
            attempt,
            output,
            failures,
        };
        // Many long error messages can outgrow a request: shorten them until
        // the commit fits (the task indexes and attempts always stay).
        let mut keep = 1024;
        let data = loop {
            match encode_record(&path, &record) {
                Err(CoordError::TooLarge { .. }) if keep > 0 => {
                    keep /= 8;
                    for f in &mut record.failures {
                        if f.error.len() > keep {
                            let mut cut = keep;
                            while !f.error.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            f.error.truncate(cut);
                            f.error.push('…');
                        }
                    }
                }
                other => break other?,
            }
        };
        match self
            .retry("commit", &path, || {
                self.lock.create(&path, &data, &PERSISTENT)
            })
            .await
        {
            Ok(_) => Ok(CommitOutcome::Committed(record)),
            Err(CoordError::Zk {
                source: ZkError::NodeExists,
                ..
            }) => {
                let (data, _) = self
                    .client()
                    .get_data(&path)
                    .await
                    .map_err(|e| CoordError::zk(&path, e))?;
                Ok(CommitOutcome::AlreadyCommitted(decode_record(
                    &path, &data,
                )?))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the reduced result and marks the job done, in one fenced
    /// transaction that also checks the job record's version (a conflict,
    /// [`CoordError::is_conflict`], means it was cancelled meanwhile); then
    /// removes the job's batches and commits.
    pub async fn finish(
        &self,
        job: &StoredJob,
        output: Vec<u8>,
        failures: Vec<crate::core::TaskFailure>,
        counters: crate::core::Counters,
        shard_objects: &[String],
    ) -> Result<ResultRecord, CoordError> {
        let path = self.layout.result(&job.id);
        let job_path = self.layout.job(&job.id);
        let result = ResultRecord {
            epoch: self.epoch,
            output: self
                .output_ref(Store::result_name(&job.id, self.epoch)?, output)
                .await?,
            failures,
            counters,
        };
        let mut rec = job.record.clone();
        rec.status = JobStatus::Done;
        let job_data = encode_record(&job_path, &rec)?;
        let result_data = encode_record(&path, &result)?;
        let res = self
            .fenced("finish", &path, |w| {
                w.add_create(&path, &result_data, &PERSISTENT)?;
                // Versioned: a cancel that got there first wins, and this
                // whole transaction (the result too) is refused.
                w.add_set_data(&job_path, &job_data, Some(job.version))
            })
            .await;
        match res {
            Ok(())
            | Err(CoordError::Zk {
                source: ZkError::NodeExists,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        self.delete_children(&format!("{job_path}/batches")).await?;
        self.delete_children(&self.layout.done(&job.id)).await?;
        self.delete_children(&self.layout.lost(&job.id)).await?;
        // The shard outputs are merged into the result: their objects go too.
        let objects: Vec<OutputRef> = shard_objects
            .iter()
            .map(|n| OutputRef::Object(n.clone()))
            .collect();
        self.delete_outputs(&objects).await;
        Ok(result)
    }

    /// Reads a finished job's result record, if it has one.
    pub async fn read_result(&self, id: &str) -> Result<Option<ResultRecord>, CoordError> {
        let path = self.layout.result(id);
        match retry_loss(|| self.client().get_data(&path)).await {
            Ok((data, _)) => Ok(Some(decode_record(&path, &data)?)),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(CoordError::zk(path, e)),
        }
    }

    /// Marks a job's result fetched (the retention clock starts).
    pub async fn mark_fetched(&self, job: &StoredJob) -> Result<(), CoordError> {
        if job.record.fetched_ms.is_some() {
            return Ok(());
        }
        let job_path = self.layout.job(&job.id);
        let mut r = job.record.clone();
        r.fetched_ms = Some(now_ms());
        let data = encode_record(&job_path, &r)?;
        let res = self
            .retry("set_status", &job_path, || {
                self.lock.set_data(&job_path, &data, None)
            })
            .await;
        match res {
            // Collected since it was read: the fetch has its result anyway.
            Ok(_)
            | Err(CoordError::Zk {
                source: ZkError::NoNode,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets a job's status (cancel), if its record is still the version
    /// read: a conflict ([`CoordError::is_conflict`]) means it changed
    /// meanwhile (finished, or cancelled by another request).
    pub async fn set_status(&self, job: &StoredJob, status: JobStatus) -> Result<(), CoordError> {
        let path = self.layout.job(&job.id);
        let mut rec = job.record.clone();
        rec.status = status;
        if status == JobStatus::Cancelled {
            rec.fetched_ms = Some(now_ms());
        }
        let data = encode_record(&path, &rec)?;
        let res = self
            .retry("set_status", &path, || {
                self.lock.set_data(&path, &data, Some(job.version))
            })
            .await;
        match res {
            Ok(_) => Ok(()),
            // Our own write, applied before a connection loss, then retried.
            Err(e) if e.is_conflict() => match self.read_job(&job.id).await? {
                Some(now) if now.record == rec => Ok(()),
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Deletes the jobs `victims` (chosen by [`crate::core::job::Retention`]):
    /// their znodes, and the store objects their records name (the result
    /// of a finished job, the committed outputs of a cancelled one).
    pub async fn collect(&self, victims: &[StoredJob]) -> Result<(), CoordError> {
        for job in victims {
            let mut outputs: Vec<OutputRef> = Vec::new();
            if let Some(r) = self.read_result(&job.id).await? {
                outputs.push(r.output);
            }
            if job.record.status == JobStatus::Cancelled {
                match self.read_commits(&job.id).await {
                    Ok(commits) => outputs.extend(commits.into_values().map(|r| r.output)),
                    Err(e) => {
                        tracing::warn!(job = %job.id, error = %e, "cannot read a cancelled job's commits; its objects stay in the store")
                    }
                }
            }
            self.delete_tree(&self.layout.job(&job.id)).await?;
            self.delete_outputs(&outputs).await;
        }
        Ok(())
    }

    /// Deletes a subtree with fenced multis under the request budget.
    pub async fn delete_tree(&self, path: &str) -> Result<(), CoordError> {
        self.delete_children_rec(path).await?;
        match self
            .retry("delete", path, || self.lock.delete(path, None))
            .await
        {
            Ok(())
            | Err(CoordError::Zk {
                source: ZkError::NoNode,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_children(&self, path: &str) -> Result<(), CoordError> {
        self.delete_children_rec(path).await
    }

    fn delete_children_rec<'a>(
        &'a self,
        path: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), CoordError>> {
        Box::pin(async move {
            let children = match self.client().list_children(path).await {
                Ok(c) => c,
                Err(ZkError::NoNode) => return Ok(()),
                Err(e) => return Err(CoordError::zk(path, e)),
            };
            let mut leaves = Vec::new();
            for c in children {
                let child = format!("{path}/{c}");
                let stat = self
                    .client()
                    .check_stat(&child)
                    .await
                    .map_err(|e| CoordError::zk(&child, e))?;
                if stat.is_some_and(|s| s.num_children > 0) {
                    self.delete_children_rec(&child).await?;
                }
                leaves.push(child);
            }
            for chunk in leaves.chunks(500) {
                let res = self
                    .fenced("delete", path, |w| {
                        chunk.iter().try_for_each(|p| w.add_delete(p, None))
                    })
                    .await;
                match res {
                    Ok(()) => {}
                    // Someone (we, before a connection loss) deleted part: one by one.
                    Err(CoordError::Zk {
                        source: ZkError::NoNode,
                        ..
                    }) => {
                        for p in chunk {
                            match self.retry("delete", p, || self.lock.delete(p, None)).await {
                                Ok(())
                                | Err(CoordError::Zk {
                                    source: ZkError::NoNode,
                                    ..
                                }) => {}
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
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
