//! A task whose behaviour is chosen by its argument: succeed, sleep, panic
//! on early attempts, fail permanently, or abort its whole process. Fault
//! tests use it to prove what the framework does with each.

use std::time::Duration;

use ringleader::{Task, TaskContext, TaskError};
use serde::{Deserialize, Serialize};

/// What a [`Probe`] does before returning its value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Behaviour {
    /// Return at once.
    Ok,
    /// Sleep this many milliseconds, then return; return early, failed,
    /// when the run is cancelled ([`TaskContext::is_cancelled`], looked at
    /// every 10 ms).
    Sleep(u64),
    /// Panic on attempts up to and including this one, then return.
    PanicUntil(u32),
    /// Fail permanently.
    Fail,
    /// Abort the worker process (as a segfault in native code would).
    Abort,
    /// Hang (for an hour) when run on the node with this id, else return.
    HangOn(String),
    /// Keep busy this many milliseconds, deaf to cancellation (as code
    /// that never looks at its context), then return.
    Busy(u64),
    /// Wait until a file exists at this path (a gate a test opens; at
    /// most an hour), then return; return early, failed, when the run is
    /// cancelled.
    WaitFor(String),
}

/// `n` probes that succeed at once, with values from `first` on (each
/// returns twice its value).
pub fn oks(first: u64, n: u64) -> Vec<Probe> {
    (first..first + n)
        .map(|value| Probe {
            value,
            behaviour: Behaviour::Ok,
        })
        .collect()
}

/// The job `probe` with other task types: what a later build of the
/// application registers after adding a field to its task. The `probe`
/// binary registers it instead of [`Probe`] when `PROBE_TYPES=2` is set
/// (the tests of a rolling upgrade of task types).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeV2 {
    /// The argument.
    pub value: u64,
    /// The behaviour.
    pub behaviour: Behaviour,
    /// A field the first build does not know.
    #[serde(default)]
    pub label: String,
}

impl Task for ProbeV2 {
    type Output = u64;
    const NAME: &'static str = "probe";
    fn run(self, ctx: &TaskContext) -> Result<u64, TaskError> {
        let probe = Probe {
            value: self.value,
            behaviour: self.behaviour,
        };
        probe.run(ctx)
    }
}

/// The error of a probe whose run was cancelled while it waited.
fn cancelled(value: u64) -> TaskError {
    TaskError::permanent(format!("probe {value} stopped: its run was cancelled"))
}

/// Returns `value * 2` after behaving as told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    /// The argument.
    pub value: u64,
    /// The behaviour.
    pub behaviour: Behaviour,
}

impl Task for Probe {
    type Output = u64;
    const NAME: &'static str = "probe";
    fn run(self, ctx: &TaskContext) -> Result<u64, TaskError> {
        match &self.behaviour {
            Behaviour::Ok => {}
            Behaviour::Sleep(ms) => {
                let until = std::time::Instant::now() + Duration::from_millis(*ms);
                while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                    if ctx.is_cancelled() {
                        return Err(cancelled(self.value));
                    }
                    std::thread::sleep(left.min(Duration::from_millis(10)));
                }
            }
            Behaviour::Busy(ms) => std::thread::sleep(Duration::from_millis(*ms)),
            Behaviour::WaitFor(path) => {
                let until = std::time::Instant::now() + Duration::from_secs(3600);
                while !std::path::Path::new(path).exists() && std::time::Instant::now() < until {
                    if ctx.is_cancelled() {
                        return Err(cancelled(self.value));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Behaviour::PanicUntil(n) if ctx.attempt <= *n => {
                panic!("probe {} panics on attempt {}", self.value, ctx.attempt)
            }
            Behaviour::PanicUntil(_) => {}
            Behaviour::Fail => {
                return Err(TaskError::permanent(format!(
                    "probe {} fails on purpose",
                    self.value
                )))
            }
            Behaviour::Abort => std::process::abort(),
            Behaviour::HangOn(node) if *node == ctx.node_id => {
                std::thread::sleep(Duration::from_secs(3600))
            }
            Behaviour::HangOn(_) => {}
        }
        Ok(self.value * 2)
    }
}

/// A job summing probe outputs whose master-side merge refuses a partial
/// equal to [`UNMERGEABLE`]: a user `merge_from` that fails on a committed
/// output, for tests that such outputs are reported, not silently dropped.
pub struct FragileSum;

/// The partial [`FragileSum`] cannot merge (the output of probe 1,000,001).
pub const UNMERGEABLE: u64 = 2_000_002;

impl ringleader::Job for FragileSum {
    type Task = Probe;
    type Result = u64;
    const NAME: &'static str = "fragile-sum";
    fn fold(acc: &mut u64, _index: u64, output: u64) {
        *acc += output;
    }
    fn merge(acc: &mut u64, other: u64) {
        *acc += other;
    }
    fn merge_from<'de, D: serde::Deserializer<'de>>(
        acc: &mut u64,
        decoder: D,
    ) -> Result<(), D::Error> {
        let partial = u64::deserialize(decoder)?;
        if partial == UNMERGEABLE {
            return Err(serde::de::Error::custom("a partial this job cannot merge"));
        }
        *acc += partial;
        Ok(())
    }
    fn default_shard_size() -> Option<u32> {
        Some(1)
    }
}
