//! What the command line prints: cluster status (text or JSON), progress
//! while a job runs, a finished job's report.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::client::JobReport;
use crate::wire::{JobProgress, JobState};

pub(super) fn status_text(s: &crate::wire::ClusterStatus) -> String {
    let mut out = format!("leader {} epoch {}\n", s.leader, s.epoch);
    for w in &s.workers {
        let seen = match (w.connected, w.last_seen_ms) {
            (true, Some(ms)) => format!("connected, last heard {:.1} s ago", ms as f64 / 1000.0),
            (true, None) => "connected".to_string(),
            (false, _) => "registered, not connected".to_string(),
        };
        out.push_str(&format!(
            "worker {} {} slots {} in-flight {} {seen}\n",
            w.node_id, w.addr, w.slots, w.in_flight
        ));
    }
    if s.jobs.is_empty() {
        out.push_str("no jobs running\n");
    }
    for j in &s.jobs {
        out.push_str(&format!(
            "job {} {} {}/{} tasks, {} failed (dead letters), {} retries\n",
            j.job_id,
            j.job_name,
            j.counters.tasks_done,
            j.counters.tasks_total,
            j.counters.tasks_failed,
            j.counters.retries
        ));
    }
    out
}

pub(super) fn status_json(s: &crate::wire::ClusterStatus) -> String {
    serde_json::to_string(s).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

pub(super) fn print_report(r: &JobReport) {
    let p = &r.progress;
    eprintln!(
        "job {}: {} tasks, {} failed, {} retried attempts",
        p.job_id, p.counters.tasks_total, p.counters.tasks_failed, p.counters.retries
    );
    for f in r.failures.iter().take(10) {
        eprintln!(
            "  task {} failed after {} attempt(s): {}",
            f.index, f.attempt, f.error
        );
    }
    if r.failures.len() > 10 {
        eprintln!("  ... and {} more failed tasks", r.failures.len() - 10);
    }
}

/// Job progress for a person: a bar with rate and ETA on a terminal, a
/// plain line per second otherwise (logs, CI).
pub(super) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: Instant,
}

impl Progress {
    pub(super) fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{bar:40.cyan/blue} {pos}/{len} tasks {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Progress {
            bar,
            last: Instant::now() - Duration::from_secs(10),
        }
    }

    pub(super) fn show(&mut self, p: &JobProgress) {
        let extra = format!(
            "({} failed, {} retries)",
            p.counters.tasks_failed, p.counters.retries
        );
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.counters.tasks_total);
                bar.set_position(p.counters.tasks_done);
                bar.set_message(extra);
                if p.state != JobState::Running {
                    bar.finish();
                }
            }
            None => {
                if p.state == JobState::Running && self.last.elapsed() < Duration::from_secs(1) {
                    return;
                }
                self.last = Instant::now();
                eprintln!(
                    "progress: {}/{} tasks {extra}",
                    p.counters.tasks_done, p.counters.tasks_total
                );
            }
        }
    }
}
