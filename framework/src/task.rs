//! The user-facing boundary: the [`Task`] a user implements, the [`Job`] that
//! says how task outputs combine, and the errors a task may return.
//!
//! Nothing here knows about ZooKeeper, QUIC or actors: a `Task` is a plain
//! serde value with a `run` method, and a `Job` is a fold over task outputs.

use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One unit of user work: a serde value sent to a worker, where [`Task::run`]
/// turns it into an [`Task::Output`].
///
/// `run` is called on a worker's task thread pool, never on an actor thread,
/// so it may block or burn CPU. A panic is caught and reported as a failed
/// attempt of this task with the panic message.
///
/// ```
/// use ringleader::{Task, TaskContext, TaskError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Square(u64);
///
/// impl Task for Square {
///     type Output = u64;
///     const NAME: &'static str = "square";
///     fn run(self, _ctx: &TaskContext) -> Result<u64, TaskError> {
///         self.0.checked_mul(self.0).ok_or_else(|| TaskError::permanent("overflow"))
///     }
/// }
/// ```
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// What one run of the task produces.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// A stable name: workers advertise it and the master routes by it.
    const NAME: &'static str;
    /// Runs the task. Return [`TaskError::retryable`] for transient failures
    /// (the framework retries up to the job's attempt limit) and
    /// [`TaskError::permanent`] for failures no retry can fix.
    fn run(self, ctx: &TaskContext) -> Result<Self::Output, TaskError>;
}

/// How a job turns its tasks' outputs into one result.
///
/// Workers fold the outputs of a shard's tasks into one partial
/// [`Job::Result`] with [`Job::fold`]; the master combines committed partials
/// with [`Job::merge`]. `merge` must be associative and commutative, because
/// shards commit in any order.
pub trait Job: Send + Sync + 'static {
    /// The task type this job runs.
    type Task: Task;
    /// The reduced result, starting from `Default`.
    type Result: Serialize + DeserializeOwned + Default + Send + 'static;
    /// A stable job name, used on the wire and in `submit`.
    const NAME: &'static str;
    /// Adds one task output (task `index` in submission order) to a partial result.
    fn fold(acc: &mut Self::Result, index: u64, output: <Self::Task as Task>::Output);
    /// Merges two partial results.
    fn merge(acc: &mut Self::Result, other: Self::Result);
    /// Merges an encoded partial result straight from its decoder. The
    /// default decodes a whole `Result` and calls [`Job::merge`]; a job with
    /// big partials (a map of counts) can add each entry as it is read and
    /// skip building the temporary one. Such an implementation leaves what
    /// it read merged if decoding fails midway (the master logs the shard
    /// as unmergeable either way).
    fn merge_from<'de, D: serde::Deserializer<'de>>(
        acc: &mut Self::Result,
        decoder: D,
    ) -> Result<(), D::Error> {
        let other = Self::Result::deserialize(decoder)?;
        Self::merge(acc, other);
        Ok(())
    }
    /// Tasks per shard when the submission does not say (the unit of
    /// assignment, transport and ZooKeeper commit). `None`, the default:
    /// the master cuts the job so that every slot of the workers that run
    /// it gets a few shards, within a bound on the number of shards
    /// ([`crate::core::job::auto_shard_size`]); the size chosen is recorded
    /// with the job.
    fn default_shard_size() -> Option<u32> {
        None
    }
    /// The limits every job of this type is under (`limits set`), besides
    /// those its submission names (`submit --under`,
    /// `SubmitOptions::under`): the master's registration of the type
    /// says, so that a job type calling a rate-limited service is held to
    /// the rate whoever submits it. None, the default.
    fn limits() -> Vec<String> {
        Vec::new()
    }
}

/// The job a bare [`Task`] gets when registered with
/// [`NodeBuilder::task`](crate::NodeBuilder::task): it collects every
/// output with its task index, sorted by index.
pub struct Collect<T>(std::marker::PhantomData<fn() -> T>);

impl<T: Task> Job for Collect<T> {
    type Task = T;
    type Result = Vec<(u64, T::Output)>;
    const NAME: &'static str = T::NAME;
    fn fold(acc: &mut Self::Result, index: u64, output: T::Output) {
        acc.push((index, output));
    }
    /// Both sides are sorted by index. Only the tail of `acc` that `other`
    /// reaches into is sorted again (shards mostly commit in order, so this
    /// is usually nothing): merging stays linear in the partial, not in the
    /// result gathered so far.
    fn merge(acc: &mut Self::Result, mut other: Self::Result) {
        let Some(&(first, _)) = other.first() else {
            return;
        };
        let from = acc.partition_point(|(index, _)| *index < first);
        acc.append(&mut other);
        acc[from..].sort_by_key(|(index, _)| *index);
    }
}

/// What a running task may know about where it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The job this task belongs to.
    pub job_id: String,
    /// The task's index in its job's submission order.
    pub index: u64,
    /// Which attempt this is, starting at 1.
    pub attempt: u32,
    /// The id of the node running the task.
    pub node_id: String,
    /// The node's data directory (scratch space of this host).
    pub data_dir: PathBuf,
    /// The cluster's object store (`--store`), for tasks that read or
    /// write objects: inputs uploaded by `submit --upload`, say. Use its
    /// `*_blocking` methods (a task runs on a blocking thread).
    pub store: Option<crate::store::Store>,
    /// Set when the run is no longer wanted (see [`TaskContext::is_cancelled`]).
    pub(crate) cancelled: Cancel,
}

/// A run's cancellation flag, shared by the worker and the run's tasks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    /// Tells the run's tasks to stop.
    pub(crate) fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the run was told to stop.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl TaskContext {
    /// A context for calling [`Task::run`] outside a cluster (a unit test
    /// of a task): attempt 1, node `local`, the system's temporary
    /// directory, no store, never cancelled.
    pub fn new(job_id: impl Into<String>, index: u64) -> Self {
        TaskContext {
            job_id: job_id.into(),
            index,
            attempt: 1,
            node_id: "local".into(),
            data_dir: std::env::temp_dir(),
            store: None,
            cancelled: Cancel::default(),
        }
    }

    /// Whether this run is no longer wanted: its job was cancelled, or
    /// another copy of its shard (a speculative one, after a shard timeout)
    /// was committed first. Nothing can stop a thread from outside, so a
    /// long task should look at this now and then (between items of
    /// work, or every few hundred milliseconds of a wait) and return at
    /// once when it is set: its output counts for nothing, and its
    /// worker's slot stays taken until it returns. The shard's remaining
    /// tasks are not started.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.is_cancelled()
    }
}

/// A task's failure, with a message for the user and whether a retry may help.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// Human-readable cause, shown in `status` and in the job's result.
    pub message: String,
    /// Whether another attempt could succeed.
    pub retryable: bool,
}

impl TaskError {
    /// A failure worth another attempt (I/O hiccup, busy resource).
    pub fn retryable(message: impl fmt::Display) -> Self {
        TaskError {
            message: message.to_string(),
            retryable: true,
        }
    }
    /// A failure no retry will fix (bad input, missing file).
    pub fn permanent(message: impl fmt::Display) -> Self {
        TaskError {
            message: message.to_string(),
            retryable: false,
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Echo;
    impl Task for Echo {
        type Output = u64;
        const NAME: &'static str = "echo";
        fn run(self, _ctx: &TaskContext) -> Result<u64, TaskError> {
            Ok(0)
        }
    }

    /// Partials merged in every order give the result sorted by index.
    #[test]
    fn collect_merges_partials_in_any_order() {
        let partials: Vec<Vec<(u64, u64)>> = vec![
            vec![(0, 0), (1, 10)],
            vec![(2, 20), (3, 30)],
            vec![(4, 40)],
            vec![(5, 50), (6, 60), (7, 70)],
        ];
        let want: Vec<(u64, u64)> = (0..8).map(|i| (i, i * 10)).collect();
        let orders: [[usize; 4]; 5] = [
            [0, 1, 2, 3],
            [3, 2, 1, 0],
            [1, 3, 0, 2],
            [2, 0, 3, 1],
            [0, 3, 1, 2],
        ];
        for order in orders {
            let mut acc = Vec::new();
            for i in order {
                <Collect<Echo> as Job>::merge(&mut acc, partials[i].clone());
            }
            assert_eq!(acc, want, "order {order:?}");
        }
    }
}
