//! The master's side of its workers: links joining and leaving, the
//! registrations it watches, `Started`, reports and drains. Each message
//! becomes scheduler calls whose commands the master carries out.

use std::collections::BTreeMap;

use actix::prelude::*;

use super::{Link, Master};
use crate::audit::Event;
use crate::coord::{OutputRef, ShardOutput, WorkerInfo};
use crate::core::{ShardKey, StartAnswer};
use crate::metrics as m;
use crate::store::Store;
use crate::wire::{Frame, ShardReport};

/// A connected worker's control stream: frames pushed here are written by
/// the link's writer task.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerJoined {
    pub node_id: String,
    pub slots: u32,
    pub jobs: Vec<String>,
    pub tx: crate::transport::Outbox,
    pub link_id: u64,
}

/// A worker's control stream ended.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerLeft {
    pub node_id: String,
    pub link_id: u64,
}

/// A worker reported on a shard.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Report {
    pub node_id: String,
    pub report: ShardReport,
}

/// A worker's slot picked up a shard.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Started {
    pub node_id: String,
    pub epoch: u64,
    pub job_id: String,
    pub incarnation: u64,
    pub shard: ShardKey,
    pub attempt: u32,
}

impl Handler<Started> for Master {
    type Result = ();
    fn handle(&mut self, msg: Started, ctx: &mut Context<Self>) {
        if let Some(l) = self.links.get_mut(&msg.node_id) {
            l.last_seen = std::time::Instant::now();
        }
        let answer = if msg.epoch == self.store.epoch() {
            self.sched.started(
                &msg.node_id,
                (&msg.job_id, msg.incarnation),
                msg.shard,
                msg.attempt,
                std::time::Instant::now(),
            )
        } else {
            StartAnswer::Refuse
        };
        let (job_id, incarnation, shard, attempt) =
            (msg.job_id, msg.incarnation, msg.shard, msg.attempt);
        let frame = match answer {
            StartAnswer::Nothing => return,
            StartAnswer::Ack => Frame::StartAck {
                job_id,
                incarnation,
                shard,
                attempt,
            },
            StartAnswer::Refuse => {
                tracing::debug!(worker = %msg.node_id, job = %job_id, %shard, attempt, "refusing to start a run the scheduler does not hold");
                Frame::StartRefused {
                    job_id,
                    incarnation,
                    shard,
                    attempt,
                }
            }
        };
        // A worker a whole queue behind is dropped, its runs requeued.
        if !self.tell(&msg.node_id, frame) {
            self.drop_worker(ctx, &msg.node_id);
        }
    }
}

/// A worker dropped a run it was refused while it waited in its queue.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Unstarted {
    pub node_id: String,
    pub job_id: String,
    pub incarnation: u64,
    pub shard: ShardKey,
    pub attempt: u32,
}

impl Handler<Unstarted> for Master {
    type Result = ();
    fn handle(&mut self, msg: Unstarted, ctx: &mut Context<Self>) {
        let job = (msg.job_id.as_str(), msg.incarnation);
        self.sched
            .unstarted(&msg.node_id, job, msg.shard, msg.attempt);
        // A stopped run may have freed its slot.
        self.dispatch(ctx);
    }
}

/// A worker is draining (`drained: false`) or done draining (`true`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerDrain {
    pub node_id: String,
    pub drained: bool,
}

impl Handler<WorkerDrain> for Master {
    type Result = ();
    fn handle(&mut self, msg: WorkerDrain, ctx: &mut Context<Self>) {
        if msg.drained {
            tracing::info!(worker = %msg.node_id, "worker drained");
            self.audit(Event::WorkerDrained {
                worker: msg.node_id.clone(),
            });
            if let Some(link) = self.links.get_mut(&msg.node_id) {
                link.drained = true;
            }
            if !self.tell(&msg.node_id, Frame::DrainAck) {
                self.drop_worker(ctx, &msg.node_id);
            }
        } else {
            tracing::info!(worker = %msg.node_id, "worker draining; requeueing the shards it has not started");
            self.sched.drain_worker(&msg.node_id);
            self.dispatch(ctx);
        }
    }
}

/// The registered workers, from the watch on `/workers`.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Registered(pub(super) BTreeMap<String, WorkerInfo>);

impl Handler<WorkerJoined> for Master {
    type Result = ();
    fn handle(&mut self, msg: WorkerJoined, ctx: &mut Context<Self>) {
        tracing::info!(worker = %msg.node_id, slots = msg.slots, "worker connected");
        if self.links.contains_key(&msg.node_id) {
            let cmds = self.sched.remove_worker(&msg.node_id);
            self.apply(cmds, ctx);
        }
        self.links.insert(
            msg.node_id.clone(),
            Link {
                tx: msg.tx,
                slots: msg.slots,
                jobs: msg.jobs,
                id: msg.link_id,
                last_seen: std::time::Instant::now(),
                drained: false,
            },
        );
        self.sync_worker(ctx, &msg.node_id);
        self.dispatch(ctx);
    }
}

impl Handler<WorkerLeft> for Master {
    type Result = ();
    fn handle(&mut self, msg: WorkerLeft, ctx: &mut Context<Self>) {
        if self
            .links
            .get(&msg.node_id)
            .is_some_and(|l| l.id == msg.link_id)
        {
            let running = self.sched.running_on(&msg.node_id);
            match self.links.remove(&msg.node_id) {
                Some(l) if l.drained && running == 0 => {
                    tracing::info!(worker = %msg.node_id, "drained worker left")
                }
                _ => {
                    metrics::counter!(m::WORKER_LINKS_LOST).increment(1);
                    tracing::warn!(worker = %msg.node_id, running, "worker link lost; reassigning its shards");
                    self.audit(Event::WorkerLost {
                        worker: msg.node_id.clone(),
                        running: running as u64,
                    });
                }
            }
            self.drop_worker(ctx, &msg.node_id);
        }
    }
}

impl Handler<Registered> for Master {
    type Result = ();
    fn handle(&mut self, msg: Registered, ctx: &mut Context<Self>) {
        let gone: Vec<String> = self
            .registered
            .keys()
            .filter(|k| !msg.0.contains_key(*k))
            .cloned()
            .collect();
        self.registered = msg.0;
        for w in gone {
            if self.sched.has_worker(&w) {
                tracing::warn!(worker = %w, "worker registration deleted; reassigning its shards");
                let cmds = self.lose_worker_runs(&w);
                self.apply(cmds, ctx);
            }
        }
        let ids: Vec<String> = self.links.keys().cloned().collect();
        for id in ids {
            self.sync_worker(ctx, &id);
        }
        self.dispatch(ctx);
    }
}

impl Handler<Report> for Master {
    type Result = ();
    fn handle(&mut self, msg: Report, ctx: &mut Context<Self>) {
        if let Some(l) = self.links.get_mut(&msg.node_id) {
            l.last_seen = std::time::Instant::now();
        }
        let r = msg.report;
        // A report no honest worker sends: its link goes, with the reason.
        let impossible = self
            .sched
            .check_failures(&r.job_id, r.shard, &r.failures)
            .err()
            .or_else(|| {
                let name = r.output_object.as_deref()?;
                Store::check_shard_output((&r.job_id, r.incarnation), name)
                    .err()
                    .map(|e| e.to_string())
            });
        if let Some(reason) = impossible {
            tracing::warn!(worker = %msg.node_id, job = %r.job_id, shard = %r.shard, %reason, "impossible report: dropping the worker's link");
            metrics::counter!(m::FRAME_ERRORS).increment(1);
            self.drop_worker(ctx, &msg.node_id);
            return;
        }
        let stops = match r.epoch == self.store.epoch() {
            true => self.sched.report(
                &msg.node_id,
                (&r.job_id, r.incarnation),
                r.shard,
                r.attempt,
                std::time::Instant::now(),
            ),
            false => None,
        };
        let Some(stops) = stops else {
            tracing::debug!(job = %r.job_id, shard = %r.shard, "dropping a stale report");
            // Its object (if it is one of that job's) is referenced by nothing.
            if let Some(name) = r.output_object {
                if Store::check_shard_output((&r.job_id, r.incarnation), &name).is_ok() {
                    let store = self.store.clone();
                    actix::spawn(async move {
                        store.delete_outputs([&OutputRef::Object(name)]).await;
                    });
                }
            }
            // A stopped run's report frees its slot.
            self.dispatch(ctx);
            return;
        };
        self.apply(stops, ctx);
        let output = match r.output_object {
            Some(name) => ShardOutput::Object(name),
            None => ShardOutput::Bytes(r.output.into_vec()),
        };
        let one = (r.job_id.as_str(), r.shard, r.attempt);
        if let Some(output) = self.end_in_one_write(ctx, one, output, &r.failures) {
            self.commit(ctx, r.job_id, r.shard, r.attempt, output, r.failures);
        }
        self.dispatch(ctx);
    }
}
