//! The master as a driver of its core: an event goes to [`MasterCore`],
//! then each effect it asks for is performed here (a frame queued on a
//! worker's link, a write, a merge, a log line, a metric, an audit
//! record), and the core's timer is set. The outcome of what takes time
//! comes back as an event, from [`super::commits`] and the request
//! files. Nothing here decides.

use actix::prelude::*;

use super::{Link, Master};
use crate::audit::Event;
use crate::core::master::{Effect, Event as CoreEvent, Note, Output, ToWorker};
use crate::metrics as m;
use crate::wire::{self, Assignment, RunRef};

impl Master {
    /// Records how long a shard waited in its job's queue: by priority,
    /// and by fairness key for the keys with a weight set (the others
    /// under `unweighted`: a label per key a client may name would be
    /// unbounded).
    fn waited(&self, rt: &super::JobRuntime, priority: u8, waited: std::time::Duration) {
        let secs = waited.as_secs_f64();
        m::shard_wait(priority).record(secs);
        let key = &rt.fairness_key;
        if self.core.weight_of(key) != 1 {
            metrics::histogram!(m::SHARD_WAIT_BY_KEY, "fairness_key" => key.clone()).record(secs);
        } else {
            crate::histogram_once!(m::SHARD_WAIT_BY_KEY, "fairness_key" => "unweighted")
                .record(secs);
        }
    }

    /// Hands the core an event, performs what it asks, sets its timer.
    pub(super) fn handle_core(&mut self, ctx: &mut Context<Self>, event: CoreEvent) {
        self.core.handle(event, std::time::Instant::now());
        self.perform_all(ctx);
        self.arm(ctx);
        self.update_gauges(ctx);
    }

    /// Performs every effect the core asks for, including those of the
    /// events fed back meanwhile (a link found full).
    fn perform_all(&mut self, ctx: &mut Context<Self>) {
        while let Some(effect) = self.core.poll_effect() {
            self.perform(ctx, effect);
        }
        // A committed output no merge asked for (its job left): dropped.
        self.committed_output = None;
    }

    fn perform(&mut self, ctx: &mut Context<Self>, effect: Effect) {
        match effect {
            Effect::Send { worker, msg } => self.send(worker, msg),
            Effect::Unlink { worker, link } => {
                if self.links.get(&worker).is_some_and(|l| l.id == link) {
                    self.links.remove(&worker);
                }
            }
            Effect::Commit {
                run,
                output,
                failures,
            } => self.commit(ctx, run, output, failures),
            Effect::RecordLoss {
                job,
                key,
                next_attempt,
            } => self.record_loss(ctx, job, key, next_attempt),
            Effect::EndAlone {
                run,
                output,
                counters,
            } => self.end_in_one_write(ctx, run, output, counters),
            Effect::Merge(merge) => self.merge(ctx, merge),
            Effect::WriteResult(f) => self.write_result(ctx, f),
            Effect::Discard(Output::Object(name)) => {
                let store = self.store.clone();
                actix::spawn(async move {
                    let output = crate::coord::OutputRef::Object(name);
                    store.delete_outputs([&output]).await;
                });
            }
            Effect::Discard(Output::Bytes(_) | Output::Empty) => {}
            Effect::Note(note) => self.noted(note),
        }
    }

    /// Queues a frame on a worker's link, if it has one (a link that is
    /// gone took its runs with it); a link whose queue is full is dropped.
    fn send(&mut self, worker: String, msg: ToWorker) {
        let frame = match msg {
            ToWorker::Assign {
                run,
                tasks,
                ack_first,
                priority,
                waited,
            } => {
                let Some(rt) = self.jobs.get(&run.job) else {
                    return;
                };
                self.waited(rt, priority, waited);
                let tasks = tasks
                    .iter()
                    .filter_map(|&i| rt.tasks.get(i as usize).map(|t| (i, t.clone())))
                    .collect();
                wire::ToWorker::Assign(Assignment {
                    epoch: run.epoch,
                    job_id: run.job,
                    incarnation: run.incarnation,
                    job_name: rt.stored.record.job_name.clone(),
                    shard: run.shard,
                    attempt: run.attempt,
                    tasks,
                    ack_first,
                    priority,
                })
            }
            ToWorker::StartAck(run) => wire::ToWorker::StartAck(RunRef::of(run)),
            ToWorker::StartRefused(run) => wire::ToWorker::StartRefused(RunRef::of(run)),
            ToWorker::StopRun(run) => wire::ToWorker::StopRun(RunRef::of(run)),
            ToWorker::DrainAck => wire::ToWorker::DrainAck,
        };
        let assign = matches!(frame, wire::ToWorker::Assign(_));
        let Some(link) = self.links.get(&worker) else {
            return;
        };
        if !link.tx.push(frame) {
            // A worker a whole queue behind: its runs are requeued.
            let now = std::time::Instant::now();
            self.core.handle(CoreEvent::Unreachable { worker }, now);
        } else if assign {
            crate::counter_once!(m::SHARDS_ASSIGNED).increment(1);
        }
    }

    /// Sets a timer for the core's next `Tick`, unless one is set for
    /// earlier.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let Some(due) = self.core.poll_timeout() else {
            return;
        };
        if self.wake_at.is_some_and(|t| t <= due) {
            return;
        }
        self.wake_at = Some(due);
        let now = std::time::Instant::now();
        ctx.run_later(due.saturating_duration_since(now), move |act, ctx| {
            if act.wake_at == Some(due) {
                act.wake_at = None;
                act.handle_core(ctx, CoreEvent::Tick);
            }
        });
    }

    /// Logs, counts and audits what the core noted.
    fn noted(&mut self, note: Note) {
        let epoch = self.store.epoch();
        match note {
            Note::WorkerLost { worker, running } => {
                metrics::counter!(m::WORKER_LINKS_LOST).increment(1);
                tracing::warn!(%worker, running, "worker link lost; reassigning its shards");
                let running = running as u64;
                self.audit(Event::WorkerLost { worker, running });
            }
            Note::DrainedLeft { worker } => tracing::info!(%worker, "drained worker left"),
            Note::RegistrationGone { worker } => {
                tracing::warn!(%worker, "worker registration deleted; reassigning its shards")
            }
            Note::Draining { worker } => tracing::info!(
                %worker,
                "worker draining; requeueing the shards it has not started"
            ),
            Note::Drained { worker } => {
                tracing::info!(%worker, "worker drained");
                self.audit(Event::WorkerDrained { worker });
            }
            Note::Requeued { runs, in_doubt } => {
                metrics::counter!(m::SHARDS_REASSIGNED).increment(runs);
                metrics::counter!(m::SHARDS_IN_DOUBT).increment(in_doubt);
            }
            Note::Paused => {
                tracing::warn!(epoch, "disconnected from ZooKeeper: pausing assignments");
                self.audit(Event::AssignmentsPaused);
            }
            Note::Resumed => {
                tracing::info!(epoch, "reconnected to ZooKeeper: resuming assignments");
                self.audit(Event::AssignmentsResumed);
            }
            Note::Impossible { worker, reason } => {
                tracing::warn!(%worker, %reason, "impossible report: dropping the worker's link");
                metrics::counter!(m::FRAME_ERRORS).increment(1);
            }
            Note::Stale { run } => {
                tracing::debug!(job = %run.job, shard = %run.shard, "dropping a stale report")
            }
            Note::StartRefused { worker, run } => tracing::debug!(
                %worker, job = %run.job, shard = %run.shard, attempt = run.attempt,
                "refusing to start a run the scheduler does not hold"
            ),
            Note::Failures {
                job,
                dead_lettered,
                retried,
            } => {
                let name = self.job_name(&job);
                metrics::counter!(m::TASKS_DEAD_LETTERED, "job_type" => name.clone())
                    .increment(dead_lettered);
                metrics::counter!(m::TASKS_RETRIED, "job_type" => name).increment(retried);
            }
            Note::MergeFailed {
                job,
                key,
                tasks,
                error,
            } => {
                tracing::error!(%job, shard = %key, tasks, %error, "a committed shard output cannot be merged; reporting its tasks as failed");
                if tasks > 0 {
                    metrics::counter!(m::TASKS_DEAD_LETTERED, "job_type" => self.job_name(&job))
                        .increment(tasks);
                    let shard = key.to_string();
                    self.audit(Event::MergeFailed { job, shard, tasks });
                }
            }
            Note::Quarantined { job, reason } => {
                tracing::error!(%job, %reason, "job quarantined: this master cannot run it; every other job runs");
            }
            Note::Speculated { copies } => {
                tracing::info!(copies, "speculative copies of slow shards");
                metrics::counter!(m::SHARDS_SPECULATED).increment(copies);
                self.audit(Event::Speculated { copies });
            }
        }
    }

    /// A worker's link is up: its writer's queue is kept here, the rest
    /// goes to the core.
    pub(super) fn linked(&mut self, ctx: &mut Context<Self>, msg: super::WorkerJoined) {
        // A job type whose types the worker defines otherwise is not one
        // it runs for this master (a rolling upgrade of the application).
        let registry = &self.settings.registry;
        let (jobs, other_types): (Vec<String>, Vec<String>) =
            msg.jobs.into_iter().partition(|name| {
                crate::registry::same_types(msg.shapes.get(name).copied(), registry.shape_id(name))
            });
        if other_types.is_empty() {
            tracing::info!(worker = %msg.node_id, slots = msg.slots, "worker connected");
        } else {
            tracing::warn!(
                worker = %msg.node_id,
                slots = msg.slots,
                "worker connected; it defines the types of {} otherwise than this master, and \
                 runs none of those jobs",
                other_types.join(", ")
            );
        }
        let link = Link {
            tx: msg.tx,
            id: msg.link_id,
            last_seen: std::time::Instant::now(),
            version: msg.version,
        };
        self.links.insert(msg.node_id.clone(), link);
        let event = CoreEvent::Linked {
            worker: msg.node_id,
            link: msg.link_id,
            slots: msg.slots,
            jobs,
        };
        self.handle_core(ctx, event);
    }
}
