//! The master's decisions about its workers and its jobs' runs, as one
//! state machine without I/O, after quinn-proto's connection: the actor
//! hands it what happened ([`MasterCore::handle`], with `now`), performs
//! what it asks ([`MasterCore::poll_effect`]) and feeds each outcome back
//! as an event; [`MasterCore::poll_timeout`] says when it next wants an
//! [`Event::Tick`].
//!
//! It owns the [`Scheduler`] (where runs go) and the [`Ledger`] (what
//! commits add up to) and keeps the two in step, so that no driver copies
//! counts from one to the other or removes a job from one and not the
//! other. It owns the workers as the master sees them (links, their
//! registrations, drains), what a worker's report means (impossible,
//! stale, the job's end in one write, or a commit), commits, merges and
//! finishes with their failures and retries, pausing while ZooKeeper is
//! away, speculation, and which jobs may hold objects no record names
//! (collection sweeps those).
//!
//! It does not know how anything is written or sent, a job's tasks or
//! outputs as bytes beyond their length, nor the user's code: a one-write
//! end's reduction and a merge are the driver's, which says how they went.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::job::{Finish, Merge, Refusal, Submission};
use super::{
    Command, Counters, JobPlan, Ledger, RunId, Scheduler, ShardKey, StartAnswer, TaskFailure,
};

/// How often slow runs are looked for, to copy them elsewhere.
pub const SPECULATE_EVERY: Duration = Duration::from_millis(250);

/// How long after a failed write of a job's result it is written again.
pub const FINISH_RETRY: Duration = Duration::from_millis(200);

/// A shard's output as the core sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Reported inline.
    Bytes(Vec<u8>),
    /// Written by its worker to the object store, under this name (checked
    /// to be one of its job's at the edge).
    Object(String),
    /// The job type's empty result (a shard whose tasks all failed with no
    /// worker to report): encoded by the driver.
    Empty,
}

/// What the master tells a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// Run these tasks of the job (`ack_first`: wait for `StartAck`).
    Assign {
        /// The run.
        run: RunId,
        /// Task indexes.
        tasks: Vec<u64>,
        /// The slot waits for the master's word before it runs it.
        ack_first: bool,
        /// Its job's priority: the worker runs what it holds highest first.
        priority: u8,
        /// How long its shard waited in its job's queue (for the driver's
        /// histogram; not sent).
        waited: Duration,
    },
    /// The run may start.
    StartAck(RunId),
    /// The run must not start (moved elsewhere, or no longer wanted).
    StartRefused(RunId),
    /// Stop the run, whatever its state.
    StopRun(RunId),
    /// The worker's drain is acknowledged: its departure is expected.
    DrainAck,
}

/// A job handed to the core: accepted now, or read back after a failover.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// What the scheduler runs.
    pub plan: JobPlan,
    /// Task bytes it holds in ZooKeeper until it finishes.
    pub bytes: usize,
    /// Final failures its commits already hold (read back).
    pub failures: Vec<TaskFailure>,
    /// Store objects its commits reference (read back).
    pub objects: Vec<String>,
    /// Committed outputs that could not be read back, with why: their
    /// tasks fail.
    pub unmerged: Vec<(Merge, String)>,
    /// Most bytes of a result its record may keep: a job of one shard
    /// whose output fits ends in one write. `None`: it never does (not
    /// compact, or streamed).
    pub kept_result: Option<usize>,
    /// Whose it is (`None`: a job of an older version).
    pub owner: Option<String>,
    /// Scheduled while its create waits (a work queue's job of one
    /// shard): its writes are held until [`Event::Created`] says it is
    /// durable.
    pub creating: bool,
}

/// How the create of a job scheduled while it waited ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Durable: its held writes go.
    Durable,
    /// Durable as its end (its one-write end went in place of its
    /// create): nothing held is written; the job is gone once the driver
    /// says so.
    Ended,
    /// Not written (the id is taken, or ZooKeeper refused): the job is
    /// discarded as if never admitted.
    Failed,
}

/// A job the master cannot read or run (its type not registered on this
/// node, a record or batch that does not decode): quarantined, left for a
/// master that can run it, shown with its reason. Every other job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Why, saying what to do.
    pub reason: String,
    /// Its registered name, if its record could be read.
    pub job_name: Option<String>,
    /// Its tasks, if known.
    pub tasks_total: u64,
    /// Whose it is, if known.
    pub owner: Option<String>,
    /// When it was accepted (ms since the Unix epoch; 0 if unknown).
    pub created_ms: u64,
}

/// Why a job leaves the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Its end is durable.
    Done,
    /// Cancelled by a client.
    Cancelled,
    /// A cancel got there before the write of its end: the result's
    /// object, if it was written, is named by no record.
    CancelledWhileFinishing,
    /// Its create failed: as if never admitted.
    Discarded,
}

/// What happened, for the core.
#[derive(Debug, Clone)]
pub enum Event {
    /// A worker's link came up (a second one replaces the first).
    Linked {
        /// Node id.
        worker: String,
        /// Tells its links apart across reconnections.
        link: u64,
        /// Its slots.
        slots: u32,
        /// The job types it runs.
        jobs: Vec<String>,
    },
    /// A worker's link ended.
    Unlinked {
        /// Node id.
        worker: String,
        /// Which link.
        link: u64,
    },
    /// A frame could not be queued on a worker's link (its queue is full,
    /// or its writer gone): the link is dropped.
    Unreachable {
        /// Node id.
        worker: String,
    },
    /// The registered workers, as ZooKeeper lists them now.
    Registered(BTreeSet<String>),
    /// The master's ZooKeeper session lost (`false`) or regained its
    /// connection: no assignments while it is away.
    Connected(bool),
    /// A worker's slot is about to run a run.
    Started {
        /// Node id.
        worker: String,
        /// The run (its epoch: the one the worker's frame names).
        run: RunId,
    },
    /// A worker dropped a run it was refused while it waited.
    Unstarted {
        /// Node id.
        worker: String,
        /// The run.
        run: RunId,
    },
    /// A worker is draining: its queued runs go elsewhere.
    Draining {
        /// Node id.
        worker: String,
    },
    /// A worker is done draining.
    Drained {
        /// Node id.
        worker: String,
    },
    /// A worker reported a run.
    Reported {
        /// Node id.
        worker: String,
        /// The run (its epoch: the one the report names).
        run: RunId,
        /// Its tasks that failed.
        failures: Vec<TaskFailure>,
        /// Its output.
        output: Output,
    },
    /// A frame no honest worker sends, found so at the edge: its link is
    /// dropped.
    Impossible {
        /// Node id.
        worker: String,
        /// Why.
        reason: String,
    },
    /// Jobs inherited from an earlier master: they may hold objects no
    /// record names.
    Inherited(Vec<String>),
    /// Fairness keys' weights, as stored (at the takeover) or as set
    /// (an admin's request, once durable): each weighs this from now on.
    Weighed(Vec<(String, u32)>),
    /// Limits set (`Some`) or removed, by key: read at takeover (every
    /// bucket empty), or set by an admin.
    Limited(Vec<(String, Option<crate::Limit>)>),
    /// Unfinished jobs of an earlier master, with their owners, being
    /// read back (each then [`Event::Added`], unless cancelled meanwhile:
    /// see [`MasterCore::take_loaded`]).
    Loading(Vec<(String, Option<String>)>),
    /// A job scheduled while its create waited was created, or not.
    Created {
        /// Job id.
        job: String,
        /// How.
        outcome: Created,
    },
    /// A cancel's write failed: the job was not cancelled by this master
    /// after all (it is read back if it is still unfinished).
    CancelFailed {
        /// Job id.
        job: String,
    },
    /// The collector deletes these jobs now.
    Collecting(BTreeSet<String>),
    /// The collector's deletion ended (`ok`: every job of it is gone).
    Collected {
        /// Whether it succeeded.
        ok: bool,
    },
    /// A job this master cannot read or run: quarantined.
    Unreadable {
        /// Job id.
        job: String,
        /// What is known of it, and why.
        why: Box<Quarantined>,
    },
    /// A job to run.
    Added(Box<NewJob>),
    /// A job leaves.
    Gone {
        /// Job id.
        job: String,
        /// Why.
        why: Gone,
    },
    /// A shard's commit is durable.
    Committed {
        /// Job id.
        job: String,
        /// The shard.
        key: ShardKey,
        /// The attempt the record holds.
        attempt: u32,
        /// The failures the record holds.
        failures: Vec<TaskFailure>,
        /// The store object of its output, if it is in the store.
        object: Option<String>,
    },
    /// A commit failed, or its outcome is unknown: the shard runs again.
    CommitFailed {
        /// Job id.
        job: String,
        /// The shard.
        key: ShardKey,
    },
    /// A one-write end's output could not be reduced alone: it is
    /// committed as usual.
    NotReducible {
        /// The run.
        run: RunId,
        /// Its output.
        output: Vec<u8>,
    },
    /// A one-write end failed, or its outcome is unknown: the shard runs
    /// again.
    EndFailed {
        /// Job id.
        job: String,
        /// The shard.
        key: ShardKey,
    },
    /// A merge is done (`Err`: its tasks fail).
    Merged {
        /// The merge asked for.
        merge: Merge,
        /// How it went.
        outcome: Result<(), String>,
    },
    /// Writing a job's result failed for a transient reason: written
    /// again after [`FINISH_RETRY`].
    FinishFailed {
        /// Job id.
        job: String,
    },
    /// Time passed (see [`MasterCore::poll_timeout`]).
    Tick,
}

/// What the core asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Queue a frame on a worker's link; if that fails, answer
    /// [`Event::Unreachable`].
    Send {
        /// Node id.
        worker: String,
        /// What.
        msg: ToWorker,
    },
    /// Forget a worker's link (its runs are requeued already).
    Unlink {
        /// Node id.
        worker: String,
        /// Which link.
        link: u64,
    },
    /// Commit a shard's outcome; answer [`Event::Committed`] or
    /// [`Event::CommitFailed`].
    Commit {
        /// The run.
        run: RunId,
        /// Its output.
        output: Output,
        /// Its failures.
        failures: Vec<TaskFailure>,
    },
    /// Record in ZooKeeper a shard's next attempt after its worker died
    /// running it.
    RecordLoss {
        /// Job id.
        job: String,
        /// The shard.
        key: ShardKey,
        /// The attempt its next run has.
        next_attempt: u32,
    },
    /// End the job in one write: its only shard's output reduced alone is
    /// its result. Answer [`Event::NotReducible`] if it cannot be reduced,
    /// [`Event::Gone`] when the end is durable, [`Event::EndFailed`] if it
    /// is not.
    EndAlone {
        /// The run.
        run: RunId,
        /// Its output.
        output: Vec<u8>,
        /// The job's final counts.
        counters: Counters,
    },
    /// Merge a committed output into the job's result; answer
    /// [`Event::Merged`].
    Merge(Merge),
    /// Write the job's result with `Done`; answer [`Event::Gone`] or
    /// [`Event::FinishFailed`].
    WriteResult(Finish),
    /// A stale report's output: delete it if it is an object.
    Discard(Output),
    /// Something to log, count or audit.
    Note(Note),
}

/// What the driver logs, counts and audits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A worker's link was lost with runs on it, or without its drain.
    WorkerLost {
        /// Node id.
        worker: String,
        /// Runs it held.
        running: usize,
    },
    /// A drained worker left, with nothing running.
    DrainedLeft {
        /// Node id.
        worker: String,
    },
    /// A worker's registration was deleted while it held runs.
    RegistrationGone {
        /// Node id.
        worker: String,
    },
    /// A worker is drained.
    Drained {
        /// Node id.
        worker: String,
    },
    /// A worker is draining.
    Draining {
        /// Node id.
        worker: String,
    },
    /// A lost worker's runs went back to the queue.
    Requeued {
        /// Runs requeued.
        runs: u64,
        /// Of them, runs whose tasks may have run (charged an attempt).
        in_doubt: u64,
    },
    /// Assignments stop until ZooKeeper is back.
    Paused,
    /// Assignments go on.
    Resumed,
    /// A report no honest worker sends.
    Impossible {
        /// Node id.
        worker: String,
        /// Why.
        reason: String,
    },
    /// A report of a run no longer awaited.
    Stale {
        /// The run.
        run: RunId,
    },
    /// A `Started` of a run the scheduler does not hold, refused.
    StartRefused {
        /// Node id.
        worker: String,
        /// The run.
        run: RunId,
    },
    /// A commit's failures, counted.
    Failures {
        /// Job id.
        job: String,
        /// Tasks that failed for good.
        dead_lettered: u64,
        /// Tasks that will run again.
        retried: u64,
    },
    /// A committed output could not be merged.
    MergeFailed {
        /// Job id.
        job: String,
        /// The shard.
        key: ShardKey,
        /// Tasks failed for it.
        tasks: u64,
        /// Why.
        error: String,
    },
    /// A job was quarantined.
    Quarantined {
        /// Job id.
        job: String,
        /// Why.
        reason: String,
    },
    /// Copies of slow runs were sent.
    Speculated {
        /// How many.
        copies: u64,
    },
}

/// Whether an event may have freed a slot or added work: then the core
/// hands out what can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dispatch {
    Yes,
    No,
}

/// A worker's link, as the core sees it.
#[derive(Debug)]
struct Link {
    id: u64,
    slots: u32,
    jobs: Vec<String>,
    drained: bool,
}

/// See the module doc.
#[derive(Debug)]
pub struct MasterCore {
    epoch: u64,
    /// This node's id: its own worker runs jobs only when no other can.
    own: String,
    sched: Scheduler,
    ledger: Ledger,
    links: HashMap<String, Link>,
    registered: BTreeSet<String>,
    /// Of each job, the most bytes of a result its record may keep
    /// (see [`NewJob::kept_result`]).
    kept_result: HashMap<String, usize>,
    /// No assignments: ZooKeeper is away.
    paused: bool,
    /// Jobs that may have objects in the store no record names: a run of
    /// theirs was lost with its worker's link (its output may have been
    /// written, its report never handled), a write of theirs failed or
    /// its outcome is unknown, or they were inherited at takeover. Their
    /// store directories are listed and emptied when they are collected.
    may_orphan: HashSet<String>,
    /// Each job's phase and owner.
    book: Book,
    /// The writes of jobs whose create waits, in order.
    held: HashMap<String, Vec<Effect>>,
    /// Results to write again, when.
    finish_retries: VecDeque<(Instant, String)>,
    next_speculation: Option<Instant>,
    now: Option<Instant>,
    effects: VecDeque<Effect>,
}

impl MasterCore {
    /// The core of the master of `epoch`, whose own node is `own`, bounding
    /// the task bytes of unfinished jobs at `max_queued_bytes`.
    pub fn new(epoch: u64, own: &str, max_queued_bytes: usize) -> Self {
        MasterCore {
            epoch,
            own: own.to_string(),
            sched: Scheduler::new(),
            ledger: Ledger::new(max_queued_bytes),
            links: HashMap::new(),
            registered: BTreeSet::new(),
            kept_result: HashMap::new(),
            paused: false,
            may_orphan: HashSet::new(),
            book: Book::default(),
            held: HashMap::new(),
            finish_retries: VecDeque::new(),
            next_speculation: None,
            now: None,
            effects: VecDeque::new(),
        }
    }

    /// The next thing to do, if any.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When the core next wants [`Event::Tick`]: a retry out of its
    /// backoff, a delayed job's time, a result to write again, or a look
    /// for slow runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let now = self.now?;
        let due = match self.paused {
            true => None,
            false => self.sched.next_due(now),
        };
        [
            due,
            self.finish_retries.front().map(|r| r.0),
            self.next_speculation,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Hands the core what happened at `now`.
    pub fn handle(&mut self, event: Event, now: Instant) {
        self.now = Some(self.now.map_or(now, |t| t.max(now)));
        let now = self.now.unwrap_or(now);
        self.sched.tick(now);
        self.next_speculation.get_or_insert(now + SPECULATE_EVERY);
        let dispatch = match event {
            Event::Linked {
                worker,
                link,
                slots,
                jobs,
            } => self.linked(worker, link, slots, jobs),
            Event::Unlinked { worker, link } => self.unlinked(&worker, link),
            Event::Unreachable { worker } => self.drop_worker(&worker, false),
            Event::Registered(registered) => self.registered_now(registered),
            Event::Connected(up) => self.connected(up),
            Event::Started { worker, run } => self.started(worker, run, now),
            Event::Unstarted { worker, run } => self.unstarted(&worker, &run),
            Event::Draining { worker } => self.draining(worker),
            Event::Drained { worker } => self.drained(worker),
            Event::Reported {
                worker,
                run,
                failures,
                output,
            } => self.reported(worker, run, failures, output, now),
            Event::Impossible { worker, reason } => self.impossible(&worker, reason),
            Event::Inherited(jobs) => self.inherited(jobs),
            Event::Weighed(weights) => {
                for (key, weight) in weights {
                    self.sched.set_weight(&key, weight);
                }
                Dispatch::Yes
            }
            Event::Limited(limits) => {
                for (key, limit) in limits {
                    self.sched.set_limit(&key, limit, now);
                }
                Dispatch::Yes
            }
            Event::Loading(jobs) => self.loading_jobs(jobs),
            Event::Unreadable { job, why } => self.unreadable(job, *why),
            Event::Added(job) => self.add(*job),
            Event::Gone { job, why } => self.gone(&job, why),
            Event::CancelFailed { job } => self.cancel_failed(&job),
            Event::Created { job, outcome } => self.created(job, outcome),
            Event::Collecting(jobs) => {
                self.book.set_collecting(jobs);
                Dispatch::No
            }
            Event::Collected { ok } => self.collected_now(ok),
            Event::Committed {
                job,
                key,
                attempt,
                failures,
                object,
            } => self.committed(&job, key, attempt, &failures, object, now),
            Event::CommitFailed { job, key } => self.commit_failed(job, key),
            Event::EndFailed { job, key } => self.end_failed(&job, key),
            Event::NotReducible { run, output } => self.not_reducible(run, output),
            Event::Merged { merge, outcome } => self.merged(merge, outcome),
            Event::FinishFailed { job } => self.finish_failed(job, now),
            Event::Tick => self.tick(now),
        };
        // What may have freed a slot or added work hands out what can run.
        if dispatch == Dispatch::Yes {
            self.dispatch(now);
        }
    }

    fn linked(&mut self, worker: String, link: u64, slots: u32, jobs: Vec<String>) -> Dispatch {
        if self.links.contains_key(&worker) {
            self.lose_runs(&worker);
        }
        let drained = false;
        let l = Link {
            id: link,
            slots,
            jobs,
            drained,
        };
        self.links.insert(worker.clone(), l);
        self.sync_worker(&worker);
        Dispatch::Yes
    }

    fn unlinked(&mut self, worker: &str, link: u64) -> Dispatch {
        if self.links.get(worker).is_none_or(|l| l.id != link) {
            return Dispatch::No;
        }
        self.drop_worker(worker, true)
    }

    fn connected(&mut self, up: bool) -> Dispatch {
        if self.paused != up {
            return Dispatch::No;
        }
        self.paused = !up;
        self.note(if up { Note::Resumed } else { Note::Paused });
        match up {
            true => Dispatch::Yes,
            false => Dispatch::No,
        }
    }

    fn unstarted(&mut self, worker: &str, run: &RunId) -> Dispatch {
        let job = (run.job.as_str(), run.incarnation);
        self.sched.unstarted(worker, job, run.shard, run.attempt);
        Dispatch::Yes
    }

    fn draining(&mut self, worker: String) -> Dispatch {
        self.sched.drain_worker(&worker);
        self.note(Note::Draining { worker });
        Dispatch::Yes
    }

    fn drained(&mut self, worker: String) -> Dispatch {
        if let Some(l) = self.links.get_mut(&worker) {
            l.drained = true;
        }
        self.note(Note::Drained {
            worker: worker.clone(),
        });
        self.send(worker, ToWorker::DrainAck);
        Dispatch::No
    }

    fn inherited(&mut self, jobs: Vec<String>) -> Dispatch {
        self.may_orphan.extend(jobs);
        Dispatch::No
    }

    fn loading_jobs(&mut self, jobs: Vec<(String, Option<String>)>) -> Dispatch {
        for (id, owner) in jobs {
            let loading = Phase::Loading { cancelled: false };
            self.book.set(&id, loading, Some(owner));
        }
        Dispatch::No
    }

    fn unreadable(&mut self, job: String, why: Quarantined) -> Dispatch {
        if self.book.phase(&job) == Some(Phase::Loading { cancelled: true }) {
            self.book.forget(&job);
            return Dispatch::No;
        }
        let reason = why.reason.clone();
        self.book.quarantine(&job, why);
        self.note(Note::Quarantined { job, reason });
        Dispatch::No
    }

    fn created(&mut self, job: String, outcome: Created) -> Dispatch {
        let held = self.held.remove(&job).unwrap_or_default();
        match outcome {
            Created::Durable => {
                if self.book.phase(&job) == Some(Phase::Creating) {
                    self.book.set(&job, Phase::Running, None);
                }
                self.effects.extend(held);
                Dispatch::No
            }
            Created::Ended => Dispatch::No,
            Created::Failed => self.gone(&job, Gone::Discarded),
        }
    }

    fn cancel_failed(&mut self, job: &str) -> Dispatch {
        if self.book.phase(job) == Some(Phase::Ended) {
            self.book.forget(job);
        }
        Dispatch::No
    }

    fn collected_now(&mut self, ok: bool) -> Dispatch {
        let collected = self.book.take_collecting();
        if ok {
            for id in collected {
                self.may_orphan.remove(&id);
                if self.book.phase(&id) == Some(Phase::Ended) {
                    self.book.forget(&id);
                }
            }
        }
        Dispatch::No
    }

    /// Whether or not the write applied, the run's output may end up
    /// named by no record: the job's store directories are emptied when
    /// it is collected.
    fn commit_failed(&mut self, job: String, key: ShardKey) -> Dispatch {
        self.sched.commit_aborted(&job, key);
        self.may_orphan.insert(job);
        Dispatch::Yes
    }

    /// Applied or not, the shard runs again; an end that had applied is
    /// found by the next one.
    fn end_failed(&mut self, job: &str, key: ShardKey) -> Dispatch {
        self.ledger.end_alone_failed(job);
        self.sched.commit_aborted(job, key);
        Dispatch::Yes
    }

    fn not_reducible(&mut self, run: RunId, output: Vec<u8>) -> Dispatch {
        self.ledger.end_alone_failed(&run.job);
        let output = Output::Bytes(output);
        let failures = Vec::new();
        self.push(Effect::Commit {
            run,
            output,
            failures,
        });
        Dispatch::No
    }

    fn finish_failed(&mut self, job: String, now: Instant) -> Dispatch {
        self.may_orphan.insert(job.clone());
        self.ledger.finish_failed(&job);
        self.finish_retries.push_back((now + FINISH_RETRY, job));
        Dispatch::No
    }

    /// Time passed: results to write again, slow runs to copy.
    fn tick(&mut self, now: Instant) -> Dispatch {
        while let Some((at, _)) = self.finish_retries.front() {
            if *at > now {
                break;
            }
            let Some((_, job)) = self.finish_retries.pop_front() else {
                break;
            };
            let scheduled = self.sched.counters(&job).unwrap_or_default();
            if let Some(f) = self.ledger.retry_finish(&job, scheduled) {
                self.push(Effect::WriteResult(f));
            }
        }
        if self.next_speculation.is_some_and(|t| t <= now) {
            self.next_speculation = Some(now + SPECULATE_EVERY);
            if !self.paused {
                let cmds = self.sched.speculate(now);
                if !cmds.is_empty() {
                    let copies = cmds.len() as u64;
                    self.note(Note::Speculated { copies });
                }
                self.apply(cmds);
            }
        }
        Dispatch::Yes
    }

    /// Hands out what can run, unless paused.
    fn dispatch(&mut self, now: Instant) {
        if self.paused {
            return;
        }
        let cmds = self.sched.assign(now);
        self.apply(cmds);
    }

    /// Asks the driver for an effect; a write of a job whose create waits
    /// is held until it is created.
    fn push(&mut self, effect: Effect) {
        let job = match &effect {
            Effect::Commit { run, .. } => Some(&run.job),
            Effect::RecordLoss { job, .. } => Some(job),
            Effect::WriteResult(f) => Some(&f.job),
            _ => None,
        };
        if let Some(held) = job.and_then(|job| self.held.get_mut(job)) {
            held.push(effect);
            return;
        }
        self.effects.push_back(effect);
    }

    fn note(&mut self, note: Note) {
        self.push(Effect::Note(note));
    }

    fn send(&mut self, worker: String, msg: ToWorker) {
        self.push(Effect::Send { worker, msg });
    }

    /// The scheduler's commands, as effects.
    fn apply(&mut self, cmds: Vec<Command>) {
        for c in cmds {
            match c {
                Command::Assign {
                    worker,
                    job,
                    incarnation,
                    shard,
                    ack_first,
                    priority,
                    waited,
                } => {
                    let run = self.run_of(job, incarnation, shard.key, shard.attempt);
                    let tasks = shard.tasks;
                    let msg = ToWorker::Assign {
                        run,
                        tasks,
                        ack_first,
                        priority,
                        waited,
                    };
                    self.send(worker, msg);
                }
                Command::Revoke {
                    worker,
                    job,
                    incarnation,
                    key,
                    attempt,
                } => {
                    let run = self.run_of(job, incarnation, key, attempt);
                    self.send(worker, ToWorker::StartRefused(run));
                }
                Command::Stop {
                    worker,
                    job,
                    incarnation,
                    key,
                    attempt,
                } => {
                    let run = self.run_of(job, incarnation, key, attempt);
                    self.send(worker, ToWorker::StopRun(run));
                }
                Command::CommitLost {
                    job,
                    key,
                    attempt,
                    failures,
                } => {
                    let incarnation = self.sched.incarnation_of(&job).unwrap_or(0);
                    let run = self.run_of(job, incarnation, key, attempt);
                    let output = Output::Empty;
                    self.push(Effect::Commit {
                        run,
                        output,
                        failures,
                    });
                }
                Command::RecordLoss {
                    job,
                    key,
                    next_attempt,
                } => self.push(Effect::RecordLoss {
                    job,
                    key,
                    next_attempt,
                }),
                Command::Finish { job } => {
                    let Some(scheduled) = self.sched.counters(&job) else {
                        continue;
                    };
                    if let Some(f) = self.ledger.finish(&job, scheduled) {
                        self.push(Effect::WriteResult(f));
                    }
                }
            }
        }
    }

    /// A run this master assigned.
    fn run_of(&self, job: String, incarnation: u64, shard: ShardKey, attempt: u32) -> RunId {
        RunId {
            epoch: self.epoch,
            job,
            incarnation,
            shard,
            attempt,
        }
    }

    /// A worker becomes schedulable once it is both linked and registered.
    fn sync_worker(&mut self, worker: &str) {
        if !self.registered.contains(worker) || self.sched.has_worker(worker) {
            return;
        }
        let Some(l) = self.links.get(worker) else {
            return;
        };
        // The master's own worker is a fallback: a task that crashes its
        // process should not take the master with it while others can
        // run it.
        let fallback = worker == self.own;
        let cmds = self
            .sched
            .add_worker(worker, l.slots, l.jobs.clone(), fallback);
        self.apply(cmds);
    }

    fn registered_now(&mut self, registered: BTreeSet<String>) -> Dispatch {
        let gone: Vec<String> = self.registered.difference(&registered).cloned().collect();
        self.registered = registered;
        for w in gone {
            if self.sched.has_worker(&w) {
                let worker = w.clone();
                self.note(Note::RegistrationGone { worker });
                self.lose_runs(&w);
            }
        }
        let linked: Vec<String> = self.links.keys().cloned().collect();
        for w in linked {
            self.sync_worker(&w);
        }
        Dispatch::Yes
    }

    /// A worker's link is gone (`ended`: it ended, rather than being
    /// dropped here): its runs go back to the queue.
    fn drop_worker(&mut self, worker: &str, ended: bool) -> Dispatch {
        let Some(link) = self.links.remove(worker) else {
            return Dispatch::No;
        };
        let running = self.sched.running_on(worker);
        if ended {
            let note = match link.drained && running == 0 {
                true => Note::DrainedLeft {
                    worker: worker.to_string(),
                },
                false => Note::WorkerLost {
                    worker: worker.to_string(),
                    running,
                },
            };
            self.note(note);
        }
        let (worker, link) = (worker.to_string(), link.id);
        self.push(Effect::Unlink {
            worker: worker.clone(),
            link,
        });
        self.lose_runs(&worker);
        Dispatch::Yes
    }

    /// Takes a worker out of the scheduler: its runs go back to the queue,
    /// counted, and their jobs may hold outputs no record names.
    fn lose_runs(&mut self, worker: &str) {
        if !self.sched.has_worker(worker) {
            return;
        }
        self.may_orphan.extend(self.sched.jobs_on(worker));
        let runs = self.sched.running_on(worker) as u64;
        let doubted = self.sched.in_doubt_total();
        let cmds = self.sched.remove_worker(worker);
        let in_doubt = self.sched.in_doubt_total() - doubted;
        if runs > 0 {
            self.note(Note::Requeued { runs, in_doubt });
        }
        self.apply(cmds);
    }

    fn impossible(&mut self, worker: &str, reason: String) -> Dispatch {
        let w = worker.to_string();
        self.note(Note::Impossible { worker: w, reason });
        self.drop_worker(worker, false)
    }

    fn started(&mut self, worker: String, run: RunId, now: Instant) -> Dispatch {
        let answer = match run.epoch == self.epoch {
            true => {
                let job = (run.job.as_str(), run.incarnation);
                self.sched
                    .started(&worker, job, run.shard, run.attempt, now)
            }
            false => StartAnswer::Refuse,
        };
        match answer {
            StartAnswer::Nothing => {}
            StartAnswer::Ack => self.send(worker, ToWorker::StartAck(run)),
            StartAnswer::Refuse => {
                let (w, r) = (worker.clone(), run.clone());
                self.note(Note::StartRefused { worker: w, run: r });
                self.send(worker, ToWorker::StartRefused(run));
            }
        }
        Dispatch::No
    }

    fn reported(
        &mut self,
        worker: String,
        run: RunId,
        failures: Vec<TaskFailure>,
        output: Output,
        now: Instant,
    ) -> Dispatch {
        // A report no honest worker sends: its link goes, with the reason.
        if let Err(reason) = self.sched.check_failures(&run.job, run.shard, &failures) {
            return self.impossible(&worker, reason);
        }
        let stops = match run.epoch == self.epoch {
            true => {
                let job = (run.job.as_str(), run.incarnation);
                self.sched.report(&worker, job, run.shard, run.attempt, now)
            }
            false => None,
        };
        let Some(stops) = stops else {
            // Its object (it was checked to be its job's) is referenced by
            // nothing; a stopped run's report frees its slot.
            self.note(Note::Stale { run });
            if let Output::Object(_) = output {
                self.push(Effect::Discard(output));
            }
            return Dispatch::Yes;
        };
        self.apply(stops);
        if let Some(output) = self.end_alone(&run, output, &failures) {
            self.push(Effect::Commit {
                run,
                output,
                failures,
            });
        }
        Dispatch::Yes
    }

    /// A job's only shard, reported with every task done and an output its
    /// record can keep, while nothing else of the job was committed, merged
    /// or failed: the job ends in one write, its record `Done` with the
    /// result in it, and no commit record. Gives the output back when the
    /// shard must be committed as usual.
    fn end_alone(
        &mut self,
        run: &RunId,
        output: Output,
        failures: &[TaskFailure],
    ) -> Option<Output> {
        let Output::Bytes(bytes) = &output else {
            return Some(output);
        };
        let fits = self
            .kept_result
            .get(&run.job)
            .is_some_and(|&most| bytes.len() <= most);
        if !fits || !failures.is_empty() || !self.sched.sole_shard(&run.job, run.shard) {
            return Some(output);
        }
        let scheduled = self.sched.counters(&run.job).unwrap_or_default();
        let Some(f) = self.ledger.end_alone(&run.job, scheduled) else {
            return Some(output);
        };
        let Output::Bytes(output) = output else {
            return None;
        };
        self.push(Effect::EndAlone {
            run: run.clone(),
            output,
            counters: f.counters,
        });
        None
    }

    fn committed(
        &mut self,
        job: &str,
        key: ShardKey,
        attempt: u32,
        failures: &[TaskFailure],
        object: Option<String>,
        now: Instant,
    ) -> Dispatch {
        let tasks = self
            .sched
            .shard_tasks(job, key)
            .map(<[u64]>::to_vec)
            .unwrap_or_default();
        let c = self
            .ledger
            .committed(job, key, &tasks, attempt, failures, object);
        if c.dead_lettered > 0 || c.retried > 0 {
            self.note(Note::Failures {
                job: job.to_string(),
                dead_lettered: c.dead_lettered,
                retried: c.retried,
            });
        }
        if let Some(merge) = c.merge {
            self.push(Effect::Merge(merge));
        }
        let cmds = self.sched.committed(job, key, attempt, failures, now);
        self.apply(cmds);
        Dispatch::Yes
    }

    fn merged(&mut self, merge: Merge, outcome: Result<(), String>) -> Dispatch {
        let scheduled = self.sched.counters(&merge.job).unwrap_or_default();
        let (job, key) = (merge.job.clone(), merge.key);
        let error = outcome.as_ref().err().cloned();
        let (tasks, finish) = self.ledger.merged(merge, outcome, scheduled);
        if let Some(error) = error {
            self.note(Note::MergeFailed {
                job,
                key,
                tasks,
                error,
            });
        }
        if let Some(f) = finish {
            self.push(Effect::WriteResult(f));
        }
        Dispatch::No
    }

    fn add(&mut self, job: NewJob) -> Dispatch {
        let NewJob {
            plan,
            bytes,
            failures,
            objects,
            unmerged,
            kept_result,
            owner,
            creating,
        } = job;
        let id = plan.id.clone();
        let phase = match creating {
            true => {
                self.held.insert(id.clone(), Vec::new());
                Phase::Creating
            }
            false => Phase::Running,
        };
        self.book.set(&id, phase, Some(owner));
        self.ledger
            .add(&id, plan.max_attempts, bytes, failures, objects);
        match kept_result {
            Some(most) => self.kept_result.insert(id.clone(), most),
            None => self.kept_result.remove(&id),
        };
        for (merge, error) in unmerged {
            self.merged(merge, Err(error));
        }
        let cmds = self.sched.add_job(plan);
        self.apply(cmds);
        Dispatch::Yes
    }

    /// A job leaves (a cancel or a discard may free slots at once).
    fn gone(&mut self, job: &str, why: Gone) -> Dispatch {
        self.kept_result.remove(job);
        self.held.remove(job);
        match (self.book.phase(job), why) {
            (Some(Phase::Loading { .. }), _) => {
                let cancelled = Phase::Loading { cancelled: true };
                self.book.set(job, cancelled, None);
            }
            (_, Gone::Discarded) => self.book.forget(job),
            (Some(_), _) => self.book.set(job, Phase::Ended, None),
            (None, _) => {}
        }
        match why {
            Gone::Done | Gone::CancelledWhileFinishing => self.ledger.finished(job),
            Gone::Cancelled | Gone::Discarded => self.ledger.remove(job),
        }
        if matches!(why, Gone::CancelledWhileFinishing | Gone::Discarded) {
            self.may_orphan.insert(job.to_string());
        }
        // Its runs are stopped: their slots free as they end.
        let stops = self.sched.remove_job(job);
        self.apply(stops);
        match why {
            Gone::Cancelled | Gone::Discarded => Dispatch::Yes,
            Gone::Done | Gone::CancelledWhileFinishing => Dispatch::No,
        }
    }

    // Answers, for requests and the collector.

    /// A submission's admission: its shape and bytes; on success its bytes
    /// are reserved until it is added or abandoned.
    pub fn begin_submission(&mut self, s: &Submission<'_>) -> Result<(), Refusal> {
        self.ledger.begin_submission(s)
    }

    /// A submission that was not written (or whose job is not to run
    /// here): its reservation goes.
    pub fn abandoned(&mut self, id: &str) {
        self.ledger.abandoned(id);
    }

    /// Whether the job's submission is being written.
    pub fn is_submitting(&self, id: &str) -> bool {
        self.ledger.is_submitting(id)
    }

    /// The ledger, for the collector's choices.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// A running job's counts as clients see them.
    pub fn counters(&self, job: &str) -> Option<Counters> {
        let scheduled = self.sched.counters(job)?;
        Some(self.ledger.counters(job, scheduled))
    }

    /// Runs a worker holds (running or queued on it).
    pub fn running_on(&self, worker: &str) -> usize {
        self.sched.running_on(worker)
    }

    /// Whether the worker is schedulable (linked and registered).
    pub fn has_worker(&self, worker: &str) -> bool {
        self.sched.has_worker(worker)
    }

    /// Shards waiting to run.
    pub fn queued(&self) -> usize {
        self.sched.queued()
    }

    /// Whether the job may have objects no record names.
    pub fn may_orphan(&self, job: &str) -> bool {
        self.may_orphan.contains(job)
    }

    /// The jobs quarantined, by id.
    pub fn quarantined(&self) -> &BTreeMap<String, Quarantined> {
        self.book.quarantined()
    }

    /// Whether the job is quarantined.
    pub fn is_quarantined(&self, job: &str) -> bool {
        self.book.phase(job) == Some(Phase::Quarantined)
    }

    /// The job's phase here, if this master knows it.
    pub fn phase(&self, job: &str) -> Option<Phase> {
        self.book.phase(job)
    }

    /// Whose a job this master knows is: `None` if it does not know it
    /// (`Some(None)`: a job of an older version, or of unknown owner).
    pub fn owner_of(&self, job: &str) -> Option<Option<&str>> {
        self.book.owner(job)
    }

    /// Whether this master holds the job: runs, loads, submits or
    /// quarantined it, or ended or cancelled it (its end or cancel may be
    /// in flight, until it is collected).
    pub fn holds(&self, job: &str) -> bool {
        self.book.phase(job).is_some() || self.ledger.is_submitting(job)
    }

    /// Whether the job's create waits (it was scheduled before).
    pub fn is_creating(&self, job: &str) -> bool {
        self.book.phase(job) == Some(Phase::Creating)
    }

    /// Whether the job is being read back after a takeover.
    pub fn is_loading(&self, job: &str) -> bool {
        matches!(self.book.phase(job), Some(Phase::Loading { .. }))
    }

    /// Jobs being read back after a takeover.
    pub fn loading(&self) -> usize {
        self.book.loading()
    }

    /// Whether the collector deletes the job now.
    pub fn is_collecting(&self, job: &str) -> bool {
        self.book.collecting().contains(job)
    }

    /// A job read back after a takeover: whether it is still wanted (a
    /// cancel that came meanwhile drops it, and it is forgotten). Then
    /// [`Event::Added`].
    pub fn take_loaded(&mut self, job: &str) -> bool {
        match self.book.phase(job) {
            Some(Phase::Loading { cancelled: true }) => {
                self.book.forget(job);
                false
            }
            _ => true,
        }
    }

    /// Shards ready to run, by priority (index 0 to
    /// [`crate::MAX_PRIORITY`]).
    pub fn queued_by_priority(&self) -> [usize; crate::MAX_PRIORITY as usize + 1] {
        self.sched.queued_by_priority()
    }

    /// Each fairness key with a weight set or shards waiting: its
    /// weight and its shards waiting, by key.
    pub fn fair_shares(&self) -> BTreeMap<String, (u32, u64)> {
        self.sched.fair_shares()
    }

    /// Every limit set or named by a job: its use, and the shards of the
    /// jobs waiting on it.
    pub fn limits(&self) -> Vec<(String, crate::LimitUsage, u64)> {
        self.sched.limits()
    }

    /// The job whose first queued shard has waited longest, with when
    /// that shard joined the queue. Walks the jobs.
    pub fn oldest_waiting(&self) -> Option<(&str, Instant)> {
        self.sched.oldest_waiting()
    }

    /// A fairness key's weight (1 unless set).
    pub fn weight_of(&self, key: &str) -> u32 {
        self.sched.weight_of(key)
    }

    /// The limit a job waits on, if a limit holds it back.
    pub fn throttled_by(&self, job: &str) -> Option<&str> {
        self.sched.throttled_by(job)
    }

    /// When a delayed job's shards may run, while it waits for that.
    pub fn not_before(&self, job: &str) -> Option<Instant> {
        self.sched.not_before(job)
    }

    /// Delayed jobs waiting for their time, and the earliest time.
    pub fn timed(&self) -> (usize, Option<Instant>) {
        self.sched.timed()
    }

    /// Whether assignments wait for ZooKeeper.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The runs held under a limit (tests).
    #[cfg(test)]
    pub(crate) fn holders(&self, key: &str) -> Vec<(String, String, bool)> {
        self.sched.holders(key)
    }

    /// Checks the scheduler's indexes against its state (tests).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        self.sched.check_indexes();
        self.book.check();
        for w in self.links.keys() {
            if self.sched.has_worker(w) {
                assert!(self.registered.contains(w), "{w} scheduled unregistered");
            }
        }
    }
}

mod book;
use book::Book;
pub use book::Phase;

#[cfg(test)]
mod sim;
