//! The master supervisor: recovers every unfinished job from ZooKeeper,
//! publishes itself, then runs the scheduler: shards to workers over QUIC,
//! reports committed by fenced transactions, results reduced and stored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::StreamExt;
use serde_bytes::ByteBuf;
use tokio::sync::{mpsc, watch};

use super::{Alive, Fatal, Stop};
use crate::coord::{
    submission_digest, CommitOutcome, CoordError, JobRecord, JobStatus, LeaderStore, OutputRef,
    ShardOutput, ShardRecord, StoredJob, WorkerInfo,
};
use crate::core::{recover_job, Command, CommittedShard, Scheduler, ShardKey, TaskFailure};
use crate::metrics as m;
use crate::registry::{Accumulator, Registry};
use crate::store::Store;
use crate::wire::{
    Assignment, ClusterStatus, Frame, JobOutcome, JobProgress, JobState, ShardReport, SubmitHeader,
    WorkerStatus,
};

/// Final failures kept per job for its report.
const MAX_KEPT_FAILURES: usize = 100;

/// A connected worker's control stream: frames pushed here are written by
/// the link's writer task.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerJoined {
    pub node_id: String,
    pub slots: u32,
    pub jobs: Vec<String>,
    pub tx: mpsc::UnboundedSender<Frame>,
    pub link_id: u64,
}

/// A worker's control stream ended.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerLeft {
    pub node_id: String,
    pub link_id: u64,
}

/// A worker reported on a shard.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Report {
    pub node_id: String,
    pub report: ShardReport,
}

/// A worker's slot picked up a shard.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Started {
    pub node_id: String,
    pub epoch: u64,
    pub job_id: String,
    pub shard: ShardKey,
    pub attempt: u32,
}

impl Handler<Started> for Master {
    type Result = ();
    fn handle(&mut self, msg: Started, _: &mut Context<Self>) {
        if let Some(l) = self.links.get_mut(&msg.node_id) {
            l.last_seen = std::time::Instant::now();
        }
        if msg.epoch == self.store.epoch() {
            self.sched
                .started(&msg.node_id, &msg.job_id, msg.shard, msg.attempt);
            if let Some(link) = self.links.get(&msg.node_id) {
                let ack = Frame::StartAck {
                    job_id: msg.job_id,
                    shard: msg.shard,
                    attempt: msg.attempt,
                };
                let _ = link.tx.send(ack);
            }
        }
    }
}

/// A worker is draining (`drained: false`) or done draining (`true`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerDrain {
    pub node_id: String,
    pub drained: bool,
}

impl Handler<WorkerDrain> for Master {
    type Result = ();
    fn handle(&mut self, msg: WorkerDrain, ctx: &mut Context<Self>) {
        if msg.drained {
            tracing::info!(worker = %msg.node_id, "worker drained");
            if let Some(link) = self.links.get_mut(&msg.node_id) {
                link.drained = true;
                let _ = link.tx.send(Frame::DrainAck);
            }
        } else {
            tracing::info!(worker = %msg.node_id, "worker draining; requeueing the shards it has not started");
            self.sched.drain_worker(&msg.node_id);
            self.dispatch(ctx);
        }
    }
}

/// The registered workers, from the watch on `/workers`.
#[derive(Message)]
#[rtype(result = "()")]
struct Registered(BTreeMap<String, WorkerInfo>);

/// A client submission with its tasks.
#[derive(Message)]
#[rtype(result = "Frame")]
pub(crate) struct Submit {
    pub header: SubmitHeader,
    pub tasks: Vec<ByteBuf>,
}

/// Any other client request (`GetJob`, `GetStatus`, `FetchResult`, `Cancel`).
#[derive(Message)]
#[rtype(result = "Frame")]
pub(crate) struct ClientRequest(pub Frame);

struct JobRuntime {
    stored: StoredJob,
    tasks: Arc<Vec<ByteBuf>>,
    /// Bytes of its encoded tasks (held in ZooKeeper until it finishes).
    bytes: usize,
    /// The merged result so far. Merging runs on the blocking pool (a big
    /// partial result takes milliseconds), never on the master's arbiter,
    /// which also drives the ZooKeeper session.
    acc: Arc<std::sync::Mutex<Accumulator>>,
    /// Merges under way; the job is reduced only once they are done.
    merging: usize,
    finish_wanted: bool,
    failures: Vec<TaskFailure>,
    finishing: bool,
    /// Tasks whose committed outputs could not be merged: failed tasks.
    unmerged: u64,
    /// Committed shard outputs kept in the store: deleted once the job's
    /// result is durable.
    objects: Vec<OutputRef>,
}

struct Link {
    tx: mpsc::UnboundedSender<Frame>,
    slots: u32,
    jobs: Vec<String>,
    id: u64,
    /// When the worker last said something (connected, started, reported).
    last_seen: std::time::Instant,
    /// It drained: its departure is expected.
    drained: bool,
}

/// Settings the master needs from its node.
#[derive(Clone)]
pub(crate) struct MasterSettings {
    pub node_id: String,
    pub addr: String,
    pub registry: Registry,
    pub retention: Duration,
    /// Most bytes of tasks that unfinished jobs may hold in ZooKeeper.
    pub max_queued_bytes: usize,
    pub route: watch::Sender<Option<Addr<Master>>>,
    pub fatal: Fatal,
    pub _alive: Alive,
}

pub(crate) struct Master {
    /// When this node won the election (for the time-to-serving figure).
    elected: std::time::Instant,
    store: LeaderStore,
    settings: MasterSettings,
    sched: Scheduler,
    jobs: HashMap<String, JobRuntime>,
    links: HashMap<String, Link>,
    registered: BTreeMap<String, WorkerInfo>,
    submitting: HashSet<String>,
    /// When the gauges were last refreshed, and whether a refresh is due.
    gauges_at: Option<std::time::Instant>,
    gauges_pending: bool,
    /// Unfinished jobs of an earlier master still being read back.
    loading: HashSet<String>,
    /// Of those, the ones cancelled meanwhile.
    cancelled_while_loading: HashSet<String>,
    gc_running: bool,
    /// Disconnected from ZooKeeper: no new assignments until reconnected
    /// (we may not be master any more; expiry will tell).
    paused: bool,
    /// When a dispatch is scheduled for retries coming out of backoff.
    wake_at: Option<std::time::Instant>,
}

/// The master's ZooKeeper session lost or regained its connection.
#[derive(Message)]
#[rtype(result = "()")]
struct Connected(bool);

impl Handler<Connected> for Master {
    type Result = ();
    fn handle(&mut self, msg: Connected, ctx: &mut Context<Self>) {
        if self.paused == msg.0 {
            self.paused = !msg.0;
            if self.paused {
                tracing::warn!(
                    epoch = self.store.epoch(),
                    "disconnected from ZooKeeper: pausing assignments"
                );
            } else {
                tracing::info!(
                    epoch = self.store.epoch(),
                    "reconnected to ZooKeeper: resuming assignments"
                );
                self.dispatch(ctx);
            }
        }
    }
}

impl Master {
    /// A master for `store`, whose lock was won at `elected`.
    pub(crate) fn new(
        store: LeaderStore,
        settings: MasterSettings,
        elected: std::time::Instant,
    ) -> Self {
        Master {
            elected,
            store,
            settings,
            sched: Scheduler::new(),
            jobs: HashMap::new(),
            links: HashMap::new(),
            registered: BTreeMap::new(),
            submitting: HashSet::new(),
            gauges_at: None,
            gauges_pending: false,
            loading: HashSet::new(),
            cancelled_while_loading: HashSet::new(),
            gc_running: false,
            paused: false,
            wake_at: None,
        }
    }

    fn fail(&mut self, ctx: &mut Context<Self>, err: &CoordError) {
        tracing::error!(error = %err, epoch = self.store.epoch(), "master stepping down");
        let _ = self
            .settings
            .fatal
            .send(format!("master stepped down: {err}"));
        ctx.stop();
    }

    /// Recovers a job from ZooKeeper into the scheduler.
    async fn load(
        store: LeaderStore,
        registry: Registry,
        job: StoredJob,
    ) -> Result<(JobRuntime, crate::core::JobPlan), CoordError> {
        // The three reads pipeline on the session.
        let (tasks, commits, losses) = futures::try_join!(
            store.read_tasks(&job.id, job.record.batches),
            store.read_commits(&job.id),
            store.read_losses(&job.id)
        )?;
        let erased = registry
            .get(&job.record.job_name)
            .ok_or_else(|| CoordError::Garbage {
                path: store.layout().job(&job.id),
                reason: format!(
                    "job type {:?} is not registered on this node",
                    job.record.job_name
                ),
            })?;
        let summary: BTreeMap<ShardKey, CommittedShard> = commits
            .iter()
            .map(|(k, r)| (*k, CommittedShard::from(r)))
            .collect();
        let rec = &job.record;
        let recovered = recover_job(
            &job.id,
            &rec.job_name,
            rec.tasks_total,
            rec.options.shard_size,
            rec.options.max_attempts,
            &summary,
        );
        // Only the commits of each shard's chain count (see `recover_job`).
        // Read (from the store, a few at a time), then merged off the arbiter.
        let chain: Vec<(ShardKey, ShardRecord)> = commits
            .into_iter()
            .filter(|(key, _)| recovered.outputs.contains_key(key))
            .collect();
        let objects: Vec<OutputRef> = chain
            .iter()
            .filter(|(_, r)| matches!(r.output, OutputRef::Object(_)))
            .map(|(_, r)| r.output.clone())
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
        let outputs_empty = outputs.is_empty();
        let merger = erased.clone();
        let job_id = job.id.clone();
        let merge = move || {
            let mut acc = merger.new_acc();
            let mut unmerged = Vec::new();
            for (key, bytes) in &outputs {
                let merged = bytes.as_ref().map_err(Clone::clone).and_then(|bytes| {
                    merger
                        .merge_encoded(&mut acc, bytes)
                        .map_err(|e| e.to_string())
                });
                if let Err(e) = merged {
                    tracing::error!(job = %job_id, shard = %key, error = %e, "a committed shard output cannot be read or merged; reporting its tasks as failed");
                    unmerged.push((*key, e));
                }
            }
            (acc, unmerged)
        };
        // Nothing committed yet: no need for a thread of the blocking pool.
        let acc = if outputs_empty {
            merge()
        } else {
            tokio::task::spawn_blocking(merge)
                .await
                .map_err(|e| CoordError::Garbage {
                    path: store.layout().job(&job.id),
                    reason: format!("merging failed: {e}"),
                })?
        };
        let (acc, unmerged) = acc;
        let mut plan = recovered.plan;
        let mut final_failures = recovered.final_failures;
        for (key, error) in unmerged {
            let held = recovered.outputs.get(&key).cloned().unwrap_or_default();
            let attempt = summary.get(&key).map_or(1, |c| c.attempt);
            plan.tasks_failed += held.len() as u64;
            final_failures.extend(held.into_iter().map(|index| TaskFailure {
                index,
                error: format!("its shard's output was committed but cannot be merged: {error}"),
                attempt,
                retryable: false,
            }));
        }
        plan.shard_timeout = rec.options.shard_timeout_ms.map(Duration::from_millis);
        for p in &mut plan.pending {
            if let Some(&next) = losses.get(&p.key) {
                p.attempt = p.attempt.max(next);
            }
        }
        let mut failures = final_failures;
        failures.truncate(MAX_KEPT_FAILURES);
        Ok((
            JobRuntime {
                stored: job,
                bytes: tasks.iter().map(|t| t.len()).sum(),
                tasks: Arc::new(tasks),
                acc: Arc::new(std::sync::Mutex::new(acc)),
                merging: 0,
                finish_wanted: false,
                failures,
                finishing: false,
                unmerged: 0,
                objects,
            },
            plan,
        ))
    }

    /// Refreshes the master's gauges, at most once per [`GAUGE_PERIOD`]:
    /// the per-worker gauges cost a registry lookup per worker, which at a
    /// thousand workers must not happen on every report.
    fn update_gauges(&mut self, ctx: &mut Context<Self>) {
        let now = std::time::Instant::now();
        if self.gauges_at.is_some_and(|t| now - t < GAUGE_PERIOD) {
            if !self.gauges_pending {
                self.gauges_pending = true;
                ctx.run_later(GAUGE_PERIOD, |act, ctx| {
                    act.gauges_pending = false;
                    act.update_gauges(ctx);
                });
            }
            return;
        }
        self.gauges_at = Some(now);
        let workers = self
            .links
            .keys()
            .filter(|k| self.sched.has_worker(k))
            .count();
        metrics::gauge!(m::WORKERS).set(workers as f64);
        metrics::gauge!(m::SHARDS_QUEUED).set(self.sched.queued() as f64);
        metrics::gauge!(m::JOBS_RUNNING).set(self.jobs.len() as f64);
        let mut in_flight = 0;
        for id in self.registered.keys() {
            let n = self.sched.running_on(id);
            in_flight += n;
            metrics::gauge!(m::WORKER_IN_FLIGHT, "worker" => id.clone()).set(n as f64);
        }
        metrics::gauge!(m::SHARDS_IN_FLIGHT).set(in_flight as f64);
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if self.paused {
            self.update_gauges(ctx);
            return;
        }
        let now = std::time::Instant::now();
        self.sched.tick(now);
        let cmds = self.sched.assign();
        self.apply(cmds, ctx);
        self.update_gauges(ctx);
        // Wake up when the next retry's backoff is over.
        if let Some(due) = self.sched.next_due() {
            if self.wake_at.is_none_or(|t| due < t) {
                self.wake_at = Some(due);
                ctx.run_later(due.saturating_duration_since(now), |act, ctx| {
                    act.wake_at = None;
                    act.dispatch(ctx);
                });
            }
        }
    }

    fn apply(&mut self, cmds: Vec<Command>, ctx: &mut Context<Self>) {
        let mut lost = Vec::new();
        for c in cmds {
            match c {
                Command::Assign { worker, job, shard } => {
                    let Some(rt) = self.jobs.get(&job) else {
                        continue;
                    };
                    let tasks = shard
                        .tasks
                        .iter()
                        .filter_map(|&i| rt.tasks.get(i as usize).map(|t| (i, t.clone())))
                        .collect();
                    let frame = Frame::Assign(Assignment {
                        epoch: self.store.epoch(),
                        job_id: job,
                        job_name: rt.stored.record.job_name.clone(),
                        shard: shard.key,
                        attempt: shard.attempt,
                        tasks,
                    });
                    let sent = self
                        .links
                        .get(&worker)
                        .is_some_and(|l| l.tx.send(frame).is_ok());
                    if sent {
                        metrics::counter!(m::SHARDS_ASSIGNED).increment(1);
                    } else {
                        lost.push(worker);
                    }
                }
                Command::CommitLost {
                    job,
                    key,
                    attempt,
                    failures,
                } => {
                    let Some(rt) = self.jobs.get(&job) else {
                        continue;
                    };
                    let Some(erased) = self.settings.registry.get(&rt.stored.record.job_name)
                    else {
                        continue;
                    };
                    let empty = erased.encode_acc(&erased.new_acc()).unwrap_or_default();
                    self.commit(ctx, job, key, attempt, ShardOutput::Bytes(empty), failures);
                }
                Command::Finish { job } => self.finish(ctx, job),
                Command::RecordLoss {
                    job,
                    key,
                    next_attempt,
                } => {
                    let store = self.store.clone();
                    let fut = async move { store.record_loss(&job, key, next_attempt).await };
                    ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
                        Ok(()) => {}
                        Err(e) if e.is_session_end() => act.fail(ctx, &e),
                        Err(e) => tracing::warn!(error = %e, "cannot record a lost attempt"),
                    }));
                }
            }
        }
        for w in lost {
            self.links.remove(&w);
            let cmds = self.sched.remove_worker(&w);
            metrics::counter!(m::SHARDS_REASSIGNED).increment(1);
            self.apply(cmds, ctx);
            self.dispatch(ctx);
        }
    }

    fn commit(
        &mut self,
        ctx: &mut Context<Self>,
        job: String,
        key: ShardKey,
        attempt: u32,
        output: ShardOutput,
        failures: Vec<TaskFailure>,
    ) {
        let store = self.store.clone();
        let job2 = job.clone();
        let ours = match &output {
            ShardOutput::Object(name) => Some(OutputRef::Object(name.clone())),
            ShardOutput::Bytes(_) => None,
        };
        let fut = async move {
            let res = store.commit(&job2, key, attempt, output, failures).await;
            // Another run's commit won: our object is referenced by nothing.
            if let (Ok(CommitOutcome::AlreadyCommitted(rec)), Some(ours)) = (&res, &ours) {
                if &rec.output != ours {
                    store.delete_outputs([ours]).await;
                }
            }
            res
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(CommitOutcome::Committed(rec)) => {
                // The audit line chaos tests count: one per shard, ever.
                tracing::debug!(job = %job, shard = %key, epoch = rec.epoch, attempt = rec.attempt, "shard committed");
                act.on_committed(ctx, &job, key, rec);
            }
            Ok(CommitOutcome::AlreadyCommitted(rec)) => act.on_committed(ctx, &job, key, rec),
            Err(e) if e.is_session_end() => act.fail(ctx, &e),
            Err(e) => {
                tracing::warn!(job = %job, shard = %key, error = %e, "commit failed; the shard will run again");
                act.sched.commit_aborted(&job, key);
                act.dispatch(ctx);
            }
        }));
    }

    fn on_committed(
        &mut self,
        ctx: &mut Context<Self>,
        job: &str,
        key: ShardKey,
        rec: ShardRecord,
    ) {
        metrics::counter!(m::SHARDS_COMMITTED).increment(1);
        let Some(rt) = self.jobs.get_mut(job) else {
            return;
        };
        if matches!(rec.output, OutputRef::Object(_)) {
            rt.objects.push(rec.output.clone());
        }
        let max = rt.stored.record.options.max_attempts;
        for f in &rec.failures {
            if f.is_final(max) {
                metrics::counter!(m::TASKS_DEAD_LETTERED).increment(1);
                if rt.failures.len() < MAX_KEPT_FAILURES {
                    rt.failures.push(f.clone());
                }
            } else {
                metrics::counter!(m::TASKS_RETRIED).increment(1);
            }
        }
        if let Some(erased) = self
            .settings
            .registry
            .get(&rt.stored.record.job_name)
            .cloned()
        {
            rt.merging += 1;
            let acc = rt.acc.clone();
            let output = rec.output.clone();
            // The tasks whose outputs this partial holds: if it cannot be
            // merged, they are reported as failed, never silently dropped.
            let failed: HashSet<u64> = rec.failures.iter().map(|f| f.index).collect();
            let merged_tasks: Vec<u64> = self
                .sched
                .shard_tasks(job, key)
                .unwrap_or_default()
                .iter()
                .copied()
                .filter(|i| !failed.contains(i))
                .collect();
            let attempt = rec.attempt;
            let store = self.store.clone();
            // Read from the store, then merged on the blocking pool.
            let merge = async move {
                let bytes = store
                    .read_output(&output)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::task::spawn_blocking(move || {
                    let mut acc = acc.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    erased
                        .merge_encoded(&mut acc, &bytes)
                        .map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| format!("merging panicked: {e}"))?
            };
            let job_id = job.to_string();
            ctx.spawn(merge.into_actor(self).map(move |res, act, ctx| {
                let error = match res {
                    Ok(()) => None,
                    Err(e) => Some(format!("its shard's output was committed but cannot be merged: {e}")),
                };
                if let Some(rt) = act.jobs.get_mut(&job_id) {
                    if let Some(error) = error {
                        tracing::error!(job = %job_id, shard = %key, tasks = merged_tasks.len(), %error, "reporting the shard's tasks as failed");
                        metrics::counter!(m::TASKS_DEAD_LETTERED).increment(merged_tasks.len() as u64);
                        rt.unmerged += merged_tasks.len() as u64;
                        for index in merged_tasks {
                            if rt.failures.len() >= MAX_KEPT_FAILURES {
                                break;
                            }
                            rt.failures.push(TaskFailure { index, error: error.clone(), attempt, retryable: false });
                        }
                    }
                    rt.merging -= 1;
                    if rt.merging == 0 && rt.finish_wanted {
                        act.finish(ctx, job_id);
                    }
                }
            }));
        }
        self.sched.tick(std::time::Instant::now());
        let cmds = self.sched.committed(job, key, rec.attempt, &rec.failures);
        self.apply(cmds, ctx);
        self.dispatch(ctx);
    }

    fn finish(&mut self, ctx: &mut Context<Self>, job: String) {
        let Some(rt) = self.jobs.get_mut(&job) else {
            return;
        };
        if rt.finishing {
            return;
        }
        if rt.merging > 0 {
            rt.finish_wanted = true;
            return;
        }
        rt.finishing = true;
        let Some(erased) = self
            .settings
            .registry
            .get(&rt.stored.record.job_name)
            .cloned()
        else {
            return;
        };
        let Some(mut counters) = self.sched.counters(&job) else {
            return;
        };
        counters.tasks_failed = (counters.tasks_failed + rt.unmerged).min(counters.tasks_done);
        let acc = rt.acc.clone();
        let store = self.store.clone();
        let stored = StoredJob {
            id: rt.stored.id.clone(),
            record: rt.stored.record.clone(),
            version: rt.stored.version,
        };
        let failures = rt.failures.clone();
        let objects = rt.objects.clone();
        let job_id = job.clone();
        let fut = async move {
            let encoded = tokio::task::spawn_blocking(move || {
                let acc = acc.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                erased.encode_acc(&acc)
            })
            .await;
            let output = match encoded {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    tracing::error!(job = %job_id, error = %e, "cannot encode the job's result");
                    Vec::new()
                }
                Err(e) => {
                    tracing::error!(job = %job_id, error = %e, "encoding the job's result panicked");
                    Vec::new()
                }
            };
            store
                .finish(&stored, output, failures, counters, &objects)
                .await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(_) => {
                tracing::info!(
                    job,
                    tasks = counters.tasks_total,
                    failed = counters.tasks_failed,
                    "job done"
                );
                if counters.tasks_failed > 0 {
                    metrics::counter!(m::JOBS_FAILED).increment(1);
                } else {
                    metrics::counter!(m::JOBS_COMPLETED).increment(1);
                }
                metrics::gauge!(m::JOBS_RUNNING).set(act.jobs.len().saturating_sub(1) as f64);
                act.jobs.remove(&job);
                act.sched.remove_job(&job);
            }
            Err(e) if e.is_session_end() => act.fail(ctx, &e),
            Err(e) => {
                tracing::warn!(job, error = %e, "cannot store the job's result; retrying");
                if let Some(rt) = act.jobs.get_mut(&job) {
                    rt.finishing = false;
                }
                ctx.run_later(Duration::from_millis(200), move |act, ctx| {
                    act.finish(ctx, job)
                });
            }
        }));
    }

    fn sync_worker(&mut self, ctx: &mut Context<Self>, node_id: &str) {
        let eligible = self.registered.contains_key(node_id) && self.links.contains_key(node_id);
        if eligible && !self.sched.has_worker(node_id) {
            if let Some(l) = self.links.get(node_id) {
                // Two shards per slot: one running, one waiting, so slots never idle on a round trip.
                // The master's own worker is a fallback: a task that crashes its
                // process should not take the master with it while others can run it.
                let fallback = node_id == self.settings.node_id;
                let cmds = self.sched.add_worker(
                    node_id,
                    l.slots.saturating_mul(2),
                    l.jobs.clone(),
                    fallback,
                );
                self.apply(cmds, ctx);
            }
        }
    }

    fn progress(&self, id: &str) -> Option<JobProgress> {
        let rt = self.jobs.get(id)?;
        let c = self.sched.counters(id)?;
        Some(JobProgress {
            job_id: id.to_string(),
            job_name: rt.stored.record.job_name.clone(),
            state: JobState::Running,
            tasks_total: c.tasks_total,
            tasks_done: c.tasks_done,
            tasks_failed: c.tasks_failed,
            retries: c.retries,
        })
    }

    fn stored_progress(
        job: &StoredJob,
        result: Option<&crate::coord::ResultRecord>,
    ) -> JobProgress {
        let state = match job.record.status {
            JobStatus::Done => JobState::Done,
            JobStatus::Cancelled => JobState::Cancelled,
            JobStatus::Accepted | JobStatus::Writing => JobState::Running,
        };
        JobProgress {
            job_id: job.id.clone(),
            job_name: job.record.job_name.clone(),
            state,
            tasks_total: job.record.tasks_total,
            tasks_done: result.map_or(0, |r| r.tasks_done),
            tasks_failed: result.map_or(0, |r| r.tasks_failed),
            retries: result.map_or(0, |r| r.retries),
        }
    }

    /// Reads unfinished jobs back from ZooKeeper while serving, many at a
    /// time, and queues each as soon as it is read. A job cancelled while
    /// it loads is dropped when it arrives; one submitted again meanwhile
    /// is found in ZooKeeper and reported as existing.
    fn load_jobs(&mut self, ctx: &mut Context<Self>, pending: Vec<StoredJob>) {
        if pending.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let total = pending.len();
        let permits = Arc::new(tokio::sync::Semaphore::new(RECOVERY_CONCURRENCY));
        self.loading = pending.iter().map(|j| j.id.clone()).collect();
        for job in pending {
            let store = self.store.clone();
            let registry = self.settings.registry.clone();
            let permits = permits.clone();
            let id = job.id.clone();
            let load = async move {
                let _permit = permits.acquire_owned().await;
                Self::load(store, registry, job).await
            };
            ctx.spawn(load.into_actor(self).map(move |res, act, ctx| {
                act.loading.remove(&id);
                match res {
                    Ok(_) if act.cancelled_while_loading.remove(&id) => {}
                    Ok((rt, plan)) => {
                        act.jobs.insert(id, rt);
                        let cmds = act.sched.add_job(plan);
                        act.apply(cmds, ctx);
                        act.dispatch(ctx);
                    }
                    Err(e) => return act.fail(ctx, &e),
                }
                if act.loading.is_empty() {
                    act.cancelled_while_loading.clear();
                    tracing::info!(
                        jobs = total,
                        recovered_ms = started.elapsed().as_millis() as u64,
                        "every unfinished job is back in the queue"
                    );
                }
            }));
        }
    }

    fn watch_workers(&self, ctx: &mut Context<Self>) {
        let client = self.store.client().clone();
        let path = self.store.layout().workers();
        let addr = ctx.address();
        let fut = async move {
            // Registrations are written once (ephemeral, never updated), so only
            // new names are read: a thousand workers joining cost a thousand
            // reads, not a million.
            let mut infos: BTreeMap<String, WorkerInfo> = BTreeMap::new();
            loop {
                let (names, watcher) = match client.get_and_watch_children(&path).await {
                    Ok((names, _, w)) => (names, w),
                    Err(e) => return Err(CoordError::zk(&path, e)),
                };
                let current: std::collections::BTreeSet<&String> = names.iter().collect();
                infos.retain(|n, _| current.contains(n));
                let new: Vec<&String> = names.iter().filter(|n| !infos.contains_key(*n)).collect();
                let reads: Vec<_> = new
                    .iter()
                    .map(|n| client.get_data_owned(format!("{path}/{n}")))
                    .collect();
                for (n, r) in new.into_iter().zip(futures::future::join_all(reads).await) {
                    if let Ok((data, _)) = r {
                        match rmp_serde::from_slice::<WorkerInfo>(&data) {
                            Ok(info) => {
                                infos.insert(n.clone(), info);
                            }
                            Err(e) => {
                                tracing::warn!(worker = %n, error = %e, "ignoring a garbage worker registration")
                            }
                        }
                    }
                }
                addr.do_send(Registered(infos.clone()));
                let event = watcher.changed().await;
                if event.session_state.is_terminated() {
                    return Err(CoordError::zk(
                        &path,
                        zookeeper_client::Error::SessionExpired,
                    ));
                }
            }
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(|res: Result<(), CoordError>, act, ctx| {
                    if let Err(e) = res {
                        act.fail(ctx, &e);
                    }
                }),
        );
    }
}

/// `get_data` with an owned path, so that many reads can be in flight.
trait GetDataOwned {
    fn get_data_owned(
        &self,
        path: String,
    ) -> futures::future::BoxFuture<
        'static,
        Result<(Vec<u8>, zookeeper_client::Stat), zookeeper_client::Error>,
    >;
}

impl GetDataOwned for zookeeper_client::Client {
    fn get_data_owned(
        &self,
        path: String,
    ) -> futures::future::BoxFuture<
        'static,
        Result<(Vec<u8>, zookeeper_client::Stat), zookeeper_client::Error>,
    > {
        let fut = self.get_data(&path);
        Box::pin(fut)
    }
}

/// Shortest interval between two refreshes of the master's gauges.
const GAUGE_PERIOD: Duration = Duration::from_millis(200);

/// Jobs whose state is read at once during recovery.
const RECOVERY_CONCURRENCY: usize = 256;

impl Actor for Master {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        metrics::gauge!(m::NODE_ROLE, "role" => "master").set(1.0);
        metrics::gauge!(m::EPOCH).set(self.store.epoch() as f64);
        metrics::counter!(m::ELECTIONS_WON).increment(1);
        let store = self.store.clone();
        let node_id = self.settings.node_id.clone();
        let addr = self.settings.addr.clone();
        let retention = self.settings.retention;
        let recovery = async move {
            let started = std::time::Instant::now();
            // Submissions that never got acknowledged are dropped; the client retries them.
            let jobs = store.list_jobs().await?;
            let listed = started.elapsed();
            let jobs = store.collect_garbage_of(jobs, retention, true).await?;
            let pending: Vec<StoredJob> = jobs
                .into_iter()
                .filter(|job| job.record.status == JobStatus::Accepted)
                .collect();
            store.publish(&node_id, &addr).await?;
            tracing::debug!(
                list_ms = listed.as_millis() as u64,
                publish_ms = (started.elapsed() - listed).as_millis() as u64,
                "takeover steps"
            );
            Ok::<_, CoordError>((pending, started.elapsed()))
        };
        // `wait`: no message is handled before the takeover is done. The
        // unfinished jobs are then read in the background while the master
        // serves (see `load_jobs`), so its time to serving does not grow
        // with the work left behind.
        ctx.wait(recovery.into_actor(self).map(|res, act, ctx| match res {
            Ok((pending, took)) => {
                tracing::info!(
                    epoch = act.store.epoch(),
                    jobs = pending.len(),
                    recovery_ms = took.as_millis() as u64,
                    since_election_ms = act.elected.elapsed().as_millis() as u64,
                    "serving as master"
                );
                act.load_jobs(ctx, pending);
                let _ = act.settings.route.send(Some(ctx.address()));
                act.watch_workers(ctx);
                let mut states = act.store.client().state_watcher();
                let addr = ctx.address();
                ctx.spawn(
                    async move {
                        loop {
                            match states.changed().await {
                                zookeeper_client::SessionState::Disconnected => {
                                    addr.do_send(Connected(false))
                                }
                                zookeeper_client::SessionState::SyncConnected => {
                                    addr.do_send(Connected(true))
                                }
                                s if s.is_terminated() => return,
                                _ => {}
                            }
                        }
                    }
                    .into_actor(act),
                );
                ctx.run_interval(Duration::from_secs(1), |act, ctx| {
                    if act.gc_running {
                        return;
                    }
                    act.gc_running = true;
                    let store = act.store.clone();
                    let retention = act.settings.retention;
                    ctx.spawn(
                        async move { store.collect_garbage(retention, false).await }
                            .into_actor(act)
                            .map(|res, act, ctx| {
                                act.gc_running = false;
                                match res {
                                    Err(e) if e.is_session_end() => act.fail(ctx, &e),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "garbage collection failed")
                                    }
                                    Ok(0) => {}
                                    Ok(n) => tracing::debug!(
                                        jobs = n,
                                        "removed fetched jobs from ZooKeeper"
                                    ),
                                }
                            }),
                    );
                });
                // Stragglers and hung shards get a copy on another worker.
                ctx.run_interval(Duration::from_millis(250), |act, ctx| {
                    if act.paused {
                        return;
                    }
                    act.sched.tick(std::time::Instant::now());
                    let cmds = act.sched.speculate();
                    if !cmds.is_empty() {
                        tracing::info!(copies = cmds.len(), "speculative copies of slow shards");
                        metrics::counter!(m::SHARDS_SPECULATED).increment(cmds.len() as u64);
                    }
                    act.apply(cmds, ctx);
                });
                act.dispatch(ctx);
            }
            Err(e) => act.fail(ctx, &e),
        }));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        metrics::gauge!(m::NODE_ROLE, "role" => "master").set(0.0);
        for g in [
            m::EPOCH,
            m::WORKERS,
            m::SHARDS_QUEUED,
            m::SHARDS_IN_FLIGHT,
            m::JOBS_RUNNING,
        ] {
            metrics::gauge!(g).set(0.0);
        }
        for id in self.registered.keys() {
            metrics::gauge!(m::WORKER_IN_FLIGHT, "worker" => id.clone()).set(0.0);
        }
        let _ = self.settings.route.send(None);
        // Wake the next candidate now rather than when this session closes.
        let store = self.store.clone();
        actix::spawn(async move { store.abdicate().await });
        tracing::info!(epoch = self.store.epoch(), "master stopped");
    }
}

impl Handler<Stop> for Master {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<WorkerJoined> for Master {
    type Result = ();
    fn handle(&mut self, msg: WorkerJoined, ctx: &mut Context<Self>) {
        tracing::info!(worker = %msg.node_id, slots = msg.slots, "worker connected");
        if self.links.contains_key(&msg.node_id) {
            let cmds = self.sched.remove_worker(&msg.node_id);
            self.apply(cmds, ctx);
        }
        self.links.insert(
            msg.node_id.clone(),
            Link {
                tx: msg.tx,
                slots: msg.slots,
                jobs: msg.jobs,
                id: msg.link_id,
                last_seen: std::time::Instant::now(),
                drained: false,
            },
        );
        self.sync_worker(ctx, &msg.node_id);
        self.dispatch(ctx);
    }
}

impl Handler<WorkerLeft> for Master {
    type Result = ();
    fn handle(&mut self, msg: WorkerLeft, ctx: &mut Context<Self>) {
        if self
            .links
            .get(&msg.node_id)
            .is_some_and(|l| l.id == msg.link_id)
        {
            let running = self.sched.running_on(&msg.node_id);
            match self.links.remove(&msg.node_id) {
                Some(l) if l.drained && running == 0 => {
                    tracing::info!(worker = %msg.node_id, "drained worker left")
                }
                _ => {
                    metrics::counter!(m::WORKER_LINKS_LOST).increment(1);
                    tracing::warn!(worker = %msg.node_id, running, "worker link lost; reassigning its shards")
                }
            }
            metrics::counter!(m::SHARDS_REASSIGNED).increment(running as u64);
            let cmds = self.sched.remove_worker(&msg.node_id);
            self.apply(cmds, ctx);
            self.dispatch(ctx);
        }
    }
}

impl Handler<Registered> for Master {
    type Result = ();
    fn handle(&mut self, msg: Registered, ctx: &mut Context<Self>) {
        let gone: Vec<String> = self
            .registered
            .keys()
            .filter(|k| !msg.0.contains_key(*k))
            .cloned()
            .collect();
        self.registered = msg.0;
        for w in gone {
            if self.sched.has_worker(&w) {
                tracing::warn!(worker = %w, "worker registration deleted; reassigning its shards");
                metrics::counter!(m::SHARDS_REASSIGNED).increment(self.sched.running_on(&w) as u64);
                let cmds = self.sched.remove_worker(&w);
                self.apply(cmds, ctx);
            }
        }
        let ids: Vec<String> = self.links.keys().cloned().collect();
        for id in ids {
            self.sync_worker(ctx, &id);
        }
        self.dispatch(ctx);
    }
}

impl Handler<Report> for Master {
    type Result = ();
    fn handle(&mut self, msg: Report, ctx: &mut Context<Self>) {
        if let Some(l) = self.links.get_mut(&msg.node_id) {
            l.last_seen = std::time::Instant::now();
        }
        let r = msg.report;
        // A report no honest worker sends: its link goes, with the reason.
        let impossible = self
            .sched
            .check_failures(&r.job_id, r.shard, &r.failures)
            .err()
            .or_else(|| {
                let name = r.output_object.as_deref()?;
                Store::check_shard_output(&r.job_id, name)
                    .err()
                    .map(|e| e.to_string())
            });
        if let Some(reason) = impossible {
            tracing::warn!(worker = %msg.node_id, job = %r.job_id, shard = %r.shard, %reason, "impossible report: dropping the worker's link");
            metrics::counter!(m::FRAME_ERRORS).increment(1);
            self.links.remove(&msg.node_id);
            let cmds = self.sched.remove_worker(&msg.node_id);
            self.apply(cmds, ctx);
            self.dispatch(ctx);
            return;
        }
        if r.epoch != self.store.epoch()
            || !self
                .sched
                .report(&msg.node_id, &r.job_id, r.shard, r.attempt)
        {
            tracing::debug!(job = %r.job_id, shard = %r.shard, "dropping a stale report");
            // Its object (if it is one of that job's) is referenced by nothing.
            if let Some(name) = r.output_object {
                if Store::check_shard_output(&r.job_id, &name).is_ok() {
                    let store = self.store.clone();
                    actix::spawn(async move {
                        store.delete_outputs([&OutputRef::Object(name)]).await;
                    });
                }
            }
            return;
        }
        let output = match r.output_object {
            Some(name) => ShardOutput::Object(name),
            None => ShardOutput::Bytes(r.output.into_vec()),
        };
        self.commit(ctx, r.job_id, r.shard, r.attempt, output, r.failures);
        self.dispatch(ctx);
    }
}

fn error(message: impl std::fmt::Display) -> Frame {
    Frame::Error {
        message: message.to_string(),
    }
}

impl Handler<Submit> for Master {
    type Result = ResponseActFuture<Self, Frame>;
    fn handle(&mut self, msg: Submit, _ctx: &mut Context<Self>) -> Self::Result {
        let h = msg.header;
        let Some(erased) = self.settings.registry.get(&h.job_name) else {
            let known = self.settings.registry.names().join(", ");
            return Box::pin(fut::ready(error(format!(
                "unknown job type {:?}; this cluster runs: {known}",
                h.job_name
            ))));
        };
        let _ = erased;
        let odd = h.job_id.is_empty() || h.job_id == "." || h.job_id == "..";
        if odd || h.job_id.len() > 128 || h.job_id.contains(['/', '\0']) {
            return Box::pin(fut::ready(error(format!("invalid job id {:?}", h.job_id))));
        }
        if h.options.shard_size == 0 || h.options.max_attempts == 0 {
            return Box::pin(fut::ready(error(
                "shard size and max attempts must be at least 1",
            )));
        }
        if h.task_count != msg.tasks.len() as u64 {
            return Box::pin(fut::ready(error(format!(
                "header announced {} tasks, got {}",
                h.task_count,
                msg.tasks.len()
            ))));
        }
        if let Some(rt) = self.jobs.get(&h.job_id) {
            // The same submission finds its job; another is refused.
            let kept = rt.stored.record.digest.clone();
            let tasks = Arc::new(msg.tasks);
            let fut = async move {
                let digest = digest_off_thread(&h, tasks).await;
                match same_submission(&h.job_id, kept.as_ref(), &digest) {
                    Ok(()) => Frame::Accepted {
                        job_id: h.job_id,
                        existing: true,
                    },
                    Err(message) => Frame::Error { message },
                }
            };
            return Box::pin(fut.into_actor(self));
        }
        // ZooKeeper keeps every byte in its servers' memory: a cluster-wide
        // bound, so that a big submission is refused instead of exhausting
        // the ensemble's heap.
        let held: usize = self.jobs.values().map(|rt| rt.bytes).sum();
        let new: usize = msg.tasks.iter().map(|t| t.len()).sum();
        if held.saturating_add(new) > self.settings.max_queued_bytes {
            return Box::pin(fut::ready(error(format!(
                "the cluster holds {held} bytes of unfinished tasks; {new} more would pass its \
                 limit of {} (--max-queued-bytes): retry when jobs finish, or pass references \
                 to data (file splits) rather than the data",
                self.settings.max_queued_bytes
            ))));
        }
        if !self.submitting.insert(h.job_id.clone()) {
            return Box::pin(fut::ready(error(format!(
                "job {} is being submitted by another request; retry",
                h.job_id
            ))));
        }
        let store = self.store.clone();
        let registry = self.settings.registry.clone();
        let tasks = Arc::new(msg.tasks);
        let id = h.job_id.clone();
        let fut = async move {
            let digest = digest_off_thread(&h, tasks.clone()).await;
            if let Some(existing) = store.read_job(&h.job_id).await? {
                if existing.record.status != JobStatus::Writing {
                    return match same_submission(
                        &h.job_id,
                        existing.record.digest.as_ref(),
                        &digest,
                    ) {
                        Ok(()) => Ok(Err(None)),
                        Err(refusal) => Ok(Err(Some(refusal))),
                    };
                }
                store.delete_tree(&store.layout().job(&h.job_id)).await?;
            }
            let record = JobRecord {
                job_name: h.job_name.clone(),
                options: h.options.clone(),
                tasks_total: h.task_count,
                batches: 0,
                status: JobStatus::Writing,
                created_ms: 0,
                fetched_ms: None,
                digest: Some(digest),
            };
            let job = store.create_job(&h.job_id, record, &tasks).await?;
            let erased = registry
                .get(&h.job_name)
                .ok_or_else(|| CoordError::Garbage {
                    path: store.layout().job(&h.job_id),
                    reason: "job type vanished".into(),
                })?;
            let rec = &job.record;
            let mut plan = recover_job(
                &job.id,
                &rec.job_name,
                rec.tasks_total,
                rec.options.shard_size,
                rec.options.max_attempts,
                &BTreeMap::new(),
            )
            .plan;
            plan.shard_timeout = rec.options.shard_timeout_ms.map(Duration::from_millis);
            let rt = JobRuntime {
                stored: job,
                bytes: tasks.iter().map(|t| t.len()).sum(),
                tasks,
                acc: Arc::new(std::sync::Mutex::new(erased.new_acc())),
                merging: 0,
                finish_wanted: false,
                failures: Vec::new(),
                finishing: false,
                unmerged: 0,
                objects: Vec::new(),
            };
            Ok::<_, CoordError>(Ok((rt, plan)))
        };
        Box::pin(fut.into_actor(self).map(move |res, act, ctx| {
            act.submitting.remove(&id);
            match res {
                Ok(Err(None)) => Frame::Accepted { job_id: id, existing: true },
                Ok(Err(Some(message))) => Frame::Error { message },
                Ok(Ok((rt, plan))) => {
                    tracing::info!(job = %id, tasks = plan.tasks_total, shards = plan.pending.len(), "job accepted");
                    metrics::counter!(m::JOBS_SUBMITTED).increment(1);
                    act.jobs.insert(id.clone(), rt);
                    let cmds = act.sched.add_job(plan);
                    act.apply(cmds, ctx);
                    act.dispatch(ctx);
                    Frame::Accepted { job_id: id, existing: false }
                }
                Err(e) => {
                    if e.is_session_end() {
                        act.fail(ctx, &e);
                    }
                    error(format!("submission of {id} failed: {e}"))
                }
            }
        }))
    }
}

/// The submission's digest, computed on the blocking pool (32 MiB of
/// tasks take tens of milliseconds).
async fn digest_off_thread(h: &SubmitHeader, tasks: Arc<Vec<ByteBuf>>) -> ByteBuf {
    let (name, options) = (h.job_name.clone(), h.options.clone());
    let compute = move || submission_digest(&name, &options, &tasks);
    match tokio::task::spawn_blocking(compute).await {
        Ok(d) => d,
        // Cannot happen (hashing does not panic); an empty digest matches nothing.
        Err(_) => ByteBuf::new(),
    }
}

/// Whether a resubmission is the job's own; the refusal names the job.
/// Jobs written before digests were kept accept any resubmission.
fn same_submission(id: &str, kept: Option<&ByteBuf>, digest: &ByteBuf) -> Result<(), String> {
    match kept {
        Some(k) if k != digest => Err(format!(
            "job {id} exists with a different submission (other tasks or options): choose \
             another job id, or fetch the existing job's result with `result {id}`"
        )),
        _ => Ok(()),
    }
}

impl Handler<ClientRequest> for Master {
    type Result = ResponseActFuture<Self, Frame>;
    fn handle(&mut self, msg: ClientRequest, ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        match msg.0 {
            Frame::GetStatus => {
                let workers = self
                    .registered
                    .iter()
                    .map(|(id, info)| WorkerStatus {
                        node_id: id.clone(),
                        addr: info.addr.clone(),
                        slots: info.slots,
                        in_flight: self.sched.running_on(id) as u32,
                        connected: self.links.contains_key(id),
                        last_seen_ms: self
                            .links
                            .get(id)
                            .map(|l| l.last_seen.elapsed().as_millis() as u64),
                    })
                    .collect();
                let jobs = self
                    .jobs
                    .keys()
                    .filter_map(|id| self.progress(id))
                    .collect();
                Box::pin(fut::ready(Frame::Status(ClusterStatus {
                    leader: self.settings.node_id.clone(),
                    epoch: self.store.epoch(),
                    workers,
                    jobs,
                })))
            }
            Frame::GetJob { job_id } => {
                if let Some(p) = self.progress(&job_id) {
                    return Box::pin(fut::ready(Frame::Job(p)));
                }
                Box::pin(
                    async move {
                        let Some(job) = store.read_job(&job_id).await? else {
                            return Ok(error(format!("no job {job_id}")));
                        };
                        let result = store.read_result(&job_id).await?;
                        Ok::<_, CoordError>(Frame::Job(Self::stored_progress(
                            &job,
                            result.as_ref(),
                        )))
                    }
                    .into_actor(self)
                    .map(|res, _, _| res.unwrap_or_else(error)),
                )
            }
            Frame::FetchResult { job_id } => {
                if self.jobs.contains_key(&job_id) {
                    return Box::pin(fut::ready(error(format!("job {job_id} is still running"))));
                }
                Box::pin(
                    async move {
                        let Some(job) = store.read_job(&job_id).await? else {
                            return Ok(error(format!("no job {job_id} (unknown, or its result was fetched and retention has passed)")));
                        };
                        let result = store.read_result(&job_id).await?;
                        let bytes = match &result {
                            Some(r) => store.read_output(&r.output).await?,
                            None if job.record.status == JobStatus::Cancelled => Vec::new(),
                            None => return Ok(error(format!("job {job_id} has no result yet"))),
                        };
                        store.mark_fetched(&job).await?;
                        Ok::<_, CoordError>(Frame::Outcome(JobOutcome {
                            progress: Self::stored_progress(&job, result.as_ref()),
                            result: ByteBuf::from(bytes),
                            failures: result.map(|r| r.failures).unwrap_or_default(),
                        }))
                    }
                    .into_actor(self)
                    .map(|res, _, _| res.unwrap_or_else(error)),
                )
            }
            Frame::Cancel { job_id } => {
                if self.loading.contains(&job_id) {
                    self.cancelled_while_loading.insert(job_id.clone());
                }
                let rt = self.jobs.remove(&job_id);
                self.sched.remove_job(&job_id);
                self.dispatch(ctx);
                Box::pin(
                    async move {
                        let job = match rt {
                            Some(rt) => rt.stored,
                            None => match store.read_job(&job_id).await? {
                                Some(j) => j,
                                None => return Ok(error(format!("no job {job_id}"))),
                            },
                        };
                        if job.record.status == JobStatus::Accepted {
                            store.set_status(&job, JobStatus::Cancelled).await?;
                        }
                        Ok::<_, CoordError>(Frame::Ok)
                    }
                    .into_actor(self)
                    .map(|res, _, _| res.unwrap_or_else(error)),
                )
            }
            other => Box::pin(fut::ready(error(format!(
                "unexpected request {:?}",
                frame_name(&other)
            )))),
        }
    }
}

/// A frame's variant name, for error messages.
pub(crate) fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::WorkerHello { .. } => "WorkerHello",
        Frame::Welcome { .. } => "Welcome",
        Frame::Assign(_) => "Assign",
        Frame::Report(_) => "Report",
        Frame::Started { .. } => "Started",
        Frame::StartAck { .. } => "StartAck",
        Frame::Draining => "Draining",
        Frame::Drained => "Drained",
        Frame::DrainAck => "DrainAck",
        Frame::Submit(_) => "Submit",
        Frame::SubmitChunk { .. } => "SubmitChunk",
        Frame::Accepted { .. } => "Accepted",
        Frame::GetJob { .. } => "GetJob",
        Frame::Job(_) => "Job",
        Frame::GetStatus => "GetStatus",
        Frame::Status(_) => "Status",
        Frame::FetchResult { .. } => "FetchResult",
        Frame::Outcome(_) => "Outcome",
        Frame::Cancel { .. } => "Cancel",
        Frame::Ok => "Ok",
        Frame::NotMaster => "NotMaster",
        Frame::Error { .. } => "Error",
    }
}

/// Asks the master for its epoch.
#[derive(Message)]
#[rtype(result = "u64")]
pub(crate) struct GetEpoch;

impl Handler<GetEpoch> for Master {
    type Result = u64;
    fn handle(&mut self, _: GetEpoch, _: &mut Context<Self>) -> u64 {
        self.store.epoch()
    }
}
