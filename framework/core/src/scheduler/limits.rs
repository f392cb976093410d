//! Cluster-wide limits on the runs of the jobs under them, exact because
//! one master places every run.
//!
//! A limit caps the runs held at once (`max_running`: a run counts from
//! its placement on a worker, queued or running, until its worker says it
//! ended), the runs started per period (a token bucket: `n` per `per`, at
//! most `burst` at once), or both. A job names the limits it is under; a
//! shard of it is placed only while every one of them admits one more
//! run. A job that finds one full leaves its level's turns and waits on
//! that limit; it is woken when the limit admits again (a run under it
//! ended, or its bucket refilled), highest priority first, then in the
//! order the jobs came, and takes its turns again among the others.
//!
//! A limit named by no job yet, or by jobs while it is not set, costs
//! nothing and holds nothing back; its runs are counted all the same, so
//! that a limit set later counts what already runs. A bucket starts empty
//! (a limit set, or a master's takeover): a new master does not know what
//! the last one started in the period, and nothing bursts at a takeover.
//!
//! Pure, with time passed in; every call is O(log n) in the jobs waiting
//! on a limit, times the limits of the job (a few).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// A limit's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limit {
    /// Most runs of its jobs held by workers at once.
    pub max_running: Option<u32>,
    /// Most runs started per period.
    pub rate: Option<Rate>,
}

/// A rate: `n` runs per `per`, up to `burst` at once after a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Runs per period (at least 1).
    pub n: u32,
    /// The period (at least a millisecond).
    pub per: Duration,
    /// Most runs started at once (at least 1).
    pub burst: u32,
}

impl Rate {
    /// The burst when none is given: a tenth of a period's runs, at least
    /// one (200 per second may start 20 at once after a pause; a master's
    /// timer a few milliseconds late loses nothing).
    pub fn default_burst(n: u32) -> u32 {
        (n / 10).max(1)
    }

    /// Runs per second.
    fn per_sec(&self) -> f64 {
        f64::from(self.n.max(1)) / self.per.as_secs_f64().max(0.001)
    }
}

/// A limit as `limits list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitUsage {
    /// Its settings (`None`: named by jobs, not set).
    pub limit: Option<Limit>,
    /// Runs of its jobs held by workers now.
    pub running: u32,
    /// Runs it may start now (its bucket, if it has a rate).
    pub tokens: Option<f64>,
    /// Jobs waiting on it.
    pub waiting_jobs: usize,
    /// Times a job found it full, since this master took over.
    pub throttled: u64,
}

/// A job's place among those waiting on a limit: priority (highest
/// first), then arrival.
type Place = (Reverse<u8>, u64, String);

/// One limit's state.
#[derive(Debug, Default)]
struct State {
    limit: Option<Limit>,
    /// Runs of its jobs held by workers.
    running: u32,
    /// The bucket, and when it was last filled.
    tokens: f64,
    filled: Option<Instant>,
    /// Jobs waiting on it: by priority (highest first), then arrival.
    waiting: BTreeSet<Place>,
    /// Jobs naming it.
    named_by: u32,
    throttled: u64,
}

impl State {
    /// Fills the bucket up to `now`.
    fn fill(&mut self, now: Instant) {
        let Some(rate) = self.limit.and_then(|l| l.rate) else {
            return;
        };
        let since = self
            .filled
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.tokens =
            (self.tokens + since.as_secs_f64() * rate.per_sec()).min(f64::from(rate.burst));
        self.filled = Some(self.filled.map_or(now, |t| t.max(now)));
    }

    /// Whether one more run may start (after [`State::fill`]).
    fn admits(&self) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        let room = limit.max_running.is_none_or(|max| self.running < max);
        let token = limit.rate.is_none() || self.tokens >= 1.0;
        room && token
    }

    /// When its bucket next holds a run's token, if it waits for one.
    fn next_token(&self) -> Option<Instant> {
        let rate = self.limit?.rate?;
        if self.tokens >= 1.0 || self.waiting.is_empty() {
            return None;
        }
        let wait = (1.0 - self.tokens) / rate.per_sec();
        Some(self.filled? + Duration::from_secs_f64(wait))
    }

    fn unused(&self) -> bool {
        self.limit.is_none() && self.running == 0 && self.waiting.is_empty() && self.named_by == 0
    }
}

/// A job under limits.
#[derive(Debug)]
struct Under {
    limits: Vec<String>,
    /// Its runs held by workers (counted in each of its limits).
    held: u32,
    /// Its entry in the waiting set of the limit it waits on.
    waits: Option<(String, Place)>,
    /// Forgotten by the scheduler: the entry lasts while runs are held.
    gone: bool,
}

/// Every limit, and the jobs under them.
#[derive(Debug, Default)]
pub(super) struct Limits {
    states: HashMap<String, State>,
    jobs: HashMap<String, Under>,
    /// Limits with jobs waiting on them.
    starved: BTreeSet<String>,
    /// Jobs woken since the scheduler last took them.
    woken: Vec<String>,
    arrivals: u64,
}

impl Limits {
    /// Sets (`Some`) or removes a limit at `now`. A new limit's bucket
    /// starts empty; a changed one keeps what it holds, up to its burst.
    /// Jobs it no longer holds back are woken.
    pub(super) fn set(&mut self, key: &str, limit: Option<Limit>, now: Instant) {
        let state = self.states.entry(key.to_string()).or_default();
        if state.limit.is_none() {
            state.tokens = 0.0;
            state.filled = Some(now);
        }
        state.fill(now);
        state.limit = limit;
        if let Some(rate) = limit.and_then(|l| l.rate) {
            state.tokens = state.tokens.min(f64::from(rate.burst));
        }
        self.wake(key, now);
    }

    /// A job under `limits` (none: nothing to do) is added; one of that id
    /// whose runs are still held is replaced, its runs counted under the
    /// new job's limits.
    pub(super) fn add_job(&mut self, job: &str, limits: &[String]) {
        let held = match self.jobs.remove(job) {
            Some(old) => {
                self.unname(&old);
                self.count(&old.limits, -i64::from(old.held));
                old.held
            }
            None => 0,
        };
        if limits.is_empty() && held == 0 {
            return;
        }
        let mut limits = limits.to_vec();
        limits.sort_unstable();
        limits.dedup();
        for key in &limits {
            self.states.entry(key.clone()).or_default().named_by += 1;
        }
        self.count(&limits, i64::from(held));
        let under = Under {
            limits,
            held,
            waits: None,
            gone: false,
        };
        self.jobs.insert(job.to_string(), under);
    }

    /// The scheduler forgot a job: it waits on nothing; its entry lasts
    /// while its runs are held.
    pub(super) fn remove_job(&mut self, job: &str) {
        let Some(under) = self.jobs.get_mut(job) else {
            return;
        };
        under.gone = true;
        let (waits, held) = (under.waits.take(), under.held);
        if let Some((key, entry)) = waits {
            self.unwait(&key, &entry);
        }
        if held == 0 {
            if let Some(old) = self.jobs.remove(job) {
                self.unname(&old);
            }
        }
    }

    /// Whether a run of `job` may be placed at `now`: `Err` with the
    /// limit that holds it back.
    pub(super) fn admits(&mut self, job: &str, now: Instant) -> Result<(), String> {
        let Some(under) = self.jobs.get(job) else {
            return Ok(());
        };
        for key in &under.limits {
            if let Some(state) = self.states.get_mut(key) {
                state.fill(now);
                if !state.admits() {
                    state.throttled += 1;
                    return Err(key.clone());
                }
            }
        }
        Ok(())
    }

    /// Whether the job is under any limit.
    pub(super) fn limits_job(&self, job: &str) -> bool {
        self.jobs.contains_key(job)
    }

    /// `job` waits on limit `key` (it found it full), at `priority`.
    pub(super) fn wait(&mut self, job: &str, key: &str, priority: u8) {
        let Some(under) = self.jobs.get_mut(job) else {
            return;
        };
        if under.waits.is_some() {
            return;
        }
        self.arrivals += 1;
        let entry = (Reverse(priority), self.arrivals, job.to_string());
        if let Some(state) = self.states.get_mut(key) {
            state.waiting.insert(entry.clone());
            self.starved.insert(key.to_string());
        }
        under.waits = Some((key.to_string(), entry));
    }

    /// A run of `job` was placed at `now`: it holds room and a token in
    /// each of the job's limits.
    pub(super) fn hold(&mut self, job: &str, now: Instant) {
        let Some(under) = self.jobs.get_mut(job) else {
            return;
        };
        under.held += 1;
        for key in &under.limits {
            if let Some(state) = self.states.get_mut(key) {
                state.running += 1;
                if state.limit.is_some_and(|l| l.rate.is_some()) {
                    state.fill(now);
                    state.tokens -= 1.0;
                }
            }
        }
    }

    /// A run of `job` ended (or its worker was lost): its room is free
    /// again, and a job waiting on such a limit is woken.
    pub(super) fn release(&mut self, job: &str) {
        let Some(under) = self.jobs.get_mut(job) else {
            return;
        };
        under.held = under.held.saturating_sub(1);
        let (gone, held) = (under.gone, under.held);
        // Taken out while counted (no copy per run), then put back.
        let limits = std::mem::take(&mut under.limits);
        self.count(&limits, -1);
        for key in &limits {
            let capped = self
                .states
                .get(key)
                .is_some_and(|s| s.limit.is_some_and(|l| l.max_running.is_some()));
            if capped {
                self.wake_one(key);
            }
        }
        if let Some(under) = self.jobs.get_mut(job) {
            under.limits = limits;
        }
        if gone && held == 0 {
            if let Some(old) = self.jobs.remove(job) {
                self.unname(&old);
            }
        }
    }

    /// Wakes jobs waiting on limits that admit runs at `now` (room freed,
    /// or a bucket refilled: a job woken before may not have used the
    /// room, having nothing ready), and takes every job woken since the
    /// last call. Walks the limits jobs wait on.
    pub(super) fn take_woken(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .starved
            .iter()
            .filter(|k| {
                self.states.get_mut(*k).is_some_and(|s| {
                    s.fill(now);
                    s.admits()
                })
            })
            .cloned()
            .collect();
        for key in due {
            self.wake(&key, now);
        }
        std::mem::take(&mut self.woken)
    }

    /// When a limit's bucket next refills for a job waiting on it.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.starved
            .iter()
            .filter_map(|k| self.states.get(k).and_then(State::next_token))
            .min()
    }

    /// Every limit set or named by a job, with its use.
    pub(super) fn usage(&self) -> Vec<(String, LimitUsage)> {
        let mut out: Vec<(String, LimitUsage)> = self
            .states
            .iter()
            .map(|(key, s)| {
                let usage = LimitUsage {
                    limit: s.limit,
                    running: s.running,
                    tokens: s.limit.and_then(|l| l.rate).map(|_| s.tokens.max(0.0)),
                    waiting_jobs: s.waiting.len(),
                    throttled: s.throttled,
                };
                (key.clone(), usage)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The jobs waiting on limit `key`.
    pub(super) fn waiting_on(&self, key: &str) -> impl Iterator<Item = &str> {
        self.states
            .get(key)
            .into_iter()
            .flat_map(|s| s.waiting.iter().map(|(_, _, job)| job.as_str()))
    }

    /// The limit `job` waits on, if it waits.
    pub(super) fn waits(&self, job: &str) -> Option<&str> {
        self.jobs.get(job)?.waits.as_ref().map(|(k, _)| k.as_str())
    }

    /// Each limit's runs held, as counted (for the scheduler's checks).
    #[cfg(test)]
    pub(super) fn running(&self) -> HashMap<String, u32> {
        self.states
            .iter()
            .filter(|(_, s)| s.running > 0)
            .map(|(k, s)| (k.clone(), s.running))
            .collect()
    }

    /// Whether `job` was woken and not yet taken (for the scheduler's
    /// checks).
    #[cfg(test)]
    pub(super) fn is_woken(&self, job: &str) -> bool {
        self.woken.iter().any(|j| j == job)
    }

    /// The limits of `job` (for the scheduler's checks).
    #[cfg(test)]
    pub(super) fn limits_of(&self, job: &str) -> &[String] {
        self.jobs.get(job).map_or(&[], |u| u.limits.as_slice())
    }

    /// Wakes the jobs waiting on `key` while it admits them: each takes
    /// its turns again (and finds it full again if others took the room).
    fn wake(&mut self, key: &str, now: Instant) {
        let Some(state) = self.states.get_mut(key) else {
            return;
        };
        state.fill(now);
        let mut room = match state.limit {
            None => usize::MAX,
            Some(l) => {
                let running = l
                    .max_running
                    .map_or(usize::MAX, |m| m.saturating_sub(state.running) as usize);
                let tokens = match l.rate {
                    Some(_) => state.tokens.max(0.0) as usize,
                    None => usize::MAX,
                };
                running.min(tokens)
            }
        };
        while room > 0 {
            if self.wake_one(key).is_none() {
                break;
            }
            room -= 1;
        }
    }

    /// Wakes the first job waiting on `key`, if any.
    fn wake_one(&mut self, key: &str) -> Option<()> {
        let state = self.states.get_mut(key)?;
        let (_, _, job) = state.waiting.pop_first()?;
        if state.waiting.is_empty() {
            self.starved.remove(key);
        }
        if let Some(under) = self.jobs.get_mut(&job) {
            under.waits = None;
        }
        self.woken.push(job);
        Some(())
    }

    fn unwait(&mut self, key: &str, entry: &Place) {
        if let Some(state) = self.states.get_mut(key) {
            state.waiting.remove(entry);
            if state.waiting.is_empty() {
                self.starved.remove(key);
            }
        }
        self.drop_unused(key);
    }

    /// Counts `n` runs more (or fewer) in each of `limits`.
    fn count(&mut self, limits: &[String], n: i64) {
        for key in limits {
            if let Some(state) = self.states.get_mut(key) {
                state.running = (i64::from(state.running) + n).max(0) as u32;
            }
            self.drop_unused(key);
        }
    }

    fn unname(&mut self, under: &Under) {
        if let Some((key, entry)) = &under.waits {
            let entry = entry.clone();
            let key = key.clone();
            self.unwait(&key, &entry);
        }
        for key in &under.limits {
            if let Some(state) = self.states.get_mut(key) {
                state.named_by = state.named_by.saturating_sub(1);
            }
            self.drop_unused(key);
        }
    }

    fn drop_unused(&mut self, key: &str) {
        if self.states.get(key).is_some_and(State::unused) {
            self.states.remove(key);
        }
    }
}
