//! The worker actor: registers `/workers/<node-id>`, follows `/master`,
//! keeps one QUIC control stream to the current master, runs the shards it
//! receives on the blocking thread pool (never on an arbiter thread), and
//! reports each shard's outcome. Frames from an older epoch than the newest
//! it has seen are refused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_bytes::ByteBuf;
use tokio::sync::{mpsc, oneshot, Semaphore};
use zookeeper_client::{Client, Error as ZkError};

use super::{Alive, Fatal, Stop};
use crate::coord::INLINE_LIMIT;
use crate::coord::{read_master, wait_for_master, CoordError, Layout, MasterInfo, WorkerInfo};
use crate::core::TaskFailure;
use crate::metrics as m;
use crate::registry::{Registry, RunEnv};
use crate::store::Store;
use crate::transport::{self, FramedStream, TransportError};
use crate::wire::{self, Frame, ShardReport, PROTOCOL_VERSION};

type Acks = Rc<RefCell<HashMap<(String, crate::core::ShardKey, u32), oneshot::Sender<()>>>>;

/// Drain bookkeeping shared by the worker loop and its shard tasks.
#[derive(Default)]
struct Drain {
    /// Set once the node asked to drain: no new shard starts.
    draining: std::cell::Cell<bool>,
    /// Shard tasks spawned and not finished (waiting for a slot or running).
    busy: std::cell::Cell<usize>,
    /// Woken when `busy` drops to zero.
    idle: tokio::sync::Notify,
}

impl Drain {
    fn enter(&self) {
        self.busy.set(self.busy.get() + 1);
    }
    fn leave(&self) {
        self.busy.set(self.busy.get() - 1);
        if self.busy.get() == 0 {
            self.idle.notify_one();
        }
    }
}

pub(crate) struct WorkerSettings {
    pub node_id: String,
    pub addr: String,
    pub slots: u32,
    pub data_dir: PathBuf,
    /// Where outputs too big to travel inline go.
    pub store: Store,
    pub registry: Registry,
    pub endpoint: quinn::Endpoint,
    pub max_frame: usize,
    /// Becomes true when the node stops: finish running shards, hand back the rest.
    pub drain: tokio::sync::watch::Receiver<bool>,
    /// Set to true once drained (every started shard reported and acknowledged).
    pub drained: tokio::sync::watch::Sender<bool>,
}

pub(crate) struct Worker {
    pub zk: Client,
    pub layout: Layout,
    pub settings: Arc<WorkerSettings>,
    pub fatal: Fatal,
    pub _alive: Alive,
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        metrics::gauge!(m::NODE_ROLE, "role" => "worker").set(1.0);
        let fut = run(self.zk.clone(), self.layout.clone(), self.settings.clone());
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

async fn register(zk: &Client, layout: &Layout, s: &WorkerSettings) -> Result<(), CoordError> {
    let path = layout.worker(&s.node_id);
    let info = WorkerInfo {
        addr: s.addr.clone(),
        slots: s.slots,
        jobs: s.registry.names(),
    };
    let data = rmp_serde::to_vec(&info).map_err(|e| CoordError::Garbage {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    crate::coord::ensure_path(zk, &layout.workers()).await?;
    loop {
        match zk
            .create(&path, &data, &crate::coord::EPHEMERAL_OPTIONS)
            .await
        {
            Ok(_) => return Ok(()),
            // A registration of an earlier incarnation (same node id) whose
            // session has not expired yet, or ours before a connection loss.
            Err(ZkError::NodeExists) => match zk.delete(&path, None).await {
                Ok(()) | Err(ZkError::NoNode) => {}
                Err(e) => return Err(CoordError::zk(&path, e)),
            },
            Err(ZkError::ConnectionLoss) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(CoordError::zk(&path, e)),
        }
    }
}

async fn run(zk: Client, layout: Layout, s: Arc<WorkerSettings>) -> Result<(), CoordError> {
    register(&zk, &layout, &s).await?;
    tracing::info!(node = %s.node_id, slots = s.slots, "worker registered");
    let mut newest_epoch = 0u64;
    let mut failed_epoch = None;
    // For the master-gap histogram and the leadership-change counter.
    let lost_at: std::cell::Cell<Option<Instant>> = std::cell::Cell::new(None);
    let served_epoch = std::cell::Cell::new(0u64);
    let on_welcome = |epoch: u64| {
        if let Some(t) = lost_at.take() {
            metrics::histogram!(m::MASTER_GAP).record(t.elapsed().as_secs_f64());
        }
        if served_epoch.get() != 0 && served_epoch.get() != epoch {
            metrics::counter!(m::LEADERSHIP_CHANGES).increment(1);
        }
        served_epoch.set(epoch);
    };
    let drain = Rc::new(Drain::default());
    let mut drain_rx = s.drain.clone();
    let result = loop {
        if *drain_rx.borrow() {
            break Ok(());
        }
        let found = tokio::select! {
            m = wait_for_master(&zk, &layout, failed_epoch, Duration::from_secs(1)) => m?,
            _ = drain_rx.wait_for(|d| *d) => break Ok(()),
        };
        let master = match found {
            Some(m) => m,
            None => match read_master(&zk, &layout).await? {
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
        let session = serve(&s, &master, &on_welcome, &drain);
        let changed = master_changed(&zk, &layout, master.epoch);
        tokio::select! {
            r = session => match r {
                Ok(()) => {
                    tracing::info!(master = %master.node_id, "drained: every started shard reported");
                    break Ok(());
                }
                Err(e) => {
                    tracing::warn!(master = %master.node_id, epoch = master.epoch, error = %e, "link to master lost");
                    failed_epoch = Some(master.epoch);
                }
            },
            r = changed => {
                r?;
                tracing::info!(old_epoch = master.epoch, "master changed; reconnecting");
                failed_epoch = Some(master.epoch);
            }
        }
        if drain.draining.get() {
            // The master went while we drained: what we ran is reassigned by the next one.
            break Ok(());
        }
        if lost_at.get().is_none() {
            lost_at.set(Some(Instant::now()));
        }
    };
    let _ = s.drained.send(true);
    result
}

/// Calls [`Drain::leave`] when dropped, however a shard task ends.
struct BusyGuard<'a>(&'a Drain);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

fn scopeguard(d: &Drain) -> BusyGuard<'_> {
    BusyGuard(d)
}

/// Resolves once `/master` no longer holds `epoch`.
async fn master_changed(zk: &Client, layout: &Layout, epoch: u64) -> Result<(), CoordError> {
    let path = layout.master();
    loop {
        let watcher = match zk.get_and_watch_data(&path).await {
            Ok((data, _, w)) => match rmp_serde::from_slice::<MasterInfo>(&data) {
                Ok(info) if info.epoch == epoch => w,
                _ => return Ok(()),
            },
            Err(ZkError::NoNode) => return Ok(()),
            Err(e) => return Err(CoordError::zk(&path, e)),
        };
        let ev = watcher.changed().await;
        if ev.session_state.is_terminated() {
            return Err(CoordError::zk(&path, ZkError::SessionExpired));
        }
    }
}

/// One connection to a master. Returns `Ok` once drained (the master
/// acknowledged the last report), an error when the link is lost.
async fn serve(
    s: &Arc<WorkerSettings>,
    master: &MasterInfo,
    on_welcome: &dyn Fn(u64),
    drain: &Rc<Drain>,
) -> Result<(), TransportError> {
    let conn = transport::dial(&s.endpoint, &master.addr).await?;
    let mut stream = FramedStream::open(&conn, s.max_frame).await?;
    let hello = Frame::WorkerHello {
        version: PROTOCOL_VERSION,
        node_id: s.node_id.clone(),
        slots: s.slots,
        jobs: s.registry.names(),
        epoch: master.epoch,
    };
    let epoch = match stream.request(&[hello]).await? {
        Frame::Welcome { epoch } if epoch >= master.epoch => epoch,
        Frame::Welcome { epoch } => {
            return Err(TransportError::Connect {
                addr: master.addr.clone(),
                reason: format!("stale master epoch {epoch}"),
            })
        }
        Frame::Error { message } => {
            return Err(TransportError::Connect {
                addr: master.addr.clone(),
                reason: message,
            })
        }
        other => {
            return Err(TransportError::Connect {
                addr: master.addr.clone(),
                reason: format!("unexpected {}", other.name()),
            })
        }
    };
    tracing::info!(master = %master.node_id, epoch, "connected to master");
    on_welcome(epoch);
    let FramedStream {
        mut send,
        mut recv,
        max_frame,
    } = stream;
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let writer = async move { transport::write_queued(&mut send, &mut rx).await };
    let slots = Arc::new(Semaphore::new(s.slots as usize));
    // Shards wait for the master's acknowledgement of `Started` before they
    // run: if their task then kills this process, the master knows they were
    // running and charges them an attempt (and only them).
    let acks: Acks = Rc::new(RefCell::new(HashMap::new()));
    let mut drain_rx = s.drain.clone();
    let reader = async {
        let mut sent_drained = false;
        loop {
            let frame = tokio::select! {
                f = wire::read_frame(&mut recv, max_frame) => f?,
                _ = drain_rx.wait_for(|d| *d), if !drain.draining.get() => {
                    tracing::info!(busy = drain.busy.get(), "draining: no new shards; finishing the started ones");
                    drain.draining.set(true);
                    let _ = tx.send(Frame::Draining);
                    if drain.busy.get() == 0 {
                        let _ = tx.send(Frame::Drained);
                        sent_drained = true;
                    }
                    continue;
                }
                _ = drain.idle.notified(), if drain.draining.get() && !sent_drained => {
                    if drain.busy.get() == 0 {
                        let _ = tx.send(Frame::Drained);
                        sent_drained = true;
                    }
                    continue;
                }
            };
            match frame {
                Frame::DrainAck => return Ok(()),
                Frame::Assign(_) if drain.draining.get() => {
                    // Sent before the master saw `Draining`; it requeues it.
                }
                Frame::StartAck {
                    job_id,
                    shard,
                    attempt,
                } => {
                    if let Some(done) = acks.borrow_mut().remove(&(job_id, shard, attempt)) {
                        let _ = done.send(());
                    }
                }
                Frame::Assign(a) if a.epoch == epoch => {
                    let tx = tx.clone();
                    let s = s.clone();
                    let slots = slots.clone();
                    let acks = acks.clone();
                    let drain = drain.clone();
                    drain.enter();
                    actix::spawn(async move {
                        let _busy = scopeguard(&drain);
                        let Ok(_permit) = slots.acquire_owned().await else {
                            return;
                        };
                        if drain.draining.get() {
                            return;
                        }
                        let (done, acked) = oneshot::channel();
                        acks.borrow_mut()
                            .insert((a.job_id.clone(), a.shard, a.attempt), done);
                        let _ = tx.send(Frame::Started {
                            epoch,
                            job_id: a.job_id.clone(),
                            shard: a.shard,
                            attempt: a.attempt,
                        });
                        if acked.await.is_err() {
                            // The link ended: the master will reassign the shard.
                            return;
                        }
                        let job_id = a.job_id.clone();
                        let (shard, attempt) = (a.shard, a.attempt);
                        let n = a.tasks.len() as u64;
                        let started = Instant::now();
                        let env = RunEnv {
                            node_id: s.node_id.clone(),
                            data_dir: s.data_dir.clone(),
                            store: Some(s.store.clone()),
                        };
                        let indexes: Vec<u64> = a.tasks.iter().map(|(i, _)| *i).collect();
                        let job_name = a.job_name.clone();
                        let store = s.store.clone();
                        let run = tokio::task::spawn_blocking(move || {
                            s.registry
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
                        // A big output goes to the store under a name no
                        // other run uses; the master commits the name.
                        let mut output_object = None;
                        if output.len() > INLINE_LIMIT {
                            let name = Store::shard_output_name(
                                &job_id,
                                &shard.to_string(),
                                epoch,
                                attempt,
                            );
                            let put = match name {
                                Ok(name) => store
                                    .put_new(&name, std::mem::take(&mut output))
                                    .await
                                    .map(|()| name),
                                Err(e) => Err(e),
                            };
                            match put {
                                Ok(name) => output_object = Some(name),
                                Err(e) => {
                                    tracing::warn!(job = %job_id, %shard, error = %e, "cannot write a shard's output to the store");
                                    (output, failures) = fail_all(
                                        format!("cannot write the output to the store: {e}"),
                                        true,
                                    );
                                }
                            }
                        }
                        metrics::counter!(m::TASKS_RUN).increment(n);
                        metrics::histogram!(m::SHARD_SECONDS)
                            .record(started.elapsed().as_secs_f64());
                        let report = ShardReport {
                            epoch,
                            job_id,
                            shard,
                            attempt,
                            output: ByteBuf::from(output),
                            failures,
                            output_object,
                        };
                        let _ = tx.send(Frame::Report(report));
                    });
                }
                Frame::Assign(a) => {
                    tracing::warn!(
                        epoch = a.epoch,
                        current = epoch,
                        "refusing an assignment from another epoch"
                    );
                }
                other => {
                    tracing::warn!(frame = other.name(), "unexpected frame from master");
                }
            }
        }
    };
    let res = tokio::select! {
        r = writer => r,
        r = reader => r,
    };
    acks.borrow_mut().clear();
    res?;
    Ok(())
}
