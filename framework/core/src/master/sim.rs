//! Deterministic simulation of the whole [`MasterCore`]: real
//! [`WorkerSession`]s over ordered links that break (a random suffix of
//! what was in flight lost), workers that join, leave, drain, re-link and
//! lie, a fake ZooKeeper whose writes apply, fail, or apply and lose their
//! answer (outcome unknown), completions in any order, merges of outputs
//! that do not decode, cancels, pauses and virtual time. Every invariant
//! is checked after every event; each seed ends with a calm phase in
//! which every job not cancelled must end, each task with exactly one
//! final outcome.
//!
//! The suite runs [`SUITE_SEEDS`] seeds; `RINGLEADER_SIM_EVENTS=N cargo
//! test -p ringleader-core master_simulation_long -- --ignored` runs
//! seeds until `N` events were simulated (the README has the command).
#![cfg(test)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::scheduler::SHORT_RUN_PREFETCH;
use crate::worker_session::{Action, WorkerSession};
use crate::PendingShard;

/// The first master's epoch; each takeover adds one.
const EPOCH: u64 = 7;
const OWN: &str = "w0";

/// Seeds the suite runs.
const SUITE_SEEDS: u64 = 200;

/// A frame from a worker to the master.
#[derive(Debug, Clone)]
enum Up {
    Started(RunId),
    Unstarted(RunId),
    Report(RunId, Vec<TaskFailure>, Output),
    Draining,
    Drained,
}

struct Worker {
    id: String,
    /// Its current link's id, if it has one.
    link: Option<u64>,
    slots: u32,
    session: WorkerSession,
    /// Master to worker, in order.
    down: VecDeque<ToWorker>,
    /// Worker to master, in order.
    up: VecDeque<Up>,
    /// Runs executing.
    running: Vec<RunId>,
    /// Task indexes of the runs it was given.
    tasks: HashMap<RunId, Vec<u64>>,
    registered: bool,
    /// Sends reports no honest worker sends.
    liar: bool,
}

/// A write the fake ZooKeeper holds, not answered yet.
#[derive(Debug, Clone)]
enum Pending {
    /// The create of a job scheduled while it waited.
    Create(String),
    Commit(RunId, Output, Vec<TaskFailure>),
    EndAlone(RunId, Vec<u8>),
    Result(Finish),
    Merge(Merge),
}

/// What a seed found and did.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    events: u64,
    jobs_done: u64,
    ended_alone: u64,
    commits: u64,
    answers_lost: u64,
    writes_failed: u64,
    impossible: u64,
    stale: u64,
    merges_failed: u64,
    links_broken: u64,
    workers_killed: u64,
    cancelled: u64,
    quarantined: u64,
    cancelled_while_loading: u64,
    collected: u64,
    takeovers: u64,
    discarded: u64,
    delayed: u64,
    delayed_started: u64,
    limited_starts: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.events += o.events;
        self.jobs_done += o.jobs_done;
        self.ended_alone += o.ended_alone;
        self.commits += o.commits;
        self.answers_lost += o.answers_lost;
        self.writes_failed += o.writes_failed;
        self.impossible += o.impossible;
        self.stale += o.stale;
        self.merges_failed += o.merges_failed;
        self.links_broken += o.links_broken;
        self.workers_killed += o.workers_killed;
        self.cancelled += o.cancelled;
        self.quarantined += o.quarantined;
        self.cancelled_while_loading += o.cancelled_while_loading;
        self.collected += o.collected;
        self.takeovers += o.takeovers;
        self.discarded += o.discarded;
        self.delayed += o.delayed;
        self.delayed_started += o.delayed_started;
        self.limited_starts += o.limited_starts;
    }
}

/// A job as the simulated clients and store know it.
struct SimJob {
    tasks: u64,
    /// Tasks per shard.
    per: u32,
    incarnation: u64,
    max_attempts: u32,
    cancelled: bool,
    done: bool,
    /// The master cannot read it: it must never run.
    unreadable: bool,
    /// Its create is durable (it was scheduled before, or after).
    created: bool,
    /// Its create failed: it never existed.
    discarded: bool,
    /// A delayed job: none of its shards may run before this.
    not_before: Option<Instant>,
    /// One of its shards was assigned.
    assigned: bool,
    /// The limits it is under.
    under: Vec<String>,
}

/// The simulation's limits: one run at a time; three, at most 50 per
/// second in bursts of 2; and one named by jobs but never set.
fn sim_limits() -> Vec<(String, Option<crate::Limit>)> {
    let rate = crate::Rate {
        n: 50,
        per: Duration::from_secs(1),
        burst: 2,
    };
    vec![
        (
            "one".into(),
            Some(crate::Limit {
                max_running: Some(1),
                rate: None,
            }),
        ),
        (
            "few".into(),
            Some(crate::Limit {
                max_running: Some(3),
                rate: Some(rate),
            }),
        ),
    ]
}

struct World {
    seed: u64,
    /// The serving master's epoch.
    epoch: u64,
    /// Commits ZooKeeper holds (applied, answered or not), first per
    /// shard: what a new master reads back.
    durable: BTreeMap<String, BTreeMap<ShardKey, crate::CommittedShard>>,
    rng: StdRng,
    now: Instant,
    core: MasterCore,
    workers: Vec<Worker>,
    next_worker: u32,
    next_link: u64,
    jobs: BTreeMap<String, SimJob>,
    next_job: u32,
    pending: Vec<Pending>,
    /// Acknowledged commits, by job and shard.
    committed: BTreeSet<(String, ShardKey)>,
    /// Commits asked for and not answered.
    committing: BTreeSet<(String, ShardKey)>,
    /// Ends (a result write or a one-write end) asked for and not
    /// answered, by job.
    ending: BTreeSet<String>,
    /// Final outcomes acknowledged, per task.
    outcomes: BTreeMap<(String, u64), u32>,
    /// Outputs of acknowledged commits, for their merges.
    outputs: HashMap<(String, ShardKey), Output>,
    /// Tasks of each shard, from the assignments.
    shard_tasks: HashMap<(String, ShardKey), Vec<u64>>,
    /// Jobs read back after the takeover, not arrived yet.
    loading: Vec<NewJob>,
    /// Faults are on.
    faults: bool,
    /// When runs under the limit `few` were placed, in the last second.
    few_starts: VecDeque<Instant>,
    stats: Stats,
}

impl World {
    fn new(seed: u64) -> Self {
        World {
            seed,
            epoch: EPOCH,
            durable: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
            now: Instant::now(),
            core: MasterCore::new(EPOCH, OWN, 1 << 30),
            workers: Vec::new(),
            next_worker: 0,
            next_link: 0,
            jobs: BTreeMap::new(),
            next_job: 0,
            pending: Vec::new(),
            committed: BTreeSet::new(),
            committing: BTreeSet::new(),
            ending: BTreeSet::new(),
            outcomes: BTreeMap::new(),
            outputs: HashMap::new(),
            shard_tasks: HashMap::new(),
            loading: Vec::new(),
            faults: true,
            few_starts: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Hands the core an event, performs its effects, checks every
    /// invariant.
    fn handle(&mut self, event: Event) {
        self.stats.events += 1;
        self.core.handle(event, self.now);
        while let Some(effect) = self.core.poll_effect() {
            self.perform(effect);
        }
        self.check();
    }

    fn perform(&mut self, effect: Effect) {
        let seed = self.seed;
        match effect {
            Effect::Send { worker, msg } => {
                let w = self.workers.iter_mut().find(|w| w.id == worker);
                let Some(w) = w.filter(|w| w.link.is_some()) else {
                    // A link that is gone takes its frames with it.
                    return;
                };
                if let ToWorker::Assign { run, tasks, .. } = &msg {
                    assert!(
                        w.registered,
                        "seed {seed}: assigned to unregistered {worker}"
                    );
                    assert_eq!(run.epoch, self.epoch);
                    let unreadable = self.jobs.get(&run.job).is_some_and(|j| j.unreadable);
                    assert!(!unreadable, "seed {seed}: {} is quarantined", run.job);
                    if let Some(j) = self.jobs.get_mut(&run.job) {
                        let early = j.not_before.filter(|t| self.now < *t);
                        assert!(
                            early.is_none(),
                            "seed {seed}: {} delayed until {early:?} ran at {:?}",
                            run.job,
                            self.now
                        );
                        if j.not_before.is_some() && !j.assigned {
                            self.stats.delayed_started += 1;
                        }
                        j.assigned = true;
                        if j.under.iter().any(|l| l == "few") {
                            // At most its burst and a second's rate
                            // started in any second.
                            let starts = &mut self.few_starts;
                            starts.push_back(self.now);
                            while starts.front().is_some_and(|t| {
                                self.now.duration_since(*t) >= Duration::from_secs(1)
                            }) {
                                starts.pop_front();
                            }
                            assert!(
                                starts.len() <= 2 + 50,
                                "seed {seed}: {} starts under few in a second",
                                starts.len()
                            );
                            self.stats.limited_starts += 1;
                        }
                    }
                    let key = (run.job.clone(), run.shard);
                    self.shard_tasks.insert(key, tasks.clone());
                    w.tasks.insert(run.clone(), tasks.clone());
                }
                w.down.push_back(msg);
            }
            Effect::Unlink { worker, link } => {
                if let Some(w) = self.workers.iter_mut().find(|w| w.id == worker) {
                    if w.link == Some(link) {
                        cut(w);
                    }
                }
            }
            Effect::Commit {
                run,
                output,
                failures,
            } => {
                let creating = self.core.is_creating(&run.job);
                assert!(
                    !creating,
                    "seed {seed}: {} written before its create",
                    run.job
                );
                let key = (run.job.clone(), run.shard);
                assert!(
                    !self.committed.contains(&key),
                    "seed {seed}: {key:?} committed again after its commit was acknowledged"
                );
                assert!(
                    self.committing.insert(key.clone()),
                    "seed {seed}: two commits of {key:?} at once"
                );
                self.pending.push(Pending::Commit(run, output, failures));
            }
            Effect::EndAlone {
                run,
                output,
                counters,
            } => {
                let job = &self.jobs[&run.job];
                assert_eq!(counters.tasks_done, job.tasks, "seed {seed}");
                assert!(
                    self.ending.insert(run.job.clone()),
                    "seed {seed}: two ends of {}",
                    run.job
                );
                self.pending.push(Pending::EndAlone(run, output));
            }
            Effect::WriteResult(f) => {
                let job = &self.jobs[&f.job];
                assert_eq!(f.counters.tasks_done, job.tasks, "seed {seed}: {}", f.job);
                assert!(
                    f.counters.tasks_failed <= f.counters.tasks_done,
                    "seed {seed}"
                );
                assert!(
                    self.ending.insert(f.job.clone()),
                    "seed {seed}: two ends of {}",
                    f.job
                );
                self.pending.push(Pending::Result(f));
            }
            Effect::Merge(m) => self.pending.push(Pending::Merge(m)),
            Effect::RecordLoss { .. } => {}
            Effect::Discard(_) => self.stats.stale += 1,
            Effect::Note(Note::Impossible { .. }) => self.stats.impossible += 1,
            Effect::Note(Note::MergeFailed { .. }) => self.stats.merges_failed += 1,
            Effect::Note(_) => {}
        }
    }

    fn check(&self) {
        let seed = self.seed;
        self.core.check();
        // No limit is ever exceeded.
        for (key, usage, _) in self.core.limits() {
            let max = usage.limit.and_then(|l| l.max_running);
            assert!(
                max.is_none_or(|m| usage.running <= m),
                "seed {seed}: limit {key} holds {} runs: {usage:?}",
                usage.running
            );
            let burst = usage.limit.and_then(|l| l.rate).map(|r| r.burst);
            if let (Some(tokens), Some(burst)) = (usage.tokens, burst) {
                assert!(tokens <= f64::from(burst), "seed {seed}: {key}: {usage:?}");
            }
        }
        for (id, job) in &self.jobs {
            if let Some(c) = self.core.counters(id) {
                assert_eq!(c.tasks_total, job.tasks, "seed {seed}: {id}");
                assert!(c.tasks_done <= c.tasks_total, "seed {seed}: {id}: {c:?}");
                assert!(c.tasks_failed <= c.tasks_done, "seed {seed}: {id}: {c:?}");
            }
        }
        for w in &self.workers {
            let most = w.slots as usize * (1 + SHORT_RUN_PREFETCH as usize);
            assert!(
                self.core.running_on(&w.id) <= most,
                "seed {seed}: {} holds more than its slots and queue",
                w.id
            );
        }
        for (task, n) in &self.outcomes {
            assert!(*n <= 1, "seed {seed}: task {task:?} has {n} final outcomes");
        }
    }

    fn add_worker(&mut self) {
        self.next_worker += 1;
        let id = match self.next_worker {
            1 => OWN.to_string(),
            n => format!("w{}", n - 1),
        };
        let slots = self.rng.gen_range(1..4);
        let liar = self.faults && self.next_worker > 2 && self.rng.gen_bool(0.15);
        self.workers.push(Worker {
            id,
            link: None,
            slots,
            session: WorkerSession::new(slots),
            down: VecDeque::new(),
            up: VecDeque::new(),
            running: Vec::new(),
            tasks: HashMap::new(),
            registered: false,
            liar,
        });
    }

    fn registered(&self) -> BTreeSet<String> {
        let r = self.workers.iter().filter(|w| w.registered);
        r.map(|w| w.id.clone()).collect()
    }

    fn link(&mut self, i: usize) {
        self.next_link += 1;
        let w = &mut self.workers[i];
        w.link = Some(self.next_link);
        let actions = w.session.connected(self.epoch);
        apply_actions(w, actions, &mut self.rng, 0.0);
        let event = Event::Linked {
            worker: w.id.clone(),
            link: self.next_link,
            slots: w.slots,
            jobs: vec!["j".to_string()],
        };
        self.handle(event);
    }

    fn add_job(&mut self) {
        self.next_job += 1;
        let id = format!("job{}", self.next_job);
        let shards = match self.rng.gen_bool(0.4) {
            true => 1,
            false => self.rng.gen_range(1..12),
        };
        let per = self.rng.gen_range(1..4u64);
        let max_attempts = self.rng.gen_range(1..4);
        let tasks = u64::from(shards) * per;
        let plan = JobPlan {
            id: id.clone(),
            incarnation: u64::from(self.next_job),
            shard_timeout: None,
            name: "j".into(),
            max_attempts,
            counters: Counters {
                tasks_total: tasks,
                ..Counters::default()
            },
            pending: (0..shards)
                .map(|i| PendingShard {
                    key: ShardKey {
                        index: i,
                        generation: 0,
                    },
                    tasks: (u64::from(i) * per..u64::from(i + 1) * per).collect(),
                    attempt: 1,
                })
                .collect(),
            priority: match self.rng.gen_bool(0.5) {
                true => 0,
                false => self.rng.gen_range(0..=crate::MAX_PRIORITY + 1),
            },
            fairness: ["", "a", "b"][self.rng.gen_range(0..3)].to_string(),
            not_before: self
                .rng
                .gen_bool(0.2)
                .then(|| self.now + Duration::from_millis(self.rng.gen_range(0..400))),
            under: match self.rng.gen_range(0..8) {
                0 => vec!["one".into()],
                1 => vec!["few".into()],
                2 => vec!["few".into(), "one".into()],
                3 => vec!["unset".into()],
                _ => Vec::new(),
            },
        };
        let under = plan.under.clone();
        let not_before = plan.not_before;
        let kept_result = self.rng.gen_bool(0.7).then_some(16);
        let unreadable = self.rng.gen_bool(0.05);
        let job = SimJob {
            tasks,
            per: per as u32,
            incarnation: u64::from(self.next_job),
            max_attempts,
            cancelled: false,
            done: false,
            unreadable,
            created: true,
            discarded: false,
            not_before,
            assigned: false,
            under,
        };
        if not_before.is_some() {
            self.stats.delayed += 1;
        }
        self.jobs.insert(id.clone(), job);
        if unreadable {
            self.stats.quarantined += 1;
            let why = Box::new(Quarantined {
                reason: "job type \"x\" is not registered".into(),
                job_name: Some("x".into()),
                tasks_total: tasks,
                owner: None,
                created_ms: 0,
            });
            self.handle(Event::Unreadable {
                job: id.clone(),
                why,
            });
            assert!(self.core.is_quarantined(&id), "seed {}", self.seed);
            return;
        }
        // A work queue's job: scheduled while its create waits.
        let creating = shards == 1 && kept_result.is_some() && self.rng.gen_bool(0.5);
        let job = NewJob {
            plan,
            bytes: 10,
            failures: Vec::new(),
            objects: Vec::new(),
            unmerged: Vec::new(),
            kept_result,
            owner: Some("client:sim".into()),
            creating,
        };
        if creating {
            if let Some(j) = self.jobs.get_mut(&id) {
                j.created = false;
            }
            self.pending.push(Pending::Create(id.clone()));
            self.handle(Event::Added(Box::new(job)));
            assert!(self.core.is_creating(&id), "seed {}", self.seed);
            return;
        }
        // Inherited from an earlier master: read back while it serves.
        if self.rng.gen_bool(0.2) {
            let owner = job.owner.clone();
            self.handle(Event::Loading(vec![(id, owner)]));
            self.loading.push(job);
            return;
        }
        self.handle(Event::Added(Box::new(job)));
    }

    /// A commit ZooKeeper applied (its answer delivered or lost): the
    /// first record of a shard is the one a new master counts.
    fn make_durable(&mut self, run: &RunId, failures: &[TaskFailure]) {
        let commits = self.durable.entry(run.job.clone()).or_default();
        commits
            .entry(run.shard)
            .or_insert_with(|| crate::CommittedShard {
                attempt: run.attempt,
                failures: failures.to_vec(),
            });
    }

    /// The master is deposed (its writes in flight fenced: none applies,
    /// none is answered) and a new one takes over from what ZooKeeper
    /// holds: each unfinished job read back from its durable commits, the
    /// workers linking again. What the new master counts is what those
    /// commits hold, plus what it commits itself.
    fn takeover(&mut self) {
        self.stats.takeovers += 1;
        self.epoch += 1;
        self.pending.clear();
        self.committing.clear();
        self.ending.clear();
        self.loading.clear();
        self.committed.clear();
        self.core = MasterCore::new(self.epoch, OWN, 1 << 30);
        for w in &mut self.workers {
            cut(w);
        }
        self.handle(Event::Limited(sim_limits()));
        let registered = self.registered();
        self.handle(Event::Registered(registered));
        let ids: Vec<String> = self.jobs.keys().cloned().collect();
        for id in ids {
            let j = &self.jobs[&id];
            if j.done || j.cancelled || j.discarded {
                continue;
            }
            // Its create never went: it never existed.
            if !j.created {
                self.stats.discarded += 1;
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.discarded = true;
                }
                continue;
            }
            if j.unreadable {
                let why = Box::new(Quarantined {
                    reason: "job type \"x\" is not registered".into(),
                    job_name: Some("x".into()),
                    tasks_total: j.tasks,
                    owner: None,
                    created_ms: 0,
                });
                self.handle(Event::Unreadable { job: id, why });
                continue;
            }
            let commits = self.durable.get(&id).cloned().unwrap_or_default();
            let mut rec = crate::recover_job(&id, "j", j.tasks, j.per, j.max_attempts, &commits);
            rec.plan.incarnation = j.incarnation;
            rec.plan.not_before = j.not_before;
            rec.plan.under = j.under.clone();
            // What the new master counts: the durable chain.
            self.outcomes.retain(|(job, _), _| *job != id);
            for (key, done) in &rec.outputs {
                self.committed.insert((id.clone(), *key));
                for &t in done {
                    *self.outcomes.entry((id.clone(), t)).or_default() += 1;
                }
            }
            for f in &rec.final_failures {
                *self.outcomes.entry((id.clone(), f.index)).or_default() += 1;
            }
            let owner = Some("client:sim".to_string());
            let job = NewJob {
                plan: rec.plan,
                bytes: 10,
                failures: rec.final_failures,
                objects: Vec::new(),
                unmerged: Vec::new(),
                kept_result: None,
                owner: owner.clone(),
                creating: false,
            };
            self.handle(Event::Loading(vec![(id, owner)]));
            self.loading.push(job);
        }
    }

    /// A job read back after the takeover arrives: queued, unless a
    /// cancel came meanwhile.
    fn loaded(&mut self) {
        if self.loading.is_empty() {
            return;
        }
        let job = self
            .loading
            .swap_remove(self.rng.gen_range(0..self.loading.len()));
        let id = job.plan.id.clone();
        assert!(self.core.is_loading(&id), "seed {}: {id}", self.seed);
        if self.core.take_loaded(&id) {
            assert!(
                !self.jobs[&id].cancelled,
                "seed {}: {id} cancelled",
                self.seed
            );
            self.handle(Event::Added(Box::new(job)));
        } else {
            assert!(self.jobs[&id].cancelled, "seed {}: {id} dropped", self.seed);
            assert!(!self.core.holds(&id), "seed {}: {id}", self.seed);
            self.stats.cancelled_while_loading += 1;
        }
    }

    /// A collector pass deletes the jobs that ended here (those still
    /// being written included: their deletion must fail or wait, which
    /// the fake leaves out), or fails.
    fn collect(&mut self) {
        let ended: BTreeSet<String> = self
            .jobs
            .keys()
            .filter(|id| self.core.phase(id) == Some(Phase::Ended))
            .cloned()
            .collect();
        if ended.is_empty() {
            return;
        }
        self.handle(Event::Collecting(ended.clone()));
        for id in &ended {
            assert!(self.core.is_collecting(id), "seed {}", self.seed);
        }
        let ok = self.rng.gen_bool(0.8);
        self.handle(Event::Collected { ok });
        for id in &ended {
            assert!(!self.core.is_collecting(id), "seed {}", self.seed);
            assert_eq!(self.core.holds(id), !ok, "seed {}: {id}", self.seed);
            if ok {
                self.stats.collected += 1;
            }
        }
    }

    /// One step of a worker: read a frame, or end a run.
    fn step_worker(&mut self, i: usize) {
        let w = &mut self.workers[i];
        let fail = if self.faults { 0.2 } else { 0.0 };
        if self.rng.gen_bool(0.5) {
            let Some(msg) = w.down.pop_front() else {
                return;
            };
            let actions = match msg {
                ToWorker::Assign {
                    run,
                    ack_first,
                    priority,
                    ..
                } => w
                    .session
                    .assigned(run, ack_first, priority)
                    .unwrap_or_default(),
                ToWorker::StartAck(run) => w.session.acked(&run),
                ToWorker::StartRefused(run) => w.session.refused(&run),
                ToWorker::StopRun(run) => w.session.stop(&run),
                ToWorker::DrainAck => Vec::new(),
            };
            apply_actions(w, actions, &mut self.rng, fail);
        } else if !w.running.is_empty() {
            let r = w
                .running
                .swap_remove(self.rng.gen_range(0..w.running.len()));
            let actions = w.session.finished(&r);
            apply_actions(w, actions, &mut self.rng, fail);
        }
    }

    /// The master reads one frame of a worker's link.
    fn deliver(&mut self, i: usize) {
        let w = &mut self.workers[i];
        let Some(frame) = w.up.pop_front() else {
            return;
        };
        let worker = w.id.clone();
        let event = match frame {
            Up::Started(run) => Event::Started { worker, run },
            Up::Unstarted(run) => Event::Unstarted { worker, run },
            Up::Report(run, failures, output) => Event::Reported {
                worker,
                run,
                failures,
                output,
            },
            Up::Draining => Event::Draining { worker },
            Up::Drained => Event::Drained { worker },
        };
        self.handle(event);
    }

    /// A report no honest worker sends, or one sent after its link ended.
    fn lie(&mut self, i: usize) {
        let jobs: Vec<&String> = self.jobs.keys().collect();
        if jobs.is_empty() {
            return;
        }
        let job = jobs[self.rng.gen_range(0..jobs.len())].clone();
        let run = RunId {
            epoch: if self.rng.gen_bool(0.9) {
                self.epoch
            } else {
                self.epoch - 1
            },
            job,
            incarnation: self.rng.gen_range(0..u64::from(self.next_job) + 2),
            shard: ShardKey {
                index: self.rng.gen_range(0..14),
                generation: self.rng.gen_range(0..2),
            },
            attempt: self.rng.gen_range(0..4),
        };
        let index = self.rng.gen_range(0..40);
        let failure = TaskFailure {
            index,
            error: "lie".into(),
            attempt: run.attempt,
            retryable: false,
        };
        let failures = match self.rng.gen_range(0..3) {
            0 => Vec::new(),
            1 => vec![failure],
            _ => vec![failure.clone(), failure],
        };
        let output = Output::Bytes(b"not a partial result".to_vec());
        let worker = self.workers[i].id.clone();
        self.handle(Event::Reported {
            worker,
            run,
            failures,
            output,
        });
    }

    /// The fake ZooKeeper (and merge pool) answers one write.
    fn answer(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let p = self
            .pending
            .swap_remove(self.rng.gen_range(0..self.pending.len()));
        let fault = if self.faults { 0.15 } else { 0.0 };
        let (fails, lost) = (self.rng.gen_bool(fault), self.rng.gen_bool(fault));
        match p {
            Pending::Commit(run, output, failures) => {
                let key = (run.job.clone(), run.shard);
                self.committing.remove(&key);
                let cancelled = self.jobs[&run.job].cancelled;
                if lost && !fails && !cancelled {
                    self.make_durable(&run, &failures);
                }
                if fails || lost || cancelled {
                    self.stats.writes_failed += u64::from(fails);
                    self.stats.answers_lost += u64::from(lost && !fails);
                    let (job, key) = (run.job, run.shard);
                    return self.handle(Event::CommitFailed { job, key });
                }
                self.stats.commits += 1;
                self.make_durable(&run, &failures);
                self.committed.insert(key.clone());
                let tasks = self.shard_tasks.get(&key).cloned().unwrap_or_default();
                let max_attempts = self.jobs[&run.job].max_attempts;
                for t in tasks {
                    let f = failures.iter().find(|f| f.index == t);
                    if f.is_none_or(|f| f.is_final(max_attempts)) {
                        *self.outcomes.entry((run.job.clone(), t)).or_default() += 1;
                    }
                }
                let object = match &output {
                    Output::Object(name) => Some(name.clone()),
                    Output::Bytes(_) | Output::Empty => None,
                };
                self.outputs.insert(key, output);
                self.handle(Event::Committed {
                    job: run.job,
                    key: run.shard,
                    attempt: run.attempt,
                    failures,
                    object,
                });
            }
            Pending::Create(id) => {
                let failed = self.rng.gen_bool(if self.faults { 0.2 } else { 0.0 });
                let job = self.jobs.get_mut(&id).expect("a job the simulation made");
                let outcome = match failed {
                    true => {
                        job.discarded = true;
                        self.stats.discarded += 1;
                        Created::Failed
                    }
                    false => {
                        job.created = true;
                        Created::Durable
                    }
                };
                self.handle(Event::Created {
                    job: id.clone(),
                    outcome,
                });
                assert!(!self.core.is_creating(&id), "seed {}", self.seed);
                if failed {
                    assert!(!self.core.holds(&id), "seed {}: {id}", self.seed);
                }
            }
            // A failed create drops the ends the driver held for it.
            Pending::EndAlone(run, _) if self.jobs[&run.job].discarded => {
                self.ending.remove(&run.job);
            }
            // The driver writes an end that could not go in place of the
            // create once the create is durable.
            Pending::EndAlone(run, output) if self.core.is_creating(&run.job) => {
                self.pending.push(Pending::EndAlone(run, output));
            }
            Pending::EndAlone(run, output) => {
                if output != b"ok" {
                    self.ending.remove(&run.job);
                    return self.handle(Event::NotReducible { run, output });
                }
                self.end(run.job, fails || lost, Some(run.shard));
            }
            Pending::Result(f) => self.end(f.job, fails || lost, None),
            Pending::Merge(merge) => {
                let output = self.outputs.get(&(merge.job.clone(), merge.key));
                let outcome = match output {
                    Some(Output::Bytes(b)) if b != b"ok" => Err("does not decode".to_string()),
                    _ => Ok(()),
                };
                self.handle(Event::Merged { merge, outcome });
            }
        }
    }

    /// A job's end is answered: durable, refused for a cancel that came
    /// first, or failed (`alone`: a one-write end of this shard).
    fn end(&mut self, id: String, failed: bool, alone: Option<ShardKey>) {
        let seed = self.seed;
        self.ending.remove(&id);
        let job = self.jobs.get_mut(&id).expect("a job the simulation made");
        if job.cancelled {
            let why = Gone::CancelledWhileFinishing;
            return self.handle(Event::Gone { job: id, why });
        }
        if failed {
            self.stats.writes_failed += 1;
            return match alone {
                Some(key) => self.handle(Event::EndFailed { job: id, key }),
                None => self.handle(Event::FinishFailed { job: id }),
            };
        }
        assert!(!job.done, "seed {seed}: {id} ended twice");
        job.done = true;
        self.stats.jobs_done += 1;
        if alone.is_some() {
            self.stats.ended_alone += 1;
            for t in 0..job.tasks {
                *self.outcomes.entry((id.clone(), t)).or_default() += 1;
            }
        }
        let why = Gone::Done;
        self.handle(Event::Gone {
            job: id.clone(),
            why,
        });
        let phase = self.core.phase(&id);
        assert_eq!(phase, Some(Phase::Ended), "seed {seed}: {id} once done");
    }

    fn cancel(&mut self) {
        let live: Vec<String> = self
            .jobs
            .iter()
            .filter(|(id, j)| !j.done && !j.cancelled && !j.discarded && !self.core.is_creating(id))
            .map(|(id, _)| id.clone())
            .collect();
        if live.is_empty() {
            return;
        }
        let id = live[self.rng.gen_range(0..live.len())].clone();
        if let Some(j) = self.jobs.get_mut(&id) {
            j.cancelled = true;
        }
        self.stats.cancelled += 1;
        let why = Gone::Cancelled;
        self.handle(Event::Gone {
            job: id.clone(),
            why,
        });
        let phase = self.core.phase(&id);
        let after = [Phase::Ended, Phase::Loading { cancelled: true }];
        assert!(
            phase.is_some_and(|p| after.contains(&p)),
            "seed {}: {id} is {phase:?} once cancelled",
            self.seed
        );
    }

    /// One random step with faults.
    fn step(&mut self) {
        self.now += Duration::from_millis(self.rng.gen_range(0..15));
        let n = self.workers.len();
        match self.rng.gen_range(0..40) {
            0 if n < 6 => self.add_worker(),
            1 if n > 0 => {
                // Registration and link in either order.
                let i = self.rng.gen_range(0..n);
                if !self.workers[i].registered {
                    self.workers[i].registered = true;
                    let r = self.registered();
                    self.handle(Event::Registered(r));
                } else if self.workers[i].link.is_none() {
                    self.link(i);
                }
            }
            2 if n > 0 && self.rng.gen_bool(0.3) => {
                // A link breaks, losing a random suffix of what it carried.
                let i = self.rng.gen_range(0..n);
                let Some(link) = self.workers[i].link else {
                    return;
                };
                self.stats.links_broken += 1;
                let w = &mut self.workers[i];
                let keep = self.rng.gen_range(0..=w.up.len());
                w.up.truncate(keep);
                while !self.workers[i].up.is_empty() {
                    self.deliver(i);
                }
                let w = &mut self.workers[i];
                cut(w);
                let worker = w.id.clone();
                self.handle(Event::Unlinked { worker, link });
            }
            3 if n > 1 && self.rng.gen_bool(0.2) => {
                // A worker dies: its link ends, its registration later.
                let i = self.rng.gen_range(0..n);
                let mut w = self.workers.swap_remove(i);
                self.stats.workers_killed += 1;
                if let Some(link) = w.link {
                    cut(&mut w);
                    self.handle(Event::Unlinked {
                        worker: w.id.clone(),
                        link,
                    });
                }
                let r = self.registered();
                self.handle(Event::Registered(r));
            }
            4 if n > 0 && self.rng.gen_bool(0.1) => {
                let i = self.rng.gen_range(0..n);
                let w = &mut self.workers[i];
                let actions = w.session.drain();
                apply_actions(w, actions, &mut self.rng, 0.0);
            }
            5 if self.jobs.len() < 40 => self.add_job(),
            6 if self.rng.gen_bool(0.2) => self.cancel(),
            7 if n > 0 && self.rng.gen_bool(0.3) => {
                let i = self.rng.gen_range(0..n);
                if self.workers[i].liar || self.workers[i].link.is_none() {
                    self.lie(i);
                }
            }
            13 if self.rng.gen_bool(0.3) => self.loaded(),
            14 if self.rng.gen_bool(0.05) => self.collect(),
            15 if self.rng.gen_bool(0.01) && self.stats.takeovers < 3 => self.takeover(),
            8 if self.rng.gen_bool(0.05) => {
                let up = self.core.is_paused();
                self.handle(Event::Connected(up));
            }
            9 if self.rng.gen_bool(0.02) => {
                let key = ["", "a", "b"][self.rng.gen_range(0..3)].to_string();
                let weight = self.rng.gen_range(0..5);
                self.handle(Event::Weighed(vec![(key, weight)]));
            }
            9..=11 => self.handle(Event::Tick),
            12..=20 => self.answer(),
            21..=29 if n > 0 => {
                let i = self.rng.gen_range(0..n);
                self.deliver(i);
            }
            _ if n > 0 => {
                let i = self.rng.gen_range(0..n);
                self.step_worker(i);
            }
            _ => {}
        }
    }

    /// No more faults: ZooKeeper back, one reliable worker, time passing,
    /// until every job not cancelled has ended.
    fn calm(&mut self) {
        self.faults = false;
        if self.core.is_paused() {
            self.handle(Event::Connected(true));
        }
        for w in &mut self.workers {
            w.liar = false;
        }
        self.add_worker();
        let last = self.workers.len() - 1;
        self.workers[last].registered = true;
        let r = self.registered();
        self.handle(Event::Registered(r));
        self.link(last);
        for _ in 0..200_000 {
            let open = self
                .jobs
                .values()
                .any(|j| !j.done && !j.cancelled && !j.unreadable && !j.discarded);
            if !open && self.pending.is_empty() && self.loading.is_empty() {
                break;
            }
            self.loaded();
            self.now += Duration::from_millis(self.rng.gen_range(0..50));
            match self.rng.gen_range(0..4) {
                0 => self.handle(Event::Tick),
                1 => self.answer(),
                _ => {
                    let i = self.rng.gen_range(0..self.workers.len());
                    if self.rng.gen_bool(0.5) {
                        self.deliver(i);
                    } else {
                        self.step_worker(i);
                    }
                }
            }
        }
        let seed = self.seed;
        for (id, job) in &self.jobs {
            if job.unreadable {
                let quarantined = self.core.is_quarantined(id);
                assert_eq!(quarantined, !job.cancelled, "seed {seed}: {id}");
                assert!(self.core.counters(id).is_none(), "seed {seed}: {id}");
                continue;
            }
            if job.cancelled || job.discarded {
                continue;
            }
            assert!(
                job.done,
                "seed {seed}: {id} never ended: under {:?}, throttled by {:?}, limits {:?}, phase {:?}, holders {:?}, workers {:?}",
                job.under,
                self.core.throttled_by(id),
                self.core.limits(),
                self.core.phase(id),
                self.core.holders("one"),
                self.workers.iter().map(|w| (&w.id, w.link.is_some(), w.registered)).collect::<Vec<_>>()
            );
            for t in 0..job.tasks {
                let n = self.outcomes.get(&(id.clone(), t)).copied().unwrap_or(0);
                assert_eq!(n, 1, "seed {seed}: task {t} of {id}: {n} final outcomes");
            }
        }
    }
}

/// A worker's link ends: what it carried either way is gone.
fn cut(w: &mut Worker) {
    w.link = None;
    w.down.clear();
    w.up.clear();
    let _ = w.session.disconnected();
}

/// Carries out a worker session's actions; a finished run's tasks fail
/// with probability `fail`.
fn apply_actions(w: &mut Worker, actions: Vec<Action>, rng: &mut StdRng, fail: f64) {
    for a in actions {
        match a {
            Action::SendStarted(r) => w.up.push_back(Up::Started(r)),
            Action::Run(r) => w.running.push(r),
            Action::SendReport(r) => {
                let tasks = w.tasks.get(&r).cloned().unwrap_or_default();
                let mut failures = Vec::new();
                for &index in &tasks {
                    if rng.gen_bool(fail) {
                        failures.push(TaskFailure {
                            index,
                            error: "e".into(),
                            attempt: r.attempt,
                            retryable: rng.gen_bool(0.7),
                        });
                    }
                }
                let output = match (w.liar && rng.gen_bool(0.5), rng.gen_bool(0.1)) {
                    (true, _) => Output::Bytes(b"garbage".to_vec()),
                    (false, true) => Output::Object(format!("{}/{}", r.job, r.shard)),
                    (false, false) => Output::Bytes(b"ok".to_vec()),
                };
                w.up.push_back(Up::Report(r, failures, output));
            }
            Action::SendUnstarted(r) => w.up.push_back(Up::Unstarted(r)),
            Action::SendDraining => w.up.push_back(Up::Draining),
            Action::SendDrained => w.up.push_back(Up::Drained),
            Action::Cancel(_) | Action::Forget(_) => {}
        }
    }
}

/// Runs one seed of `steps` faulty steps and the calm after.
fn simulate(seed: u64, steps: u32) -> Stats {
    let mut w = World::new(seed);
    w.handle(Event::Limited(sim_limits()));
    for _ in 0..steps {
        w.step();
    }
    w.calm();
    w.stats
}

/// Every seed: each job not cancelled ends once, each of its tasks with
/// one final outcome, however workers lie, links break and ZooKeeper's
/// answers fail or get lost; and the faults that could hide a bug were
/// met.
#[test]
fn the_master_core_keeps_every_invariant_under_simulated_faults() {
    let mut total = Stats::default();
    for seed in 0..SUITE_SEEDS {
        total += simulate(seed, 3_000);
    }
    eprintln!("master simulation, {SUITE_SEEDS} seeds: {total:?}");
    assert!(total.jobs_done > 1_000, "{total:?}");
    assert!(total.ended_alone > 0, "{total:?}");
    assert!(
        total.answers_lost > 0 && total.writes_failed > 0,
        "{total:?}"
    );
    assert!(total.impossible > 0 && total.stale > 0, "{total:?}");
    assert!(total.merges_failed > 0, "{total:?}");
    assert!(
        total.links_broken > 0 && total.workers_killed > 0,
        "{total:?}"
    );
    assert!(total.cancelled > 0 && total.quarantined > 0, "{total:?}");
    assert!(
        total.cancelled_while_loading > 0 && total.collected > 0,
        "{total:?}"
    );
    assert!(total.takeovers > 0 && total.discarded > 0, "{total:?}");
    assert!(total.delayed_started > 100, "{total:?}");
    assert!(total.limited_starts > 100, "{total:?}");
}

/// Seeds until `RINGLEADER_SIM_EVENTS` events (default a million) were
/// simulated; `RINGLEADER_SIM_SEED` is the first seed.
#[test]
#[ignore = "long: run by the command in the README"]
fn master_simulation_long() {
    let want: u64 = std::env::var("RINGLEADER_SIM_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let first: u64 = std::env::var("RINGLEADER_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let mut total = Stats::default();
    let mut seed = first;
    while total.events < want {
        total += simulate(seed, 10_000);
        seed += 1;
    }
    eprintln!("master simulation, seeds {first}..{seed}: {total:?}");
}
