//! `Submit`: a client's job with its tasks. Checked and admitted by the
//! ledger, written to ZooKeeper (`Writing`, batches, `Accepted`), then
//! scheduled; a compact job of one shard is scheduled while its create
//! waits ([`super::creating`]). A resubmission of a known id answers
//! `existing` when it is the same submission (same digest), and is
//! refused otherwise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_bytes::ByteBuf;
use tokio::sync::oneshot;

use super::access::refusal;
use super::creating::{take_watch, Creating};
use super::load::Loaded;
use super::{error, JobRuntime, Master, Watch};
use crate::coord::{
    submission_digest, Amend, CoordError, JobRecord, JobStatus, LeaderStore, StoredJob,
};
use crate::core::job::{auto_shard_size, Ledger, Submission};
use crate::core::master::Created;
use crate::core::master::Phase;
use crate::core::{features, recover_job, shard_count};
use crate::metrics as m;
use crate::registry::Registry;
use crate::transport::PeerId;
use crate::wire::{ErrorKind, JobOptions, Reply, SubmitHeader};

/// A client submission with its tasks.
#[derive(Message)]
#[rtype(result = "Reply")]
pub(crate) struct Submit {
    pub header: SubmitHeader,
    pub tasks: Vec<ByteBuf>,
    /// Their bytes as the byte bounds count them
    /// ([`crate::core::job::task_bytes`]), counted
    /// by the gateway as they arrived.
    pub bytes: usize,
    /// Who submits: the job's owner, and whether a resubmission of an
    /// existing id may find it.
    pub peer: PeerId,
    /// Where the gateway hands over a watch sent behind the tasks
    /// (`Client::run`) if it comes while the submission is handled: it is
    /// registered before the answer goes, and a job that ends with its
    /// create is marked fetched in that write.
    pub watch: Option<oneshot::Receiver<Watch>>,
}

/// A submission admitted by the ledger, to be written.
struct Admitted {
    header: SubmitHeader,
    /// The job's types as this master defines them (kept in its record).
    shape: Option<u64>,
    /// As recorded: the shard size chosen.
    options: JobOptions,
    tasks: Arc<Vec<ByteBuf>>,
    bytes: usize,
    peer: PeerId,
    watch: Option<oneshot::Receiver<Watch>>,
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
    NotOwner(String, PeerId),
}

/// What a speculative create came to.
enum Speculated {
    /// Created; `true` if as its end.
    Created(bool),
    /// The id was taken: what it holds (`None`: nothing any more, or a
    /// half-written job now deleted; the job is to be written again).
    Taken(Option<Written>),
}

impl Handler<Submit> for Master {
    type Result = ResponseActFuture<Self, Reply>;
    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Self::Result {
        let h = msg.header;
        if self.settings.registry.get(&h.job_name).is_none() {
            return Box::pin(fut::ready(self.unknown_job_type(&h.job_name)));
        }
        // Every submission, not only a client's first (whose plan was
        // checked): after a failover the master may be of another build.
        let shape = self.settings.registry.shape_id(&h.job_name);
        if !crate::registry::same_types(h.shape, shape) {
            return Box::pin(fut::ready(self.other_types(&h.job_name, None)));
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
        // Under its own limits and its type's.
        if let Some(erased) = self.settings.registry.get(&h.job_name) {
            options.under.extend(erased.limits());
            options.under.sort_unstable();
            options.under.dedup();
        }
        let submission = Submission {
            job_id: &h.job_id,
            shard_size: options.shard_size,
            max_attempts: h.options.max_attempts,
            announced: h.task_count,
            tasks: msg.tasks.len() as u64,
            bytes,
            priority: h.options.priority,
        };
        if let Err(refusal) = Ledger::check(&submission) {
            return Box::pin(fut::ready(refused(&refusal)));
        }
        if let Some(key) = &h.options.fairness_key {
            if let Some((kind, why)) = super::fairness::refused_key(key, &msg.peer) {
                return Box::pin(fut::ready(error(kind, why)));
            }
        }
        if let Some((kind, why)) = self.refused_scheduling(&options) {
            return Box::pin(fut::ready(error(kind, why)));
        }
        if self.core.is_collecting(&h.job_id) {
            return Box::pin(fut::ready(error(
                ErrorKind::Unavailable,
                format!(
                    "job {} is being removed (its result was fetched and its retention has \
                 passed): retry in a moment to submit it anew",
                    h.job_id
                ),
            )));
        }
        if let Some(rt) = self.jobs.get(&h.job_id) {
            // Another client's id is refused; the same submission finds
            // its job; another is refused.
            let why = refusal(rt.stored.record.owner.as_deref(), &msg.peer, &h.job_id);
            if let Some(message) = self.refused(&msg.peer, &h.job_id, why) {
                return Box::pin(fut::ready(error(ErrorKind::NotOwner, message)));
            }
            let kept = rt.stored.record.digest.clone();
            // Scheduled while its create waits: answered once it is durable.
            let created = self.await_create(&h.job_id);
            let tasks = Arc::new(msg.tasks);
            let watch = msg.watch;
            let fut = async move {
                let durable = match created {
                    Some(rx) => rx.await,
                    None => Ok(true),
                };
                let Ok(durable) = durable else {
                    return error(
                        ErrorKind::OutcomeUnknown,
                        format!(
                            "the create of job {} was not answered before this master stopped",
                            h.job_id
                        ),
                    );
                };
                if !durable {
                    return error(
                        ErrorKind::Unavailable,
                        format!(
                            "the submission of job {} that this one repeats was not written (its \
                         id was taken, or ZooKeeper failed): submit it again",
                            h.job_id
                        ),
                    );
                }
                let digest = digest_of(&h, tasks).await;
                match same_submission(&h.job_id, kept.as_ref(), &digest) {
                    Ok(()) => Reply::Accepted {
                        job_id: h.job_id,
                        existing: true,
                    },
                    Err(message) => error(ErrorKind::Invalid, message),
                }
            };
            return Box::pin(fut.into_actor(self).map(move |frame, act, ctx| {
                if matches!(frame, Reply::Accepted { .. }) {
                    act.watch_sent(ctx, watch);
                }
                frame
            }));
        }
        // ZooKeeper keeps every byte in its servers' memory: a cluster-wide
        // bound (submissions being written included), so that a big
        // submission is refused instead of exhausting the ensemble's heap.
        if let Err(refusal) = self.core.begin_submission(&submission) {
            return Box::pin(fut::ready(refused(&refusal)));
        }
        let admitted = Admitted {
            header: h,
            shape,
            options,
            tasks: Arc::new(msg.tasks),
            bytes,
            peer: msg.peer,
            watch: msg.watch,
        };
        match self.speculable(&admitted) {
            Some(job) => self.speculate(ctx, admitted, job),
            None => self.write_submission(admitted),
        }
    }
}

/// Furthest a job may be delayed.
const MAX_DELAY: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

impl Master {
    /// Why a job's scheduling options are refused, if they are: a delay
    /// or a limit below the feature level that keeps out masters of a
    /// release that would start a delayed job at once and ignore limits;
    /// a time past [`MAX_DELAY`]; a limit's name that is no name.
    pub(super) fn refused_scheduling(&self, o: &JobOptions) -> Option<(ErrorKind, String)> {
        let what = match (o.not_before_ms.is_some(), !o.under.is_empty()) {
            (false, false) => return None,
            (true, false) => "delayed jobs",
            (false, true) => "limits",
            (true, true) => "delayed jobs and limits",
        };
        let level = self.store.feature_level();
        if level < features::SCHEDULING {
            return Some((
                ErrorKind::Unsupported,
                format!(
                    "{what} need the cluster's feature level {} and it is {level}: a master \
                     of an earlier release would start delayed jobs at once and ignore limits. \
                     Once every node runs this release, run `ringleader features upgrade`",
                    features::SCHEDULING
                ),
            ));
        }
        if let Some(ms) = o.not_before_ms {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
            let ahead = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            if ahead > MAX_DELAY {
                let why = format!(
                    "a job may be delayed by at most 10 years; this one by {} days",
                    ahead.as_secs() / 86_400
                );
                return Some((ErrorKind::Invalid, why));
            }
        }
        if o.under.len() > super::limits::MAX_UNDER {
            let why = format!(
                "a job may be under at most {} limits; this one names {}",
                super::limits::MAX_UNDER,
                o.under.len()
            );
            return Some((ErrorKind::Invalid, why));
        }
        let bad = o.under.iter().find_map(|k| super::limits::bad_key(k));
        bad.map(|why| (ErrorKind::Invalid, why))
    }

    /// Registers a watch the gateway handed over behind a submission, if
    /// it did (after this, its handover fails and it sends the watch
    /// itself).
    fn watch_sent(&mut self, ctx: &mut Context<Self>, watch: Option<oneshot::Receiver<Watch>>) {
        if let Some(w) = take_watch(watch) {
            self.watch(ctx, w);
        }
    }

    /// The job's record as its create writes it, if the job may be
    /// scheduled while its create waits ([`super::creating`]): compact,
    /// one shard, not streamed, and an id of no job this master ended or
    /// is loading (a resubmission of one would find it taken: its create
    /// would fail and the run be wasted). Jobs that ended before a
    /// takeover are not looked up (that is a read in series with every
    /// submission): a resubmission of one runs its task for nothing, then
    /// finds the job.
    fn speculable(&self, a: &Admitted) -> Option<StoredJob> {
        let id = &a.header.job_id;
        let one_shard = shard_count(a.header.task_count, a.options.shard_size) == 1;
        if !one_shard
            || a.options.stream
            || a.options.not_before_ms.is_some()
            || matches!(
                self.core.phase(id),
                Some(Phase::Loading { .. } | Phase::Ended | Phase::Quarantined)
            )
            || crate::core::job::task_bytes(&a.tasks) > 64 * 1024
        {
            return None;
        }
        let digest = submission_digest(&a.header.job_name, &a.header.options, &a.tasks);
        let record = new_record(a, digest);
        self.store.compact_job(id, record, &a.tasks)
    }

    /// Schedules a compact job of one shard at once and creates it; its
    /// end may go in place of its create (see [`super::creating`]).
    fn speculate(
        &mut self,
        ctx: &mut Context<Self>,
        mut a: Admitted,
        job: StoredJob,
    ) -> ResponseActFuture<Self, Reply> {
        let id = job.id.clone();
        let loaded = match new_loaded(
            &self.settings.registry,
            job.clone(),
            a.tasks.clone(),
            a.bytes,
        ) {
            Ok(l) => l,
            Err(e) => {
                self.core.abandoned(&id);
                return Box::pin(fut::ready(error(ErrorKind::Invalid, e)));
            }
        };
        let amend = Amend::default();
        let mut loaded = Box::new(loaded);
        loaded.rt.creating = Some(Creating::new(amend.clone(), a.watch.take()));
        self.add_loaded(ctx, id.clone(), *loaded);
        let store = self.store.clone();
        let peer = a.peer.clone();
        let digest = job.record.digest.clone().unwrap_or_default();
        let create = async move {
            match store.create_compact(&job, Some(amend)).await {
                Ok(ended) => Ok(Speculated::Created(ended)),
                Err(e) if e.is_node_exists() => Ok(Speculated::Taken(
                    taken(&store, &job.id, &peer, &digest).await?,
                )),
                Err(e) => Err(e),
            }
        };
        Box::pin(create.into_actor(self).then(move |res, act, ctx| {
            let frame = match res {
                Ok(Speculated::Created(ended)) => {
                    // Accepted first: its end (if it came with it) follows.
                    act.accepted(&id, &a.header.job_name, a.header.task_count);
                    let outcome = if ended {
                        Created::Ended
                    } else {
                        Created::Durable
                    };
                    act.created(ctx, &id, outcome);
                    Reply::Accepted {
                        job_id: id,
                        existing: false,
                    }
                }
                Ok(Speculated::Taken(None)) => {
                    // Free again: written as any submission, the watch
                    // handed over with it.
                    let watch = act.created(ctx, &id, Created::Failed);
                    let (tx, rx) = oneshot::channel();
                    if let Some(w) = watch {
                        let _ = tx.send(w);
                    }
                    a.watch = Some(rx);
                    let submission = Submission {
                        job_id: &id,
                        shard_size: a.options.shard_size,
                        max_attempts: a.header.options.max_attempts,
                        announced: a.header.task_count,
                        tasks: a.tasks.len() as u64,
                        bytes: a.bytes,
                        priority: a.options.priority,
                    };
                    if let Err(refusal) = act.core.begin_submission(&submission) {
                        return Box::pin(fut::ready(refused(&refusal))) as ResponseActFuture<_, _>;
                    }
                    return act.write_submission(a);
                }
                Ok(Speculated::Taken(Some(written))) => {
                    let watch = act.created(ctx, &id, Created::Failed);
                    act.answer_written(ctx, &id, written, watch.map(ready_watch))
                }
                Err(e) => {
                    act.created(ctx, &id, Created::Failed);
                    act.write_failed(ctx, &id, &e)
                }
            };
            Box::pin(fut::ready(frame))
        }))
    }

    /// Writes an admitted submission, then schedules it.
    fn write_submission(&mut self, a: Admitted) -> ResponseActFuture<Self, Reply> {
        let store = self.store.clone();
        let registry = self.settings.registry.clone();
        let Admitted {
            header: h,
            shape,
            options,
            tasks,
            bytes,
            peer,
            watch,
        } = a;
        let id = h.job_id.clone();
        let admitted = Admitted {
            header: h.clone(),
            shape,
            options: options.clone(),
            tasks: tasks.clone(),
            bytes,
            peer: peer.clone(),
            watch: None,
        };
        let fut = async move {
            let digest = digest_of(&h, tasks.clone()).await;
            let record = new_record(&admitted, digest.clone());
            // Created at once: the id is read only when it is taken (a
            // resubmission, or a half-written job of an earlier master).
            let mut tries = 0;
            let job = loop {
                match store.create_job(&h.job_id, record.clone(), &tasks).await {
                    Ok(job) => break job,
                    Err(e) if e.is_node_exists() && tries < 2 => {
                        tracing::debug!(job = %h.job_id, error = %e, "a submission of a known id");
                        // Its own create, applied before a connection loss
                        // hid the answer: the record holds its incarnation.
                        if let Some(j) = store.read_job(&h.job_id).await? {
                            let ours = j.record.incarnation == record.incarnation
                                && j.record.status == JobStatus::Accepted;
                            if ours {
                                break j;
                            }
                        }
                    }
                    Err(e) => return Err(e),
                };
                tries += 1;
                if let Some(written) = taken(&store, &h.job_id, &peer, &digest).await? {
                    return Ok(written);
                }
            };
            Ok::<_, CoordError>(Written::New(Box::new(new_loaded(
                &registry, job, tasks, bytes,
            )?)))
        };
        Box::pin(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(written) => act.answer_written(ctx, &id, written, watch),
            Err(e) => {
                act.core.abandoned(&id);
                act.write_failed(ctx, &id, &e)
            }
        }))
    }

    /// A new job was written, or its id was found taken: the answer, the
    /// job scheduled, the watch sent behind it registered.
    fn answer_written(
        &mut self,
        ctx: &mut Context<Self>,
        id: &str,
        written: Written,
        watch: Option<oneshot::Receiver<Watch>>,
    ) -> Reply {
        let (frame, watched) = match written {
            Written::New(loaded) => {
                let tasks = loaded.plan.counters.tasks_total;
                let name = loaded.rt.stored.record.job_name.clone();
                self.accepted(id, &name, tasks);
                self.add_loaded(ctx, id.to_string(), *loaded);
                (
                    Reply::Accepted {
                        job_id: id.to_string(),
                        existing: false,
                    },
                    true,
                )
            }
            Written::Existing => {
                self.core.abandoned(id);
                // An earlier create of it whose answer was lost wrote it:
                // it runs here, without waiting for a failover.
                let ended_here =
                    self.core.phase(id) == Some(Phase::Ended) || self.retained.contains_key(id);
                if !ended_here {
                    self.readopt(ctx, id.to_string());
                }
                // Asked for again: its result stays another retention.
                self.retention.touch(id, std::time::Instant::now());
                (
                    Reply::Accepted {
                        job_id: id.to_string(),
                        existing: true,
                    },
                    true,
                )
            }
            Written::Refused(message) => {
                self.core.abandoned(id);
                (error(ErrorKind::Invalid, message), false)
            }
            Written::NotOwner(message, peer) => {
                self.core.abandoned(id);
                let _ = self.refused(&peer, id, Some(message.clone()));
                (error(ErrorKind::NotOwner, message), false)
            }
        };
        match watched {
            true => self.watch_sent(ctx, watch),
            false => drop(take_watch(watch)),
        }
        frame
    }

    /// A job is accepted: logged, counted, audited.
    fn accepted(&mut self, id: &str, job_name: &str, tasks: u64) {
        // One-task jobs at debug level, as their end (see `job_done`).
        if tasks > 1 {
            tracing::info!(job = %id, tasks, "job accepted");
        } else {
            tracing::debug!(job = %id, tasks, "job accepted");
        }
        metrics::counter!(m::JOBS_SUBMITTED, "job_type" => job_name.to_string()).increment(1);
        self.audit(crate::audit::Event::JobAccepted {
            job: id.to_string(),
            tasks,
        });
    }

    /// A submission's write failed: the answer says whether it may have
    /// been accepted.
    fn write_failed(&mut self, ctx: &mut Context<Self>, id: &str, e: &CoordError) -> Reply {
        if e.is_session_end() {
            self.fail(ctx, e);
        }
        if e.is_outcome_unknown() {
            error(
                ErrorKind::OutcomeUnknown,
                format!(
                    "job {id}'s submission ({e}): it may have been accepted. Submit it again \
                     with the same job id: that finds the job if it was accepted, and \
                     submits it if not (the job is accepted once; a task of it may run \
                     again)"
                ),
            )
        } else {
            error(
                ErrorKind::Unavailable,
                format!(
                    "submission of job {id} failed, and nothing of it was accepted: {e}; \
                     submit it again with the same job id"
                ),
            )
        }
    }
}

/// A watch already in hand, as the gateway would hand it over.
fn ready_watch(w: Watch) -> oneshot::Receiver<Watch> {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(w);
    rx
}

/// A new job's record (not yet created).
fn new_record(a: &Admitted, digest: ByteBuf) -> JobRecord {
    JobRecord {
        job_name: a.header.job_name.clone(),
        options: a.options.clone(),
        tasks_total: a.header.task_count,
        batches: 0,
        status: JobStatus::Writing,
        created_ms: 0,
        fetched_ms: None,
        digest: Some(digest),
        owner: Some(a.peer.principal()),
        inline: None,
        result: None,
        incarnation: crate::coord::new_incarnation(),
        shape: a.shape,
    }
}

/// A written job, ready for the scheduler and the ledger.
fn new_loaded(
    registry: &Registry,
    job: StoredJob,
    tasks: Arc<Vec<ByteBuf>>,
    bytes: usize,
) -> Result<Loaded, CoordError> {
    let erased = registry
        .get(&job.record.job_name)
        .ok_or_else(|| CoordError::Garbage {
            path: job.id.clone(),
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
    super::load::as_recorded(&mut plan, rec);
    let acc = erased.new_acc();
    Ok(Loaded {
        rt: JobRuntime::new(job, tasks, acc),
        plan,
        bytes,
        failures: Vec::new(),
        objects: Vec::new(),
        unmerged: Vec::new(),
    })
}

/// A submission's create found its id taken: what the id holds, read
/// (`None` when it is to be created again: collected meanwhile, or a
/// half-written job of an earlier master, now deleted).
async fn taken(
    store: &LeaderStore,
    id: &str,
    peer: &PeerId,
    digest: &ByteBuf,
) -> Result<Option<Written>, CoordError> {
    let Some(existing) = store.read_job(id).await? else {
        return Ok(None);
    };
    if existing.record.status == JobStatus::Writing {
        store.delete_tree(&store.layout().job(id)).await?;
        return Ok(None);
    }
    if let Some(message) = refusal(existing.record.owner.as_deref(), peer, id) {
        return Ok(Some(Written::NotOwner(message, peer.clone())));
    }
    Ok(Some(
        match same_submission(id, existing.record.digest.as_ref(), digest) {
            Ok(()) => Written::Existing,
            Err(refusal) => Written::Refused(refusal),
        },
    ))
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

/// The `Error` frame of an admission refusal: a submission that cannot be
/// accepted as it is, or not now (its id busy, the queue full).
fn refused(refusal: &crate::core::job::Refusal) -> Reply {
    use crate::core::job::Refusal as R;
    let kind = match refusal {
        R::InvalidId(_) | R::InvalidOptions | R::Priority(_) | R::Count { .. } => {
            ErrorKind::Invalid
        }
        R::Busy(_) | R::Full { .. } => ErrorKind::Unavailable,
    };
    error(kind, refusal)
}

impl Master {
    /// The refusal of a job type this master does not run.
    pub(super) fn unknown_job_type(&self, name: &str) -> Reply {
        error(
            ErrorKind::Invalid,
            format!(
                "unknown job type {name:?}: this cluster's master runs {}; the master and the \
             submitting binary must register the same jobs",
                self.settings.registry.names().join(", ")
            ),
        )
    }

    /// The registered workers that run job `name`, and their slots.
    pub(super) fn runners(&self, name: &str) -> (usize, u64) {
        let ours = self.settings.registry.shape_id(name);
        self.registered
            .values()
            .filter(|w| w.jobs.iter().any(|j| j == name))
            .filter(|w| crate::registry::same_types(w.shapes.get(name).copied(), ours))
            .fold((0, 0), |(n, slots), w| (n + 1, slots + u64::from(w.slots)))
    }
}
