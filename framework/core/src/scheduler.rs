//! The master's scheduler: a state machine fed with worker, job and report
//! events, answering with [`Command`]s for the master actor to carry out.
//!
//! Every event costs O(log n) in the shards of a job and the workers of a
//! cluster, plus what it hands out: jobs with shards ready to run take
//! turns (one shard each per turn, so a small job is not queued behind a
//! big one), retries in backoff wait in a set ordered by when they are due,
//! and the candidates for a speculative copy in a set ordered by age. No
//! call scans a job's shards, except forgetting a job with shards left.
//!
//! Jobs have a priority, 0 to [`MAX_PRIORITY`] (higher first): the turns
//! are taken level by level, the highest level with a shard a free worker
//! can take first, except that a level that waits gets every
//! [`SHARE_EVERY`]th shard placed while it does (no level starves). A
//! worker runs what it holds highest priority first; when a higher shard
//! finds every worker that runs its job full, a lower run waiting in one
//! of their queues is revoked to make room ([`Command::Revoke`]), at most
//! one per such shard.
//!
//! A worker holds runs beyond its slots in its queue: three per slot
//! ([`PREFETCH_PER_SLOT`]), seven while its runs are short
//! ([`SHORT_RUN_PREFETCH`]). When the jobs' queues are empty and a slot
//! elsewhere is idle, a queued run moves there. That walk
//! is bounded by a constant ([`STEAL_WALK`] workers each way), not by the
//! cluster.
//!
//! A job id may name several jobs over time (one cancelled and collected,
//! then another submitted under its id): each has its own incarnation, and
//! every run, report and answer names it, so nothing of an earlier one is
//! taken for the new one's. A run that is no longer wanted (its job
//! removed, or its shard committed by another copy) is stopped
//! ([`Command::Stop`]): it keeps its slot on its worker until the worker
//! says it ended (its report, or `Unstarted`), so that the scheduler never
//! counts a slot free that a stopping run still holds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::{split_failures, Counters, ShardKey, TaskFailure};

mod fair;
mod limits;

pub use fair::MAX_WEIGHT;
pub use limits::{Limit, LimitUsage, Rate};

/// A shard waiting to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingShard {
    /// Which shard.
    pub key: ShardKey,
    /// Task indexes it covers.
    pub tasks: Vec<u64>,
    /// The attempt number its next run will have (1-based).
    pub attempt: u32,
}

/// The highest priority a job may have (0 is the lowest, and the default).
pub const MAX_PRIORITY: u8 = 9;

/// Priority levels.
const LEVELS: usize = MAX_PRIORITY as usize + 1;

/// A level with shards waiting gets at least one in this many shards
/// placed while it waits, however much waits above it: 90% of the
/// placements go to the levels above, and a level below never starves.
pub const SHARE_EVERY: u32 = 10;

/// A job handed to the scheduler: new, or rebuilt from ZooKeeper by a new master.
#[derive(Debug, Clone)]
pub struct JobPlan {
    /// Job id.
    pub id: String,
    /// Which job of that id (chosen at admission, kept in its record).
    pub incarnation: u64,
    /// A shard running longer than this gets a copy elsewhere (hung tasks);
    /// without it, a shard running 4x the job's typical shard time does.
    pub shard_timeout: Option<Duration>,
    /// Registered job name (workers must know it).
    pub name: String,
    /// Attempts per task.
    pub max_attempts: u32,
    /// Its tasks, and those whose final outcome is already committed.
    pub counters: Counters,
    /// Shards still to run.
    pub pending: Vec<PendingShard>,
    /// Higher runs first (0 to [`MAX_PRIORITY`]; above is taken as it).
    pub priority: u8,
    /// Its fairness key: within a level, keys get shards in proportion to
    /// their weights ([`Scheduler::set_weight`]), and a key's jobs take
    /// turns. Its owner's, unless the job names another.
    pub fairness: String,
    /// None of its shards is placed before this (a delayed job): they
    /// join the queues once it has passed ([`Scheduler::next_due`] says
    /// when).
    pub not_before: Option<Instant>,
    /// The limits it is under ([`Scheduler::set_limit`]): a shard of it is
    /// placed only while each admits one more run.
    pub under: Vec<String>,
}

/// What the master must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send this shard to this worker.
    Assign {
        /// Worker node id.
        worker: String,
        /// Job id.
        job: String,
        /// The job's incarnation.
        incarnation: u64,
        /// The shard.
        shard: PendingShard,
        /// The worker's slot must wait for `StartAck` before it runs the
        /// shard (see [`Scheduler::started`]).
        ack_first: bool,
        /// The job's priority: the worker runs what it holds highest
        /// first.
        priority: u8,
        /// How long the shard waited in its job's queue (zero for a
        /// speculative copy).
        waited: Duration,
    },
    /// Commit this outcome for a shard that no worker will report on: its
    /// tasks used up their attempts on workers that died running them.
    CommitLost {
        /// Job id.
        job: String,
        /// The shard.
        key: ShardKey,
        /// The attempt that was lost.
        attempt: u32,
        /// One failure per task.
        failures: Vec<TaskFailure>,
    },
    /// A worker was lost while running this shard: record in ZooKeeper that
    /// its next run is attempt `next_attempt`, so that a new master does not
    /// give a task that kills its workers fresh attempts.
    RecordLoss {
        /// Job id.
        job: String,
        /// The shard.
        key: ShardKey,
        /// The attempt number of the shard's next run.
        next_attempt: u32,
    },
    /// Tell this worker not to run this run, which waits in its queue:
    /// it moved to another worker's idle slot. (If it started meanwhile,
    /// it runs on and stays there.)
    Revoke {
        /// Worker node id.
        worker: String,
        /// Job id.
        job: String,
        /// The job's incarnation.
        incarnation: u64,
        /// The shard.
        key: ShardKey,
        /// The run's attempt.
        attempt: u32,
    },
    /// Tell this worker to stop this run, whatever its state: its job was
    /// removed, or another copy of its shard reported first. A waiting run
    /// is dropped, a running one is told to stop
    /// (`TaskContext::is_cancelled` (the framework's)); it holds its slot until
    /// the worker says it ended.
    Stop {
        /// Worker node id.
        worker: String,
        /// Job id.
        job: String,
        /// The job's incarnation.
        incarnation: u64,
        /// The shard.
        key: ShardKey,
        /// The run's attempt.
        attempt: u32,
    },
    /// Every task of the job has a committed final outcome.
    Finish {
        /// Job id.
        job: String,
    },
}

/// What the master answers a worker's `Started`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAnswer {
    /// `StartAck`: the slot may run it.
    Ack,
    /// `StartRefused`: the slot must not run it, and is free again.
    Refuse,
    /// Nothing: the run did not wait (a report, or none, follows).
    Nothing,
}

/// Shards a worker may hold beyond its slots, per slot: they wait in its
/// queue, so that a slot that frees starts the next run at once instead
/// of after a round trip to the master (Celery's default prefetch is four
/// messages per process). A queued run that has not started when another
/// worker's slot stands idle with nothing else to run moves there (see
/// [`Scheduler::assign`]), so a queue never leaves a job's last shards
/// waiting behind a long run.
pub const PREFETCH_PER_SLOT: u32 = 3;

/// The queue per slot of a worker whose runs are short
/// ([`SHORT_RUN`]): a slot runs a one-task shard in tens of microseconds,
/// and a refill takes the master's round trip, hundreds of microseconds
/// under load; with three queued runs the slot idled between refills
/// (`cluster-bench --quick --only queue`: 8,300-8,900 one-task jobs/s at
/// 64 in flight, 17,000-20,600 tasks/s at 100,000 one-task shards; with
/// seven, 11,300-11,400 and 27,000-29,800). Long runs keep the shorter
/// queue: a new job's shards then wait behind at most three of them.
pub const SHORT_RUN_PREFETCH: u32 = 7;

/// Runs shorter than this, on average, make a worker's queue
/// [`SHORT_RUN_PREFETCH`] deep: a new job then waits behind at most
/// seven of them, some tens of milliseconds.
pub const SHORT_RUN: Duration = Duration::from_millis(5);

/// Most idle workers, and most workers with a backlog, one `assign` call
/// looks at to move a queued run: a bound on its cost, not on what it
/// moves (the next call goes on).
const STEAL_WALK: usize = 16;

/// Most lower runs revoking at once for higher shards: each is answered
/// within a round trip, so a few keep a higher backlog moving, and the
/// bound keeps every hand-out's look at them constant.
const PREEMPTING: usize = 16;

#[derive(Debug)]
struct WorkerSlot {
    capacity: u32,
    /// Used only when no other worker can run the job (the master's own
    /// worker: user code that crashes its process should not take the
    /// master down while other workers exist).
    fallback: bool,
    jobs: BTreeSet<String>,
    running: BTreeSet<(String, ShardKey)>,
    /// Those of `running` sent to wait for `StartAck`: while it holds one,
    /// everything it is sent waits too.
    acking: BTreeSet<(String, ShardKey)>,
    /// Runs sent to start without waiting, whose `Started` has not come:
    /// each may be running unseen (the worker's queue is ordered, and
    /// `Started` precedes a report on one ordered stream). Kept beyond
    /// the run itself (moved, committed by a copy, its job gone), since the
    /// worker runs it all the same.
    unseen: BTreeSet<(String, u64, ShardKey, u32)>,
    /// Runs told to stop ([`Command::Stop`]) that have not ended yet: each
    /// holds a slot. The flag: it waits for `StartAck`, so the `Started` it
    /// sent, refused, is its end.
    stopping: BTreeMap<(String, u64, ShardKey, u32), bool>,
    /// Runs revoked elsewhere for its idle slots (see
    /// [`Scheduler::steal`]); an entry lasts while that run is revoking.
    promised: BTreeSet<(String, ShardKey)>,
    /// Its entry in the free index (its load then), if it has a free slot.
    indexed: Option<usize>,
    /// Its runs' time, from their start to their report (a moving
    /// average), once it reported one: short runs deepen its queue.
    run_time: Option<Duration>,
}

impl WorkerSlot {
    /// The runs holding its slots and queue: its own, and those stopping.
    fn load(&self) -> usize {
        self.running.len() + self.stopping.len()
    }

    /// Whether it counts among the regular workers of its jobs.
    fn regular(&self) -> bool {
        !self.fallback && self.capacity > 0
    }

    /// How many runs it may hold: its slots and its queue, deeper while
    /// its runs are short.
    fn window(&self) -> u32 {
        let queue = match self.run_time {
            Some(t) if t < SHORT_RUN => SHORT_RUN_PREFETCH,
            _ => PREFETCH_PER_SLOT,
        };
        self.capacity.saturating_mul(1 + queue)
    }
}

/// Workers with a free slot, ordered by load: picking the least-loaded
/// eligible worker is a walk from the front, not a scan of every worker.
type FreeIndex = BTreeSet<(usize, String)>;

/// The workers and what indexes them.
#[derive(Debug, Default)]
struct Pool {
    workers: BTreeMap<String, WorkerSlot>,
    free: FreeIndex,
    /// Per job name, the regular (not fallback, not draining) workers
    /// that run it: whether a fallback worker may be used is one lookup.
    regulars: HashMap<String, usize>,
    /// Workers holding more runs than they have slots: some wait in
    /// their queues, and may move to a worker whose slot stands idle.
    backlogged: BTreeSet<String>,
    /// The limits, counting the runs the workers hold of the jobs under
    /// them.
    limits: limits::Limits,
}

impl Pool {
    fn reindex(&mut self, id: &str) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        if let Some(load) = w.indexed.take() {
            self.free.remove(&(load, id.to_string()));
        }
        let load = w.load();
        if (load as u32) < w.window() {
            self.free.insert((load, id.to_string()));
            w.indexed = Some(load);
        }
        if w.capacity > 0 && load as u32 > w.capacity {
            self.backlogged.insert(id.to_string());
        } else {
            self.backlogged.remove(id);
        }
    }

    fn count_regular(&mut self, slot: &WorkerSlot, add: bool) {
        if !slot.regular() {
            return;
        }
        for name in &slot.jobs {
            let n = self.regulars.entry(name.clone()).or_default();
            if add {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.regulars.remove(name);
                }
            }
        }
    }

    /// Takes a worker out of every index; returns it.
    fn take(&mut self, id: &str) -> Option<WorkerSlot> {
        let slot = self.workers.remove(id)?;
        if let Some(load) = slot.indexed {
            self.free.remove(&(load, id.to_string()));
        }
        self.backlogged.remove(id);
        self.count_regular(&slot, false);
        Some(slot)
    }

    fn hold(&mut self, id: &str, job: &str, key: ShardKey, now: Instant) {
        if let Some(w) = self.workers.get_mut(id) {
            if w.running.insert((job.to_string(), key)) {
                self.limits.hold(job, now);
            }
        }
        self.reindex(id);
    }

    fn release(&mut self, id: &str, job: &str, key: ShardKey) {
        if let Some(w) = self.workers.get_mut(id) {
            let held = (job.to_string(), key);
            if w.running.remove(&held) {
                self.limits.release(job);
            }
            w.acking.remove(&held);
        }
        self.reindex(id);
    }

    /// A worker's runs are gone with it: their room in the limits is free.
    fn lose(&mut self, slot: &WorkerSlot) {
        let running = slot.running.iter().map(|(job, _)| job);
        for job in running.chain(slot.stopping.keys().map(|(job, ..)| job)) {
            self.limits.release(job);
        }
    }

    /// Moves a run from the worker's own to its stopping runs (it keeps
    /// its slot until it ends) and says so; `awaits_ack`: it waits for
    /// `StartAck`, so its `Started` is its end.
    fn stop(&mut self, id: &str, run: (String, u64, ShardKey, u32), awaits_ack: bool) -> Command {
        if let Some(w) = self.workers.get_mut(id) {
            let held = (run.0.clone(), run.2);
            let was_held = w.running.remove(&held);
            w.acking.remove(&held);
            // The same run stopped before and not ended yet: the two are
            // one entry, and count once in the limits as in the load.
            let again = w.stopping.insert(run.clone(), awaits_ack).is_some();
            if was_held && again {
                self.limits.release(&run.0);
            }
        }
        self.reindex(id);
        let (job, incarnation, key, attempt) = run;
        Command::Stop {
            worker: id.to_string(),
            job,
            incarnation,
            key,
            attempt,
        }
    }

    /// A stopping run ended (its report, or `Unstarted`, came): its slot
    /// is free. Whether it was one.
    fn stopped(&mut self, id: &str, run: &(String, u64, ShardKey, u32)) -> bool {
        let ended = self
            .workers
            .get_mut(id)
            .is_some_and(|w| w.stopping.remove(run).is_some());
        if ended {
            self.limits.release(&run.0);
            self.reindex(id);
        }
        ended
    }

    /// Puts a run of the shard on `worker` and says so.
    fn place(
        &mut self,
        queues: &mut Queues,
        job_id: &str,
        job: &mut JobState,
        key: ShardKey,
        worker: String,
        now: Instant,
    ) -> Command {
        // A start waits for the master's acknowledgement when the shard is
        // in doubt (a retry, a suspect of a worker's death), and on a
        // worker that holds such a run: nothing may then start unseen
        // beside it, so that its worker's death is charged to it alone.
        let ack_first = job
            .shards
            .get(&key)
            .is_some_and(|s| s.suspect || s.attempt > 1)
            || self
                .workers
                .get(&worker)
                .is_some_and(|w| !w.acking.is_empty());
        self.hold(&worker, job_id, key, now);
        let mut waited = Duration::ZERO;
        let (tasks, attempt) = match job.shards.get_mut(&key) {
            Some(shard) => {
                if let Some(t) = shard.ready_at.take() {
                    waited = now.saturating_duration_since(t);
                }
                let run = Run {
                    worker: worker.clone(),
                    started: false,
                    ack_first,
                    revoking: false,
                    since: now,
                };
                match &mut shard.phase {
                    ShardPhase::Running { runs } => runs.push(run),
                    phase => *phase = ShardPhase::Running { runs: vec![run] },
                }
                queues.sync_age(job_id, key, shard);
                (shard.tasks.clone(), shard.attempt)
            }
            None => (Vec::new(), 0),
        };
        if let Some(w) = self.workers.get_mut(&worker) {
            if ack_first {
                w.acking.insert((job_id.to_string(), key));
            } else {
                w.unseen
                    .insert((job_id.to_string(), job.incarnation, key, attempt));
            }
        }
        Command::Assign {
            worker,
            job: job_id.to_string(),
            incarnation: job.incarnation,
            shard: PendingShard {
                key,
                tasks,
                attempt,
            },
            ack_first,
            priority: job.priority,
            waited,
        }
    }

    /// Whether `w` may be given a shard of job `name`: it runs the job,
    /// and, if it is a fallback worker, no regular worker does.
    fn may_run(&self, w: &WorkerSlot, name: &str) -> bool {
        w.jobs.contains(name) && (!w.fallback || !self.regulars.contains_key(name))
    }

    /// The least-loaded worker with a free slot that runs job `name`: a
    /// fallback worker only when no other can run it, and not `avoid` if
    /// another is free (never `avoid`, nor a fallback, if `must_avoid`).
    fn pick(&self, name: &str, avoid: Option<&str>, must_avoid: bool) -> Option<String> {
        let mut avoided = None;
        for (_, id) in &self.free {
            let Some(w) = self.workers.get(id) else {
                continue;
            };
            // Speculative copies (must_avoid) never go to a fallback worker:
            // a shard that ran too long may be what kills its workers.
            if !self.may_run(w, name) || (w.fallback && must_avoid) {
                continue;
            }
            if Some(id.as_str()) == avoid {
                avoided = Some(id.clone());
                continue;
            }
            return Some(id.clone());
        }
        if must_avoid {
            None
        } else {
            avoided
        }
    }
}

/// One copy of a shard on a worker.
#[derive(Debug)]
struct Run {
    worker: String,
    /// The worker's slot picked it up (its `Started` came).
    started: bool,
    /// Its start waits for `StartAck`.
    ack_first: bool,
    /// Told not to start ([`Command::Revoke`]): it moves once its worker
    /// says it did not, and stays if it did.
    revoking: bool,
    /// When it was assigned.
    since: Instant,
}

#[derive(Debug)]
enum ShardPhase {
    Pending,
    /// Sent to one worker, or to two when the first ran too long (a
    /// speculative copy); the first report wins.
    Running {
        runs: Vec<Run>,
    },
    Committing {
        worker: Option<String>,
    },
}

#[derive(Debug)]
struct ShardState {
    tasks: Vec<u64>,
    attempt: u32,
    phase: ShardPhase,
    /// A retry waiting out its backoff: when it is due (its entry in
    /// [`Queues::delayed`]). `None` once it is queued.
    not_before: Option<Instant>,
    /// Started runs of the current attempt lost with their worker.
    losses: u32,
    /// Deaths of workers that may have been running it unseen, with
    /// another run that may have been (see [`Scheduler::remove_worker`]):
    /// charged to it if it then kills a worker with its start
    /// acknowledged.
    doubts: u32,
    /// Its runs wait for `StartAck`: it was in doubt at a worker's death.
    suspect: bool,
    /// The worker whose attempt failed: another one is preferred.
    avoid: Option<String>,
    /// Its entry in [`Queues::aging`]: the start of its only run.
    aged: Option<Instant>,
    /// When it joined its job's queue (by the scheduler's clock), while
    /// it is there: its wait, once placed.
    ready_at: Option<Instant>,
}

/// Whether a run of the shard is being revoked ([`Command::Revoke`]).
fn revoking(jobs: &BTreeMap<String, JobState>, (job_id, key): &(String, ShardKey)) -> bool {
    jobs.get(job_id)
        .and_then(|j| j.shards.get(key))
        .is_some_and(|s| match &s.phase {
            ShardPhase::Running { runs } => runs.iter().any(|r| r.revoking),
            _ => false,
        })
}

/// First retry delay; doubled per attempt, capped, with ±50% jitter.
pub const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay.
pub const RETRY_CAP: Duration = Duration::from_secs(30);

/// The backoff before attempt `attempt` (2 for the first retry) of a shard,
/// with a jitter derived from its identity (deterministic for tests, spread
/// across shards so that retries do not come back in lockstep).
pub fn retry_delay(job: &str, key: ShardKey, attempt: u32) -> Duration {
    use std::hash::{Hash, Hasher};
    let exp = attempt.saturating_sub(2).min(16);
    let base = RETRY_BASE.saturating_mul(1 << exp).min(RETRY_CAP);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (job, key, attempt).hash(&mut h);
    let jitter = 0.5 + (h.finish() % 1000) as f64 / 1000.0;
    base.mul_f64(jitter)
}

#[derive(Debug)]
struct JobState {
    incarnation: u64,
    name: String,
    /// Its level in [`Queues::ready`].
    priority: u8,
    /// Its fairness key at that level.
    fairness: String,
    max_attempts: u32,
    /// A run older than this gets a copy on another worker.
    shard_timeout: Option<Duration>,
    /// Moving average of how long this job's shards take (assignment to report).
    typical: Option<Duration>,
    counters: Counters,
    shards: BTreeMap<ShardKey, ShardState>,
    /// Its shards ready to run, in order.
    queue: VecDeque<ShardKey>,
    /// It has an entry in [`Queues::ready`].
    in_ready: bool,
    /// Its shards wait for this time before they are queued (its entry in
    /// [`Queues::timed`]).
    not_before: Option<Instant>,
    /// It waits on a limit: out of [`Queues::ready`] until the limit
    /// wakes it.
    throttled: bool,
}

impl JobState {
    /// How long a run may take before it gets a copy: the job's shard
    /// timeout, or 4x its typical shard time and at least a second.
    fn limit(&self) -> Option<Duration> {
        self.shard_timeout
            .or(self.typical.map(|t| (t * 4).max(Duration::from_secs(1))))
    }
}

/// What waits, and in which order.
#[derive(Debug, Default)]
struct Queues {
    /// Per priority, the jobs with shards ready to run, taking turns by
    /// fairness key. An id may be stale (a forgotten job, or another job
    /// of its id at another level or key): it is dropped when its turn
    /// comes.
    ready: [fair::Level; LEVELS],
    /// The fairness keys' weights, where not 1.
    weights: HashMap<String, u32>,
    /// Shards in the jobs' queues.
    queued: usize,
    /// Of those, per priority.
    queued_at: [usize; LEVELS],
    /// Per priority, the shards placed from the levels above since the
    /// level last had one, while it had shards waiting ([`SHARE_EVERY`]).
    passed_over: [u32; LEVELS],
    /// Runs revoked to make room for a higher shard, while they are
    /// revoking (kept lazily: an entry whose run no longer revokes is
    /// dropped when next looked at).
    preempted: BTreeSet<(String, ShardKey)>,
    /// Retries waiting out their backoff, by when they are due.
    delayed: BTreeSet<(Instant, String, ShardKey)>,
    /// Delayed jobs, by when their shards may be queued.
    timed: BTreeSet<(Instant, String)>,
    /// The latest time the scheduler was given: when a shard joins a
    /// queue (between calls, a call's `now` is close enough).
    clock: Option<Instant>,
    /// Shards running on exactly one worker, by when that run was placed:
    /// the candidates for a speculative copy, oldest first.
    aging: BTreeSet<(Instant, String, ShardKey)>,
}

impl Queues {
    /// Queues a shard of a job (first in its job's queue if `front`).
    fn push(&mut self, job_id: &str, job: &mut JobState, key: ShardKey, front: bool) {
        if let Some(shard) = job.shards.get_mut(&key) {
            shard.ready_at = self.clock;
        }
        if front {
            job.queue.push_front(key);
        } else {
            job.queue.push_back(key);
        }
        self.queued += 1;
        self.queued_at[level(job.priority)] += 1;
        if !job.in_ready && !job.throttled {
            job.in_ready = true;
            let weight = self.weights.get(&job.fairness).copied().unwrap_or(1);
            self.ready[level(job.priority)].push(&job.fairness, weight, job_id.to_string());
        }
    }

    /// A job a limit held back takes its turns again, if it has shards
    /// queued.
    fn rejoin(&mut self, job_id: &str, job: &mut JobState) {
        job.throttled = false;
        if !job.in_ready && !job.queue.is_empty() {
            job.in_ready = true;
            let weight = self.weights.get(&job.fairness).copied().unwrap_or(1);
            self.ready[level(job.priority)].push(&job.fairness, weight, job_id.to_string());
        }
    }

    /// A shard left `job`'s queue.
    fn took(&mut self, job: &JobState, n: usize) {
        self.queued -= n;
        self.queued_at[level(job.priority)] -= n;
    }

    /// The level whose turn is next, of those not `blocked` with jobs
    /// waiting: the highest, unless one below has been passed over
    /// [`SHARE_EVERY`] - 1 times (the highest of those, then).
    fn next_level(&self, blocked: &[bool; LEVELS]) -> Option<usize> {
        let open = |l: &usize| !blocked[*l] && self.ready[*l].has_turn();
        let top = (0..LEVELS).rev().find(open)?;
        let due = (0..top)
            .rev()
            .filter(open)
            .find(|l| self.passed_over[*l] + 1 >= SHARE_EVERY);
        Some(due.unwrap_or(top))
    }

    /// A shard of level `served` was placed: the levels below it that
    /// wait were passed over once more; it was not.
    fn served(&mut self, served: usize) {
        self.passed_over[served] = 0;
        for l in 0..served {
            if self.ready[l].is_empty() {
                self.passed_over[l] = 0;
            } else {
                self.passed_over[l] += 1;
            }
        }
    }

    /// Keeps `aging` true to the shard's runs: call after changing them.
    fn sync_age(&mut self, job_id: &str, key: ShardKey, shard: &mut ShardState) {
        let want = match &shard.phase {
            ShardPhase::Running { runs } if runs.len() == 1 => Some(runs[0].since),
            _ => None,
        };
        if shard.aged == want {
            return;
        }
        if let Some(t) = shard.aged.take() {
            self.aging.remove(&(t, job_id.to_string(), key));
        }
        if let Some(t) = want {
            self.aging.insert((t, job_id.to_string(), key));
            shard.aged = Some(t);
        }
    }

    /// Takes a shard that leaves the scheduler out of the indexes.
    fn forget(&mut self, job_id: &str, key: ShardKey, shard: &mut ShardState) {
        if let Some(t) = shard.aged.take() {
            self.aging.remove(&(t, job_id.to_string(), key));
        }
        if let Some(t) = shard.not_before.take() {
            self.delayed.remove(&(t, job_id.to_string(), key));
        }
    }
}

/// The level of a priority ([`MAX_PRIORITY`] for any above it).
fn level(priority: u8) -> usize {
    usize::from(priority.min(MAX_PRIORITY))
}

/// One final failure per task of a shard whose workers died running it.
fn lost_failures(tasks: &[u64], attempt: u32, error: &str) -> Vec<TaskFailure> {
    tasks
        .iter()
        .map(|&index| TaskFailure {
            index,
            error: error.to_string(),
            attempt,
            retryable: false,
        })
        .collect()
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct Scheduler {
    /// Runs found in doubt at a worker's death, since the start.
    in_doubt: u64,
    pool: Pool,
    jobs: BTreeMap<String, JobState>,
    queues: Queues,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// A worker is registered and connected; it may hold `capacity` shards
    /// at once. A `fallback` worker gets shards only when no other worker
    /// can run their job.
    pub fn add_worker(
        &mut self,
        id: &str,
        capacity: u32,
        jobs: impl IntoIterator<Item = String>,
        fallback: bool,
    ) -> Vec<Command> {
        let slot = WorkerSlot {
            capacity: capacity.max(1),
            fallback,
            jobs: jobs.into_iter().collect(),
            running: BTreeSet::new(),
            acking: BTreeSet::new(),
            unseen: BTreeSet::new(),
            stopping: BTreeMap::new(),
            promised: BTreeSet::new(),
            indexed: None,
            run_time: None,
        };
        let mut out = Vec::new();
        // Re-registration: whatever it ran before is lost.
        if let Some(old) = self.pool.take(id) {
            self.pool.lose(&old);
            self.requeue_lost(id, old, &mut out);
        }
        self.pool.count_regular(&slot, true);
        self.pool.workers.insert(id.to_string(), slot);
        self.pool.reindex(id);
        out
    }

    /// A worker is gone (znode deleted or link lost). Its started shards
    /// go back to the queue with one attempt used (shards out of attempts
    /// are committed as failed), the others without.
    ///
    /// Unless a run it was sent to start without waiting has not said
    /// `Started`: any of its runs may then have been what killed it (one
    /// whose report was lost, or one that started unseen after it). None is
    /// charged; each that may have run is a suspect from then on, its runs
    /// waiting for `StartAck`, and one that then kills a worker is charged
    /// for the deaths it was in doubt for as well. A task that kills its
    /// worker thus uses up one attempt per death, and the shards beside it
    /// none.
    pub fn remove_worker(&mut self, id: &str) -> Vec<Command> {
        let mut out = Vec::new();
        if let Some(slot) = self.pool.take(id) {
            self.pool.lose(&slot);
            self.requeue_lost(id, slot, &mut out);
        }
        out
    }

    fn requeue_lost(&mut self, worker: &str, slot: WorkerSlot, out: &mut Vec<Command>) {
        let in_doubt = !slot.unseen.is_empty();
        if in_doubt {
            // Runs it was sent that are no longer its own (moved, or
            // committed by a copy) but that it may have run.
            for (job_id, incarnation, key, _) in &slot.unseen {
                let held = (job_id.clone(), *key);
                if slot.running.contains(&held) {
                    continue;
                }
                if let Some(shard) = self
                    .jobs
                    .get_mut(job_id)
                    .filter(|j| j.incarnation == *incarnation)
                    .and_then(|j| j.shards.get_mut(key))
                {
                    if !matches!(shard.phase, ShardPhase::Committing { .. }) {
                        shard.doubts += 1;
                        shard.suspect = true;
                    }
                }
            }
        }
        for (job_id, key) in slot.running {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let max = job.max_attempts;
            let Some(shard) = job.shards.get_mut(&key) else {
                continue;
            };
            let ShardPhase::Running { runs } = &mut shard.phase else {
                continue;
            };
            let Some(pos) = runs.iter().position(|r| r.worker == worker) else {
                continue;
            };
            let run = runs.remove(pos);
            if in_doubt && (run.started || !run.ack_first) {
                self.in_doubt += 1;
                shard.doubts += 1;
                shard.suspect = true;
            } else if run.started {
                // Every started run that dies counts, even while a copy
                // carries on: a task that kills its workers must not kill
                // two per attempt.
                shard.losses += 1 + std::mem::take(&mut shard.doubts);
            }
            if !runs.is_empty() {
                self.queues.sync_age(&job_id, key, shard);
                continue;
            }
            let used = shard.attempt + shard.losses.saturating_sub(1);
            let requeue = if shard.losses == 0 {
                // Not started, or in doubt: not charged.
                shard.phase = ShardPhase::Pending;
                true
            } else if used >= max {
                shard.phase = ShardPhase::Committing { worker: None };
                let error =
                    format!("worker {worker} was lost while running this task (attempt {used})");
                let failures = lost_failures(&shard.tasks, used, &error);
                out.push(Command::CommitLost {
                    job: job_id.clone(),
                    key,
                    attempt: used,
                    failures,
                });
                false
            } else {
                shard.attempt = used + 1;
                shard.losses = 0;
                shard.phase = ShardPhase::Pending;
                out.push(Command::RecordLoss {
                    job: job_id.clone(),
                    key,
                    next_attempt: shard.attempt,
                });
                true
            };
            self.queues.sync_age(&job_id, key, shard);
            if requeue {
                self.queues.push(&job_id, job, key, true);
            }
        }
    }

    /// A worker is leaving gracefully: it gets nothing new, and the shards
    /// it holds but has not started go back to the queue without using an
    /// attempt. Its started shards stay its own until reported.
    pub fn drain_worker(&mut self, id: &str) {
        let Some(w) = self.pool.workers.get(id) else {
            return;
        };
        let held: Vec<(String, ShardKey)> = w.running.iter().cloned().collect();
        if let Some(mut slot) = self.pool.take(id) {
            slot.capacity = 0;
            // `Draining` follows the `Started` of every run it took, and it
            // drops what waited in its queue: nothing more starts unseen,
            // and a stopping run it did not start (one that waits for
            // `StartAck`, or whose `Started` has not come) ends here: no
            // word of it will come.
            let dropped: Vec<_> = slot
                .stopping
                .iter()
                .filter(|(run, awaits_ack)| **awaits_ack || slot.unseen.contains(*run))
                .map(|(run, _)| run.clone())
                .collect();
            for run in dropped {
                slot.stopping.remove(&run);
                self.pool.limits.release(&run.0);
            }
            slot.unseen.clear();
            self.pool.workers.insert(id.to_string(), slot);
        }
        for (job_id, key) in held {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let Some(shard) = job.shards.get_mut(&key) else {
                continue;
            };
            let ShardPhase::Running { runs } = &mut shard.phase else {
                continue;
            };
            let Some(pos) = runs.iter().position(|r| r.worker == id && !r.started) else {
                continue;
            };
            runs.remove(pos);
            let requeue = runs.is_empty();
            if requeue {
                shard.phase = ShardPhase::Pending;
            }
            self.queues.sync_age(&job_id, key, shard);
            self.pool.release(id, &job_id, key);
            if requeue {
                self.queues.push(&job_id, job, key, true);
            }
        }
        self.pool.reindex(id);
    }

    /// Adds a job; its pending shards take turns with other jobs'. A job
    /// with nothing pending finishes at once.
    pub fn add_job(&mut self, plan: JobPlan) -> Vec<Command> {
        let max_attempts = plan.max_attempts.max(1);
        let mut out = Vec::new();
        // Another job of its id (an earlier incarnation) leaves first.
        if let Some(old) = self.jobs.remove(&plan.id) {
            self.unindex_job(&plan.id, old, &mut out);
        }
        let mut job = JobState {
            incarnation: plan.incarnation,
            name: plan.name,
            max_attempts,
            shard_timeout: plan.shard_timeout,
            typical: None,
            counters: plan.counters,
            shards: BTreeMap::new(),
            queue: VecDeque::new(),
            in_ready: false,
            priority: plan.priority.min(MAX_PRIORITY),
            fairness: plan.fairness,
            not_before: plan.not_before,
            throttled: false,
        };
        self.pool.limits.add_job(&plan.id, &plan.under);
        if let Some(t) = job.not_before {
            self.queues.timed.insert((t, plan.id.clone()));
        }
        for p in plan.pending {
            let attempt = p.attempt.max(1);
            let phase = if attempt > max_attempts {
                // Recovered with its attempts used up by lost workers.
                let error = format!(
                    "workers were lost while running this task ({} attempts)",
                    attempt - 1
                );
                let failures = lost_failures(&p.tasks, attempt - 1, &error);
                out.push(Command::CommitLost {
                    job: plan.id.clone(),
                    key: p.key,
                    attempt: attempt - 1,
                    failures,
                });
                ShardPhase::Committing { worker: None }
            } else {
                ShardPhase::Pending
            };
            let queued = matches!(phase, ShardPhase::Pending) && job.not_before.is_none();
            job.shards.insert(
                p.key,
                ShardState {
                    tasks: p.tasks,
                    attempt,
                    phase,
                    not_before: None,
                    avoid: None,
                    losses: 0,
                    doubts: 0,
                    suspect: false,
                    aged: None,
                    ready_at: None,
                },
            );
            if queued {
                self.queues.push(&plan.id, &mut job, p.key, false);
            }
        }
        let empty = job.shards.is_empty();
        self.jobs.insert(plan.id.clone(), job);
        if empty {
            out.push(Command::Finish { job: plan.id });
        }
        out
    }

    /// Takes what is left of a job out of the queues and off its workers:
    /// its runs are stopped.
    fn unindex_job(&mut self, id: &str, mut job: JobState, out: &mut Vec<Command>) {
        self.queues.took(&job, job.queue.len());
        if let Some(t) = job.not_before.take() {
            self.queues.timed.remove(&(t, id.to_string()));
        }
        self.pool.limits.remove_job(id);
        for (key, shard) in &mut job.shards {
            self.queues.forget(id, *key, shard);
            if let ShardPhase::Running { runs } = &shard.phase {
                for r in runs {
                    let run = (id.to_string(), job.incarnation, *key, shard.attempt);
                    out.push(self.pool.stop(&r.worker, run, r.ack_first && !r.started));
                }
            }
        }
    }

    /// Forgets a job (finished or cancelled): its runs are stopped (the
    /// commands say where), and their reports will count for nothing.
    pub fn remove_job(&mut self, id: &str) -> Vec<Command> {
        let mut out = Vec::new();
        if let Some(job) = self.jobs.remove(id) {
            self.unindex_job(id, job, &mut out);
        }
        out
    }

    /// Hands ready shards to workers with free capacity, least loaded
    /// first; jobs take turns, one shard each.
    pub fn assign(&mut self, now: Instant) -> Vec<Command> {
        self.tick(now);
        // Delayed jobs whose time has come join the queues, shards in order.
        while let Some((due, job_id)) = self.queues.timed.first().cloned() {
            if due > now {
                break;
            }
            self.queues.timed.remove(&(due, job_id.clone()));
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            job.not_before = None;
            let pending: Vec<ShardKey> = job
                .shards
                .iter()
                .filter(|(_, s)| matches!(s.phase, ShardPhase::Pending) && s.not_before.is_none())
                .map(|(k, _)| *k)
                .collect();
            for key in pending {
                self.queues.push(&job_id, job, key, false);
            }
        }
        // Jobs a limit held back that it admits again take their turns.
        for job_id in self.pool.limits.take_woken(now) {
            if let Some(job) = self.jobs.get_mut(&job_id) {
                self.queues.rejoin(&job_id, job);
            }
        }
        // Retries whose backoff is over join their job's queue.
        while let Some((due, job_id, key)) = self.queues.delayed.first().cloned() {
            if due > now {
                break;
            }
            self.queues.delayed.remove(&(due, job_id.clone(), key));
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let Some(shard) = job.shards.get_mut(&key) else {
                continue;
            };
            shard.not_before = None;
            if matches!(shard.phase, ShardPhase::Pending) {
                self.queues.push(&job_id, job, key, false);
            }
        }
        let mut out = Vec::new();
        // Job names no free worker runs, in this call (free slots only shrink).
        let mut no_worker_for: HashSet<String> = HashSet::new();
        // Per level and key: its jobs' turns that placed nothing since it
        // last placed a shard (once every job of a key has had one, the
        // key can place nothing more in this call: it is parked), and the
        // levels with no key left to take a turn.
        let mut idle_turns: HashMap<(usize, fair::KeyId), usize> = HashMap::new();
        let mut blocked = [false; LEVELS];
        // The job names whose shards found no free worker, with the
        // highest level that did: they may preempt lower runs.
        let mut waiting: BTreeMap<String, usize> = BTreeMap::new();
        while !self.pool.free.is_empty() {
            let Some(l) = self.queues.next_level(&blocked) else {
                break;
            };
            let Some((fkey, job_id)) = self.queues.ready[l].take_turn() else {
                blocked[l] = true;
                continue;
            };
            let turns = &self.queues.ready[l];
            let Some(job) = self
                .jobs
                .get_mut(&job_id)
                .filter(|j| level(j.priority) == l && j.fairness == turns.name(fkey))
            else {
                // A forgotten job's stale turn.
                self.queues.ready[l].end_turn(fkey, None, false, false);
                continue;
            };
            if self.pool.limits.limits_job(&job_id) {
                if let Err(limit) = self.pool.limits.admits(&job_id, now) {
                    // Full: it waits on the limit, out of the turns.
                    self.pool.limits.wait(&job_id, &limit, job.priority);
                    job.in_ready = false;
                    job.throttled = true;
                    self.queues.ready[l].end_turn(fkey, None, false, false);
                    continue;
                }
            }
            let key = loop {
                let Some(key) = job.queue.pop_front() else {
                    break None;
                };
                self.queues.took(job, 1);
                if job
                    .shards
                    .get(&key)
                    .is_some_and(|s| matches!(s.phase, ShardPhase::Pending))
                {
                    break Some(key);
                }
            };
            let Some(key) = key else {
                job.in_ready = false;
                self.queues.ready[l].end_turn(fkey, None, false, false);
                continue;
            };
            let wid = if no_worker_for.contains(&job.name) {
                None
            } else {
                let avoid = job.shards.get(&key).and_then(|s| s.avoid.as_deref());
                self.pool.pick(&job.name, avoid, false)
            };
            let (served, park) = match wid {
                Some(wid) => {
                    if !idle_turns.is_empty() {
                        idle_turns.remove(&(l, fkey));
                    }
                    out.push(
                        self.pool
                            .place(&mut self.queues, &job_id, job, key, wid, now),
                    );
                    self.queues.served(l);
                    (true, false)
                }
                None => {
                    // Nobody can take this job now: don't ask again for its other shards.
                    no_worker_for.insert(job.name.clone());
                    let at = waiting.entry(job.name.clone()).or_insert(l);
                    *at = (*at).max(l);
                    job.queue.push_front(key);
                    self.queues.queued += 1;
                    self.queues.queued_at[l] += 1;
                    let idle = idle_turns.entry((l, fkey)).or_default();
                    *idle += 1;
                    (false, *idle > self.queues.ready[l].jobs_of(fkey))
                }
            };
            let again = match job.queue.is_empty() {
                true => {
                    job.in_ready = false;
                    None
                }
                false => Some(job_id),
            };
            self.queues.ready[l].end_turn(fkey, again, served, park);
        }
        for ready in &mut self.queues.ready {
            ready.unpark();
        }
        if self.pool.free.is_empty() && self.may_preempt() {
            // Every worker full: the first jobs of the highest level that
            // waits wait too (its keys', one each, a few).
            let top = (1..LEVELS)
                .rev()
                .find(|&l| !self.queues.ready[l].is_empty());
            if let Some(l) = top {
                for job_id in self.queues.ready[l].first_jobs(4, 1) {
                    if let Some(job) = self.jobs.get(job_id).filter(|j| level(j.priority) == l) {
                        let at = waiting.entry(job.name.clone()).or_insert(l);
                        *at = (*at).max(l);
                    }
                }
            }
        }
        self.preempt(&waiting, &mut out);
        #[cfg(test)]
        self.check_work_conserving();
        if self.queues.queued == 0 {
            self.steal(&mut out);
        }
        out
    }

    /// Shards of the jobs in `waiting` (by name, with their highest
    /// level) found every worker that runs them full: a lower run waiting
    /// in one of those workers' queues (not started, not revoking) is
    /// revoked for each, while the runs revoked so outnumber none of the
    /// shards waiting at that level and above. Its worker's room goes to
    /// the highest shard once the run is dropped ([`Scheduler::unstarted`]);
    /// a run that started meanwhile runs on. The walk is bounded as a
    /// steal's ([`STEAL_WALK`] workers each).
    fn preempt(&mut self, waiting: &BTreeMap<String, usize>, out: &mut Vec<Command>) {
        if waiting.values().all(|&l| l == 0) || !self.may_preempt() {
            return;
        }
        let mut by_level: Vec<(usize, &String)> =
            waiting.iter().map(|(name, l)| (*l, name)).collect();
        by_level.sort_unstable_by(|a, b| b.cmp(a));
        for (l, name) in by_level {
            let above: usize = self.queues.queued_at[l..].iter().sum();
            let room = above.min(PREEMPTING);
            if l == 0 || self.queues.preempted.len() >= room {
                continue;
            }
            let found = self
                .pool
                .backlogged
                .iter()
                .take(STEAL_WALK)
                .filter(|id| {
                    let w = self.pool.workers.get(*id);
                    w.is_some_and(|w| self.pool.may_run(w, name))
                })
                .find_map(|id| {
                    let run = self.queued_run(id, |job| level(job.priority) < l)?;
                    Some((id.clone(), run))
                });
            let Some((worker, (job_id, key))) = found else {
                continue;
            };
            if let Some(revoke) = self.revoke(worker, &job_id, key) {
                out.push(revoke);
                self.queues.preempted.insert((job_id, key));
            }
        }
    }

    /// A run waiting in `worker`'s queue that may move, of a job `fits`
    /// takes: its shard's only run, not started, not revoking. A job's
    /// shards go out in key order, so the highest held key, the likeliest
    /// still queued, is looked at first.
    fn queued_run(
        &self,
        worker: &str,
        fits: impl Fn(&JobState) -> bool,
    ) -> Option<(String, ShardKey)> {
        let held = &self.pool.workers.get(worker)?.running;
        held.iter().rev().find_map(|(job_id, key)| {
            let job = self.jobs.get(job_id)?;
            let shard = job.shards.get(key)?;
            match &shard.phase {
                ShardPhase::Running { runs }
                    if runs.len() == 1 && !runs[0].started && !runs[0].revoking && fits(job) =>
                {
                    Some((job_id.clone(), *key))
                }
                _ => None,
            }
        })
    }

    /// Tells `worker` not to start its run of the shard ([`Command::Revoke`]):
    /// the run is revoking until the worker says it dropped it or started it.
    fn revoke(&mut self, worker: String, job_id: &str, key: ShardKey) -> Option<Command> {
        let job = self.jobs.get_mut(job_id)?;
        let incarnation = job.incarnation;
        let shard = job.shards.get_mut(&key)?;
        if let ShardPhase::Running { runs } = &mut shard.phase {
            runs[0].revoking = true;
        }
        Some(Command::Revoke {
            worker,
            job: job_id.to_string(),
            incarnation,
            key,
            attempt: shard.attempt,
        })
    }

    /// Whether a lower run may be revoked for a higher shard now: some
    /// worker holds runs in its queue, and fewer than [`PREEMPTING`] are
    /// revoking for that already (those that no longer are, answered or
    /// gone, are dropped from the count here: a walk of at most that many).
    fn may_preempt(&mut self) -> bool {
        if self.pool.backlogged.is_empty() {
            return false;
        }
        let jobs = &self.jobs;
        self.queues.preempted.retain(|p| revoking(jobs, p));
        self.queues.preempted.len() < PREEMPTING
    }

    /// Nothing waits in the jobs' queues: a run waiting in a worker's
    /// queue (held beyond its slots, not started) is revoked
    /// ([`Command::Revoke`]) while a worker's slot that could run it stands
    /// idle. It moves once its worker says it dropped it
    /// ([`Scheduler::unstarted`]), and stays if the worker started it
    /// meanwhile: a run never runs on two workers for this.
    fn steal(&mut self, out: &mut Vec<Command>) {
        if self.pool.backlogged.is_empty() {
            return;
        }
        // The least loaded first: a walk of a bounded number of them, not
        // of every worker with room in its queue (when none is idle, that
        // was the whole free index).
        let idle: Vec<String> = self
            .pool
            .free
            .iter()
            .take(4 * STEAL_WALK)
            .filter(|(load, id)| {
                self.pool
                    .workers
                    .get(id)
                    .is_some_and(|w| (*load as u32) < w.capacity)
            })
            .take(STEAL_WALK)
            .map(|(_, id)| id.clone())
            .collect();
        for to in idle {
            let Some(w) = self.pool.workers.get(&to) else {
                continue;
            };
            // Its idle slots less the runs already revoked for them.
            let awaited = w
                .promised
                .iter()
                .filter(|p| revoking(&self.jobs, p))
                .count();
            if awaited + w.load() >= w.capacity as usize {
                continue;
            }
            let found = self
                .pool
                .backlogged
                .iter()
                .filter(|from| **from != to)
                .take(STEAL_WALK)
                .find_map(|from| {
                    let run = self.queued_run(from, |job| self.pool.may_run(w, &job.name))?;
                    Some((from.clone(), run))
                });
            let Some((from, (job_id, key))) = found else {
                continue;
            };
            let Some(revoke) = self.revoke(from, &job_id, key) else {
                continue;
            };
            out.push(revoke);
            let jobs = &self.jobs;
            if let Some(w) = self.pool.workers.get_mut(&to) {
                w.promised.retain(|p| revoking(jobs, p));
                w.promised.insert((job_id, key));
            }
        }
    }

    /// Shards whose only run is older than their job's limit (its shard
    /// timeout, or 4x its typical shard time and at least a second) get a
    /// copy on another worker; whichever reports first is committed. Walks
    /// only the runs older than the shortest limit of any job.
    pub fn speculate(&mut self, now: Instant) -> Vec<Command> {
        let Some(shortest) = self.jobs.values().filter_map(JobState::limit).min() else {
            return Vec::new();
        };
        let mut wanted = Vec::new();
        for (since, job_id, key) in &self.queues.aging {
            let age = now.saturating_duration_since(*since);
            if age <= shortest {
                break;
            }
            if self
                .jobs
                .get(job_id)
                .and_then(JobState::limit)
                .is_some_and(|limit| age > limit)
            {
                wanted.push((job_id.clone(), *key));
            }
        }
        let mut out = Vec::new();
        for (job_id, key) in wanted {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let busy_on = match job.shards.get(&key).map(|s| &s.phase) {
                Some(ShardPhase::Running { runs }) if runs.len() == 1 => runs[0].worker.clone(),
                _ => continue,
            };
            // A copy is one more run: only within the job's limits.
            let limited = self.pool.limits.limits_job(&job_id);
            if limited && self.pool.limits.admits(&job_id, now).is_err() {
                continue;
            }
            if let Some(wid) = self.pool.pick(&job.name, Some(&busy_on), true) {
                out.push(
                    self.pool
                        .place(&mut self.queues, &job_id, job, key, wid, now),
                );
            }
        }
        out
    }

    /// When the earliest retry waiting out its backoff, or delayed job
    /// waiting for its time, after `now` becomes due.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        let retry = self
            .queues
            .delayed
            .iter()
            .map(|(due, ..)| *due)
            .find(|due| *due > now);
        let timed = self.queues.timed.first().map(|(due, _)| *due);
        let limited = self.pool.limits.next_due();
        retry.into_iter().chain(timed).chain(limited).min()
    }

    /// A fairness key's weight (1 unless set).
    pub fn weight_of(&self, key: &str) -> u32 {
        self.queues.weights.get(key).copied().unwrap_or(1)
    }

    /// The scheduler's clock moves to `now` (it never goes back): what
    /// joins a queue from now on waits from then.
    pub fn tick(&mut self, now: Instant) {
        let clock = self.queues.clock.map_or(now, |t| t.max(now));
        self.queues.clock = Some(clock);
    }

    /// The job whose first queued shard has waited longest (delayed jobs
    /// not yet due do not wait; those a limit holds back do), with when
    /// that shard joined the queue. Walks the jobs.
    pub fn oldest_waiting(&self) -> Option<(&str, Instant)> {
        self.jobs
            .iter()
            .filter_map(|(id, j)| {
                let key = j.queue.front()?;
                Some((id.as_str(), j.shards.get(key)?.ready_at?))
            })
            .min_by_key(|(_, t)| *t)
    }

    /// Sets (`Some`) or removes limit `key` at `now`: the jobs under it
    /// are placed only while it admits one more run. A new limit's bucket
    /// starts empty. Jobs it no longer holds back take their turns again.
    pub fn set_limit(&mut self, key: &str, limit: Option<Limit>, now: Instant) {
        self.pool.limits.set(key, limit, now);
    }

    /// Every limit set or named by a job: its use, and the shards of the
    /// jobs waiting on it. Walks those jobs.
    pub fn limits(&self) -> Vec<(String, LimitUsage, u64)> {
        self.pool
            .limits
            .usage()
            .into_iter()
            .map(|(key, usage)| {
                let shards = self
                    .pool
                    .limits
                    .waiting_on(&key)
                    .filter_map(|job| self.jobs.get(job))
                    .map(|j| j.queue.len() as u64)
                    .sum();
                (key, usage, shards)
            })
            .collect()
    }

    /// The limit a job waits on, if a limit holds it back.
    pub fn throttled_by(&self, job_id: &str) -> Option<&str> {
        self.pool.limits.waits(job_id)
    }

    /// When a delayed job's shards may be queued, while they wait.
    pub fn not_before(&self, job_id: &str) -> Option<Instant> {
        self.jobs.get(job_id)?.not_before
    }

    /// Delayed jobs waiting for their time, and the earliest time.
    pub fn timed(&self) -> (usize, Option<Instant>) {
        let t = &self.queues.timed;
        (t.len(), t.first().map(|(due, _)| *due))
    }

    /// A worker's slot picked up a shard: from now on, losing the worker
    /// uses up an attempt of the shard's tasks (one of them may be what
    /// killed it). Shards lost before they started are requeued for free.
    /// Says what to answer: a run sent to wait for `StartAck` gets it only
    /// if the worker still holds that run of the shard (not committed by
    /// another copy, cancelled, or reassigned), else `StartRefused`; a run
    /// that did not wait is already running, and gets nothing. A stopping
    /// run that waited is refused, and that is its end.
    pub fn started(
        &mut self,
        worker: &str,
        (job_id, incarnation): (&str, u64),
        key: ShardKey,
        attempt: u32,
        now: Instant,
    ) -> StartAnswer {
        let run = (job_id.to_string(), incarnation, key, attempt);
        let waited = !self
            .pool
            .workers
            .get_mut(worker)
            .is_some_and(|w| w.unseen.remove(&run));
        let stopping = self
            .pool
            .workers
            .get(worker)
            .and_then(|w| w.stopping.get(&run).copied());
        match stopping {
            Some(true) => {
                self.pool.stopped(worker, &run);
                return StartAnswer::Refuse;
            }
            Some(false) => return StartAnswer::Nothing,
            None => {}
        }
        let ours = self.incarnation_of(job_id) == Some(incarnation)
            && self.start(worker, job_id, key, attempt, now);
        match (waited, ours) {
            (false, _) => StartAnswer::Nothing,
            (true, true) => StartAnswer::Ack,
            (true, false) => StartAnswer::Refuse,
        }
    }

    fn start(
        &mut self,
        worker: &str,
        job_id: &str,
        key: ShardKey,
        attempt: u32,
        now: Instant,
    ) -> bool {
        let Some(shard) = self
            .jobs
            .get_mut(job_id)
            .and_then(|j| j.shards.get_mut(&key))
            .filter(|shard| shard.attempt == attempt)
        else {
            return false;
        };
        let ShardPhase::Running { runs } = &mut shard.phase else {
            return false;
        };
        let Some(pos) = runs.iter().position(|r| r.worker == worker) else {
            // Not (or no longer) this worker's run: it must not start, or
            // its crash would cost nothing and its report count for nothing.
            return false;
        };
        if runs[pos].revoking && runs[pos].ack_first {
            // It waits for an answer, and the revocation drops it at the
            // worker: it moves.
            self.move_revoked(worker, job_id, key);
            return false;
        }
        match runs.get_mut(pos) {
            Some(run) => {
                // Its age (for a speculative copy, and the job's typical
                // shard time) counts from here, not from its wait in the
                // worker's queue.
                run.revoking = false;
                if !run.started {
                    run.started = true;
                    run.since = now;
                    self.queues.sync_age(job_id, key, shard);
                }
                true
            }
            None => false,
        }
    }

    /// A worker dropped a run it was told not to run ([`Command::Revoke`])
    /// before it started: it cannot be running unseen, and the shard goes
    /// back to the front of its job's queue. A stopping run
    /// ([`Command::Stop`]) that did so frees its slot.
    pub fn unstarted(
        &mut self,
        worker: &str,
        (job_id, incarnation): (&str, u64),
        key: ShardKey,
        attempt: u32,
    ) {
        let run = (job_id.to_string(), incarnation, key, attempt);
        if let Some(w) = self.pool.workers.get_mut(worker) {
            w.unseen.remove(&run);
        }
        if self.pool.stopped(worker, &run) {
            return;
        }
        let revoked = self
            .jobs
            .get(job_id)
            .filter(|j| j.incarnation == incarnation)
            .and_then(|j| j.shards.get(&key))
            .filter(|s| s.attempt == attempt)
            .is_some_and(|s| match &s.phase {
                ShardPhase::Running { runs } => runs
                    .iter()
                    .any(|r| r.worker == worker && r.revoking && !r.started),
                _ => false,
            });
        if revoked {
            self.move_revoked(worker, job_id, key);
        }
    }

    /// Takes a revoked run off its worker; its shard waits at the front of
    /// its job's queue for the next `assign`.
    fn move_revoked(&mut self, worker: &str, job_id: &str, key: ShardKey) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        let Some(shard) = job.shards.get_mut(&key) else {
            return;
        };
        if let ShardPhase::Running { runs } = &mut shard.phase {
            runs.retain(|r| r.worker != worker);
            if runs.is_empty() {
                shard.phase = ShardPhase::Pending;
            }
        }
        let requeue = matches!(shard.phase, ShardPhase::Pending);
        self.queues.sync_age(job_id, key, shard);
        self.pool.release(worker, job_id, key);
        if requeue {
            self.queues.push(job_id, job, key, true);
        }
    }

    /// Checks a report's failures against the shard's tasks: each index one
    /// of its tasks, none twice. A report that fails this is impossible
    /// from an honest worker.
    pub fn check_failures(
        &self,
        job_id: &str,
        key: ShardKey,
        failures: &[TaskFailure],
    ) -> Result<(), String> {
        let Some(tasks) = self.shard_tasks(job_id, key) else {
            return Ok(());
        };
        let mut seen = std::collections::HashSet::with_capacity(failures.len());
        for f in failures {
            if !tasks.contains(&f.index) {
                return Err(format!(
                    "shard {key} of job {job_id} has no task {}",
                    f.index
                ));
            }
            if !seen.insert(f.index) {
                return Err(format!(
                    "task {} of job {job_id} failed twice in one report",
                    f.index
                ));
            }
        }
        Ok(())
    }

    /// The task indexes of a shard the scheduler still tracks.
    pub fn shard_tasks(&self, job_id: &str, key: ShardKey) -> Option<&[u64]> {
        self.jobs
            .get(job_id)
            .and_then(|j| j.shards.get(&key))
            .map(|s| s.tasks.as_slice())
    }

    /// The incarnation of a job the scheduler holds.
    pub fn incarnation_of(&self, job_id: &str) -> Option<u64> {
        self.jobs.get(job_id).map(|j| j.incarnation)
    }

    /// A worker reported on a shard. Returns the commands that stop the
    /// shard's other runs (a speculative copy) if the report is the one
    /// awaited (the shard now waits for its commit); `None` for a stale or
    /// duplicate report, which must be dropped (a stopping run's report
    /// frees its slot).
    pub fn report(
        &mut self,
        worker: &str,
        (job_id, incarnation): (&str, u64),
        key: ShardKey,
        attempt: u32,
        now: Instant,
    ) -> Option<Vec<Command>> {
        // A report follows its run's `Started`, which it stands for if that
        // was never sent (a run the worker held from before a reconnection).
        let ended = (job_id.to_string(), incarnation, key, attempt);
        if let Some(w) = self.pool.workers.get_mut(worker) {
            w.unseen.remove(&ended);
        }
        if self.pool.stopped(worker, &ended) {
            return None;
        }
        let job = self
            .jobs
            .get_mut(job_id)
            .filter(|j| j.incarnation == incarnation)?;
        let shard = job.shards.get_mut(&key)?;
        let ShardPhase::Running { runs } = &shard.phase else {
            return None;
        };
        let run = runs.iter().find(|r| r.worker == worker)?;
        if shard.attempt != attempt {
            return None;
        }
        let took = now.saturating_duration_since(run.since);
        job.typical = Some(job.typical.map_or(took, |t| (t * 7 + took) / 8));
        if let Some(w) = self.pool.workers.get_mut(worker) {
            w.run_time = Some(w.run_time.map_or(took, |t| (t * 7 + took) / 8));
        }
        let others: Vec<(String, bool)> = runs
            .iter()
            .filter(|r| r.worker != worker)
            .map(|r| (r.worker.clone(), r.ack_first && !r.started))
            .collect();
        shard.phase = ShardPhase::Committing {
            worker: Some(worker.to_string()),
        };
        self.queues.sync_age(job_id, key, shard);
        self.pool.release(worker, job_id, key);
        // The copies still running are stopped: they hold their slots
        // until they end.
        Some(
            others
                .into_iter()
                .map(|(w, awaits_ack)| self.pool.stop(&w, ended.clone(), awaits_ack))
                .collect(),
        )
    }

    /// Whether the shard, reported and waiting for its commit, is its
    /// job's whole work: the job's only shard, first generation, holding
    /// every task, with nothing of the job counted yet. Its commit may
    /// then be the job's end ([`crate::Ledger::end_alone`]).
    pub fn sole_shard(&self, job_id: &str, key: ShardKey) -> bool {
        let Some(job) = self.jobs.get(job_id) else {
            return false;
        };
        let c = job.counters;
        key.generation == 0
            && job.shards.len() == 1
            && c.tasks_done == 0
            && c.retries == 0
            && job.shards.get(&key).is_some_and(|s| {
                s.tasks.len() as u64 == c.tasks_total
                    && matches!(s.phase, ShardPhase::Committing { .. })
            })
    }

    /// A commit could not be made for a transient reason: run the shard again.
    pub fn commit_aborted(&mut self, job_id: &str, key: ShardKey) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if let Some(shard) = job.shards.get_mut(&key) {
            if matches!(shard.phase, ShardPhase::Committing { .. }) {
                shard.phase = ShardPhase::Pending;
                self.queues.push(job_id, job, key, true);
            }
        }
    }

    /// A shard's outcome is durable. Its retryable failures become the next
    /// generation of the shard; the job finishes when nothing is left.
    pub fn committed(
        &mut self,
        job_id: &str,
        key: ShardKey,
        attempt: u32,
        failures: &[TaskFailure],
        now: Instant,
    ) -> Vec<Command> {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Vec::new();
        };
        let Some(mut shard) = job.shards.remove(&key) else {
            return Vec::new();
        };
        self.queues.forget(job_id, key, &mut shard);
        if let ShardPhase::Running { runs } = &shard.phase {
            for r in runs {
                self.pool.release(&r.worker, job_id, key);
            }
        }
        let ran_on = match shard.phase {
            ShardPhase::Committing { worker } => worker,
            _ => None,
        };
        let (retry, final_failed) = split_failures(&shard.tasks, failures, job.max_attempts);
        job.counters.tasks_done += shard.tasks.len() as u64 - retry.len() as u64;
        job.counters.tasks_failed += final_failed.len() as u64;
        job.counters.retries += retry.len() as u64;
        if !retry.is_empty() {
            let next = ShardKey {
                index: key.index,
                generation: key.generation + 1,
            };
            let due = now + retry_delay(job_id, next, attempt + 1);
            job.shards.insert(
                next,
                ShardState {
                    tasks: retry.iter().map(|f| f.index).collect(),
                    attempt: attempt + 1,
                    phase: ShardPhase::Pending,
                    not_before: Some(due),
                    avoid: ran_on,
                    losses: 0,
                    doubts: 0,
                    suspect: false,
                    aged: None,
                    ready_at: None,
                },
            );
            self.queues.delayed.insert((due, job_id.to_string(), next));
        }
        if job.shards.is_empty() {
            vec![Command::Finish {
                job: job_id.to_string(),
            }]
        } else {
            Vec::new()
        }
    }

    /// Counters of a job.
    pub fn counters(&self, job_id: &str) -> Option<Counters> {
        self.jobs.get(job_id).map(|j| j.counters)
    }

    /// Runs a worker holds now: its shards, and runs told to stop that
    /// have not ended yet.
    pub fn running_on(&self, worker: &str) -> usize {
        self.pool.workers.get(worker).map_or(0, WorkerSlot::load)
    }

    /// The jobs with a shard running on the worker.
    pub fn jobs_on(&self, worker: &str) -> BTreeSet<String> {
        self.pool
            .workers
            .get(worker)
            .map(|w| w.running.iter().map(|(job, _)| job.clone()).collect())
            .unwrap_or_default()
    }

    /// Runs found in doubt at their worker's death (see
    /// [`Scheduler::remove_worker`]), since the start.
    pub fn in_doubt_total(&self) -> u64 {
        self.in_doubt
    }

    /// Whether the worker is known.
    pub fn has_worker(&self, worker: &str) -> bool {
        self.pool.workers.contains_key(worker)
    }

    /// Sets the weight of fairness key `key` (1 to [`MAX_WEIGHT`]; 0 is
    /// taken as 1): within a level, keys with shards waiting get them in
    /// proportion to their weights. A key never set weighs 1.
    pub fn set_weight(&mut self, key: &str, weight: u32) {
        let weight = weight.clamp(1, MAX_WEIGHT);
        match weight {
            1 => self.queues.weights.remove(key),
            w => self.queues.weights.insert(key.to_string(), w),
        };
        for level in &mut self.queues.ready {
            level.reweigh(key, weight);
        }
    }

    /// Each fairness key with a weight set or shards ready: its weight
    /// and its shards ready to run. Walks the jobs that wait.
    pub fn fair_shares(&self) -> BTreeMap<String, (u32, u64)> {
        let mut out: BTreeMap<String, (u32, u64)> = self
            .queues
            .weights
            .iter()
            .map(|(k, w)| (k.clone(), (*w, 0)))
            .collect();
        for job in self.jobs.values().filter(|j| !j.queue.is_empty()) {
            let weight = self.queues.weights.get(&job.fairness).copied().unwrap_or(1);
            out.entry(job.fairness.clone()).or_insert((weight, 0)).1 += job.queue.len() as u64;
        }
        out
    }

    /// Shards ready to run, by priority (index 0 to [`MAX_PRIORITY`]).
    pub fn queued_by_priority(&self) -> [usize; LEVELS] {
        self.queues.queued_at
    }

    /// Shards waiting to run: ready, or in their retry's backoff.
    pub fn queued(&self) -> usize {
        self.queues.queued + self.queues.delayed.len()
    }

    /// After `assign`: no job of any level has a shard ready that a
    /// free worker could take (a level never waits on a worker that has
    /// room for it, whatever waits above or below it). Looks at the first
    /// jobs of each level.
    #[cfg(test)]
    fn check_work_conserving(&self) {
        for ring in &self.queues.ready {
            for id in ring.first_jobs(4, 4) {
                let Some(job) = self.jobs.get(id).filter(|j| !j.throttled) else {
                    continue;
                };
                let ready = job.queue.iter().any(|k| {
                    matches!(
                        job.shards.get(k).map(|s| &s.phase),
                        Some(ShardPhase::Pending)
                    )
                });
                if ready {
                    let free = self.pool.pick(&job.name, None, false);
                    assert!(free.is_none(), "job {id} waits while {free:?} has room");
                }
            }
        }
    }

    /// The runs held under limit `key`: worker, job, stopping (tests).
    #[cfg(test)]
    pub(crate) fn holders(&self, key: &str) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        for (id, w) in &self.pool.workers {
            let running = w.running.iter().map(|(job, _)| (job, false));
            for (job, stopping) in running.chain(w.stopping.keys().map(|(job, ..)| (job, true))) {
                if self.pool.limits.limits_of(job).iter().any(|k| k == key) {
                    out.push((id.clone(), job.clone(), stopping));
                }
            }
        }
        out
    }

    /// Checks that every index agrees with the state it indexes (tests).
    #[cfg(test)]
    pub(crate) fn check_indexes(&self) {
        for level in &self.queues.ready {
            level.check();
        }
        let mut queued = 0;
        let mut queued_at = [0usize; LEVELS];
        let mut aging = BTreeSet::new();
        let mut delayed = BTreeSet::new();
        let mut held: BTreeMap<&str, BTreeSet<(String, ShardKey)>> = BTreeMap::new();
        for (id, job) in &self.jobs {
            queued += job.queue.len();
            if job.in_ready {
                let ring = &self.queues.ready[level(job.priority)];
                assert!(ring.holds(&job.fairness, id), "job {id}: in_ready");
            }
            queued_at[level(job.priority)] += job.queue.len();
            if !job.queue.is_empty() {
                assert!(
                    job.in_ready || job.throttled,
                    "job {id} has queued shards but no turn"
                );
            }
            if job.throttled {
                assert!(!job.in_ready, "job {id}: throttled and in turn");
                let waits = self.pool.limits.waits(id).is_some();
                assert!(
                    waits || self.pool.limits.is_woken(id),
                    "job {id}: throttled, waiting on no limit"
                );
            }
            for (key, shard) in &job.shards {
                if let Some(t) = shard.aged {
                    aging.insert((t, id.clone(), *key));
                }
                if let Some(t) = shard.not_before {
                    delayed.insert((t, id.clone(), *key));
                    assert!(matches!(shard.phase, ShardPhase::Pending));
                }
                match &shard.phase {
                    ShardPhase::Running { runs } => {
                        assert!(!runs.is_empty(), "{id}/{key}: running with no run");
                        assert_eq!(shard.aged.is_some(), runs.len() == 1, "{id}/{key}: aged");
                        for r in runs {
                            held.entry(r.worker.as_str())
                                .or_default()
                                .insert((id.clone(), *key));
                        }
                    }
                    ShardPhase::Pending => {
                        let waiting = shard.not_before.is_some()
                            || job.not_before.is_some()
                            || job.queue.contains(key);
                        assert!(
                            waiting,
                            "{id}/{key}: pending but neither queued nor delayed"
                        );
                    }
                    ShardPhase::Committing { .. } => {}
                }
            }
        }
        assert_eq!(queued, self.queues.queued, "queued count");
        assert_eq!(queued_at, self.queues.queued_at, "queued per priority");
        assert_eq!(aging, self.queues.aging, "aging index");
        assert_eq!(delayed, self.queues.delayed, "delayed index");
        let timed: BTreeSet<(Instant, String)> = self
            .jobs
            .iter()
            .filter_map(|(id, j)| Some((j.not_before?, id.clone())))
            .collect();
        assert_eq!(timed, self.queues.timed, "delayed jobs' index");
        // Each limit counts the runs the workers hold of its jobs.
        let mut counted: HashMap<String, u32> = HashMap::new();
        for w in self.pool.workers.values() {
            let jobs = w.running.iter().map(|(job, _)| job);
            for job in jobs.chain(w.stopping.keys().map(|(job, ..)| job)) {
                for key in self.pool.limits.limits_of(job) {
                    *counted.entry(key.clone()).or_default() += 1;
                }
            }
        }
        assert_eq!(counted, self.pool.limits.running(), "runs held per limit");
        let mut regulars: HashMap<String, usize> = HashMap::new();
        for (id, w) in &self.pool.workers {
            let mine = held.remove(id.as_str()).unwrap_or_default();
            assert_eq!(w.running, mine, "worker {id}: held runs");
            let free = (w.load() as u32) < w.window();
            assert_eq!(w.indexed.is_some(), free, "worker {id}: free index");
            let backlog = w.capacity > 0 && w.load() as u32 > w.capacity;
            assert_eq!(
                self.pool.backlogged.contains(id),
                backlog,
                "worker {id}: backlog index"
            );
            if w.regular() {
                for j in &w.jobs {
                    *regulars.entry(j.clone()).or_default() += 1;
                }
            }
        }
        assert!(held.is_empty(), "runs on unknown workers: {held:?}");
        assert!(
            self.pool
                .backlogged
                .iter()
                .all(|id| self.pool.workers.contains_key(id)),
            "a backlog of an unknown worker"
        );
        assert_eq!(regulars, self.pool.regulars, "regular workers per job");
        assert_eq!(
            self.pool.free.len(),
            self.pool
                .workers
                .values()
                .filter(|w| w.indexed.is_some())
                .count()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The scheduler on a test clock: `tick` sets the time that the calls
    /// after it pass.
    struct Clocked {
        s: Scheduler,
        now: Instant,
    }

    impl std::ops::Deref for Clocked {
        type Target = Scheduler;
        fn deref(&self) -> &Scheduler {
            &self.s
        }
    }

    impl std::ops::DerefMut for Clocked {
        fn deref_mut(&mut self) -> &mut Scheduler {
            &mut self.s
        }
    }

    impl Clocked {
        fn new() -> Self {
            Clocked {
                s: Scheduler::new(),
                now: Instant::now(),
            }
        }
        fn tick(&mut self, now: Instant) {
            self.now = now;
        }
        fn assign(&mut self) -> Vec<Command> {
            self.s.assign(self.now)
        }
        fn speculate(&mut self) -> Vec<Command> {
            self.s.speculate(self.now)
        }
        /// Whether the worker's slot may run it (acknowledged, or it did
        /// not wait).
        fn started(&mut self, worker: &str, job: &str, key: ShardKey, attempt: u32) -> bool {
            self.answer(worker, job, key, attempt) != StartAnswer::Refuse
        }
        fn answer(&mut self, worker: &str, job: &str, key: ShardKey, attempt: u32) -> StartAnswer {
            self.s.started(worker, (job, 0), key, attempt, self.now)
        }
        fn report(&mut self, worker: &str, job: &str, key: ShardKey, attempt: u32) -> bool {
            // (The commands that stop other copies are left out.)
            self.s
                .report(worker, (job, 0), key, attempt, self.now)
                .is_some()
        }
        fn committed(
            &mut self,
            job: &str,
            key: ShardKey,
            attempt: u32,
            failures: &[TaskFailure],
        ) -> Vec<Command> {
            self.s.committed(job, key, attempt, failures, self.now)
        }
        fn next_due(&self) -> Option<Instant> {
            self.s.next_due(self.now)
        }
    }

    fn plan(id: &str, shards: u32, per: u64, max_attempts: u32) -> JobPlan {
        JobPlan {
            id: id.into(),
            incarnation: 0,
            shard_timeout: None,
            name: "j".into(),
            max_attempts,
            counters: Counters {
                tasks_total: u64::from(shards) * per,
                ..Counters::default()
            },
            pending: (0..shards)
                .map(|i| PendingShard {
                    key: ShardKey {
                        index: i,
                        generation: 0,
                    },
                    tasks: (u64::from(i) * per..u64::from(i + 1) * per).collect(),
                    attempt: 1,
                })
                .collect(),
            priority: 0,
            fairness: String::new(),
            not_before: None,
            under: Vec::new(),
        }
    }

    /// At `t0`: worker "a" of one slot, and job "x" of `shards` one-task
    /// shards, one attempt each, with a shard timeout of a second.
    fn one_slot_and_a_timeout(t0: Instant, shards: u32) -> Clocked {
        let mut s = Clocked::new();
        s.tick(t0);
        s.add_worker("a", 1, ["j".to_string()], false);
        let mut p = plan("x", shards, 1, 1);
        p.shard_timeout = Some(Duration::from_secs(1));
        s.add_job(p);
        s
    }

    fn assigned(cmds: &[Command]) -> Vec<(String, ShardKey, u32)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Assign { worker, shard, .. } => {
                    Some((worker.clone(), shard.key, shard.attempt))
                }
                _ => None,
            })
            .collect()
    }

    /// Runs a worker holds per slot: one running, the rest queued.
    const RUNS_PER_SLOT: u32 = 1 + PREFETCH_PER_SLOT;

    #[test]
    fn respects_capacity_and_job_names() {
        let mut s = Clocked::new();
        s.add_worker("a", 2, ["j".to_string()], false);
        s.add_worker("b", 1, ["other".to_string()], false);
        s.add_job(plan("x", 2 * RUNS_PER_SLOT + 3, 1, 3));
        let a = assigned(&s.assign());
        // Its two slots, and their queues.
        assert_eq!(a.len() as u32, 2 * RUNS_PER_SLOT);
        assert!(a.iter().all(|(w, _, _)| w == "a"));
        assert!(s.assign().is_empty());
        assert_eq!(s.queued(), 3);
    }

    #[test]
    fn only_a_reported_shard_that_is_its_whole_untouched_job_ends_it_alone() {
        let k = |index, generation| ShardKey { index, generation };
        let fail = |index| TaskFailure {
            index,
            error: "e".into(),
            attempt: 1,
            retryable: true,
        };
        let mut s = Clocked::new();
        s.add_worker("a", 2, ["j".to_string()], false);
        s.add_job(plan("one", 1, 3, 3));
        s.add_job(plan("two", 2, 1, 3));
        assert_eq!(assigned(&s.assign()).len(), 3);
        assert!(!s.sole_shard("one", k(0, 0)), "not reported yet");
        for (job, key) in [("one", k(0, 0)), ("two", k(0, 0)), ("two", k(1, 0))] {
            assert!(s.started("a", job, key, 1));
            assert!(s.report("a", job, key, 1));
        }
        assert!(s.sole_shard("one", k(0, 0)));
        assert!(!s.sole_shard("two", k(0, 0)), "one of two shards");
        assert!(!s.sole_shard("nope", k(0, 0)));
        // Its tasks failed retryably once: the next generation holds every
        // task, but the job is no longer untouched.
        s.committed("one", k(0, 0), 1, &[fail(0), fail(1), fail(2)]);
        assert_eq!(assigned(&s.assign()).len(), 0, "in its backoff");
        let later = s.now + Duration::from_secs(600);
        s.tick(later);
        assert_eq!(assigned(&s.assign()).len(), 1);
        assert!(s.started("a", "one", k(0, 1), 2));
        assert!(s.report("a", "one", k(0, 1), 2));
        assert!(!s.sole_shard("one", k(0, 1)));
        // The other shard of two committed: the last is not the whole job.
        s.committed("two", k(0, 0), 1, &[]);
        assert!(!s.sole_shard("two", k(1, 0)));
    }

    #[test]
    fn worker_loss_requeues_with_an_attempt_used() {
        let mut s = Clocked::new();
        s.add_worker("a", 1, ["j".to_string()], false);
        s.add_job(plan("x", 1, 2, 2));
        assert_eq!(assigned(&s.assign())[0].2, 1);
        let k = ShardKey {
            index: 0,
            generation: 0,
        };
        // Only the run the worker holds may start: no unaccounted runs.
        assert!(!s.started("b", "x", k, 1), "not b's run");
        assert!(!s.started("a", "x", k, 2), "not this attempt");
        assert!(!s.started("a", "y", k, 1), "no such job");
        assert!(s.started("a", "x", k, 1));
        assert_eq!(
            s.remove_worker("a"),
            vec![Command::RecordLoss {
                job: "x".into(),
                key: ShardKey {
                    index: 0,
                    generation: 0
                },
                next_attempt: 2
            }]
        );
        s.add_worker("b", 1, ["j".to_string()], false);
        assert_eq!(
            assigned(&s.assign()),
            vec![(
                "b".to_string(),
                ShardKey {
                    index: 0,
                    generation: 0
                },
                2
            )]
        );
        s.started(
            "b",
            "x",
            ShardKey {
                index: 0,
                generation: 0,
            },
            2,
        );
        // Second loss exhausts the attempts: committed as failed, not retried.
        let cmds = s.remove_worker("b");
        match &cmds[..] {
            [Command::CommitLost {
                failures,
                attempt: 2,
                ..
            }] => assert_eq!(failures.len(), 2),
            other => panic!("unexpected {other:?}"),
        }
        assert!(s.assign().is_empty());
    }

    /// Whether each assignment waits for `StartAck`, by key.
    fn acks_first(cmds: &[Command]) -> Vec<(ShardKey, bool)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Assign {
                    shard, ack_first, ..
                } => Some((shard.key, *ack_first)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_death_is_charged_to_its_started_run_when_nothing_could_start_unseen() {
        let mut s = Clocked::new();
        s.add_worker("a", 1, ["j".to_string()], false);
        s.add_job(plan("x", 1, 1, 2));
        let k = ShardKey {
            index: 0,
            generation: 0,
        };
        assert_eq!(
            acks_first(&s.assign()),
            [(k, false)],
            "a first run does not wait"
        );
        assert_eq!(s.answer("a", "x", k, 1), StartAnswer::Nothing);
        // Nothing else was sent to a: its death is the started run's.
        let cmds = s.remove_worker("a");
        assert!(
            matches!(
                &cmds[..],
                [Command::RecordLoss {
                    next_attempt: 2,
                    ..
                }]
            ),
            "{cmds:?}"
        );
        s.add_worker("b", 1, ["j".to_string()], false);
        assert_eq!(
            acks_first(&s.assign()),
            [(k, true)],
            "a second attempt waits"
        );
        assert_eq!(s.answer("b", "x", k, 2), StartAnswer::Ack);
    }

    /// A worker dies while a run it was sent to start at once has not said
    /// `Started`: the run it started may have finished with its report
    /// lost, and that one may have killed it. Neither is charged; both
    /// become suspects whose runs wait for `StartAck`, and the one that then
    /// kills a worker is charged for both deaths.
    #[test]
    fn a_death_in_doubt_charges_nobody_until_a_suspect_kills_with_its_start_acknowledged() {
        let mut s = Clocked::new();
        s.add_worker("a", 1, ["j".to_string()], false);
        let n = RUNS_PER_SLOT;
        s.add_job(plan("x", n + 2, 1, 2));
        let k = |index| ShardKey {
            index,
            generation: 0,
        };
        let sent = acks_first(&s.assign());
        assert_eq!(sent.len() as u32, n);
        assert!(sent.iter().all(|(_, ack)| !ack), "{sent:?}");
        assert_eq!(s.answer("a", "x", k(0), 1), StartAnswer::Nothing);
        assert_eq!(s.remove_worker("a"), vec![], "in doubt: nobody is charged");
        assert_eq!(s.in_doubt_total(), u64::from(n), "each run it held");
        // b takes the suspects, which wait, and then the last two shards:
        // they wait too, since b holds runs that wait.
        s.add_worker("b", 2, ["j".to_string()], false);
        let sent = acks_first(&s.assign());
        assert_eq!(sent.len() as u32, n + 2, "{sent:?}");
        assert!(sent.iter().all(|(_, ack)| *ack), "{sent:?}");
        assert!(sent.iter().any(|(key, _)| *key == k(0)));
        assert_eq!(s.answer("b", "x", k(0), 1), StartAnswer::Ack);
        assert_eq!(
            s.answer("a", "x", k(1), 1),
            StartAnswer::Refuse,
            "not a's run"
        );
        // Shard 0 kills b with its start acknowledged: charged for both
        // deaths, its two attempts are used. The others had not started.
        let cmds = s.remove_worker("b");
        assert!(
            matches!(&cmds[..], [Command::CommitLost { key, attempt: 2, .. }] if *key == k(0)),
            "{cmds:?}"
        );
        s.add_worker("c", 2, ["j".to_string()], false);
        let sent = acks_first(&s.assign());
        assert_eq!(sent.len() as u32, n + 1, "{sent:?}");
        assert!(sent.contains(&(k(1), true)), "still a suspect: {sent:?}");
        assert!(!sent.iter().any(|(key, _)| *key == k(0)), "{sent:?}");
        // A draining worker drops its queue: nothing of it starts unseen,
        // and its death is charged exactly again.
        let mut s2 = Clocked::new();
        s2.add_worker("e", 1, ["j".to_string()], false);
        s2.add_job(plan("y", n + 1, 1, 3));
        assert_eq!(acks_first(&s2.assign()).len() as u32, n);
        assert_eq!(s2.answer("e", "y", k(0), 1), StartAnswer::Nothing);
        s2.drain_worker("e");
        let cmds = s2.remove_worker("e");
        assert!(
            matches!(&cmds[..], [Command::RecordLoss { key, next_attempt: 2, .. }] if *key == k(0)),
            "{cmds:?}"
        );
    }

    #[test]
    fn a_draining_worker_keeps_started_shards_and_hands_back_the_rest() {
        let mut s = Clocked::new();
        s.add_worker("a", 2, ["j".to_string()], false);
        s.add_job(plan("x", 3, 1, 3));
        let a = assigned(&s.assign());
        s.started("a", "x", a[0].1, 1);
        s.drain_worker("a");
        assert!(s.assign().is_empty(), "nothing new for a draining worker");
        s.add_worker("b", 4, ["j".to_string()], false);
        let b = assigned(&s.assign());
        assert_eq!(b.len(), 2, "{b:?}");
        assert!(
            b.iter().all(|(_, _, attempt)| *attempt == 1),
            "handed back for free: {b:?}"
        );
        assert!(
            s.report("a", "x", a[0].1, 1),
            "the started shard is still a's"
        );
    }

    #[test]
    fn retries_back_off_and_prefer_another_worker() {
        let t0 = Instant::now();
        let mut s = Clocked::new();
        s.tick(t0);
        s.add_worker("a", 1, ["j".to_string()], false);
        s.add_worker("b", 1, ["j".to_string()], false);
        s.add_job(plan("x", 1, 1, 3));
        let first = assigned(&s.assign());
        let failed_on = first[0].0.clone();
        assert!(s.report(&failed_on, "x", first[0].1, 1));
        let fail = TaskFailure {
            index: 0,
            error: "e".into(),
            attempt: 1,
            retryable: true,
        };
        s.committed("x", first[0].1, 1, &[fail]);
        assert!(s.assign().is_empty(), "the retry waits out its backoff");
        let due = s.next_due().expect("a retry is due later");
        let delay = due - t0;
        assert!(
            delay >= RETRY_BASE / 2 && delay <= RETRY_BASE * 3 / 2,
            "{delay:?}"
        );
        s.tick(due);
        let retry = assigned(&s.assign());
        assert_eq!(retry.len(), 1);
        assert_ne!(retry[0].0, failed_on, "the retry goes to the other worker");
        assert_eq!(retry[0].2, 2);
    }

    #[test]
    fn a_report_repeating_a_failed_index_counts_each_task_once() {
        let mut s = Clocked::new();
        s.tick(Instant::now());
        s.add_worker("a", 1, ["j".to_string()], false);
        s.add_job(plan("x", 1, 2, 3));
        let first = assigned(&s.assign());
        assert!(s.report("a", "x", first[0].1, 1));
        let fail = |index| TaskFailure {
            index,
            error: "e".into(),
            attempt: 1,
            retryable: true,
        };
        // Task 0 twice, and a task of no shard of this job.
        let bad = [fail(0), fail(0), fail(7)];
        assert!(s.check_failures("x", first[0].1, &bad).is_err());
        s.committed("x", first[0].1, 1, &bad);
        let c = s.counters("x").expect("the job");
        assert_eq!((c.tasks_done, c.retries), (1, 1), "{c:?}");
        s.tick(Instant::now() + RETRY_CAP * 2);
        let retry = assigned(&s.assign());
        assert_eq!(retry.len(), 1);
        assert_eq!(s.shard_tasks("x", retry[0].1), Some(&[0u64][..]));
        assert!(s.check_failures("x", retry[0].1, &[fail(0)]).is_ok());
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let k = ShardKey {
            index: 3,
            generation: 1,
        };
        let d2 = retry_delay("j", k, 2);
        let d5 = retry_delay("j", k, 5);
        assert!(d5 > d2, "{d2:?} {d5:?}");
        assert!(retry_delay("j", k, 60) <= RETRY_CAP.mul_f64(1.5));
    }

    #[test]
    fn a_shard_past_its_timeout_gets_a_copy_and_the_first_report_wins() {
        let t0 = Instant::now();
        let mut s = one_slot_and_a_timeout(t0, 1);
        let first = assigned(&s.assign());
        assert_eq!(first[0].0, "a");
        s.add_worker("b", 1, ["j".to_string()], false);
        s.add_worker("m", 1, ["j".to_string()], true);
        s.tick(t0 + Duration::from_millis(500));
        assert!(s.speculate().is_empty(), "not yet");
        s.tick(t0 + Duration::from_secs(2));
        let copy = assigned(&s.speculate());
        assert_eq!(
            copy,
            vec![("b".to_string(), first[0].1, 1)],
            "same shard, same attempt, a regular worker"
        );
        assert!(s.speculate().is_empty(), "one copy only");
        assert!(s.report("b", "x", first[0].1, 1), "the copy wins");
        assert!(
            !s.report("a", "x", first[0].1, 1),
            "the slow one is dropped"
        );
        // Losing a worker that held one of two copies costs nothing.
        let mut s2 = Clocked::new();
        s2.tick(t0);
        s2.add_worker("a", 1, ["j".to_string()], false);
        let mut p = plan("y", 1, 1, 1);
        p.shard_timeout = Some(Duration::from_secs(1));
        s2.add_job(p);
        let k = assigned(&s2.assign())[0].1;
        s2.started("a", "y", k, 1);
        s2.add_worker("b", 1, ["j".to_string()], false);
        s2.tick(t0 + Duration::from_secs(2));
        assert_eq!(assigned(&s2.speculate()).len(), 1);
        assert!(
            s2.remove_worker("a").is_empty(),
            "the copy carries on: no loss, no failure"
        );
        assert!(s2.report("b", "y", k, 1));
    }

    /// A worker's queue deepens while its runs are short (a slot of
    /// one-task shards would idle between refills), and shortens again
    /// when they grow long (a new job would wait behind them).
    #[test]
    fn a_worker_of_short_runs_holds_a_deeper_queue() {
        let mut s = Clocked::new();
        s.add_worker("a", 2, ["j".to_string()], false);
        s.add_job(plan("x", 100, 1, 3));
        let k = |index| ShardKey {
            index,
            generation: 0,
        };
        let held = assigned(&s.assign());
        assert_eq!(held.len() as u32, 2 * RUNS_PER_SLOT, "no run time yet");
        // One run of 1 ms: the queue deepens.
        let t0 = s.now;
        assert!(s.started("a", "x", k(0), 1));
        s.tick(t0 + Duration::from_millis(1));
        assert!(s.report("a", "x", k(0), 1));
        s.committed("x", k(0), 1, &[]);
        let more = assigned(&s.assign());
        assert_eq!(
            (held.len() + more.len()) as u32 - 1,
            2 * (1 + SHORT_RUN_PREFETCH),
            "short runs: seven queued per slot"
        );
        s.check_indexes();
        // Long runs: back to three (nothing new until the load is under it).
        for index in 1..40 {
            let t = s.now;
            assert!(s.started("a", "x", k(index), 1));
            s.tick(t + Duration::from_millis(50));
            assert!(s.report("a", "x", k(index), 1));
            s.committed("x", k(index), 1, &[]);
            if s.running_on("a") as u32 <= 2 * RUNS_PER_SLOT {
                break;
            }
        }
        assert_eq!(s.running_on("a") as u32, 2 * RUNS_PER_SLOT);
        assert_eq!(assigned(&s.assign()), [], "the long runs' queue is full");
        s.check_indexes();
    }

    #[test]
    fn a_queued_run_moves_to_an_idle_slot_once_nothing_else_waits() {
        let n = RUNS_PER_SLOT;
        assert!(n >= 3, "the test moves two runs of a's queue");
        let mut s = Clocked::new();
        s.add_worker("a", 1, ["j".to_string()], false);
        s.add_job(plan("x", n + 1, 1, 3));
        let k = |index| ShardKey {
            index,
            generation: 0,
        };
        let held = assigned(&s.assign());
        assert_eq!(held.len() as u32, n);
        assert_eq!(s.answer("a", "x", k(0), 1), StartAnswer::Nothing);
        // A worker that comes while a shard waits in the job's queue takes
        // that one: nothing moves.
        s.add_worker("b", 1, ["j".to_string()], false);
        assert_eq!(assigned(&s.assign()), [("b".into(), k(n), 1)]);
        assert!(s.started("b", "x", k(n), 1));
        assert!(s.report("b", "x", k(n), 1));
        s.committed("x", k(n), 1, &[]);
        // Now b's slot is idle, the job's queue is empty, and a's queue
        // holds the rest: its last is revoked, once for b's one slot.
        let revoke = |key: ShardKey| Command::Revoke {
            incarnation: 0,
            worker: "a".into(),
            job: "x".into(),
            key,
            attempt: 1,
        };
        assert_eq!(s.assign(), [revoke(k(n - 1))]);
        assert_eq!(s.assign(), [], "one revocation per idle slot");
        s.check_indexes();
        // a dropped it: it moves to b.
        s.unstarted("a", ("x", 0), k(n - 1), 1);
        assert_eq!(assigned(&s.assign()), [("b".into(), k(n - 1), 1)]);
        assert!(!s.report("a", "x", k(n - 1), 1), "no longer a's");
        assert!(s.started("b", "x", k(n - 1), 1));
        assert!(s.report("b", "x", k(n - 1), 1));
        s.committed("x", k(n - 1), 1, &[]);
        // The next is revoked, but a had started it: it stays a's, and b
        // gets nothing.
        assert_eq!(s.assign(), [revoke(k(n - 2))]);
        assert_eq!(s.answer("a", "x", k(n - 2), 1), StartAnswer::Nothing);
        assert_eq!(s.running_on("b"), 0);
        assert!(s.report("a", "x", k(n - 2), 1));
        s.committed("x", k(n - 2), 1, &[]);
        s.check_indexes();
        // Shard 1 still waited in a's queue, unseen: a's death is in doubt
        // and charges nobody.
        let lost = s.remove_worker("a");
        assert_eq!(lost, [], "{lost:?}");
        s.check_indexes();
    }

    fn at_priority(mut p: JobPlan, priority: u8) -> JobPlan {
        p.priority = priority;
        p
    }

    /// Job ids of the shards placed, in order.
    fn placed_jobs(cmds: &[Command]) -> Vec<String> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Assign { job, .. } => Some(job.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_higher_priority_shard_is_placed_before_every_lower_one_that_waits() {
        let mut s = Clocked::new();
        s.add_job(at_priority(plan("low", 6, 1, 3), 0));
        s.add_job(at_priority(plan("mid", 6, 1, 3), 4));
        s.add_job(at_priority(plan("high", 3, 1, 3), 9));
        // Room for ten: the three high first, then the middle, then the
        // low ones (no level passed over nine times yet).
        s.add_worker("a", 1, ["j".to_string()], false);
        s.add_worker("b", 1, ["j".to_string()], false);
        s.add_worker("c", 1, ["j".to_string()], false);
        let order = placed_jobs(&s.assign());
        assert_eq!(order.len() as u32, 3 * RUNS_PER_SLOT);
        assert_eq!(order[..3], ["high", "high", "high"]);
        assert_eq!(order[3..9], ["mid"; 6]);
        assert_eq!(order[9..], ["low"; 3]);
        // The runs carry their priority to the worker.
        s.check_indexes();
    }

    #[test]
    fn a_delayed_job_is_placed_not_before_its_time_and_forgotten_if_removed_while_it_waits() {
        let mut s = Clocked::new();
        let t0 = s.now;
        let mut later = plan("later", 3, 1, 3);
        later.not_before = Some(t0 + Duration::from_secs(30));
        s.add_job(later);
        let mut gone = plan("gone", 2, 1, 3);
        gone.not_before = Some(t0 + Duration::from_secs(10));
        s.add_job(gone);
        s.add_job(plan("now", 1, 1, 3));
        s.add_worker("a", 4, ["j".to_string()], false);
        assert_eq!(placed_jobs(&s.assign()), ["now"]);
        assert_eq!(s.timed(), (2, Some(t0 + Duration::from_secs(10))));
        assert_eq!(s.s.next_due(t0), Some(t0 + Duration::from_secs(10)));
        s.check_indexes();
        // Removed while it waits: nothing of it is left to wake for.
        assert_eq!(s.remove_job("gone"), []);
        assert_eq!(s.s.next_due(t0), Some(t0 + Duration::from_secs(30)));
        s.tick(t0 + Duration::from_millis(29_999));
        assert_eq!(placed_jobs(&s.assign()), Vec::<String>::new());
        assert_eq!(s.not_before("later"), Some(t0 + Duration::from_secs(30)));
        s.tick(t0 + Duration::from_secs(30));
        assert_eq!(placed_jobs(&s.assign()), ["later"; 3]);
        assert_eq!(s.timed(), (0, None));
        assert_eq!(s.not_before("later"), None);
        s.check_indexes();
    }

    fn under(mut p: JobPlan, limits: &[&str]) -> JobPlan {
        p.under = limits.iter().map(|l| l.to_string()).collect();
        p
    }

    fn k(index: u32) -> ShardKey {
        ShardKey {
            index,
            generation: 0,
        }
    }

    #[test]
    fn a_concurrency_limit_holds_its_jobs_runs_and_wakes_the_highest_waiting_job_as_one_ends() {
        let mut s = Clocked::new();
        let now = s.now;
        let one = Limit {
            max_running: Some(1),
            rate: None,
        };
        s.set_limit("one", Some(one), now);
        s.add_job(under(plan("low", 2, 1, 3), &["one"]));
        s.add_job(at_priority(under(plan("high", 1, 1, 3), &["one"]), 5));
        s.add_job(plan("free", 2, 1, 3));
        s.add_worker("a", 4, ["j".to_string()], false);
        // The higher job takes the one run; the other waits on the limit,
        // and the job under no limit runs beside them.
        assert_eq!(placed_jobs(&s.assign()), ["high", "free", "free"]);
        assert_eq!(s.throttled_by("low"), Some("one"));
        let (_, usage, waiting) = &s.limits()[0];
        assert_eq!((usage.running, usage.waiting_jobs, *waiting), (1, 1, 2));
        s.check_indexes();
        assert_eq!(placed_jobs(&s.assign()), Vec::<String>::new());
        // Its run ends: the waiting job's first shard goes, and no more.
        assert!(s.started("a", "high", k(0), 1));
        assert!(s.report("a", "high", k(0), 1));
        s.committed("high", k(0), 1, &[]);
        assert_eq!(placed_jobs(&s.assign()), ["low"]);
        assert_eq!(s.throttled_by("low"), Some("one"));
        s.check_indexes();
        // A worker lost frees its runs' room; a limit removed frees all.
        s.remove_worker("a");
        s.add_worker("b", 4, ["j".to_string()], false);
        let mut placed = placed_jobs(&s.assign());
        placed.sort();
        assert_eq!(placed, ["free", "free", "low"]);
        s.set_limit("one", None, now);
        assert_eq!(placed_jobs(&s.assign()), ["low"]);
        assert_eq!(s.throttled_by("low"), None);
        s.check_indexes();
    }

    #[test]
    fn a_rate_limit_starts_an_empty_bucket_and_no_more_than_its_rate_and_burst() {
        let mut s = Clocked::new();
        let t0 = s.now;
        let rate = Rate {
            n: 10,
            per: Duration::from_secs(1),
            burst: 2,
        };
        let limit = Limit {
            max_running: None,
            rate: Some(rate),
        };
        s.set_limit("ten", Some(limit), t0);
        s.add_job(under(plan("x", 20, 1, 3), &["ten"]));
        s.add_worker("a", 10, ["j".to_string()], false);
        // Empty at first (a new master's bucket too): the first token
        // comes a tenth of a second later, and the master is told when.
        assert_eq!(placed_jobs(&s.assign()).len(), 0);
        assert_eq!(s.next_due(), Some(t0 + Duration::from_millis(100)));
        s.tick(t0 + Duration::from_millis(100));
        assert_eq!(placed_jobs(&s.assign()).len(), 1);
        // A long pause fills it to its burst, no further.
        s.tick(t0 + Duration::from_secs(5));
        assert_eq!(placed_jobs(&s.assign()).len(), 2);
        // Then at its rate: 10 in the next second.
        let mut placed = 0;
        for ms in (50..=1000).step_by(50) {
            s.tick(t0 + Duration::from_secs(5) + Duration::from_millis(ms));
            placed += placed_jobs(&s.assign()).len();
        }
        assert_eq!(placed, 10);
        s.check_indexes();
    }

    #[test]
    fn a_placed_shard_says_how_long_it_waited_and_the_longest_waiting_job_is_known() {
        let mut s = Clocked::new();
        let t0 = s.now;
        s.tick(t0);
        s.s.tick(t0);
        s.add_job(plan("early", 2, 1, 3));
        s.s.tick(t0 + Duration::from_secs(2));
        s.add_job(plan("late", 1, 1, 3));
        assert_eq!(s.oldest_waiting(), Some(("early", t0)));
        s.add_worker("a", 1, ["j".to_string()], false);
        s.tick(t0 + Duration::from_secs(5));
        let waits: Vec<(String, Duration)> = s
            .assign()
            .into_iter()
            .filter_map(|c| match c {
                Command::Assign { job, waited, .. } => Some((job, waited)),
                _ => None,
            })
            .collect();
        assert_eq!(
            waits,
            [
                ("early".to_string(), Duration::from_secs(5)),
                ("late".to_string(), Duration::from_secs(3)),
                ("early".to_string(), Duration::from_secs(5)),
                ("late".to_string(), Duration::ZERO),
            ][..waits.len()]
        );
        s.check_indexes();
    }

    #[test]
    fn a_waiting_level_gets_every_tenth_shard_however_much_waits_above_it() {
        let mut s = Clocked::new();
        s.add_job(at_priority(plan("low", 50, 1, 3), 0));
        s.add_job(at_priority(plan("high", 200, 1, 3), 9));
        s.add_worker("a", 25, ["j".to_string()], false);
        let order = placed_jobs(&s.assign());
        assert_eq!(order.len(), 100);
        let low: Vec<usize> = (0..order.len()).filter(|&i| order[i] == "low").collect();
        assert_eq!(low, [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]);
        // Three levels: each waiting one gets its tenth.
        let mut s = Clocked::new();
        s.add_job(at_priority(plan("low", 50, 1, 3), 0));
        s.add_job(at_priority(plan("mid", 50, 1, 3), 5));
        s.add_job(at_priority(plan("high", 200, 1, 3), 9));
        s.add_worker("a", 25, ["j".to_string()], false);
        let order = placed_jobs(&s.assign());
        for job in ["low", "mid"] {
            let n = order.iter().filter(|j| *j == job).count();
            assert!((9..=11).contains(&n), "{job}: {n} of 100: {order:?}");
        }
    }

    fn keyed(mut p: JobPlan, key: &str) -> JobPlan {
        p.fairness = key.to_string();
        p
    }

    #[test]
    fn keys_with_work_get_shards_in_proportion_to_their_weights_and_their_jobs_take_turns() {
        let mut s = Clocked::new();
        s.set_weight("bob", 3);
        s.add_job(keyed(plan("al-1", 300, 1, 3), "al"));
        s.add_job(keyed(plan("al-2", 300, 1, 3), "al"));
        s.add_job(keyed(plan("bob-1", 600, 1, 3), "bob"));
        s.add_worker("a", 100, ["j".to_string()], false);
        let order = placed_jobs(&s.assign());
        assert_eq!(order.len(), 400);
        let bob = order.iter().filter(|j| j.starts_with("bob")).count();
        assert!((299..=301).contains(&bob), "bob got {bob} of 400");
        // Al's two jobs share al's quarter, in turn.
        let al: Vec<&String> = order.iter().filter(|j| j.starts_with("al")).collect();
        assert!(al.windows(2).all(|w| w[0] != w[1]), "{al:?}");
        // Within every window of 40 placements, the shares hold.
        for w in order.chunks(40) {
            let bob = w.iter().filter(|j| j.starts_with("bob")).count();
            assert!((29..=31).contains(&bob), "bob got {bob} of 40");
        }
        s.check_indexes();
    }

    #[test]
    fn a_key_that_comes_gets_its_share_at_once_and_no_credit_for_its_absence() {
        let mut s = Clocked::new();
        s.add_job(keyed(plan("al-1", 1000, 1, 3), "al"));
        s.add_worker("a", 25, ["j".to_string()], false);
        assert_eq!(placed_jobs(&s.assign()), vec!["al-1"; 100]);
        // Bob comes with a backlog: from his first turn, half of what is
        // placed is his, not a hundred turns to catch up on.
        s.add_job(keyed(plan("bob-1", 1000, 1, 3), "bob"));
        s.add_worker("b", 25, ["j".to_string()], false);
        let order = placed_jobs(&s.assign());
        assert_eq!(order.len(), 100);
        for w in order.chunks(10) {
            let bob = w.iter().filter(|j| *j == "bob-1").count();
            assert_eq!(bob, 5, "{w:?}");
        }
        // A share left unused goes to the others: carol has three shards.
        s.add_job(keyed(plan("carol-1", 3, 1, 3), "carol"));
        s.set_weight("bob", 2);
        s.add_worker("c", 25, ["j".to_string()], false);
        let order = placed_jobs(&s.assign());
        assert_eq!(order.len(), 100);
        let count = |who: &str| order.iter().filter(|j| *j == who).count();
        assert_eq!(count("carol-1"), 3);
        assert!((63..=66).contains(&count("bob-1")), "{}", count("bob-1"));
        assert_eq!(count("al-1") + count("bob-1"), 97);
        s.check_indexes();
    }

    #[test]
    fn a_higher_shard_finding_every_worker_full_revokes_one_lower_run_waiting_in_a_queue() {
        let n = RUNS_PER_SLOT;
        let mut s = Clocked::new();
        s.add_worker("a", 1, ["j".to_string()], false);
        s.add_job(plan("low", 10, 1, 3));
        let k = |index| ShardKey {
            index,
            generation: 0,
        };
        assert_eq!(assigned(&s.assign()).len() as u32, n);
        assert_eq!(s.answer("a", "low", k(0), 1), StartAnswer::Nothing);
        s.add_job(at_priority(plan("high", 2, 1, 3), 7));
        // No room: one low run waiting in a's queue is revoked per high
        // shard, the last placed first (the likeliest still queued).
        let revoke = |key: ShardKey| Command::Revoke {
            incarnation: 0,
            worker: "a".into(),
            job: "low".into(),
            key,
            attempt: 1,
        };
        assert_eq!(s.assign(), [revoke(k(n - 1))]);
        assert_eq!(s.assign(), [revoke(k(n - 2))]);
        assert_eq!(s.assign(), [], "no more revoked than high shards wait");
        s.check_indexes();
        // The first is dropped: the high shard takes its room.
        s.unstarted("a", ("low", 0), k(n - 1), 1);
        let placed = s.assign();
        assert_eq!(placed_jobs(&placed), ["high"]);
        assert!(
            matches!(&placed[0], Command::Assign { priority: 7, .. }),
            "{placed:?}"
        );
        // The second had started: it runs on, and the other high shard
        // has another low run revoked, which is dropped in turn.
        assert_eq!(s.answer("a", "low", k(n - 2), 1), StartAnswer::Nothing);
        assert_eq!(s.assign(), [revoke(k(1))]);
        assert_eq!(s.assign(), []);
        s.unstarted("a", ("low", 0), k(1), 1);
        assert_eq!(placed_jobs(&s.assign()), ["high"]);
        // Only high runs and started low ones are left to a: nothing more
        // is revoked, and the revoked low shards wait first in their
        // job's queue.
        assert_eq!(s.assign(), []);
        assert!(s.report("a", "low", k(0), 1));
        s.committed("low", k(0), 1, &[]);
        let next = assigned(&s.assign());
        assert_eq!(next[0], ("a".into(), k(1), 1), "{next:?}");
        s.check_indexes();
        // A lower shard never preempts a higher one.
        let mut s = Clocked::new();
        s.add_worker("a", 1, ["j".to_string()], false);
        s.add_job(at_priority(plan("high", 10, 1, 3), 9));
        assert_eq!(assigned(&s.assign()).len() as u32, n);
        s.add_job(at_priority(plan("low", 2, 1, 3), 3));
        assert_eq!(s.assign(), []);
    }

    #[test]
    fn a_run_ages_from_its_start_not_from_its_wait_in_a_queue() {
        let t0 = Instant::now();
        let mut s = one_slot_and_a_timeout(t0, 2);
        let held = assigned(&s.assign());
        assert_eq!(held.len(), 2, "one in the slot, one queued");
        let (k0, k1) = (held[0].1, held[1].1);
        assert!(s.started("a", "x", k0, 1));
        s.tick(t0 + Duration::from_millis(900));
        assert!(s.report("a", "x", k0, 1));
        s.committed("x", k0, 1, &[]);
        // Shard 1 waited 0.9 s in a's queue; it starts now.
        assert!(s.started("a", "x", k1, 1));
        s.add_worker("b", 1, ["j".to_string()], false);
        s.tick(t0 + Duration::from_millis(1500));
        assert!(s.speculate().is_empty(), "0.6 s since it started");
        s.tick(t0 + Duration::from_millis(2000));
        assert_eq!(
            assigned(&s.speculate()),
            [("b".into(), k1, 1)],
            "past its timeout since it started"
        );
        s.check_indexes();
    }

    #[test]
    fn fallback_workers_run_only_what_no_other_worker_can() {
        let mut s = Clocked::new();
        s.add_worker("master", 4, ["j".to_string()], true);
        s.add_job(plan("x", 3, 1, 3));
        // Alone, the fallback worker runs everything.
        assert_eq!(assigned(&s.assign()).len(), 3);
        let mut s = Clocked::new();
        s.add_worker("master", 4, ["j".to_string()], true);
        s.add_worker("w", 1, ["j".to_string()], false);
        s.add_job(plan("x", RUNS_PER_SLOT + 1, 1, 3));
        let a = assigned(&s.assign());
        // Its slot and its queue.
        assert_eq!(
            a.len() as u32,
            RUNS_PER_SLOT,
            "the full regular worker is waited for: {a:?}"
        );
        assert!(a.iter().all(|(w, _, _)| w == "w"));
        // Once the regular worker is gone, the fallback takes over.
        s.remove_worker("w");
        assert!(assigned(&s.assign()).iter().all(|(w, _, _)| w == "master"));
    }

    #[test]
    fn recovered_shards_out_of_attempts_are_committed_failed() {
        let mut s = Clocked::new();
        let mut p = plan("x", 2, 1, 2);
        p.pending[1].attempt = 3;
        let cmds = s.add_job(p);
        assert!(
            matches!(&cmds[..], [Command::CommitLost { attempt: 2, failures, .. }] if failures.len() == 1),
            "{cmds:?}"
        );
    }

    #[test]
    fn stale_and_duplicate_reports_are_dropped() {
        let mut s = Clocked::new();
        s.add_worker("a", 1, ["j".to_string()], false);
        s.add_job(plan("x", 1, 1, 3));
        let key = assigned(&s.assign())[0].1;
        assert!(!s.report("b", "x", key, 1), "wrong worker");
        assert!(!s.report("a", "x", key, 2), "wrong attempt");
        assert!(s.report("a", "x", key, 1));
        assert!(!s.report("a", "x", key, 1), "duplicate");
        assert_eq!(
            s.committed("x", key, 1, &[]),
            vec![Command::Finish { job: "x".into() }]
        );
        assert!(
            s.committed("x", key, 1, &[]).is_empty(),
            "second commit is a no-op"
        );
    }

    #[test]
    fn retryable_failures_make_a_new_generation_until_attempts_run_out() {
        let mut s = Clocked::new();
        s.add_worker("a", 1, ["j".to_string()], false);
        s.add_job(plan("x", 1, 3, 2));
        let key = assigned(&s.assign())[0].1;
        assert!(s.report("a", "x", key, 1));
        let fail = |index, attempt| TaskFailure {
            index,
            error: "boom".into(),
            attempt,
            retryable: true,
        };
        let perm = TaskFailure {
            index: 2,
            error: "bad".into(),
            attempt: 1,
            retryable: false,
        };
        assert!(s.committed("x", key, 1, &[fail(0, 1), perm]).is_empty());
        let c = s.counters("x").unwrap();
        assert_eq!((c.tasks_done, c.tasks_failed, c.retries), (2, 1, 1));
        assert!(s.assign().is_empty(), "the retry waits out its backoff");
        let due = s.next_due().expect("a retry is due later");
        s.tick(due);
        let a = assigned(&s.assign());
        assert_eq!(
            a,
            vec![(
                "a".to_string(),
                ShardKey {
                    index: 0,
                    generation: 1
                },
                2
            )]
        );
        assert!(s.report("a", "x", a[0].1, 2));
        assert_eq!(
            s.committed("x", a[0].1, 2, &[fail(0, 2)]),
            vec![Command::Finish { job: "x".into() }]
        );
        let c = s.counters("x").unwrap();
        assert_eq!((c.tasks_done, c.tasks_failed), (3, 2));
    }

    /// Frames of the simulated links below, worker to master.
    #[derive(Debug, Clone)]
    enum Up {
        Started(ShardKey, u32),
        Report(ShardKey, u32),
        Unstarted(ShardKey, u32),
    }

    /// Master to worker.
    #[derive(Debug, Clone)]
    enum Down {
        Assign(ShardKey, u32, bool),
        Ack(ShardKey, u32),
        Refused(ShardKey, u32),
        Stop(ShardKey, u32),
    }

    /// A simulated one-slot worker: the real [`WorkerSession`], its link's
    /// frames in flight each way, and the run in its slot.
    struct SimWorker {
        id: String,
        session: crate::WorkerSession,
        up: VecDeque<Up>,
        down: VecDeque<Down>,
        running: Option<(ShardKey, u32)>,
    }

    impl SimWorker {
        fn run(key: ShardKey, attempt: u32) -> crate::worker_session::RunId {
            crate::worker_session::RunId {
                epoch: 1,
                job: "x".into(),
                incarnation: 0,
                shard: key,
                attempt,
            }
        }

        /// Reads one frame from the master, or ends its run (unless it is
        /// the killer's: that one never ends).
        fn step(&mut self, read: bool, killer: ShardKey) {
            use crate::worker_session::Action;
            let run = Self::run;
            let actions = if read {
                match self.down.pop_front() {
                    Some(Down::Assign(key, attempt, ack_first)) => self
                        .session
                        .assigned(run(key, attempt), ack_first, 0)
                        .unwrap_or_default(),
                    Some(Down::Ack(key, attempt)) => self.session.acked(&run(key, attempt)),
                    Some(Down::Refused(key, attempt)) => self.session.refused(&run(key, attempt)),
                    Some(Down::Stop(key, attempt)) => self.session.stop(&run(key, attempt)),
                    None => Vec::new(),
                }
            } else {
                match self.running {
                    Some((key, attempt)) if key != killer => {
                        self.running = None;
                        self.session.finished(&run(key, attempt))
                    }
                    _ => Vec::new(),
                }
            };
            for a in actions {
                match a {
                    Action::SendStarted(r) => self.up.push_back(Up::Started(r.shard, r.attempt)),
                    Action::Run(r) => self.running = Some((r.shard, r.attempt)),
                    Action::SendReport(r) => self.up.push_back(Up::Report(r.shard, r.attempt)),
                    Action::SendUnstarted(r) => {
                        self.up.push_back(Up::Unstarted(r.shard, r.attempt))
                    }
                    _ => {}
                }
            }
        }
    }

    /// The master's side of the simulation: the scheduler, what it
    /// committed, and what it charged.
    struct SimMaster {
        s: Clocked,
        seed: u64,
        killer: ShardKey,
        done: BTreeSet<ShardKey>,
        finished: bool,
        killer_failed_at: Option<u32>,
        revoked: u32,
    }

    impl SimMaster {
        /// Reads one frame of `worker`'s link; returns its answer.
        fn read(&mut self, worker: &str, frame: Up) -> Option<Down> {
            match frame {
                Up::Started(key, attempt) => match self.s.answer(worker, "x", key, attempt) {
                    StartAnswer::Ack => Some(Down::Ack(key, attempt)),
                    StartAnswer::Refuse => Some(Down::Refused(key, attempt)),
                    StartAnswer::Nothing => None,
                },
                Up::Report(key, attempt) => {
                    if self.s.report(worker, "x", key, attempt) {
                        assert!(self.done.insert(key), "seed {}: {key} twice", self.seed);
                        let cmds = self.s.committed("x", key, attempt, &[]);
                        self.finished |= !cmds.is_empty();
                    }
                    None
                }
                Up::Unstarted(key, attempt) => {
                    self.revoked += 1;
                    self.s.unstarted(worker, ("x", 0), key, attempt);
                    None
                }
            }
        }

        fn apply(&mut self, cmds: Vec<Command>, workers: &mut [SimWorker]) {
            let seed = self.seed;
            let link = |workers: &mut [SimWorker], id: &str, d: Down| {
                if let Some(w) = workers.iter_mut().find(|w| w.id == id) {
                    w.down.push_back(d);
                }
            };
            for c in cmds {
                match c {
                    Command::Assign {
                        worker,
                        shard,
                        ack_first,
                        ..
                    } => link(
                        workers,
                        &worker,
                        Down::Assign(shard.key, shard.attempt, ack_first),
                    ),
                    Command::Revoke {
                        worker,
                        key,
                        attempt,
                        ..
                    } => link(workers, &worker, Down::Refused(key, attempt)),
                    Command::Stop {
                        worker,
                        key,
                        attempt,
                        ..
                    } => link(workers, &worker, Down::Stop(key, attempt)),
                    Command::CommitLost {
                        key,
                        attempt,
                        failures,
                        ..
                    } => {
                        assert_eq!(key, self.killer, "seed {seed}: an innocent shard charged");
                        self.killer_failed_at = Some(attempt);
                        assert!(self.done.insert(key), "seed {seed}");
                        self.finished |= !self.s.committed("x", key, attempt, &failures).is_empty();
                    }
                    Command::RecordLoss { key, .. } => {
                        assert_eq!(key, self.killer, "seed {seed}: an innocent shard charged")
                    }
                    Command::Finish { .. } => self.finished = true,
                }
            }
        }
    }

    /// Real worker sessions against the scheduler, over ordered links. One
    /// shard's task kills its worker whenever it runs, and a death loses
    /// whatever that worker's link still carried toward the master.
    /// Whatever the timing, the killer is charged one attempt per death (at
    /// most one death more when it has a single attempt), no other shard
    /// is ever charged, and every other task is done once.
    #[test]
    fn a_task_that_kills_its_worker_is_charged_per_death_and_nothing_beside_it() {
        let mut deaths_seen = [0u32; 5];
        let mut revoked = 0;
        for seed in 0..400u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let shards = rng.gen_range(2..30);
            let max_attempts = rng.gen_range(1..5);
            let killer = ShardKey {
                index: rng.gen_range(0..shards),
                generation: 0,
            };
            let mut m = SimMaster {
                s: Clocked::new(),
                seed,
                killer,
                done: BTreeSet::new(),
                finished: false,
                killer_failed_at: None,
                revoked: 0,
            };
            m.s.add_job(plan("x", shards, 1, max_attempts));
            let mut workers: Vec<SimWorker> = Vec::new();
            let (mut next_id, mut deaths) = (0, 0u32);
            for _step in 0..20_000 {
                if m.finished {
                    break;
                }
                while workers.len() < 3 {
                    next_id += 1;
                    let id = format!("w{next_id}");
                    let mut session = crate::WorkerSession::new(1);
                    assert!(session.connected(1).is_empty());
                    m.s.add_worker(&id, 1, ["j".to_string()], false);
                    workers.push(SimWorker {
                        id,
                        session,
                        up: VecDeque::new(),
                        down: VecDeque::new(),
                        running: None,
                    });
                }
                let w = rng.gen_range(0..workers.len());
                match rng.gen_range(0..5) {
                    0 => {
                        let cmds = m.s.assign();
                        m.apply(cmds, &mut workers);
                    }
                    1 => {
                        if let Some(f) = workers[w].up.pop_front() {
                            let id = workers[w].id.clone();
                            if let Some(answer) = m.read(&id, f) {
                                workers[w].down.push_back(answer);
                            }
                        }
                    }
                    _ => workers[w].step(rng.gen_bool(0.5), killer),
                }
                // The killer's run kills its worker, and a random suffix of
                // what its link carried is lost with it.
                let Some(i) = workers
                    .iter()
                    .position(|x| x.running.is_some_and(|(k, _)| k == killer))
                else {
                    continue;
                };
                if rng.gen_bool(0.7) {
                    continue;
                }
                let mut dead = workers.swap_remove(i);
                let keep = rng.gen_range(0..=dead.up.len());
                dead.up.truncate(keep);
                while let Some(f) = dead.up.pop_front() {
                    m.read(&dead.id, f);
                }
                deaths += 1;
                let cmds = m.s.remove_worker(&dead.id);
                assert!(
                    cmds.iter().all(|c| !matches!(c, Command::Assign { .. })),
                    "seed {seed}"
                );
                m.apply(cmds, &mut workers);
            }
            assert!(m.finished, "seed {seed}: unfinished after {deaths} deaths");
            assert_eq!(m.done.len() as u32, shards, "seed {seed}");
            assert!(
                m.killer_failed_at.is_some(),
                "seed {seed}: the killer was never failed"
            );
            let most = max_attempts.max(2);
            assert!(
                (max_attempts..=most).contains(&deaths),
                "seed {seed}: {deaths} deaths for {max_attempts} attempts"
            );
            deaths_seen[deaths as usize] += 1;
            revoked += m.revoked;
        }
        // Both kinds of first death were met: exact, and in doubt; and
        // queued runs were moved.
        assert!(deaths_seen[1] > 0 && deaths_seen[2] > 0, "{deaths_seen:?}");
        assert!(revoked > 0, "no queued run was ever moved");
    }

    /// A deterministic simulation: virtual workers join, die, drain and run
    /// slow; shards fail, get retried, backed off and speculated; virtual
    /// time advances. Every seed must end with each task having exactly one
    /// final outcome, no worker over its capacity, and no report accepted
    /// twice for one shard.
    /// A run a virtual worker holds: (worker, key, attempt, tasks, started).
    type Held = (String, ShardKey, u32, Vec<u64>, bool);

    /// Returns how many queued runs were stopped (a copy's report came
    /// first) and dropped.
    fn simulate(seed: u64, max_workers: usize, shards: u32) -> u32 {
        let stopped_queued = std::cell::Cell::new(0u32);
        let mut rng = StdRng::seed_from_u64(seed);
        let t0 = Instant::now();
        let mut now = t0;
        let mut s = Clocked::new();
        s.tick(now);
        let per = rng.gen_range(1..4);
        let max_attempts = rng.gen_range(1..4);
        let mut p = plan("x", shards, per, max_attempts);
        if rng.gen_bool(0.5) {
            p.shard_timeout = Some(Duration::from_millis(rng.gen_range(50..500)));
        }
        s.add_job(p);
        // (worker, key, attempt, tasks, started) of runs the virtual workers
        // hold: a worker starts at most its capacity, the rest wait in its
        // queue, and only a started run reports.
        let mut runs: Vec<Held> = Vec::new();
        let mut alive: Vec<String> = Vec::new();
        let mut outcome: BTreeMap<u64, u32> = BTreeMap::new();
        let mut committed: BTreeSet<ShardKey> = BTreeSet::new();
        let mut next_worker = 0;
        let mut capacity_of: BTreeMap<String, usize> = BTreeMap::new();
        let mut finished = false;
        let handle = |cmds: Vec<Command>,
                      s: &mut Clocked,
                      runs: &mut Vec<Held>,
                      outcome: &mut BTreeMap<u64, u32>,
                      committed: &mut BTreeSet<ShardKey>,
                      rng: &mut StdRng,
                      capacity_of: &BTreeMap<String, usize>|
         -> bool {
            let mut done = false;
            for c in cmds {
                match c {
                    Command::Assign { worker, shard, .. } => {
                        let busy = runs.iter().filter(|r| r.0 == worker && r.4).count();
                        let start = busy < capacity_of.get(&worker).copied().unwrap_or(0)
                            && rng.gen_bool(0.8)
                            && s.started(&worker, "x", shard.key, shard.attempt);
                        runs.push((worker, shard.key, shard.attempt, shard.tasks, start));
                    }
                    Command::CommitLost {
                        key,
                        attempt,
                        failures,
                        ..
                    } => {
                        assert!(committed.insert(key), "seed {seed}: {key} committed twice");
                        for f in &failures {
                            *outcome.entry(f.index).or_default() += 1;
                        }
                        done |= !s.committed("x", key, attempt, &failures).is_empty();
                    }
                    Command::Finish { .. } => done = true,
                    Command::RecordLoss { .. } => {}
                    Command::Revoke {
                        ref worker,
                        key,
                        attempt,
                        ..
                    }
                    | Command::Stop {
                        ref worker,
                        key,
                        attempt,
                        ..
                    } => {
                        // Dropped if it waits in the worker's queue; a
                        // started one runs on (moved: it stays; stopped:
                        // it is told to stop, and reports).
                        let queued = runs
                            .iter()
                            .position(|r| r.0 == *worker && r.1 == key && r.2 == attempt && !r.4);
                        if let Some(i) = queued {
                            runs.swap_remove(i);
                            s.unstarted(worker, ("x", 0), key, attempt);
                            if matches!(c, Command::Stop { .. }) {
                                stopped_queued.set(stopped_queued.get() + 1);
                            }
                        }
                    }
                }
            }
            done
        };
        for step in 0..200_000 {
            if finished {
                break;
            }
            now += Duration::from_millis(rng.gen_range(0..20));
            s.tick(now);
            match rng.gen_range(0..20) {
                0 | 1 if alive.len() < max_workers => {
                    next_worker += 1;
                    let id = format!("w{next_worker}");
                    let fallback = rng.gen_bool(0.1);
                    let capacity = rng.gen_range(1..4);
                    capacity_of.insert(id.clone(), capacity as usize);
                    let cmds = s.add_worker(&id, capacity, ["j".to_string()], fallback);
                    alive.push(id);
                    finished |= handle(
                        cmds,
                        &mut s,
                        &mut runs,
                        &mut outcome,
                        &mut committed,
                        &mut rng,
                        &capacity_of,
                    );
                }
                2 if !alive.is_empty() => {
                    let w = alive.swap_remove(rng.gen_range(0..alive.len()));
                    let cmds = s.remove_worker(&w);
                    runs.retain(|r| r.0 != w);
                    finished |= handle(
                        cmds,
                        &mut s,
                        &mut runs,
                        &mut outcome,
                        &mut committed,
                        &mut rng,
                        &capacity_of,
                    );
                }
                3 if !alive.is_empty() && rng.gen_bool(0.2) => {
                    let w = alive[rng.gen_range(0..alive.len())].clone();
                    s.drain_worker(&w);
                }
                4..=7 => {
                    let cmds = s.assign();
                    for c in &cmds {
                        if let Command::Assign { worker, .. } = c {
                            assert!(
                                s.running_on(worker)
                                    <= capacity_of[worker] * (1 + SHORT_RUN_PREFETCH as usize),
                                "seed {seed}: {worker} holds more than its slots and queue"
                            );
                        }
                    }
                    finished |= handle(
                        cmds,
                        &mut s,
                        &mut runs,
                        &mut outcome,
                        &mut committed,
                        &mut rng,
                        &capacity_of,
                    );
                }
                8 => {
                    let cmds = s.speculate();
                    finished |= handle(
                        cmds,
                        &mut s,
                        &mut runs,
                        &mut outcome,
                        &mut committed,
                        &mut rng,
                        &capacity_of,
                    );
                }
                9 if !runs.is_empty() => {
                    // A worker's slot takes the next run of its queue.
                    let i = rng.gen_range(0..runs.len());
                    let w = runs[i].0.clone();
                    let busy = runs.iter().filter(|r| r.0 == w && r.4).count();
                    if !runs[i].4 && busy < capacity_of.get(&w).copied().unwrap_or(0) {
                        let (key, attempt) = (runs[i].1, runs[i].2);
                        if s.started(&w, "x", key, attempt) {
                            runs[i].4 = true;
                        } else {
                            // Refused (moved elsewhere, or no longer
                            // wanted): the worker forgets it.
                            runs.swap_remove(i);
                        }
                    }
                }
                _ if runs.iter().any(|r| r.4) => {
                    let started: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].4).collect();
                    let i = started[rng.gen_range(0..started.len())];
                    let (w, key, attempt, tasks, _) = runs.swap_remove(i);
                    let at = s.now;
                    if let Some(stops) = s.s.report(&w, ("x", 0), key, attempt, at) {
                        finished |= handle(
                            stops,
                            &mut s,
                            &mut runs,
                            &mut outcome,
                            &mut committed,
                            &mut rng,
                            &capacity_of,
                        );
                        assert!(committed.insert(key), "seed {seed}: {key} committed twice");
                        let mut failures: Vec<TaskFailure> = Vec::new();
                        for &index in &tasks {
                            if rng.gen_bool(0.2) {
                                let retryable = rng.gen_bool(0.8);
                                failures.push(TaskFailure {
                                    index,
                                    error: "e".into(),
                                    attempt,
                                    retryable,
                                });
                            }
                        }
                        for &t in &tasks {
                            let f = failures.iter().find(|f| f.index == t);
                            if f.is_none_or(|f| f.is_final(max_attempts)) {
                                *outcome.entry(t).or_default() += 1;
                            }
                        }
                        finished |= !s.committed("x", key, attempt, &failures).is_empty();
                    }
                }
                _ => {}
            }
            if shards <= 100 || step % 1000 == 0 {
                s.check_indexes();
            }
        }
        if !finished {
            // Drain what is left with one reliable worker and no more faults.
            s.add_worker("last", 4, ["j".to_string()], false);
            for _ in 0..100_000 {
                if finished {
                    break;
                }
                now += Duration::from_millis(50);
                s.tick(now);
                let cmds = s.assign();
                for c in cmds {
                    if let Command::Assign { worker, shard, .. } = c {
                        if s.report(&worker, "x", shard.key, shard.attempt) {
                            assert!(
                                committed.insert(shard.key),
                                "seed {seed}: {} committed twice",
                                shard.key
                            );
                            for &t in &shard.tasks {
                                *outcome.entry(t).or_default() += 1;
                            }
                            finished |= !s.committed("x", shard.key, shard.attempt, &[]).is_empty();
                        }
                    }
                }
                // Runs held by workers that stay silent: report them from "last"'s view.
                for (w, key, attempt, tasks, _) in std::mem::take(&mut runs) {
                    if s.report(&w, "x", key, attempt) {
                        assert!(committed.insert(key));
                        for &t in &tasks {
                            *outcome.entry(t).or_default() += 1;
                        }
                        finished |= !s.committed("x", key, attempt, &[]).is_empty();
                    }
                }
                for w in std::mem::take(&mut alive) {
                    let cmds = s.remove_worker(&w);
                    finished |= handle(
                        cmds,
                        &mut s,
                        &mut runs,
                        &mut outcome,
                        &mut committed,
                        &mut rng,
                        &capacity_of,
                    );
                }
            }
        }
        let total = u64::from(shards) * per;
        assert!(finished, "seed {seed}: job did not finish");
        assert_eq!(
            outcome.len() as u64,
            total,
            "seed {seed}: every task has an outcome"
        );
        assert!(
            outcome.values().all(|&n| n == 1),
            "seed {seed}: exactly one final outcome per task"
        );
        assert_eq!(s.counters("x").unwrap().tasks_done, total, "seed {seed}");
        stopped_queued.get()
    }

    #[test]
    fn a_small_job_takes_its_turn_beside_a_big_one() {
        let mut s = Clocked::new();
        s.add_worker("a", 1, ["j".to_string()], false);
        s.add_job(plan("big", 1000, 1, 3));
        // One in its slot, the rest in its queue.
        let n = RUNS_PER_SLOT;
        assert_eq!(assigned(&s.assign()).len() as u32, n);
        s.add_job(plan("small", 1, 1, 3));
        // Two free (after runs long enough to keep the queue as it is):
        // the small job's turn comes before the big job's other shards.
        let later = s.now + SHORT_RUN * 10;
        s.tick(later);
        for index in 0..2 {
            let k = ShardKey {
                index,
                generation: 0,
            };
            assert!(s.report("a", "big", k, 1));
            s.committed("big", k, 1, &[]);
        }
        let cmds = s.assign();
        let mut jobs: Vec<&str> = cmds
            .iter()
            .filter_map(|c| match c {
                Command::Assign { job, .. } => Some(job.as_str()),
                _ => None,
            })
            .collect();
        jobs.sort();
        assert_eq!(jobs, ["big", "small"]);
        assert_eq!(s.queued() as u32, 1000 - n - 1);
        s.check_indexes();
    }

    #[test]
    fn a_job_no_worker_runs_does_not_block_the_others() {
        let mut s = Clocked::new();
        s.add_worker("a", 2, ["j".to_string()], false);
        let mut other = plan("other", 5, 1, 3);
        other.name = "nobody-runs-this".into();
        s.add_job(other);
        s.add_job(plan("x", 2 * RUNS_PER_SLOT + 1, 1, 3));
        let a = assigned(&s.assign());
        assert_eq!(
            a.len() as u32,
            2 * RUNS_PER_SLOT,
            "x's shards run while other's wait"
        );
        assert_eq!(s.queued(), 6);
        s.check_indexes();
    }

    /// Many jobs at once, cancelled at random, over workers that come and
    /// go: the indexes stay true to the state after every event, and a job
    /// left alone finishes with each task counted once.
    #[test]
    fn simulation_many_jobs_with_cancellations() {
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = Clocked::new();
            let mut now = Instant::now();
            let mut runs: Vec<(String, String, ShardKey, u32)> = Vec::new();
            let mut jobs: BTreeSet<String> = BTreeSet::new();
            let mut finished = 0;
            let mut next = 0;
            let mut apply = |cmds: Vec<Command>,
                             runs: &mut Vec<(String, String, ShardKey, u32)>,
                             jobs: &mut BTreeSet<String>| {
                for c in cmds {
                    match c {
                        Command::Assign {
                            worker, job, shard, ..
                        } => runs.push((worker, job, shard.key, shard.attempt)),
                        Command::Finish { job } => {
                            assert!(jobs.remove(&job), "seed {seed}: {job} finished twice");
                            finished += 1;
                        }
                        Command::CommitLost { .. }
                        | Command::RecordLoss { .. }
                        | Command::Revoke { .. }
                        | Command::Stop { .. } => {}
                    }
                }
            };
            for _ in 0..3_000 {
                now += Duration::from_millis(rng.gen_range(0..30));
                s.tick(now);
                match rng.gen_range(0..12) {
                    0 => {
                        next += 1;
                        let id = format!("j{next}");
                        jobs.insert(id.clone());
                        let p = plan(&id, rng.gen_range(0..6), 1, 3);
                        let cmds = s.add_job(at_priority(p, rng.gen_range(0..=MAX_PRIORITY)));
                        apply(cmds, &mut runs, &mut jobs);
                    }
                    1 if !jobs.is_empty() => {
                        let id = jobs.iter().nth(rng.gen_range(0..jobs.len())).cloned();
                        if let Some(id) = id {
                            s.remove_job(&id);
                            jobs.remove(&id);
                        }
                    }
                    2 => {
                        let w = format!("w{}", rng.gen_range(0..4));
                        let cmds = s.add_worker(&w, rng.gen_range(1..3), ["j".into()], false);
                        runs.retain(|r| r.0 != w);
                        apply(cmds, &mut runs, &mut jobs);
                    }
                    3 => {
                        let w = format!("w{}", rng.gen_range(0..4));
                        let cmds = s.remove_worker(&w);
                        runs.retain(|r| r.0 != w);
                        apply(cmds, &mut runs, &mut jobs);
                    }
                    4 => {
                        let cmds = s.speculate();
                        apply(cmds, &mut runs, &mut jobs);
                    }
                    5..=7 => {
                        let cmds = s.assign();
                        apply(cmds, &mut runs, &mut jobs);
                    }
                    _ if !runs.is_empty() => {
                        let (w, job, key, attempt) = runs.swap_remove(rng.gen_range(0..runs.len()));
                        if rng.gen_bool(0.8) {
                            s.started(&w, &job, key, attempt);
                        }
                        if s.report(&w, &job, key, attempt) {
                            if rng.gen_bool(0.1) {
                                s.commit_aborted(&job, key);
                            } else {
                                let failures = if rng.gen_bool(0.2) {
                                    vec![TaskFailure {
                                        index: u64::from(key.index),
                                        error: "e".into(),
                                        attempt,
                                        retryable: true,
                                    }]
                                } else {
                                    Vec::new()
                                };
                                let cmds = s.committed(&job, key, attempt, &failures);
                                apply(cmds, &mut runs, &mut jobs);
                            }
                        }
                    }
                    _ => {}
                }
                s.check_indexes();
            }
            assert!(finished > 0, "seed {seed}: no job finished");
        }
    }

    #[test]
    fn simulation_small_clusters() {
        let mut stopped = 0;
        for seed in 0..300 {
            stopped += simulate(seed, 8, 40);
        }
        assert!(stopped > 0, "no copy's report ever stopped a queued run");
    }

    #[test]
    fn simulation_thousands_of_workers() {
        for seed in 0..4 {
            simulate(1000 + seed, 3000, 5000);
        }
    }
}
