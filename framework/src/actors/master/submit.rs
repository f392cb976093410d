//! `Submit`: a client's job with its tasks. Checked and admitted by the
//! ledger, written to ZooKeeper (`Writing`, batches, `Accepted`), then
//! scheduled. A resubmission of a known id answers `existing` when it is
//! the same submission (same digest), and is refused otherwise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_bytes::ByteBuf;

use super::access::refusal;
use super::load::Loaded;
use super::{error, JobRuntime, Master};
use crate::coord::{submission_digest, CoordError, JobRecord, JobStatus};
use crate::core::job::{auto_shard_size, Ledger, Submission};
use crate::core::recover_job;
use crate::metrics as m;
use crate::wire::{Frame, SubmitHeader};

/// A client submission with its tasks.
#[derive(Message)]
#[rtype(result = "Frame")]
pub(crate) struct Submit {
    pub header: SubmitHeader,
    pub tasks: Vec<ByteBuf>,
    /// Their bytes as the byte bounds count them
    /// ([`crate::core::job::task_bytes`]), counted
    /// by the gateway as they arrived.
    pub bytes: usize,
    /// Who submits: the job's owner, and whether a resubmission of an
    /// existing id may find it.
    pub peer: crate::transport::PeerId,
}

/// What writing a submission came to.
enum Written {
    /// A new job, to schedule.
    New(Box<Loaded>),
    /// The same submission was already accepted.
    Existing,
    /// The id holds another submission.
    Refused(String),
    /// The id is another client's job.
    NotOwner(String, crate::transport::PeerId),
}

impl Handler<Submit> for Master {
    type Result = ResponseActFuture<Self, Frame>;
    fn handle(&mut self, msg: Submit, _ctx: &mut Context<Self>) -> Self::Result {
        let h = msg.header;
        if self.settings.registry.get(&h.job_name).is_none() {
            return Box::pin(fut::ready(self.unknown_job_type(&h.job_name)));
        }
        let bytes = msg.bytes;
        // The options as recorded: a size left to the cluster is chosen
        // now, from the slots that run the job, and kept with the job
        // (recovery cuts from the record). The digest keeps what the
        // client sent, so that its retry finds the job.
        let mut options = h.options.clone();
        if options.shard_size == 0 {
            options.shard_size = auto_shard_size(h.task_count, self.runners(&h.job_name).1);
        }
        let submission = Submission {
            job_id: &h.job_id,
            shard_size: options.shard_size,
            max_attempts: h.options.max_attempts,
            announced: h.task_count,
            tasks: msg.tasks.len() as u64,
            bytes,
        };
        if let Err(refusal) = Ledger::check(&submission) {
            return Box::pin(fut::ready(error(refusal)));
        }
        if self.collecting.contains(&h.job_id) {
            return Box::pin(fut::ready(error(format!(
                "job {} is being removed (its result was fetched and its retention has \
                 passed): retry in a moment to submit it anew",
                h.job_id
            ))));
        }
        if let Some(rt) = self.jobs.get(&h.job_id) {
            // Another client's id is refused; the same submission finds
            // its job; another is refused.
            let why = refusal(rt.stored.record.owner.as_deref(), &msg.peer, &h.job_id);
            if let Some(message) = self.refused(&msg.peer, &h.job_id, why) {
                return Box::pin(fut::ready(error(message)));
            }
            let kept = rt.stored.record.digest.clone();
            let tasks = Arc::new(msg.tasks);
            let fut = async move {
                let digest = digest_of(&h, tasks).await;
                match same_submission(&h.job_id, kept.as_ref(), &digest) {
                    Ok(()) => Frame::Accepted {
                        job_id: h.job_id,
                        existing: true,
                    },
                    Err(message) => Frame::Error { message },
                }
            };
            return Box::pin(fut.into_actor(self));
        }
        // ZooKeeper keeps every byte in its servers' memory: a cluster-wide
        // bound (submissions being written included), so that a big
        // submission is refused instead of exhausting the ensemble's heap.
        if let Err(refusal) = self.ledger.begin_submission(&submission) {
            return Box::pin(fut::ready(error(refusal)));
        }
        let store = self.store.clone();
        let registry = self.settings.registry.clone();
        let tasks = Arc::new(msg.tasks);
        let id = h.job_id.clone();
        let peer = msg.peer;
        let owner = peer.principal();
        let fut = async move {
            let digest = digest_of(&h, tasks.clone()).await;
            let record = JobRecord {
                job_name: h.job_name.clone(),
                options,
                tasks_total: h.task_count,
                batches: 0,
                status: JobStatus::Writing,
                created_ms: 0,
                fetched_ms: None,
                digest: Some(digest.clone()),
                owner: Some(owner),
                inline: None,
                result: None,
            };
            // Created at once: the id is read only when it is taken (a
            // resubmission, or a half-written job of an earlier master).
            let mut tries = 0;
            let job = loop {
                let err = match store.create_job(&h.job_id, record.clone(), &tasks).await {
                    Ok(job) => break job,
                    Err(e) if e.is_node_exists() && tries < 2 => e,
                    Err(e) => return Err(e),
                };
                tries += 1;
                let Some(existing) = store.read_job(&h.job_id).await? else {
                    // Collected meanwhile: create it again.
                    continue;
                };
                if existing.record.status == JobStatus::Writing {
                    store.delete_tree(&store.layout().job(&h.job_id)).await?;
                    continue;
                }
                let theirs = refusal(existing.record.owner.as_deref(), &peer, &h.job_id);
                if let Some(message) = theirs {
                    return Ok(Written::NotOwner(message, peer));
                }
                tracing::debug!(job = %h.job_id, error = %err, "a submission of a known id");
                return Ok(
                    match same_submission(&h.job_id, existing.record.digest.as_ref(), &digest) {
                        Ok(()) => Written::Existing,
                        Err(refusal) => Written::Refused(refusal),
                    },
                );
            };
            let erased = registry
                .get(&h.job_name)
                .ok_or_else(|| CoordError::Garbage {
                    path: store.layout().job(&h.job_id),
                    reason: "job type vanished".into(),
                })?;
            let rec = &job.record;
            let mut plan = recover_job(
                &job.id,
                &rec.job_name,
                rec.tasks_total,
                rec.options.shard_size,
                rec.options.max_attempts,
                &BTreeMap::new(),
            )
            .plan;
            plan.shard_timeout = rec.options.shard_timeout_ms.map(Duration::from_millis);
            let acc = erased.new_acc();
            Ok::<_, CoordError>(Written::New(Box::new(Loaded {
                rt: JobRuntime::new(job, tasks, acc),
                plan,
                bytes,
                failures: Vec::new(),
                objects: Vec::new(),
                unmerged: Vec::new(),
            })))
        };
        Box::pin(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(Written::New(loaded)) => {
                let tasks = loaded.plan.counters.tasks_total;
                let shards = loaded.plan.pending.len();
                // One-task jobs at debug level, as their end (see `write_result`).
                if tasks > 1 {
                    tracing::info!(job = %id, tasks, shards, "job accepted");
                } else {
                    tracing::debug!(job = %id, tasks, shards, "job accepted");
                }
                metrics::counter!(m::JOBS_SUBMITTED, "job_type" => loaded.rt.stored.record.job_name.clone())
                    .increment(1);
                act.audit(crate::audit::Event::JobAccepted {
                    job: id.clone(),
                    tasks: loaded.plan.counters.tasks_total,
                });
                act.add_loaded(ctx, id.clone(), *loaded);
                Frame::Accepted {
                    job_id: id,
                    existing: false,
                }
            }
            Ok(Written::Existing) => {
                act.ledger.abandoned(&id);
                // Asked for again: its result stays another retention.
                act.retention.touch(&id, std::time::Instant::now());
                Frame::Accepted {
                    job_id: id,
                    existing: true,
                }
            }
            Ok(Written::Refused(message)) => {
                act.ledger.abandoned(&id);
                Frame::Error { message }
            }
            Ok(Written::NotOwner(message, peer)) => {
                act.ledger.abandoned(&id);
                let _ = act.refused(&peer, &id, Some(message.clone()));
                Frame::Error { message }
            }
            Err(e) => {
                act.ledger.abandoned(&id);
                if e.is_session_end() {
                    act.fail(ctx, &e);
                }
                if e.is_outcome_unknown() {
                    error(crate::wire::outcome_unknown(&format!(
                        "job {id}'s submission ({e}): it may have been accepted. Retry with the \
                         same job id: that returns the job if it was, and submits it if not"
                    )))
                } else {
                    error(format!(
                        "submission of job {id} failed: {e}; retry with the same job id"
                    ))
                }
            }
        }))
    }
}

/// The submission's digest, computed on the blocking pool (32 MiB of
/// tasks take tens of milliseconds), or here when the tasks are small
/// (a work queue's job would otherwise wake a pool thread for a few
/// bytes).
async fn digest_of(h: &SubmitHeader, tasks: Arc<Vec<ByteBuf>>) -> ByteBuf {
    const HERE: usize = 64 * 1024;
    if crate::core::job::task_bytes(&tasks) <= HERE {
        return submission_digest(&h.job_name, &h.options, &tasks);
    }
    let (name, options) = (h.job_name.clone(), h.options.clone());
    let compute = move || submission_digest(&name, &options, &tasks);
    match tokio::task::spawn_blocking(compute).await {
        Ok(d) => d,
        // Cannot happen (hashing does not panic); an empty digest matches nothing.
        Err(_) => ByteBuf::new(),
    }
}

/// Whether a resubmission is the job's own; the refusal names the job.
/// Jobs written before digests were kept accept any resubmission.
fn same_submission(id: &str, kept: Option<&ByteBuf>, digest: &ByteBuf) -> Result<(), String> {
    match kept {
        Some(k) if k != digest => Err(format!(
            "job {id} exists with a different submission (other tasks or options): choose \
             another job id, or fetch the existing job's result with `result {id}`"
        )),
        _ => Ok(()),
    }
}

impl Master {
    /// The refusal of a job type this master does not run.
    pub(super) fn unknown_job_type(&self, name: &str) -> Frame {
        error(format!(
            "unknown job type {name:?}: this cluster's master runs {}; the master and the \
             submitting binary must register the same jobs",
            self.settings.registry.names().join(", ")
        ))
    }

    /// The registered workers that run job `name`, and their slots.
    pub(super) fn runners(&self, name: &str) -> (usize, u64) {
        self.registered
            .values()
            .filter(|w| w.jobs.iter().any(|j| j == name))
            .fold((0, 0), |(n, slots), w| (n + 1, slots + u64::from(w.slots)))
    }
}
