//! Shard commits (each shard's outcome in a commit record, many shards of
//! a job to a record), lost attempts, and finishing a job (its result and
//! `Done` in one versioned transaction).

use std::collections::BTreeMap;
use std::sync::Arc;

use zookeeper_client::Error as ZkError;

use super::batch::Part;
use serde_bytes::ByteBuf;

use super::JobRef;
use super::{retry_loss, Committed, Finished, LeaderStore, Op, ShardOutput, StoredJob};
use crate::coord::records::{
    commit_entries, CommitEntryRef, JobStatus, OutputRef, RecordName, ResultRecord, ShardRecord,
};
use crate::coord::zk::{encode_record, CoordError};
use crate::core::{shard_count, ShardKey};

/// A finished job with at most this many shards (and one batch of tasks)
/// keeps its znodes until collection (see [`LeaderStore::clean_finished`]).
const SMALL_JOB_SHARDS: u32 = 64;
use crate::store::Store;

impl LeaderStore {
    /// Reads every committed shard of a job.
    pub async fn read_commits(
        &self,
        job: &StoredJob,
    ) -> Result<BTreeMap<ShardKey, ShardRecord>, CoordError> {
        Ok(self
            .read_commits_at(job)
            .await?
            .into_iter()
            .map(|(key, (record, _))| (key, record))
            .collect())
    }

    /// Reads every committed shard of a job, with the commit record that
    /// holds it. Records are read in the order of their names (an older
    /// version's one-shard znodes first): a shard held by two (a commit
    /// sent again after its outcome was lost) counts from the first.
    pub async fn read_commits_at(
        &self,
        job: &StoredJob,
    ) -> Result<BTreeMap<ShardKey, (ShardRecord, Arc<str>)>, CoordError> {
        let compact = job.record.is_compact();
        let buckets = if compact {
            // Its records are its own children (with `result` and `lost`).
            vec![self.layout.job(&job.id)]
        } else {
            let done = self.layout.done(&job.id);
            match retry_loss(|| self.client().list_children(&done)).await {
                Ok(b) => b.iter().map(|b| format!("{done}/{b}")).collect(),
                Err(ZkError::NoNode) => return Ok(BTreeMap::new()),
                Err(e) => return Err(CoordError::zk(&done, e)),
            }
        };
        let listed = futures::future::join_all(
            buckets
                .iter()
                .map(|bucket| retry_loss(move || self.client().list_children(bucket))),
        )
        .await;
        // (None, key) for a one-shard znode, (Some(name), _) for a record.
        let mut found: Vec<(Option<RecordName>, Option<ShardKey>, String)> = Vec::new();
        for (bucket, names) in buckets.iter().zip(listed) {
            let names = match names {
                Ok(n) => n,
                // Removed meanwhile (the job was collected).
                Err(ZkError::NoNode) => continue,
                Err(e) => return Err(CoordError::zk(bucket, e)),
            };
            for n in names {
                let path = format!("{bucket}/{n}");
                if let Ok(name) = n.parse::<RecordName>() {
                    found.push((Some(name), None, path));
                } else if let Ok(key) = n.parse::<ShardKey>() {
                    found.push((None, Some(key), path));
                } else if compact {
                    // `result`, `lost`: not commits.
                } else {
                    tracing::warn!(%path, "ignoring a znode that is not a shard commit");
                }
            }
        }
        found.sort_by_key(|a| (a.0, a.1));
        let paths: Vec<String> = found.iter().map(|(_, _, p)| p.clone()).collect();
        let mut out = BTreeMap::new();
        for ((_, _, path), data) in found.into_iter().zip(self.read_all(&paths).await?) {
            let path: Arc<str> = path.into();
            for (key, record) in decode_commit(&path, &data) {
                out.entry(key).or_insert_with(|| (record, path.clone()));
            }
        }
        Ok(out)
    }

    /// Every shard a commit record holds (nothing if it is gone: the job
    /// was collected), read from its path `at` (see
    /// [`Self::read_commits_at`]; a stream's master knows it).
    pub async fn read_commit_record(
        &self,
        at: &str,
    ) -> Result<Vec<(ShardKey, ShardRecord)>, CoordError> {
        match retry_loss(|| self.client().get_data(at)).await {
            Ok((data, _)) => Ok(decode_commit(at, &data)),
            Err(ZkError::NoNode) => Ok(Vec::new()),
            Err(e) => Err(CoordError::zk(at, e)),
        }
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
            let set = vec![Op::set(&path, data, None)];
            match self.fenced("record_loss", &path, set).await {
                Ok(_) => return Ok(()),
                Err(CoordError::Zk {
                    source: ZkError::NoNode,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
            let create = vec![Op::create(&path, data)];
            match self.fenced("record_loss", &path, create).await {
                Ok(_) => return Ok(()),
                Err(CoordError::Zk {
                    source: ZkError::NodeExists,
                    ..
                }) => {}
                // A compact job's first lost run: `lost` is created now
                // (a job that is gone fails there, with `NoNode`).
                Err(CoordError::Zk {
                    source: ZkError::NoNode,
                    ..
                }) => {
                    let dir = self.layout.lost(job);
                    let create = vec![Op::create(&dir, Vec::new())];
                    match self.fenced("record_loss", &dir, create).await {
                        Ok(())
                        | Err(CoordError::Zk {
                            source: ZkError::NodeExists,
                            ..
                        }) => {}
                        Err(e) => return Err(e),
                    }
                }
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
        let mut out = BTreeMap::new();
        for ((n, path), data) in names.iter().zip(&paths).zip(self.read_all(&paths).await?) {
            let key = n.parse::<ShardKey>().ok();
            match (key, <[u8; 4]>::try_from(data.as_slice())) {
                (Some(key), Ok(b)) => {
                    out.insert(key, u32::from_be_bytes(b));
                }
                _ => tracing::warn!(%path, "ignoring a garbage lost-attempt record"),
            }
        }
        Ok(out)
    }

    /// Commits a shard's outcome. Its commit travels with the other
    /// commits of the job that wait with it, in one commit record (see
    /// the group-commit writer, `coord/store/batch.rs`). The scheduler sends each shard once at a time;
    /// one sent again after an unknown outcome may be held by two records,
    /// of which recovery counts the first.
    /// `job`: the job's id, incarnation, and whether its record says
    /// [`crate::coord::JobRecord::is_compact`] (its records are then its
    /// own children).
    pub async fn commit(
        &self,
        job: JobRef<'_>,
        key: ShardKey,
        attempt: u32,
        output: ShardOutput,
        failures: Vec<crate::core::TaskFailure>,
    ) -> Result<Committed, CoordError> {
        let JobRef {
            id,
            incarnation,
            compact,
        } = job;
        let job = id;
        let (parent, bucket) = match compact {
            true => (self.layout.job(job), self.layout.job(job)),
            false => (self.layout.done(job), self.layout.bucket(job, key.index)),
        };
        let output = match output {
            ShardOutput::Object(name) => {
                Store::check_shard_output((job, incarnation), &name)?;
                OutputRef::Object(name)
            }
            ShardOutput::Bytes(bytes) => {
                let name = Store::shard_output_name(
                    (job, incarnation),
                    &key.to_string(),
                    self.epoch,
                    attempt,
                )?;
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
        let entry = loop {
            match encode_record(&bucket, &CommitEntryRef(key, &record)) {
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
        let part = Part {
            job: parent,
            bucket: bucket.clone(),
            entry,
        };
        let at = self
            .batcher
            .commit_part("commit", part)
            .await
            .map_err(|e| CoordError::zk(&bucket, e))?;
        Ok(Committed { record, at })
    }

    /// Writes the reduced result and marks the job done, in one fenced
    /// transaction that also checks the job record's version (a conflict,
    /// [`CoordError::is_conflict`], means it was cancelled meanwhile).
    /// A compact job's small result goes in its record
    /// ([`crate::coord::JobRecord::keep_result`]): its end is one versioned
    /// set. Otherwise the result is a znode of its own, created with the
    /// set.
    /// `fetched`: the result is being handed to a client now (a watch that
    /// asked for it), so the record is marked fetched in the same write. What
    /// the result makes useless goes afterwards, in [`Self::clean_finished`],
    /// so that the job's end is answered as soon as it is durable.
    pub async fn finish(
        &self,
        job: &StoredJob,
        output: Vec<u8>,
        failures: Vec<crate::core::TaskFailure>,
        counters: crate::core::Counters,
        fetched: bool,
    ) -> Result<Finished, CoordError> {
        let path = self.layout.result(&job.id);
        let job_path = self.layout.job(&job.id);
        let end = self.kept_end(job, output, failures, counters, fetched);
        let (rec, output, failures) = match end {
            EndRecord::Kept(end) => {
                let data = encode_record(&job_path, &end.record)?;
                let set = vec![Op::set(&job_path, data, Some(job.version))];
                return match self.fenced("finish", &job_path, set).await {
                    Ok(()) => Ok(*end),
                    Err(e) if e.is_conflict() => self.ended_before(job, e).await,
                    Err(e) => Err(e),
                };
            }
            EndRecord::Apart(rec, output, failures) => (*rec, output, failures),
        };
        let (output, object) = self
            .output_ref_kept(
                Store::result_name((&job.id, job.record.incarnation), self.epoch)?,
                output,
            )
            .await?;
        let result = ResultRecord {
            epoch: self.epoch,
            output,
            failures,
            counters,
            form: self.result_form(),
        };
        let job_data = encode_record(&job_path, &rec)?;
        let result_data = encode_record(&path, &result)?;
        let res = self
            .fenced(
                "finish",
                &path,
                vec![
                    Op::create(&path, result_data),
                    // Versioned: a cancel that got there first wins, and this
                    // whole write (the result too) is refused.
                    Op::set(&job_path, job_data, Some(job.version)),
                ],
            )
            .await;
        match res {
            Ok(())
            | Err(CoordError::Zk {
                source: ZkError::NodeExists,
                ..
            }) => {}
            // A compact job whose end was kept in its record by an earlier
            // try (a one-write end whose answer was lost) is ended.
            Err(e) if e.is_conflict() => return self.ended_before(job, e).await,
            Err(e) => return Err(e),
        }
        Ok(Finished {
            result,
            record: rec,
            fetched,
            object,
        })
    }

    /// A job's record at its end (`Done`, marked fetched if `fetched`)
    /// with its result kept in it, as [`crate::coord::JobRecord::keep_result`] allows; or,
    /// for a result too big to be kept, that record without it, with the
    /// output and failures given back.
    pub(super) fn kept_end(
        &self,
        job: &StoredJob,
        output: Vec<u8>,
        failures: Vec<crate::core::TaskFailure>,
        counters: crate::core::Counters,
        fetched: bool,
    ) -> EndRecord {
        let mut rec = job.record.clone();
        rec.status = JobStatus::Done;
        if fetched {
            rec.fetched_ms = Some(super::now_ms());
        }
        if !rec.keep_result(&output, &failures) {
            return EndRecord::Apart(Box::new(rec), output, failures);
        }
        let kept = ResultRecord {
            epoch: self.epoch,
            output: OutputRef::Inline(ByteBuf::from(output)),
            failures,
            counters,
            form: self.result_form(),
        };
        rec.result = Some(kept.clone());
        EndRecord::Kept(Box::new(Finished {
            result: kept,
            record: rec,
            fetched,
            object: None,
        }))
    }

    /// A finish that kept its result in the record was refused (`refused`,
    /// a conflict): the job's end if ZooKeeper holds one of this master's
    /// epoch (only this master's finish writes that: an earlier send of
    /// this write, or of this job's finish, applied and its answer was
    /// lost), else the refusal (a cancel won). The end is answered as
    /// stored: its counts and fetched mark may differ from the retry's.
    async fn ended_before(
        &self,
        job: &StoredJob,
        refused: CoordError,
    ) -> Result<Finished, CoordError> {
        let Some(now) = self.read_job(&job.id).await? else {
            return Err(refused);
        };
        match now.record.result.clone() {
            Some(result) if now.record.status == JobStatus::Done && result.epoch == self.epoch => {
                Ok(Finished {
                    result,
                    fetched: now.record.fetched_ms.is_some(),
                    record: now.record,
                    object: None,
                })
            }
            _ => Err(refused),
        }
    }

    /// Removes what a finished job's result makes useless: the store
    /// objects of its shard outputs (merged into the result), and its
    /// batches, commits and lost-attempt records. A small job's znodes are
    /// few: they are left for collection, which removes them with the rest
    /// of the job (and whatever this did not remove).
    pub async fn clean_finished(
        &self,
        job: &StoredJob,
        shard_objects: &[String],
    ) -> Result<(), CoordError> {
        let objects: Vec<OutputRef> = shard_objects
            .iter()
            .map(|n| OutputRef::Object(n.clone()))
            .collect();
        let r = &job.record;
        // A streamed job's outputs stay until collection: a stream that
        // fell behind (or follows a failover) reads them.
        if r.options.stream {
            return Ok(());
        }
        self.delete_outputs(&objects).await;
        if r.is_compact()
            || r.batches <= 1
                && shard_count(r.tasks_total, r.options.shard_size) <= SMALL_JOB_SHARDS
        {
            return Ok(());
        }
        let id = &job.id;
        self.delete_children(&format!("{}/batches", self.layout.job(id)))
            .await?;
        self.delete_children(&self.layout.done(id)).await?;
        self.delete_children(&self.layout.lost(id)).await
    }
}

/// The shards a commit znode holds (see [`commit_entries`]); garbage is
/// logged and holds nothing.
fn decode_commit(path: &str, data: &[u8]) -> Vec<(ShardKey, ShardRecord)> {
    let name = path.rsplit('/').next().unwrap_or_default();
    commit_entries(name, data).unwrap_or_else(|reason| {
        tracing::warn!(%path, %reason, "ignoring a garbage shard commit");
        Vec::new()
    })
}

/// A job's end record ([`LeaderStore::kept_end`]).
pub(super) enum EndRecord {
    /// Its result kept in it: the end, as written.
    Kept(Box<Finished>),
    /// Its result too big for it: the record, and the output and failures.
    Apart(
        Box<crate::coord::JobRecord>,
        Vec<u8>,
        Vec<crate::core::TaskFailure>,
    ),
}
