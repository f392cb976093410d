//! Fairness weights: an admin's `SetFairness` is written with the cluster
//! (`/fairness`), then handed to the core, whose scheduler shares slots by
//! them; `ListFairness` is answered from the core. A new master reads the
//! weights before it schedules anything ([`Master::weights_read`]).

use actix::prelude::*;

use super::{error, failed, Master};
use crate::core::master::Event as CoreEvent;
use crate::transport::PeerId;
use crate::wire::{ErrorKind, FairnessKey, FairnessList, QueuedAt, Reply};

/// Why `key` cannot name a `what` (a fairness key, a limit), if it
/// cannot.
pub(super) fn bad_name(what: &str, key: &str) -> Option<String> {
    let odd = key.is_empty() || key.len() > 128 || key.chars().any(char::is_control);
    odd.then(|| {
        let shown: String = key.chars().take(40).collect();
        format!("invalid {what} {shown:?}: use 1 to 128 characters, none of them a control")
    })
}

/// Why `key` cannot be a fairness key, if it cannot.
fn bad_key(key: &str) -> Option<String> {
    bad_name("fairness key", key)
}

/// Whether `key` is a principal's (`client:`, `node:`, `admin:`).
fn names_principal(key: &str) -> bool {
    ["client:", "node:", "admin:"]
        .iter()
        .any(|p| key.starts_with(p))
}

/// Why `peer` may not name fairness key `key` for its job, if it may not:
/// a key that is a principal's is that principal's (an admin or a node
/// may name any).
pub(super) fn refused_key(key: &str, peer: &PeerId) -> Option<(ErrorKind, String)> {
    if let Some(why) = bad_key(key) {
        return Some((ErrorKind::Invalid, why));
    }
    let principal = names_principal(key);
    (principal && key != peer.principal() && !peer.acts_for_all()).then(|| {
        (
            ErrorKind::Forbidden,
            format!(
                "fairness key {key} is another principal's: a job may name its own \
                 ({}) or a key that names no principal",
                peer.principal()
            ),
        )
    })
}

impl Master {
    /// Sets a key's weight: written with the cluster, then scheduled by.
    pub(super) fn set_fairness(
        &mut self,
        peer: &PeerId,
        key: String,
        weight: u32,
    ) -> ResponseActFuture<Self, Reply> {
        let refusal = if !peer.acts_for_all() {
            Some((
                ErrorKind::Forbidden,
                format!(
                    "setting a fairness key's weight takes an admin's or a node's certificate \
                     (this one is {peer}'s)"
                ),
            ))
        } else if let Some(why) = bad_key(&key) {
            Some((ErrorKind::Invalid, why))
        } else if !(1..=crate::core::MAX_WEIGHT).contains(&weight) {
            let max = crate::core::MAX_WEIGHT;
            let why = format!("weight {weight} is out of range: use 1 (the default) to {max}");
            Some((ErrorKind::Invalid, why))
        } else {
            None
        };
        if let Some((kind, why)) = refusal {
            return Box::pin(fut::ready(error(kind, why)));
        }
        let store = self.store.clone();
        let set = key.clone();
        let write = async move {
            store
                .update_fairness(|record| {
                    match weight {
                        1 => record.weights.remove(&set),
                        w => record.weights.insert(set, w),
                    };
                })
                .await
        };
        let said = format!("fairness key {key}: weight {weight}");
        self.write_setting(write, CoreEvent::Weighed(vec![(key, weight)]), said)
    }

    /// Writes a setting with the cluster (`write`), then hands the core
    /// its `event`: `Ok` once durable, the store's error otherwise.
    pub(super) fn write_setting(
        &mut self,
        write: impl std::future::Future<Output = Result<(), crate::coord::CoordError>> + 'static,
        event: CoreEvent,
        said: String,
    ) -> ResponseActFuture<Self, Reply> {
        Box::pin(write.into_actor(self).map(move |res, act, ctx| match res {
            Ok(()) => {
                tracing::info!("setting written: {said}");
                act.handle_core(ctx, event);
                Reply::Ok
            }
            Err(e) => failed(&e),
        }))
    }

    /// The keys with a weight set or shards waiting, that `peer` sees.
    pub(super) fn list_fairness(&self, peer: &PeerId) -> Reply {
        let keys = self.fairness_for(peer);
        Reply::Fairness(FairnessList { keys })
    }

    /// The keys with a weight set or shards waiting that `peer` may see:
    /// every key for an admin or a node; for a client, its own principal's
    /// and those that name no principal (another client's name and queue
    /// are its own business).
    pub(super) fn fairness_for(&self, peer: &PeerId) -> Vec<FairnessKey> {
        let own = peer.principal();
        self.core
            .fair_shares()
            .into_iter()
            .filter(|(key, _)| peer.acts_for_all() || *key == own || !names_principal(key))
            .map(|(key, (weight, queued))| FairnessKey {
                key,
                weight,
                queued,
            })
            .collect()
    }

    /// Shards ready to run, by priority, highest first.
    pub(super) fn queued_at(&self) -> Vec<QueuedAt> {
        let by = self.core.queued_by_priority();
        (0..by.len())
            .rev()
            .filter(|&p| by[p] > 0)
            .map(|p| QueuedAt {
                priority: p as u8,
                shards: by[p] as u64,
            })
            .collect()
    }

    /// The settings a takeover read: the core schedules by them. A record
    /// that does not decode (a later release's, or garbage) is said once
    /// and left out (every key weighs 1; no limit holds a job back): it
    /// never stops a master.
    pub(super) fn settings_read(
        &mut self,
        ctx: &mut Context<Self>,
        weights: Result<crate::coord::FairnessRecord, crate::coord::CoordError>,
        limits: Result<crate::coord::LimitsRecord, crate::coord::CoordError>,
    ) {
        match weights {
            Ok(record) => {
                let weights: Vec<(String, u32)> = record.weights.into_iter().collect();
                if !weights.is_empty() {
                    self.handle_core(ctx, CoreEvent::Weighed(weights));
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "the fairness weights cannot be read: every key weighs 1 until one is set again"
            ),
        }
        match limits {
            Ok(record) => {
                let limits: Vec<_> = record
                    .limits
                    .into_iter()
                    .map(|(key, spec)| (key, Some(spec.to_core())))
                    .collect();
                if !limits.is_empty() {
                    self.handle_core(ctx, CoreEvent::Limited(limits));
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                "the limits cannot be read: no limit holds a job back until they are set again \
                 (`limits set`)"
            ),
        }
    }
}
