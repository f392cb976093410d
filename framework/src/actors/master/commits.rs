//! A shard's outcome from its report to its job's end: the writes and
//! merges the core asks for (a commit, a lost attempt, a merge, a job's
//! result, a job's end in one write), each performed and its outcome fed
//! back to the core as an event; and what a job's durable end means for
//! the master's caches and watchers. A write of a job whose create waits
//! is held by the core until it is created.

use std::sync::Arc;

use actix::prelude::*;

use super::{creating, Master, RECENT_OUTPUTS_TOTAL, SMALL_MERGE};
use crate::audit::Event;
use crate::coord::{Committed, Finished, JobRef, OutputRef, ShardOutput, ShardRecord, StoredJob};
use crate::core::job::{Finish, Merge};
use crate::core::master::{Event as CoreEvent, Gone, Output};
use crate::core::{Counters, RunId, ShardKey, TaskFailure};
use crate::metrics as m;
use crate::wire::{JobProgress, JobState};

impl Master {
    /// Writes a shard's next attempt after its worker died running it.
    pub(super) fn record_loss(
        &mut self,
        ctx: &mut Context<Self>,
        job: String,
        key: ShardKey,
        next_attempt: u32,
    ) {
        let store = self.store.clone();
        let fut = async move { store.record_loss(&job, key, next_attempt).await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(()) => {}
            Err(e) if e.is_session_end() => act.fail(ctx, &e),
            Err(e) => tracing::warn!(error = %e, "cannot record a lost attempt"),
        }));
    }

    /// Commits a shard's outcome (after the job's create, if that waits).
    pub(super) fn commit(
        &mut self,
        ctx: &mut Context<Self>,
        run: RunId,
        output: Output,
        failures: Vec<TaskFailure>,
    ) {
        let Some(rt) = self.jobs.get(&run.job) else {
            return;
        };
        let output = match output {
            Output::Bytes(bytes) => ShardOutput::Bytes(bytes),
            Output::Object(name) => ShardOutput::Object(name),
            Output::Empty => {
                let Some(erased) = self.settings.registry.get(&rt.stored.record.job_name) else {
                    return;
                };
                ShardOutput::Bytes(erased.encode_acc(&erased.new_acc()).unwrap_or_default())
            }
        };
        let store = self.store.clone();
        let (job, key, attempt) = (run.job, run.shard, run.attempt);
        let job2 = job.clone();
        let (incarnation, compact) = self.jobs.get(&job).map_or((0, false), |rt| {
            (rt.stored.record.incarnation, rt.stored.record.is_compact())
        });
        let fut = async move {
            let job = JobRef {
                id: &job2,
                incarnation,
                compact,
            };
            store.commit(job, key, attempt, output, failures).await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(Committed { record: rec, at }) => {
                // What the chaos harness counts: one per shard, ever.
                tracing::debug!(job = %job, shard = %key, epoch = rec.epoch, attempt = rec.attempt, "shard committed");
                act.audit(Event::ShardCommitted {
                    job: job.clone(),
                    shard: key.to_string(),
                    attempt: rec.attempt,
                    incarnation,
                });
                act.on_committed(ctx, &job, key, rec, at);
            }
            Err(e) if e.is_session_end() => act.fail(ctx, &e),
            Err(e) => {
                tracing::warn!(job = %job, shard = %key, error = %e, "commit failed; the shard will run again");
                act.handle_core(ctx, CoreEvent::CommitFailed { job, key });
            }
        }));
    }

    /// A commit is durable: its streams may send it, and the core counts
    /// it (asking for its merge).
    fn on_committed(
        &mut self,
        ctx: &mut Context<Self>,
        job: &str,
        key: ShardKey,
        rec: ShardRecord,
        at: Arc<str>,
    ) {
        crate::counter_once!(m::SHARDS_COMMITTED).increment(1);
        if let Some(rt) = self.jobs.get_mut(job) {
            // What the other streamed jobs leave of the total.
            let others = self.recent_total - rt.recent_bytes;
            let room = RECENT_OUTPUTS_TOTAL.saturating_sub(others);
            rt.keep_output(rt.commit_log.len(), &rec.output, room);
            self.recent_total = others + rt.recent_bytes;
            rt.logged(key, at);
        }
        let object = match &rec.output {
            OutputRef::Object(name) => Some(name.clone()),
            OutputRef::Inline(_) | OutputRef::File(_) => None,
        };
        self.committed_output = Some(((job.to_string(), key), rec.output));
        let event = CoreEvent::Committed {
            job: job.to_string(),
            key,
            attempt: rec.attempt,
            failures: rec.failures,
            object,
        };
        self.handle_core(ctx, event);
        self.progressed(ctx, job);
    }

    /// Reads a committed output (from the store if it is there) and merges
    /// it into the job's result on the blocking pool.
    pub(super) fn merge(&mut self, ctx: &mut Context<Self>, merge: Merge) {
        let key = (merge.job.clone(), merge.key);
        let output = match self.committed_output.take() {
            Some((k, output)) if k == key => output,
            _ => {
                let outcome = Err("its output was not at hand to merge".to_string());
                let now = std::time::Instant::now();
                return self.core.handle(CoreEvent::Merged { merge, outcome }, now);
            }
        };
        let Some(rt) = self.jobs.get_mut(&merge.job) else {
            return;
        };
        let erased = self
            .settings
            .registry
            .get(&rt.stored.record.job_name)
            .cloned();
        // A small partial, when no merge of the pool holds the result:
        // here and now (see `JobRuntime::acc`).
        let here = match (&erased, &output) {
            (Some(erased), OutputRef::Inline(bytes))
                if rt.acc_bytes.saturating_add(bytes.len()) <= SMALL_MERGE =>
            {
                rt.acc.try_lock().ok().map(|mut acc| {
                    let merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        erased.merge_encoded(&mut acc, bytes)
                    }));
                    let res = match merged {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err("merging panicked".to_string()),
                    };
                    (res, bytes.len())
                })
            }
            _ => None,
        };
        if let Some((outcome, len)) = here {
            rt.acc_bytes += len;
            let now = std::time::Instant::now();
            return self.core.handle(CoreEvent::Merged { merge, outcome }, now);
        }
        rt.acc_bytes = usize::MAX;
        let acc = rt.acc.clone();
        let store = self.store.clone();
        let work = async move {
            let erased = erased.ok_or("its job type is not registered on the master")?;
            let bytes = store
                .read_output(&output)
                .await
                .map_err(|e| e.to_string())?;
            tokio::task::spawn_blocking(move || {
                let mut acc = acc.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                erased
                    .merge_encoded(&mut acc, &bytes)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| format!("merging panicked: {e}"))?
        };
        ctx.spawn(
            work.into_actor(self)
                .map(move |outcome: Result<(), String>, act, ctx| {
                    act.handle_core(ctx, CoreEvent::Merged { merge, outcome });
                }),
        );
    }

    /// Encodes the job's result off the arbiter and writes it with `Done`
    /// in one fenced transaction; retried while the cause is transient.
    pub(super) fn write_result(&mut self, ctx: &mut Context<Self>, f: Finish) {
        let Some(rt) = self.jobs.get(&f.job) else {
            return;
        };
        let Some(erased) = self
            .settings
            .registry
            .get(&rt.stored.record.job_name)
            .cloned()
        else {
            return;
        };
        let acc = rt.acc.clone();
        let small = rt.acc_bytes <= SMALL_MERGE;
        let store = self.store.clone();
        let stored = StoredJob {
            id: rt.stored.id.clone(),
            record: rt.stored.record.clone(),
            version: rt.stored.version,
        };
        let Finish {
            job,
            counters,
            failures,
            objects,
        } = f;
        let job_id = job.clone();
        let job_name = stored.record.job_name.clone();
        let fetched = self.want_result(&job);
        let work = async move {
            let encode = move || {
                let acc = acc.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                erased.encode_acc(&acc)
            };
            // A small result is encoded here (see `JobRuntime::acc`); no
            // merge can hold it now, the job's merges are done.
            let encoded = match small {
                true => std::panic::catch_unwind(std::panic::AssertUnwindSafe(encode))
                    .map_err(|_| "encoding panicked"),
                false => tokio::task::spawn_blocking(encode)
                    .await
                    .map_err(|_| "encoding panicked"),
            };
            let output = match encoded {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    tracing::error!(job = %job_id, error = %e, "cannot encode the job's result");
                    Vec::new()
                }
                Err(e) => {
                    tracing::error!(job = %job_id, error = %e, "encoding the job's result panicked");
                    Vec::new()
                }
            };
            let done = store
                .finish(&stored, output, failures, counters, fetched)
                .await;
            if done.is_ok() {
                // After the answer: the job's end waits for no deletion.
                tokio::task::spawn_local(async move {
                    if let Err(e) = store.clean_finished(&stored, &objects).await {
                        tracing::debug!(job = %stored.id, error = %e, "finished job not cleaned; collection will");
                    }
                });
            }
            done
        };
        ctx.spawn(work.into_actor(self).map(move |res, act, ctx| match res {
            Ok(finished) => act.job_done(ctx, &job, job_name, finished),
            Err(e) if e.is_session_end() => act.fail(ctx, &e),
            Err(e) if e.is_conflict() => act.cancelled_meanwhile(ctx, &job),
            Err(e) => {
                tracing::warn!(job, error = %e, "cannot store the job's result; retrying");
                // The retry writes its result under a new name: this
                // attempt's object, if the store took it, is named by no
                // record (the core has collection sweep the job).
                act.handle_core(ctx, CoreEvent::FinishFailed { job });
            }
        }));
    }

    /// A job's end in one write, as the core asks: its only shard's output
    /// reduced alone (the user's merge, which may refuse it: then the core
    /// commits it as usual), written in place of the job's create if that
    /// waits ([`creating`]).
    pub(super) fn end_in_one_write(
        &mut self,
        ctx: &mut Context<Self>,
        run: RunId,
        output: Vec<u8>,
        counters: Counters,
    ) {
        let Some(rt) = self.jobs.get(&run.job) else {
            return;
        };
        let erased = self.settings.registry.get(&rt.stored.record.job_name);
        let reduced = erased.map(|erased| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut acc = erased.new_acc();
                erased.merge_encoded(&mut acc, &output)?;
                erased.encode_acc(&acc)
            }))
        });
        let Some(Ok(Ok(result))) = reduced else {
            let now = std::time::Instant::now();
            return self
                .core
                .handle(CoreEvent::NotReducible { run, output }, now);
        };
        let end = creating::EndAlone {
            key: run.shard,
            attempt: run.attempt,
            result,
            failures: Vec::new(),
            counters,
        };
        self.end_alone(ctx, &run.job, end);
    }

    /// A job's end is durable: it leaves the master, and its watchers get
    /// it. Its counts and fetched mark are the stored record's.
    pub(super) fn job_done(
        &mut self,
        ctx: &mut Context<Self>,
        job: &str,
        job_name: String,
        finished: Finished,
    ) {
        let Finished {
            result,
            record,
            fetched,
            object,
        } = finished;
        let counters = result.counters;
        // A work queue's one-task jobs would be two lines each at
        // thousands a second: jobs of one task that succeeded are
        // logged at debug level, the others at info.
        if counters.tasks_total > 1 || counters.tasks_failed > 0 {
            tracing::info!(
                job,
                tasks = counters.tasks_total,
                failed = counters.tasks_failed,
                "job done"
            );
        } else {
            tracing::debug!(job, tasks = counters.tasks_total, "job done");
        }
        let name = self.job_name(job);
        if counters.tasks_failed > 0 {
            metrics::counter!(m::JOBS_FAILED, "job_type" => name).increment(1);
        } else {
            metrics::counter!(m::JOBS_COMPLETED, "job_type" => name).increment(1);
        }
        self.audit(Event::JobDone {
            job: job.to_string(),
            tasks_done: counters.tasks_done,
            tasks_failed: counters.tasks_failed,
        });
        let version = self.take_runtime(job).map_or(0, |rt| rt.stored.version + 1);
        let gone = CoreEvent::Gone {
            job: job.to_string(),
            why: Gone::Done,
        };
        self.handle_core(ctx, gone);
        metrics::gauge!(m::JOBS_RUNNING).set(self.jobs.len() as f64);
        // The collector need not read it: it changes no more (fetched), or
        // only by a fetch here (which drops it from the cache).
        let kept = StoredJob {
            id: job.to_string(),
            record: record.without_payload(),
            version,
        };
        match fetched {
            true => self.retained.insert(job.to_string(), kept),
            false => self.unfetched.insert(job.to_string(), kept),
        };
        let done = JobProgress {
            job_id: job.to_string(),
            job_name,
            state: JobState::Done,
            counters,
            not_before_ms: None,
        };
        // Handed over from memory only if the stored record is marked
        // fetched: a watch that came during the write is answered by a
        // fetch, which marks it.
        self.watch_ended(ctx, job, done, Some((result, object)), fetched);
    }

    /// A cancel got there before the job's end: no record names the
    /// result's object, if it went to the store; collection sweeps it.
    pub(super) fn cancelled_meanwhile(&mut self, ctx: &mut Context<Self>, job: &str) {
        tracing::info!(job, "job cancelled while its result was being written");
        self.take_runtime(job);
        let gone = CoreEvent::Gone {
            job: job.to_string(),
            why: Gone::CancelledWhileFinishing,
        };
        self.handle_core(ctx, gone);
    }
}
