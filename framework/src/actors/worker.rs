//! The worker actor: registers `/workers/<node-id>`, follows `/master`,
//! keeps one QUIC control stream to the current master, runs the shards it
//! receives on the blocking thread pool (never on an arbiter thread), and
//! reports each shard's outcome. Frames from an older epoch than the newest
//! it has seen are refused.
//!
//! The driver of [`WorkerSession`], which decides what waits, what runs and
//! where reports go; here are the links, the frames and the shards' runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_bytes::ByteBuf;
use tokio::sync::mpsc;

use super::{Alive, Fatal, Stop};
use crate::audit::Event;
use crate::coord::INLINE_LIMIT;
use crate::coord::{CoordError, MasterInfo, Session, WorkerInfo};
use crate::core::worker_session::{Action, Refused, RunId};
use crate::core::{TaskFailure, WorkerSession};
use crate::metrics as m;
use crate::registry::{Registry, RunEnv};
use crate::store::Store;
use crate::transport::{self, FramedStream, TransportError};
use crate::wire::{self, Assignment, Frame, ShardReport, WireError, PROTOCOL_VERSION};

pub(crate) struct WorkerSettings {
    pub node_id: String,
    pub addr: String,
    pub slots: u32,
    pub data_dir: PathBuf,
    /// Where outputs too big to travel inline go.
    pub store: Store,
    pub registry: Registry,
    pub endpoint: transport::Endpoint,
    pub max_frame: usize,
    /// Becomes true when the node stops: finish running shards, hand back the rest.
    pub drain: tokio::sync::watch::Receiver<bool>,
    /// Set to true once drained (every started shard reported and acknowledged).
    pub drained: tokio::sync::watch::Sender<bool>,
    /// The node's audit log: links joined, lost, refused, drained.
    pub audit: crate::audit::Audit,
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
        let fut = run(self.session.clone(), self.settings.clone());
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            if let Err(e) = res {
                tracing::error!(error = %e, "worker stopped");
                let _ = act.fatal.send(format!("worker: {e}"));
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

async fn run(zk: Session, s: Arc<WorkerSettings>) -> Result<(), CoordError> {
    let info = WorkerInfo {
        addr: s.addr.clone(),
        slots: s.slots,
        jobs: s.registry.names(),
    };
    zk.register_worker(&s.node_id, &info).await?;
    tracing::info!(node = %s.node_id, slots = s.slots, "worker registered");
    let mut newest_epoch = 0u64;
    let mut failed_epoch = None;
    // For the master-gap histogram and the leadership-change counter.
    let mut lost_at: Option<Instant> = None;
    let mut served_epoch = 0u64;
    // One session across links: a shard still running when its link ends
    // keeps its slot. Finished runs come back on `done`.
    let mut shards = Shards {
        session: WorkerSession::new(s.slots),
        waiting: HashMap::new(),
        asked: HashMap::new(),
        done: mpsc::unbounded_channel(),
    };
    let mut drain_rx = s.drain.clone();
    // The last refusal of this node by a master, and the pause after it.
    let mut refused: Option<(String, Duration)> = None;
    let mut welcomes = 0u32;
    let result = loop {
        if *drain_rx.borrow() {
            break Ok(());
        }
        let found = tokio::select! {
            m = zk.wait_for_master(failed_epoch, Duration::from_secs(1)) => m?,
            _ = drain_rx.wait_for(|d| *d) => break Ok(()),
        };
        let master = match found {
            Some(m) => m,
            None => match zk.read_master().await? {
                Some(m) => m,
                None => continue,
            },
        };
        if master.epoch < newest_epoch {
            tracing::warn!(
                epoch = master.epoch,
                newest_epoch,
                "ignoring a master older than one already seen"
            );
            failed_epoch = Some(master.epoch);
            continue;
        }
        newest_epoch = master.epoch;
        let on_welcome = |epoch: u64| {
            if let Some(t) = lost_at.take() {
                metrics::histogram!(m::MASTER_GAP).record(t.elapsed().as_secs_f64());
            }
            if served_epoch != 0 && served_epoch != epoch {
                metrics::counter!(m::LEADERSHIP_CHANGES).increment(1);
            }
            served_epoch = epoch;
            welcomes += 1;
        };
        let session = serve(&s, &master, on_welcome, &mut shards);
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
        if welcomes > 0 {
            refused = None;
            welcomes = 0;
        }
        if let Some(reason) = refused_now {
            // Said once per cause, then tried again with growing pauses.
            let pause = match &refused {
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
            refused = Some((reason, pause));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                r = zk.master_changed(master.epoch) => r?,
                _ = drain_rx.wait_for(|d| *d) => break Ok(()),
            }
        }
        failed_epoch = Some(master.epoch);
        shards.disconnected();
        outcome?;
        if shards.session.draining() {
            // The master went while we drained: what we ran is reassigned by the next one.
            break Ok(());
        }
        if lost_at.is_none() {
            lost_at = Some(Instant::now());
        }
    };
    let _ = s.drained.send(true);
    result
}

/// The worker's shards across links: the session's decisions, the
/// assignments waiting for a slot or an acknowledgement, and the channel
/// on which finished runs come back.
struct Shards {
    session: WorkerSession,
    waiting: HashMap<RunId, Assignment>,
    /// When each run waiting for its `StartAck` sent `Started`.
    asked: HashMap<RunId, Instant>,
    done: (
        mpsc::UnboundedSender<Finished>,
        mpsc::UnboundedReceiver<Finished>,
    ),
}

/// A run that finished, with its report.
type Finished = (RunId, ShardReport);

impl Shards {
    /// Carries out the session's actions; `report` is the finished run's.
    fn apply(
        &mut self,
        s: &Arc<WorkerSettings>,
        tx: Option<&mpsc::UnboundedSender<Frame>>,
        actions: Vec<Action>,
        mut report: Option<ShardReport>,
    ) {
        let send = |f: Frame| {
            if let Some(tx) = tx {
                let _ = tx.send(f);
            }
        };
        for action in actions {
            match action {
                Action::SendStarted(run) => {
                    let Some(a) = self.waiting.get(&run) else {
                        continue;
                    };
                    self.asked.insert(run.clone(), Instant::now());
                    send(Frame::Started {
                        epoch: a.epoch,
                        job_id: run.job,
                        shard: run.shard,
                        attempt: run.attempt,
                    });
                }
                Action::Run(run) => {
                    // The slot's wait for the master's round trip.
                    if let Some(at) = self.asked.remove(&run) {
                        metrics::histogram!(m::START_WAIT_SECONDS)
                            .record(at.elapsed().as_secs_f64());
                    }
                    if let Some(a) = self.waiting.remove(&run) {
                        let (s, done) = (s.clone(), self.done.0.clone());
                        actix::spawn(async move {
                            let report = execute(&s, a).await;
                            let _ = done.send((run, report));
                        });
                    }
                }
                Action::SendReport(_) => {
                    if let Some(r) = report.take() {
                        send(Frame::Report(r));
                    }
                }
                Action::Forget(run) => {
                    self.waiting.remove(&run);
                    self.asked.remove(&run);
                    // A run that ended after its link: its report goes to
                    // no master, so no record can name the output it put
                    // in the store.
                    let ours = |r: &mut ShardReport| {
                        (&r.job_id, r.shard, r.attempt) == (&run.job, run.shard, run.attempt)
                    };
                    if let Some(name) = report.take_if(ours).and_then(|r| r.output_object) {
                        let store = s.store.clone();
                        actix::spawn(async move {
                            if let Err(e) = store.delete(&name).await {
                                tracing::warn!(object = %name, error = %e, "cannot delete the output of a run that outlived its link");
                            }
                        });
                    }
                }
                Action::SendUnstarted(run) => send(Frame::Unstarted {
                    job_id: run.job,
                    shard: run.shard,
                    attempt: run.attempt,
                }),
                Action::SendDraining => send(Frame::Draining),
                Action::SendDrained => send(Frame::Drained),
            }
        }
    }

    fn disconnected(&mut self) {
        let actions = self.session.disconnected();
        for a in actions {
            if let Action::Forget(run) = a {
                self.waiting.remove(&run);
            }
        }
    }
}

/// One connection to a master. Returns `Ok` once drained (the master
/// acknowledged the last report), an error when the link is lost.
async fn serve(
    s: &Arc<WorkerSettings>,
    master: &MasterInfo,
    mut on_welcome: impl FnMut(u64),
    shards: &mut Shards,
) -> Result<(), TransportError> {
    let conn = transport::dial_node(&s.endpoint, &master.addr, &master.node_id).await?;
    let mut stream = FramedStream::open(&conn, s.max_frame).await?;
    let hello = Frame::WorkerHello {
        version: PROTOCOL_VERSION,
        node_id: s.node_id.clone(),
        slots: s.slots,
        jobs: s.registry.names(),
        epoch: master.epoch,
    };
    let refused = |reason: String| TransportError::Connect {
        addr: master.addr.clone(),
        reason,
    };
    let answer = match stream.request(&[hello]).await {
        Ok(answer) => answer,
        Err(e) => return Err(transport::refused(&conn, &master.addr).unwrap_or(e)),
    };
    let epoch = match answer {
        Frame::Welcome { epoch } if epoch >= master.epoch => epoch,
        Frame::Welcome { epoch } => return Err(refused(format!("stale master epoch {epoch}"))),
        Frame::Error { message } => return Err(refused(message)),
        other => return Err(refused(format!("unexpected {}", other.name()))),
    };
    tracing::info!(master = %master.node_id, epoch, "connected to master");
    s.audit.record(
        epoch,
        Event::LinkedToMaster {
            master: master.node_id.clone(),
        },
    );
    on_welcome(epoch);
    let FramedStream {
        mut send,
        mut recv,
        max_frame,
    } = stream;
    // The stream's writer and reader run as tasks of their own, so that
    // this loop wakes only for what it handles (and does not poll the
    // connection on every wake-up), and a read is never cut short.
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let writer = actix::spawn(async move { transport::write_queued(&mut send, &mut rx).await });
    let (frames_tx, mut frames) = mpsc::unbounded_channel::<Frame>();
    let reader = actix::spawn(async move {
        loop {
            let frame = wire::read_frame(&mut recv, max_frame).await?;
            if frames_tx.send(frame).is_err() {
                return Ok::<(), WireError>(());
            }
        }
    });
    let (mut writer, mut reader) = (AbortOnDrop(writer), AbortOnDrop(reader));
    let mut drain_rx = s.drain.clone();
    let actions = shards.session.connected(epoch);
    shards.apply(s, Some(&tx), actions, None);
    loop {
        tokio::select! {
            r = &mut writer.0 => return Err(link_ended(r.unwrap_or(Ok(())))),
            r = &mut reader.0 => return Err(link_ended(r.unwrap_or(Ok(())))),
            Some(frame) = frames.recv() => match frame {
                Frame::DrainAck => return Ok(()),
                Frame::StartAck { job_id, shard, attempt } => {
                    let run = RunId { epoch, job: job_id, shard, attempt };
                    let actions = shards.session.acked(&run);
                    shards.apply(s, Some(&tx), actions, None);
                }
                Frame::StartRefused { job_id, shard, attempt } => {
                    let run = RunId { epoch, job: job_id, shard, attempt };
                    let actions = shards.session.refused(&run);
                    shards.apply(s, Some(&tx), actions, None);
                }
                Frame::Assign(a) => {
                    let run = RunId { epoch: a.epoch, job: a.job_id.clone(), shard: a.shard, attempt: a.attempt };
                    match shards.session.assigned(run.clone(), a.ack_first) {
                        Ok(actions) => {
                            shards.waiting.insert(run, a);
                            shards.apply(s, Some(&tx), actions, None);
                        }
                        Err(Refused::OtherEpoch) => tracing::warn!(
                            epoch = a.epoch,
                            current = epoch,
                            "refusing an assignment from another epoch"
                        ),
                        // Sent before the master saw `Draining`: it requeues it.
                        Err(Refused::Draining) => {}
                        Err(Refused::Duplicate) => {
                            tracing::debug!(job = %run.job, shard = %run.shard, "already holding this run")
                        }
                    }
                }
                other => tracing::warn!(frame = other.name(), "unexpected frame from master"),
            },
            Some((run, report)) = shards.done.1.recv() => {
                let actions = shards.session.finished(&run);
                shards.apply(s, Some(&tx), actions, Some(report));
            }
            _ = drain_rx.wait_for(|d| *d), if !shards.session.draining() => {
                tracing::info!(running = shards.session.in_slots(), "draining: no new shards; finishing the started ones");
                let actions = shards.session.drain();
                shards.apply(s, Some(&tx), actions, None);
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

/// Runs one shard on the blocking pool and builds its report; a big
/// output goes to the store under a name no other run uses.
async fn execute(s: &Arc<WorkerSettings>, a: Assignment) -> ShardReport {
    let (epoch, job_id, shard, attempt) = (a.epoch, a.job_id.clone(), a.shard, a.attempt);
    let n = a.tasks.len() as u64;
    let started = Instant::now();
    let env = RunEnv {
        node_id: s.node_id.clone(),
        data_dir: s.data_dir.clone(),
        store: Some(s.store.clone()),
    };
    let indexes: Vec<u64> = a.tasks.iter().map(|(i, _)| *i).collect();
    let job_name = a.job_name.clone();
    let registry = s.registry.clone();
    let run = tokio::task::spawn_blocking(move || {
        registry
            .get(&a.job_name)
            .map(|job| job.run_shard(&a.job_id, a.attempt, a.tasks, &env))
    })
    .await;
    let fail_all = |error: String, retryable| {
        let failures = indexes
            .iter()
            .map(|&index| TaskFailure {
                index,
                error: error.clone(),
                attempt,
                retryable,
            })
            .collect();
        (Vec::new(), failures)
    };
    let (mut output, mut failures) = match run {
        Ok(Some(r)) => (r.output, r.failures),
        Ok(None) => fail_all(
            format!("unknown job type {job_name:?} on this worker"),
            true,
        ),
        Err(e) => fail_all(format!("shard runner failed: {e}"), true),
    };
    let mut output_object = None;
    if output.len() > INLINE_LIMIT {
        let name = Store::shard_output_name(&job_id, &shard.to_string(), epoch, attempt);
        let put = match name {
            Ok(name) => s
                .store
                .put_new(&name, std::mem::take(&mut output))
                .await
                .map(|()| name),
            Err(e) => Err(e),
        };
        match put {
            Ok(name) => output_object = Some(name),
            Err(e) => {
                tracing::warn!(job = %job_id, %shard, error = %e, "cannot write a shard's output to the store");
                (output, failures) =
                    fail_all(format!("cannot write the output to the store: {e}"), true);
            }
        }
    }
    // A bounded label: the names this worker registers.
    let label = if s.registry.get(&job_name).is_some() {
        job_name
    } else {
        "unknown".to_string()
    };
    metrics::counter!(m::TASKS_RUN, "job_type" => label.clone()).increment(n);
    metrics::histogram!(m::SHARD_SECONDS, "job_type" => label)
        .record(started.elapsed().as_secs_f64());
    ShardReport {
        epoch,
        job_id,
        shard,
        attempt,
        output: ByteBuf::from(output),
        failures,
        output_object,
    }
}
