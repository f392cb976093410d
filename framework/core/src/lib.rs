//! Decisions without I/O: which shard runs where, what a failure means, what
//! a recovering master must still do. A crate of its own, `ringleader-core`
//! (the framework re-exports it as `ringleader::core`), whose manifest names
//! no runtime, actor system, ZooKeeper or QUIC crate: time and events come
//! in as arguments and decisions go out as values.

#![warn(missing_docs)]

pub mod features;
pub mod job;
pub mod liveness;
pub mod master;
mod recovery;
mod scheduler;
pub mod standing;
pub mod worker_session;

pub use job::{Counters, Ledger};
pub use recovery::{recover_job, CommittedShard, RecoveredJob};
pub use scheduler::{
    Command, JobPlan, Limit, LimitUsage, PendingShard, Rate, Scheduler, StartAnswer, MAX_PRIORITY,
    MAX_WEIGHT, SHARE_EVERY,
};
pub use worker_session::WorkerSession;

/// Identifies a shard within its job: `index` is the slice of the original
/// task list (`index * shard_size ..`), `generation` counts retry rounds of
/// the tasks of that slice that failed. Commit znodes are named after it, so
/// a shard's outcome is committed at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardKey {
    /// Which slice of the job's tasks.
    pub index: u32,
    /// 0 for the first run of the slice, n for its n-th retry round.
    pub generation: u32,
}

impl std::fmt::Display for ShardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.index, self.generation)
    }
}

/// The inverse of `Display` (`<index>-<generation>`, as commit znodes are
/// named).
impl std::str::FromStr for ShardKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = s.split_once('-').and_then(|(i, g)| {
            Some(ShardKey {
                index: i.parse().ok()?,
                generation: g.parse().ok()?,
            })
        });
        parsed.ok_or_else(|| format!("{s:?} is not <index>-<generation>"))
    }
}

/// One run of a shard, as its assignment names it, from the frame to the
/// scheduler: every frame about a run names all of it, so that nothing of
/// an earlier run, or of an earlier job of the same id, is taken for this
/// one's. The epoch is part of
/// it: a run that an earlier master started cannot stand in for the same
/// shard assigned by the next one, whose report it could never be.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId {
    /// The assigning master's epoch.
    pub epoch: u64,
    /// The job.
    pub job: String,
    /// The job's incarnation (see `JobRecord::incarnation`):
    /// a run of an earlier job under the same id is another run.
    pub incarnation: u64,
    /// The shard.
    pub shard: ShardKey,
    /// The attempt.
    pub attempt: u32,
}

/// A task that failed one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// Task index in the job.
    pub index: u64,
    /// The error message (panic message for panics).
    pub error: String,
    /// The attempt that failed (1-based).
    pub attempt: u32,
    /// Whether the task itself said a retry may help.
    pub retryable: bool,
}

impl TaskFailure {
    /// Whether this failure ends the task, given the job's attempt limit.
    pub fn is_final(&self, max_attempts: u32) -> bool {
        !self.retryable || self.attempt >= max_attempts
    }
}

/// A shard's failures that count, split into retryable and final: only
/// failures of the shard's own `tasks`, and one per task (the first). A
/// report or a record that says more cannot make a task count twice or
/// the counters wrap.
pub fn split_failures<'a>(
    tasks: &[u64],
    failures: &'a [TaskFailure],
    max_attempts: u32,
) -> (Vec<&'a TaskFailure>, Vec<&'a TaskFailure>) {
    let mut seen = std::collections::HashSet::with_capacity(failures.len());
    failures
        .iter()
        .filter(|f| tasks.contains(&f.index) && seen.insert(f.index))
        .partition(|f| !f.is_final(max_attempts))
}

/// Task indexes of shard `index` of a job with `total` tasks cut in shards of `shard_size`.
pub fn shard_tasks(index: u32, shard_size: u32, total: u64) -> std::ops::Range<u64> {
    let start = u64::from(index) * u64::from(shard_size);
    let end = (start + u64::from(shard_size)).min(total);
    start.min(end)..end
}

/// Number of shards of a job with `total` tasks cut in shards of `shard_size`.
pub fn shard_count(total: u64, shard_size: u32) -> u32 {
    let size = u64::from(shard_size.max(1));
    u32::try_from(total.div_ceil(size)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_keys_read_back_what_they_print() {
        let k = ShardKey {
            index: 12,
            generation: 3,
        };
        assert_eq!(k.to_string().parse::<ShardKey>(), Ok(k));
        for bad in ["", "12", "12-", "-3", "a-b", "1-2-3", "12-99999999999"] {
            assert!(bad.parse::<ShardKey>().is_err(), "{bad:?}");
        }
    }
}
