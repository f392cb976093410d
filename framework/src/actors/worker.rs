//! The worker actor: registers `/workers/<node-id>`, follows `/master`,
//! keeps one QUIC control stream to the current master, runs the shards it
//! receives on threads of its slots (never on an arbiter thread), and
//! reports each shard's outcome. Frames from an older epoch than the newest
//! it has seen are refused.
//!
//! The driver of [`crate::core::WorkerSession`], which decides what waits,
//! what runs and where reports go; here are the links and the frames, and
//! in [`slots`] the shards' runs.

mod slots;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::mpsc;

use super::{Alive, Fatal, Stop};
use crate::audit::Event;
use crate::coord::{CoordError, MasterInfo, Session, WorkerInfo};
use crate::core::worker_session::Refused;
use crate::metrics as m;
use crate::registry::Registry;
use crate::store::Store;
use crate::transport::{self, FramedStream, TransportError};
use crate::wire::{
    ErrorKind, FromWorker, Hello, Reply, Request, ToWorker, WireError, PROTOCOL_MIN,
    PROTOCOL_VERSION,
};
use slots::Slots;

pub(crate) struct WorkerSettings {
    pub node_id: String,
    pub addr: String,
    pub slots: u32,
    pub data_dir: PathBuf,
    /// Where outputs too big to travel inline go.
    pub store: Store,
    /// The mark this node left in its store at start: the master looks
    /// for it in its own, to know that they share one.
    pub store_mark: String,
    /// The link timeout: the floor of the link's failure detector.
    pub link_timeout: std::time::Duration,
    pub registry: Registry,
    /// The node's endpoint, as the last certificate reload left it for
    /// dialing.
    pub dialing: tokio::sync::watch::Receiver<transport::Endpoint>,
    pub max_frame: usize,
    /// Becomes true when the node stops: finish running shards, hand back the rest.
    pub drain: tokio::sync::watch::Receiver<bool>,
    /// Set to true once drained (every started shard reported and acknowledged).
    pub drained: tokio::sync::watch::Sender<bool>,
    /// The node's audit log: links joined, lost, refused, drained.
    pub audit: crate::audit::Audit,
    /// This node's build ([`crate::build_id`]).
    pub build: String,
}

pub(crate) struct Worker {
    pub session: Session,
    pub settings: Arc<WorkerSettings>,
    pub fatal: Fatal,
    pub _alive: Alive,
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        metrics::gauge!(m::NODE_ROLE, "role" => "worker").set(1.0);
        let slots = match Slots::start(&self.settings) {
            Ok(slots) => slots,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the worker's slot threads");
                let _ = self.fatal.try_send(super::Restart::Failed(format!(
                    "worker: cannot start its slot threads: {e}"
                )));
                ctx.stop();
                return;
            }
        };
        let fut = run(self.session.clone(), self.settings.clone(), slots);
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            if let Err(e) = res {
                tracing::error!(error = %e, "worker stopped");
                let _ = act
                    .fatal
                    .try_send(super::Restart::Failed(format!("worker: {e}")));
            }
            ctx.stop();
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        metrics::gauge!(m::NODE_ROLE, "role" => "worker").set(0.0);
    }
}

impl Handler<Stop> for Worker {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// First pause after a master refused this node; it doubles up to
/// [`REFUSED_PAUSE_MAX`] while the refusal stays the same.
const REFUSED_PAUSE_MIN: Duration = Duration::from_millis(500);
/// Longest pause between attempts to join a master that refuses this node.
const REFUSED_PAUSE_MAX: Duration = Duration::from_secs(30);

async fn run(zk: Session, s: Arc<WorkerSettings>, slots: Slots) -> Result<(), CoordError> {
    let info = WorkerInfo {
        addr: s.addr.clone(),
        slots: s.slots,
        jobs: s.registry.names(),
        build: s.build.clone(),
        protocol: Some([PROTOCOL_MIN, PROTOCOL_VERSION]),
        shapes: s.registry.shape_ids(),
    };
    zk.register_worker(&s.node_id, &info).await?;
    tracing::info!(node = %s.node_id, slots = s.slots, "worker registered");
    let mut following = Following::default();
    // One session across links: a shard still running when its link ends
    // keeps its slot.
    let mut drain_rx = s.drain.clone();
    let mut refusals = Refusals::default();
    let result = loop {
        if *drain_rx.borrow() {
            break Ok(());
        }
        let found = tokio::select! {
            m = zk.wait_for_master(following.failed_epoch, Duration::from_secs(1)) => m?,
            _ = drain_rx.wait_for(|d| *d) => break Ok(()),
        };
        let master = match found {
            Some(m) => m,
            None => match zk.read_master().await? {
                Some(m) => m,
                None => continue,
            },
        };
        if !following.follows(&master) {
            continue;
        }
        let session = serve(&s, &master, |epoch| following.welcomed(epoch), &slots);
        let changed = zk.master_changed(master.epoch);
        let mut refused_now = None;
        let outcome = tokio::select! {
            r = session => match r {
                Ok(()) => {
                    tracing::info!(master = %master.node_id, "drained: every started shard reported");
                    s.audit.record(master.epoch, Event::Drained { master: master.node_id.clone() });
                    break Ok(());
                }
                // Known at once, and the same at the next try (a
                // certificate of another CA, a refused hello).
                Err(TransportError::Connect { reason, .. }) => {
                    refused_now = Some(reason);
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(master = %master.node_id, epoch = master.epoch, error = %e, "link to master lost");
                    s.audit.record(master.epoch, Event::LinkLost { master: master.node_id.clone(), error: e.to_string() });
                    Ok(())
                }
            },
            r = changed => {
                tracing::info!(old_epoch = master.epoch, "master changed; reconnecting");
                r
            }
        };
        if std::mem::take(&mut following.welcomes) > 0 {
            refusals.last = None;
        }
        if let Some(reason) = refused_now {
            let pause = refusals.pause(&s, &master, reason);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                r = zk.master_changed(master.epoch) => r?,
                _ = drain_rx.wait_for(|d| *d) => break Ok(()),
            }
        }
        following.failed_epoch = Some(master.epoch);
        slots.disconnected(&s);
        outcome?;
        if slots.draining() {
            // The master went while we drained: what we ran is reassigned by the next one.
            break Ok(());
        }
        following.lost_at.get_or_insert_with(Instant::now);
    };
    let _ = s.drained.send(true);
    result
}

/// Which masters a worker follows, and what their changes are counted as.
#[derive(Default)]
struct Following {
    /// The newest epoch seen: an older master is not followed.
    newest_epoch: u64,
    /// The epoch of the master whose link ended last.
    failed_epoch: Option<u64>,
    /// When the last link ended (for the master-gap histogram).
    lost_at: Option<Instant>,
    /// The epoch of the master that welcomed this worker last (for the
    /// leadership-change counter).
    served_epoch: u64,
    /// Welcomes since the last link ended.
    welcomes: u32,
}

impl Following {
    /// Whether to follow `master`: not one older than one already seen.
    fn follows(&mut self, master: &MasterInfo) -> bool {
        if master.epoch < self.newest_epoch {
            tracing::warn!(
                epoch = master.epoch,
                newest_epoch = self.newest_epoch,
                "ignoring a master older than one already seen"
            );
            self.failed_epoch = Some(master.epoch);
            return false;
        }
        self.newest_epoch = master.epoch;
        true
    }

    /// The master of `epoch` welcomed this worker.
    fn welcomed(&mut self, epoch: u64) {
        if let Some(t) = self.lost_at.take() {
            metrics::histogram!(m::MASTER_GAP).record(t.elapsed().as_secs_f64());
        }
        if self.served_epoch != 0 && self.served_epoch != epoch {
            metrics::counter!(m::LEADERSHIP_CHANGES).increment(1);
        }
        self.served_epoch = epoch;
        self.welcomes += 1;
    }
}

/// A master's refusals of this node: said once per cause, then tried
/// again with growing pauses.
#[derive(Default)]
struct Refusals {
    /// The last refusal, and the pause after it.
    last: Option<(String, Duration)>,
}

impl Refusals {
    /// The pause after a refusal for `reason` (logged once per cause,
    /// audited each time).
    fn pause(&mut self, s: &WorkerSettings, master: &MasterInfo, reason: String) -> Duration {
        let pause = match &self.last {
            Some((last, pause)) if *last == reason => (*pause * 2).min(REFUSED_PAUSE_MAX),
            _ => {
                tracing::error!(
                    master = %master.node_id,
                    addr = %master.addr,
                    "this node cannot join the master: {reason}. Trying again with pauses \
                     growing to {} s (logged again if the cause changes)",
                    REFUSED_PAUSE_MAX.as_secs()
                );
                REFUSED_PAUSE_MIN
            }
        };
        tracing::debug!(
            pause_ms = pause.as_millis() as u64,
            "joining again after a pause"
        );
        s.audit.record(
            master.epoch,
            Event::JoinRefused {
                master: master.node_id.clone(),
                reason: reason.clone(),
                pause_ms: pause.as_millis() as u64,
            },
        );
        self.last = Some((reason, pause));
        pause
    }
}

/// The job names this worker offers `master`: every one it registers;
/// but a master of a release that does not compare a worker's types with
/// its own (it publishes no protocol range) is asked about each, as a
/// client asks before a submission (`PlanJob` with the types), and a name
/// it refuses is left out: this worker would decode that job's tasks as
/// other types.
async fn jobs_for(
    s: &WorkerSettings,
    master: &MasterInfo,
    conn: &transport::Connection,
) -> Result<Vec<String>, TransportError> {
    let mut jobs = s.registry.names();
    if master.protocol.is_some() {
        return Ok(jobs);
    }
    let mut refused = Vec::new();
    for name in &jobs {
        let Some(shape) = s.registry.shape(name) else {
            continue;
        };
        let plan = Request::PlanJob {
            job_name: name.clone(),
            task_count: 0,
            shard_size: 1,
            shape: Some(shape.to_string()),
        };
        let mut stream = FramedStream::open(conn, s.max_frame).await?;
        match stream.request(&[plan]).await? {
            Reply::Planned(_) => {}
            Reply::Error {
                kind: ErrorKind::Invalid,
                message,
            } => {
                tracing::warn!(job = %name, master = %master.node_id, "this worker runs no {name} job of this master: {message}");
                refused.push(name.clone());
            }
            other => {
                return Err(TransportError::Connect {
                    addr: master.addr.clone(),
                    reason: format!(
                        "asked about job type {name}, the master answered {}",
                        other.name()
                    ),
                })
            }
        }
    }
    jobs.retain(|name| !refused.contains(name));
    Ok(jobs)
}

/// One connection to a master. Returns `Ok` once drained (the master
/// acknowledged the last report), an error when the link is lost.
async fn serve(
    s: &Arc<WorkerSettings>,
    master: &MasterInfo,
    mut on_welcome: impl FnMut(u64),
    slots: &Slots,
) -> Result<(), TransportError> {
    let endpoint = s.dialing.borrow().clone();
    let conn = transport::dial_node(&endpoint, &master.addr, &master.node_id).await?;
    let jobs = jobs_for(s, master, &conn).await?;
    let mut stream = FramedStream::open(&conn, s.max_frame).await?;
    let hello = FromWorker::WorkerHello(Hello {
        version: PROTOCOL_MIN,
        newest: Some(PROTOCOL_VERSION),
        build: s.build.clone(),
        shapes: s.registry.shape_ids(),
        node_id: s.node_id.clone(),
        slots: s.slots,
        jobs,
        epoch: master.epoch,
        store: s.store.url().to_string(),
        store_mark: s.store_mark.clone(),
    });
    let refused = |reason: String| TransportError::Connect {
        addr: master.addr.clone(),
        reason,
    };
    let answered = async {
        stream.send(&hello).await?;
        stream.recv::<ToWorker>().await
    };
    let answer = match answered.await {
        Ok(answer) => answer,
        Err(e) => return Err(transport::refused(&conn, &master.addr).unwrap_or(e)),
    };
    let (epoch, version) = match answer {
        // A master that does not say speaks the version the hello named
        // first (the only one it knew).
        ToWorker::Welcome { epoch, version } if epoch >= master.epoch => {
            (epoch, version.unwrap_or(PROTOCOL_MIN))
        }
        ToWorker::Welcome { epoch, .. } => {
            return Err(refused(format!("stale master epoch {epoch}")))
        }
        ToWorker::Error { message, .. } => return Err(refused(message)),
        other => return Err(refused(format!("unexpected {}", other.name()))),
    };
    tracing::info!(master = %master.node_id, epoch, protocol = version, "connected to master");
    s.audit.record(
        epoch,
        Event::LinkedToMaster {
            master: master.node_id.clone(),
        },
    );
    on_welcome(epoch);
    let (mut send, mut recv) = stream.split();
    // The stream's writer and reader run as tasks of their own, so that
    // this loop wakes only for what it handles (and does not poll the
    // connection on every wake-up), and a read is never cut short.
    let (tx, mut rx) = transport::Outbox::new(transport::LINK_QUEUE, "link");
    let writer = actix::spawn(async move { transport::write_queued(&mut send, &mut rx).await });
    // Bounded: a loop that falls behind stops the reader, the stream's
    // flow control the master, whose queue for this link then fills and
    // drops it.
    let (frames_tx, mut frames) = mpsc::channel::<ToWorker>(transport::LINK_QUEUE);
    let reader = actix::spawn(async move {
        loop {
            let frame = recv.read_frame::<ToWorker>().await?;
            if frames_tx.send(frame).await.is_err() {
                return Ok::<(), WireError>(());
            }
        }
    });
    let (mut writer, mut reader) = (AbortOnDrop(writer), AbortOnDrop(reader));
    let mut drain_rx = s.drain.clone();
    let mut watch = transport::LinkWatch::new(s.link_timeout);
    slots.connected(s, epoch, tx);
    loop {
        tokio::select! {
            r = &mut writer.0 => return Err(link_ended(r.unwrap_or(Ok(())))),
            r = &mut reader.0 => return Err(link_ended(r.unwrap_or(Ok(())))),
            e = watch.lost(&conn) => return Err(e),
            Some(frame) = frames.recv() => match frame {
                ToWorker::DrainAck => return Ok(()),
                ToWorker::StartAck(run) => slots.acked(s, &run.at(epoch)),
                ToWorker::StartRefused(run) => slots.refused(s, &run.at(epoch)),
                ToWorker::StopRun(run) => slots.stop(s, &run.at(epoch)),
                ToWorker::Assign(a) => match slots.assigned(s, a) {
                    Ok(()) => {}
                    Err((Refused::OtherEpoch, run)) => tracing::warn!(
                        epoch = run.epoch,
                        current = epoch,
                        "refusing an assignment from another epoch"
                    ),
                    // Sent before the master saw `Draining`: it requeues it.
                    Err((Refused::Draining, _)) => {}
                    // A resend of a run held from before a reconnection to
                    // the same master: the one held reports. (A run of
                    // another job under the same id is another run.)
                    Err((Refused::Duplicate, run)) => {
                        tracing::debug!(job = %run.job, shard = %run.shard, "already holding this run")
                    }
                },
                other => tracing::warn!(frame = other.name(), "unexpected frame from master"),
            },
            _ = drain_rx.wait_for(|d| *d), if !slots.draining() => {
                tracing::info!(running = slots.in_slots(), "draining: no new shards; finishing the started ones");
                slots.drain(s);
            }
        }
    }
}

/// A task that ends with the link: aborted when the link's loop returns.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a link's reader or writer ended.
fn link_ended(r: Result<(), WireError>) -> TransportError {
    match r {
        Err(e) => e.into(),
        Ok(()) => WireError::Closed.into(),
    }
}
