//! Whether a link's peer still lives: the failure detector of every QUIC
//! connection, which adapts to what it has seen of the link and of this
//! process, so that a loaded host does not suspect a healthy peer while a
//! dead one is still found within `--link-timeout-ms` on an idle host.
//!
//! The transport samples each connection's count of received datagrams
//! every [`Detector::tick`] (the dialer's keep-alives and their
//! acknowledgements keep them coming at least four times a link timeout)
//! and [`Detector::observe`] decides. The rule, in full:
//!
//! - *Silence* is the time since the count last grew, less the time this
//!   process itself was stalled meanwhile: a sample that comes more than a
//!   tick late says the process (or its thread) did not run, and what the
//!   peer sent then waits unread in the socket, not lost.
//! - A peer is suspected when its silence exceeds the *threshold*: the
//!   link timeout (the floor), raised to [`FACTOR`] times the longest
//!   silence this link has shown and then ended within [`MEMORY`], and by
//!   [`FACTOR`] times this process's longest stall within [`MEMORY`] (a
//!   loaded host slows its peers on it too), never above the ceiling.
//!
//! A datagram counts as heard a tick before the sample that saw it (it
//! came at most that long ago), so an idle link whose peer dies is
//! suspected within one link timeout of its last datagram, and a link
//! whose peer was starved for 300 ms once waits 600 ms for the next
//! minute.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many times the longest recent silence (or stall) the threshold is.
pub const FACTOR: u32 = 2;

/// How long a silence or a stall raises the threshold.
pub const MEMORY: Duration = Duration::from_secs(60);

/// Most silences and stalls remembered (the longest are what count).
const REMEMBERED: usize = 64;

/// What [`Detector::observe`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The peer was heard from, or not for long enough to suspect it.
    Alive,
    /// Silent past the threshold: the link is lost.
    Silent {
        /// The silence, this process's stalls taken out.
        silent: Duration,
        /// The threshold it passed.
        threshold: Duration,
    },
}

/// One link's failure detector.
#[derive(Debug)]
pub struct Detector {
    floor: Duration,
    ceiling: Duration,
    tick: Duration,
    received: u64,
    heard: Instant,
    last_tick: Instant,
    /// This process's stalls since `heard`.
    stalled: Duration,
    /// (when it ended, how long): silences that ended, and stalls.
    silences: VecDeque<(Instant, Duration)>,
    stalls: VecDeque<(Instant, Duration)>,
}

impl Detector {
    /// A link first heard from at `now`, with a link timeout of `floor`,
    /// never waiting past `ceiling` (at least the floor).
    pub fn new(now: Instant, floor: Duration, ceiling: Duration) -> Self {
        Detector {
            floor,
            ceiling: ceiling.max(floor),
            tick: Self::tick_for(floor),
            received: 0,
            heard: now,
            last_tick: now,
            stalled: Duration::ZERO,
            silences: VecDeque::new(),
            stalls: VecDeque::new(),
        }
    }

    /// How often a link of timeout `floor` is sampled: an eighth of it, at
    /// least 5 ms.
    pub fn tick_for(floor: Duration) -> Duration {
        (floor / 8).max(Duration::from_millis(5))
    }

    /// The sampling period.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// The silence that would be suspected now.
    pub fn threshold(&self, now: Instant) -> Duration {
        let longest = |q: &VecDeque<(Instant, Duration)>| {
            q.iter()
                .filter(|(at, _)| now.saturating_duration_since(*at) < MEMORY)
                .map(|(_, d)| *d)
                .max()
                .unwrap_or_default()
        };
        let by_link = longest(&self.silences) * FACTOR;
        let by_host = self.floor + longest(&self.stalls) * FACTOR;
        self.floor.max(by_link).max(by_host).min(self.ceiling)
    }

    /// A sample at `now`: the connection has received `received`
    /// datagrams so far (a count that only grows).
    pub fn observe(&mut self, now: Instant, received: u64) -> Verdict {
        let interval = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        // Later than two ticks: this process did not run for the rest.
        if interval > self.tick * 2 {
            let stall = interval - self.tick;
            self.stalled += stall;
            remember(&mut self.stalls, now, stall);
        }
        let silent = now
            .saturating_duration_since(self.heard)
            .saturating_sub(self.stalled);
        if received != self.received {
            self.received = received;
            // It came at most a tick ago: counted from then, a dead
            // peer's silence is never underestimated.
            self.heard = now - interval.min(self.tick);
            self.stalled = Duration::ZERO;
            remember(&mut self.silences, now, silent);
            return Verdict::Alive;
        }
        let threshold = self.threshold(now);
        if silent > threshold {
            Verdict::Silent { silent, threshold }
        } else {
            Verdict::Alive
        }
    }
}

/// Keeps `d`, ended at `now`, among the longest recent ones.
fn remember(q: &mut VecDeque<(Instant, Duration)>, now: Instant, d: Duration) {
    while q
        .front()
        .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= MEMORY)
    {
        q.pop_front();
    }
    // A shorter one than the last kept adds nothing while that one lasts,
    // but outlives it: it is kept, and the queue bounded.
    if q.len() >= REMEMBERED {
        // Drop the shortest.
        if let Some((i, _)) = q.iter().enumerate().min_by_key(|(_, (_, d))| *d) {
            q.remove(i);
        }
    }
    q.push_back((now, d));
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_millis(400);
    const CEILING: Duration = Duration::from_secs(5);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Samples every tick from `from` for `span`, the count growing every
    /// `every` (never if `None`); returns the first suspicion, if any, with
    /// its time from `from`.
    fn run(
        d: &mut Detector,
        from: Instant,
        span: Duration,
        every: Option<Duration>,
        count: &mut u64,
    ) -> Option<(Duration, Verdict)> {
        let tick = d.tick();
        let mut t = Duration::ZERO;
        let mut last_rx = Duration::ZERO;
        while t <= span {
            if every.is_some_and(|e| t - last_rx >= e) {
                *count += 1;
                last_rx = t;
            }
            let v = d.observe(from + t, *count);
            if v != Verdict::Alive {
                return Some((t, v));
            }
            t += tick;
        }
        None
    }

    #[test]
    fn a_dead_peer_of_an_idle_link_is_suspected_one_link_timeout_after_its_last_datagram() {
        let t0 = Instant::now();
        let mut d = Detector::new(t0, FLOOR, CEILING);
        let mut n = 0;
        // A minute of keep-alives every 100 ms.
        assert_eq!(
            run(&mut d, t0, Duration::from_secs(60), Some(ms(100)), &mut n),
            None
        );
        let last = t0 + Duration::from_secs(60);
        let (after, v) = run(&mut d, last, Duration::from_secs(10), None, &mut n)
            .expect("the dead peer is suspected");
        assert!(after + d.tick() > FLOOR && after <= FLOOR, "{after:?}");
        assert!(matches!(v, Verdict::Silent { threshold, .. } if threshold == FLOOR));
    }

    #[test]
    fn this_process_stalling_is_not_the_peers_silence() {
        let t0 = Instant::now();
        let mut d = Detector::new(t0, FLOOR, CEILING);
        let mut n = 0;
        assert_eq!(run(&mut d, t0, ms(1000), Some(ms(100)), &mut n), None);
        // This process does not run for 2 s; its first sample after that
        // has not yet seen what waited in the socket.
        let resumed = t0 + ms(3000);
        assert_eq!(d.observe(resumed, n), Verdict::Alive);
        // The next sample has.
        assert_eq!(d.observe(resumed + d.tick(), n + 5), Verdict::Alive);
        // And the stall raised the threshold for a while: a host that
        // stalls one process stalls its peers.
        assert!(d.threshold(resumed + ms(100)) >= FLOOR + ms(1900));
        assert_eq!(d.threshold(resumed + MEMORY + ms(100)), FLOOR);
    }

    #[test]
    fn a_peer_that_was_once_slow_gets_twice_as_long_for_a_minute() {
        let t0 = Instant::now();
        let mut d = Detector::new(t0, FLOOR, CEILING);
        let mut n = 0;
        assert_eq!(run(&mut d, t0, ms(1000), Some(ms(100)), &mut n), None);
        // A silence of 350 ms that ends: under the floor, not suspected.
        let quiet = t0 + ms(1000);
        assert_eq!(run(&mut d, quiet, ms(340), None, &mut n), None);
        n += 1;
        let back = quiet + ms(350);
        assert_eq!(d.observe(back, n), Verdict::Alive);
        // Twice the silence, counted from a tick before it began at most.
        let threshold = d.threshold(back);
        assert!(
            threshold >= ms(700) && threshold <= ms(800),
            "{threshold:?}"
        );
        // Now 600 ms of silence is not suspected, the threshold's is.
        let (after, _) =
            run(&mut d, back, Duration::from_secs(2), None, &mut n).expect("suspected in the end");
        assert!(after > ms(600), "{after:?}");
        assert!(
            after + d.tick() > threshold && after <= threshold,
            "{after:?}"
        );
        // A minute later the floor holds again.
        assert_eq!(d.threshold(back + MEMORY + ms(1)), FLOOR);
    }

    #[test]
    fn the_threshold_never_passes_the_ceiling_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let mut d = Detector::new(t0, FLOOR, ms(1000));
        let mut n = 0;
        // Ever longer silences, each ended.
        let mut t = t0;
        for k in 0..1000u64 {
            t += ms(50 + k);
            n += 1;
            d.observe(t, n);
            assert!(d.threshold(t) <= ms(1000));
        }
        assert!(d.silences.len() <= REMEMBERED && d.stalls.len() <= REMEMBERED);
        // A ceiling under the floor is the floor.
        assert_eq!(Detector::new(t0, FLOOR, ms(1)).threshold(t0), FLOOR);
    }
}
