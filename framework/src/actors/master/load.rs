//! Reading a job back from ZooKeeper: its tasks, its commits and lost
//! attempts, its committed outputs merged off the arbiter. What remains to
//! run is decided by [`recover_job`]; what the commits add to the job's
//! report, by the ledger.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::StreamExt;

use super::{JobRuntime, Master};
use crate::coord::{CoordError, JobRecord, LeaderStore, OutputRef, ShardRecord, StoredJob};
use crate::core::job::{task_bytes, Merge};
use crate::core::master::{Event as CoreEvent, NewJob, Quarantined};
use crate::core::{recover_job, CommittedShard, JobPlan, ShardKey};
use crate::registry::Registry;

/// Jobs whose state is read at once during recovery.
const RECOVERY_CONCURRENCY: usize = 256;

/// A job read back, ready for the scheduler and the ledger.
pub(super) struct Loaded {
    pub rt: JobRuntime,
    pub plan: JobPlan,
    pub bytes: usize,
    pub failures: Vec<crate::core::TaskFailure>,
    pub objects: Vec<String>,
    /// Committed outputs that could not be read or merged, with why.
    pub unmerged: Vec<(Merge, String)>,
}

/// What a job's commits come to ([`recover_job`] on a stored job).
pub(super) fn recover_stored(
    job: &StoredJob,
    commits: &BTreeMap<ShardKey, ShardRecord>,
) -> crate::core::RecoveredJob {
    let summary: BTreeMap<ShardKey, CommittedShard> = commits
        .iter()
        .map(|(k, r)| (*k, CommittedShard::from(r)))
        .collect();
    let rec = &job.record;
    let mut recovered = recover_job(
        &job.id,
        &rec.job_name,
        rec.tasks_total,
        rec.options.shard_size,
        rec.options.max_attempts,
        &summary,
    );
    recovered.plan.incarnation = rec.incarnation;
    recovered
}

/// How far a takeover's reading back has come.
struct Progress {
    total: usize,
    started: std::time::Instant,
}

/// Reads a job, then merges its committed outputs on the blocking pool.
pub(super) async fn load(
    store: LeaderStore,
    registry: Registry,
    job: StoredJob,
) -> Result<Loaded, CoordError> {
    // The three reads pipeline on the session.
    let (tasks, located, losses) = futures::try_join!(
        store.read_tasks(&job),
        store.read_commits_at(&job),
        store.read_losses(&job.id)
    )?;
    let (commits, at): (
        BTreeMap<ShardKey, ShardRecord>,
        BTreeMap<ShardKey, Arc<str>>,
    ) = located
        .into_iter()
        .map(|(key, (record, path))| ((key, record), (key, path)))
        .unzip();
    let erased = registry
        .get(&job.record.job_name)
        .ok_or_else(|| CoordError::Garbage {
            path: store.layout().job(&job.id),
            reason: format!(
                "job type {:?} is not registered on this master's node (it registers {}): the \
                 job runs once a node whose binary registers it is master; cancel it to drop it",
                job.record.job_name,
                registry.names().join(", ")
            ),
        })?
        .clone();
    let ours = registry.shape_id(&job.record.job_name);
    if !crate::registry::same_types(job.record.shape, ours) {
        return Err(CoordError::Garbage {
            path: store.layout().job(&job.id),
            reason: format!(
                "job type {:?} was submitted with other task and result types than this \
                 master's node defines (a build of the application other than this one): the \
                 job runs once a node of that build is master; cancel it to drop it",
                job.record.job_name
            ),
        });
    }
    let recovered = recover_stored(&job, &commits);
    let rec = &job.record;
    let attempts: BTreeMap<ShardKey, u32> = commits.iter().map(|(k, r)| (*k, r.attempt)).collect();
    // Only the commits of each shard's chain count (see `recover_job`).
    // Read (from the store, a few at a time), then merged off the arbiter.
    let chain: Vec<(ShardKey, ShardRecord)> = commits
        .into_iter()
        .filter(|(key, _)| recovered.outputs.contains_key(key))
        .collect();
    let committed: Vec<ShardKey> = chain.iter().map(|(key, _)| *key).collect();
    let objects: Vec<String> = chain
        .iter()
        .filter_map(|(_, r)| match &r.output {
            OutputRef::Object(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    let reads = chain.into_iter().map(|(key, r)| {
        let store = store.clone();
        async move {
            let bytes = store
                .read_output(&r.output)
                .await
                .map_err(|e| e.to_string());
            (key, bytes)
        }
    });
    let outputs: Vec<(ShardKey, Result<Vec<u8>, String>)> =
        futures::stream::iter(reads).buffered(8).collect().await;
    let nothing_committed = outputs.is_empty();
    let merge = move || {
        let mut acc = erased.new_acc();
        let mut failed = Vec::new();
        for (key, bytes) in &outputs {
            let merged = bytes.as_ref().map_err(Clone::clone).and_then(|bytes| {
                erased
                    .merge_encoded(&mut acc, bytes)
                    .map_err(|e| e.to_string())
            });
            if let Err(e) = merged {
                failed.push((*key, e));
            }
        }
        (acc, failed)
    };
    // Nothing committed yet: no need for a thread of the blocking pool.
    let (acc, failed) = if nothing_committed {
        merge()
    } else {
        tokio::task::spawn_blocking(merge)
            .await
            .map_err(|e| CoordError::Garbage {
                path: store.layout().job(&job.id),
                reason: format!("merging failed: {e}"),
            })?
    };
    let unmerged = failed
        .into_iter()
        .map(|(key, error)| {
            let merge = Merge {
                job: job.id.clone(),
                key,
                attempt: attempts.get(&key).copied().unwrap_or(1),
                tasks: recovered.outputs.get(&key).cloned().unwrap_or_default(),
            };
            (merge, error)
        })
        .collect();
    let mut plan = recovered.plan;
    as_recorded(&mut plan, rec);
    for p in &mut plan.pending {
        if let Some(&next) = losses.get(&p.key) {
            p.attempt = p.attempt.max(next);
        }
    }
    Ok(Loaded {
        bytes: task_bytes(&tasks),
        rt: {
            let mut rt = JobRuntime::new(job, Arc::new(tasks), acc);
            if !nothing_committed {
                // Of a size this master did not count: encoded on the pool.
                rt.acc_bytes = usize::MAX;
            }
            for key in &committed {
                if let Some(path) = at.get(key) {
                    rt.logged(*key, path.clone());
                }
            }
            rt
        },
        plan,
        failures: recovered.final_failures,
        objects,
        unmerged,
    })
}

impl Master {
    /// A job that may be durable and unfinished in ZooKeeper while this
    /// master does not run it (a cancel whose write failed; a create whose
    /// answer was lost, found by a resubmission): read back and scheduled,
    /// as a takeover would, so that it ends without waiting for a
    /// failover. A read that fails is tried again a second later. A job
    /// this master ended or cancelled (its owner kept) is not: its end
    /// may be in flight.
    pub(super) fn readopt(&mut self, ctx: &mut Context<Self>, job_id: String) {
        if self.core.holds(&job_id) {
            return;
        }
        let store = self.store.clone();
        let registry = self.settings.registry.clone();
        let id = job_id.clone();
        let read = async move {
            match store.read_job(&id).await? {
                Some(job) if job.record.status == crate::coord::JobStatus::Accepted => {
                    load(store, registry, job).await.map(Some)
                }
                _ => Ok(None),
            }
        };
        ctx.spawn(read.into_actor(self).map(move |res, act, ctx| match res {
            Ok(Some(loaded)) => {
                if !act.core.holds(&job_id) {
                    tracing::info!(job = %job_id, "an unfinished job this master did not run is scheduled");
                    act.add_loaded(ctx, job_id, loaded);
                }
            }
            Ok(None) => {}
            Err(e) if e.is_session_end() => act.fail(ctx, &e),
            Err(CoordError::Garbage { path, reason }) => {
                let reason = format!("{path}: {reason}");
                act.quarantine(ctx, job_id, None, reason);
            }
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "cannot read back a job to schedule it; retrying");
                ctx.run_later(Duration::from_secs(1), move |act, ctx| act.readopt(ctx, job_id));
            }
        }));
    }

    /// A job this master cannot read or run (`job`: its record, if that
    /// could be read) is quarantined: shown with `reason`, left for a
    /// master that can run it, never collected here. Every other job
    /// runs; the master does not step down for it.
    pub(super) fn quarantine(
        &mut self,
        ctx: &mut Context<Self>,
        id: String,
        job: Option<&StoredJob>,
        reason: String,
    ) {
        let record = job.map(|j| &j.record);
        let why = Quarantined {
            reason,
            job_name: record.map(|r| r.job_name.clone()),
            tasks_total: record.map_or(0, |r| r.tasks_total),
            owner: record.and_then(|r| r.owner.clone()),
            created_ms: record.map_or(0, |r| r.created_ms),
        };
        let why = Box::new(why);
        self.handle_core(ctx, CoreEvent::Unreadable { job: id, why });
    }

    /// Reads unfinished jobs back from ZooKeeper while serving, many at a
    /// time, and queues each as soon as it is read. A job cancelled while
    /// it loads is dropped when it arrives; one submitted again meanwhile
    /// is found in ZooKeeper and reported as existing.
    pub(super) fn load_jobs(&mut self, ctx: &mut Context<Self>, pending: Vec<StoredJob>) {
        if pending.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let total = pending.len();
        let permits = Arc::new(tokio::sync::Semaphore::new(RECOVERY_CONCURRENCY));
        let loading = pending
            .iter()
            .map(|j| (j.id.clone(), j.record.owner.clone()))
            .collect();
        self.handle_core(ctx, CoreEvent::Loading(loading));
        let progress = Arc::new(Progress { total, started });
        for job in pending {
            self.load_one(ctx, job, permits.clone(), progress.clone());
        }
    }

    /// Reads one unfinished job back: queued once read; quarantined if it
    /// cannot be read or run; read again a second later after a
    /// transient error.
    fn load_one(
        &mut self,
        ctx: &mut Context<Self>,
        job: StoredJob,
        permits: Arc<tokio::sync::Semaphore>,
        progress: Arc<Progress>,
    ) {
        let store = self.store.clone();
        let registry = self.settings.registry.clone();
        let id = job.id.clone();
        let again = job.clone();
        let read = {
            let permits = permits.clone();
            async move {
                let _permit = permits.acquire_owned().await;
                load(store, registry, job).await
            }
        };
        ctx.spawn(read.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(loaded) => {
                    if act.core.take_loaded(&id) {
                        act.add_loaded(ctx, id.clone(), loaded);
                    }
                }
                Err(e) if e.is_session_end() => return act.fail(ctx, &e),
                Err(CoordError::Garbage { path, reason }) => {
                    let reason = format!("{path}: {reason}");
                    act.quarantine(ctx, id.clone(), Some(&again), reason);
                }
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "cannot read back a job; retrying");
                    ctx.run_later(Duration::from_secs(1), move |act, ctx| {
                        act.load_one(ctx, again, permits, progress)
                    });
                    return;
                }
            }
            if act.core.loading() == 0 {
                tracing::info!(
                    jobs = progress.total,
                    recovered_ms = progress.started.elapsed().as_millis() as u64,
                    "every unfinished job is back in the queue"
                );
            }
        }));
    }

    /// Hands a job read back (or just accepted) to the ledger and the
    /// scheduler.
    pub(super) fn add_loaded(&mut self, ctx: &mut Context<Self>, id: String, loaded: Loaded) {
        let record = &loaded.rt.stored.record;
        let owner = record.owner.clone();
        let kept_result = record.kept_result_room();
        let creating = loaded.rt.creating.is_some();
        if let Some(old) = self.jobs.insert(id.clone(), loaded.rt) {
            self.recent_total -= old.recent_bytes;
        }
        // It is known here now: watches that came before are checked.
        self.screen(&id, owner.as_deref());
        let job = NewJob {
            plan: loaded.plan,
            bytes: loaded.bytes,
            failures: loaded.failures,
            objects: loaded.objects,
            unmerged: loaded.unmerged,
            kept_result,
            owner,
            creating,
        };
        self.handle_core(ctx, CoreEvent::Added(Box::new(job)));
    }
}

/// What a job's record says of how it is scheduled, in its plan.
pub(super) fn as_recorded(plan: &mut JobPlan, rec: &JobRecord) {
    plan.incarnation = rec.incarnation;
    plan.shard_timeout = rec.options.shard_timeout_ms.map(Duration::from_millis);
    plan.priority = rec.options.priority;
    plan.fairness = rec.fairness_key();
    plan.not_before = rec.options.not_before_ms.and_then(until);
    plan.under = rec.options.under.clone();
}

/// The instant of this master's clocks at which its wall clock reads
/// `ms` (milliseconds since the Unix epoch); `None` when it has passed.
/// Taken once, when the master takes a delayed job in: a step of its wall
/// clock after that does not move the job's start.
fn until(ms: u64) -> Option<Instant> {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    let wait = at.duration_since(std::time::SystemTime::now()).ok()?;
    Instant::now().checked_add(wait)
}
