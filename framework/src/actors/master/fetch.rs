//! `FetchResult`: a finished (or cancelled) job's result, read from
//! ZooKeeper and the store; the first fetch starts its retention clock
//! (marked after the answer).

use actix::prelude::*;
use serde_bytes::ByteBuf;

use super::status::stored_progress;
use super::{answer, error, Master};
use crate::coord::{CoordError, JobStatus, LeaderStore};
use crate::wire::{ErrorKind, JobOutcome, Reply};

/// A job's result was marked fetched: the master forgets that it waits
/// for its fetch, so that its collector reads its record again (a pass
/// that read it while the mark was on its way cached it as unfetched,
/// and would never have read it again).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Marked {
    pub job_id: String,
}

impl Handler<Marked> for Master {
    type Result = ();
    fn handle(&mut self, msg: Marked, _: &mut Context<Self>) {
        self.fetch_marked(msg.job_id);
    }
}

impl Master {
    /// A job's fetch mark is durable: it waits for no fetch here, and a
    /// collector pass that read it before (see [`Master::collect_pass`])
    /// does not cache it as unfetched.
    pub(super) fn fetch_marked(&mut self, job_id: String) {
        self.unfetched.remove(&job_id);
        self.marked.insert(job_id, std::time::Instant::now());
    }
}

impl Master {
    pub(super) fn fetch(
        &mut self,
        ctx: &mut Context<Self>,
        job_id: String,
        peer: crate::transport::PeerId,
    ) -> ResponseActFuture<Self, Reply> {
        if let Some(refused) = self.deny_known(&job_id, &peer) {
            return Box::pin(fut::ready(refused));
        }
        if self.jobs.contains_key(&job_id) {
            return Box::pin(fut::ready(error(
                ErrorKind::JobState,
                format!("job {job_id} is still running"),
            )));
        }
        // Its fetch marks it: the collector reads it again.
        self.unfetched.remove(&job_id);
        let store = self.store.clone();
        let me = ctx.address();
        answer(self, async move {
            fetch(&store, &job_id, Some(&peer), me).await
        })
    }
}

/// A job's result as its fetch answers it; `peer`, if given, must be its
/// owner, an admin or a node (it is checked against the record read).
pub(super) async fn fetch(
    store: &LeaderStore,
    job_id: &str,
    peer: Option<&crate::transport::PeerId>,
    master: Addr<Master>,
) -> Result<Reply, CoordError> {
    let Some(job) = store.read_job(job_id).await? else {
        return Ok(error(
            ErrorKind::NoSuchJob,
            format!(
                "no job {job_id} (unknown, or its result was fetched and retention has passed)"
            ),
        ));
    };
    if let Some(why) =
        peer.and_then(|p| super::access::deny(job.record.owner.as_deref(), p, job_id))
    {
        return Ok(error(ErrorKind::NotOwner, why));
    }
    let result = store.read_result(&job).await?;
    let bytes = match &result {
        Some(r) => store.read_output(&r.output).await?,
        None if job.record.status == JobStatus::Cancelled => Vec::new(),
        None => {
            return Ok(error(
                ErrorKind::JobState,
                format!("job {job_id} has no result yet"),
            ))
        }
    };
    // The mark only starts the retention clock: the answer does not wait
    // for it. Lost with a crash, it is made by the next fetch.
    let marking = store.clone();
    let progress = stored_progress(&job, result.as_ref());
    tokio::task::spawn_local(async move {
        match marking.mark_fetched(&job).await {
            Ok(()) => master.do_send(Marked { job_id: job.id }),
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "cannot mark a job fetched; its retention starts at its next fetch")
            }
        }
    });
    Ok(Reply::Outcome(JobOutcome {
        progress,
        result: ByteBuf::from(bytes),
        failures: result.map(|r| r.failures).unwrap_or_default(),
    }))
}
