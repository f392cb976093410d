//! One priority level's turns: weighted fair share between fairness keys
//! (stride scheduling), and within a key, its jobs in turn.
//!
//! Each key with jobs waiting has a pass; the key of the least pass goes
//! next, and each shard placed for it adds its stride ([`STRIDE`] over its
//! weight) to its pass. Under contention a key thus gets shards in
//! proportion to its weight. A key that comes back after waiting for
//! nothing starts from the level's clock (the pass of the key last
//! served): its absence earns it no credit, and it has its share from its
//! first turn. Every step costs O(log k) in the keys that wait.

use std::collections::{BTreeSet, HashMap, VecDeque};

/// A pass's step at weight 1: a weight of `w` steps `STRIDE / w`.
pub(super) const STRIDE: u64 = 1 << 20;

/// The highest weight a key may have (its stride stays at least 16).
pub const MAX_WEIGHT: u32 = 1 << 16;

/// A key's jobs and where its turns stand.
#[derive(Debug)]
struct KeyTurns {
    /// Its jobs with shards ready, taking turns (an id may be stale).
    jobs: VecDeque<String>,
    pass: u64,
    stride: u64,
}

/// The turns of one level.
#[derive(Debug, Default)]
pub(super) struct Level {
    /// The keys with jobs waiting.
    keys: HashMap<String, KeyTurns>,
    /// Those keys by pass, but for the one taking its turn and those
    /// parked for the current hand-out.
    order: BTreeSet<(u64, String)>,
    /// Keys that can place nothing more in the current hand-out.
    parked: Vec<(u64, String)>,
    /// The pass of the key served last.
    clock: u64,
    /// Job entries in the keys' rings (stale ones included).
    jobs: usize,
}

/// The stride of `weight` (0 is taken as 1).
pub(super) fn stride(weight: u32) -> u64 {
    STRIDE / u64::from(weight.clamp(1, MAX_WEIGHT))
}

impl Level {
    /// Whether jobs wait at this level (parked keys' included).
    pub(super) fn is_empty(&self) -> bool {
        self.jobs == 0
    }

    /// Whether a key may take a turn now (one is not parked).
    pub(super) fn has_turn(&self) -> bool {
        !self.order.is_empty()
    }

    /// Adds `job` to the turns of `key` (of `weight`).
    pub(super) fn push(&mut self, key: &str, weight: u32, job: String) {
        self.jobs += 1;
        if let Some(k) = self.keys.get_mut(key) {
            k.jobs.push_back(job);
            return;
        }
        let pass = self.clock;
        self.keys.insert(
            key.to_string(),
            KeyTurns {
                jobs: VecDeque::from([job]),
                pass,
                stride: stride(weight),
            },
        );
        self.order.insert((pass, key.to_string()));
    }

    /// The key whose turn is next, and the first of its jobs, taken out of
    /// its ring (hand it back with [`Level::end_turn`]).
    pub(super) fn take_turn(&mut self) -> Option<(String, String)> {
        loop {
            let (_, key) = self.order.pop_first()?;
            let Some(k) = self.keys.get_mut(&key) else {
                continue;
            };
            match k.jobs.pop_front() {
                Some(job) => {
                    self.jobs -= 1;
                    return Some((key, job));
                }
                None => {
                    self.keys.remove(&key);
                }
            }
        }
    }

    /// Ends the turn of `key`: `served`, a shard of it was placed (its pass
    /// steps); `job` goes back to the end of its ring if it still waits;
    /// `park`: it can place nothing more in this hand-out.
    pub(super) fn end_turn(&mut self, key: String, job: Option<String>, served: bool, park: bool) {
        let Some(k) = self.keys.get_mut(&key) else {
            return;
        };
        if served {
            self.clock = self.clock.max(k.pass);
            k.pass += k.stride;
        }
        if let Some(job) = job {
            k.jobs.push_back(job);
            self.jobs += 1;
        }
        if k.jobs.is_empty() {
            self.keys.remove(&key);
        } else if park {
            self.parked.push((k.pass, key));
        } else {
            self.order.insert((k.pass, key));
        }
    }

    /// Jobs of the key whose turn is next, in turn order: how many the key
    /// has, for a caller that counts its failed turns.
    pub(super) fn jobs_of(&self, key: &str) -> usize {
        self.keys.get(key).map_or(0, |k| k.jobs.len())
    }

    /// Ends a hand-out: parked keys take turns again.
    pub(super) fn unpark(&mut self) {
        self.order.extend(self.parked.drain(..));
    }

    /// A key's weight changed.
    pub(super) fn reweigh(&mut self, key: &str, weight: u32) {
        if let Some(k) = self.keys.get_mut(key) {
            k.stride = stride(weight);
        }
    }

    /// The first `n` jobs of each of the first `n` keys in turn order.
    pub(super) fn first_jobs(&self, n: usize) -> impl Iterator<Item = &String> {
        self.order
            .iter()
            .take(n)
            .filter_map(|(_, key)| self.keys.get(key))
            .flat_map(move |k| k.jobs.iter().take(n))
    }

    /// Whether `job` is in the ring of `key` (tests).
    #[cfg(test)]
    pub(super) fn holds(&self, key: &str, job: &str) -> bool {
        self.keys
            .get(key)
            .is_some_and(|k| k.jobs.iter().any(|j| j == job))
    }
}
