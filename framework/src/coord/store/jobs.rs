//! Job records: creating a submission (fenced, under the request budget;
//! a compact job's create open to its end in the same write), reading
//! jobs, their tasks and results, cancel and fetched marks.

use serde_bytes::ByteBuf;
use zookeeper_client::Error as ZkError;

use super::{now_ms, retry_loss, Amend, Finished, LeaderStore, Op, StoredJob};
use crate::coord::records::{JobRecord, JobStatus, ResultRecord};
use crate::coord::zk::{decode_record, encode_record, CoordError, REQUEST_BUDGET};
use crate::core::shard_count;

/// A job with at most this many commit buckets (and one batch of tasks)
/// is written in one transaction.
const SMALL_JOB_BUCKETS: u32 = 16;
/// A job whose tasks take at most this many bytes (with their overhead),
/// in at most a bucket's worth of shards, is compact
/// ([`JobRecord::is_compact`]): its record is rewritten, tasks and all, at
/// each change of state, so they stay small.
const COMPACT_TASK_BYTES: usize = 16 * 1024;

impl LeaderStore {
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

    /// Lists every job: those whose records decode, and the ids of those
    /// whose records do not, with why.
    pub async fn list_jobs(&self) -> Result<(Vec<StoredJob>, Vec<(String, String)>), CoordError> {
        let ids = self.list_job_ids().await?;
        self.read_jobs_or_garbage(&ids).await
    }

    /// The ids of every job (one request).
    pub async fn list_job_ids(&self) -> Result<Vec<String>, CoordError> {
        let path = self.layout.jobs();
        match retry_loss(|| self.client().list_children(&path)).await {
            Ok(ids) => Ok(ids),
            Err(ZkError::NoNode) => Ok(Vec::new()),
            Err(e) => Err(CoordError::zk(path, e)),
        }
    }

    /// Reads the records of jobs `ids`, pipelined (a bounded number at a
    /// time, as `LeaderStore::read_all`); jobs gone meanwhile and
    /// records that are garbage (logged) are left out.
    pub async fn read_jobs(&self, ids: &[String]) -> Result<Vec<StoredJob>, CoordError> {
        let (jobs, garbage) = self.read_jobs_or_garbage(ids).await?;
        for (id, reason) in garbage {
            tracing::warn!(%reason, job = %id, "ignoring a job whose record is garbage");
        }
        Ok(jobs)
    }

    /// Reads the records of jobs `ids` as [`LeaderStore::read_jobs`], and
    /// says which could not be decoded, and why.
    pub async fn read_jobs_or_garbage(
        &self,
        ids: &[String],
    ) -> Result<(Vec<StoredJob>, Vec<(String, String)>), CoordError> {
        use futures::StreamExt;
        let reads = ids
            .iter()
            .map(|id| async move { (id, self.read_job(id).await) });
        let mut reads = futures::stream::iter(reads).buffered(super::READS_IN_FLIGHT);
        let mut jobs = Vec::with_capacity(ids.len());
        let mut garbage = Vec::new();
        while let Some((id, r)) = reads.next().await {
            match r {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) => {}
                Err(CoordError::Garbage { path, reason }) => {
                    garbage.push((
                        id.clone(),
                        format!("its record {path} cannot be read: {reason}"),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Ok((jobs, garbage))
    }

    /// Writes a new job: record (`Writing`), batches and commit buckets,
    /// then `Accepted`. Only then is the submission acknowledged. Returns
    /// the job as written; a job of this id that is not this write's
    /// gives an error for which [`CoordError::is_node_exists`] holds. A job whose tasks fit in one batch is written
    /// `Accepted` in one transaction with its batch and buckets: one
    /// round trip, and nothing half-written to clean up.
    pub async fn create_job(
        &self,
        id: &str,
        mut record: JobRecord,
        tasks: &[ByteBuf],
    ) -> Result<StoredJob, CoordError> {
        if let Some(job) = self.compact_job(id, record.clone(), tasks) {
            self.create_compact(&job, None).await?;
            return Ok(job);
        }
        let job_path = self.layout.job(id);
        let buckets = shard_count(record.tasks_total, record.options.shard_size).div_ceil(1000);
        // Cut the tasks into batches under the budget.
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
        record.created_ms = now_ms();
        let batches_path = format!("{job_path}/batches");
        let (lost, done) = (self.layout.lost(id), self.layout.done(id));
        record.batches = batches.len() as u32;
        if batches.len() <= 1 && buckets <= SMALL_JOB_BUCKETS {
            record.status = JobStatus::Accepted;
            let data = encode_record(&job_path, &record)?;
            let mut ops = vec![
                Op::create(&job_path, data),
                Op::create(batches_path, Vec::new()),
                Op::create(lost, Vec::new()),
                Op::create(done, Vec::new()),
            ];
            for (k, b) in batches.into_iter().enumerate() {
                ops.push(Op::create(self.layout.batch(id, k as u32), b));
            }
            for b in 0..buckets {
                ops.push(Op::create(self.layout.bucket(id, b * 1000), Vec::new()));
            }
            let res = self.fenced("create_job", &job_path, ops).await;
            return match res {
                // A created znode's version is 0.
                Ok(()) => Ok(StoredJob {
                    id: id.to_string(),
                    record,
                    version: 0,
                }),
                // Applied before a connection loss, then sent again: the
                // job is ours if it is exactly this record (its creation
                // time included), never an earlier identical submission.
                Err(e) if e.is_node_exists() => match self.read_job(id).await? {
                    Some(j) if j.record == record => Ok(j),
                    _ => Err(e),
                },
                Err(e) => Err(e),
            };
        }
        record.status = JobStatus::Writing;
        let data = encode_record(&job_path, &record)?;
        let dirs = [job_path.clone(), batches_path, lost, done];
        let ops = dirs
            .into_iter()
            .zip(std::iter::once(data).chain(std::iter::repeat(Vec::new())))
            .map(|(path, data)| Op::create(path, data))
            .collect();
        self.fenced("create_job", &job_path, ops).await?;
        let mut nodes: Vec<(String, &[u8])> = batches
            .iter()
            .enumerate()
            .map(|(k, b)| (self.layout.batch(id, k as u32), b.as_slice()))
            .collect();
        nodes.extend((0..buckets).map(|b| (self.layout.bucket(id, b * 1000), &[][..])));
        let writes = nodes.iter().map(|(path, data)| async move {
            self.retry("create_job", path, || {
                self.lock
                    .create(path, data, &self.layout.acl().persistent())
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

    /// A compact job ([`JobRecord::is_compact`]) as its create writes it
    /// (`Accepted`, its tasks in its record, created now), or `None` when
    /// the job is not compact. No I/O: the master may schedule the job
    /// while its create waits ([`LeaderStore::create_compact`]).
    pub fn compact_job(
        &self,
        id: &str,
        mut record: JobRecord,
        tasks: &[ByteBuf],
    ) -> Option<StoredJob> {
        let buckets = shard_count(record.tasks_total, record.options.shard_size).div_ceil(1000);
        let task_bytes: usize = tasks.iter().map(|t| t.len() + 16).sum();
        if task_bytes > COMPACT_TASK_BYTES || buckets > 1 {
            return None;
        }
        record.inline = Some(tasks.to_vec());
        record.created_ms = now_ms();
        record.batches = 0;
        record.status = JobStatus::Accepted;
        Some(StoredJob {
            id: id.to_string(),
            record,
            version: 0,
        })
    }

    /// Creates a compact job as [`LeaderStore::compact_job`] made it, in
    /// one fenced create. With `amend`, the job's end may be proposed in
    /// its place until the create is sent ([`LeaderStore::propose_end`]):
    /// answers whether that end is what was written (the job is then
    /// `Done`). A job of this id that is not this write's gives an error
    /// for which [`CoordError::is_node_exists`] holds.
    pub async fn create_compact(
        &self,
        job: &StoredJob,
        amend: Option<Amend>,
    ) -> Result<bool, CoordError> {
        let job_path = self.layout.job(&job.id);
        let data = encode_record(&job_path, &job.record)?;
        let ops = vec![Op::create(&job_path, data)];
        let (res, ended) = match amend {
            Some(amend) => self.batcher.write_amendable("create_job", ops, amend).await,
            None => (self.batcher.write("create_job", ops).await, false),
        };
        match res {
            Ok(()) => Ok(ended),
            // Applied before a connection loss, then sent again: the job
            // is ours if it is exactly this record (its creation time
            // included), never an earlier identical submission; ended if
            // what was sent was its end.
            Err(ZkError::NodeExists) => match self.read_job(&job.id).await? {
                Some(j) if as_created(&j.record, ended).as_ref() == Some(&job.record) => Ok(ended),
                _ => Err(CoordError::zk(job_path, ZkError::NodeExists)),
            },
            Err(e) => Err(CoordError::zk(job_path, e)),
        }
    }

    /// Proposes that `job`'s create, still waiting in `amend`, write the
    /// job's end instead (`Done`, its result in its record, marked
    /// fetched if `fetched`): the job's create and end in one write. The
    /// end as it would be written, if the proposal was taken (the
    /// create's answer says whether it went: a proposal too big for its
    /// transaction does not); `None` when the create has gone, or the
    /// result is too big to be kept in the record: the caller then ends
    /// the job once it is created.
    pub fn propose_end(
        &self,
        amend: &Amend,
        job: &StoredJob,
        output: Vec<u8>,
        failures: Vec<crate::core::TaskFailure>,
        counters: crate::core::Counters,
        fetched: bool,
    ) -> Result<Option<Finished>, CoordError> {
        let job_path = self.layout.job(&job.id);
        let super::commits::EndRecord::Kept(end) =
            self.kept_end(job, output, failures, counters, fetched)
        else {
            return Ok(None);
        };
        let data = encode_record(&job_path, &end.record)?;
        if !amend.propose(vec![Op::create(&job_path, data)]) {
            return Ok(None);
        }
        Ok(Some(*end))
    }

    /// Reads a job's encoded tasks, in order (a compact job's are in its
    /// record).
    pub async fn read_tasks(&self, job: &StoredJob) -> Result<Vec<ByteBuf>, CoordError> {
        if let Some(tasks) = &job.record.inline {
            return Ok(tasks.clone());
        }
        let id = &job.id;
        let paths: Vec<String> = (0..job.record.batches)
            .map(|k| self.layout.batch(id, k))
            .collect();
        let mut tasks = Vec::new();
        for (path, data) in paths.iter().zip(self.read_all(&paths).await?) {
            let batch: Vec<ByteBuf> = decode_record(path, &data)?;
            tasks.extend(batch);
        }
        Ok(tasks)
    }

    /// A finished job's result record, if it has one: kept in its record
    /// ([`crate::coord::JobRecord::result`]), or read from its `result`.
    pub async fn read_result(&self, job: &StoredJob) -> Result<Option<ResultRecord>, CoordError> {
        if let Some(result) = &job.record.result {
            return Ok(Some(result.clone()));
        }
        let path = self.layout.result(&job.id);
        match retry_loss(|| self.client().get_data(&path)).await {
            Ok((data, _)) => Ok(Some(decode_record(&path, &data)?)),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(CoordError::zk(path, e)),
        }
    }

    /// Marks a job's result fetched (the retention clock starts), if its
    /// record is still the version read: a record that changed since (a
    /// fetch marked it, or the id was collected and holds another job now)
    /// is left as it is, never overwritten with the copy read.
    pub async fn mark_fetched(&self, job: &StoredJob) -> Result<(), CoordError> {
        if job.record.fetched_ms.is_some() {
            return Ok(());
        }
        let job_path = self.layout.job(&job.id);
        let mut r = job.record.clone();
        r.fetched_ms = Some(now_ms());
        let data = encode_record(&job_path, &r)?;
        let set = vec![Op::set(&job_path, data, Some(job.version))];
        let res = self.fenced("set_status", &job_path, set).await;
        match res {
            // Collected since it was read: the fetch has its result anyway.
            Ok(_)
            | Err(CoordError::Zk {
                source: ZkError::NoNode,
                ..
            }) => Ok(()),
            // Changed since it was read: not this copy's to write.
            Err(e) if e.is_conflict() => Ok(()),
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
        let set = vec![Op::set(&path, data, Some(job.version))];
        let res = self.fenced("set_status", &path, set).await;
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
}

/// A compact job's record as its create wrote it: a record its create
/// ended (`ended`: `Done`, with its result and maybe its fetched mark)
/// without its end; `None` for a record the create did not write.
fn as_created(record: &JobRecord, ended: bool) -> Option<JobRecord> {
    match (record.status, ended) {
        (JobStatus::Accepted, false) => Some(record.clone()),
        (JobStatus::Done, true) => Some(JobRecord {
            status: JobStatus::Accepted,
            result: None,
            fetched_ms: None,
            ..record.clone()
        }),
        _ => None,
    }
}
