//! The master's scheduler: a state machine fed with worker, job and report
//! events, answering with [`Command`]s for the master actor to carry out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::{split_failures, Counters, ShardKey, TaskFailure};

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

/// A job handed to the scheduler: new, or rebuilt from ZooKeeper by a new master.
#[derive(Debug, Clone)]
pub struct JobPlan {
    /// Job id.
    pub id: String,
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
        /// The shard.
        shard: PendingShard,
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
    /// Every task of the job has a committed final outcome.
    Finish {
        /// Job id.
        job: String,
    },
}

#[derive(Debug)]
struct WorkerSlot {
    capacity: u32,
    /// Used only when no other worker can run the job (the master's own
    /// worker: user code that crashes its process should not take the
    /// master down while other workers exist).
    fallback: bool,
    jobs: BTreeSet<String>,
    running: BTreeSet<(String, ShardKey)>,
    /// Its entry in the free index (its load then), if it has a free slot.
    indexed: Option<usize>,
}

/// Workers with a free slot, ordered by load: picking the least-loaded
/// eligible worker is a walk from the front, not a scan of every worker.
type FreeIndex = BTreeSet<(usize, String)>;

fn reindex(workers: &mut BTreeMap<String, WorkerSlot>, free: &mut FreeIndex, id: &str) {
    let Some(w) = workers.get_mut(id) else { return };
    if let Some(load) = w.indexed.take() {
        free.remove(&(load, id.to_string()));
    }
    let load = w.running.len();
    if (load as u32) < w.capacity {
        free.insert((load, id.to_string()));
        w.indexed = Some(load);
    }
}

fn hold(
    workers: &mut BTreeMap<String, WorkerSlot>,
    free: &mut FreeIndex,
    id: &str,
    job: &str,
    key: ShardKey,
) {
    if let Some(w) = workers.get_mut(id) {
        w.running.insert((job.to_string(), key));
    }
    reindex(workers, free, id);
}

fn release(
    workers: &mut BTreeMap<String, WorkerSlot>,
    free: &mut FreeIndex,
    id: &str,
    job: &str,
    key: ShardKey,
) {
    if let Some(w) = workers.get_mut(id) {
        w.running.remove(&(job.to_string(), key));
    }
    reindex(workers, free, id);
}

/// One copy of a shard on a worker.
#[derive(Debug)]
struct Run {
    worker: String,
    /// The worker's slot picked it up (acknowledged `Started`).
    started: bool,
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
    /// A retry waits out its backoff before it runs again.
    not_before: Option<Instant>,
    /// Started runs of the current attempt lost with their worker.
    losses: u32,
    /// The worker whose attempt failed: another one is preferred.
    avoid: Option<String>,
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
    name: String,
    max_attempts: u32,
    /// A run older than this gets a copy on another worker.
    shard_timeout: Option<Duration>,
    /// Moving average of how long this job's shards take (assignment to report).
    typical: Option<Duration>,
    counters: Counters,
    shards: BTreeMap<ShardKey, ShardState>,
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
    workers: BTreeMap<String, WorkerSlot>,
    free: FreeIndex,
    jobs: BTreeMap<String, JobState>,
    queue: VecDeque<(String, ShardKey)>,
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
            indexed: None,
        };
        let mut out = Vec::new();
        if let Some(old) = self.workers.insert(id.to_string(), slot) {
            if let Some(load) = old.indexed {
                self.free.remove(&(load, id.to_string()));
            }
            // Re-registration: whatever it ran before is lost.
            self.requeue_lost(id, old.running, &mut out);
        }
        reindex(&mut self.workers, &mut self.free, id);
        out
    }

    /// A worker is gone (znode deleted or link lost). Its running shards go
    /// back to the queue with one attempt used; shards out of attempts are
    /// committed as failed.
    pub fn remove_worker(&mut self, id: &str) -> Vec<Command> {
        let mut out = Vec::new();
        if let Some(slot) = self.workers.remove(id) {
            if let Some(load) = slot.indexed {
                self.free.remove(&(load, id.to_string()));
            }
            self.requeue_lost(id, slot.running, &mut out);
        }
        out
    }

    fn requeue_lost(
        &mut self,
        worker: &str,
        running: BTreeSet<(String, ShardKey)>,
        out: &mut Vec<Command>,
    ) {
        for (job_id, key) in running {
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
            // Every started run that dies counts, even while a copy carries
            // on: a task that kills its workers must not kill two per attempt.
            if run.started {
                shard.losses += 1;
            }
            if !runs.is_empty() {
                continue;
            }
            let used = shard.attempt + shard.losses.saturating_sub(1);
            if shard.losses == 0 {
                // Still waiting for a slot when the worker went: not a suspect.
                shard.phase = ShardPhase::Pending;
                self.queue.push_front((job_id, key));
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
            } else {
                shard.attempt = used + 1;
                shard.losses = 0;
                shard.phase = ShardPhase::Pending;
                out.push(Command::RecordLoss {
                    job: job_id.clone(),
                    key,
                    next_attempt: shard.attempt,
                });
                self.queue.push_front((job_id, key));
            }
        }
    }

    /// A worker is leaving gracefully: it gets nothing new, and the shards
    /// it holds but has not started go back to the queue without using an
    /// attempt. Its started shards stay its own until reported.
    pub fn drain_worker(&mut self, id: &str) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        w.capacity = 0;
        let held: Vec<(String, ShardKey)> = w.running.iter().cloned().collect();
        for (job_id, key) in held {
            let Some(shard) = self
                .jobs
                .get_mut(&job_id)
                .and_then(|j| j.shards.get_mut(&key))
            else {
                continue;
            };
            let ShardPhase::Running { runs } = &mut shard.phase else {
                continue;
            };
            let Some(pos) = runs.iter().position(|r| r.worker == id && !r.started) else {
                continue;
            };
            runs.remove(pos);
            release(&mut self.workers, &mut self.free, id, &job_id, key);
            if runs.is_empty() {
                shard.phase = ShardPhase::Pending;
                self.queue.push_front((job_id, key));
            }
        }
        reindex(&mut self.workers, &mut self.free, id);
    }

    /// Adds a job's pending shards to the end of the queue. A job with
    /// nothing pending finishes at once.
    pub fn add_job(&mut self, plan: JobPlan) -> Vec<Command> {
        let max_attempts = plan.max_attempts.max(1);
        let mut out = Vec::new();
        let mut shards = BTreeMap::new();
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
                self.queue.push_back((plan.id.clone(), p.key));
                ShardPhase::Pending
            };
            shards.insert(
                p.key,
                ShardState {
                    tasks: p.tasks,
                    attempt,
                    phase,
                    not_before: None,
                    avoid: None,
                    losses: 0,
                },
            );
        }
        let empty = shards.is_empty();
        self.jobs.insert(
            plan.id.clone(),
            JobState {
                name: plan.name,
                max_attempts,
                shard_timeout: plan.shard_timeout,
                typical: None,
                counters: plan.counters,
                shards,
            },
        );
        if empty {
            out.push(Command::Finish { job: plan.id });
        }
        out
    }

    /// Forgets a job (finished or cancelled); its running shards' reports will be ignored.
    pub fn remove_job(&mut self, id: &str) {
        if self.jobs.remove(id).is_some() {
            self.queue.retain(|(j, _)| j != id);
            let ids: Vec<String> = self.workers.keys().cloned().collect();
            for w in &ids {
                if let Some(slot) = self.workers.get_mut(w) {
                    slot.running.retain(|(j, _)| j != id);
                }
                reindex(&mut self.workers, &mut self.free, w);
            }
        }
    }

    /// Hands queued shards to workers with free capacity, least loaded first.
    pub fn assign(&mut self, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        let mut skipped = VecDeque::new();
        let mut no_worker_for: BTreeSet<String> = BTreeSet::new();
        while let Some((job_id, key)) = self.queue.pop_front() {
            let Some(job) = self.jobs.get(&job_id) else {
                continue;
            };
            let Some(shard) = job.shards.get(&key) else {
                continue;
            };
            if !matches!(shard.phase, ShardPhase::Pending) {
                continue;
            }
            if let Some(due) = shard.not_before {
                if due > now {
                    skipped.push_back((job_id, key));
                    continue;
                }
            }
            if no_worker_for.contains(&job.name) {
                skipped.push_back((job_id, key));
                continue;
            }
            match self.pick(&job.name, shard.avoid.as_deref(), false) {
                Some(wid) => out.push(self.place(&job_id, key, wid, now)),
                None => {
                    // Nobody can take this job now: don't ask again for its other shards.
                    no_worker_for.insert(job.name.clone());
                    skipped.push_back((job_id, key));
                    if self.free.is_empty() {
                        break;
                    }
                }
            }
        }
        skipped.append(&mut self.queue);
        self.queue = skipped;
        out
    }

    /// The least-loaded worker with a free slot that runs job `name`: a
    /// fallback worker only when no other can run it, and not `avoid` if
    /// another is free (never `avoid`, nor a fallback, if `must_avoid`).
    fn pick(&self, name: &str, avoid: Option<&str>, must_avoid: bool) -> Option<String> {
        let use_fallback = !self
            .workers
            .values()
            .any(|w| !w.fallback && w.capacity > 0 && w.jobs.contains(name));
        let mut avoided = None;
        for (_, id) in &self.free {
            let Some(w) = self.workers.get(id) else {
                continue;
            };
            // Speculative copies (must_avoid) never go to a fallback worker:
            // a shard that ran too long may be what kills its workers.
            if !w.jobs.contains(name) || (w.fallback && (must_avoid || !use_fallback)) {
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

    /// Puts a run of the shard on `worker` and says so.
    fn place(&mut self, job_id: &str, key: ShardKey, worker: String, now: Instant) -> Command {
        hold(&mut self.workers, &mut self.free, &worker, job_id, key);
        let shard = self
            .jobs
            .get_mut(job_id)
            .and_then(|j| j.shards.get_mut(&key));
        let (tasks, attempt) = match shard {
            Some(shard) => {
                let run = Run {
                    worker: worker.clone(),
                    started: false,
                    since: now,
                };
                match &mut shard.phase {
                    ShardPhase::Running { runs } => runs.push(run),
                    phase => *phase = ShardPhase::Running { runs: vec![run] },
                }
                (shard.tasks.clone(), shard.attempt)
            }
            None => (Vec::new(), 0),
        };
        Command::Assign {
            worker,
            job: job_id.to_string(),
            shard: PendingShard {
                key,
                tasks,
                attempt,
            },
        }
    }

    /// Shards whose only run is older than their job's limit (its shard
    /// timeout, or 4x its typical shard time and at least a second) get a
    /// copy on another worker; whichever reports first is committed.
    pub fn speculate(&mut self, now: Instant) -> Vec<Command> {
        let mut wanted = Vec::new();
        for (job_id, job) in &self.jobs {
            let limit = job
                .shard_timeout
                .or(job.typical.map(|t| (t * 4).max(Duration::from_secs(1))));
            let Some(limit) = limit else {
                continue;
            };
            for (key, shard) in &job.shards {
                if let ShardPhase::Running { runs } = &shard.phase {
                    if let [run] = &runs[..] {
                        if now.saturating_duration_since(run.since) > limit {
                            wanted.push((
                                job_id.clone(),
                                *key,
                                job.name.clone(),
                                run.worker.clone(),
                            ));
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (job_id, key, name, busy_on) in wanted {
            if let Some(wid) = self.pick(&name, Some(&busy_on), true) {
                out.push(self.place(&job_id, key, wid, now));
            }
        }
        out
    }

    /// When the earliest retry waiting out its backoff after `now` becomes due.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        self.jobs
            .values()
            .flat_map(|j| j.shards.values())
            .filter(|s| matches!(s.phase, ShardPhase::Pending))
            .filter_map(|s| s.not_before)
            .filter(|due| *due > now)
            .min()
    }

    /// A worker's slot picked up a shard: from now on, losing the worker
    /// uses up an attempt of the shard's tasks (one of them may be what
    /// killed it). Shards lost before they started are requeued for free.
    /// Returns false when the worker holds no run of that shard and attempt
    /// (committed by another copy, cancelled, reassigned): it must not run.
    pub fn started(&mut self, worker: &str, job_id: &str, key: ShardKey, attempt: u32) -> bool {
        let run = self
            .jobs
            .get_mut(job_id)
            .and_then(|j| j.shards.get_mut(&key))
            .filter(|shard| shard.attempt == attempt)
            .and_then(|shard| match &mut shard.phase {
                ShardPhase::Running { runs } => runs.iter_mut().find(|r| r.worker == worker),
                _ => None,
            });
        match run {
            Some(run) => {
                run.started = true;
                true
            }
            // Not (or no longer) this worker's run: it must not start, or
            // its crash would cost nothing and its report count for nothing.
            None => false,
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

    /// A worker reported on a shard. Returns true if the report is the one
    /// awaited (the shard now waits for its commit); false for a stale or
    /// duplicate report, which must be dropped.
    pub fn report(
        &mut self,
        worker: &str,
        job_id: &str,
        key: ShardKey,
        attempt: u32,
        now: Instant,
    ) -> bool {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return false;
        };
        let Some(shard) = job.shards.get_mut(&key) else {
            return false;
        };
        let ShardPhase::Running { runs } = &shard.phase else {
            return false;
        };
        let Some(run) = runs.iter().find(|r| r.worker == worker) else {
            return false;
        };
        if shard.attempt != attempt {
            return false;
        }
        let took = now.saturating_duration_since(run.since);
        job.typical = Some(job.typical.map_or(took, |t| (t * 7 + took) / 8));
        let runners: Vec<String> = runs.iter().map(|r| r.worker.clone()).collect();
        shard.phase = ShardPhase::Committing {
            worker: Some(worker.to_string()),
        };
        for r in runners {
            release(&mut self.workers, &mut self.free, &r, job_id, key);
        }
        true
    }

    /// A commit could not be made for a transient reason: run the shard again.
    pub fn commit_aborted(&mut self, job_id: &str, key: ShardKey) {
        if let Some(shard) = self
            .jobs
            .get_mut(job_id)
            .and_then(|j| j.shards.get_mut(&key))
        {
            if matches!(shard.phase, ShardPhase::Committing { .. }) {
                shard.phase = ShardPhase::Pending;
                self.queue.push_front((job_id.to_string(), key));
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
        let Some(shard) = job.shards.remove(&key) else {
            return Vec::new();
        };
        if let ShardPhase::Running { runs } = &shard.phase {
            for r in runs {
                release(&mut self.workers, &mut self.free, &r.worker, job_id, key);
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
            job.shards.insert(
                next,
                ShardState {
                    tasks: retry.iter().map(|f| f.index).collect(),
                    attempt: attempt + 1,
                    phase: ShardPhase::Pending,
                    not_before: Some(now + retry_delay(job_id, next, attempt + 1)),
                    avoid: ran_on,
                    losses: 0,
                },
            );
            self.queue.push_back((job_id.to_string(), next));
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

    /// Shards a worker is running now.
    pub fn running_on(&self, worker: &str) -> usize {
        self.workers.get(worker).map_or(0, |w| w.running.len())
    }

    /// Whether the worker is known.
    pub fn has_worker(&self, worker: &str) -> bool {
        self.workers.contains_key(worker)
    }

    /// Shards waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
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
        fn report(&mut self, worker: &str, job: &str, key: ShardKey, attempt: u32) -> bool {
            self.s.report(worker, job, key, attempt, self.now)
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
        }
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

    #[test]
    fn respects_capacity_and_job_names() {
        let mut s = Clocked::new();
        s.add_worker("a", 2, ["j".to_string()], false);
        s.add_worker("b", 1, ["other".to_string()], false);
        s.add_job(plan("x", 5, 1, 3));
        let a = assigned(&s.assign());
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|(w, _, _)| w == "a"));
        assert!(s.assign().is_empty());
        assert_eq!(s.queued(), 3);
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

    #[test]
    fn shards_lost_before_they_started_keep_their_attempts() {
        let mut s = Clocked::new();
        s.add_worker("a", 2, ["j".to_string()], false);
        s.add_job(plan("x", 2, 1, 1));
        let a = assigned(&s.assign());
        s.started("a", "x", a[0].1, 1);
        let cmds = s.remove_worker("a");
        // The started one had its only attempt: failed. The queued one is free.
        assert!(
            matches!(&cmds[..], [Command::CommitLost { key, .. }] if *key == a[0].1),
            "{cmds:?}"
        );
        s.add_worker("b", 2, ["j".to_string()], false);
        assert_eq!(assigned(&s.assign()), vec![("b".to_string(), a[1].1, 1)]);
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
        let mut s = Clocked::new();
        s.tick(t0);
        s.add_worker("a", 1, ["j".to_string()], false);
        let mut p = plan("x", 1, 1, 1);
        p.shard_timeout = Some(Duration::from_secs(1));
        s.add_job(p);
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
        s.add_job(plan("x", 3, 1, 3));
        let a = assigned(&s.assign());
        assert_eq!(a.len(), 1, "the full regular worker is waited for: {a:?}");
        assert_eq!(a[0].0, "w");
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

    /// A deterministic simulation: virtual workers join, die, drain and run
    /// slow; shards fail, get retried, backed off and speculated; virtual
    /// time advances. Every seed must end with each task having exactly one
    /// final outcome, no worker over its capacity, and no report accepted
    /// twice for one shard.
    fn simulate(seed: u64, max_workers: usize, shards: u32) {
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
        // (worker, key, attempt, tasks) of runs the virtual workers hold.
        let mut runs: Vec<(String, ShardKey, u32, Vec<u64>)> = Vec::new();
        let mut alive: Vec<String> = Vec::new();
        let mut outcome: BTreeMap<u64, u32> = BTreeMap::new();
        let mut committed: BTreeSet<ShardKey> = BTreeSet::new();
        let mut next_worker = 0;
        let mut capacity_of: BTreeMap<String, usize> = BTreeMap::new();
        let mut finished = false;
        let handle = |cmds: Vec<Command>,
                      s: &mut Clocked,
                      runs: &mut Vec<(String, ShardKey, u32, Vec<u64>)>,
                      outcome: &mut BTreeMap<u64, u32>,
                      committed: &mut BTreeSet<ShardKey>,
                      rng: &mut StdRng|
         -> bool {
            let mut done = false;
            for c in cmds {
                match c {
                    Command::Assign { worker, shard, .. } => {
                        if rng.gen_bool(0.8) {
                            s.started(&worker, "x", shard.key, shard.attempt);
                        }
                        runs.push((worker, shard.key, shard.attempt, shard.tasks));
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
                }
            }
            done
        };
        for _step in 0..200_000 {
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
                    );
                }
                2 if !alive.is_empty() => {
                    let w = alive.swap_remove(rng.gen_range(0..alive.len()));
                    let cmds = s.remove_worker(&w);
                    runs.retain(|(rw, ..)| *rw != w);
                    finished |= handle(
                        cmds,
                        &mut s,
                        &mut runs,
                        &mut outcome,
                        &mut committed,
                        &mut rng,
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
                                s.running_on(worker) <= capacity_of[worker],
                                "seed {seed}: {worker} over its capacity"
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
                    );
                }
                _ if !runs.is_empty() => {
                    let i = rng.gen_range(0..runs.len());
                    let (w, key, attempt, tasks) = runs.swap_remove(i);
                    if s.report(&w, "x", key, attempt) {
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
                for (w, key, attempt, tasks) in std::mem::take(&mut runs) {
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
    }

    #[test]
    fn simulation_small_clusters() {
        for seed in 0..300 {
            simulate(seed, 8, 40);
        }
    }

    #[test]
    fn simulation_thousands_of_workers() {
        for seed in 0..4 {
            simulate(1000 + seed, 3000, 5000);
        }
    }
}
