//! `Cancel`: a job leaves the scheduler and the ledger at once (reports
//! of its running shards are then stale) and is marked `Cancelled`, by a
//! write conditional on the job record's version: if the job finished
//! first, the cancel says so (and the result stays to be fetched); if the
//! cancel is first, the finish is refused. A job still being submitted
//! cannot be cancelled yet: the answer says to retry once `submit` has
//! answered.

use actix::prelude::*;

use super::{error, failed, Master};
use crate::audit::Event;
use crate::coord::{CoordError, JobStatus};
use crate::core::master::{Event as CoreEvent, Gone};
use crate::metrics as m;
use crate::wire::{ErrorKind, Reply};

impl Master {
    pub(super) fn cancel(
        &mut self,
        ctx: &mut Context<Self>,
        job_id: String,
        peer: crate::transport::PeerId,
    ) -> ResponseActFuture<Self, Reply> {
        if let Some(refused) = self.deny_known(&job_id, &peer) {
            return Box::pin(fut::ready(refused));
        }
        if self.core.is_submitting(&job_id) || self.is_creating(&job_id) {
            return Box::pin(fut::ready(error(
                ErrorKind::JobState,
                format!(
                    "job {job_id} is still being submitted: cancel it once its submission has \
                 been answered"
                ),
            )));
        }
        let rt = self.take_runtime(&job_id);
        // Its runs are stopped; their slots free as they end.
        let gone = CoreEvent::Gone {
            job: job_id.clone(),
            why: Gone::Cancelled,
        };
        self.handle_core(ctx, gone);
        let store = self.store.clone();
        let id = job_id.clone();
        Box::pin(
            async move {
                let job = match rt {
                    Some(rt) => rt.stored,
                    None => match store.read_job(&job_id).await? {
                        Some(j) => j,
                        None => {
                            return Ok((
                                error(ErrorKind::NoSuchJob, format!("no job {job_id}")),
                                None,
                            ))
                        }
                    },
                };
                // A job this master did not know: checked against its record.
                if let Some(why) = super::access::deny(job.record.owner.as_deref(), &peer, &job_id)
                {
                    return Ok((error(ErrorKind::NotOwner, why), None));
                }
                match job.record.status {
                    JobStatus::Accepted => {}
                    JobStatus::Cancelled => return Ok((Reply::Ok, None)),
                    JobStatus::Done => return Ok((finished_first(&job_id), None)),
                    JobStatus::Writing => {
                        return Ok((
                            error(
                                ErrorKind::NoSuchJob,
                                format!(
                                "no job {job_id}: its submission was never acknowledged (submit \
                                 it again)"
                            ),
                            ),
                            None,
                        ))
                    }
                }
                // The job's name when this request cancelled it.
                let cancelled = Some(job.record.job_name.clone());
                match store.set_status(&job, JobStatus::Cancelled).await {
                    Ok(()) => Ok((Reply::Ok, cancelled)),
                    Err(e) if e.is_conflict() => match store.read_job(&job_id).await? {
                        Some(j) if j.record.status == JobStatus::Done => {
                            Ok((finished_first(&job_id), None))
                        }
                        Some(j) if j.record.status == JobStatus::Cancelled => Ok((Reply::Ok, None)),
                        _ => Err(e),
                    },
                    Err(e) => Err(e),
                }
            }
            .into_actor(self)
            .map(
                move |res: Result<(Reply, Option<String>), CoordError>, act, ctx| {
                    let (frame, cancelled) = match res {
                        Ok(r) => r,
                        // The job left this master before its cancel was
                        // written: if it is still unfinished in ZooKeeper,
                        // it is scheduled again (it must end without a
                        // failover).
                        Err(e) => {
                            // Not cancelled by this master after all.
                            let job = id.clone();
                            act.handle_core(ctx, CoreEvent::CancelFailed { job });
                            act.readopt(ctx, id.clone());
                            (failed(&e), None)
                        }
                    };
                    if matches!(frame, Reply::Ok) {
                        act.audit(Event::JobCancelled { job: id.clone() });
                        act.watch_stored(ctx, id);
                    }
                    if let Some(name) = cancelled {
                        metrics::counter!(m::JOBS_CANCELLED, "job_type" => name).increment(1);
                    }
                    frame
                },
            ),
        )
    }
}

fn finished_first(job_id: &str) -> Reply {
    error(
        ErrorKind::JobState,
        format!(
            "job {job_id} finished before it could be cancelled: fetch its result with `result \
         {job_id}`"
        ),
    )
}
