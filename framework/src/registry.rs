//! The jobs a node knows, with their types erased so that actors can run
//! shards and merge partial results by job name.

use std::any::Any;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use serde_bytes::ByteBuf;

use crate::core::TaskFailure;
use crate::task::{Job, Task, TaskContext, TaskError};

/// A partial or final job result held by the master, of the job's own `Result` type.
pub(crate) type Accumulator = Box<dyn Any + Send>;

pub use crate::wire::{decode, encode, CodecError};

/// Where a shard runs, for [`TaskContext`].
#[derive(Debug, Clone)]
pub(crate) struct RunEnv {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub store: Option<crate::store::Store>,
    /// The run's cancellation flag: once set, no further task starts.
    pub cancel: crate::task::Cancel,
}

/// A shard's run on a worker: the encoded partial result of the tasks that
/// succeeded, and the failures.
pub(crate) struct ShardRun {
    pub output: Vec<u8>,
    pub failures: Vec<TaskFailure>,
}

pub(crate) trait ErasedJob: Send + Sync {
    fn run_shard(
        &self,
        job_id: &str,
        attempt: u32,
        tasks: Vec<(u64, ByteBuf)>,
        env: &RunEnv,
    ) -> ShardRun;
    fn new_acc(&self) -> Accumulator;
    /// The limits every job of the type is under ([`crate::Job::limits`]).
    fn limits(&self) -> Vec<String>;
    fn merge_encoded(&self, acc: &mut Accumulator, bytes: &[u8]) -> Result<(), CodecError>;
    fn encode_acc(&self, acc: &Accumulator) -> Result<Vec<u8>, CodecError>;
}

struct Erased<J>(PhantomData<fn() -> J>);

/// Longest error message kept per failed task: results must fit ZooKeeper.
const MAX_ERROR_BYTES: usize = 2048;

fn bounded(mut message: String) -> String {
    if message.len() > MAX_ERROR_BYTES {
        let mut cut = MAX_ERROR_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl<J: Job> ErasedJob for Erased<J> {
    fn run_shard(
        &self,
        job_id: &str,
        attempt: u32,
        tasks: Vec<(u64, ByteBuf)>,
        env: &RunEnv,
    ) -> ShardRun {
        let mut acc = J::Result::default();
        let mut failures = Vec::new();
        let indexes: Vec<u64> = tasks.iter().map(|(i, _)| *i).collect();
        for (index, bytes) in tasks {
            let outcome = match decode::<J::Task>("task", &bytes) {
                Err(e) => Err(TaskError::permanent(format!(
                    "{} task {index}: {e}",
                    J::Task::NAME
                ))),
                Ok(_) if env.cancel.is_cancelled() => Err(TaskError::retryable(
                    "its run was stopped before it started",
                )),
                Ok(task) => {
                    let ctx = TaskContext {
                        job_id: job_id.to_string(),
                        index,
                        attempt,
                        node_id: env.node_id.clone(),
                        data_dir: env.data_dir.clone(),
                        store: env.store.clone(),
                        cancelled: env.cancel.clone(),
                    };
                    let started = std::time::Instant::now();
                    let outcome = catch_unwind(AssertUnwindSafe(|| task.run(&ctx)));
                    metrics::histogram!(crate::metrics::TASK_SECONDS, "job_type" => J::NAME)
                        .record(started.elapsed().as_secs_f64());
                    match outcome {
                        Ok(r) => r,
                        Err(payload) => Err(TaskError::retryable(format!(
                            "task panicked: {}",
                            panic_message(&*payload)
                        ))),
                    }
                }
            };
            match outcome {
                Ok(out) => J::fold(&mut acc, index, out),
                Err(e) => failures.push(TaskFailure {
                    index,
                    error: bounded(e.message),
                    attempt,
                    retryable: e.retryable,
                }),
            }
        }
        match encode("shard result", &acc) {
            Ok(output) => ShardRun { output, failures },
            // The outputs folded into it are lost: each of the shard's
            // tasks fails (once), with the reason.
            Err(e) => {
                let error = bounded(e.to_string());
                let failed: std::collections::HashSet<u64> =
                    failures.iter().map(|f| f.index).collect();
                for index in indexes.into_iter().filter(|i| !failed.contains(i)) {
                    failures.push(TaskFailure {
                        index,
                        error: error.clone(),
                        attempt,
                        retryable: false,
                    });
                }
                ShardRun {
                    output: Vec::new(),
                    failures,
                }
            }
        }
    }

    fn new_acc(&self) -> Accumulator {
        Box::new(J::Result::default())
    }

    fn limits(&self) -> Vec<String> {
        J::limits()
    }

    fn merge_encoded(&self, acc: &mut Accumulator, bytes: &[u8]) -> Result<(), CodecError> {
        let acc = acc
            .downcast_mut::<J::Result>()
            .ok_or(CodecError::WrongType)?;
        let mut decoder = crate::wire::payload_decoder(bytes);
        J::merge_from(acc, &mut decoder).map_err(|source| CodecError::Decode {
            what: "shard result",
            source,
        })
    }

    fn encode_acc(&self, acc: &Accumulator) -> Result<Vec<u8>, CodecError> {
        let acc = acc
            .downcast_ref::<J::Result>()
            .ok_or(CodecError::WrongType)?;
        encode("job result", acc)
    }
}

/// The shape serde sees of a job's task and result types: their formats,
/// with the names and fields of every struct and enum they contain (as
/// `serde-reflection` traces them), so that a submitting binary and a
/// cluster built from different definitions can be told apart before any
/// task runs. `None` for types that cannot be traced (a hand-written
/// `Deserialize` that checks its input): those are not compared. Of an
/// enum nested in a struct only the first variant is traced, so a change
/// in its other variants goes unseen.
pub fn shape<J: Job>() -> Option<String> {
    use serde_reflection::{Tracer, TracerConfig};
    let mut tracer = Tracer::new(TracerConfig::default());
    let (task, _) = tracer.trace_simple_type::<J::Task>().ok()?;
    let (result, _) = tracer.trace_simple_type::<J::Result>().ok()?;
    // Enums nested in the types are explored one variant per pass: a few
    // more passes reach the rest (the same number on every side).
    for _ in 0..8 {
        let _ = tracer.trace_simple_type::<J::Task>();
        let _ = tracer.trace_simple_type::<J::Result>();
    }
    let containers = tracer.registry_unchecked();
    Some(format!(
        "task {task:?}, result {result:?}, where {containers:?}"
    ))
}

/// A [`shape`] in eight bytes (of its SHA-256): what workers announce and
/// job records keep, so that two builds' types for one job name can be
/// compared without sending the shape.
pub fn shape_id(shape: &str) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, shape.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// Whether a job of `name` whose types are `theirs` (a [`shape_id`]) runs
/// as this registry defines it: the same shape, or one that cannot be
/// compared (types that cannot be traced, or a peer of a release that did
/// not say; those were trusted before shapes were announced, and still
/// are).
pub fn same_types(theirs: Option<u64>, ours: Option<u64>) -> bool {
    match (theirs, ours) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// The jobs a node can run or coordinate, by name.
#[derive(Clone, Default)]
pub struct Registry {
    jobs: BTreeMap<&'static str, Arc<dyn ErasedJob>>,
    /// Each job's [`shape`], when it can be traced, with its
    /// [`shape_id`] (hashed once here: every submission compares it).
    shapes: BTreeMap<&'static str, (String, u64)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.jobs.keys()).finish()
    }
}

impl Registry {
    /// Registers a job.
    pub fn add<J: Job>(&mut self) {
        self.jobs
            .insert(J::NAME, Arc::new(Erased::<J>(PhantomData)));
        match shape::<J>() {
            Some(s) => {
                let id = shape_id(&s);
                self.shapes.insert(J::NAME, (s, id))
            }
            None => self.shapes.remove(J::NAME),
        };
    }

    /// Job `name`'s [`shape`], if registered and traceable.
    pub fn shape(&self, name: &str) -> Option<&str> {
        self.shapes.get(name).map(|(s, _)| s.as_str())
    }

    /// Job `name`'s [`shape_id`], if registered and traceable.
    pub fn shape_id(&self, name: &str) -> Option<u64> {
        self.shapes.get(name).map(|(_, id)| *id)
    }

    /// Every traceable registered job's [`shape_id`], by name: what a
    /// worker announces.
    pub fn shape_ids(&self) -> BTreeMap<String, u64> {
        self.shapes
            .iter()
            .map(|(name, (_, id))| (name.to_string(), *id))
            .collect()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<dyn ErasedJob>> {
        self.jobs.get(name)
    }

    /// Names of the registered jobs.
    pub fn names(&self) -> Vec<String> {
        self.jobs.keys().map(|s| s.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Collect;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Div(u64);
    impl Task for Div {
        type Output = u64;
        const NAME: &'static str = "div";
        fn run(self, _: &TaskContext) -> Result<u64, TaskError> {
            if self.0 == 7 {
                panic!("seven");
            }
            100u64
                .checked_div(self.0)
                .ok_or_else(|| TaskError::permanent("division by zero"))
        }
    }

    #[test]
    fn runs_folds_and_reports_failures_and_panics() {
        let mut r = Registry::default();
        r.add::<Collect<Div>>();
        let job = r.get("div").unwrap();
        let env = RunEnv {
            node_id: "n".into(),
            data_dir: PathBuf::new(),
            store: None,
            cancel: Default::default(),
        };
        let tasks = [10u64, 0, 7, 50]
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, ByteBuf::from(encode("t", &Div(*v)).unwrap())))
            .chain([(4, ByteBuf::from(vec![0xc1]))])
            .collect();
        let run = job.run_shard("j", 1, tasks, &env);
        let out: Vec<(u64, u64)> = decode("r", &run.output).unwrap();
        assert_eq!(out, vec![(0, 10), (3, 2)]);
        let f: Vec<_> = run
            .failures
            .iter()
            .map(|f| (f.index, f.retryable, f.error.clone()))
            .collect();
        assert_eq!(f[0], (1, false, "division by zero".to_string()));
        assert_eq!(f[1], (2, true, "task panicked: seven".to_string()));
        assert_eq!((f[2].0, f[2].1), (4, false));
        assert!(f[2].2.contains("div task 4"), "{}", f[2].2);

        let mut acc = job.new_acc();
        job.merge_encoded(&mut acc, &run.output).unwrap();
        job.merge_encoded(&mut acc, &encode("r", &vec![(1u64, 5u64)]).unwrap())
            .unwrap();
        let all: Vec<(u64, u64)> = decode("r", &job.encode_acc(&acc).unwrap()).unwrap();
        assert_eq!(all, vec![(0, 10), (1, 5), (3, 2)]);
        assert!(job.merge_encoded(&mut acc, b"\xc1").is_err());
    }

    /// A result whose encoding fails once it holds task 2's output.
    #[derive(Default, Deserialize)]
    struct Picky(Vec<u64>);
    impl Serialize for Picky {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if self.0.contains(&2) {
                return Err(serde::ser::Error::custom("cannot encode task 2's output"));
            }
            self.0.serialize(s)
        }
    }
    struct PickyJob;
    impl Job for PickyJob {
        type Task = Div;
        type Result = Picky;
        const NAME: &'static str = "picky";
        fn fold(acc: &mut Picky, index: u64, _: u64) {
            acc.0.push(index);
        }
        fn merge(acc: &mut Picky, other: Picky) {
            acc.0.extend(other.0);
        }
    }

    #[test]
    fn a_shard_whose_output_cannot_be_encoded_fails_each_of_its_tasks() {
        let mut r = Registry::default();
        r.add::<PickyJob>();
        let job = r.get("picky").unwrap();
        let env = RunEnv {
            node_id: "n".into(),
            data_dir: PathBuf::new(),
            store: None,
            cancel: Default::default(),
        };
        let tasks: Vec<(u64, ByteBuf)> = [1u64, 2, 4]
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64 + 1, ByteBuf::from(encode("t", &Div(*v)).unwrap())))
            .collect();
        let run = job.run_shard("j", 2, tasks, &env);
        assert!(run.output.is_empty());
        let mut f: Vec<(u64, u32, bool)> = run
            .failures
            .iter()
            .map(|f| (f.index, f.attempt, f.retryable))
            .collect();
        f.sort_unstable();
        // Every task's output is lost with the shard's.
        assert_eq!(f, vec![(1, 2, false), (2, 2, false), (3, 2, false)]);
        for f in &run.failures {
            assert!(
                f.error.contains("cannot encode task 2's output"),
                "{}",
                f.error
            );
        }
        assert!(run.failures.iter().all(|f| f.index != u64::MAX));
    }

    #[test]
    fn shapes_tell_different_definitions_of_one_name_apart() {
        #[derive(Serialize, Deserialize)]
        struct Wide {
            a: u64,
            b: String,
        }
        impl Task for Wide {
            type Output = u64;
            const NAME: &'static str = "div";
            fn run(self, _: &TaskContext) -> Result<u64, TaskError> {
                Ok(self.a)
            }
        }
        let div = shape::<Collect<Div>>().expect("traceable");
        assert_eq!(Some(div.clone()), shape::<Collect<Div>>(), "deterministic");
        let wide = shape::<Collect<Wide>>().expect("traceable");
        assert_ne!(div, wide);
        assert!(wide.contains("name: \"b\", value: Str"), "{wide}");
        let mut r = Registry::default();
        r.add::<Collect<Div>>();
        assert_eq!(r.shape("div"), Some(div.as_str()));
        // What workers announce and records keep: the same for the same
        // types, another for others; a side that did not say is trusted.
        let ours = r.shape_id("div");
        assert_eq!(ours, Some(shape_id(&div)));
        assert_eq!(r.shape_ids().get("div").copied(), ours);
        assert_ne!(ours, Some(shape_id(&wide)));
        assert!(same_types(ours, ours));
        assert!(!same_types(Some(shape_id(&wide)), ours));
        assert!(same_types(None, ours) && same_types(ours, None));
        assert_eq!(r.shape("other"), None);
    }
}
