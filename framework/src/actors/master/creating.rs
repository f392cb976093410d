//! A work queue's job scheduled while its create waits: a compact job of
//! one shard (what `Client::run` of a few tasks submits) goes to a worker
//! as soon as it is admitted, while its create waits for the group-commit
//! writer. If its only shard reports before the create is sent, the
//! create is amended into the job's end ([`LeaderStore::propose_end`]):
//! the job is created `Done`, its result in its record, in one write
//! instead of two, and the client hears `Accepted` and the result at
//! once. Nothing is answered before it is durable, and nothing of the job
//! is written before its create: its other writes (a commit, a lost
//! attempt, an end that came too late to be folded) wait here for the
//! create's answer. A create that fails (the id is taken, or ZooKeeper
//! refused) discards the job: its run, if it ran, was a task run for a
//! job that does not exist, which the at-least-once contract allows.

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{Master, Watch};
use crate::coord::{Amend, CoordError, Finished};
use crate::core::master::{Created, Event as CoreEvent};
use crate::core::{Counters, ShardKey, TaskFailure};

/// A job whose create waits.
pub(super) struct Creating {
    /// The create, still open to the job's end in its place.
    pub amend: Amend,
    /// A watch sent behind the submission (`Client::run`), handed over by
    /// the gateway as it arrives.
    watch: WatchSlot,
    /// Ends of the job that could not go in place of its create: written
    /// once it is durable. (Its other writes are held by the core.)
    deferred: Vec<EndAlone>,
    /// The end proposed in place of the create, and what the create's
    /// end would be; written apart if the create went without it.
    proposed: Option<(EndAlone, Finished)>,
    /// Resubmissions of the job that came while its create waited: told
    /// whether it is durable once its create answers (nothing is
    /// acknowledged before).
    resubmitted: Vec<oneshot::Sender<bool>>,
}

/// Where a watch sent behind a submission is.
enum WatchSlot {
    /// Not come yet: the gateway sends it here when it comes.
    Waiting(oneshot::Receiver<Watch>),
    /// Come: registered once the job's fate is known.
    Got(Watch),
    /// None will come here.
    Closed,
}

impl WatchSlot {
    /// The watch, if it came (without closing the slot).
    fn poll(&mut self) -> Option<&Watch> {
        if let WatchSlot::Waiting(rx) = self {
            match rx.try_recv() {
                Ok(w) => *self = WatchSlot::Got(w),
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => *self = WatchSlot::Closed,
            }
        }
        match self {
            WatchSlot::Got(w) => Some(w),
            WatchSlot::Waiting(_) | WatchSlot::Closed => None,
        }
    }
}

/// Takes the watch a submission's gateway handed over, if it did; after
/// this the gateway's handover fails and it sends the watch itself.
pub(super) fn take_watch(rx: Option<oneshot::Receiver<Watch>>) -> Option<Watch> {
    let mut rx = rx?;
    rx.close();
    rx.try_recv().ok()
}

/// A job's end in one write (`Master::end_in_one_write`): its only
/// shard's run and the result it reduces to.
pub(super) struct EndAlone {
    pub key: ShardKey,
    pub attempt: u32,
    pub result: Vec<u8>,
    pub failures: Vec<TaskFailure>,
    pub counters: Counters,
}

impl Creating {
    pub(super) fn new(amend: Amend, watch: Option<oneshot::Receiver<Watch>>) -> Self {
        Creating {
            amend,
            watch: watch.map_or(WatchSlot::Closed, WatchSlot::Waiting),
            deferred: Vec::new(),
            proposed: None,
            resubmitted: Vec::new(),
        }
    }

    /// The watch handed over, if it came; the slot is closed. Tells the
    /// resubmissions that waited whether the job is `durable`.
    fn into_watch(
        self,
        durable: bool,
    ) -> (Option<Watch>, Vec<EndAlone>, Option<(EndAlone, Finished)>) {
        for waiting in self.resubmitted {
            let _ = waiting.send(durable);
        }
        let watch = match self.watch {
            WatchSlot::Waiting(rx) => take_watch(Some(rx)),
            WatchSlot::Got(w) => Some(w),
            WatchSlot::Closed => None,
        };
        (watch, self.deferred, self.proposed)
    }
}

impl Master {
    /// Whether the job's create waits.
    pub(super) fn is_creating(&self, job: &str) -> bool {
        self.core.is_creating(job)
    }

    /// If the job's create waits: what its answer will say (whether the
    /// job is durable), for a resubmission that must not be acknowledged
    /// before.
    pub(super) fn await_create(&mut self, job: &str) -> Option<oneshot::Receiver<bool>> {
        let c = self.jobs.get_mut(job)?.creating.as_mut()?;
        let (tx, rx) = oneshot::channel();
        c.resubmitted.push(tx);
        Some(rx)
    }

    /// Whether a client waits on a watch for the job's result: a
    /// registered watch, or one sent behind the job's submission.
    fn wants_result(&mut self, job: &str) -> bool {
        let sent_behind = self
            .jobs
            .get_mut(job)
            .and_then(|rt| rt.creating.as_mut())
            .and_then(|c| c.watch.poll())
            .is_some_and(|w| w.fetch && !w.tx.is_closed());
        sent_behind || self.want_result(job)
    }

    /// Writes a one-write end: in place of the job's create if it has not
    /// gone (the end then comes with the create's answer), after it if it
    /// went, or now for a job that is created.
    pub(super) fn end_alone(&mut self, ctx: &mut Context<Self>, job: &str, end: EndAlone) {
        let fetched = self.wants_result(job);
        let Some(rt) = self.jobs.get_mut(job) else {
            return;
        };
        let (stored, Some(c)) = (&rt.stored, rt.creating.as_mut()) else {
            return self.write_end_alone(ctx, job, end, fetched);
        };
        let proposal = self.store.propose_end(
            &c.amend,
            stored,
            end.result.clone(),
            end.failures.clone(),
            end.counters,
            fetched,
        );
        match proposal {
            Ok(Some(finished)) => c.proposed = Some((end, finished)),
            Ok(None) | Err(_) => c.deferred.push(end),
        }
    }

    /// The create of a job scheduled while it waited has answered: the
    /// job is durable (ended, if its end went in its place), and its
    /// deferred writes go; or it failed, and the job is discarded.
    /// Returns the watch handed over behind the submission, to be
    /// registered once the submission's answer is known.
    pub(super) fn created(
        &mut self,
        ctx: &mut Context<Self>,
        job: &str,
        outcome: Created,
    ) -> Option<Watch> {
        let c = self.jobs.get_mut(job)?.creating.take()?;
        let (watch, deferred, proposed) = c.into_watch(outcome != Created::Failed);
        match outcome {
            Created::Failed => {
                self.discard(ctx, job);
                return watch;
            }
            Created::Ended => {
                // Nothing held is written: the job ends now.
                let event = CoreEvent::Created {
                    job: job.to_string(),
                    outcome,
                };
                self.handle_core(ctx, event);
                // The watch first, so that the job's end reaches it (its
                // only frame: the job ends now).
                if let Some(w) = watch {
                    self.watch_from(ctx, w, false);
                }
                if let Some((end, finished)) = proposed {
                    crate::counter_once!(crate::metrics::JOBS_CREATED_DONE).increment(1);
                    self.ended_alone(ctx, job, end.key, end.attempt, Ok(finished));
                }
                return None;
            }
            Created::Durable => {}
        }
        if let Some(w) = watch {
            self.watch(ctx, w);
        }
        if let Some((end, _)) = proposed {
            // Taken too late for the transaction's budget: written apart.
            self.end_alone(ctx, job, end);
        }
        // The writes the core held go now, then the ends held here.
        let event = CoreEvent::Created {
            job: job.to_string(),
            outcome: Created::Durable,
        };
        self.handle_core(ctx, event);
        for end in deferred {
            self.end_alone(ctx, job, end);
        }
        None
    }

    /// A job whose create failed leaves the master as if never admitted;
    /// reports of its runs are then stale. A run's output object, if one
    /// was written under the id, is swept with the job that holds the id.
    fn discard(&mut self, ctx: &mut Context<Self>, job: &str) {
        tracing::debug!(
            job,
            "a job scheduled while its create waited is discarded: its create failed"
        );
        crate::counter_once!(crate::metrics::JOBS_DISCARDED).increment(1);
        self.take_runtime(job);
        let event = CoreEvent::Created {
            job: job.to_string(),
            outcome: Created::Failed,
        };
        self.handle_core(ctx, event);
    }

    /// A one-write end's write, for a created job.
    fn write_end_alone(
        &mut self,
        ctx: &mut Context<Self>,
        job: &str,
        end: EndAlone,
        fetched: bool,
    ) {
        let Some(rt) = self.jobs.get(job) else {
            return;
        };
        let store = self.store.clone();
        let stored = rt.stored.clone();
        let (key, attempt) = (end.key, end.attempt);
        let work = async move {
            store
                .finish(&stored, end.result, end.failures, end.counters, fetched)
                .await
        };
        let job = job.to_string();
        ctx.spawn(
            work.into_actor(self)
                .map(move |res, act, ctx| act.ended_alone(ctx, &job, key, attempt, res)),
        );
    }

    /// A one-write end's outcome.
    fn ended_alone(
        &mut self,
        ctx: &mut Context<Self>,
        job: &str,
        key: ShardKey,
        attempt: u32,
        res: Result<Finished, CoordError>,
    ) {
        match res {
            Ok(finished) => {
                tracing::debug!(job = %job, shard = %key, epoch = self.store.epoch(), attempt, "shard committed with its job's end");
                self.audit(crate::audit::Event::ShardCommitted {
                    job: job.to_string(),
                    shard: key.to_string(),
                    attempt,
                    incarnation: finished.record.incarnation,
                });
                crate::counter_once!(crate::metrics::SHARDS_COMMITTED).increment(1);
                let job_name = finished.record.job_name.clone();
                self.job_done(ctx, job, job_name, finished);
            }
            Err(e) if e.is_session_end() => self.fail(ctx, &e),
            Err(e) if e.is_conflict() => self.cancelled_meanwhile(ctx, job),
            Err(e) => {
                // Applied or not, the shard runs again; a write that had
                // applied is found at the next end.
                tracing::warn!(job = %job, shard = %key, error = %e, "a one-shard job's end failed; the shard will run again");
                let job = job.to_string();
                self.handle_core(ctx, CoreEvent::EndFailed { job, key });
            }
        }
    }
}
