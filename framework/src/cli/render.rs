//! What the command line prints: cluster status (text or JSON), progress
//! while a job runs, a finished job's report.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::client::JobReport;
use crate::wire::{ClusterStatus, JobList, JobProgress, JobState, JobSummary};

/// Each key's share of the slots now, in percent: its weight over the
/// weights of the keys with shards waiting (`None` for a key with none).
pub(super) fn shares(keys: &[crate::wire::FairnessKey]) -> Vec<Option<f64>> {
    let total: u64 = keys
        .iter()
        .filter(|k| k.queued > 0)
        .map(|k| u64::from(k.weight))
        .sum();
    keys.iter()
        .map(|k| (k.queued > 0).then(|| 100.0 * f64::from(k.weight) / total as f64))
        .collect()
}

/// What waits, by priority, and the fairness keys' shares: a line each,
/// when there is something to say (shards at more than the default
/// priority, keys of more than one weight or more than one key waiting).
fn queued_text(s: &ClusterStatus) -> String {
    let mut out = String::new();
    if s.queued.iter().any(|q| q.priority > 0) {
        let by: Vec<String> = s
            .queued
            .iter()
            .map(|q| format!("{} at priority {}", q.shards, q.priority))
            .collect();
        out.push_str(&format!("queued shards: {}\n", by.join(", ")));
    }
    let waiting = s.fairness.iter().filter(|k| k.queued > 0).count();
    if waiting > 1 || s.fairness.iter().any(|k| k.weight != 1) {
        let shares = shares(&s.fairness);
        let keys: Vec<String> = s
            .fairness
            .iter()
            .zip(shares)
            .map(|(k, share)| {
                let share = share.map_or(String::new(), |p| format!(", {p:.0}% of the slots"));
                format!("{} weight {}, {} waiting{share}", k.key, k.weight, k.queued)
            })
            .collect();
        out.push_str(&format!("fair share: {}\n", keys.join("; ")));
    }
    if let Some(w) = &s.oldest_waiting {
        out.push_str(&format!(
            "oldest waiting: job {}, {} with a shard ready\n",
            w.job_id,
            ago_text(w.waiting_ms)
        ));
    }
    for l in &s.limits {
        let set = l
            .limit
            .as_ref()
            .map_or("not set".to_string(), super::limits::settings);
        let waiting = match l.waiting_shards {
            0 => String::new(),
            n => format!(", {n} shards waiting on it"),
        };
        out.push_str(&format!(
            "limit {}: {} running ({set}){waiting}\n",
            l.key, l.running
        ));
    }
    out
}

pub(super) fn status_text(s: &ClusterStatus, jobs: Option<&JobList>) -> String {
    let mut out = format!("leader {} epoch {}", s.leader, s.epoch);
    if let Some(level) = s.feature_level {
        out.push_str(&format!(", feature level {level}"));
    }
    if let Some(build) = &s.build {
        out.push_str(&format!(", build {build}"));
    }
    out.push('\n');
    let connected = s.workers.iter().filter(|w| w.connected).count();
    // The master's own worker runs shards only when no other has room
    // (a task that kills its process must not take the master with it).
    let own = |w: &&crate::wire::WorkerStatus| w.node_id == s.leader;
    let slots: u64 = s
        .workers
        .iter()
        .filter(|w| !own(w))
        .map(|w| u64::from(w.slots))
        .sum();
    let fallback: u64 = s
        .workers
        .iter()
        .filter(own)
        .map(|w| u64::from(w.slots))
        .sum();
    if s.workers.is_empty() {
        out.push_str("workers: none registered (start nodes with --role all or worker)\n");
    } else {
        let spare = match fallback {
            0 => String::new(),
            n => format!(" (and {n} on the master's own worker, used when those are full)"),
        };
        out.push_str(&format!(
            "workers: {} registered, {connected} connected, {slots} slots{spare}\n",
            s.workers.len()
        ));
    }
    // One build everywhere is said once; a mixed cluster (an upgrade
    // under way) shows each worker's.
    let builds: std::collections::BTreeSet<Option<&str>> =
        s.workers.iter().map(|w| w.build.as_deref()).collect();
    let mixed = builds.len() > 1;
    if let (false, Some(Some(build))) = (mixed, builds.first()) {
        out.push_str(&format!("build: {build} (every worker)\n"));
    }
    for w in &s.workers {
        // A connected link is alive (QUIC keep-alives would have ended a
        // silent one within the link timeout); the time since its last
        // frame says only how long it has been idle.
        let seen = match (w.connected, w.last_seen_ms, w.in_flight) {
            (true, Some(ms), 0) if ms >= 1000 => {
                format!("connected, idle {:.0} s", ms as f64 / 1000.0)
            }
            (true, _, _) => "connected".to_string(),
            (false, _, _) => "registered, not connected".to_string(),
        };
        let role = if own(&w) {
            " (the master's own: a fallback)"
        } else {
            ""
        };
        let version = match (mixed, &w.build, w.protocol) {
            (false, _, _) => String::new(),
            (true, Some(b), Some(p)) => format!(", build {b}, protocol {p}"),
            (true, Some(b), None) => format!(", build {b}"),
            (true, None, _) => ", an older build".to_string(),
        };
        let types = match w.other_types.as_slice() {
            [] => String::new(),
            names => format!(
                ", runs {} with other task types than the master's (none of those jobs)",
                names.join(", ")
            ),
        };
        out.push_str(&format!(
            "worker {} {} slots {} in-flight {} {seen}{role}{version}{types}\n",
            w.node_id, w.addr, w.slots, w.in_flight
        ));
    }
    out.push_str(&queued_text(s));
    if s.jobs.is_empty() {
        out.push_str("no jobs running\n");
    }
    for j in s.jobs.iter().take(SHOWN) {
        let note = jobs
            .and_then(|l| l.jobs.iter().find(|a| a.job_id == j.job_id))
            .and_then(|a| a.note.as_deref())
            .map_or(String::new(), |n| format!(" ({n})"));
        let scheduled = j.not_before_ms.map_or(String::new(), |ms| {
            format!("scheduled for {}, ", time_text(ms))
        });
        out.push_str(&format!(
            "job {} {} {scheduled}{}/{} tasks, {} failed (dead letters), {} retries{note}\n",
            j.job_id,
            j.job_name,
            j.counters.tasks_done,
            j.counters.tasks_total,
            j.counters.tasks_failed,
            j.counters.retries
        ));
    }
    if s.jobs.len() > SHOWN {
        out.push_str(&format!(
            "... and {} more running (`jobs --state running --last 0` lists them)\n",
            s.jobs.len() - SHOWN
        ));
    }
    if let Some(list) = jobs {
        let c = list.counts;
        out.push_str(&format!("jobs held: {}\n", counts_text(c)));
        let ended: Vec<&JobSummary> = list.jobs.iter().filter(|j| j.state.is_final()).collect();
        if !ended.is_empty() {
            out.push_str("newest finished (`jobs` filters and lists more):\n");
            for j in ended {
                out.push_str(&job_line(j));
            }
        }
    }
    out
}

/// Running jobs `status` shows.
const SHOWN: usize = 10;

/// One line per job, then how many more match.
pub(super) fn jobs_text(list: &JobList) -> String {
    let mut out = String::new();
    if list.jobs.is_empty() {
        out.push_str("no jobs\n");
    }
    for j in &list.jobs {
        out.push_str(&job_line(j));
    }
    let more = list.matched.saturating_sub(list.jobs.len() as u64);
    if more > 0 {
        out.push_str(&format!(
            "... and {more} more that match (`--last N`, or `--last 0` for up to 10,000)\n"
        ));
    }
    let c = list.counts;
    out.push_str(&format!("{}\n", counts_text(c)));
    out
}

/// Jobs by state, the scheduled among the running.
fn counts_text(c: crate::wire::StateCounts) -> String {
    let scheduled = match c.scheduled {
        0 => String::new(),
        n => format!(" ({n} scheduled)"),
    };
    format!(
        "{} running{scheduled}, {} done, {} cancelled",
        c.running, c.done, c.cancelled
    )
}

/// A job's line.
fn job_line(j: &JobSummary) -> String {
    let scheduled;
    let state = match j.state {
        JobState::Running if j.is_scheduled() => {
            scheduled = format!("scheduled for {}", time_text(j.not_before_ms.unwrap_or(0)));
            scheduled.as_str()
        }
        JobState::Running => "running",
        JobState::Done if j.fetched => "done, fetched",
        JobState::Done => "done",
        JobState::Cancelled => "cancelled",
    };
    let progress = match &j.counters {
        Some(c) => format!("{}/{} tasks", c.tasks_done, c.tasks_total),
        None => format!("{} tasks", j.tasks_total),
    };
    let when = if j.created_ms == 0 {
        String::new()
    } else {
        let ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .saturating_sub(j.created_ms);
        format!(", submitted {} ago", ago_text(ago))
    };
    let owner = j
        .owner
        .as_deref()
        .map_or(String::new(), |o| format!(", {}", o.replacen(':', " ", 1)));
    let priority = match j.priority {
        0 => String::new(),
        p => format!(", priority {p}"),
    };
    let key = j
        .fairness_key
        .as_deref()
        .map_or(String::new(), |k| format!(", fairness key {k}"));
    let owner = format!("{owner}{priority}{key}");
    let note = j
        .note
        .as_deref()
        .map_or(String::new(), |n| format!(" ({n})"));
    format!(
        "job {} {} {state}, {progress}{when}{owner}{note}\n",
        j.job_id, j.job_name
    )
}

/// A time (milliseconds since the Unix epoch) in RFC 3339, UTC, to the
/// second, with how far from now it is.
pub(super) fn time_text(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let utc = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms after the Unix epoch"));
    match ms.checked_sub(now) {
        Some(ahead) => format!("{utc} (in {})", ago_text(ahead)),
        None => format!("{utc} ({} ago)", ago_text(now - ms)),
    }
}

fn ago_text(ms: u64) -> String {
    match ms / 1000 {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

pub(super) fn status_json(s: &ClusterStatus, jobs: Option<&JobList>) -> String {
    // The status's own fields (`jobs` is the running ones), the newest
    // jobs held and the counts by state.
    let value = serde_json::to_value(s).map(|mut v| {
        if let (Some(map), Some(list)) = (v.as_object_mut(), jobs) {
            map.insert("held_jobs".into(), serde_json::json!(list.jobs));
            map.insert("held_counts".into(), serde_json::json!(list.counts));
        }
        v
    });
    value
        .and_then(|v| serde_json::to_string(&v))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Whether reports are JSON (`--log-format json`): set once at start.
static JSON_REPORTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reports are JSON from now on (`--log-format json`).
pub(super) fn json_reports() {
    JSON_REPORTS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A finished job's report on stderr: its figures and its failed tasks,
/// the first ten as text, or every one as one JSON line with
/// `--log-format json`.
pub(super) fn print_report(r: &JobReport) {
    let p = &r.progress;
    if JSON_REPORTS.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{}", report_json(r));
        return;
    }
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

/// A report as one JSON object: `{"job_id", "state", "counters",
/// "failures": [{"index", "error", "attempt", "retryable"}, ...]}`, every
/// failure in it.
pub(super) fn report_json(r: &JobReport) -> String {
    use crate::wire::core_serde::{Enc, EncList};
    let value = serde_json::json!({
        "job_id": r.progress.job_id,
        "job_name": r.progress.job_name,
        "state": r.progress.state,
        "counters": Enc(&r.progress.counters),
        "failures": EncList(&r.failures),
    });
    value.to_string()
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
