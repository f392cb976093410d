//! Where each job this master knows is in its life, with its owner: one
//! phase per job id, so that a request, a submission or the collector
//! asks one place whether the id is free, whose it is, and whether its
//! end may still be in flight. The scheduler and the ledger hold what a
//! running job needs besides.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Quarantined;

/// A job's phase at this master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Unfinished at the takeover, being read back; `cancelled`: a cancel
    /// came meanwhile, and it is dropped when it arrives.
    Loading {
        /// A cancel came while it was read.
        cancelled: bool,
    },
    /// Queued or running while its create waits (a work queue's job of
    /// one shard): its writes are held until it is created.
    Creating,
    /// Queued or running.
    Running,
    /// Ended or cancelled by this master: it changes no more here (its end
    /// or cancel may still be in flight), until it is collected.
    Ended,
    /// This master cannot read or run it (see [`Quarantined`]).
    Quarantined,
}

#[derive(Debug, Clone)]
struct Entry {
    phase: Phase,
    /// Whose it is (`None`: a job of an older version, or unknown).
    owner: Option<String>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub(super) struct Book {
    jobs: HashMap<String, Entry>,
    /// Why each quarantined job is.
    quarantined: BTreeMap<String, Quarantined>,
    /// Jobs in [`Phase::Loading`].
    loading: usize,
    /// Jobs the collector is deleting now: a submission of one is refused.
    collecting: BTreeSet<String>,
}

impl Book {
    pub(super) fn phase(&self, id: &str) -> Option<Phase> {
        self.jobs.get(id).map(|e| e.phase)
    }

    pub(super) fn owner(&self, id: &str) -> Option<Option<&str>> {
        self.jobs.get(id).map(|e| e.owner.as_deref())
    }

    /// Puts a job in `phase`; `owner` replaces the one known if given.
    pub(super) fn set(&mut self, id: &str, phase: Phase, owner: Option<Option<String>>) {
        let old = self.jobs.get(id).map(|e| e.phase);
        self.count(old, -1);
        self.count(Some(phase), 1);
        if old == Some(Phase::Quarantined) {
            self.quarantined.remove(id);
        }
        let e = self
            .jobs
            .entry(id.to_string())
            .or_insert(Entry { phase, owner: None });
        e.phase = phase;
        if let Some(owner) = owner {
            e.owner = owner;
        }
    }

    pub(super) fn quarantine(&mut self, id: &str, why: Quarantined) {
        let owner = why.owner.clone();
        self.set(id, Phase::Quarantined, Some(owner));
        self.quarantined.insert(id.to_string(), why);
    }

    pub(super) fn forget(&mut self, id: &str) {
        if let Some(e) = self.jobs.remove(id) {
            self.count(Some(e.phase), -1);
            self.quarantined.remove(id);
        }
    }

    fn count(&mut self, phase: Option<Phase>, by: isize) {
        if let Some(Phase::Loading { .. }) = phase {
            self.loading = self.loading.saturating_add_signed(by);
        }
    }

    pub(super) fn quarantined(&self) -> &BTreeMap<String, Quarantined> {
        &self.quarantined
    }

    pub(super) fn loading(&self) -> usize {
        self.loading
    }

    pub(super) fn collecting(&self) -> &BTreeSet<String> {
        &self.collecting
    }

    pub(super) fn set_collecting(&mut self, ids: BTreeSet<String>) {
        self.collecting = ids;
    }

    pub(super) fn take_collecting(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.collecting)
    }

    /// Checks the counts against the entries (tests).
    #[cfg(test)]
    pub(super) fn check(&self) {
        let loading = self
            .jobs
            .values()
            .filter(|e| matches!(e.phase, Phase::Loading { .. }))
            .count();
        assert_eq!(loading, self.loading, "loading count");
        let quarantined: BTreeSet<&String> = self
            .jobs
            .iter()
            .filter(|(_, e)| e.phase == Phase::Quarantined)
            .map(|(id, _)| id)
            .collect();
        let why: BTreeSet<&String> = self.quarantined.keys().collect();
        assert_eq!(quarantined, why, "quarantined jobs");
    }
}
