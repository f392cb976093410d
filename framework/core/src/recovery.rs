//! What a new master derives from a job's committed shard outcomes: which
//! shards are still to run, and the job's counters. Pure, so that failover
//! is tested without ZooKeeper.

use std::collections::BTreeMap;

use super::{
    shard_count, shard_tasks, split_failures, Counters, JobPlan, PendingShard, ShardKey,
    TaskFailure,
};

/// A committed shard as recovery needs it.
#[derive(Debug, Clone)]
pub struct CommittedShard {
    /// The attempt that was committed.
    pub attempt: u32,
    /// Failures it recorded.
    pub failures: Vec<TaskFailure>,
}

/// A job rebuilt from ZooKeeper.
#[derive(Debug, Clone)]
pub struct RecoveredJob {
    /// The scheduler's plan for what remains.
    pub plan: JobPlan,
    /// Final failures already committed, for the job's report.
    pub final_failures: Vec<TaskFailure>,
    /// The commits that count (the contiguous chain of each shard), each
    /// with the tasks whose outputs its partial result holds. Commits not
    /// listed here must not be merged.
    pub outputs: BTreeMap<ShardKey, Vec<u64>>,
}

/// Rebuilds a job's plan. Generation `g + 1` of a shard exists only if
/// generation `g` left retryable failures; any gap means garbage, and the
/// generations after the gap are ignored (their tasks will be recounted from
/// the last contiguous generation, which cannot double count because the
/// scheduler's next commit of that generation fails on the existing node).
pub fn recover_job(
    id: &str,
    name: &str,
    tasks_total: u64,
    shard_size: u32,
    max_attempts: u32,
    committed: &BTreeMap<ShardKey, CommittedShard>,
) -> RecoveredJob {
    let mut plan = JobPlan {
        id: id.to_string(),
        // The caller's: the record's.
        incarnation: 0,
        shard_timeout: None,
        name: name.to_string(),
        max_attempts,
        counters: Counters {
            tasks_total,
            ..Counters::default()
        },
        pending: Vec::new(),
        // The caller's: the record's.
        priority: 0,
        fairness: String::new(),
        not_before: None,
        under: Vec::new(),
    };
    let mut final_failures = Vec::new();
    let mut outputs = BTreeMap::new();
    for index in 0..shard_count(tasks_total, shard_size) {
        let mut tasks: Vec<u64> = shard_tasks(index, shard_size, tasks_total).collect();
        let mut attempt = 1;
        let mut generation = 0;
        while let Some(rec) = committed.get(&ShardKey { index, generation }) {
            let (retry, done) = split_failures(&tasks, &rec.failures, max_attempts);
            let failed_here: Vec<u64> = retry.iter().chain(&done).map(|f| f.index).collect();
            outputs.insert(
                ShardKey { index, generation },
                tasks
                    .iter()
                    .copied()
                    .filter(|t| !failed_here.contains(t))
                    .collect::<Vec<u64>>(),
            );
            plan.counters.tasks_done += (tasks.len() - retry.len()) as u64;
            plan.counters.tasks_failed += done.len() as u64;
            plan.counters.retries += retry.len() as u64;
            final_failures.extend(done.into_iter().cloned());
            tasks = retry.iter().map(|f| f.index).collect();
            attempt = rec.attempt + 1;
            generation += 1;
            if tasks.is_empty() {
                break;
            }
        }
        if !tasks.is_empty() {
            plan.pending.push(PendingShard {
                key: ShardKey { index, generation },
                tasks,
                attempt,
            });
        }
    }
    RecoveredJob {
        plan,
        final_failures,
        outputs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u32, generation: u32) -> ShardKey {
        ShardKey { index, generation }
    }

    #[test]
    fn outputs_list_the_tasks_each_counted_commit_holds() {
        let fail = |index, retryable| TaskFailure {
            index,
            error: "e".into(),
            attempt: 1,
            retryable,
        };
        let mut committed = BTreeMap::new();
        committed.insert(
            key(0, 0),
            CommittedShard {
                attempt: 1,
                failures: vec![fail(1, true), fail(2, false)],
            },
        );
        committed.insert(
            key(0, 1),
            CommittedShard {
                attempt: 2,
                failures: vec![],
            },
        );
        // After a gap (no generation 2): garbage, never merged.
        committed.insert(
            key(0, 3),
            CommittedShard {
                attempt: 4,
                failures: vec![],
            },
        );
        let r = recover_job("j", "n", 4, 4, 3, &committed);
        let outputs: Vec<_> = r.outputs.into_iter().collect();
        assert_eq!(outputs, vec![(key(0, 0), vec![0, 3]), (key(0, 1), vec![1])]);
    }

    #[test]
    fn nothing_committed_means_everything_pending() {
        let r = recover_job("j", "n", 10, 4, 3, &BTreeMap::new());
        let keys: Vec<_> = r
            .plan
            .pending
            .iter()
            .map(|p| (p.key, p.tasks.len()))
            .collect();
        assert_eq!(keys, vec![(key(0, 0), 4), (key(1, 0), 4), (key(2, 0), 2)]);
        assert_eq!(r.plan.counters.tasks_done, 0);
    }

    #[test]
    fn retry_chain_is_followed() {
        let fail = |index, attempt, retryable| TaskFailure {
            index,
            error: "e".into(),
            attempt,
            retryable,
        };
        let mut c = BTreeMap::new();
        c.insert(
            key(0, 0),
            CommittedShard {
                attempt: 1,
                failures: vec![fail(1, 1, true), fail(2, 1, false)],
            },
        );
        c.insert(
            key(1, 0),
            CommittedShard {
                attempt: 2,
                failures: vec![],
            },
        );
        let r = recover_job("j", "n", 6, 3, 3, &c);
        assert_eq!(
            r.plan.pending,
            vec![PendingShard {
                key: key(0, 1),
                tasks: vec![1],
                attempt: 2
            }]
        );
        assert_eq!(
            (
                r.plan.counters.tasks_done,
                r.plan.counters.tasks_failed,
                r.plan.counters.retries
            ),
            (5, 1, 1)
        );
        assert_eq!(r.final_failures.len(), 1);

        c.insert(
            key(0, 1),
            CommittedShard {
                attempt: 2,
                failures: vec![],
            },
        );
        let r = recover_job("j", "n", 6, 3, 3, &c);
        assert!(r.plan.pending.is_empty());
        assert_eq!(r.plan.counters.tasks_done, 6);
    }

    #[test]
    fn garbage_failures_for_foreign_tasks_are_ignored() {
        let mut c = BTreeMap::new();
        let f = TaskFailure {
            index: 99,
            error: "e".into(),
            attempt: 1,
            retryable: true,
        };
        c.insert(
            key(0, 0),
            CommittedShard {
                attempt: 1,
                failures: vec![f],
            },
        );
        let r = recover_job("j", "n", 2, 2, 3, &c);
        assert!(r.plan.pending.is_empty());
        assert_eq!(r.plan.counters.tasks_done, 2);
    }

    #[test]
    fn a_commit_repeating_a_failed_index_counts_the_task_once() {
        let f = TaskFailure {
            index: 0,
            error: "e".into(),
            attempt: 1,
            retryable: true,
        };
        let mut c = BTreeMap::new();
        c.insert(
            key(0, 0),
            CommittedShard {
                attempt: 1,
                failures: vec![f.clone(), f],
            },
        );
        let r = recover_job("j", "n", 2, 2, 3, &c);
        assert_eq!(
            r.plan.pending,
            vec![PendingShard {
                key: key(0, 1),
                tasks: vec![0],
                attempt: 2
            }]
        );
        assert_eq!(
            (r.plan.counters.tasks_done, r.plan.counters.retries),
            (1, 1)
        );
    }
}
