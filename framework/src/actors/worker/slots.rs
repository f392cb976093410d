//! The worker's slots: a thread of its own per slot runs shards (never an
//! arbiter thread, never a pool thread borrowed per run), and when a run
//! ends, its thread asks the worker's [`WorkerSession`] what comes next
//! and takes the next run itself. A slot of short shards thus goes from
//! one run to the next without waking the link's loop or another thread;
//! the report and the next `Started` go straight to the link's writer, in
//! the session's order (one lock orders them).
//!
//! What is shared: the session (every decision), the assignments it holds
//! until they run or are forgotten, the cancellation flags of the runs
//! under way, and the current link's writer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_bytes::ByteBuf;

use super::WorkerSettings;
use crate::coord::INLINE_LIMIT;
use crate::core::worker_session::{Action, Refused, RunId};
use crate::core::{TaskFailure, WorkerSession};
use crate::metrics as m;
use crate::registry::RunEnv;
use crate::store::Store;
use crate::task::Cancel;
use crate::wire::{Assignment, FromWorker, RunRef, ShardReport};

/// A run for a slot: its id, its assignment and its cancellation flag.
type Start = (RunId, Assignment, Cancel);

/// What a slot's thread is given (`None` ends it).
type Run = Option<Start>;

/// The worker's shards across links (see the module doc).
pub(super) struct Slots {
    shared: Arc<Mutex<Shared>>,
    /// Runs for whichever slot is free.
    runs: crossbeam_channel::Sender<Run>,
    threads: u32,
}

impl Drop for Slots {
    fn drop(&mut self) {
        // Each thread ends once its run (if any) is done.
        for _ in 0..self.threads {
            let _ = self.runs.send(None);
        }
    }
}

struct Shared {
    session: WorkerSession,
    /// Assignments held until they run or are forgotten.
    waiting: HashMap<RunId, Assignment>,
    /// When each run waiting for its `StartAck` sent `Started`.
    asked: HashMap<RunId, Instant>,
    /// The runs under way, each with its cancellation flag.
    running: HashMap<RunId, Cancel>,
    /// The current link's writer (dropped when its queue is full: the
    /// writer then ends, and the link with it, as a broken one would).
    link: Option<crate::transport::Outbox<FromWorker>>,
}

/// What carrying out the session's actions leaves to do outside the lock.
#[derive(Default)]
struct After {
    /// Runs to start, in order.
    starts: Vec<Start>,
    /// The output object of a report that goes to no master (its run
    /// outlived its link): no record can name it.
    orphan: Option<String>,
}

impl Slots {
    /// The worker's slots, their threads started.
    pub(super) fn start(s: &Arc<WorkerSettings>) -> std::io::Result<Self> {
        let shared = Arc::new(Mutex::new(Shared {
            session: WorkerSession::new(s.slots),
            waiting: HashMap::new(),
            asked: HashMap::new(),
            running: HashMap::new(),
            link: None,
        }));
        let threads = s.slots.max(1);
        // Bounded by what the session allows: a run is sent only for a
        // slot it just made busy (at most one per thread waits to be
        // picked up), and one `None` per thread at the end; so a send
        // never waits.
        let (runs, rx) = crossbeam_channel::bounded::<Run>(2 * threads as usize);
        for k in 0..threads {
            let (s, shared, rx, runs) = (s.clone(), shared.clone(), rx.clone(), runs.clone());
            std::thread::Builder::new()
                .name(format!("slot-{k}"))
                .spawn(move || slot(&s, &shared, &rx, &runs))?;
        }
        Ok(Slots {
            shared,
            runs,
            threads,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    /// Carries out `actions` (under the lock), then starts what they start.
    fn apply(&self, sh: MutexGuard<'_, Shared>, actions: Vec<Action>, s: &Arc<WorkerSettings>) {
        let mut sh = sh;
        let after = sh.apply(actions, None);
        drop(sh);
        for run in after.starts {
            let _ = self.runs.send(Some(run));
        }
        delete_orphan(s, after.orphan);
    }

    /// A link to the master of `epoch` is up, written through `link`.
    pub(super) fn connected(
        &self,
        s: &Arc<WorkerSettings>,
        epoch: u64,
        link: crate::transport::Outbox<FromWorker>,
    ) {
        let mut sh = self.lock();
        sh.link = Some(link);
        let actions = sh.session.connected(epoch);
        self.apply(sh, actions, s);
    }

    /// The link is gone.
    pub(super) fn disconnected(&self, s: &Arc<WorkerSettings>) {
        let mut sh = self.lock();
        sh.link = None;
        let actions = sh.session.disconnected();
        self.apply(sh, actions, s);
    }

    /// An assignment came; refused, with its run.
    pub(super) fn assigned(
        &self,
        s: &Arc<WorkerSettings>,
        a: Assignment,
    ) -> Result<(), (Refused, RunId)> {
        let run = RunId {
            epoch: a.epoch,
            job: a.job_id.clone(),
            incarnation: a.incarnation,
            shard: a.shard,
            attempt: a.attempt,
        };
        let mut sh = self.lock();
        let actions = match sh.session.assigned(run.clone(), a.ack_first, a.priority) {
            Ok(actions) => actions,
            Err(refused) => return Err((refused, run)),
        };
        sh.waiting.insert(run, a);
        self.apply(sh, actions, s);
        Ok(())
    }

    /// The master acknowledged a run's `Started`.
    pub(super) fn acked(&self, s: &Arc<WorkerSettings>, run: &RunId) {
        let mut sh = self.lock();
        let actions = sh.session.acked(run);
        self.apply(sh, actions, s);
    }

    /// The master refused a run.
    pub(super) fn refused(&self, s: &Arc<WorkerSettings>, run: &RunId) {
        let mut sh = self.lock();
        let actions = sh.session.refused(run);
        self.apply(sh, actions, s);
    }

    /// The master stopped a run.
    pub(super) fn stop(&self, s: &Arc<WorkerSettings>, run: &RunId) {
        let mut sh = self.lock();
        let actions = sh.session.stop(run);
        self.apply(sh, actions, s);
    }

    /// The node drains.
    pub(super) fn drain(&self, s: &Arc<WorkerSettings>) {
        let mut sh = self.lock();
        let actions = sh.session.drain();
        self.apply(sh, actions, s);
    }

    /// Whether the node drains.
    pub(super) fn draining(&self) -> bool {
        self.lock().session.draining()
    }

    /// Runs holding a slot.
    pub(super) fn in_slots(&self) -> usize {
        self.lock().session.in_slots()
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic under the lock (none is expected: no user code runs
    // there) leaves the session as it was between two decisions.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Carries out the session's actions; `report` is the finished run's.
    fn apply(&mut self, actions: Vec<Action>, mut report: Option<ShardReport>) -> After {
        let mut after = After::default();
        for action in actions {
            match action {
                Action::SendStarted(run) => {
                    let Some(a) = self.waiting.get(&run) else {
                        continue;
                    };
                    let started = FromWorker::Started {
                        epoch: a.epoch,
                        job_id: run.job.clone(),
                        incarnation: run.incarnation,
                        shard: run.shard,
                        attempt: run.attempt,
                    };
                    self.asked.insert(run, Instant::now());
                    self.send(started);
                }
                Action::Run(run) => {
                    // The slot's wait for the master's round trip.
                    if let Some(at) = self.asked.remove(&run) {
                        metrics::histogram!(m::START_WAIT_SECONDS)
                            .record(at.elapsed().as_secs_f64());
                    }
                    if let Some(a) = self.waiting.remove(&run) {
                        let cancel = Cancel::default();
                        self.running.insert(run.clone(), cancel.clone());
                        after.starts.push((run, a, cancel));
                    }
                }
                Action::Cancel(run) => {
                    if let Some(cancel) = self.running.get(&run) {
                        tracing::debug!(job = %run.job, shard = %run.shard, "stopping a run its master no longer wants");
                        cancel.cancel();
                    }
                }
                Action::SendReport(_) => {
                    if let Some(r) = report.take() {
                        self.send(FromWorker::Report(r));
                    }
                }
                Action::Forget(run) => {
                    self.waiting.remove(&run);
                    self.asked.remove(&run);
                    let ours = |r: &mut ShardReport| {
                        (&r.job_id, r.incarnation, r.shard, r.attempt)
                            == (&run.job, run.incarnation, run.shard, run.attempt)
                    };
                    if let Some(name) = report.take_if(ours).and_then(|r| r.output_object) {
                        after.orphan = Some(name);
                    }
                }
                Action::SendUnstarted(run) => self.send(FromWorker::Unstarted(RunRef::of(run))),
                Action::SendDraining => self.send(FromWorker::Draining),
                Action::SendDrained => self.send(FromWorker::Drained),
            }
        }
        after
    }

    fn send(&mut self, frame: FromWorker) {
        if self.link.as_ref().is_some_and(|link| !link.push(frame)) {
            self.link = None;
        }
    }
}

/// A slot's thread: runs what it is given, then what the session starts
/// next, until the worker's slots are dropped.
fn slot(
    s: &Arc<WorkerSettings>,
    shared: &Mutex<Shared>,
    rx: &crossbeam_channel::Receiver<Run>,
    runs: &crossbeam_channel::Sender<Run>,
) {
    let mut next: Option<Start> = None;
    loop {
        let (run, a, cancel) = match next.take() {
            Some(r) => r,
            None => match rx.recv() {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => return,
            },
        };
        let report = execute(s, a, cancel);
        let after = {
            let mut sh = lock(shared);
            sh.running.remove(&run);
            let actions = sh.session.finished(&run);
            sh.apply(actions, Some(report))
        };
        let mut starts = after.starts.into_iter();
        // The first run started goes on here at once; any other (a slot
        // freed for more than one) to whichever slot is free.
        next = starts.next();
        for r in starts {
            let _ = runs.send(Some(r));
        }
        delete_orphan(s, after.orphan);
    }
}

/// Deletes the output of a run whose report goes to no master.
fn delete_orphan(s: &Arc<WorkerSettings>, orphan: Option<String>) {
    let Some(name) = orphan else {
        return;
    };
    let store = s.store.clone();
    // On the store's own runtime; nothing waits for it.
    std::thread::spawn(move || {
        if let Err(e) = futures::executor::block_on(store.delete(&name)) {
            tracing::warn!(object = %name, error = %e, "cannot delete the output of a run that outlived its link");
        }
    });
}

/// Runs one shard here and builds its report; a big output goes to the
/// store under a name no other run uses.
fn execute(s: &WorkerSettings, a: Assignment, cancel: Cancel) -> ShardReport {
    let (epoch, job_id, shard, attempt) = (a.epoch, a.job_id.clone(), a.shard, a.attempt);
    let incarnation = a.incarnation;
    let n = a.tasks.len() as u64;
    let started = Instant::now();
    let env = RunEnv {
        node_id: s.node_id.clone(),
        data_dir: s.data_dir.clone(),
        store: Some(s.store.clone()),
        cancel,
    };
    let indexes: Vec<u64> = a.tasks.iter().map(|(i, _)| *i).collect();
    let job = s.registry.get(&a.job_name);
    let label = if job.is_some() {
        a.job_name.clone()
    } else {
        "unknown".to_string()
    };
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        job.map(|job| job.run_shard(&a.job_id, a.attempt, a.tasks, &env))
    }));
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
            format!("unknown job type {:?} on this worker", a.job_name),
            true,
        ),
        Err(_) => fail_all("shard runner failed: it panicked".to_string(), true),
    };
    let mut output_object = None;
    if output.len() > INLINE_LIMIT {
        let name =
            Store::shard_output_name((&job_id, incarnation), &shard.to_string(), epoch, attempt);
        let put = match name {
            Ok(name) => {
                futures::executor::block_on(s.store.put_new(&name, std::mem::take(&mut output)))
                    .map(|()| name)
            }
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
    metrics::counter!(m::TASKS_RUN, "job_type" => label.clone()).increment(n);
    metrics::histogram!(m::SHARD_SECONDS, "job_type" => label)
        .record(started.elapsed().as_secs_f64());
    ShardReport {
        epoch,
        job_id,
        incarnation,
        shard,
        attempt,
        output: ByteBuf::from(output),
        failures,
        output_object,
    }
}
