//! Benchmarks live in `benches/`; run `cargo bench -p ringleader-benches`.
//!
//! [`Stamp`]: the task of the cluster benchmark's scheduling rows, which
//! records when it ran, so that what is measured is the tasks' own
//! history (their starts against their jobs' times, their overlap under a
//! limit), not what the master says of itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringleader::{Task, TaskContext, TaskError};
use serde::{Deserialize, Serialize};

/// Sleeps `sleep_ms`, and returns when it started and ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stamp {
    /// Tells the tasks apart.
    pub value: u64,
    /// How long it runs.
    pub sleep_ms: u64,
    /// A file each run appends `value start_us` to (one line, one write
    /// of the file opened to append): runs of one task counted, however
    /// many its job's result shows.
    #[serde(default)]
    pub log: Option<String>,
}

/// A [`Stamp`]'s run: microseconds since the Unix epoch, by the worker's
/// clock (one machine's, in the benchmark).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stamped {
    /// The task's value.
    pub value: u64,
    /// When it started.
    pub start_us: u64,
    /// When it ended.
    pub end_us: u64,
}

/// Now, in microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Task for Stamp {
    type Output = Stamped;
    const NAME: &'static str = "stamp";
    fn run(self, _ctx: &TaskContext) -> Result<Stamped, TaskError> {
        let start_us = now_us();
        if let Some(path) = &self.log {
            use std::io::Write as _;
            let line = format!("{} {start_us}\n", self.value);
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| TaskError::permanent(format!("{path}: {e}")))?;
            f.write_all(line.as_bytes())
                .map_err(|e| TaskError::permanent(format!("{path}: {e}")))?;
        }
        if self.sleep_ms > 0 {
            std::thread::sleep(Duration::from_millis(self.sleep_ms));
        }
        Ok(Stamped {
            value: self.value,
            start_us,
            end_us: now_us(),
        })
    }
}
