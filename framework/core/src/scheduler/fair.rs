//! One priority level's turns: weighted fair share between fairness keys
//! (stride scheduling), and within a key, its jobs in turn.
//!
//! Each key with jobs waiting has a pass; the key of the least pass goes
//! next, and each shard placed for it adds its stride ([`STRIDE`] over its
//! weight) to its pass. Under contention a key thus gets shards in
//! proportion to its weight. A key that comes back after waiting for
//! nothing starts from the level's clock (the pass of the key last
//! served): its absence earns it no credit, and it has its share from its
//! first turn. Every step costs O(log k) in the keys that wait, and a
//! turn allocates nothing: keys live in a slab, taking turns in a binary
//! heap of their slots (a work queue's one key costs a pop and a push).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// A pass's step at weight 1: a weight of `w` steps `STRIDE / w`.
pub(super) const STRIDE: u64 = 1 << 20;

/// The highest weight a key may have (its stride stays at least 16).
pub const MAX_WEIGHT: u32 = 1 << 16;

/// A key's slot in its level.
pub(super) type KeyId = u32;

/// A key's jobs and where its turns stand.
#[derive(Debug)]
struct KeyTurns {
    name: String,
    /// Its jobs with shards ready, taking turns (an id may be stale).
    jobs: VecDeque<String>,
    pass: u64,
    stride: u64,
}

/// The turns of one level.
#[derive(Debug, Default)]
pub(super) struct Level {
    /// The keys with jobs waiting, by slot (`None`: a free slot).
    slots: Vec<Option<KeyTurns>>,
    free: Vec<KeyId>,
    /// Each waiting key's slot.
    ids: HashMap<String, KeyId>,
    /// Those keys by pass, least first, but for the one taking its turn
    /// and those parked for the current hand-out.
    order: BinaryHeap<Reverse<(u64, KeyId)>>,
    /// Keys that can place nothing more in the current hand-out.
    parked: Vec<(u64, KeyId)>,
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
        if let Some(k) = self
            .ids
            .get(key)
            .and_then(|&id| self.slots[id as usize].as_mut())
        {
            k.jobs.push_back(job);
            return;
        }
        let turns = KeyTurns {
            name: key.to_string(),
            jobs: VecDeque::from([job]),
            pass: self.clock,
            stride: stride(weight),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(turns);
                id
            }
            None => {
                self.slots.push(Some(turns));
                (self.slots.len() - 1) as KeyId
            }
        };
        self.ids.insert(key.to_string(), id);
        self.order.push(Reverse((self.clock, id)));
    }

    /// The key whose turn is next, and the first of its jobs, taken out of
    /// its ring (hand it back with [`Level::end_turn`]).
    pub(super) fn take_turn(&mut self) -> Option<(KeyId, String)> {
        loop {
            let Reverse((_, id)) = self.order.pop()?;
            let Some(k) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
                continue;
            };
            match k.jobs.pop_front() {
                Some(job) => {
                    self.jobs -= 1;
                    return Some((id, job));
                }
                None => self.remove(id),
            }
        }
    }

    /// The name of the key in slot `id`.
    pub(super) fn name(&self, id: KeyId) -> &str {
        self.slots
            .get(id as usize)
            .and_then(Option::as_ref)
            .map_or("", |k| k.name.as_str())
    }

    /// Ends the turn of key `id`: `served`, a shard of it was placed (its
    /// pass steps); `job` goes back to the end of its ring if it still
    /// waits; `park`: it can place nothing more in this hand-out.
    pub(super) fn end_turn(&mut self, id: KeyId, job: Option<String>, served: bool, park: bool) {
        let Some(k) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
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
        let pass = k.pass;
        if k.jobs.is_empty() {
            self.remove(id);
        } else if park {
            self.parked.push((pass, id));
        } else {
            self.order.push(Reverse((pass, id)));
        }
    }

    /// Frees the slot of a key with no job left.
    fn remove(&mut self, id: KeyId) {
        if let Some(k) = self.slots.get_mut(id as usize).and_then(Option::take) {
            self.ids.remove(&k.name);
            self.free.push(id);
        }
    }

    /// Jobs of key `id`, for a caller that counts its failed turns.
    pub(super) fn jobs_of(&self, id: KeyId) -> usize {
        self.slots
            .get(id as usize)
            .and_then(Option::as_ref)
            .map_or(0, |k| k.jobs.len())
    }

    /// Ends a hand-out: parked keys take turns again.
    pub(super) fn unpark(&mut self) {
        for (pass, id) in self.parked.drain(..) {
            self.order.push(Reverse((pass, id)));
        }
    }

    /// A key's weight changed.
    pub(super) fn reweigh(&mut self, key: &str, weight: u32) {
        if let Some(k) = self
            .ids
            .get(key)
            .and_then(|&id| self.slots[id as usize].as_mut())
        {
            k.stride = stride(weight);
        }
    }

    /// The first `per_key` jobs of `keys` keys that wait (in no
    /// particular order).
    pub(super) fn first_jobs(&self, keys: usize, per_key: usize) -> impl Iterator<Item = &String> {
        self.order
            .iter()
            .take(keys)
            .filter_map(|Reverse((_, id))| self.slots.get(*id as usize)?.as_ref())
            .flat_map(move |k| k.jobs.iter().take(per_key))
    }

    /// Checks the shares' bound (tests): no key with jobs is ahead of the
    /// level's clock by more than one stride at weight 1, that is, no key
    /// got more than its weight's share of the shards placed by more than
    /// one shard of a key of weight 1. (A key may fall behind: one that
    /// could place nothing, parked, catches up when it can.) And the keys
    /// taking turns are ordered by their passes as they are.
    #[cfg(test)]
    pub(super) fn check(&self) {
        for k in self.slots.iter().flatten() {
            assert!(
                k.pass <= self.clock + STRIDE,
                "key {} is ahead of its share: pass {} with the clock at {}",
                k.name,
                k.pass,
                self.clock
            );
        }
        for Reverse((pass, id)) in &self.order {
            let k = self.slots[*id as usize].as_ref();
            assert_eq!(k.map(|k| k.pass), Some(*pass), "stale turn of slot {id}");
        }
    }

    /// Whether `job` is in the ring of `key` (tests).
    #[cfg(test)]
    pub(super) fn holds(&self, key: &str, job: &str) -> bool {
        self.ids
            .get(key)
            .and_then(|&id| self.slots[id as usize].as_ref())
            .is_some_and(|k| k.jobs.iter().any(|j| j == job))
    }
}
