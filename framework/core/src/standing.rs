//! Whether a master still stands: a master whose certificate every other
//! worker refuses serves no one (in the trial that found this, a node of
//! another CA won the election on plain ZooKeeper and locked every client
//! and worker out), so it steps down and lets the next candidate lead.
//!
//! The master samples its node's handshake counts
//! (the transport's `Handshakes`) and its workers (registered in
//! ZooKeeper, linked to it) about once a second; [`Standing::observe`]
//! decides. The rule, in full:
//!
//! - the master has served for at least the grace period;
//! - at least one other worker is registered (two, when the master runs
//!   a worker of its own: one worker's word against the master's own
//!   worker's is a tie, and a tie keeps the master), and none of them is
//!   linked to it;
//! - in the last grace period, peers refused its certificate at least
//!   [`MIN_REFUSALS`] times, and no other peer (worker or client)
//!   completed a handshake with it.
//!
//! A worker of another CA cannot depose a master its peers accept: any
//! link or handshake from another peer keeps it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Refusals within the grace period a step-down needs at least.
pub const MIN_REFUSALS: u64 = 3;

/// The shortest grace period: workers that refused a master retry after
/// pauses of 0.5, 1, 2 and 4 s, so ten seconds sees each try about four
/// times.
pub const MIN_GRACE: Duration = Duration::from_secs(10);

/// What the master sees at one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Handshakes peers refused so far (a count that only grows).
    pub refused_us: u64,
    /// Handshakes completed by other peers so far (only grows).
    pub completed_by_others: u64,
    /// Workers registered in ZooKeeper, this node's own aside.
    pub registered_others: usize,
    /// Of those, linked to this master.
    pub linked_others: usize,
    /// Whether this node runs a worker of its own (registered).
    pub own_worker: bool,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep serving.
    Serve,
    /// Step down: every other worker refuses this master.
    StepDown {
        /// Refusals in the grace period.
        refusals: u64,
        /// Other workers registered, none linked.
        workers: usize,
    },
}

/// A master's standing: the samples of the last grace period.
#[derive(Debug)]
pub struct Standing {
    grace: Duration,
    since: Instant,
    /// (when, refused_us, completed_by_others), oldest first; at most one
    /// per sample over the grace period (bounded by the sampling rate).
    window: VecDeque<(Instant, u64, u64)>,
}

impl Standing {
    /// A master serving since `since`, with grace period `grace` (at
    /// least [`MIN_GRACE`]).
    pub fn new(since: Instant, grace: Duration) -> Self {
        Standing {
            grace: grace.max(MIN_GRACE),
            since,
            window: VecDeque::new(),
        }
    }

    /// The grace period in use.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Takes a sample at `now` and decides.
    pub fn observe(&mut self, now: Instant, s: Sample) -> Verdict {
        self.window
            .push_back((now, s.refused_us, s.completed_by_others));
        // Keep one sample at or before the window's start: the baseline.
        while self.window.len() > 1 && now.duration_since(self.window[1].0) >= self.grace {
            self.window.pop_front();
        }
        // Samples are taken about once a second; a stalled sampler must
        // not grow the window without bound.
        while self.window.len() > 4096 {
            self.window.pop_front();
        }
        if now.duration_since(self.since) < self.grace {
            return Verdict::Serve;
        }
        let Some(&(first, refused0, completed0)) = self.window.front() else {
            return Verdict::Serve;
        };
        if now.duration_since(first) < self.grace {
            // Not a whole grace period of samples yet.
            return Verdict::Serve;
        }
        let refusals = s.refused_us.saturating_sub(refused0);
        let completed = s.completed_by_others.saturating_sub(completed0);
        let needed = if s.own_worker { 2 } else { 1 };
        if s.registered_others >= needed
            && s.linked_others == 0
            && refusals >= MIN_REFUSALS
            && completed == 0
        {
            Verdict::StepDown {
                refusals,
                workers: s.registered_others,
            }
        } else {
            Verdict::Serve
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(refused_us: u64, completed: u64, registered: usize, linked: usize) -> Sample {
        Sample {
            refused_us,
            completed_by_others: completed,
            registered_others: registered,
            linked_others: linked,
            own_worker: true,
        }
    }

    /// Samples once a second from `t0` for `secs` seconds, refusals
    /// growing by `per_sec`; the last verdict.
    fn run(standing: &mut Standing, t0: Instant, secs: u64, per_sec: u64, s: Sample) -> Verdict {
        let mut v = Verdict::Serve;
        for k in 0..=secs {
            v = standing.observe(
                t0 + Duration::from_secs(k),
                Sample {
                    refused_us: s.refused_us + k * per_sec,
                    ..s
                },
            );
        }
        v
    }

    #[test]
    fn a_master_every_other_worker_refuses_steps_down_after_the_grace_period() {
        let t0 = Instant::now();
        let mut st = Standing::new(t0, Duration::from_secs(10));
        // Not before the grace period is over.
        assert_eq!(run(&mut st, t0, 9, 1, sample(0, 0, 2, 0)), Verdict::Serve);
        let v = st.observe(t0 + Duration::from_secs(10), sample(10, 0, 2, 0));
        assert_eq!(
            v,
            Verdict::StepDown {
                refusals: 10,
                workers: 2
            }
        );
    }

    #[test]
    fn one_linked_worker_or_one_accepted_handshake_keeps_the_master() {
        let t0 = Instant::now();
        let mut st = Standing::new(t0, Duration::from_secs(10));
        assert_eq!(run(&mut st, t0, 30, 2, sample(0, 0, 3, 1)), Verdict::Serve);
        let mut st = Standing::new(t0, Duration::from_secs(10));
        // A client's handshake completed within the window.
        let mut v = Verdict::Serve;
        for k in 0..=30u64 {
            v = st.observe(
                t0 + Duration::from_secs(k),
                sample(k * 2, u64::from(k >= 25), 3, 0),
            );
        }
        assert_eq!(v, Verdict::Serve);
        // Once that handshake is older than the window, the refusals win.
        for k in 31..=36u64 {
            v = st.observe(t0 + Duration::from_secs(k), sample(k * 2, 1, 3, 0));
        }
        assert!(matches!(v, Verdict::StepDown { .. }), "{v:?}");
    }

    #[test]
    fn one_foreign_worker_against_the_masters_own_is_a_tie_that_keeps_it() {
        let t0 = Instant::now();
        let mut st = Standing::new(t0, Duration::from_secs(10));
        assert_eq!(run(&mut st, t0, 60, 3, sample(0, 0, 1, 0)), Verdict::Serve);
        // Without a worker of its own, the one worker's refusals decide.
        let mut st = Standing::new(t0, Duration::from_secs(10));
        let alone = Sample {
            own_worker: false,
            ..sample(0, 0, 1, 0)
        };
        assert!(matches!(
            run(&mut st, t0, 12, 1, alone),
            Verdict::StepDown { workers: 1, .. }
        ));
    }

    #[test]
    fn few_or_old_refusals_keep_the_master() {
        let t0 = Instant::now();
        let mut st = Standing::new(t0, Duration::from_secs(10));
        // Two refusals in the window: under MIN_REFUSALS.
        let mut v = Verdict::Serve;
        for k in 0..=20u64 {
            v = st.observe(t0 + Duration::from_secs(k), sample(k.min(2), 0, 2, 0));
        }
        assert_eq!(v, Verdict::Serve);
        // Many refusals, all longer ago than the grace period.
        let mut st = Standing::new(t0, Duration::from_secs(10));
        for k in 0..=40u64 {
            v = st.observe(t0 + Duration::from_secs(k), sample(k.min(5) * 4, 0, 2, 0));
        }
        assert_eq!(v, Verdict::Serve);
    }

    #[test]
    fn a_grace_period_is_never_shorter_than_the_minimum_and_the_window_stays_bounded() {
        let t0 = Instant::now();
        let mut st = Standing::new(t0, Duration::from_millis(1));
        assert_eq!(st.grace(), MIN_GRACE);
        for k in 0..10_000u64 {
            st.observe(t0 + Duration::from_millis(k), sample(k, 0, 2, 1));
        }
        assert!(st.window.len() <= 4096);
    }
}
