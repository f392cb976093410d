//! Group commit: every fenced write of the master goes through one writer,
//! which puts the writes waiting when a transaction can be sent into one
//! fenced multi (one check of the election znode, one fsync on the
//! servers), under the request budget. A write is itself a list of
//! operations that must apply together (a job's record with its tasks, a
//! result with `Done`). One transaction is on its way at a time, unless
//! it is big or full ([`may_send`]); what arrives meanwhile makes the next
//! one bigger, so the batches grow with the load and a lone write goes at
//! once.
//!
//! Each write keeps its own answer, as if it had been sent alone: a multi
//! is atomic, so when one operation fails (`NodeExists`: a shard already
//! committed; `BadVersion`: a job cancelled meanwhile) ZooKeeper names it,
//! the write it belongs to gets the error, and the others go again without
//! it. A connection loss sends the whole batch again; a write applied
//! before the loss then fails on its first operation (`NodeExists` for a
//! create, `NoNode` for a delete), which callers read as done, as they did
//! with a lone write. A failed fence fails every write of the batch.
//!
//! A write may be amended while it waits ([`Amend`]): a proposal made
//! before its transaction is sealed is sent instead of the write's own
//! operations, if it fits the transaction's budget, and the answer says
//! which were sent. A compact job's create thus becomes its create and
//! its end in one write when the job's only shard reports before the
//! create has gone (see `LeaderStore::propose_end`).
//!
//! Shard commits are parts, not writes of their own: the commits of one
//! job that wait together become one commit record (see
//! [`crate::coord::RecordName`]), one znode holding all their outcomes,
//! named by this writer before it is sent. A big job thus leaves a znode
//! per transaction's worth of commits, not one per shard, and collecting
//! it deletes as few.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use zookeeper_client::{CheckWriteError, CheckWriter, Error as ZkError, OwnedLockClient};

use crate::coord::zk::{AclMode, REQUEST_BUDGET};

/// Most operations in one transaction.
const MAX_OPS: usize = 2000;
/// Bytes an operation adds to a request besides its path and data.
const OP_OVERHEAD: usize = 64;
/// Writes waiting for the writer at most: several full transactions'
/// worth ([`MAX_OPS`] operations each).
const WRITE_QUEUE: usize = 16 * 1024;
/// Connection losses a batch is sent again through.
const RETRIES: u32 = 20;
/// How long a batch of a big job's commits waits for more, and the
/// operations that end the wait (see [`run`]).
const LINGER: Duration = Duration::from_millis(2);
const LINGER_OPS: usize = 256;
/// Transactions on their way at once, at most (see [`may_send`]): a
/// transaction of big writes (shard outputs of hundreds of KiB) must not
/// hold the next one back for a whole round trip and fsync, while
/// ZooKeeper applies them in order anyway.
const IN_FLIGHT: usize = 2;
/// A transaction of at least this many bytes lets a second go beside it.
const BIG_TRANSACTION: usize = 64 * 1024;
/// How long an amendable write is held back for a proposal at most (see
/// [`Write::held`]): about a one-task job's run under load, so that a
/// work queue's job is mostly created and ended in one write.
const HOLD: Duration = Duration::from_millis(2);

/// One operation of a fenced write.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Create a persistent znode.
    Create { path: String, data: Vec<u8> },
    /// Set a znode's data (if its version is `version`).
    Set {
        path: String,
        data: Vec<u8>,
        version: Option<i32>,
    },
    /// Delete a znode (it must have no children).
    Delete { path: String },
}

impl Op {
    /// Creates `path` holding `data`.
    pub(super) fn create(path: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Op::Create {
            path: path.into(),
            data: data.into(),
        }
    }

    /// Sets `path`'s data, if its version is `version` (any with `None`).
    pub(super) fn set(
        path: impl Into<String>,
        data: impl Into<Vec<u8>>,
        version: Option<i32>,
    ) -> Self {
        Op::Set {
            path: path.into(),
            data: data.into(),
            version,
        }
    }

    /// Deletes `path`.
    pub(super) fn delete(path: impl Into<String>) -> Self {
        Op::Delete { path: path.into() }
    }

    fn bytes(&self) -> usize {
        OP_OVERHEAD
            + match self {
                Op::Create { path, data } | Op::Set { path, data, .. } => path.len() + data.len(),
                Op::Delete { path } => path.len(),
            }
    }

    /// Adds it to a transaction.
    pub(super) fn add(&self, w: &mut CheckWriter<'_>, acl: AclMode) -> Result<(), ZkError> {
        match self {
            Op::Create { path, data } => w.add_create(path, data, &acl.persistent()),
            Op::Set {
                path,
                data,
                version,
            } => w.add_set_data(path, data, *version),
            Op::Delete { path } => w.add_delete(path, None),
        }
    }
}

/// One shard's commit, to be joined with the other commits of its job
/// that wait with it into one commit record.
#[derive(Debug)]
pub(super) struct Part {
    /// The job's commit parent (`done`): which parts may share a record.
    pub job: String,
    /// The bucket a record starting with this part goes into.
    pub bucket: String,
    /// The encoded `(ShardKey, ShardRecord)` pair.
    pub entry: Vec<u8>,
}

/// A handle on a waiting write: another list of operations may be
/// proposed in its place until its transaction is sealed (see the module
/// doc). Clones share the write.
#[derive(Clone, Default, Debug)]
pub struct Amend(Arc<std::sync::Mutex<Amending>>);

#[derive(Default, Debug)]
struct Amending {
    state: Amendment,
    /// Wakes the writer when a proposal comes for a write it holds back.
    wake: Option<Arc<tokio::sync::Notify>>,
}

#[derive(Default, Debug)]
enum Amendment {
    /// The write waits; nothing proposed.
    #[default]
    Open,
    /// The write waits; these operations go in its place if they fit.
    Proposed(Vec<Op>),
    /// Its transaction was sealed: nothing more is taken.
    Sealed,
}

impl Amend {
    /// Proposes `ops` in place of the write's own. Whether the proposal
    /// was taken: a write whose transaction is sealed takes none. A taken
    /// proposal is sent unless it would take its transaction past the
    /// request budget; the write's answer says which went.
    pub(super) fn propose(&self, ops: Vec<Op>) -> bool {
        let mut a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match a.state {
            Amendment::Sealed => false,
            Amendment::Open | Amendment::Proposed(_) => {
                a.state = Amendment::Proposed(ops);
                if let Some(wake) = &a.wake {
                    wake.notify_one();
                }
                true
            }
        }
    }

    /// Whether nothing was proposed yet (the write may be held back for
    /// a proposal).
    fn is_open(&self) -> bool {
        let a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        matches!(a.state, Amendment::Open)
    }

    /// Seals the write: its proposal, if one was made.
    fn seal(&self) -> Option<Vec<Op>> {
        let mut a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut a.state, Amendment::Sealed) {
            Amendment::Proposed(ops) => Some(ops),
            Amendment::Open | Amendment::Sealed => None,
        }
    }
}

/// What a write's transaction said: the write's result (for a part, the
/// path of the record that holds it) and whether a proposal
/// ([`Amend::propose`]) was sent in place of its own operations.
type Answer = (Result<Option<Arc<str>>, ZkError>, bool);

/// A write waiting for its transaction.
struct Write {
    /// Which metric it is measured under (one of [`crate::metrics::ZK_OPS`]).
    name: &'static str,
    ops: Vec<Op>,
    part: Option<Part>,
    since: Instant,
    /// Where a proposal in place of `ops` comes from, if one may.
    amend: Option<Amend>,
    /// Whether `ops` are a proposal (set when sealed).
    proposed: bool,
    /// The answer: for a part, the path of the record that holds it.
    done: oneshot::Sender<Answer>,
}

/// What one transaction applies for one or more writes: a write's own
/// operations, or a commit record joining parts.
struct Unit {
    ops: Vec<Op>,
    writes: Vec<Write>,
    /// The commit record this unit creates, if it joins parts.
    record: Option<Arc<str>>,
}

impl Write {
    fn bytes(&self) -> usize {
        self.ops.iter().map(Op::bytes).sum::<usize>()
            + self
                .part
                .as_ref()
                .map_or(0, |p| OP_OVERHEAD + p.bucket.len() + p.entry.len())
    }

    /// Whether it is held back at `now`: an amendable write with nothing
    /// proposed waits up to [`HOLD`] for its proposal (a compact job's
    /// create for the job's end, which its run brings within a
    /// millisecond or two), instead of going with the next transaction
    /// and leaving the end to a write of its own.
    fn held(&self, now: Instant) -> bool {
        self.amend
            .as_ref()
            .is_some_and(|a| now < self.since + HOLD && a.is_open())
    }

    /// Operations it adds to a transaction (a part at most one).
    fn op_count(&self) -> usize {
        self.ops.len().max(usize::from(self.part.is_some()))
    }

    fn answer(self, result: Result<Option<Arc<str>>, ZkError>) {
        crate::metrics::zk_op_seconds(self.name).record(self.since.elapsed().as_secs_f64());
        if matches!(&result, Err(e) if !matches!(e, ZkError::NodeExists | ZkError::NoNode)) {
            metrics::counter!(crate::metrics::ZK_ERRORS, "op" => self.name).increment(1);
        }
        let _ = self.done.send((result, self.proposed));
    }
}

/// The sending side; the writer task ends when the last clone is dropped.
#[derive(Clone, Debug)]
pub(super) struct Batcher {
    /// Bounded ([`WRITE_QUEUE`]): a write that finds it full waits (in
    /// its caller's task, never the master's actor) until the writer
    /// takes some, so a ZooKeeper slower than the master's writes holds
    /// the writes back instead of growing the queue.
    tx: mpsc::Sender<Write>,
    /// Wakes the writer when a write it holds back gets its proposal.
    wake: Arc<tokio::sync::Notify>,
    /// Transactions sent, retries included.
    sent: Arc<AtomicU64>,
}

impl Batcher {
    /// Starts the writer on the current runtime. It holds the lock weakly:
    /// the candidacy ends with the last `LeaderStore`, not with this task.
    /// `records` names this master's commit records: `c<epoch>.<candidacy>`.
    pub(super) fn start(lock: Weak<OwnedLockClient>, acl: AclMode, records: String) -> Self {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let sent = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(run(lock, rx, sent.clone(), acl, records, wake.clone()));
        Batcher { tx, wake, sent }
    }

    /// Transactions sent so far, retries included.
    pub(super) fn transactions(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Applies `ops` together, fenced, in the next transaction; answers as
    /// a lone fenced multi would (connection losses are retried inside).
    pub(super) async fn write(&self, name: &'static str, ops: Vec<Op>) -> Result<(), ZkError> {
        self.send(name, ops, None, None).await.0.map(|_| ())
    }

    /// As [`Batcher::write`], with `amend` able to replace `ops` until
    /// the write is sealed into a transaction; also answers whether the
    /// replacement was what went.
    pub(super) async fn write_amendable(
        &self,
        name: &'static str,
        ops: Vec<Op>,
        amend: Amend,
    ) -> (Result<(), ZkError>, bool) {
        amend.0.lock().unwrap_or_else(|p| p.into_inner()).wake = Some(self.wake.clone());
        let (res, proposed) = self.send(name, ops, None, Some(amend)).await;
        (res.map(|_| ()), proposed)
    }

    /// Commits a shard's outcome as part of its job's next commit record;
    /// answers the record's path once it is durable. A record that exists
    /// already when it is sent again (after a connection loss) is this
    /// writer's own: its name is unique to it.
    pub(super) async fn commit_part(
        &self,
        name: &'static str,
        part: Part,
    ) -> Result<Arc<str>, ZkError> {
        match self.send(name, Vec::new(), Some(part), None).await.0? {
            Some(path) => Ok(path),
            None => Err(ZkError::UnexpectedError(
                "a commit record was written without a name".into(),
            )),
        }
    }

    async fn send(
        &self,
        name: &'static str,
        ops: Vec<Op>,
        part: Option<Part>,
        amend: Option<Amend>,
    ) -> Answer {
        let (done, answer) = oneshot::channel();
        let write = Write {
            name,
            ops,
            part,
            since: Instant::now(),
            amend,
            proposed: false,
            done,
        };
        if self.tx.send(write).await.is_err() {
            return (Err(ZkError::SessionExpired), false);
        }
        answer
            .await
            .unwrap_or((Err(ZkError::SessionExpired), false))
    }
}

/// The writer: takes what is queued, up to the budget, and commits it,
/// with one transaction on its way at a time unless [`may_send`] lets a
/// second go.
async fn run(
    lock: Weak<OwnedLockClient>,
    mut rx: mpsc::Receiver<Write>,
    sent: Arc<AtomicU64>,
    acl: AclMode,
    records: String,
    wake: Arc<tokio::sync::Notify>,
) {
    use futures::StreamExt;
    let mut seq = 0u64;
    // Commits per job in the last transaction sent.
    let mut last: HashMap<String, usize> = HashMap::new();
    // The next transaction, and a write that did not fit in it.
    let mut batch = Batch::default();
    let mut carried: Option<Write> = None;
    // Transactions in flight; each answers whether it held the next back.
    let mut flying = futures::stream::FuturesUnordered::new();
    let mut holding = 0usize;
    let mut open = true;
    loop {
        while open && carried.is_none() {
            match rx.try_recv() {
                Ok(w) => carried = batch.add(w),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        // Writes held back for a proposal, and when the first is due.
        let held_until = batch
            .writes
            .iter()
            .filter(|w| w.held(now))
            .map(|w| w.since + HOLD)
            .min();
        let ready = batch.writes.iter().any(|w| !w.held(now));
        if batch.writes.is_empty() {
            if !open {
                while flying.next().await.is_some() {}
                return;
            }
        } else if ready && may_send(flying.len(), holding, carried.is_some()) {
            // A batch of nothing but commits of jobs that had several in
            // the last transaction too (a big job's stream of them) waits
            // up to LINGER for more: records of tens of commits, not a
            // few, so a big job leaves fewer znodes and ZooKeeper fsyncs
            // less often. Anything else, a one-task job's commit
            // included, goes at once.
            if open && carried.is_none() && lingers(&batch.writes, &last) {
                let until = tokio::time::Instant::now() + LINGER;
                while batch.ops < LINGER_OPS && carried.is_none() {
                    let next = tokio::select! {
                        w = rx.recv() => w,
                        Some(held) = flying.next(), if !flying.is_empty() => {
                            holding -= usize::from(held);
                            continue;
                        }
                        () = tokio::time::sleep_until(until) => break,
                    };
                    let Some(w) = next else {
                        open = false;
                        break;
                    };
                    let other = w.part.is_none();
                    carried = batch.add(w);
                    if other {
                        break;
                    }
                }
            }
            let full = carried.is_some();
            let Batch { writes, .. } = std::mem::take(&mut batch);
            // The held writes stay for the next transaction.
            let now = Instant::now();
            let (held, mut writes): (Vec<Write>, Vec<Write>) =
                writes.into_iter().partition(|w| w.held(now));
            for w in held {
                if let Some(w) = batch.add(w) {
                    writes.push(w);
                }
            }
            let bytes = writes.iter().map(Write::bytes).sum();
            let bytes = seal(&mut writes, bytes);
            if let Some(w) = carried.take() {
                carried = batch.add(w);
            }
            last.clear();
            for p in writes.iter().filter_map(|w| w.part.as_ref()) {
                *last.entry(p.job.clone()).or_insert(0) += 1;
            }
            let Some(lock) = lock.upgrade() else {
                for w in writes.into_iter().chain(std::mem::take(&mut batch).writes) {
                    w.answer(Err(ZkError::SessionExpired));
                }
                return;
            };
            let units = units(writes, &records, &mut seq);
            let sent = sent.clone();
            let holds = !full && bytes < BIG_TRANSACTION;
            holding += usize::from(holds);
            flying.push(async move {
                commit(&lock, units, &sent, acl).await;
                holds
            });
            continue;
        }
        let hold_over = tokio::time::Instant::from_std(held_until.unwrap_or(now));
        tokio::select! {
            w = rx.recv(), if open && carried.is_none() => match w {
                Some(w) => carried = batch.add(w),
                None => open = false,
            },
            Some(held) = flying.next(), if !flying.is_empty() => {
                holding -= usize::from(held);
            }
            // A held write got its proposal, or its hold is over.
            () = wake.notified(), if held_until.is_some() => {}
            () = tokio::time::sleep_until(hold_over), if held_until.is_some() => {}
        }
    }
}

/// Whether the next transaction may go now, with `flying` on their way of
/// which `holding` hold it back, and `full` when it leaves writes behind.
///
/// One at a time: what arrives during a round trip goes together in the
/// next one, so under load ZooKeeper applies (and fsyncs) a transaction
/// per dozen jobs, not per few. A second may go behind a big transaction
/// (of outputs: its round trip is long, and nothing waits on it but its
/// own writes), or behind a full one, whose leftovers would otherwise wait
/// a round trip they did not need to.
fn may_send(flying: usize, holding: usize, full: bool) -> bool {
    flying == 0 || (flying < IN_FLIGHT && (holding == 0 || full))
}

/// The writes of the next transaction, with their size.
#[derive(Default)]
struct Batch {
    writes: Vec<Write>,
    bytes: usize,
    ops: usize,
}

impl Batch {
    /// Adds `w`, or gives it back if it would take the transaction past
    /// the request budget (a first write always goes in).
    fn add(&mut self, w: Write) -> Option<Write> {
        let full = self.bytes + w.bytes() > REQUEST_BUDGET || self.ops + w.op_count() > MAX_OPS;
        if full && !self.writes.is_empty() {
            return Some(w);
        }
        self.bytes += w.bytes();
        self.ops += w.op_count();
        self.writes.push(w);
        None
    }
}

/// Seals a transaction's writes: a proposal made in place of a write's
/// operations ([`Amend`]) goes instead of them if the transaction stays
/// within the request budget and the operation cap, else the write's own
/// go. Returns the transaction's bytes.
fn seal(writes: &mut [Write], mut bytes: usize) -> usize {
    let mut ops: usize = writes.iter().map(Write::op_count).sum();
    for w in writes.iter_mut() {
        let Some(proposal) = w.amend.as_ref().and_then(Amend::seal) else {
            continue;
        };
        let (old_bytes, old_ops) = (w.bytes(), w.op_count());
        let new_bytes: usize = proposal.iter().map(Op::bytes).sum();
        let fits = bytes - old_bytes + new_bytes <= REQUEST_BUDGET
            && ops - old_ops + proposal.len() <= MAX_OPS;
        if fits && !proposal.is_empty() && w.part.is_none() {
            bytes = bytes - old_bytes + new_bytes;
            ops = ops - old_ops + proposal.len();
            w.ops = proposal;
            w.proposed = true;
        }
    }
    bytes
}

/// Whether a batch waits for more (see [`run`]): all of it commits of jobs
/// that had at least two in the last transaction.
fn lingers(batch: &[Write], last: &HashMap<String, usize>) -> bool {
    batch.iter().all(|w| {
        w.part
            .as_ref()
            .is_some_and(|p| last.get(&p.job).is_some_and(|&n| n >= 2))
    })
}

/// A batch's transaction units: each write's own operations, and for each
/// job one commit record joining its parts (named `records.<seq>`, in the
/// bucket of its first part).
fn units(batch: Vec<Write>, records: &str, seq: &mut u64) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::with_capacity(batch.len());
    let mut jobs: HashMap<String, usize> = HashMap::new();
    for mut w in batch {
        let Some(part) = &w.part else {
            let ops = std::mem::take(&mut w.ops);
            units.push(Unit {
                ops,
                writes: vec![w],
                record: None,
            });
            continue;
        };
        match jobs.get(&part.job) {
            Some(&k) => units[k].writes.push(w),
            None => {
                jobs.insert(part.job.clone(), units.len());
                units.push(Unit {
                    ops: Vec::new(),
                    writes: vec![w],
                    record: None,
                });
            }
        }
    }
    for &k in jobs.values() {
        let unit = &mut units[k];
        let parts: Vec<&Part> = unit.writes.iter().filter_map(|w| w.part.as_ref()).collect();
        let Some(first) = parts.first() else {
            continue;
        };
        let path = format!("{}/{records}.{seq}", first.bucket);
        *seq += 1;
        let entries: Vec<&[u8]> = parts.iter().map(|p| p.entry.as_slice()).collect();
        unit.ops = vec![Op::create(
            &path,
            crate::coord::records::join_entries(&entries),
        )];
        unit.record = Some(path.into());
        crate::counter_once!(crate::metrics::COMMIT_RECORDS).increment(1);
    }
    units
}

impl Unit {
    fn answer(self, result: Result<(), ZkError>) {
        let result = match (result, &self.record) {
            // The record's name is this writer's alone: it is there
            // because an earlier send of this unit applied.
            (Ok(()) | Err(ZkError::NodeExists), Some(path)) => Ok(Some(path.clone())),
            (Ok(()), None) => Ok(None),
            (Err(e), _) => Err(e),
        };
        for w in self.writes {
            w.answer(result.clone());
        }
    }
}

/// Commits a batch, answering each write; retried as the module doc says.
async fn commit(lock: &OwnedLockClient, mut batch: Vec<Unit>, sent: &AtomicU64, acl: AclMode) {
    let mut delay = Duration::from_millis(10);
    let mut losses = 0;
    while !batch.is_empty() {
        sent.fetch_add(1, Ordering::Relaxed);
        crate::counter_once!(crate::metrics::ZK_TRANSACTIONS).increment(1);
        let res = {
            let mut w = lock.new_check_writer();
            let added = batch
                .iter()
                .flat_map(|b| &b.ops)
                .try_for_each(|op| op.add(&mut w, acl));
            match added {
                Ok(()) => w.commit().await.map(|_| ()),
                Err(e) => Err(CheckWriteError::RequestFailed { source: e }),
            }
        };
        match res {
            Ok(()) => {
                for u in batch {
                    u.answer(Ok(()));
                }
                return;
            }
            Err(CheckWriteError::OperationFailed { index, source }) => {
                // The unit that holds operation `index` fails alone.
                let mut first = 0;
                let owner = batch.iter().position(|w| {
                    first += w.ops.len();
                    index < first
                });
                match owner {
                    Some(k) => batch.remove(k).answer(Err(source)),
                    None => {
                        for u in batch {
                            u.answer(Err(source.clone()));
                        }
                        return;
                    }
                }
            }
            Err(CheckWriteError::RequestFailed {
                source: ZkError::ConnectionLoss,
            }) if losses < RETRIES => {
                losses += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(e) => {
                let e = ZkError::from(e);
                for u in batch {
                    u.answer(Err(e.clone()));
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(part: Option<&str>) -> Write {
        Write {
            name: "commit",
            ops: match part {
                Some(_) => Vec::new(),
                None => vec![Op::delete("/x")],
            },
            part: part.map(|job| Part {
                job: job.to_string(),
                bucket: format!("{job}/0"),
                entry: vec![0x90],
            }),
            since: Instant::now(),
            amend: None,
            proposed: false,
            done: oneshot::channel().0,
        }
    }

    #[test]
    fn only_a_big_jobs_stream_of_commits_waits_for_more() {
        let last: HashMap<String, usize> = [("big", 3), ("two", 2), ("one", 1)]
            .into_iter()
            .map(|(job, n)| (job.to_string(), n))
            .collect();
        let lingers_for = |batch: &[Option<&str>]| {
            let batch: Vec<Write> = batch.iter().map(|p| write(*p)).collect();
            lingers(&batch, &last)
        };
        assert!(lingers_for(&[Some("big")]));
        assert!(lingers_for(&[Some("big"), Some("two"), Some("big")]));
        // A job with one commit in the last transaction (a small job's
        // next shard), or none (a one-task job): at once.
        assert!(!lingers_for(&[Some("one")]));
        assert!(!lingers_for(&[Some("new")]));
        assert!(!lingers_for(&[Some("big"), Some("new")]));
        // Anything but commits: at once.
        assert!(!lingers_for(&[Some("big"), None]));
        assert!(!lingers_for(&[None]));
    }

    #[test]
    fn a_second_transaction_goes_only_behind_a_big_or_full_one() {
        // Nothing in flight: at once, full or not.
        assert!(may_send(0, 0, false));
        assert!(may_send(0, 0, true));
        // Behind a small one: wait for it, unless this one leaves writes
        // behind (the load outgrew one transaction).
        assert!(!may_send(1, 1, false));
        assert!(may_send(1, 1, true));
        // Behind a big or full one: at once.
        assert!(may_send(1, 0, false));
        // Never a third.
        assert!(!may_send(2, 0, false));
        assert!(!may_send(2, 0, true));
        assert!(!may_send(2, 1, true));
    }

    /// A create of `len` bytes of data that may be amended.
    fn amendable(len: usize) -> (Write, Amend) {
        let amend = Amend::default();
        let mut w = write(None);
        w.ops = vec![Op::create("/j", vec![0; len])];
        w.amend = Some(amend.clone());
        (w, amend)
    }

    #[test]
    fn a_proposal_goes_in_place_of_its_write_only_until_sealed_and_within_the_budget() {
        let (a, amend_a) = amendable(10);
        let (b, amend_b) = amendable(10);
        let (c, _never) = amendable(10);
        let mut writes = vec![a, b, c, write(None)];
        let bytes: usize = writes.iter().map(Write::bytes).sum();
        // a's proposal fits; b's would take the transaction past the budget.
        assert!(amend_a.propose(vec![Op::create("/j", vec![1; 100])]));
        assert!(
            amend_a.propose(vec![Op::create("/j", vec![2; 200])]),
            "the last proposal counts"
        );
        assert!(amend_b.propose(vec![Op::create("/j", vec![3; REQUEST_BUDGET])]));
        let sealed = seal(&mut writes, bytes);
        assert_eq!(sealed, bytes - 10 + 200);
        assert!(writes[0].proposed);
        assert!(matches!(&writes[0].ops[0], Op::Create { data, .. } if data == &vec![2; 200]));
        assert!(!writes[1].proposed, "too big: the write's own went");
        assert!(matches!(&writes[1].ops[0], Op::Create { data, .. } if data.len() == 10));
        assert!(!writes[2].proposed, "nothing proposed");
        // Sealed: a later proposal is refused, so its caller writes apart.
        assert!(!amend_a.propose(vec![Op::delete("/j")]));
        assert!(!amend_b.propose(vec![Op::delete("/j")]));
        // A write not yet sealed (carried into the next transaction) takes one.
        let (d, amend_d) = amendable(10);
        assert!(amend_d.propose(vec![Op::delete("/j")]));
        let mut next = vec![d];
        let bytes = next[0].bytes();
        seal(&mut next, bytes);
        assert!(next[0].proposed && matches!(next[0].ops[0], Op::Delete { .. }));
    }

    #[test]
    fn a_jobs_commits_waiting_together_make_one_record_each() {
        let batch = vec![
            write(Some("a")),
            write(None),
            write(Some("b")),
            write(Some("a")),
        ];
        let mut seq = 5;
        let units = units(batch, "c3.7", &mut seq);
        assert_eq!(seq, 7, "two records named");
        assert_eq!(units.len(), 3);
        let records: Vec<(&str, usize)> = units
            .iter()
            .filter_map(|u| Some((u.record.as_deref()?, u.writes.len())))
            .collect();
        assert_eq!(records.len(), 2);
        assert!(records.contains(&("a/0/c3.7.5", 2)) || records.contains(&("a/0/c3.7.6", 2)));
        assert!(records.iter().all(|(path, _)| path.contains("/c3.7.")));
        for u in &units {
            assert_eq!(u.ops.len(), 1, "one create per record, the write's own op");
        }
    }
}
