//! `GetStatus` (the cluster: leader, workers, running jobs), `GetJob`
//! (one job's progress, running or stored), `ListJobs` (every job the
//! cluster holds) and `PlanJob` (how a job would be cut, who runs it).

use actix::prelude::*;

use super::access::visible;
use super::{answer, error, failed, Master};
use crate::coord::{CoordError, JobStatus, LeaderStore, ResultRecord, StoredJob};
use crate::core::master::Quarantined;
use crate::core::Counters;
use crate::transport::PeerId;
use crate::wire::{
    ClusterStatus, ErrorKind, JobPlanInfo, JobProgress, JobQuery, JobState, JobSummary, Reply,
    WaitingJob, WorkerStatus,
};

impl Master {
    /// The cluster as this master sees it.
    pub(super) fn status(&self, peer: &PeerId) -> Reply {
        let workers = self
            .registered
            .iter()
            .map(|(id, info)| WorkerStatus {
                node_id: id.clone(),
                addr: info.addr.clone(),
                slots: info.slots,
                in_flight: self.core.running_on(id) as u32,
                connected: self.links.contains_key(id),
                last_seen_ms: self
                    .links
                    .get(id)
                    .map(|l| l.last_seen.elapsed().as_millis() as u64),
                build: (!info.build.is_empty()).then(|| info.build.clone()),
                protocol: self.links.get(id).map(|l| l.version),
                other_types: self.types_not_ours(info),
            })
            .collect();
        let quarantined = self.quarantined_for(peer).map(|(id, q)| JobProgress {
            job_id: id.clone(),
            job_name: q.job_name.clone().unwrap_or_default(),
            state: JobState::Running,
            counters: Counters {
                tasks_total: q.tasks_total,
                ..Counters::default()
            },
            not_before_ms: None,
        });
        let jobs = self
            .jobs
            .iter()
            .filter(|(_, rt)| visible(rt.stored.record.owner.as_deref(), peer))
            .filter_map(|(id, _)| self.progress(id))
            .chain(quarantined)
            .collect();
        Reply::Status(ClusterStatus {
            leader: self.settings.node_id.clone(),
            epoch: self.store.epoch(),
            workers,
            jobs,
            build: Some(self.settings.build.clone()),
            feature_level: Some(self.store.feature_level()),
            queued: self.queued_at(),
            fairness: self.fairness_for(peer),
            limits: self.limit_statuses(),
            oldest_waiting: match peer.acts_for_all() {
                true => self.core.oldest_waiting().map(|(job, t)| WaitingJob {
                    job_id: job.to_string(),
                    waiting_ms: std::time::Instant::now()
                        .saturating_duration_since(t)
                        .as_millis() as u64,
                }),
                false => None,
            },
        })
    }

    /// The quarantined jobs `peer` may see: its own, or any for an admin
    /// or a node (one whose owner is unknown, its record unreadable, only
    /// for them).
    fn quarantined_for<'a>(
        &'a self,
        peer: &'a PeerId,
    ) -> impl Iterator<Item = (&'a String, &'a Quarantined)> + 'a {
        self.core
            .quarantined()
            .iter()
            .filter(|(_, q)| match &q.owner {
                Some(owner) => visible(Some(owner), peer),
                None => peer.acts_for_all(),
            })
    }

    /// A running job's progress.
    pub(super) fn progress(&self, id: &str) -> Option<JobProgress> {
        let rt = self.jobs.get(id)?;
        Some(JobProgress {
            job_id: id.to_string(),
            job_name: rt.stored.record.job_name.clone(),
            state: JobState::Running,
            counters: self.core.counters(id)?,
            not_before_ms: self.waits_until(id),
        })
    }

    /// `GetJob`: running jobs from memory, others from ZooKeeper; either
    /// only for its owner, an admin or a node.
    pub(super) fn get_job(
        &self,
        job_id: String,
        peer: crate::transport::PeerId,
    ) -> ResponseActFuture<Self, Reply> {
        if let Some(refused) = self.deny_known(&job_id, &peer) {
            return Box::pin(fut::ready(refused));
        }
        if let Some(p) = self.progress(&job_id) {
            return Box::pin(fut::ready(Reply::Job(p)));
        }
        let store = self.store.clone();
        let id = job_id.clone();
        let read = async move { read_progress(&store, &id).await };
        Box::pin(read.into_actor(self).map(move |res, act, _| match res {
            Ok((frame, Some(owner))) => match act.check_owner(owner.as_deref(), &peer, &job_id) {
                Some(why) => error(ErrorKind::NotOwner, why),
                None => frame,
            },
            Ok((frame, None)) => frame,
            Err(e) => failed(&e),
        }))
    }
}

impl Master {
    /// `PlanJob`: the cut a submission would get now, and who runs it.
    pub(super) fn plan_job(
        &self,
        job_name: &str,
        task_count: u64,
        shard_size: u32,
        shape: Option<&str>,
    ) -> Reply {
        if self.settings.registry.get(job_name).is_none() {
            return self.unknown_job_type(job_name);
        }
        if let (Some(theirs), Some(ours)) = (shape, self.settings.registry.shape(job_name)) {
            if theirs != ours {
                return self.other_types(job_name, Some((theirs, ours)));
            }
        }
        let (workers, slots) = self.runners(job_name);
        let shard_size = match shard_size {
            0 => crate::core::job::auto_shard_size(task_count, slots),
            n => n,
        };
        Reply::Planned(JobPlanInfo {
            shard_size,
            shards: crate::core::shard_count(task_count, shard_size),
            workers: workers as u32,
            slots,
            registered: self.registered.len() as u32,
        })
    }

    /// The refusal of a submission whose types for `job_name` are not
    /// this master's (with both shapes, when they were sent).
    pub(super) fn other_types(&self, job_name: &str, shapes: Option<(&str, &str)>) -> Reply {
        let shapes = match shapes {
            Some((theirs, ours)) => format!(
                ": the submission's types are {}; the master's are {}",
                clip(theirs),
                clip(ours)
            ),
            None => String::new(),
        };
        error(
            ErrorKind::Invalid,
            format!(
                "job type {job_name} is defined differently by the submitting binary and by this \
                 cluster's master (node {}, {}){shapes}. Submit it from a binary built with the \
                 master's task and result types, or once a master of your build serves (a \
                 rolling upgrade under way)",
                self.settings.node_id, self.settings.build,
            ),
        )
    }

    /// The job names a registered worker runs with other types than
    /// this master's.
    fn types_not_ours(&self, info: &crate::coord::WorkerInfo) -> Vec<String> {
        let registry = &self.settings.registry;
        info.jobs
            .iter()
            .filter(|name| {
                !crate::registry::same_types(
                    info.shapes.get(*name).copied(),
                    registry.shape_id(name),
                )
            })
            .cloned()
            .collect()
    }

    /// Why a job waits, if no registered worker runs it.
    fn runnable_note(&self, name: &str) -> Option<String> {
        (self.runners(name).0 == 0).then(|| {
            let other = self
                .registered
                .values()
                .filter(|w| self.types_not_ours(w).iter().any(|n| n == name))
                .count();
            let other = match other {
                0 => String::new(),
                n => format!(
                    "; {n} run it with other task types than the master's (another build of \
                     the application)"
                ),
            };
            format!(
                "no worker runs job {name}; {} workers registered{other}",
                self.registered.len()
            )
        })
    }

    /// A delayed job's time, while it waits for it.
    pub(super) fn waits_until(&self, id: &str) -> Option<u64> {
        self.core.not_before(id)?;
        self.jobs.get(id)?.stored.record.options.not_before_ms
    }

    /// `ListJobs`: running jobs from memory, retained ones from the
    /// collector's cache (their records change no more), the rest read
    /// from ZooKeeper; newest first.
    /// Only the jobs `peer` may see ([`visible`]).
    pub(super) fn list_jobs(
        &self,
        peer: &PeerId,
        query: JobQuery,
    ) -> ResponseActFuture<Self, Reply> {
        let running: Vec<JobSummary> = self
            .jobs
            .iter()
            .filter(|(_, rt)| visible(rt.stored.record.owner.as_deref(), peer))
            .filter_map(|(id, rt)| {
                let p = self.progress(id)?;
                Some(JobSummary {
                    job_id: id.clone(),
                    job_name: p.job_name.clone(),
                    state: JobState::Running,
                    tasks_total: p.counters.tasks_total,
                    counters: Some(p.counters),
                    created_ms: rt.stored.record.created_ms,
                    fetched: false,
                    note: self.runnable_note(&p.job_name).or_else(|| {
                        let limit = self.core.throttled_by(id)?;
                        Some(format!("waiting on limit {limit}"))
                    }),
                    owner: rt.stored.record.owner.clone(),
                    not_before_ms: self.waits_until(id),
                    priority: rt.stored.record.options.priority,
                    fairness_key: rt.stored.record.options.fairness_key.clone(),
                })
            })
            .collect();
        let quarantined = self.quarantined_for(peer).map(|(id, q)| JobSummary {
            job_id: id.clone(),
            job_name: q.job_name.clone().unwrap_or_default(),
            state: JobState::Running,
            tasks_total: q.tasks_total,
            counters: None,
            created_ms: q.created_ms,
            fetched: false,
            note: Some(format!("quarantined: {}", q.reason)),
            owner: q.owner.clone(),
            not_before_ms: None,
            priority: 0,
            fairness_key: None,
        });
        let running: Vec<JobSummary> = running.into_iter().chain(quarantined).collect();
        let store = self.store.clone();
        let retained: Vec<StoredJob> = self.retained.values().cloned().collect();
        let (running_ids, peer) = (self.jobs.keys().cloned(), peer.clone());
        let quarantined_ids = self.core.quarantined().keys().cloned();
        let known: std::collections::HashSet<String> = running_ids
            .chain(quarantined_ids)
            .chain(retained.iter().map(|j| j.id.clone()))
            .collect();
        let work = async move {
            let listed = store.list_job_ids().await?;
            let present: std::collections::HashSet<&String> = listed.iter().collect();
            let unknown: Vec<String> = listed
                .iter()
                .filter(|id| !known.contains(*id))
                .cloned()
                .collect();
            let mut all = running;
            let cached = retained.into_iter().filter(|j| present.contains(&j.id));
            for job in store.read_jobs(&unknown).await?.into_iter().chain(cached) {
                if !visible(job.record.owner.as_deref(), &peer) {
                    continue;
                }
                let p = stored_progress(&job, None);
                let owner = job.record.owner.clone();
                all.push(JobSummary {
                    job_id: job.id,
                    job_name: job.record.job_name,
                    state: p.state,
                    tasks_total: job.record.tasks_total,
                    counters: None,
                    created_ms: job.record.created_ms,
                    fetched: job.record.fetched_ms.is_some(),
                    note: None,
                    owner,
                    not_before_ms: None,
                    priority: job.record.options.priority,
                    fairness_key: job.record.options.fairness_key.clone(),
                });
            }
            Ok(Reply::Jobs(query.answer(all)))
        };
        answer(self, work)
    }
}

/// At most a few hundred characters of `text`, for a message.
fn clip(text: &str) -> String {
    const MAX: usize = 400;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// A stored job's progress, with its owner (`None`: no such job, and the
/// frame says so). Whoever asked must be checked against the owner before
/// the frame is sent.
pub(super) async fn read_progress(
    store: &LeaderStore,
    job_id: &str,
) -> Result<(Reply, Option<Option<String>>), CoordError> {
    let Some(job) = store.read_job(job_id).await? else {
        return Ok((
            error(ErrorKind::NoSuchJob, format!("no job {job_id}")),
            None,
        ));
    };
    let result = store.read_result(&job).await?;
    let owner = job.record.owner.clone();
    Ok((
        Reply::Job(stored_progress(&job, result.as_ref())),
        Some(owner),
    ))
}

/// A stored job's progress: its result's counts once it has one.
pub(super) fn stored_progress(job: &StoredJob, result: Option<&ResultRecord>) -> JobProgress {
    let state = match job.record.status {
        JobStatus::Done => JobState::Done,
        JobStatus::Cancelled => JobState::Cancelled,
        JobStatus::Accepted | JobStatus::Writing => JobState::Running,
    };
    let counters = result.map_or(Counters::default(), |r| r.counters);
    JobProgress {
        job_id: job.id.clone(),
        job_name: job.record.job_name.clone(),
        state,
        counters: Counters {
            tasks_total: job.record.tasks_total,
            ..counters
        },
        not_before_ms: None,
    }
}
