//! `Cancel`: a job leaves the scheduler and the ledger at once (reports
//! of its running shards are then stale) and is marked `Cancelled`.

use actix::prelude::*;

use super::{error, Master};
use crate::coord::{CoordError, JobStatus};
use crate::wire::Frame;

impl Master {
    pub(super) fn cancel(
        &mut self,
        ctx: &mut Context<Self>,
        job_id: String,
    ) -> ResponseActFuture<Self, Frame> {
        if self.loading.contains(&job_id) {
            self.cancelled_while_loading.insert(job_id.clone());
        }
        let rt = self.jobs.remove(&job_id);
        self.ledger.remove(&job_id);
        self.sched.remove_job(&job_id);
        self.dispatch(ctx);
        let store = self.store.clone();
        Box::pin(
            async move {
                let job = match rt {
                    Some(rt) => rt.stored,
                    None => match store.read_job(&job_id).await? {
                        Some(j) => j,
                        None => return Ok(error(format!("no job {job_id}"))),
                    },
                };
                if job.record.status == JobStatus::Accepted {
                    store.set_status(&job, JobStatus::Cancelled).await?;
                }
                Ok::<_, CoordError>(Frame::Ok)
            }
            .into_actor(self)
            .map(|res, _, _| res.unwrap_or_else(error)),
        )
    }
}
