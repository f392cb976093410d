//! Limits: an admin's `SetLimit` is written with the cluster (`/limits`),
//! then handed to the core, whose scheduler places the runs of the jobs
//! under a limit only while it admits them; `ListLimits` and `status` are
//! answered from the core. A new master reads the limits before it
//! schedules anything ([`Master::settings_read`]), every bucket empty.

use actix::prelude::*;

use super::{error, Master};
use crate::core::master::Event as CoreEvent;
use crate::transport::PeerId;
use crate::wire::{ErrorKind, LimitSpec, LimitStatus, Reply};

/// Most limits one job may be under.
pub(super) const MAX_UNDER: usize = 16;

/// Why `key` cannot name a limit, if it cannot.
pub(super) fn bad_key(key: &str) -> Option<String> {
    super::fairness::bad_name("limit", key)
}

impl Master {
    /// Sets (`Some`) or deletes a limit: written with the cluster, then
    /// scheduled by.
    pub(super) fn set_limit(
        &mut self,
        peer: &PeerId,
        key: String,
        limit: Option<LimitSpec>,
    ) -> ResponseActFuture<Self, Reply> {
        let level = self.store.feature_level();
        let refusal = if !peer.acts_for_all() {
            Some((
                ErrorKind::Forbidden,
                format!(
                    "setting a limit takes an admin's or a node's certificate (this one is \
                     {peer}'s)"
                ),
            ))
        } else if level < crate::core::features::SCHEDULING {
            Some((
                ErrorKind::Unsupported,
                format!(
                    "limits need the cluster's feature level {} and it is {level}: a master of \
                     an earlier release would ignore them. Once every node runs this release, \
                     run `ringleader features upgrade`",
                    crate::core::features::SCHEDULING
                ),
            ))
        } else if let Some(why) = bad_key(&key) {
            Some((ErrorKind::Invalid, why))
        } else if let Some(Err(why)) = limit.map(|l| l.check()) {
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
                .update_limits(|record| {
                    match limit {
                        Some(spec) => record.limits.insert(set, spec),
                        None => record.limits.remove(&set),
                    };
                })
                .await
        };
        let said = match limit {
            Some(spec) => format!("limit {key}: {spec:?}"),
            None => format!("limit {key} deleted"),
        };
        let core = limit.map(|l| l.to_core());
        self.write_setting(write, CoreEvent::Limited(vec![(key, core)]), said)
    }

    /// The limits set or named by a job, with their use.
    pub(super) fn limit_statuses(&self) -> Vec<LimitStatus> {
        self.core
            .limits()
            .into_iter()
            .map(|(key, usage, waiting_shards)| LimitStatus {
                key,
                limit: usage.limit.map(|l| spec_of(&l)),
                running: usage.running,
                tokens: usage.tokens.map(|t| t.floor() as u32),
                waiting_jobs: usage.waiting_jobs as u64,
                waiting_shards,
                throttled: usage.throttled,
            })
            .collect()
    }
}

/// A limit's settings as the wire says them.
fn spec_of(l: &crate::core::Limit) -> LimitSpec {
    LimitSpec {
        max_running: l.max_running,
        rate: l.rate.map(|r| r.n),
        per_ms: l.rate.map(|r| r.per.as_millis() as u64),
        burst: l.rate.map(|r| r.burst),
    }
}
