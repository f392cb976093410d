//! The master's scheduler: a state machine fed with worker, job and report
//! events, answering with [`Command`]s for the master actor to carry out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::{ShardKey, TaskFailure};

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
    /// Registered job name (workers must know it).
    pub name: String,
    /// Attempts per task.
    pub max_attempts: u32,
    /// Tasks in the job.
    pub tasks_total: u64,
    /// Tasks whose final outcome is already committed.
    pub tasks_done: u64,
    /// Of those, tasks that failed.
    pub tasks_failed: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
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
}

#[derive(Debug)]
enum ShardPhase {
    Pending,
    /// Sent to a worker; `started` once the worker said a slot picked it up.
    Running {
        worker: String,
        started: bool,
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
    tasks_total: u64,
    tasks_done: u64,
    tasks_failed: u64,
    retries: u64,
    shards: BTreeMap<ShardKey, ShardState>,
}

/// Progress counters of one job, as the scheduler knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Tasks in the job.
    pub tasks_total: u64,
    /// Tasks with a committed final outcome.
    pub tasks_done: u64,
    /// Of those, failed.
    pub tasks_failed: u64,
    /// Failed attempts retried.
    pub retries: u64,
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
    /// The time of the current event, if the caller gives one ([`Scheduler::tick`]);
    /// without it, retries do not back off.
    now: Option<Instant>,
    workers: BTreeMap<String, WorkerSlot>,
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
        };
        let mut out = Vec::new();
        if let Some(old) = self.workers.insert(id.to_string(), slot) {
            // Re-registration: whatever it ran before is lost.
            self.requeue_lost(id, old.running, &mut out);
        }
        out
    }

    /// A worker is gone (znode deleted or link lost). Its running shards go
    /// back to the queue with one attempt used; shards out of attempts are
    /// committed as failed.
    pub fn remove_worker(&mut self, id: &str) -> Vec<Command> {
        let mut out = Vec::new();
        if let Some(slot) = self.workers.remove(id) {
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
            let started = match &shard.phase {
                ShardPhase::Running { worker: w, started } if w == worker => *started,
                _ => continue,
            };
            if !started {
                // Still waiting for a slot when the worker went: not a suspect.
                shard.phase = ShardPhase::Pending;
                self.queue.push_front((job_id, key));
            } else if shard.attempt >= max {
                shard.phase = ShardPhase::Committing { worker: None };
                let error = format!(
                    "worker {worker} was lost while running this task (attempt {})",
                    shard.attempt
                );
                let failures = lost_failures(&shard.tasks, shard.attempt, &error);
                out.push(Command::CommitLost {
                    job: job_id.clone(),
                    key,
                    attempt: shard.attempt,
                    failures,
                });
            } else {
                shard.attempt += 1;
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
            if matches!(&shard.phase, ShardPhase::Running { worker, started: false } if worker == id)
            {
                shard.phase = ShardPhase::Pending;
                if let Some(w) = self.workers.get_mut(id) {
                    w.running.remove(&(job_id.clone(), key));
                }
                self.queue.push_front((job_id, key));
            }
        }
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
                },
            );
        }
        let empty = shards.is_empty();
        self.jobs.insert(
            plan.id.clone(),
            JobState {
                name: plan.name,
                max_attempts,
                tasks_total: plan.tasks_total,
                tasks_done: plan.tasks_done,
                tasks_failed: plan.tasks_failed,
                retries: plan.retries,
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
            for w in self.workers.values_mut() {
                w.running.retain(|(j, _)| j != id);
            }
        }
    }

    /// Hands queued shards to workers with free capacity, least loaded first.
    pub fn assign(&mut self) -> Vec<Command> {
        let mut out = Vec::new();
        let mut skipped = VecDeque::new();
        while let Some((job_id, key)) = self.queue.pop_front() {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let Some(shard) = job.shards.get_mut(&key) else {
                continue;
            };
            if !matches!(shard.phase, ShardPhase::Pending) {
                continue;
            }
            if let (Some(due), Some(now)) = (shard.not_before, self.now) {
                if due > now {
                    skipped.push_back((job_id, key));
                    continue;
                }
            }
            let name = &job.name;
            let use_fallback = !self
                .workers
                .values()
                .any(|w| !w.fallback && w.capacity > 0 && w.jobs.contains(name));
            let avoid = shard.avoid.as_deref();
            let free = |w: &WorkerSlot| {
                (w.running.len() as u32) < w.capacity
                    && w.jobs.contains(name)
                    && (use_fallback || !w.fallback)
            };
            // A retry prefers a worker other than the one it failed on.
            let other_free = avoid.is_some()
                && self
                    .workers
                    .iter()
                    .any(|(id, w)| Some(id.as_str()) != avoid && free(w));
            let worker = self
                .workers
                .iter_mut()
                .filter(|(id, w)| free(w) && !(other_free && Some(id.as_str()) == avoid))
                .min_by_key(|(_, w)| w.running.len());
            match worker {
                Some((wid, w)) => {
                    w.running.insert((job_id.clone(), key));
                    shard.phase = ShardPhase::Running {
                        worker: wid.clone(),
                        started: false,
                    };
                    out.push(Command::Assign {
                        worker: wid.clone(),
                        job: job_id,
                        shard: PendingShard {
                            key,
                            tasks: shard.tasks.clone(),
                            attempt: shard.attempt,
                        },
                    });
                }
                None => {
                    skipped.push_back((job_id, key));
                    if self
                        .workers
                        .values()
                        .all(|w| w.running.len() as u32 >= w.capacity)
                    {
                        break;
                    }
                }
            }
        }
        skipped.append(&mut self.queue);
        self.queue = skipped;
        out
    }

    /// Sets the time of the events that follow (retry backoff is measured against it).
    pub fn tick(&mut self, now: Instant) {
        self.now = Some(now);
    }

    /// When the earliest retry waiting out its backoff becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.jobs
            .values()
            .flat_map(|j| j.shards.values())
            .filter(|s| matches!(s.phase, ShardPhase::Pending))
            .filter_map(|s| s.not_before)
            .filter(|due| self.now.is_none_or(|now| *due > now))
            .min()
    }

    /// A worker's slot picked up a shard: from now on, losing the worker
    /// uses up an attempt of the shard's tasks (one of them may be what
    /// killed it). Shards lost before they started are requeued for free.
    pub fn started(&mut self, worker: &str, job_id: &str, key: ShardKey, attempt: u32) {
        if let Some(shard) = self
            .jobs
            .get_mut(job_id)
            .and_then(|j| j.shards.get_mut(&key))
        {
            if let ShardPhase::Running { worker: w, started } = &mut shard.phase {
                if w == worker && shard.attempt == attempt {
                    *started = true;
                }
            }
        }
    }

    /// A worker reported on a shard. Returns true if the report is the one
    /// awaited (the shard now waits for its commit); false for a stale or
    /// duplicate report, which must be dropped.
    pub fn report(&mut self, worker: &str, job_id: &str, key: ShardKey, attempt: u32) -> bool {
        let Some(shard) = self
            .jobs
            .get_mut(job_id)
            .and_then(|j| j.shards.get_mut(&key))
        else {
            return false;
        };
        if !matches!(&shard.phase, ShardPhase::Running { worker: w, .. } if w == worker)
            || shard.attempt != attempt
        {
            return false;
        }
        shard.phase = ShardPhase::Committing {
            worker: Some(worker.to_string()),
        };
        if let Some(w) = self.workers.get_mut(worker) {
            w.running.remove(&(job_id.to_string(), key));
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
    ) -> Vec<Command> {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Vec::new();
        };
        let Some(shard) = job.shards.remove(&key) else {
            return Vec::new();
        };
        if let ShardPhase::Running { worker: w, .. } = &shard.phase {
            if let Some(w) = self.workers.get_mut(w) {
                w.running.remove(&(job_id.to_string(), key));
            }
        }
        let ran_on = match shard.phase {
            ShardPhase::Committing { worker } => worker,
            _ => None,
        };
        let (retry, final_failed): (Vec<&TaskFailure>, Vec<&TaskFailure>) =
            failures.iter().partition(|f| !f.is_final(job.max_attempts));
        job.tasks_done += shard.tasks.len() as u64 - retry.len() as u64;
        job.tasks_failed += final_failed.len() as u64;
        job.retries += retry.len() as u64;
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
                    not_before: self
                        .now
                        .map(|now| now + retry_delay(job_id, next, attempt + 1)),
                    avoid: ran_on,
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
        self.jobs.get(job_id).map(|j| Counters {
            tasks_total: j.tasks_total,
            tasks_done: j.tasks_done,
            tasks_failed: j.tasks_failed,
            retries: j.retries,
        })
    }

    /// The registered name of a job.
    pub fn job_name(&self, job_id: &str) -> Option<&str> {
        self.jobs.get(job_id).map(|j| j.name.as_str())
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

    /// Ids of the jobs in progress.
    pub fn job_ids(&self) -> impl Iterator<Item = &String> {
        self.jobs.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn plan(id: &str, shards: u32, per: u64, max_attempts: u32) -> JobPlan {
        JobPlan {
            id: id.into(),
            name: "j".into(),
            max_attempts,
            tasks_total: u64::from(shards) * per,
            tasks_done: 0,
            tasks_failed: 0,
            retries: 0,
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
        let mut s = Scheduler::new();
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
        let mut s = Scheduler::new();
        s.add_worker("a", 1, ["j".to_string()], false);
        s.add_job(plan("x", 1, 2, 2));
        assert_eq!(assigned(&s.assign())[0].2, 1);
        s.started(
            "a",
            "x",
            ShardKey {
                index: 0,
                generation: 0,
            },
            1,
        );
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
        let mut s = Scheduler::new();
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
        let mut s = Scheduler::new();
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
        let mut s = Scheduler::new();
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
    fn fallback_workers_run_only_what_no_other_worker_can() {
        let mut s = Scheduler::new();
        s.add_worker("master", 4, ["j".to_string()], true);
        s.add_job(plan("x", 3, 1, 3));
        // Alone, the fallback worker runs everything.
        assert_eq!(assigned(&s.assign()).len(), 3);
        let mut s = Scheduler::new();
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
        let mut s = Scheduler::new();
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
        let mut s = Scheduler::new();
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
        let mut s = Scheduler::new();
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

    /// Random workers joining, dying and reporting: every task ends with
    /// exactly one final outcome and no worker exceeds its capacity.
    #[test]
    fn simulation_every_task_finishes_once() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = Scheduler::new();
            let shards = rng.gen_range(1..40);
            let per = rng.gen_range(1..5);
            let max_attempts = rng.gen_range(1..4);
            s.add_job(plan("x", shards, per, max_attempts));
            let mut running: Vec<(String, ShardKey, u32, Vec<u64>)> = Vec::new();
            let mut outcome: BTreeMap<u64, u32> = BTreeMap::new();
            let mut next_worker = 0;
            let mut finished = false;
            for _step in 0..100_000 {
                if finished {
                    break;
                }
                match rng.gen_range(0..10) {
                    0 => {
                        next_worker += 1;
                        let fallback = rng.gen_bool(0.2);
                        s.add_worker(
                            &format!("w{next_worker}"),
                            rng.gen_range(1..4),
                            ["j".to_string()],
                            fallback,
                        );
                    }
                    1 if next_worker > 0 => {
                        let w = format!("w{}", rng.gen_range(1..=next_worker));
                        for c in s.remove_worker(&w) {
                            if let Command::CommitLost {
                                job,
                                key,
                                attempt,
                                failures,
                            } = c
                            {
                                for f in &failures {
                                    *outcome.entry(f.index).or_default() += 1;
                                }
                                finished |= !s.committed(&job, key, attempt, &failures).is_empty();
                            }
                        }
                    }
                    2..=4 => {
                        for c in s.assign() {
                            if let Command::Assign { worker, shard, .. } = c {
                                assert!(s.running_on(&worker) <= 3);
                                if rng.gen_bool(0.7) {
                                    s.started(&worker, "x", shard.key, shard.attempt);
                                }
                                running.push((worker, shard.key, shard.attempt, shard.tasks));
                            }
                        }
                    }
                    _ if !running.is_empty() => {
                        let i = rng.gen_range(0..running.len());
                        let (w, key, attempt, tasks) = running.swap_remove(i);
                        if s.report(&w, "x", key, attempt) {
                            let failures: Vec<TaskFailure> = tasks
                                .iter()
                                .filter(|_| rng.gen_bool(0.3))
                                .map(|&index| TaskFailure {
                                    index,
                                    error: "e".into(),
                                    attempt,
                                    retryable: true,
                                })
                                .collect();
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
                // No workers may have been left; add one and drain.
                s.add_worker("last", 4, ["j".to_string()], false);
                while !finished {
                    for c in s.assign() {
                        if let Command::Assign { worker, shard, .. } = c {
                            assert!(s.report(&worker, "x", shard.key, shard.attempt));
                            for &t in &shard.tasks {
                                *outcome.entry(t).or_default() += 1;
                            }
                            finished |= !s.committed("x", shard.key, shard.attempt, &[]).is_empty();
                        }
                    }
                }
            }
            let total = u64::from(shards) * per;
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
    }
}
