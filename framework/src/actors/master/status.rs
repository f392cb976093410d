//! `GetStatus` (the cluster: leader, workers, running jobs) and `GetJob`
//! (one job's progress, running or stored).

use actix::prelude::*;

use super::{answer, error, Master};
use crate::coord::{CoordError, JobStatus, LeaderStore, ResultRecord, StoredJob};
use crate::core::Counters;
use crate::wire::{ClusterStatus, Frame, JobProgress, JobState, WorkerStatus};

impl Master {
    /// The cluster as this master sees it.
    pub(super) fn status(&self) -> Frame {
        let workers = self
            .registered
            .iter()
            .map(|(id, info)| WorkerStatus {
                node_id: id.clone(),
                addr: info.addr.clone(),
                slots: info.slots,
                in_flight: self.sched.running_on(id) as u32,
                connected: self.links.contains_key(id),
                last_seen_ms: self
                    .links
                    .get(id)
                    .map(|l| l.last_seen.elapsed().as_millis() as u64),
            })
            .collect();
        let jobs = self
            .jobs
            .keys()
            .filter_map(|id| self.progress(id))
            .collect();
        Frame::Status(ClusterStatus {
            leader: self.settings.node_id.clone(),
            epoch: self.store.epoch(),
            workers,
            jobs,
        })
    }

    /// A running job's progress.
    pub(super) fn progress(&self, id: &str) -> Option<JobProgress> {
        let rt = self.jobs.get(id)?;
        let scheduled = self.sched.counters(id)?;
        Some(JobProgress {
            job_id: id.to_string(),
            job_name: rt.stored.record.job_name.clone(),
            state: JobState::Running,
            counters: self.ledger.counters(id, scheduled),
        })
    }

    /// `GetJob`: running jobs from memory, others from ZooKeeper.
    pub(super) fn get_job(&self, job_id: String) -> ResponseActFuture<Self, Frame> {
        if let Some(p) = self.progress(&job_id) {
            return Box::pin(fut::ready(Frame::Job(p)));
        }
        let store = self.store.clone();
        answer(self, async move { read_progress(&store, &job_id).await })
    }
}

pub(super) async fn read_progress(store: &LeaderStore, job_id: &str) -> Result<Frame, CoordError> {
    let Some(job) = store.read_job(job_id).await? else {
        return Ok(error(format!("no job {job_id}")));
    };
    let result = store.read_result(job_id).await?;
    Ok(Frame::Job(stored_progress(&job, result.as_ref())))
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
    }
}
