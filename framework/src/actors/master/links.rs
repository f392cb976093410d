//! The master's side of its workers: links joining and leaving, the
//! registrations it watches, `Started`, reports and drains, each handed
//! to the core as an event (a report's output object checked to be its
//! job's first: a name is bytes only the edge reads).

use std::collections::BTreeMap;

use actix::prelude::*;

use super::Master;
use crate::coord::WorkerInfo;
use crate::core::master::{Event as CoreEvent, Output};
use crate::core::{RunId, ShardKey};
use crate::store::Store;
use crate::wire::ShardReport;

/// A connected worker's control stream: frames pushed here are written by
/// the link's writer task.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerJoined {
    pub node_id: String,
    pub slots: u32,
    pub jobs: Vec<String>,
    pub tx: crate::transport::Outbox<crate::wire::ToWorker>,
    pub link_id: u64,
    /// The link's protocol version.
    pub version: u32,
    /// Its jobs' types, by name (empty from a release that did not say).
    pub shapes: std::collections::BTreeMap<String, u64>,
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
        self.seen(&msg.node_id);
        let run = RunId {
            epoch: msg.epoch,
            job: msg.job_id,
            incarnation: msg.incarnation,
            shard: msg.shard,
            attempt: msg.attempt,
        };
        let worker = msg.node_id;
        self.handle_core(ctx, CoreEvent::Started { worker, run });
    }
}

/// A worker dropped a run it was refused while it waited in its queue.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Unstarted {
    pub node_id: String,
    pub run: crate::wire::RunRef,
}

impl Handler<Unstarted> for Master {
    type Result = ();
    fn handle(&mut self, msg: Unstarted, ctx: &mut Context<Self>) {
        let run = msg.run.at(self.store.epoch());
        let worker = msg.node_id;
        self.handle_core(ctx, CoreEvent::Unstarted { worker, run });
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
        let worker = msg.node_id;
        let event = match msg.drained {
            true => CoreEvent::Drained { worker },
            false => CoreEvent::Draining { worker },
        };
        self.handle_core(ctx, event);
    }
}

/// The registered workers, from the watch on `/workers`.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Registered(pub(super) BTreeMap<String, WorkerInfo>);

impl Handler<WorkerJoined> for Master {
    type Result = ();
    fn handle(&mut self, msg: WorkerJoined, ctx: &mut Context<Self>) {
        self.linked(ctx, msg);
    }
}

impl Handler<WorkerLeft> for Master {
    type Result = ();
    fn handle(&mut self, msg: WorkerLeft, ctx: &mut Context<Self>) {
        let (worker, link) = (msg.node_id, msg.link_id);
        self.handle_core(ctx, CoreEvent::Unlinked { worker, link });
    }
}

impl Handler<Registered> for Master {
    type Result = ();
    fn handle(&mut self, msg: Registered, ctx: &mut Context<Self>) {
        let ids = msg.0.keys().cloned().collect();
        self.registered = msg.0;
        self.handle_core(ctx, CoreEvent::Registered(ids));
    }
}

impl Handler<Report> for Master {
    type Result = ();
    fn handle(&mut self, msg: Report, ctx: &mut Context<Self>) {
        self.seen(&msg.node_id);
        let (worker, r) = (msg.node_id, msg.report);
        // An output object not of its job's: no honest worker names one.
        let named = r.output_object.as_deref().map(|name| {
            Store::check_shard_output((&r.job_id, r.incarnation), name).map_err(|e| e.to_string())
        });
        if let Some(Err(reason)) = named {
            return self.handle_core(ctx, CoreEvent::Impossible { worker, reason });
        }
        let output = match r.output_object {
            Some(name) => Output::Object(name),
            None => Output::Bytes(r.output.into_vec()),
        };
        let run = RunId {
            epoch: r.epoch,
            job: r.job_id,
            incarnation: r.incarnation,
            shard: r.shard,
            attempt: r.attempt,
        };
        let failures = r.failures;
        let event = CoreEvent::Reported {
            worker,
            run,
            failures,
            output,
        };
        self.handle_core(ctx, event);
    }
}

impl Master {
    /// The worker said something: its link lives.
    fn seen(&mut self, worker: &str) {
        if let Some(l) = self.links.get_mut(worker) {
            l.last_seen = std::time::Instant::now();
        }
    }
}
