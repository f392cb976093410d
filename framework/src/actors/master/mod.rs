//! The master supervisor: recovers every unfinished job from ZooKeeper,
//! publishes itself, then runs the scheduler: shards to workers over QUIC,
//! reports committed by fenced transactions, results reduced and stored.
//!
//! A shell: where shards go is decided by [`Scheduler`], what commits add up
//! to and when a job finishes by [`Ledger`]; this actor performs their
//! commands. Here: its life (takeover, publication, gauges, collection),
//! commits, merges and finishes. [`links`] handles its workers; each client
//! request has a file of its own: [`submit`], [`status`] (`GetStatus`,
//! `GetJob`), [`fetch`], [`cancel`], [`watching`] (`WatchJob`, progress
//! pushed); [`creating`] runs a work queue's job while its create waits;
//! [`load`] reads jobs back after a failover; [`gateway`] owns the
//! streams a node accepts (worker links, submissions, watches, requests).

mod access;
mod cancel;
mod creating;
mod fetch;
pub(crate) mod gateway;
mod links;
mod load;
mod status;
mod streaming;
mod submit;
mod watching;

use links::Registered;
pub(crate) use links::{Report, Started, Unstarted, WorkerDrain, WorkerJoined, WorkerLeft};
pub(crate) use submit::Submit;
pub(crate) use watching::Watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::StreamExt;
use serde_bytes::ByteBuf;
use tokio::sync::watch;

use super::{Alive, Fatal, Stop};
use crate::audit::{Audit, Event};
use crate::coord::{
    Committed, Connection, CoordError, Finished, JobRef, JobStatus, LeaderStore, OutputRef,
    ShardOutput, ShardRecord, StoredJob, WorkerInfo,
};
use crate::core::job::{Finish, Merge, Retention, Stored};
use crate::core::{Command, Ledger, Scheduler, ShardKey, TaskFailure};
use crate::metrics as m;
use crate::registry::{Accumulator, Registry};
use crate::wire::{Assignment, ErrorKind, Frame, JobProgress, JobState};

/// What the master holds of a running job besides its accounts (in the
/// [`Ledger`]) and its shards (in the [`Scheduler`]).
struct JobRuntime {
    stored: StoredJob,
    tasks: Arc<Vec<ByteBuf>>,
    /// The merged result so far. Merging runs on the blocking pool (a big
    /// partial result takes milliseconds), never on the master's arbiter,
    /// which also drives the ZooKeeper session; but a partial of at most
    /// [`SMALL_MERGE`] bytes is merged where it arrives, as is the result
    /// of a job whose partials were all that small encoded: a work queue's
    /// one-task job would otherwise hand two threads of the pool a few
    /// bytes each.
    acc: Arc<std::sync::Mutex<Accumulator>>,
    /// Bytes of partials merged into `acc` on the arbiter; `usize::MAX`
    /// once any was merged on the blocking pool (or before a takeover).
    acc_bytes: usize,
    /// Its committed shards in the order this master learned of them (the
    /// recovered ones first), with the commit record that holds each: what
    /// a stream sends, by position.
    commit_log: Vec<(ShardKey, Arc<str>)>,
    /// The log's length, for the streams that wait for more; dropped with
    /// the job, which tells them that it left this master's memory.
    commits: watch::Sender<usize>,
    /// The inline outputs of a streamed job's latest commits, by log
    /// position (bounded: [`RECENT_OUTPUTS`] entries and bytes), so that a
    /// stream that keeps up needs no ZooKeeper read per shard.
    recent: std::collections::VecDeque<(usize, Option<Arc<Vec<u8>>>)>,
    recent_bytes: usize,
    /// Scheduled while its create waits ([`creating`]): its writes wait
    /// too.
    creating: Option<creating::Creating>,
}

/// Most commits, and bytes, whose inline outputs a streamed job keeps in
/// memory for its streams.
const RECENT_OUTPUTS: (usize, usize) = (4096, 16 << 20);

/// Most bytes of inline outputs all streamed jobs keep together: a job
/// whose output would go past it keeps fewer of its own (its streams read
/// the others from ZooKeeper).
const RECENT_OUTPUTS_TOTAL: usize = 64 << 20;

/// Partials (and, in all, a job's partials) up to this size are merged,
/// and such a job's result encoded, on the master's arbiter.
const SMALL_MERGE: usize = 16 * 1024;

impl JobRuntime {
    fn new(stored: StoredJob, tasks: Arc<Vec<ByteBuf>>, acc: Accumulator) -> Self {
        JobRuntime {
            stored,
            tasks,
            acc: Arc::new(std::sync::Mutex::new(acc)),
            acc_bytes: 0,
            commit_log: Vec::new(),
            commits: watch::channel(0).0,
            recent: std::collections::VecDeque::new(),
            recent_bytes: 0,
            creating: None,
        }
    }

    /// A streamed job's inline output at log position `at`, if kept.
    fn recent_output(&self, at: usize) -> Option<Arc<Vec<u8>>> {
        let first = self.recent.front()?.0;
        let (pos, bytes) = self.recent.get(at.checked_sub(first)?)?;
        if *pos == at {
            bytes.clone()
        } else {
            None
        }
    }

    /// Keeps a streamed job's inline output for its streams, in at most
    /// `room` bytes of its own.
    /// (One entry per position, `None` for an output in the store, so
    /// that positions stay contiguous.)
    fn keep_output(&mut self, at: usize, output: &OutputRef, room: usize) {
        if !self.stored.record.options.stream {
            return;
        }
        let bytes = match output {
            OutputRef::Inline(bytes) => Some(Arc::new(bytes.to_vec())),
            OutputRef::Object(_) | OutputRef::File(_) => None,
        };
        self.recent_bytes += bytes.as_ref().map_or(0, |b| b.len());
        self.recent.push_back((at, bytes));
        let most = RECENT_OUTPUTS.1.min(room);
        while self.recent.len() > RECENT_OUTPUTS.0 || self.recent_bytes > most {
            match self.recent.pop_front() {
                Some((_, b)) => self.recent_bytes -= b.map_or(0, |b| b.len()),
                None => break,
            }
        }
    }

    /// A shard's commit is durable: streams may send it.
    fn logged(&mut self, key: ShardKey, at: Arc<str>) {
        self.commit_log.push((key, at));
        self.commits.send_replace(self.commit_log.len());
    }
}

struct Link {
    /// Its writer's queue (bounded: a worker that falls a whole queue
    /// behind is dropped, as one whose link broke).
    tx: crate::transport::Outbox,
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
    /// Most fetched jobs kept, however young.
    pub retention_max_jobs: usize,
    /// Most bytes of tasks that unfinished jobs may hold in ZooKeeper.
    pub max_queued_bytes: usize,
    /// The node's audit log.
    pub audit: Audit,
    pub route: watch::Sender<Option<Addr<Master>>>,
    pub fatal: Fatal,
    /// The node's served handshakes, for the master's standing.
    pub handshakes: crate::transport::Handshakes,
    pub _alive: Alive,
}

pub(crate) struct Master {
    /// When this node won the election (for the time-to-serving figure).
    elected: std::time::Instant,
    store: LeaderStore,
    settings: MasterSettings,
    sched: Scheduler,
    ledger: Ledger,
    jobs: HashMap<String, JobRuntime>,
    links: HashMap<String, Link>,
    registered: BTreeMap<String, WorkerInfo>,
    /// When the gauges were last refreshed, and whether a refresh is due.
    gauges_at: Option<std::time::Instant>,
    gauges_pending: bool,
    /// Unfinished jobs of an earlier master still being read back, with
    /// their owners.
    loading: HashMap<String, Option<String>>,
    /// Of those, the ones cancelled meanwhile.
    cancelled_while_loading: HashSet<String>,
    gc_running: bool,
    /// When the collector's last pass started.
    gc_started: std::time::Instant,
    /// Jobs whose fetch mark became durable since the collector's last
    /// pass started, and when: a pass that started before a mark may
    /// have read the record unmarked, and must not cache it as unfetched.
    marked: HashMap<String, std::time::Instant>,
    /// Which stored jobs the collector deletes, and when.
    retention: Retention,
    /// Jobs the collector is deleting now: a submission of one is refused.
    collecting: HashSet<String>,
    /// Jobs that may have objects in the store no record names: a run of
    /// theirs was lost with its worker's link (its output may have been
    /// written, its report never handled), or they were inherited at
    /// takeover (the old master's knowledge of such runs went with it).
    /// Their store directories are listed and emptied when they are
    /// collected. (A worker whose run ends after its link deletes the
    /// output it wrote itself: no master saw its report.)
    may_orphan: HashSet<String>,
    /// Owners of the jobs this master finished or cancelled, until they
    /// are collected: a request on one needs no ZooKeeper read to be
    /// authorized (an owner never changes while its job id lives).
    owners: HashMap<String, Option<String>>,
    /// Records of retained jobs (done and fetched, or cancelled: they
    /// change no more), read once by the collector.
    retained: HashMap<String, StoredJob>,
    /// Records of done jobs not fetched yet (they change only by a fetch
    /// here, which drops them from this cache), read once by the
    /// collector.
    unfetched: HashMap<String, StoredJob>,
    /// Disconnected from ZooKeeper: no new assignments until reconnected
    /// (we may not be master any more; expiry will tell).
    paused: bool,
    /// When a dispatch is scheduled for retries coming out of backoff.
    wake_at: Option<std::time::Instant>,
    /// Clients watching jobs.
    watchers: watching::Watchers,
    /// Bytes of inline outputs the streamed jobs keep (at most
    /// [`RECENT_OUTPUTS_TOTAL`]).
    recent_total: usize,
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
                self.audit(Event::AssignmentsPaused);
            } else {
                tracing::info!(
                    epoch = self.store.epoch(),
                    "reconnected to ZooKeeper: resuming assignments"
                );
                self.audit(Event::AssignmentsResumed);
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
        let retention = Retention::new(settings.retention, settings.retention_max_jobs);
        Master {
            elected,
            store,
            ledger: Ledger::new(settings.max_queued_bytes),
            settings,
            sched: Scheduler::new(),
            jobs: HashMap::new(),
            links: HashMap::new(),
            registered: BTreeMap::new(),
            gauges_at: None,
            gauges_pending: false,
            loading: HashMap::new(),
            cancelled_while_loading: HashSet::new(),
            gc_running: false,
            gc_started: std::time::Instant::now(),
            marked: HashMap::new(),
            retention,
            collecting: HashSet::new(),
            may_orphan: HashSet::new(),
            owners: HashMap::new(),
            retained: HashMap::new(),
            unfetched: HashMap::new(),
            paused: false,
            wake_at: None,
            watchers: watching::Watchers::default(),
            recent_total: 0,
        }
    }

    fn fail(&mut self, ctx: &mut Context<Self>, err: &CoordError) {
        tracing::error!(error = %err, epoch = self.store.epoch(), "master stepping down");
        let _ = self
            .settings
            .fatal
            .try_send(crate::actors::Restart::Failed(format!(
                "master stepped down: {err}"
            )));
        ctx.stop();
    }

    /// Steps down if every other worker refuses this master's certificate,
    /// or it refuses every other worker for not sharing its store
    /// (`core::standing` has the rule). `store_refusals_before`: the
    /// node's store refusals when this master started.
    fn check_standing(
        &mut self,
        standing: &mut crate::core::standing::Standing,
        store_refusals_before: u64,
        ctx: &mut Context<Self>,
    ) {
        use crate::core::standing::{Sample, Verdict};
        let own = &self.settings.node_id;
        let handshakes = &self.settings.handshakes;
        let sample = Sample {
            refused_us: handshakes.refused_us(),
            completed_by_others: handshakes.completed_by_others(),
            registered_others: self.registered.keys().filter(|id| *id != own).count(),
            linked_others: self.links.keys().filter(|id| *id != own).count(),
            own_worker: self.registered.contains_key(own),
        };
        let Verdict::StepDown { refusals, workers } =
            standing.observe(std::time::Instant::now(), sample)
        else {
            return;
        };
        let grace = standing.grace().as_secs();
        let reason = if self.settings.handshakes.store_refusals() > store_refusals_before {
            format!(
                "every other worker's node stores elsewhere than this master ({workers} \
                 registered, none linked, {refusals} refusals and no other peer's handshake in \
                 {grace} s): check this node's --store: it must name the store of the other \
                 nodes (the refusals above name both); it stands for election again after a pause"
            )
        } else {
            format!(
                "every other worker refused this master's certificate ({workers} registered, \
                 none linked, {refusals} refusals and no other peer's handshake in {grace} s): \
                 check this node's --certs: its ca.pem must be the cluster CA's, and its \
                 node.pem issued by it; it stands for election again after a pause"
            )
        };
        tracing::error!(epoch = self.store.epoch(), "master stepping down: {reason}");
        metrics::counter!(m::STEP_DOWNS).increment(1);
        self.audit(Event::SteppedDown {
            refusals,
            workers: workers as u64,
        });
        let _ = self
            .settings
            .fatal
            .try_send(crate::actors::Restart::SteppedDown(reason));
        ctx.stop();
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
        let cmds = self.sched.assign(now);
        self.apply(cmds, ctx);
        self.update_gauges(ctx);
        // Wake up when the next retry's backoff is over.
        if let Some(due) = self.sched.next_due(now) {
            if self.wake_at.is_none_or(|t| due < t) {
                self.wake_at = Some(due);
                ctx.run_later(due.saturating_duration_since(now), |act, ctx| {
                    act.wake_at = None;
                    act.dispatch(ctx);
                });
            }
        }
    }

    /// Appends to the node's audit log.
    pub(super) fn audit(&self, event: Event) {
        self.settings.audit.record(self.store.epoch(), event);
    }

    /// Carries out the scheduler's commands, then hands out what can run.
    fn run(&mut self, ctx: &mut Context<Self>, cmds: Vec<Command>) {
        self.apply(cmds, ctx);
        self.dispatch(ctx);
    }

    /// A worker's link is gone (lost, or dropped by us): its shards go back
    /// to the queue.
    fn drop_worker(&mut self, ctx: &mut Context<Self>, node_id: &str) {
        self.links.remove(node_id);
        let cmds = self.lose_worker_runs(node_id);
        self.run(ctx, cmds);
    }

    /// Takes a worker out of the scheduler: its runs go back to the queue,
    /// counted, and their jobs are marked as possibly holding outputs no
    /// record names (see `may_orphan`).
    fn lose_worker_runs(&mut self, node_id: &str) -> Vec<Command> {
        self.may_orphan.extend(self.sched.jobs_on(node_id));
        metrics::counter!(m::SHARDS_REASSIGNED).increment(self.sched.running_on(node_id) as u64);
        let doubted = self.sched.in_doubt_total();
        let cmds = self.sched.remove_worker(node_id);
        metrics::counter!(m::SHARDS_IN_DOUBT).increment(self.sched.in_doubt_total() - doubted);
        cmds
    }

    /// Takes a job's runtime out of the master (and its kept outputs out
    /// of the total).
    fn take_runtime(&mut self, job: &str) -> Option<JobRuntime> {
        let rt = self.jobs.remove(job)?;
        self.recent_total -= rt.recent_bytes;
        Some(rt)
    }

    /// Drops a job's runtime, keeping its owner for authorization.
    fn forget_job(&mut self, job: &str) -> Option<JobRuntime> {
        let rt = self.take_runtime(job)?;
        self.owners
            .insert(job.to_string(), rt.stored.record.owner.clone());
        Some(rt)
    }

    fn apply(&mut self, cmds: Vec<Command>, ctx: &mut Context<Self>) {
        let mut lost = Vec::new();
        for c in cmds {
            match c {
                Command::Assign {
                    worker,
                    job,
                    incarnation,
                    shard,
                    ack_first,
                } => {
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
                        incarnation,
                        job_name: rt.stored.record.job_name.clone(),
                        shard: shard.key,
                        attempt: shard.attempt,
                        tasks,
                        ack_first,
                    });
                    let sent = self.links.get(&worker).is_some_and(|l| l.tx.push(frame));
                    if sent {
                        crate::counter_once!(m::SHARDS_ASSIGNED).increment(1);
                    } else {
                        lost.push(worker);
                    }
                }
                Command::Revoke {
                    worker,
                    job,
                    incarnation,
                    key,
                    attempt,
                } => {
                    let frame = Frame::StartRefused {
                        job_id: job,
                        incarnation,
                        shard: key,
                        attempt,
                    };
                    if !self.tell(&worker, frame) {
                        lost.push(worker);
                    }
                }
                Command::Stop {
                    worker,
                    job,
                    incarnation,
                    key,
                    attempt,
                } => {
                    let frame = Frame::StopRun {
                        job_id: job,
                        incarnation,
                        shard: key,
                        attempt,
                    };
                    if !self.tell(&worker, frame) {
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
                Command::Finish { job } => self.finish(ctx, &job),
                Command::RecordLoss {
                    job,
                    key,
                    next_attempt,
                } => self.record_loss(ctx, job, key, next_attempt),
            }
        }
        for w in lost {
            self.drop_worker(ctx, &w);
        }
    }

    /// Sends a frame on a worker's link, if it has one (a link that is
    /// gone takes its runs with it); false if the link's queue is full or
    /// its writer gone: the caller drops the worker.
    fn tell(&self, worker: &str, frame: Frame) -> bool {
        self.links.get(worker).is_none_or(|l| l.tx.push(frame))
    }

    /// Writes a shard's next attempt after its worker died running it
    /// (after the job's create, if that waits).
    fn record_loss(
        &mut self,
        ctx: &mut Context<Self>,
        job: String,
        key: ShardKey,
        next_attempt: u32,
    ) {
        let write = creating::Deferred::RecordLoss { key, next_attempt };
        if self.defer(&job, write).is_none() {
            return;
        }
        let store = self.store.clone();
        let fut = async move { store.record_loss(&job, key, next_attempt).await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(()) => {}
            Err(e) if e.is_session_end() => act.fail(ctx, &e),
            Err(e) => tracing::warn!(error = %e, "cannot record a lost attempt"),
        }));
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
        let write = creating::Deferred::Commit {
            key,
            attempt,
            output,
            failures,
        };
        let Some(creating::Deferred::Commit {
            output, failures, ..
        }) = self.defer(&job, write)
        else {
            return;
        };
        let store = self.store.clone();
        let job2 = job.clone();
        let (incarnation, compact) = self.jobs.get(&job).map_or((0, false), |rt| {
            (rt.stored.record.incarnation, rt.stored.record.is_compact())
        });
        let fut = async move {
            let job = JobRef {
                id: &job2,
                incarnation,
                compact,
            };
            store.commit(job, key, attempt, output, failures).await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(Committed { record: rec, at }) => {
                // What the chaos harness counts: one per shard, ever.
                tracing::debug!(job = %job, shard = %key, epoch = rec.epoch, attempt = rec.attempt, "shard committed");
                act.audit(Event::ShardCommitted {
                    job: job.clone(),
                    shard: key.to_string(),
                    attempt: rec.attempt,
                    incarnation,
                });
                act.on_committed(ctx, &job, key, rec, at);
            }
            Err(e) if e.is_session_end() => act.fail(ctx, &e),
            Err(e) => {
                tracing::warn!(job = %job, shard = %key, error = %e, "commit failed; the shard will run again");
                // Whether or not the write applied, this run's object may
                // end up named by no record: the job's store directories
                // are emptied when it is collected.
                act.may_orphan.insert(job.clone());
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
        at: Arc<str>,
    ) {
        crate::counter_once!(m::SHARDS_COMMITTED).increment(1);
        if let Some(rt) = self.jobs.get_mut(job) {
            // What the other streamed jobs leave of the total.
            let others = self.recent_total - rt.recent_bytes;
            let room = RECENT_OUTPUTS_TOTAL.saturating_sub(others);
            rt.keep_output(rt.commit_log.len(), &rec.output, room);
            self.recent_total = others + rt.recent_bytes;
            rt.logged(key, at);
        }
        let object = match &rec.output {
            OutputRef::Object(name) => Some(name.clone()),
            OutputRef::Inline(_) | OutputRef::File(_) => None,
        };
        let tasks = self.sched.shard_tasks(job, key).unwrap_or_default();
        let c = self
            .ledger
            .committed(job, key, tasks, rec.attempt, &rec.failures, object);
        if c.dead_lettered > 0 || c.retried > 0 {
            let name = self.job_name(job);
            metrics::counter!(m::TASKS_DEAD_LETTERED, "job_type" => name.clone())
                .increment(c.dead_lettered);
            metrics::counter!(m::TASKS_RETRIED, "job_type" => name).increment(c.retried);
        }
        if let Some(merge) = c.merge {
            self.merge(ctx, merge, rec.output.clone());
        }
        let now = std::time::Instant::now();
        let cmds = self
            .sched
            .committed(job, key, rec.attempt, &rec.failures, now);
        self.progressed(ctx, job);
        self.run(ctx, cmds);
    }

    /// Reads a committed output (from the store if it is there) and merges
    /// it into the job's result on the blocking pool.
    fn merge(&mut self, ctx: &mut Context<Self>, merge: Merge, output: OutputRef) {
        let Some(rt) = self.jobs.get_mut(&merge.job) else {
            return;
        };
        let erased = self
            .settings
            .registry
            .get(&rt.stored.record.job_name)
            .cloned();
        // A small partial, when no merge of the pool holds the result:
        // here and now (see `JobRuntime::acc`).
        let here = match (&erased, &output) {
            (Some(erased), OutputRef::Inline(bytes))
                if rt.acc_bytes.saturating_add(bytes.len()) <= SMALL_MERGE =>
            {
                rt.acc.try_lock().ok().map(|mut acc| {
                    let merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        erased.merge_encoded(&mut acc, bytes)
                    }));
                    let res = match merged {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err("merging panicked".to_string()),
                    };
                    (res, bytes.len())
                })
            }
            _ => None,
        };
        if let Some((res, len)) = here {
            rt.acc_bytes += len;
            self.merged(ctx, merge, res);
            return;
        }
        rt.acc_bytes = usize::MAX;
        let acc = rt.acc.clone();
        let store = self.store.clone();
        let work = async move {
            let erased = erased.ok_or("its job type is not registered on the master")?;
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
        ctx.spawn(
            work.into_actor(self)
                .map(move |res: Result<(), String>, act, ctx| {
                    act.merged(ctx, merge, res);
                }),
        );
    }

    /// A merge's outcome, for the ledger: it may fail tasks, and it may
    /// have been all a finish waited for.
    fn merged(&mut self, ctx: &mut Context<Self>, merge: Merge, outcome: Result<(), String>) {
        if let Err(error) = &outcome {
            tracing::error!(job = %merge.job, shard = %merge.key, tasks = merge.tasks.len(), %error, "a committed shard output cannot be merged; reporting its tasks as failed");
        }
        let scheduled = self.sched.counters(&merge.job).unwrap_or_default();
        let (job, shard) = (merge.job.clone(), merge.key.to_string());
        let (failed, finish) = self.ledger.merged(merge, outcome, scheduled);
        if failed > 0 {
            metrics::counter!(m::TASKS_DEAD_LETTERED, "job_type" => self.job_name(&job))
                .increment(failed);
            self.audit(Event::MergeFailed {
                job,
                shard,
                tasks: failed,
            });
        }
        if let Some(f) = finish {
            self.write_result(ctx, f);
        }
    }

    /// Every task of the job has an outcome: write its result (once the
    /// ledger says merges are done).
    fn finish(&mut self, ctx: &mut Context<Self>, job: &str) {
        if self.defer(job, creating::Deferred::Finish).is_none() {
            return;
        }
        let Some(scheduled) = self.sched.counters(job) else {
            return;
        };
        if let Some(f) = self.ledger.finish(job, scheduled) {
            self.write_result(ctx, f);
        }
    }

    /// Encodes the job's result off the arbiter and writes it with `Done`
    /// in one fenced transaction; retried while the cause is transient.
    fn write_result(&mut self, ctx: &mut Context<Self>, f: Finish) {
        let Some(rt) = self.jobs.get(&f.job) else {
            return;
        };
        let Some(erased) = self
            .settings
            .registry
            .get(&rt.stored.record.job_name)
            .cloned()
        else {
            return;
        };
        let acc = rt.acc.clone();
        let small = rt.acc_bytes <= SMALL_MERGE;
        let store = self.store.clone();
        let stored = StoredJob {
            id: rt.stored.id.clone(),
            record: rt.stored.record.clone(),
            version: rt.stored.version,
        };
        let Finish {
            job,
            counters,
            failures,
            objects,
        } = f;
        let job_id = job.clone();
        let job_name = stored.record.job_name.clone();
        let fetched = self.want_result(&job);
        let work = async move {
            let encode = move || {
                let acc = acc.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                erased.encode_acc(&acc)
            };
            // A small result is encoded here (see `JobRuntime::acc`); no
            // merge can hold it now, the job's merges are done.
            let encoded = match small {
                true => std::panic::catch_unwind(std::panic::AssertUnwindSafe(encode))
                    .map_err(|_| "encoding panicked"),
                false => tokio::task::spawn_blocking(encode)
                    .await
                    .map_err(|_| "encoding panicked"),
            };
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
            let done = store
                .finish(&stored, output, failures, counters, fetched)
                .await;
            if done.is_ok() {
                // After the answer: the job's end waits for no deletion.
                tokio::task::spawn_local(async move {
                    if let Err(e) = store.clean_finished(&stored, &objects).await {
                        tracing::debug!(job = %stored.id, error = %e, "finished job not cleaned; collection will");
                    }
                });
            }
            done
        };
        ctx.spawn(work.into_actor(self).map(move |res, act, ctx| match res {
            Ok(finished) => act.job_done(ctx, &job, job_name, finished),
            Err(e) if e.is_session_end() => act.fail(ctx, &e),
            Err(e) if e.is_conflict() => act.cancelled_meanwhile(ctx, &job),
            Err(e) => {
                tracing::warn!(job, error = %e, "cannot store the job's result; retrying");
                // The retry writes its result under a new name: this
                // attempt's object, if the store took it, is named by no
                // record. Collection sweeps the job's directories.
                act.may_orphan.insert(job.clone());
                act.ledger.finish_failed(&job);
                ctx.run_later(Duration::from_millis(200), move |act, ctx| {
                    let scheduled = act.sched.counters(&job).unwrap_or_default();
                    if let Some(f) = act.ledger.retry_finish(&job, scheduled) {
                        act.write_result(ctx, f);
                    }
                });
            }
        }));
    }

    /// A compact job's only shard, reported with every task done and a
    /// small output, while nothing else of the job was committed, merged
    /// or failed: the job ends in one write, its record `Done` with the
    /// result in it (the output reduced alone), and no commit record. A
    /// one-task job of a work queue then costs ZooKeeper its create, this
    /// write and the delete that collects it (or, when its create has not
    /// gone yet, its create alone: see [`creating`]). Gives the output
    /// back when the shard must be committed as usual.
    fn end_in_one_write(
        &mut self,
        ctx: &mut Context<Self>,
        (job, key, attempt): (&str, ShardKey, u32),
        output: ShardOutput,
        failures: &[TaskFailure],
    ) -> Option<ShardOutput> {
        let ShardOutput::Bytes(bytes) = &output else {
            return Some(output);
        };
        let Some(rt) = self.jobs.get(job) else {
            return Some(output);
        };
        let record = &rt.stored.record;
        let alone = failures.is_empty()
            && record.keep_result(bytes, &[])
            && !record.options.stream
            && self.sched.sole_shard(job, key);
        let erased = self.settings.registry.get(&record.job_name);
        let (true, Some(erased)) = (alone, erased) else {
            return Some(output);
        };
        // The result a merge into a new one would give. If it cannot be
        // had, the usual path commits the output and says why.
        let reduced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut acc = erased.new_acc();
            erased.merge_encoded(&mut acc, bytes)?;
            erased.encode_acc(&acc)
        }));
        let Ok(Ok(result)) = reduced else {
            return Some(output);
        };
        let scheduled = self.sched.counters(job).unwrap_or_default();
        let Some(f) = self.ledger.end_alone(job, scheduled) else {
            return Some(output);
        };
        let end = creating::EndAlone {
            key,
            attempt,
            result,
            failures: f.failures,
            counters: f.counters,
        };
        self.end_alone(ctx, job, end);
        None
    }

    /// A job's end is durable: it leaves the master, and its watchers get
    /// it. Its counts and fetched mark are the stored record's.
    fn job_done(
        &mut self,
        ctx: &mut Context<Self>,
        job: &str,
        job_name: String,
        finished: Finished,
    ) {
        let Finished {
            result,
            record,
            fetched,
            object,
        } = finished;
        let counters = result.counters;
        // A work queue's one-task jobs would be two lines each at
        // thousands a second: jobs of one task that succeeded are
        // logged at debug level, the others at info.
        if counters.tasks_total > 1 || counters.tasks_failed > 0 {
            tracing::info!(
                job,
                tasks = counters.tasks_total,
                failed = counters.tasks_failed,
                "job done"
            );
        } else {
            tracing::debug!(job, tasks = counters.tasks_total, "job done");
        }
        let name = self.job_name(job);
        if counters.tasks_failed > 0 {
            metrics::counter!(m::JOBS_FAILED, "job_type" => name).increment(1);
        } else {
            metrics::counter!(m::JOBS_COMPLETED, "job_type" => name).increment(1);
        }
        self.audit(Event::JobDone {
            job: job.to_string(),
            tasks_done: counters.tasks_done,
            tasks_failed: counters.tasks_failed,
        });
        let version = self.forget_job(job).map_or(0, |rt| rt.stored.version + 1);
        self.ledger.finished(job);
        let stops = self.sched.remove_job(job);
        self.apply(stops, ctx);
        metrics::gauge!(m::JOBS_RUNNING).set(self.jobs.len() as f64);
        // The collector need not read it: it changes no more (fetched), or
        // only by a fetch here (which drops it from the cache).
        let kept = StoredJob {
            id: job.to_string(),
            record: record.without_payload(),
            version,
        };
        match fetched {
            true => self.retained.insert(job.to_string(), kept),
            false => self.unfetched.insert(job.to_string(), kept),
        };
        let done = JobProgress {
            job_id: job.to_string(),
            job_name,
            state: JobState::Done,
            counters,
        };
        // Handed over from memory only if the stored record is marked
        // fetched: a watch that came during the write is answered by a
        // fetch, which marks it.
        self.watch_ended(ctx, job, done, Some((result, object)), fetched);
    }

    /// A cancel got there before the job's end: no record names the
    /// result's object, if it went to the store; collection sweeps it.
    fn cancelled_meanwhile(&mut self, ctx: &mut Context<Self>, job: &str) {
        tracing::info!(job, "job cancelled while its result was being written");
        self.may_orphan.insert(job.to_string());
        self.forget_job(job);
        self.ledger.finished(job);
        let stops = self.sched.remove_job(job);
        self.apply(stops, ctx);
    }

    fn sync_worker(&mut self, ctx: &mut Context<Self>, node_id: &str) {
        let eligible = self.registered.contains_key(node_id) && self.links.contains_key(node_id);
        if eligible && !self.sched.has_worker(node_id) {
            if let Some(l) = self.links.get(node_id) {
                // Its slots: the scheduler adds a queue of as many
                // (`PREFETCH_PER_SLOT`), so slots never idle on a round trip.
                // The master's own worker is a fallback: a task that crashes its
                // process should not take the master with it while others can run it.
                let fallback = node_id == self.settings.node_id;
                let cmds = self
                    .sched
                    .add_worker(node_id, l.slots, l.jobs.clone(), fallback);
                self.apply(cmds, ctx);
            }
        }
    }

    /// One pass of the collector: list the jobs, let [`Retention`] choose
    /// (here, on the actor, so that no submission of the same id can start
    /// meanwhile: [`submit`] refuses ids being collected), then delete.
    /// A pass reads only the records it does not know: not the jobs this
    /// master runs or is loading (running, never due), not those of the
    /// retained cache (they change no more) nor of the unfetched one (they
    /// change only by a fetch here, which drops them from it). A pass
    /// costs one listing plus the reads of jobs new to it, however many
    /// jobs are queued or wait to be fetched.
    fn collect_garbage(&mut self, ctx: &mut Context<Self>) {
        if self.gc_running {
            return;
        }
        self.gc_running = true;
        // Marks older than the last pass's start are in what this pass reads.
        let last = std::mem::replace(&mut self.gc_started, std::time::Instant::now());
        self.marked.retain(|_, at| *at >= last);
        let started = self.gc_started;
        let store = self.store.clone();
        let list = async move { store.list_job_ids().await };
        ctx.spawn(list.into_actor(self).map(move |res, act, ctx| {
            let ids = match res {
                Ok(ids) => ids,
                Err(e) => return act.collector_failed(ctx, &e),
            };
            let present: HashSet<&String> = ids.iter().collect();
            act.retained.retain(|id, _| present.contains(id));
            act.unfetched.retain(|id, _| present.contains(id));
            let unknown: Vec<String> = ids
                .iter()
                .filter(|id| {
                    !act.jobs.contains_key(*id)
                        && !act.loading.contains_key(*id)
                        && !act.retained.contains_key(*id)
                        && !act.unfetched.contains_key(*id)
                })
                .cloned()
                .collect();
            metrics::counter!(m::COLLECTOR_READS).increment(unknown.len() as u64);
            let store = act.store.clone();
            let read = async move { store.read_jobs(&unknown).await };
            ctx.spawn(read.into_actor(act).map(move |res, act, ctx| match res {
                Ok(fresh) => act.collect_pass(ctx, fresh, started),
                Err(e) => act.collector_failed(ctx, &e),
            }));
        }));
    }

    /// A collector pass that failed: logged, or the master steps down.
    fn collector_failed(&mut self, ctx: &mut Context<Self>, e: &CoordError) {
        self.gc_running = false;
        if e.is_session_end() {
            return self.fail(ctx, e);
        }
        tracing::warn!(error = %e, "garbage collection failed");
    }

    /// The rest of a collector pass, with the records it read (`fresh`):
    /// each cached by what it is, then those due deleted.
    fn collect_pass(
        &mut self,
        ctx: &mut Context<Self>,
        fresh: Vec<StoredJob>,
        started: std::time::Instant,
    ) {
        let mut others = Vec::new();
        for j in fresh {
            // Known here since they were read (ended, or just submitted):
            // what this master holds of them is newer.
            let newer = self.jobs.contains_key(&j.id)
                || self.retained.contains_key(&j.id)
                || self.unfetched.contains_key(&j.id);
            if newer {
                continue;
            }
            match j.record.stored() {
                Stored::Retained => {
                    self.retained.insert(j.id.clone(), j);
                }
                // Read before its fetch mark was durable, maybe: the
                // next pass reads it again.
                Stored::Unfetched if self.marked.get(&j.id).is_some_and(|at| *at >= started) => {}
                Stored::Unfetched => {
                    self.unfetched.insert(j.id.clone(), j);
                }
                // Unfinished, and not run here: scheduled (every job
                // durable in ZooKeeper ends without a failover).
                Stored::Running => {
                    self.readopt(ctx, j.id.clone());
                    others.push(j);
                }
                Stored::Writing => others.push(j),
            }
        }
        let mut fresh = others;
        let listed = pass_listing(&mut fresh, &self.retained);
        let due: HashSet<String> = self
            .retention
            .due(&listed, &self.ledger, std::time::Instant::now())
            .into_iter()
            .collect();
        let victims = pass_victims(fresh, &mut self.retained, &due);
        if victims.is_empty() {
            self.gc_running = false;
            return;
        }
        self.collecting = due;
        let store = self.store.clone();
        let sweep: Vec<String> = victims
            .iter()
            .filter(|j| self.may_orphan.contains(&j.id))
            .map(|j| j.id.clone())
            .collect();
        let collect = async move {
            store
                .collect(&victims, &sweep)
                .await
                .map(|()| victims.len())
        };
        ctx.spawn(collect.into_actor(self).map(move |res, act, ctx| {
            act.gc_running = false;
            let collected = std::mem::take(&mut act.collecting);
            match res {
                Err(e) if e.is_session_end() => act.fail(ctx, &e),
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
                Ok(n) => {
                    tracing::debug!(jobs = n, "removed collected jobs from ZooKeeper");
                    for id in &collected {
                        act.may_orphan.remove(id);
                        act.owners.remove(id);
                    }
                }
            }
        }));
    }

    fn watch_workers(&self, ctx: &mut Context<Self>) {
        let addr = ctx.address();
        let mut workers = Box::pin(self.store.workers());
        let watch = async move {
            while let Some(registered) = workers.next().await {
                addr.do_send(Registered(registered?));
            }
            Ok(())
        };
        ctx.spawn(
            watch
                .into_actor(self)
                .map(|res: Result<(), CoordError>, act, ctx| {
                    if let Err(e) = res {
                        act.fail(ctx, &e);
                    }
                }),
        );
    }
}

/// Shortest interval between two refreshes of the master's gauges.
const GAUGE_PERIOD: Duration = Duration::from_millis(200);

impl Actor for Master {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        metrics::gauge!(m::NODE_ROLE, "role" => "master").set(1.0);
        metrics::gauge!(m::EPOCH).set(self.store.epoch() as f64);
        metrics::counter!(m::ELECTIONS_WON).increment(1);
        let store = self.store.clone();
        let node_id = self.settings.node_id.clone();
        let addr = self.settings.addr.clone();
        let recovery = async move {
            let started = std::time::Instant::now();
            // Submissions that never got acknowledged are dropped; the client retries them.
            let jobs = store.list_jobs().await?;
            let listed = started.elapsed();
            let (writing, jobs): (Vec<StoredJob>, Vec<StoredJob>) = jobs
                .into_iter()
                .partition(|job| job.record.status == JobStatus::Writing);
            let inherited: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
            let writing_ids: Vec<String> = writing.iter().map(|j| j.id.clone()).collect();
            store.collect(&writing, &writing_ids).await?;
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
            Ok::<_, CoordError>((pending, inherited, started.elapsed()))
        };
        // `wait`: no message is handled before the takeover is done. The
        // unfinished jobs are then read in the background while the master
        // serves (see `load_jobs`), so its time to serving does not grow
        // with the work left behind.
        ctx.wait(recovery.into_actor(self).map(|res, act, ctx| match res {
            Ok((pending, inherited, took)) => {
                act.may_orphan.extend(inherited);
                tracing::info!(
                    epoch = act.store.epoch(),
                    jobs = pending.len(),
                    recovery_ms = took.as_millis() as u64,
                    since_election_ms = act.elected.elapsed().as_millis() as u64,
                    "serving as master"
                );
                act.audit(Event::Elected);
                act.load_jobs(ctx, pending);
                let _ = act.settings.route.send(Some(ctx.address()));
                act.watch_workers(ctx);
                let mut states = act.store.connections();
                let addr = ctx.address();
                ctx.spawn(
                    async move {
                        loop {
                            match states.changed().await {
                                Connection::Disconnected => addr.do_send(Connected(false)),
                                Connection::Connected => addr.do_send(Connected(true)),
                                Connection::Ended { .. } => return,
                            }
                        }
                    }
                    .into_actor(act),
                );
                ctx.run_interval(Duration::from_secs(1), |act, ctx| act.collect_garbage(ctx));
                let mut standing = crate::core::standing::Standing::new(
                    std::time::Instant::now(),
                    crate::core::standing::MIN_GRACE,
                );
                let store_refusals_before = act.settings.handshakes.store_refusals();
                ctx.run_interval(Duration::from_secs(1), move |act, ctx| {
                    act.check_standing(&mut standing, store_refusals_before, ctx)
                });
                // Gauges are set again while nothing happens: a series not
                // set for `GAUGE_IDLE` leaves the metrics page.
                ctx.run_interval(m::GAUGE_IDLE / 4, |act, ctx| act.update_gauges(ctx));
                // Stragglers and hung shards get a copy on another worker.
                ctx.run_interval(Duration::from_millis(250), |act, ctx| {
                    if act.paused {
                        return;
                    }
                    let cmds = act.sched.speculate(std::time::Instant::now());
                    if !cmds.is_empty() {
                        tracing::info!(copies = cmds.len(), "speculative copies of slow shards");
                        metrics::counter!(m::SHARDS_SPECULATED).increment(cmds.len() as u64);
                        act.audit(Event::Speculated {
                            copies: cmds.len() as u64,
                        });
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
        self.audit(Event::MasterStopped);
    }
}

impl Handler<Stop> for Master {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Any other client request (`GetJob`, `GetStatus`, `FetchResult`, `Cancel`).
#[derive(Message)]
#[rtype(result = "Frame")]
pub(crate) struct ClientRequest {
    pub frame: Frame,
    /// Who asks: listings show only what it may see.
    pub peer: crate::transport::PeerId,
}

impl Handler<ClientRequest> for Master {
    type Result = ResponseActFuture<Self, Frame>;
    fn handle(&mut self, msg: ClientRequest, ctx: &mut Context<Self>) -> Self::Result {
        match msg.frame {
            Frame::GetStatus => Box::pin(fut::ready(self.status(&msg.peer))),
            Frame::GetJob { job_id } => self.get_job(job_id, msg.peer),
            Frame::FetchResult { job_id } => self.fetch(ctx, job_id, msg.peer),
            Frame::Cancel { job_id } => self.cancel(ctx, job_id, msg.peer),
            Frame::PlanJob {
                job_name,
                task_count,
                shard_size,
                shape,
            } => Box::pin(fut::ready(self.plan_job(
                &job_name,
                task_count,
                shard_size,
                shape.as_deref(),
            ))),
            Frame::ListJobs(query) => self.list_jobs(&msg.peer, query),
            other => Box::pin(fut::ready(error(
                ErrorKind::Unsupported,
                format!("unexpected request {}", other.name()),
            ))),
        }
    }
}

impl Master {
    /// A running job's registered name (a bounded label: the master
    /// accepts only the job types it registers).
    fn job_name(&self, job: &str) -> String {
        self.jobs.get(job).map_or_else(
            || "unknown".to_string(),
            |rt| rt.stored.record.job_name.clone(),
        )
    }
}

/// Answers a request with what `work` comes to; a ZooKeeper or store error
/// becomes an `Error` frame saying what went wrong.
fn answer(
    master: &Master,
    work: impl std::future::Future<Output = Result<Frame, CoordError>> + 'static,
) -> ResponseActFuture<Master, Frame> {
    Box::pin(
        work.into_actor(master)
            .map(|res, _, _| res.unwrap_or_else(|e| failed(&e))),
    )
}

fn error(kind: ErrorKind, message: impl std::fmt::Display) -> Frame {
    Frame::error(kind, message)
}

/// The `Error` frame of a ZooKeeper or store failure: nothing was done
/// (a write whose outcome is unknown is answered apart, where it is
/// made), so the request may be sent again.
fn failed(e: &CoordError) -> Frame {
    error(ErrorKind::Unavailable, e)
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

/// What a collector pass chooses from: the jobs it read that are not
/// retained (`fresh`), and the cache of retained ones. A job in both ended
/// during the pass and is in the cache as written: its fresh record, read
/// before its end, is stale and goes, so that every job is listed once
/// (listed twice, it was a victim twice, and its second deletion a
/// `NoNode` that sent its whole chunk one delete at a time).
fn pass_listing(
    fresh: &mut Vec<StoredJob>,
    retained: &HashMap<String, StoredJob>,
) -> Vec<(String, Stored)> {
    fresh.retain(|j| !retained.contains_key(&j.id));
    fresh
        .iter()
        .map(|j| (j.id.clone(), j.record.stored()))
        .chain(retained.keys().map(|id| (id.clone(), Stored::Retained)))
        .collect()
}

/// The jobs `due` to be collected, each once: from `fresh`, and out of the
/// cache (read again if their deletion fails).
fn pass_victims(
    fresh: Vec<StoredJob>,
    retained: &mut HashMap<String, StoredJob>,
    due: &HashSet<String>,
) -> Vec<StoredJob> {
    let mut victims: Vec<StoredJob> = fresh.into_iter().filter(|j| due.contains(&j.id)).collect();
    victims.extend(due.iter().filter_map(|id| retained.remove(id)));
    victims
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::JobRecord;
    use crate::wire::JobOptions;

    #[test]
    fn a_job_that_ended_during_a_collector_pass_is_listed_and_collected_once() {
        let job = |id: &str, status: JobStatus, fetched: bool| {
            let mut stored = runtime(false).stored;
            stored.id = id.into();
            stored.record.status = status;
            stored.record.fetched_ms = fetched.then_some(1);
            stored
        };
        // "x" was read running, then ended fetched: in the cache as written.
        let mut fresh = vec![
            job("x", JobStatus::Accepted, false),
            job("y", JobStatus::Done, false),
        ];
        let mut retained: HashMap<String, StoredJob> = [
            ("x", job("x", JobStatus::Done, true)),
            ("z", job("z", JobStatus::Cancelled, true)),
        ]
        .into_iter()
        .map(|(id, j)| (id.to_string(), j))
        .collect();
        let mut listed = pass_listing(&mut fresh, &retained);
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            listed,
            vec![
                ("x".to_string(), Stored::Retained),
                ("y".to_string(), Stored::Unfetched),
                ("z".to_string(), Stored::Retained),
            ]
        );
        let due: HashSet<String> = ["x", "z"].iter().map(|s| s.to_string()).collect();
        let victims = pass_victims(fresh, &mut retained, &due);
        let mut ids: Vec<&str> = victims.iter().map(|j| j.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["x", "z"], "each once");
        let x = victims
            .iter()
            .find(|j| j.id == "x")
            .map(|j| j.record.status);
        assert_eq!(
            x,
            Some(JobStatus::Done),
            "the record as written, not the stale one"
        );
        assert!(retained.is_empty(), "chosen: out of the cache");
    }

    fn runtime(stream: bool) -> JobRuntime {
        let record = JobRecord {
            job_name: "j".into(),
            options: JobOptions {
                shard_size: 1,
                max_attempts: 1,
                shard_timeout_ms: None,
                stream,
            },
            tasks_total: 10_000,
            batches: 1,
            status: JobStatus::Accepted,
            created_ms: 0,
            fetched_ms: None,
            digest: None,
            owner: None,
            inline: None,
            result: None,
            incarnation: 1,
        };
        let stored = StoredJob {
            id: "j".into(),
            record,
            version: 0,
        };
        JobRuntime::new(stored, Arc::new(Vec::new()), Box::new(()))
    }

    fn commit(rt: &mut JobRuntime, index: u32, output: OutputRef) {
        rt.keep_output(rt.commit_log.len(), &output, usize::MAX);
        let key = ShardKey {
            index,
            generation: 0,
        };
        rt.logged(key, "c1.1.0".into());
    }

    /// Issue 29, finding 6: streamed jobs' kept outputs are bounded
    /// across jobs, not only per job: a job keeps what the others leave.
    #[test]
    fn a_streamed_job_keeps_outputs_in_the_room_the_others_leave() {
        let mut rt = runtime(true);
        for i in 0..10 {
            rt.keep_output(i, &OutputRef::Inline(ByteBuf::from(vec![1; 100])), 250);
            assert!(rt.recent_bytes <= 250, "{}", rt.recent_bytes);
        }
        assert_eq!(rt.recent.len(), 2, "the latest two fit");
        assert!(rt.recent_output(9).is_some() && rt.recent_output(7).is_none());
        rt.keep_output(10, &OutputRef::Inline(ByteBuf::from(vec![1; 100])), 0);
        assert_eq!(rt.recent_bytes, 0, "no room: nothing kept");
    }

    #[test]
    fn a_streamed_jobs_latest_inline_outputs_are_kept_by_position() {
        let mut rt = runtime(true);
        // Two recovered commits come first, without outputs kept.
        for i in 0..2 {
            let key = ShardKey {
                index: i,
                generation: 0,
            };
            rt.logged(key, "c1.1.0".into());
        }
        commit(&mut rt, 2, OutputRef::Inline(ByteBuf::from(vec![2])));
        commit(&mut rt, 3, OutputRef::Object("o".into()));
        commit(&mut rt, 4, OutputRef::Inline(ByteBuf::from(vec![4])));
        assert_eq!(rt.recent_output(0), None);
        assert_eq!(rt.recent_output(2).as_deref(), Some(&vec![2]));
        assert_eq!(rt.recent_output(3), None, "in the store: read from there");
        assert_eq!(rt.recent_output(4).as_deref(), Some(&vec![4]));
        assert_eq!(rt.recent_output(5), None);
        // Bounded: the oldest go first.
        for i in 5..(5 + RECENT_OUTPUTS.0 as u32) {
            commit(&mut rt, i, OutputRef::Inline(ByteBuf::from(vec![1])));
        }
        assert_eq!(rt.recent.len(), RECENT_OUTPUTS.0);
        assert_eq!(rt.recent_output(4), None);
        let last = rt.commit_log.len() - 1;
        assert_eq!(rt.recent_output(last).as_deref(), Some(&vec![1]));
        assert_eq!(rt.recent_bytes, RECENT_OUTPUTS.0);
    }

    #[test]
    fn a_job_not_streamed_keeps_no_outputs() {
        let mut rt = runtime(false);
        commit(&mut rt, 0, OutputRef::Inline(ByteBuf::from(vec![0])));
        assert_eq!(rt.commit_log.len(), 1);
        assert!(rt.recent.is_empty());
        assert_eq!(rt.recent_output(0), None);
    }
}
