//! The master supervisor: recovers every unfinished job from ZooKeeper,
//! publishes itself, then runs the scheduler: shards to workers over QUIC,
//! reports committed by fenced transactions, results reduced and stored.
//!
//! A shell: where shards go is decided by [`Scheduler`], what commits add up
//! to and when a job finishes by [`Ledger`]; this actor performs their
//! commands. Here: its life (takeover, publication, gauges, collection),
//! commits, merges and finishes. [`links`] handles its workers; each client
//! request has a file of its own: [`submit`], [`status`] (`GetStatus`,
//! `GetJob`), [`fetch`], [`cancel`], [`watching`] (`WatchJob`, progress
//! pushed); [`creating`] runs a work queue's job while its create waits;
//! [`load`] reads jobs back after a failover; [`gateway`] owns the
//! streams a node accepts (worker links, submissions, watches, requests).

mod access;
mod cancel;
mod commits;
mod creating;
mod driver;
mod fairness;
mod fetch;
mod limits;
mod links;
mod load;
mod status;
mod streaming;
mod submit;
mod watching;

pub(crate) use access::Authorize;
use links::Registered;
pub(crate) use links::{Report, Started, Unstarted, WorkerDrain, WorkerJoined, WorkerLeft};
pub(crate) use streaming::stream_job;
pub(crate) use submit::Submit;
pub(crate) use watching::{MarkFetched, Watch};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::StreamExt;
use serde_bytes::ByteBuf;
use tokio::sync::watch;

use super::{Alive, Fatal, Stop};
use crate::audit::{Audit, Event};
use crate::coord::{
    Connection, CoordError, JobStatus, LeaderStore, OutputRef, StoredJob, WorkerInfo,
};
use crate::core::job::{Retention, Stored};
use crate::core::master::{Event as CoreEvent, MasterCore, Phase};
use crate::core::ShardKey;
use crate::metrics as m;
use crate::registry::{Accumulator, Registry};
use crate::wire::{ErrorKind, Reply, Request};

/// What the master holds of a running job besides its accounts (in the
/// [`Ledger`]) and its shards (in the [`Scheduler`]).
struct JobRuntime {
    stored: StoredJob,
    tasks: Arc<Vec<ByteBuf>>,
    /// The merged result so far. Merging runs on the blocking pool (a big
    /// partial result takes milliseconds), never on the master's arbiter,
    /// which also drives the ZooKeeper session; but a partial of at most
    /// [`SMALL_MERGE`] bytes is merged where it arrives, as is the result
    /// of a job whose partials were all that small encoded: a work queue's
    /// one-task job would otherwise hand two threads of the pool a few
    /// bytes each.
    acc: Arc<std::sync::Mutex<Accumulator>>,
    /// Bytes of partials merged into `acc` on the arbiter; `usize::MAX`
    /// once any was merged on the blocking pool (or before a takeover).
    acc_bytes: usize,
    /// Its committed shards in the order this master learned of them (the
    /// recovered ones first), with the commit record that holds each: what
    /// a stream sends, by position.
    commit_log: Vec<(ShardKey, Arc<str>)>,
    /// The log's length, for the streams that wait for more; dropped with
    /// the job, which tells them that it left this master's memory.
    commits: watch::Sender<usize>,
    /// The inline outputs of a streamed job's latest commits, by log
    /// position (bounded: [`RECENT_OUTPUTS`] entries and bytes), so that a
    /// stream that keeps up needs no ZooKeeper read per shard.
    recent: std::collections::VecDeque<(usize, Option<Arc<Vec<u8>>>)>,
    recent_bytes: usize,
    /// Scheduled while its create waits ([`creating`]): its writes wait
    /// too.
    creating: Option<creating::Creating>,
    /// Its fairness key (its record's, kept: every assignment's wait is
    /// recorded under it, if it has a weight).
    fairness_key: String,
}

/// Most commits, and bytes, whose inline outputs a streamed job keeps in
/// memory for its streams.
const RECENT_OUTPUTS: (usize, usize) = (4096, 16 << 20);

/// Most bytes of inline outputs all streamed jobs keep together: a job
/// whose output would go past it keeps fewer of its own (its streams read
/// the others from ZooKeeper).
const RECENT_OUTPUTS_TOTAL: usize = 64 << 20;

/// Partials (and, in all, a job's partials) up to this size are merged,
/// and such a job's result encoded, on the master's arbiter.
const SMALL_MERGE: usize = 16 * 1024;

impl JobRuntime {
    fn new(stored: StoredJob, tasks: Arc<Vec<ByteBuf>>, acc: Accumulator) -> Self {
        JobRuntime {
            fairness_key: stored.record.fairness_key(),
            stored,
            tasks,
            acc: Arc::new(std::sync::Mutex::new(acc)),
            acc_bytes: 0,
            commit_log: Vec::new(),
            commits: watch::channel(0).0,
            recent: std::collections::VecDeque::new(),
            recent_bytes: 0,
            creating: None,
        }
    }

    /// A streamed job's inline output at log position `at`, if kept.
    fn recent_output(&self, at: usize) -> Option<Arc<Vec<u8>>> {
        let first = self.recent.front()?.0;
        let (pos, bytes) = self.recent.get(at.checked_sub(first)?)?;
        if *pos == at {
            bytes.clone()
        } else {
            None
        }
    }

    /// Keeps a streamed job's inline output for its streams, in at most
    /// `room` bytes of its own.
    /// (One entry per position, `None` for an output in the store, so
    /// that positions stay contiguous.)
    fn keep_output(&mut self, at: usize, output: &OutputRef, room: usize) {
        if !self.stored.record.options.stream {
            return;
        }
        let bytes = match output {
            OutputRef::Inline(bytes) => Some(Arc::new(bytes.to_vec())),
            OutputRef::Object(_) | OutputRef::File(_) => None,
        };
        self.recent_bytes += bytes.as_ref().map_or(0, |b| b.len());
        self.recent.push_back((at, bytes));
        let most = RECENT_OUTPUTS.1.min(room);
        while self.recent.len() > RECENT_OUTPUTS.0 || self.recent_bytes > most {
            match self.recent.pop_front() {
                Some((_, b)) => self.recent_bytes -= b.map_or(0, |b| b.len()),
                None => break,
            }
        }
    }

    /// A shard's commit is durable: streams may send it.
    fn logged(&mut self, key: ShardKey, at: Arc<str>) {
        self.commit_log.push((key, at));
        self.commits.send_replace(self.commit_log.len());
    }
}

/// A worker's link, as the driver holds it (the core knows the rest).
struct Link {
    /// Its writer's queue (bounded: a worker that falls a whole queue
    /// behind is dropped, as one whose link broke).
    tx: crate::transport::Outbox<crate::wire::ToWorker>,
    id: u64,
    /// When the worker last said something (connected, started, reported).
    last_seen: std::time::Instant,
    /// The link's protocol version.
    version: u32,
}

/// Settings the master needs from its node.
#[derive(Clone)]
pub(crate) struct MasterSettings {
    pub node_id: String,
    pub addr: String,
    /// This node's build ([`crate::build_id`]), published with `/master`.
    pub build: String,
    pub registry: Registry,
    pub retention: Duration,
    /// Most fetched jobs kept, however young.
    pub retention_max_jobs: usize,
    /// Most bytes of tasks that unfinished jobs may hold in ZooKeeper.
    pub max_queued_bytes: usize,
    /// The node's audit log.
    pub audit: Audit,
    pub route: watch::Sender<Option<Addr<Master>>>,
    pub fatal: Fatal,
    /// The node's served handshakes, for the master's standing.
    pub handshakes: crate::transport::Handshakes,
    pub _alive: Alive,
}

pub(crate) struct Master {
    /// When this node won the election (for the time-to-serving figure).
    elected: std::time::Instant,
    store: LeaderStore,
    settings: MasterSettings,
    /// Every decision about workers, runs, commits, merges and finishes.
    core: MasterCore,
    /// A committed shard's output, from its commit's answer to the merge
    /// the core asks for it.
    committed_output: Option<((String, ShardKey), OutputRef)>,
    jobs: HashMap<String, JobRuntime>,
    links: HashMap<String, Link>,
    registered: BTreeMap<String, WorkerInfo>,
    /// When the gauges were last refreshed, and whether a refresh is due.
    gauges_at: Option<std::time::Instant>,
    gauges_pending: bool,
    gc_running: bool,
    /// When the collector's last pass started.
    gc_started: std::time::Instant,
    /// Jobs whose fetch mark became durable since the collector's last
    /// pass started, and when: a pass that started before a mark may
    /// have read the record unmarked, and must not cache it as unfetched.
    marked: HashMap<String, std::time::Instant>,
    /// Which stored jobs the collector deletes, and when.
    retention: Retention,
    /// Records of retained jobs (done and fetched, or cancelled: they
    /// change no more), read once by the collector.
    retained: HashMap<String, StoredJob>,
    /// Records of done jobs not fetched yet (they change only by a fetch
    /// here, which drops them from this cache), read once by the
    /// collector.
    unfetched: HashMap<String, StoredJob>,
    /// When the core's next `Tick` is due, if a timer is set for it.
    wake_at: Option<std::time::Instant>,
    /// Clients watching jobs.
    watchers: watching::Watchers,
    /// Bytes of inline outputs the streamed jobs keep (at most
    /// [`RECENT_OUTPUTS_TOTAL`]).
    recent_total: usize,
}

/// The master's ZooKeeper session lost or regained its connection.
#[derive(Message)]
#[rtype(result = "()")]
struct Connected(bool);

impl Handler<Connected> for Master {
    type Result = ();
    fn handle(&mut self, msg: Connected, ctx: &mut Context<Self>) {
        // Disconnected: we may not be master any more; expiry will tell.
        self.handle_core(ctx, CoreEvent::Connected(msg.0));
    }
}

impl Master {
    /// A master for `store`, whose lock was won at `elected`.
    pub(crate) fn new(
        store: LeaderStore,
        settings: MasterSettings,
        elected: std::time::Instant,
    ) -> Self {
        let retention = Retention::new(settings.retention, settings.retention_max_jobs);
        let core = MasterCore::new(store.epoch(), &settings.node_id, settings.max_queued_bytes);
        Master {
            elected,
            store,
            settings,
            core,
            committed_output: None,
            jobs: HashMap::new(),
            links: HashMap::new(),
            registered: BTreeMap::new(),
            gauges_at: None,
            gauges_pending: false,
            gc_running: false,
            gc_started: std::time::Instant::now(),
            marked: HashMap::new(),
            retention,
            retained: HashMap::new(),
            unfetched: HashMap::new(),
            wake_at: None,
            watchers: watching::Watchers::default(),
            recent_total: 0,
        }
    }

    fn fail(&mut self, ctx: &mut Context<Self>, err: &CoordError) {
        tracing::error!(error = %err, epoch = self.store.epoch(), "master stepping down");
        let _ = self
            .settings
            .fatal
            .try_send(crate::actors::Restart::Failed(format!(
                "master stepped down: {err}"
            )));
        ctx.stop();
    }

    /// Steps down if every other worker refuses this master's certificate,
    /// or it refuses every other worker for not sharing its store
    /// (`core::standing` has the rule). `store_refusals_before`: the
    /// node's store refusals when this master started.
    fn check_standing(
        &mut self,
        standing: &mut crate::core::standing::Standing,
        store_refusals_before: u64,
        ctx: &mut Context<Self>,
    ) {
        use crate::core::standing::{Sample, Verdict};
        let own = &self.settings.node_id;
        let handshakes = &self.settings.handshakes;
        let sample = Sample {
            refused_us: handshakes.refused_us(),
            completed_by_others: handshakes.completed_by_others(),
            registered_others: self.registered.keys().filter(|id| *id != own).count(),
            linked_others: self.links.keys().filter(|id| *id != own).count(),
            own_worker: self.registered.contains_key(own),
        };
        let Verdict::StepDown { refusals, workers } =
            standing.observe(std::time::Instant::now(), sample)
        else {
            return;
        };
        let grace = standing.grace().as_secs();
        let reason = if self.settings.handshakes.store_refusals() > store_refusals_before {
            format!(
                "every other worker's node stores elsewhere than this master ({workers} \
                 registered, none linked, {refusals} refusals and no other peer's handshake in \
                 {grace} s): check this node's --store: it must name the store of the other \
                 nodes (the refusals above name both); it stands for election again after a pause"
            )
        } else {
            format!(
                "every other worker refused this master's certificate ({workers} registered, \
                 none linked, {refusals} refusals and no other peer's handshake in {grace} s): \
                 check this node's --certs: its ca.pem must be the cluster CA's, and its \
                 node.pem issued by it; it stands for election again after a pause"
            )
        };
        tracing::error!(epoch = self.store.epoch(), "master stepping down: {reason}");
        metrics::counter!(m::STEP_DOWNS).increment(1);
        self.audit(Event::SteppedDown {
            refusals,
            workers: workers as u64,
        });
        let _ = self
            .settings
            .fatal
            .try_send(crate::actors::Restart::SteppedDown(reason));
        ctx.stop();
    }

    /// Refreshes the master's gauges, at most once per [`GAUGE_PERIOD`]:
    /// the per-worker gauges cost a registry lookup per worker, which at a
    /// thousand workers must not happen on every report.
    fn update_gauges(&mut self, ctx: &mut Context<Self>) {
        let now = std::time::Instant::now();
        if self.gauges_at.is_some_and(|t| now - t < GAUGE_PERIOD) {
            if !self.gauges_pending {
                self.gauges_pending = true;
                ctx.run_later(GAUGE_PERIOD, |act, ctx| {
                    act.gauges_pending = false;
                    act.update_gauges(ctx);
                });
            }
            return;
        }
        self.gauges_at = Some(now);
        let workers = self
            .links
            .keys()
            .filter(|k| self.core.has_worker(k))
            .count();
        metrics::gauge!(m::WORKERS).set(workers as f64);
        metrics::gauge!(m::SHARDS_QUEUED).set(self.core.queued() as f64);
        for (p, n) in self.core.queued_by_priority().iter().enumerate() {
            metrics::gauge!(m::SHARDS_QUEUED_BY_PRIORITY, "priority" => p.to_string())
                .set(*n as f64);
        }
        for l in self
            .limit_statuses()
            .into_iter()
            .filter(|l| l.limit.is_some())
        {
            metrics::gauge!(m::LIMIT_RUNNING, "limit" => l.key.clone()).set(f64::from(l.running));
            metrics::gauge!(m::LIMIT_WAITING, "limit" => l.key.clone())
                .set(l.waiting_shards as f64);
            metrics::counter!(m::LIMIT_THROTTLED, "limit" => l.key).absolute(l.throttled);
        }
        let oldest = self
            .core
            .oldest_waiting()
            .map_or(0.0, |(_, t)| now.saturating_duration_since(t).as_secs_f64());
        metrics::gauge!(m::OLDEST_WAITING).set(oldest);
        let (timed, next) = self.core.timed();
        metrics::gauge!(m::JOBS_SCHEDULED).set(timed as f64);
        let at = next.map_or(0.0, |t| {
            let wall = std::time::SystemTime::now() + t.saturating_duration_since(now);
            wall.duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        });
        metrics::gauge!(m::NEXT_SCHEDULED).set(at);
        metrics::gauge!(m::JOBS_RUNNING).set(self.jobs.len() as f64);
        metrics::gauge!(m::JOBS_QUARANTINED).set(self.core.quarantined().len() as f64);
        let mut in_flight = 0;
        for id in self.registered.keys() {
            let n = self.core.running_on(id);
            in_flight += n;
            metrics::gauge!(m::WORKER_IN_FLIGHT, "worker" => id.clone()).set(n as f64);
        }
        metrics::gauge!(m::SHARDS_IN_FLIGHT).set(in_flight as f64);
    }

    /// Appends to the node's audit log.
    pub(super) fn audit(&self, event: Event) {
        self.settings.audit.record(self.store.epoch(), event);
    }

    /// Takes a job's runtime out of the master (and its kept outputs out
    /// of the total).
    fn take_runtime(&mut self, job: &str) -> Option<JobRuntime> {
        let rt = self.jobs.remove(job)?;
        self.recent_total -= rt.recent_bytes;
        Some(rt)
    }

    /// One pass of the collector: list the jobs, let [`Retention`] choose
    /// (here, on the actor, so that no submission of the same id can start
    /// meanwhile: [`submit`] refuses ids being collected), then delete.
    /// A pass reads only the records it does not know: not the jobs this
    /// master runs or is loading (running, never due), not those of the
    /// retained cache (they change no more) nor of the unfetched one (they
    /// change only by a fetch here, which drops them from it). A pass
    /// costs one listing plus the reads of jobs new to it, however many
    /// jobs are queued or wait to be fetched.
    fn collect_garbage(&mut self, ctx: &mut Context<Self>) {
        if self.gc_running {
            return;
        }
        self.gc_running = true;
        // Marks older than the last pass's start are in what this pass reads.
        let last = std::mem::replace(&mut self.gc_started, std::time::Instant::now());
        self.marked.retain(|_, at| *at >= last);
        let started = self.gc_started;
        let store = self.store.clone();
        let list = async move { store.list_job_ids().await };
        ctx.spawn(list.into_actor(self).map(move |res, act, ctx| {
            let ids = match res {
                Ok(ids) => ids,
                Err(e) => return act.collector_failed(ctx, &e),
            };
            let present: HashSet<&String> = ids.iter().collect();
            act.retained.retain(|id, _| present.contains(id));
            act.unfetched.retain(|id, _| present.contains(id));
            let unknown: Vec<String> = ids
                .iter()
                .filter(|id| {
                    !act.jobs.contains_key(*id)
                        && !matches!(
                            act.core.phase(id),
                            Some(Phase::Loading { .. } | Phase::Quarantined)
                        )
                        && !act.retained.contains_key(*id)
                        && !act.unfetched.contains_key(*id)
                })
                .cloned()
                .collect();
            metrics::counter!(m::COLLECTOR_READS).increment(unknown.len() as u64);
            let store = act.store.clone();
            let read = async move { store.read_jobs_or_garbage(&unknown).await };
            ctx.spawn(read.into_actor(act).map(move |res, act, ctx| match res {
                Ok((fresh, garbage)) => {
                    // Not read again each pass: shown, and left alone.
                    for (job, reason) in garbage {
                        act.quarantine(ctx, job, None, reason);
                    }
                    act.collect_pass(ctx, fresh, started)
                }
                Err(e) => act.collector_failed(ctx, &e),
            }));
        }));
    }

    /// A collector pass that failed: logged, or the master steps down.
    fn collector_failed(&mut self, ctx: &mut Context<Self>, e: &CoordError) {
        self.gc_running = false;
        if e.is_session_end() {
            return self.fail(ctx, e);
        }
        tracing::warn!(error = %e, "garbage collection failed");
    }

    /// The rest of a collector pass, with the records it read (`fresh`):
    /// each cached by what it is, then those due deleted.
    fn collect_pass(
        &mut self,
        ctx: &mut Context<Self>,
        fresh: Vec<StoredJob>,
        started: std::time::Instant,
    ) {
        let mut others = Vec::new();
        for j in fresh {
            // Known here since they were read (ended, or just submitted):
            // what this master holds of them is newer.
            let newer = self.jobs.contains_key(&j.id)
                || self.retained.contains_key(&j.id)
                || self.unfetched.contains_key(&j.id);
            if newer {
                continue;
            }
            match j.record.stored() {
                Stored::Retained => {
                    self.retained.insert(j.id.clone(), j);
                }
                // Read before its fetch mark was durable, maybe: the
                // next pass reads it again.
                Stored::Unfetched if self.marked.get(&j.id).is_some_and(|at| *at >= started) => {}
                Stored::Unfetched => {
                    self.unfetched.insert(j.id.clone(), j);
                }
                // Unfinished, and not run here: scheduled (every job
                // durable in ZooKeeper ends without a failover).
                Stored::Running => {
                    self.readopt(ctx, j.id.clone());
                    others.push(j);
                }
                Stored::Writing => others.push(j),
            }
        }
        let mut fresh = others;
        let listed = pass_listing(&mut fresh, &self.retained);
        let due: HashSet<String> = self
            .retention
            .due(&listed, self.core.ledger(), std::time::Instant::now())
            .into_iter()
            .collect();
        let victims = pass_victims(fresh, &mut self.retained, &due);
        if victims.is_empty() {
            self.gc_running = false;
            return;
        }
        self.handle_core(ctx, CoreEvent::Collecting(due.into_iter().collect()));
        let store = self.store.clone();
        let sweep: Vec<String> = victims
            .iter()
            .filter(|j| self.core.may_orphan(&j.id))
            .map(|j| j.id.clone())
            .collect();
        let collect = async move {
            store
                .collect(&victims, &sweep)
                .await
                .map(|()| victims.len())
        };
        ctx.spawn(collect.into_actor(self).map(move |res, act, ctx| {
            act.gc_running = false;
            let ok = res.is_ok();
            match res {
                Err(e) if e.is_session_end() => return act.fail(ctx, &e),
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
                Ok(n) => tracing::debug!(jobs = n, "removed collected jobs from ZooKeeper"),
            }
            act.handle_core(ctx, CoreEvent::Collected { ok });
        }));
    }

    fn watch_workers(&self, ctx: &mut Context<Self>) {
        let addr = ctx.address();
        let mut workers = Box::pin(self.store.workers());
        let watch = async move {
            while let Some(registered) = workers.next().await {
                addr.do_send(Registered(registered?));
            }
            Ok(())
        };
        ctx.spawn(
            watch
                .into_actor(self)
                .map(|res: Result<(), CoordError>, act, ctx| {
                    if let Err(e) = res {
                        act.fail(ctx, &e);
                    }
                }),
        );
    }
}

/// Shortest interval between two refreshes of the master's gauges.
const GAUGE_PERIOD: Duration = Duration::from_millis(200);

impl Actor for Master {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        metrics::gauge!(m::NODE_ROLE, "role" => "master").set(1.0);
        metrics::gauge!(m::EPOCH).set(self.store.epoch() as f64);
        metrics::counter!(m::ELECTIONS_WON).increment(1);
        let store = self.store.clone();
        let node_id = self.settings.node_id.clone();
        let addr = self.settings.addr.clone();
        let build = self.settings.build.clone();
        let recovery = async move {
            let started = std::time::Instant::now();
            // Submissions that never got acknowledged are dropped; the client retries them.
            let (jobs, garbage) = store.list_jobs().await?;
            let listed = started.elapsed();
            let (writing, jobs): (Vec<StoredJob>, Vec<StoredJob>) = jobs
                .into_iter()
                .partition(|job| job.record.status == JobStatus::Writing);
            let inherited: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
            let writing_ids: Vec<String> = writing.iter().map(|j| j.id.clone()).collect();
            store.collect(&writing, &writing_ids).await?;
            let pending: Vec<StoredJob> = jobs
                .into_iter()
                .filter(|job| job.record.status == JobStatus::Accepted)
                .collect();
            // Read before anything is scheduled: a record that does not
            // decode is said, not a reason to stop.
            let weights = store.read_fairness().await?;
            let limits = store.read_limits().await?;
            store.publish(&node_id, &addr, &build).await?;
            tracing::debug!(
                list_ms = listed.as_millis() as u64,
                publish_ms = (started.elapsed() - listed).as_millis() as u64,
                "takeover steps"
            );
            let settings = (weights, limits);
            Ok::<_, CoordError>((pending, inherited, garbage, settings, started.elapsed()))
        };
        // `wait`: no message is handled before the takeover is done. The
        // unfinished jobs are then read in the background while the master
        // serves (see `load_jobs`), so its time to serving does not grow
        // with the work left behind.
        ctx.wait(recovery.into_actor(self).map(|res, act, ctx| match res {
            Ok((pending, inherited, garbage, (weights, limits), took)) => {
                act.settings_read(ctx, weights, limits);
                act.handle_core(ctx, CoreEvent::Inherited(inherited));
                for (job, reason) in garbage {
                    act.quarantine(ctx, job, None, reason);
                }
                tracing::info!(
                    epoch = act.store.epoch(),
                    jobs = pending.len(),
                    recovery_ms = took.as_millis() as u64,
                    since_election_ms = act.elected.elapsed().as_millis() as u64,
                    "serving as master"
                );
                act.audit(Event::Elected);
                act.load_jobs(ctx, pending);
                let _ = act.settings.route.send(Some(ctx.address()));
                act.watch_workers(ctx);
                let mut states = act.store.connections();
                let addr = ctx.address();
                ctx.spawn(
                    async move {
                        loop {
                            match states.changed().await {
                                Connection::Disconnected => addr.do_send(Connected(false)),
                                Connection::Connected => addr.do_send(Connected(true)),
                                Connection::Ended { .. } => return,
                            }
                        }
                    }
                    .into_actor(act),
                );
                ctx.run_interval(Duration::from_secs(1), |act, ctx| act.collect_garbage(ctx));
                let mut standing = crate::core::standing::Standing::new(
                    std::time::Instant::now(),
                    crate::core::standing::MIN_GRACE,
                );
                let store_refusals_before = act.settings.handshakes.store_refusals();
                ctx.run_interval(Duration::from_secs(1), move |act, ctx| {
                    act.check_standing(&mut standing, store_refusals_before, ctx)
                });
                // Gauges are set again while nothing happens: a series not
                // set for `GAUGE_IDLE` leaves the metrics page.
                ctx.run_interval(m::GAUGE_IDLE / 4, |act, ctx| act.update_gauges(ctx));
                // Stragglers and hung shards get a copy on another worker
                // (`SPECULATE_EVERY`): the core's timer starts with this.
                act.handle_core(ctx, CoreEvent::Tick);
            }
            Err(e) => act.fail(ctx, &e),
        }));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        metrics::gauge!(m::NODE_ROLE, "role" => "master").set(0.0);
        for g in [
            m::EPOCH,
            m::WORKERS,
            m::SHARDS_QUEUED,
            m::SHARDS_IN_FLIGHT,
            m::JOBS_RUNNING,
            m::JOBS_QUARANTINED,
        ] {
            metrics::gauge!(g).set(0.0);
        }
        for id in self.registered.keys() {
            metrics::gauge!(m::WORKER_IN_FLIGHT, "worker" => id.clone()).set(0.0);
        }
        let _ = self.settings.route.send(None);
        // Wake the next candidate now rather than when this session closes.
        let store = self.store.clone();
        actix::spawn(async move { store.abdicate().await });
        tracing::info!(epoch = self.store.epoch(), "master stopped");
        self.audit(Event::MasterStopped);
    }
}

impl Handler<Stop> for Master {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Any other client request (`GetJob`, `GetStatus`, `FetchResult`, `Cancel`).
#[derive(Message)]
#[rtype(result = "Reply")]
pub(crate) struct ClientRequest {
    pub frame: Request,
    /// Who asks: listings show only what it may see.
    pub peer: crate::transport::PeerId,
}

impl Handler<ClientRequest> for Master {
    type Result = ResponseActFuture<Self, Reply>;
    fn handle(&mut self, msg: ClientRequest, ctx: &mut Context<Self>) -> Self::Result {
        match msg.frame {
            Request::GetStatus => Box::pin(fut::ready(self.status(&msg.peer))),
            Request::GetJob { job_id } => self.get_job(job_id, msg.peer),
            Request::FetchResult { job_id } => self.fetch(ctx, job_id, msg.peer),
            Request::Cancel { job_id } => self.cancel(ctx, job_id, msg.peer),
            Request::PlanJob {
                job_name,
                task_count,
                shard_size,
                shape,
            } => Box::pin(fut::ready(self.plan_job(
                &job_name,
                task_count,
                shard_size,
                shape.as_deref(),
            ))),
            Request::ListJobs(query) => self.list_jobs(&msg.peer, query),
            Request::SetFairness { key, weight } => self.set_fairness(&msg.peer, key, weight),
            Request::ListFairness => Box::pin(fut::ready(self.list_fairness(&msg.peer))),
            Request::SetLimit { key, limit } => self.set_limit(&msg.peer, key, limit),
            Request::ListLimits => Box::pin(fut::ready(Reply::Limits(crate::wire::LimitList {
                limits: self.limit_statuses(),
            }))),
            other => Box::pin(fut::ready(error(
                ErrorKind::Unsupported,
                format!("unexpected request {}", other.name()),
            ))),
        }
    }
}

impl Master {
    /// A running job's registered name (a bounded label: the master
    /// accepts only the job types it registers).
    fn job_name(&self, job: &str) -> String {
        self.jobs.get(job).map_or_else(
            || "unknown".to_string(),
            |rt| rt.stored.record.job_name.clone(),
        )
    }
}

/// Answers a request with what `work` comes to; a ZooKeeper or store error
/// becomes an `Error` frame saying what went wrong.
fn answer(
    master: &Master,
    work: impl std::future::Future<Output = Result<Reply, CoordError>> + 'static,
) -> ResponseActFuture<Master, Reply> {
    Box::pin(
        work.into_actor(master)
            .map(|res, _, _| res.unwrap_or_else(|e| failed(&e))),
    )
}

fn error(kind: ErrorKind, message: impl std::fmt::Display) -> Reply {
    Reply::error(kind, message)
}

/// The `Error` frame of a ZooKeeper or store failure: nothing was done
/// (a write whose outcome is unknown is answered apart, where it is
/// made), so the request may be sent again.
fn failed(e: &CoordError) -> Reply {
    error(ErrorKind::Unavailable, e)
}

/// Asks the master for its epoch.
#[derive(Message)]
#[rtype(result = "u64")]
pub(crate) struct GetEpoch;

impl Handler<GetEpoch> for Master {
    type Result = u64;
    fn handle(&mut self, _: GetEpoch, _: &mut Context<Self>) -> u64 {
        self.store.epoch()
    }
}

/// What a collector pass chooses from: the jobs it read that are not
/// retained (`fresh`), and the cache of retained ones. A job in both ended
/// during the pass and is in the cache as written: its fresh record, read
/// before its end, is stale and goes, so that every job is listed once
/// (listed twice, it was a victim twice, and its second deletion a
/// `NoNode` that sent its whole chunk one delete at a time).
fn pass_listing(
    fresh: &mut Vec<StoredJob>,
    retained: &HashMap<String, StoredJob>,
) -> Vec<(String, Stored)> {
    fresh.retain(|j| !retained.contains_key(&j.id));
    fresh
        .iter()
        .map(|j| (j.id.clone(), j.record.stored()))
        .chain(retained.keys().map(|id| (id.clone(), Stored::Retained)))
        .collect()
}

/// The jobs `due` to be collected, each once: from `fresh`, and out of the
/// cache (read again if their deletion fails).
fn pass_victims(
    fresh: Vec<StoredJob>,
    retained: &mut HashMap<String, StoredJob>,
    due: &HashSet<String>,
) -> Vec<StoredJob> {
    let mut victims: Vec<StoredJob> = fresh.into_iter().filter(|j| due.contains(&j.id)).collect();
    victims.extend(due.iter().filter_map(|id| retained.remove(id)));
    victims
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::JobRecord;
    use crate::wire::JobOptions;

    #[test]
    fn a_job_that_ended_during_a_collector_pass_is_listed_and_collected_once() {
        let job = |id: &str, status: JobStatus, fetched: bool| {
            let mut stored = runtime(false).stored;
            stored.id = id.into();
            stored.record.status = status;
            stored.record.fetched_ms = fetched.then_some(1);
            stored
        };
        // "x" was read running, then ended fetched: in the cache as written.
        let mut fresh = vec![
            job("x", JobStatus::Accepted, false),
            job("y", JobStatus::Done, false),
        ];
        let mut retained: HashMap<String, StoredJob> = [
            ("x", job("x", JobStatus::Done, true)),
            ("z", job("z", JobStatus::Cancelled, true)),
        ]
        .into_iter()
        .map(|(id, j)| (id.to_string(), j))
        .collect();
        let mut listed = pass_listing(&mut fresh, &retained);
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            listed,
            vec![
                ("x".to_string(), Stored::Retained),
                ("y".to_string(), Stored::Unfetched),
                ("z".to_string(), Stored::Retained),
            ]
        );
        let due: HashSet<String> = ["x", "z"].iter().map(|s| s.to_string()).collect();
        let victims = pass_victims(fresh, &mut retained, &due);
        let mut ids: Vec<&str> = victims.iter().map(|j| j.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["x", "z"], "each once");
        let x = victims
            .iter()
            .find(|j| j.id == "x")
            .map(|j| j.record.status);
        assert_eq!(
            x,
            Some(JobStatus::Done),
            "the record as written, not the stale one"
        );
        assert!(retained.is_empty(), "chosen: out of the cache");
    }

    fn runtime(stream: bool) -> JobRuntime {
        let record = JobRecord {
            job_name: "j".into(),
            options: JobOptions {
                shard_size: 1,
                max_attempts: 1,
                shard_timeout_ms: None,
                stream,
                priority: 0,
                fairness_key: None,
                not_before_ms: None,
                under: Vec::new(),
            },
            tasks_total: 10_000,
            batches: 1,
            status: JobStatus::Accepted,
            created_ms: 0,
            fetched_ms: None,
            digest: None,
            owner: None,
            inline: None,
            result: None,
            incarnation: 1,
            shape: None,
        };
        let stored = StoredJob {
            id: "j".into(),
            record,
            version: 0,
        };
        JobRuntime::new(stored, Arc::new(Vec::new()), Box::new(()))
    }

    fn commit(rt: &mut JobRuntime, index: u32, output: OutputRef) {
        rt.keep_output(rt.commit_log.len(), &output, usize::MAX);
        let key = ShardKey {
            index,
            generation: 0,
        };
        rt.logged(key, "c1.1.0".into());
    }

    /// Issue 29, finding 6: streamed jobs' kept outputs are bounded
    /// across jobs, not only per job: a job keeps what the others leave.
    #[test]
    fn a_streamed_job_keeps_outputs_in_the_room_the_others_leave() {
        let mut rt = runtime(true);
        for i in 0..10 {
            rt.keep_output(i, &OutputRef::Inline(ByteBuf::from(vec![1; 100])), 250);
            assert!(rt.recent_bytes <= 250, "{}", rt.recent_bytes);
        }
        assert_eq!(rt.recent.len(), 2, "the latest two fit");
        assert!(rt.recent_output(9).is_some() && rt.recent_output(7).is_none());
        rt.keep_output(10, &OutputRef::Inline(ByteBuf::from(vec![1; 100])), 0);
        assert_eq!(rt.recent_bytes, 0, "no room: nothing kept");
    }

    #[test]
    fn a_streamed_jobs_latest_inline_outputs_are_kept_by_position() {
        let mut rt = runtime(true);
        // Two recovered commits come first, without outputs kept.
        for i in 0..2 {
            let key = ShardKey {
                index: i,
                generation: 0,
            };
            rt.logged(key, "c1.1.0".into());
        }
        commit(&mut rt, 2, OutputRef::Inline(ByteBuf::from(vec![2])));
        commit(&mut rt, 3, OutputRef::Object("o".into()));
        commit(&mut rt, 4, OutputRef::Inline(ByteBuf::from(vec![4])));
        assert_eq!(rt.recent_output(0), None);
        assert_eq!(rt.recent_output(2).as_deref(), Some(&vec![2]));
        assert_eq!(rt.recent_output(3), None, "in the store: read from there");
        assert_eq!(rt.recent_output(4).as_deref(), Some(&vec![4]));
        assert_eq!(rt.recent_output(5), None);
        // Bounded: the oldest go first.
        for i in 5..(5 + RECENT_OUTPUTS.0 as u32) {
            commit(&mut rt, i, OutputRef::Inline(ByteBuf::from(vec![1])));
        }
        assert_eq!(rt.recent.len(), RECENT_OUTPUTS.0);
        assert_eq!(rt.recent_output(4), None);
        let last = rt.commit_log.len() - 1;
        assert_eq!(rt.recent_output(last).as_deref(), Some(&vec![1]));
        assert_eq!(rt.recent_bytes, RECENT_OUTPUTS.0);
    }

    #[test]
    fn a_job_not_streamed_keeps_no_outputs() {
        let mut rt = runtime(false);
        commit(&mut rt, 0, OutputRef::Inline(ByteBuf::from(vec![0])));
        assert_eq!(rt.commit_log.len(), 1);
        assert!(rt.recent.is_empty());
        assert_eq!(rt.recent_output(0), None);
    }
}
