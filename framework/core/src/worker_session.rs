//! The worker's side of its links to masters, without I/O: which
//! assignments wait for a slot, which wait for the master's `StartAck`,
//! which run, where a report goes, and when a draining worker is done.
//!
//! A slot takes its queue highest priority first, in arrival order within
//! a priority (a run that waits for `StartAck`, and any run that came
//! before it, keep their places: nothing overtakes such a run to start
//! unseen beside it). It says `Started` for every
//! run it takes; it waits for `StartAck` only when the assignment asks
//! for it (`ack_first`: the master is not sure of the shard, see
//! `Scheduler::started`), and otherwise runs at once, so that a short
//! task does not wait a round trip per run.
//!
//! One [`WorkerSession`] lives as long as the worker, across links: a shard
//! still running when its link ends keeps its slot until it finishes, so a
//! new link never gets more slots than the worker has. What waited (for a
//! slot or an acknowledgement) is forgotten with its link, because the
//! master requeues it; nothing waits for an answer from a link that is gone.
//!
//! A run the master stops (its job cancelled, or committed by another
//! copy) is dropped if it waits, and told to stop if it runs
//! ([`Action::Cancel`]): it keeps its slot until it really ends, and its
//! report then tells the master that the slot is free.
//!
//! There are no timers here: a silent link is detected by the transport.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use super::RunId;

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `Started` for this run on the current link. A run that waits
    /// for `StartAck` keeps its assignment until then; otherwise `Run`
    /// follows at once.
    SendStarted(RunId),
    /// The master acknowledged `Started`: run it now.
    Run(RunId),
    /// Send the finished run's report on the current link.
    SendReport(RunId),
    /// Tell the master this run, refused while queued, never started.
    SendUnstarted(RunId),
    /// Tell this running run to stop: its task sees
    /// `TaskContext::is_cancelled` (the framework's). It keeps its slot until it
    /// ends, and reports as any run does.
    Cancel(RunId),
    /// Drop what is kept for this run (its assignment, or its report): its
    /// link is gone, or it was handed back by draining.
    Forget(RunId),
    /// Tell the master this worker takes nothing new.
    SendDraining,
    /// Tell the master every started run has been reported.
    SendDrained,
}

/// Why an assignment is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// There is no link, or it serves another epoch.
    OtherEpoch,
    /// Draining: the master requeues what it sent before it saw `Draining`.
    Draining,
    /// The same run is already held (a resend after a reconnection to the
    /// same master): the one held reports.
    Duplicate,
}

/// See the module doc.
#[derive(Debug)]
pub struct WorkerSession {
    slots: usize,
    /// The epoch of the current link's master.
    link: Option<u64>,
    /// Waiting for a slot, in the order they start (see the module doc),
    /// each with whether it must wait for `StartAck`, and its priority.
    queue: VecDeque<(RunId, bool, u8)>,
    /// `Started` sent, waiting for `StartAck`: holds a slot.
    starting: BTreeSet<RunId>,
    /// Running, with the epoch of the link that started it: holds a slot.
    running: BTreeMap<RunId, u64>,
    draining: bool,
    drained_sent: bool,
}

impl WorkerSession {
    /// A worker with `slots` concurrent runs.
    pub fn new(slots: u32) -> Self {
        WorkerSession {
            slots: slots.max(1) as usize,
            link: None,
            queue: VecDeque::new(),
            starting: BTreeSet::new(),
            running: BTreeMap::new(),
            draining: false,
            drained_sent: false,
        }
    }

    /// A link to the master of `epoch` is up.
    pub fn connected(&mut self, epoch: u64) -> Vec<Action> {
        let mut out = self.disconnected();
        self.link = Some(epoch);
        self.drained_sent = false;
        if self.draining {
            out.push(Action::SendDraining);
        }
        self.settle(&mut out);
        out
    }

    /// The link is gone: what waited for a slot or an acknowledgement is
    /// forgotten (the master requeues it). Running shards keep their slots.
    pub fn disconnected(&mut self) -> Vec<Action> {
        self.link = None;
        let waiting = self
            .queue
            .drain(..)
            .map(|(run, _, _)| run)
            .chain(std::mem::take(&mut self.starting));
        waiting.map(Action::Forget).collect()
    }

    /// An assignment from the master of `epoch`; `ack_first`: its slot
    /// waits for `StartAck` before it runs; it runs before the runs of
    /// lower `priority` that wait (none that waits for `StartAck`, nor
    /// one before such a run). On `Ok`, keep its payload under `run`
    /// until an action forgets or runs it.
    pub fn assigned(
        &mut self,
        run: RunId,
        ack_first: bool,
        priority: u8,
    ) -> Result<Vec<Action>, Refused> {
        if self.link != Some(run.epoch) {
            return Err(Refused::OtherEpoch);
        }
        if self.draining {
            return Err(Refused::Draining);
        }
        if self.holds(&run) {
            return Err(Refused::Duplicate);
        }
        let at = match ack_first {
            true => self.queue.len(),
            false => {
                let after = self
                    .queue
                    .iter()
                    .rposition(|(_, ack, _)| *ack)
                    .map_or(0, |i| i + 1);
                (after..self.queue.len())
                    .find(|&i| self.queue[i].2 < priority)
                    .unwrap_or(self.queue.len())
            }
        };
        self.queue.insert(at, (run, ack_first, priority));
        let mut out = Vec::new();
        self.settle(&mut out);
        Ok(out)
    }

    /// The master acknowledged `Started` on the current link.
    pub fn acked(&mut self, run: &RunId) -> Vec<Action> {
        let Some(epoch) = self.link else {
            return Vec::new();
        };
        if !self.starting.remove(run) {
            return Vec::new();
        }
        self.running.insert(run.clone(), epoch);
        vec![Action::Run(run.clone())]
    }

    /// The master refused the run (it holds no such run): one that waited
    /// for `StartAck` is forgotten and its slot goes to the next; one still
    /// queued is forgotten, and the master told it never started; one
    /// running runs on (its report will be dropped).
    pub fn refused(&mut self, run: &RunId) -> Vec<Action> {
        if let Some(i) = self.queue.iter().position(|(r, _, _)| r == run) {
            self.queue.remove(i);
            return vec![
                Action::Forget(run.clone()),
                Action::SendUnstarted(run.clone()),
            ];
        }
        if !self.starting.remove(run) {
            return Vec::new();
        }
        let mut out = vec![Action::Forget(run.clone())];
        self.settle(&mut out);
        out
    }

    /// The master stopped the run (its job was cancelled, or another copy
    /// was committed): one waiting for a slot is dropped and the master
    /// told it never started; one waiting for `StartAck` is dropped (the
    /// master refuses the `Started` it sent); one running is told to stop.
    pub fn stop(&mut self, run: &RunId) -> Vec<Action> {
        if self.running.contains_key(run) {
            return vec![Action::Cancel(run.clone())];
        }
        self.refused(run)
    }

    /// A run finished: its report goes to the link that started it, if
    /// that link is still the current one.
    pub fn finished(&mut self, run: &RunId) -> Vec<Action> {
        let Some(epoch) = self.running.remove(run) else {
            return Vec::new();
        };
        let mut out = vec![if self.link == Some(epoch) {
            Action::SendReport(run.clone())
        } else {
            Action::Forget(run.clone())
        }];
        self.settle(&mut out);
        out
    }

    /// The node is stopping: nothing new starts, what waits for a slot is
    /// handed back, and `Drained` follows the last report.
    pub fn drain(&mut self) -> Vec<Action> {
        if self.draining {
            return Vec::new();
        }
        self.draining = true;
        let mut out: Vec<Action> = self
            .queue
            .drain(..)
            .map(|(run, _, _)| Action::Forget(run))
            .collect();
        if self.link.is_some() {
            out.push(Action::SendDraining);
        }
        self.settle(&mut out);
        out
    }

    /// Whether the node asked to drain.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// Runs that hold a slot (waiting for an acknowledgement, or running).
    pub fn in_slots(&self) -> usize {
        self.starting.len() + self.running.len()
    }

    /// Runs held in any state.
    pub fn held(&self) -> usize {
        self.queue.len() + self.in_slots()
    }

    fn holds(&self, run: &RunId) -> bool {
        self.queue.iter().any(|(r, _, _)| r == run)
            || self.starting.contains(run)
            || self.running.contains_key(run)
    }

    /// Starts what fits, and says `Drained` once a draining worker is idle.
    fn settle(&mut self, out: &mut Vec<Action>) {
        let Some(epoch) = self.link else {
            return;
        };
        while !self.draining && self.in_slots() < self.slots {
            let Some((run, ack_first, _)) = self.queue.pop_front() else {
                break;
            };
            out.push(Action::SendStarted(run.clone()));
            if ack_first {
                self.starting.insert(run);
            } else {
                // `Started` goes before the run, and before its report,
                // on the one ordered stream.
                self.running.insert(run.clone(), epoch);
                out.push(Action::Run(run));
            }
        }
        if self.draining && self.in_slots() == 0 && !self.drained_sent {
            self.drained_sent = true;
            out.push(Action::SendDrained);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShardKey;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn run(i: u32) -> RunId {
        at(1, i)
    }

    fn at(epoch: u64, i: u32) -> RunId {
        RunId {
            epoch,
            job: "j".into(),
            incarnation: 7,
            shard: ShardKey {
                index: i,
                generation: 0,
            },
            attempt: 1,
        }
    }

    #[test]
    fn a_slot_waits_for_the_ack_and_the_next_shard_for_the_slot() {
        let mut s = WorkerSession::new(1);
        assert_eq!(s.connected(1), vec![]);
        assert_eq!(
            s.assigned(run(0), true, 0),
            Ok(vec![Action::SendStarted(run(0))])
        );
        assert_eq!(s.assigned(run(1), true, 0), Ok(vec![]));
        assert_eq!(s.assigned(run(1), true, 0), Err(Refused::Duplicate));
        assert_eq!(s.assigned(at(2, 2), true, 0), Err(Refused::OtherEpoch));
        assert_eq!(
            s.acked(&run(1)),
            vec![],
            "not started: an ack for it is ignored"
        );
        assert_eq!(s.acked(&run(0)), vec![Action::Run(run(0))]);
        assert_eq!(
            s.finished(&run(0)),
            vec![Action::SendReport(run(0)), Action::SendStarted(run(1))]
        );
        assert_eq!(s.held(), 1);
    }

    /// Issue 29, finding 1: a job submitted again under the id of a
    /// cancelled one has runs of the same epoch, shard and attempt; they
    /// are other runs, never taken for duplicates of the old ones.
    #[test]
    fn a_run_of_another_incarnation_is_not_a_duplicate() {
        let mut s = WorkerSession::new(1);
        s.connected(1);
        let old = run(0);
        let new = RunId {
            incarnation: 8,
            ..old.clone()
        };
        assert_eq!(
            s.assigned(old.clone(), false, 0),
            Ok(vec![
                Action::SendStarted(old.clone()),
                Action::Run(old.clone())
            ])
        );
        assert_eq!(s.assigned(new.clone(), false, 0), Ok(vec![]), "queued");
        assert_eq!(s.assigned(new.clone(), false, 0), Err(Refused::Duplicate));
        assert_eq!(
            s.finished(&old),
            vec![
                Action::SendReport(old),
                Action::SendStarted(new.clone()),
                Action::Run(new)
            ]
        );
    }

    /// A stopped run: dropped while it waits (the master told when it
    /// waited for a slot), told to stop while it runs, keeping its slot
    /// until it ends and reports.
    #[test]
    fn a_stopped_run_is_dropped_if_it_waits_and_cancelled_if_it_runs() {
        let mut s = WorkerSession::new(1);
        s.connected(1);
        s.assigned(run(0), false, 0).unwrap();
        s.assigned(run(1), false, 0).unwrap();
        assert_eq!(
            s.stop(&run(1)),
            vec![Action::Forget(run(1)), Action::SendUnstarted(run(1))]
        );
        assert_eq!(s.stop(&run(0)), vec![Action::Cancel(run(0))]);
        assert_eq!(s.in_slots(), 1, "it holds its slot until it ends");
        s.assigned(run(2), false, 0).unwrap();
        assert_eq!(
            s.finished(&run(0)),
            vec![
                Action::SendReport(run(0)),
                Action::SendStarted(run(2)),
                Action::Run(run(2))
            ]
        );
        assert_eq!(s.stop(&run(0)), vec![], "ended: nothing to stop");
        // One waiting for its `StartAck` gives its slot to the next.
        let mut s = WorkerSession::new(1);
        s.connected(1);
        s.assigned(run(0), true, 0).unwrap();
        s.assigned(run(1), true, 0).unwrap();
        assert_eq!(
            s.stop(&run(0)),
            vec![Action::Forget(run(0)), Action::SendStarted(run(1))]
        );
    }

    #[test]
    fn a_run_that_need_not_wait_starts_at_once_in_queue_order() {
        let mut s = WorkerSession::new(1);
        s.connected(1);
        assert_eq!(
            s.assigned(run(0), false, 0),
            Ok(vec![Action::SendStarted(run(0)), Action::Run(run(0))]),
            "Started goes first, then it runs without waiting"
        );
        assert_eq!(s.assigned(run(1), true, 0), Ok(vec![]), "the slot is taken");
        assert_eq!(s.assigned(run(2), false, 0), Ok(vec![]));
        assert_eq!(s.acked(&run(0)), vec![], "nothing waited for that ack");
        assert_eq!(s.refused(&run(0)), vec![], "nor for a refusal: it runs on");
        // The queue is taken in order: the run that waits holds up the one
        // behind it, so nothing starts unseen while it is unacknowledged.
        assert_eq!(
            s.finished(&run(0)),
            vec![Action::SendReport(run(0)), Action::SendStarted(run(1))]
        );
        assert_eq!(s.assigned(run(3), false, 0), Ok(vec![]));
        assert_eq!(s.acked(&run(1)), vec![Action::Run(run(1))]);
        assert_eq!(
            s.finished(&run(1)),
            vec![
                Action::SendReport(run(1)),
                Action::SendStarted(run(2)),
                Action::Run(run(2))
            ]
        );
        // A lost link forgets the queue; the run keeps its slot.
        assert_eq!(s.disconnected(), vec![Action::Forget(run(3))]);
        assert_eq!(s.in_slots(), 1);
        assert_eq!(s.finished(&run(2)), vec![Action::Forget(run(2))]);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn a_refused_start_frees_its_slot() {
        let mut s = WorkerSession::new(1);
        s.connected(1);
        s.assigned(run(0), true, 0).unwrap();
        s.assigned(run(1), true, 0).unwrap();
        s.assigned(run(2), false, 0).unwrap();
        assert_eq!(
            s.refused(&run(0)),
            vec![Action::Forget(run(0)), Action::SendStarted(run(1))]
        );
        assert_eq!(s.acked(&run(0)), vec![], "forgotten");
        assert_eq!(
            s.refused(&run(2)),
            vec![Action::Forget(run(2)), Action::SendUnstarted(run(2))],
            "a queued run is dropped, and the master told so"
        );
        assert_eq!(s.refused(&run(2)), vec![], "once");
        assert_eq!(s.held(), 1);
    }

    /// The leak of issue 10, finding 5: a shard waiting for a slot when the
    /// link ended used to wait for an acknowledgement forever, so a later
    /// drain never finished.
    #[test]
    fn a_lost_link_forgets_what_waited_and_a_later_drain_finishes() {
        let mut s = WorkerSession::new(1);
        s.connected(1);
        s.assigned(run(0), true, 0).unwrap();
        s.assigned(run(1), true, 0).unwrap();
        s.acked(&run(0));
        assert_eq!(s.disconnected(), vec![Action::Forget(run(1))]);
        // A new master assigns the same shard again: the old run is not its
        // run, and it still holds the only slot.
        s.connected(2);
        assert_eq!(s.assigned(at(2, 0), true, 0), Ok(vec![]), "no second slot");
        assert_eq!(
            s.finished(&run(0)),
            vec![Action::Forget(run(0)), Action::SendStarted(at(2, 0))],
            "the old link's report goes nowhere; its slot goes to the new link"
        );
        s.acked(&at(2, 0));
        assert_eq!(s.drain(), vec![Action::SendDraining]);
        assert_eq!(
            s.finished(&at(2, 0)),
            vec![Action::SendReport(at(2, 0)), Action::SendDrained]
        );
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn a_slot_takes_the_highest_priority_first_but_never_past_a_run_that_waits_for_its_ack() {
        let mut s = WorkerSession::new(1);
        s.connected(1);
        let ran = |actions: Vec<Action>| -> Vec<u64> {
            actions
                .into_iter()
                .filter_map(|a| match a {
                    Action::SendStarted(r) => Some(r.shard.index.into()),
                    _ => None,
                })
                .collect()
        };
        // The slot runs run 0; 1, 2 (priority 0) and 3 (priority 5) wait.
        assert_eq!(ran(s.assigned(run(0), false, 0).unwrap()), [0]);
        s.assigned(run(1), false, 0).unwrap();
        s.assigned(run(2), false, 0).unwrap();
        s.assigned(run(3), false, 5).unwrap();
        // Run 4 waits for its acknowledgement: it keeps its place, and
        // run 5, of a higher priority, does not pass it.
        s.assigned(run(4), true, 0).unwrap();
        s.assigned(run(5), false, 9).unwrap();
        let mut order = Vec::new();
        let mut next = s.finished(&run(0));
        for _ in 0..5 {
            let started = ran(next);
            assert_eq!(started.len(), 1, "one slot");
            let i = started[0];
            order.push(i);
            let r = run(i as u32);
            next = if i == 4 {
                let mut acked = s.acked(&r);
                acked.extend(s.finished(&r));
                acked
            } else {
                s.finished(&r)
            };
        }
        assert_eq!(order, [3, 1, 2, 4, 5]);
    }

    #[test]
    fn draining_hands_back_the_queue_and_refuses_new_work() {
        let mut s = WorkerSession::new(1);
        s.connected(1);
        s.assigned(run(0), true, 0).unwrap();
        s.assigned(run(1), true, 0).unwrap();
        assert_eq!(
            s.drain(),
            vec![Action::Forget(run(1)), Action::SendDraining]
        );
        assert_eq!(s.drain(), vec![]);
        assert_eq!(s.assigned(run(2), true, 0), Err(Refused::Draining));
        // Started before the drain: its ack still comes, and it runs.
        assert_eq!(s.acked(&run(0)), vec![Action::Run(run(0))]);
        assert_eq!(
            s.finished(&run(0)),
            vec![Action::SendReport(run(0)), Action::SendDrained]
        );
        let idle = WorkerSession::new(2).drain();
        assert_eq!(idle, vec![], "without a link, nobody to tell");
    }

    /// Random events against the invariants: slots are never exceeded,
    /// every accepted run ends exactly once (reported or forgotten), a
    /// report goes only to the link that started it, and `Drained` is
    /// said only when nothing holds a slot.
    #[test]
    fn random_histories_keep_the_invariants() {
        let (mut reported, mut forgotten, mut drains, mut ran) = (0, 0, 0, 0);
        let (mut unstarted, mut cancelled) = (0, 0);
        for seed in 0..500u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let slots = rng.gen_range(1..4);
            let mut s = WorkerSession::new(slots);
            let mut epoch = 0u64;
            let mut link: Option<u64> = None;
            let mut started_on: BTreeMap<RunId, u64> = BTreeMap::new();
            let mut live: BTreeSet<RunId> = BTreeSet::new();
            let mut running: Vec<RunId> = Vec::new();
            let mut starting: Vec<RunId> = Vec::new();
            let mut next = 0u32;
            let mut drained = 0;
            for _ in 0..200 {
                let actions = match rng.gen_range(0..10) {
                    0 => {
                        epoch += 1;
                        link = Some(epoch);
                        starting.clear();
                        s.connected(epoch)
                    }
                    1 => {
                        link = None;
                        starting.clear();
                        s.disconnected()
                    }
                    2..=4 => {
                        // Mostly new shards, sometimes one already held.
                        let i = if next > 0 && rng.gen_bool(0.2) {
                            rng.gen_range(0..next)
                        } else {
                            next
                        };
                        next += 1;
                        let r = at(link.unwrap_or(0), i);
                        match s.assigned(r.clone(), rng.gen_bool(0.5), 0) {
                            Ok(a) => {
                                live.insert(r);
                                a
                            }
                            Err(_) => Vec::new(),
                        }
                    }
                    // The master revokes or stops a run, in whatever state.
                    5 if !live.is_empty() && rng.gen_bool(0.1) => {
                        let r = live.iter().nth(rng.gen_range(0..live.len())).cloned();
                        match (r, rng.gen_bool(0.5)) {
                            (Some(r), true) => s.refused(&r),
                            (Some(r), false) => {
                                starting.retain(|x| *x != r);
                                s.stop(&r)
                            }
                            (None, _) => Vec::new(),
                        }
                    }
                    5 | 6 if !starting.is_empty() => {
                        let r = starting.swap_remove(rng.gen_range(0..starting.len()));
                        if rng.gen_bool(0.9) {
                            s.acked(&r)
                        } else {
                            s.refused(&r)
                        }
                    }
                    7 | 8 if !running.is_empty() => {
                        let r = running.swap_remove(rng.gen_range(0..running.len()));
                        s.finished(&r)
                    }
                    9 if rng.gen_bool(0.02) => s.drain(),
                    _ => Vec::new(),
                };
                for a in actions {
                    match a {
                        Action::SendStarted(r) => {
                            assert!(link.is_some(), "seed {seed}");
                            started_on.insert(r.clone(), link.unwrap_or(0));
                            starting.push(r);
                        }
                        Action::Run(r) => {
                            // It ran after saying `Started` on this link.
                            assert_eq!(started_on.get(&r).copied(), link, "seed {seed}");
                            starting.retain(|x| *x != r);
                            running.push(r);
                            ran += 1;
                        }
                        Action::SendReport(r) => {
                            assert_eq!(started_on.get(&r).copied(), link, "seed {seed}");
                            assert_eq!(Some(r.epoch), link, "seed {seed}");
                            assert!(live.remove(&r), "seed {seed}");
                            reported += 1;
                        }
                        Action::Forget(r) => {
                            assert!(live.remove(&r), "seed {seed}");
                            forgotten += 1;
                        }
                        Action::SendUnstarted(r) => {
                            assert!(!live.contains(&r), "seed {seed}: forgotten first");
                            assert!(!running.contains(&r) && !starting.contains(&r));
                            unstarted += 1;
                        }
                        Action::Cancel(r) => {
                            assert!(running.contains(&r), "seed {seed}: only a running run");
                            cancelled += 1;
                        }
                        Action::SendDraining => assert!(s.draining()),
                        Action::SendDrained => {
                            assert_eq!(s.in_slots(), 0, "seed {seed}");
                            drained += 1;
                            drains += 1;
                        }
                    }
                }
                assert!(s.in_slots() <= slots as usize, "seed {seed}");
                assert_eq!(s.held(), live.len(), "seed {seed}");
            }
            // The end: every run finishes; a drain on a link then completes.
            while let Some(r) = running.pop() {
                for a in s.finished(&r) {
                    match a {
                        Action::SendReport(r) | Action::Forget(r) => {
                            assert!(live.remove(&r), "seed {seed}")
                        }
                        // The next of its queue, if it need not wait.
                        Action::Run(r) => running.push(r),
                        _ => {}
                    }
                }
            }
            let mut last = s.connected(epoch + 1);
            last.extend(s.drain());
            for a in &last {
                if let Action::Forget(r) = a {
                    assert!(live.remove(r), "seed {seed}");
                }
            }
            assert!(last.contains(&Action::SendDrained), "seed {seed}: {last:?}");
            assert!(live.is_empty() && s.held() == 0, "seed {seed}");
            assert!(drained <= 1 || s.draining(), "seed {seed}");
        }
        // The histories reached every outcome.
        assert!(
            reported > 1000
                && forgotten > 1000
                && drains > 50
                && ran > 1000
                && unstarted > 20
                && cancelled > 20,
            "{reported} {forgotten} {drains} {ran} {unstarted} {cancelled}"
        );
    }
}
