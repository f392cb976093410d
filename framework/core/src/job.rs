//! The master's accounts of its jobs, without I/O: what a submission must
//! satisfy to be admitted (its shape, the cluster's byte bound, one request
//! per id at a time), what each committed shard adds to its job's report,
//! which partial results are being merged, which tasks an unmergeable output
//! fails, and when a job may be finished. The master actor performs what
//! the ledger asks ([`Merge`], [`Finish`]) and feeds the outcomes back.
//!
//! The scheduler ([`super::Scheduler`]) decides where shards run and folds
//! commits into the job's [`Counters`]; the ledger adds what only the master
//! knows after a commit: whether its output could be merged.

use std::collections::{BTreeMap, BTreeSet};

use super::{split_failures, ShardKey, TaskFailure};

/// Final failures kept per job for its report.
pub const MAX_KEPT_FAILURES: usize = 100;

/// What ZooKeeper's servers hold per task beyond its bytes (its length
/// prefix in a batch, and the master's copy's header): a job of a million
/// empty tasks is not free.
pub const TASK_OVERHEAD: usize = 16;

/// A job's progress: the one declaration of its counts, embedded wherever
/// they are kept (the scheduler's jobs, plans, results, progress frames).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

/// Shards per slot an automatic cut aims at: more than one, so that a
/// slow shard does not hold the job's end alone and the work spreads
/// over every worker.
pub const AUTO_SHARDS_PER_SLOT: u64 = 4;

/// Most shards an automatic cut makes: each shard costs ZooKeeper writes
/// (its commit), so a job of millions of tiny tasks is cut coarser.
pub const AUTO_MAX_SHARDS: u64 = 10_000;

/// Tasks per shard for a job that leaves the size to the cluster: every
/// one of `slots` (the slots of the workers that run the job; 0 when none
/// is registered yet) gets [`AUTO_SHARDS_PER_SLOT`] shards, with at most
/// [`AUTO_MAX_SHARDS`] shards in all.
pub fn auto_shard_size(tasks: u64, slots: u64) -> u32 {
    let for_slots = match slots {
        // No worker yet: one task per shard, as many as the bound allows
        // (workers that join later all get work).
        0 => 1,
        n => tasks.div_ceil(n.saturating_mul(AUTO_SHARDS_PER_SLOT)),
    };
    let for_bound = tasks.div_ceil(AUTO_MAX_SHARDS);
    u32::try_from(for_slots.max(for_bound).max(1)).unwrap_or(u32::MAX)
}

/// The bytes a list of tasks holds in ZooKeeper, per-task overhead included.
pub fn task_bytes<T: AsRef<[u8]>>(tasks: &[T]) -> usize {
    tasks
        .iter()
        .map(|t| t.as_ref().len().saturating_add(TASK_OVERHEAD))
        .fold(0usize, usize::saturating_add)
}

/// A submission as the ledger checks it.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    /// The client's job id.
    pub job_id: &'a str,
    /// Tasks per shard.
    pub shard_size: u32,
    /// Attempts per task.
    pub max_attempts: u32,
    /// Tasks the header announced.
    pub announced: u64,
    /// Tasks that arrived.
    pub tasks: u64,
    /// Their bytes ([`task_bytes`]).
    pub bytes: usize,
    /// Its priority (at most [`crate::MAX_PRIORITY`]).
    pub priority: u8,
}

/// Why a submission is refused: each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The id cannot name a znode.
    #[error(
        "invalid job id {0:?}: use 1 to 128 characters without '/' or NUL, other than '.' and '..'"
    )]
    InvalidId(String),
    /// Options out of range.
    #[error("shard size and max attempts must be at least 1")]
    InvalidOptions,
    /// A priority past the highest.
    #[error(
        "priority {0} is out of range: use 0 (the default) to {max}, higher runs first",
        max = crate::MAX_PRIORITY
    )]
    Priority(u8),
    /// The header and the body disagree.
    #[error("header announced {announced} tasks, got {got}")]
    Count {
        /// Announced.
        announced: u64,
        /// Received.
        got: u64,
    },
    /// Another request is writing the same id.
    #[error("job {0} is being submitted by another request; retry with the same job id")]
    Busy(String),
    /// The cluster-wide bound on task bytes held in ZooKeeper.
    #[error(
        "the cluster holds {held} bytes of unfinished tasks; {new} more would pass its limit of \
         {limit} (--max-queued-bytes): retry when jobs finish, or pass references to data (file \
         splits, store objects) rather than the data"
    )]
    Full {
        /// Held by unfinished jobs and submissions in progress.
        held: usize,
        /// This submission's.
        new: usize,
        /// The bound.
        limit: usize,
    },
}

/// Whether a job id can name a znode and a store prefix.
pub fn check_job_id(id: &str) -> Result<(), Refusal> {
    let odd = id.is_empty() || id == "." || id == "..";
    if odd || id.len() > 128 || id.contains(['/', '\0']) {
        // Quoted back at most in part: the id is a peer's.
        let mut shown: String = id.chars().take(140).collect();
        if shown.len() < id.len() {
            shown.push_str(&format!("… ({} bytes)", id.len()));
        }
        return Err(Refusal::InvalidId(shown));
    }
    Ok(())
}

/// Read or merge a committed shard output into the job's result, then
/// call [`Ledger::merged`] with this value and the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// The job.
    pub job: String,
    /// The shard.
    pub key: ShardKey,
    /// The attempt committed.
    pub attempt: u32,
    /// The tasks whose outputs the partial result holds: failed if it
    /// cannot be merged.
    pub tasks: Vec<u64>,
}

/// Store the job's result and mark it `Done` (one fenced write), then
/// call [`Ledger::finished`] or, on failure, [`Ledger::finish_failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// The job.
    pub job: String,
    /// Its final counts.
    pub counters: Counters,
    /// Its final failures (at most [`MAX_KEPT_FAILURES`]).
    pub failures: Vec<TaskFailure>,
    /// Store objects of its committed shard outputs: deleted once the
    /// result is durable.
    pub objects: Vec<String>,
}

/// What a commit means for its job's report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Committed {
    /// Tasks whose failure here is final.
    pub dead_lettered: u64,
    /// Tasks that will be retried.
    pub retried: u64,
    /// The output to merge.
    pub merge: Option<Merge>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Every task has an outcome; waiting for merges under way.
    FinishWanted,
    /// The result is being written.
    Finishing,
}

/// One job's accounts.
#[derive(Debug, Clone)]
struct Account {
    max_attempts: u32,
    /// Task bytes it holds in ZooKeeper until it finishes.
    bytes: usize,
    failures: Vec<TaskFailure>,
    /// Tasks whose committed output could not be merged: failed.
    unmerged: u64,
    merging: BTreeSet<ShardKey>,
    /// A shard of it was committed (by this master or found committed).
    committed: bool,
    phase: Phase,
    objects: Vec<String>,
}

impl Account {
    fn keep(&mut self, f: TaskFailure) {
        if self.failures.len() < MAX_KEPT_FAILURES {
            self.failures.push(f);
        }
    }
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct Ledger {
    max_queued_bytes: usize,
    jobs: BTreeMap<String, Account>,
    /// Submissions being written, with their bytes.
    submitting: BTreeMap<String, usize>,
}

impl Ledger {
    /// A ledger bounding the task bytes of unfinished jobs (and submissions
    /// being written) at `max_queued_bytes`.
    pub fn new(max_queued_bytes: usize) -> Self {
        Ledger {
            max_queued_bytes,
            ..Ledger::default()
        }
    }

    /// Checks a submission's shape, without reserving anything.
    pub fn check(s: &Submission<'_>) -> Result<(), Refusal> {
        check_job_id(s.job_id)?;
        if s.shard_size == 0 || s.max_attempts == 0 {
            return Err(Refusal::InvalidOptions);
        }
        if s.priority > crate::MAX_PRIORITY {
            return Err(Refusal::Priority(s.priority));
        }
        if s.announced != s.tasks {
            return Err(Refusal::Count {
                announced: s.announced,
                got: s.tasks,
            });
        }
        Ok(())
    }

    /// Task bytes held by unfinished jobs and submissions being written.
    pub fn held_bytes(&self) -> usize {
        let jobs = self.jobs.values().map(|a| a.bytes);
        let writing = self.submitting.values().copied();
        jobs.chain(writing).fold(0, usize::saturating_add)
    }

    /// Admits a new submission (its id is not a job of this ledger): its
    /// bytes are reserved until [`Ledger::add`] (accepted) or
    /// [`Ledger::abandoned`].
    pub fn begin_submission(&mut self, s: &Submission<'_>) -> Result<(), Refusal> {
        Self::check(s)?;
        if self.submitting.contains_key(s.job_id) {
            return Err(Refusal::Busy(s.job_id.to_string()));
        }
        let held = self.held_bytes();
        if held.saturating_add(s.bytes) > self.max_queued_bytes {
            return Err(Refusal::Full {
                held,
                new: s.bytes,
                limit: self.max_queued_bytes,
            });
        }
        self.submitting.insert(s.job_id.to_string(), s.bytes);
        Ok(())
    }

    /// The submission's outcome is known and it did not become a job of
    /// this master: its reservation goes.
    pub fn abandoned(&mut self, id: &str) {
        self.submitting.remove(id);
    }

    /// Whether a submission of this id is being written.
    pub fn is_submitting(&self, id: &str) -> bool {
        self.submitting.contains_key(id)
    }

    /// Whether the ledger keeps this job.
    pub fn contains(&self, id: &str) -> bool {
        self.jobs.contains_key(id)
    }

    /// Number of jobs kept.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no job is kept.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// A job to account for: accepted now (its reservation becomes the
    /// job's), or read back by a new master, with the final failures its
    /// commits already hold and the store objects they reference.
    pub fn add(
        &mut self,
        id: &str,
        max_attempts: u32,
        bytes: usize,
        failures: Vec<TaskFailure>,
        objects: Vec<String>,
    ) {
        self.submitting.remove(id);
        let mut account = Account {
            max_attempts,
            bytes,
            failures: Vec::new(),
            unmerged: 0,
            merging: BTreeSet::new(),
            committed: false,
            phase: Phase::Running,
            objects,
        };
        for f in failures {
            account.keep(f);
        }
        self.jobs.insert(id.to_string(), account);
    }

    /// A job cancelled or finished: forgotten, with everything under way.
    pub fn remove(&mut self, id: &str) {
        self.jobs.remove(id);
    }

    /// A shard of the job was committed (by this master, or found
    /// committed): `tasks` are the shard's tasks, `object` the store object
    /// its output is in. Its final failures go to the job's report and its
    /// output must be merged.
    pub fn committed(
        &mut self,
        job: &str,
        key: ShardKey,
        tasks: &[u64],
        attempt: u32,
        failures: &[TaskFailure],
        object: Option<String>,
    ) -> Committed {
        let Some(account) = self.jobs.get_mut(job) else {
            return Committed::default();
        };
        if let Some(name) = object {
            account.objects.push(name);
        }
        account.committed = true;
        let (retry, last) = split_failures(tasks, failures, account.max_attempts);
        for f in &last {
            account.keep((*f).clone());
        }
        let failed: BTreeSet<u64> = retry.iter().chain(&last).map(|f| f.index).collect();
        let held: Vec<u64> = tasks
            .iter()
            .copied()
            .filter(|t| !failed.contains(t))
            .collect();
        account.merging.insert(key);
        Committed {
            dead_lettered: last.len() as u64,
            retried: retry.len() as u64,
            merge: Some(Merge {
                job: job.to_string(),
                key,
                attempt,
                tasks: held,
            }),
        }
    }

    /// A merge is done: `Err` makes its tasks failed (never silently
    /// dropped). Returns the job's [`Finish`] if it was waiting for it.
    /// The returned count is the tasks failed by this outcome.
    pub fn merged(
        &mut self,
        merge: Merge,
        outcome: Result<(), String>,
        counters: Counters,
    ) -> (u64, Option<Finish>) {
        let Some(account) = self.jobs.get_mut(&merge.job) else {
            return (0, None);
        };
        account.merging.remove(&merge.key);
        let mut failed = 0;
        if let Err(error) = outcome {
            let error = format!("its shard's output was committed but cannot be merged: {error}");
            failed = merge.tasks.len() as u64;
            account.unmerged += failed;
            for index in merge.tasks {
                account.keep(TaskFailure {
                    index,
                    error: error.clone(),
                    attempt: merge.attempt,
                    retryable: false,
                });
            }
        }
        let finish = if account.phase == Phase::FinishWanted {
            self.finish(&merge.job, counters)
        } else {
            None
        };
        (failed, finish)
    }

    /// The job's counts as clients see them: the scheduler's, with tasks
    /// whose outputs could not be merged counted as failed.
    pub fn counters(&self, job: &str, scheduled: Counters) -> Counters {
        let unmerged = self.jobs.get(job).map_or(0, |a| a.unmerged);
        Counters {
            tasks_failed: scheduled
                .tasks_failed
                .saturating_add(unmerged)
                .min(scheduled.tasks_done),
            ..scheduled
        }
    }

    /// Every task of the job has an outcome (the scheduler said so): the
    /// result may be written once the merges under way are done. `None`
    /// while they are, or while a write is already under way.
    pub fn finish(&mut self, job: &str, scheduled: Counters) -> Option<Finish> {
        let counters = self.counters(job, scheduled);
        let account = self.jobs.get_mut(job)?;
        if account.phase == Phase::Finishing {
            return None;
        }
        if !account.merging.is_empty() {
            account.phase = Phase::FinishWanted;
            return None;
        }
        account.phase = Phase::Finishing;
        Some(Finish {
            job: job.to_string(),
            counters,
            failures: account.failures.clone(),
            objects: account.objects.clone(),
        })
    }

    /// Writing the result failed for a transient reason: the job may be
    /// finished again (the caller retries later).
    pub fn finish_failed(&mut self, job: &str) {
        if let Some(a) = self.jobs.get_mut(job) {
            if a.phase == Phase::Finishing {
                a.phase = Phase::FinishWanted;
            }
        }
    }

    /// Retries a finish after [`Ledger::finish_failed`].
    pub fn retry_finish(&mut self, job: &str, scheduled: Counters) -> Option<Finish> {
        match self.jobs.get(job)?.phase {
            Phase::FinishWanted => self.finish(job, scheduled),
            _ => None,
        }
    }

    /// The job's only shard holds every task and was reported with each
    /// one done: the job may end in one write, its result that shard's
    /// output reduced alone, if nothing of it was committed, merged or
    /// failed yet (`scheduled`: the scheduler's counts, before that shard).
    /// Its [`Finish`], with every task counted done; then
    /// [`Ledger::finished`], or [`Ledger::end_alone_failed`].
    pub fn end_alone(&mut self, job: &str, scheduled: Counters) -> Option<Finish> {
        let account = self.jobs.get_mut(job)?;
        let untouched = account.phase == Phase::Running
            && !account.committed
            && account.merging.is_empty()
            && account.failures.is_empty()
            && account.unmerged == 0
            && account.objects.is_empty()
            && scheduled.tasks_done == 0
            && scheduled.retries == 0;
        if !untouched {
            return None;
        }
        account.phase = Phase::Finishing;
        Some(Finish {
            job: job.to_string(),
            counters: Counters {
                tasks_done: scheduled.tasks_total,
                ..scheduled
            },
            failures: Vec::new(),
            objects: Vec::new(),
        })
    }

    /// A one-write end failed for a transient reason: its shard runs
    /// again, and the job is as it was before [`Ledger::end_alone`].
    pub fn end_alone_failed(&mut self, job: &str) {
        if let Some(a) = self.jobs.get_mut(job) {
            if a.phase == Phase::Finishing {
                a.phase = Phase::Running;
            }
        }
    }

    /// The job's result is durable: it leaves the ledger, and its bytes
    /// with it.
    pub fn finished(&mut self, job: &str) {
        self.jobs.remove(job);
    }
}

/// A stored job as the collector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Its submission is still being written (or was abandoned by a master).
    Writing,
    /// Accepted and unfinished.
    Running,
    /// Done and not yet fetched.
    Unfetched,
    /// Done and fetched, or cancelled: its retention runs.
    Retained,
}

/// Which stored jobs to delete: those whose retention has passed, measured
/// on this master's monotonic clock from when it first saw them retained
/// (a wall clock that runs ahead, or another master's, cannot make a
/// result vanish early; after a failover the count starts again, so a
/// result may stay up to one retention longer), and `Writing` leftovers
/// no submission of this master is writing. Never a job a submission is
/// writing: the two would race.
///
/// Also bounded in count: beyond `max_retained` retained jobs, the ones
/// retained longest go first, whatever their age, so that a work queue
/// of thousands of jobs a second keeps ZooKeeper's znodes (and the list
/// of jobs, one response under its packet limit) bounded.
#[derive(Debug, Default)]
pub struct Retention {
    period: std::time::Duration,
    max_retained: usize,
    seen: BTreeMap<String, std::time::Instant>,
}

impl Retention {
    /// A collector keeping fetched results for `period`, at most
    /// `max_retained` of them.
    pub fn new(period: std::time::Duration, max_retained: usize) -> Self {
        Retention {
            period,
            max_retained,
            seen: BTreeMap::new(),
        }
    }

    /// The ids to delete among all stored jobs listed at `now`.
    pub fn due(
        &mut self,
        listed: &[(String, Stored)],
        ledger: &Ledger,
        now: std::time::Instant,
    ) -> Vec<String> {
        let mut seen = BTreeMap::new();
        let mut due = Vec::new();
        for (id, stored) in listed {
            if ledger.is_submitting(id) || ledger.contains(id) {
                continue;
            }
            match stored {
                Stored::Writing => due.push(id.clone()),
                Stored::Retained => {
                    let since = self.seen.get(id).copied().unwrap_or(now);
                    if now.saturating_duration_since(since) >= self.period {
                        due.push(id.clone());
                    } else {
                        seen.insert(id.clone(), since);
                    }
                }
                Stored::Running | Stored::Unfetched => {}
            }
        }
        if seen.len() > self.max_retained {
            let mut by_age: Vec<(std::time::Instant, String)> =
                seen.iter().map(|(id, t)| (*t, id.clone())).collect();
            by_age.sort();
            for (_, id) in by_age.into_iter().take(seen.len() - self.max_retained) {
                seen.remove(&id);
                due.push(id);
            }
        }
        self.seen = seen;
        due
    }

    /// The job was asked for again (resubmitted): its retention starts over.
    pub fn touch(&mut self, id: &str, now: std::time::Instant) {
        if let Some(t) = self.seen.get_mut(id) {
            *t = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, bytes: usize) -> Submission<'_> {
        Submission {
            job_id: id,
            shard_size: 1,
            max_attempts: 3,
            announced: 1,
            tasks: 1,
            bytes,
            priority: 0,
        }
    }

    fn key(index: u32) -> ShardKey {
        ShardKey {
            index,
            generation: 0,
        }
    }

    fn fail(index: u64, attempt: u32, retryable: bool) -> TaskFailure {
        TaskFailure {
            index,
            error: "boom".into(),
            attempt,
            retryable,
        }
    }

    fn counters(total: u64, done: u64, failed: u64) -> Counters {
        Counters {
            tasks_total: total,
            tasks_done: done,
            tasks_failed: failed,
            retries: 0,
        }
    }

    #[test]
    fn odd_ids_options_and_counts_are_refused_with_what_to_do() {
        for id in ["", ".", "..", "a/b", "a\0b", &"x".repeat(129)] {
            assert!(
                matches!(Ledger::check(&sub(id, 1)), Err(Refusal::InvalidId(_))),
                "{id:?}"
            );
        }
        assert_eq!(Ledger::check(&sub("a.b", 1)), Ok(()));
        let mut s = sub("j", 1);
        s.shard_size = 0;
        assert_eq!(Ledger::check(&s), Err(Refusal::InvalidOptions));
        let mut s = sub("j", 1);
        s.announced = 2;
        assert_eq!(
            Ledger::check(&s),
            Err(Refusal::Count {
                announced: 2,
                got: 1
            })
        );
    }

    #[test]
    fn empty_tasks_count_toward_the_byte_bound() {
        let empty: Vec<Vec<u8>> = vec![Vec::new(); 1000];
        assert_eq!(task_bytes(&empty), 1000 * TASK_OVERHEAD);
        let mut l = Ledger::new(1000 * TASK_OVERHEAD - 1);
        let s = Submission {
            tasks: 1000,
            announced: 1000,
            bytes: task_bytes(&empty),
            ..sub("j", 0)
        };
        assert!(matches!(l.begin_submission(&s), Err(Refusal::Full { .. })));
    }

    #[test]
    fn a_priority_past_the_highest_is_refused_with_the_range() {
        let at = |priority| Submission {
            priority,
            ..sub("j", 0)
        };
        assert_eq!(Ledger::check(&at(crate::MAX_PRIORITY)), Ok(()));
        let refused = Ledger::check(&at(10)).unwrap_err();
        assert_eq!(refused, Refusal::Priority(10));
        assert!(
            refused.to_string().contains("use 0 (the default) to 9"),
            "{refused}"
        );
    }

    #[test]
    fn submissions_in_progress_hold_their_bytes_and_their_id() {
        let mut l = Ledger::new(100);
        l.begin_submission(&sub("a", 60)).unwrap();
        assert_eq!(l.held_bytes(), 60);
        assert_eq!(
            l.begin_submission(&sub("a", 1)),
            Err(Refusal::Busy("a".into()))
        );
        let full = l.begin_submission(&sub("b", 41));
        assert_eq!(
            full,
            Err(Refusal::Full {
                held: 60,
                new: 41,
                limit: 100
            })
        );
        assert!(full.unwrap_err().to_string().contains("--max-queued-bytes"));
        // Accepted: the reservation becomes the job's.
        l.add("a", 3, 60, Vec::new(), Vec::new());
        assert_eq!(l.held_bytes(), 60);
        l.begin_submission(&sub("b", 40)).unwrap();
        l.abandoned("b");
        assert_eq!(l.held_bytes(), 60);
        l.finished("a");
        assert_eq!(l.held_bytes(), 0);
        assert!(l.is_empty());
    }

    #[test]
    fn a_finish_waits_for_merges_and_happens_once() {
        let mut l = Ledger::new(usize::MAX);
        l.add("j", 3, 10, Vec::new(), Vec::new());
        let c = l.committed("j", key(0), &[0, 1], 1, &[], Some("o".into()));
        let merge = c.merge.unwrap();
        assert_eq!(merge.tasks, vec![0, 1]);
        assert_eq!(
            l.finish("j", counters(2, 2, 0)),
            None,
            "a merge is under way"
        );
        let (failed, finish) = l.merged(merge, Ok(()), counters(2, 2, 0));
        assert_eq!(failed, 0);
        let finish = finish.expect("the finish waited for the merge");
        assert_eq!(finish.counters, counters(2, 2, 0));
        assert_eq!(finish.objects, vec!["o".to_string()]);
        assert_eq!(l.finish("j", counters(2, 2, 0)), None, "already finishing");
        l.finish_failed("j");
        assert!(l.retry_finish("j", counters(2, 2, 0)).is_some());
        l.finished("j");
        assert!(!l.contains("j"));
    }

    #[test]
    fn only_a_running_job_with_nothing_committed_ends_alone() {
        let mut l = Ledger::new(usize::MAX);
        l.add("j", 3, 10, Vec::new(), Vec::new());
        let f = l.end_alone("j", counters(2, 0, 0)).expect("untouched");
        assert_eq!(f.counters, counters(2, 2, 0), "every task counted done");
        assert!(f.failures.is_empty() && f.objects.is_empty());
        assert_eq!(l.end_alone("j", counters(2, 0, 0)), None, "ending already");
        assert_eq!(l.finish("j", counters(2, 2, 0)), None, "ending already");
        // A transient failure: as before, so the usual path may finish it.
        l.end_alone_failed("j");
        assert!(l.end_alone("j", counters(2, 0, 0)).is_some());
        l.finished("j");
        assert_eq!(l.end_alone("j", counters(2, 0, 0)), None, "gone");
        // Anything committed, merging, failed or counted: never alone.
        l.add("m", 3, 10, Vec::new(), Vec::new());
        let merge = l.committed("m", key(0), &[0], 1, &[], None).merge;
        assert_eq!(
            l.end_alone("m", counters(2, 0, 0)),
            None,
            "a merge is under way"
        );
        l.merged(merge.unwrap(), Ok(()), counters(2, 1, 0));
        assert_eq!(
            l.end_alone("m", counters(2, 0, 0)),
            None,
            "an output is merged"
        );
        l.add("o", 3, 10, Vec::new(), vec!["o".into()]);
        assert_eq!(
            l.end_alone("o", counters(1, 0, 0)),
            None,
            "an object is held"
        );
        l.add("f", 3, 10, vec![fail(0, 3, false)], Vec::new());
        assert_eq!(l.end_alone("f", counters(1, 0, 0)), None, "a task failed");
        l.add("c", 3, 10, Vec::new(), Vec::new());
        assert_eq!(l.end_alone("c", counters(2, 1, 0)), None, "a task counted");
        let retried = Counters {
            retries: 1,
            ..counters(2, 0, 0)
        };
        assert_eq!(l.end_alone("c", retried), None, "a task retried");
    }

    #[test]
    fn an_unmergeable_output_fails_exactly_the_tasks_it_holds() {
        let mut l = Ledger::new(usize::MAX);
        l.add("j", 2, 10, Vec::new(), Vec::new());
        // Task 1 failed finally, task 2 will be retried: the output holds 0 and 3.
        let fails = [fail(1, 1, false), fail(2, 1, true)];
        let c = l.committed("j", key(0), &[0, 1, 2, 3], 1, &fails, None);
        assert_eq!((c.dead_lettered, c.retried), (1, 1));
        let merge = c.merge.unwrap();
        assert_eq!(merge.tasks, vec![0, 3]);
        let scheduled = counters(4, 3, 1);
        let (failed, finish) = l.merged(merge, Err("truncated".into()), scheduled);
        assert_eq!((failed, finish), (2, None));
        assert_eq!(l.counters("j", scheduled).tasks_failed, 3);
        let f = l.finish("j", counters(4, 4, 1)).unwrap();
        assert_eq!(f.counters.tasks_failed, 3);
        let mut indexes: Vec<u64> = f.failures.iter().map(|f| f.index).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, vec![0, 1, 3]);
        assert!(f.failures.iter().all(|f| !f.retryable));
        assert!(f.failures[1].error.contains("cannot be merged: truncated"));
    }

    #[test]
    fn failed_never_exceeds_done_and_reports_stay_bounded() {
        let mut l = Ledger::new(usize::MAX);
        let many: Vec<TaskFailure> = (0..500).map(|i| fail(i, 1, false)).collect();
        l.add("j", 1, 0, many, Vec::new());
        let tasks: Vec<u64> = (500..1000).collect();
        let c = l.committed("j", key(1), &tasks, 1, &[], None);
        l.merged(c.merge.unwrap(), Err("x".into()), counters(1000, 600, 500));
        let f = l.finish("j", counters(1000, 600, 500)).unwrap();
        assert_eq!(f.counters.tasks_failed, 600);
        assert_eq!(f.failures.len(), MAX_KEPT_FAILURES);
    }

    #[test]
    fn events_of_unknown_jobs_are_ignored() {
        let mut l = Ledger::new(1);
        assert_eq!(
            l.committed("x", key(0), &[0], 1, &[], None),
            Committed::default()
        );
        assert_eq!(l.finish("x", Counters::default()), None);
        l.finish_failed("x");
        l.finished("x");
    }

    #[test]
    fn retention_runs_on_this_masters_clock_and_spares_submissions() {
        let t0 = std::time::Instant::now();
        let secs = std::time::Duration::from_secs;
        let mut r = Retention::new(secs(10), usize::MAX);
        let mut l = Ledger::new(usize::MAX);
        let listed = vec![
            ("fetched".to_string(), Stored::Retained),
            ("orphan".to_string(), Stored::Writing),
            ("writing".to_string(), Stored::Writing),
            ("running".to_string(), Stored::Running),
            ("done".to_string(), Stored::Unfetched),
        ];
        l.begin_submission(&sub("writing", 1)).unwrap();
        assert_eq!(r.due(&listed, &l, t0), vec!["orphan".to_string()]);
        let listed: Vec<(String, Stored)> = listed
            .into_iter()
            .filter(|(id, _)| id != "orphan")
            .collect();
        // However old its fetch looks to a wall clock, the count starts now.
        assert!(r.due(&listed, &l, t0 + secs(9)).is_empty());
        r.touch("fetched", t0 + secs(9));
        assert!(r.due(&listed, &l, t0 + secs(12)).is_empty(), "touched");
        assert_eq!(
            r.due(&listed, &l, t0 + secs(19)),
            vec!["fetched".to_string()]
        );
        // A job being resubmitted is never collected under it.
        let mut r = Retention::new(secs(0), usize::MAX);
        l.begin_submission(&sub("fetched", 1)).unwrap();
        assert!(r.due(&listed[..1], &l, t0).is_empty());
        l.abandoned("fetched");
        assert_eq!(r.due(&listed[..1], &l, t0), vec!["fetched".to_string()]);
    }

    #[test]
    fn retention_keeps_at_most_its_count_the_oldest_going_first() {
        let t0 = std::time::Instant::now();
        let secs = std::time::Duration::from_secs;
        let mut r = Retention::new(secs(3600), 2);
        let l = Ledger::new(usize::MAX);
        let job = |id: &str| (id.to_string(), Stored::Retained);
        assert!(r.due(&[job("a")], &l, t0).is_empty());
        assert!(r.due(&[job("a"), job("b")], &l, t0 + secs(1)).is_empty());
        let three = [job("a"), job("b"), job("c"), ("r".into(), Stored::Running)];
        assert_eq!(r.due(&three, &l, t0 + secs(2)), vec!["a".to_string()]);
        let five = [job("b"), job("c"), job("d"), job("e")];
        let mut due = r.due(&five, &l, t0 + secs(3));
        due.sort();
        assert_eq!(
            due,
            vec!["b".to_string(), "c".to_string()],
            "b and c were seen first"
        );
    }

    #[test]
    fn an_automatic_cut_gives_every_slot_work_within_the_shard_bound() {
        use super::{auto_shard_size, AUTO_MAX_SHARDS};
        // 30 expensive tasks, three workers of one slot: every worker works.
        let size = auto_shard_size(30, 3);
        assert!(crate::shard_count(30, size) >= 3, "size {size}");
        assert_eq!(auto_shard_size(1, 8), 1);
        assert_eq!(auto_shard_size(0, 8), 1);
        assert_eq!(auto_shard_size(5, 0), 1);
        for (tasks, slots) in [
            (10_u64, 1_u64),
            (1_000, 16),
            (100_000, 2),
            (50_000_000, 64),
            (7, 3),
        ] {
            let size = auto_shard_size(tasks, slots);
            let shards = u64::from(crate::shard_count(tasks, size));
            assert!(size >= 1);
            assert!(
                shards <= AUTO_MAX_SHARDS,
                "{tasks} tasks, {slots} slots: {shards} shards"
            );
            if tasks >= slots {
                assert!(
                    shards >= slots.min(AUTO_MAX_SHARDS),
                    "{tasks} tasks, {slots} slots: {shards} shards"
                );
            }
        }
    }
}
