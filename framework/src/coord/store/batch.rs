//! Group commit: every fenced write of the master goes through one writer,
//! which puts the writes waiting when a transaction can be sent into one
//! fenced multi (one check of the election znode, one fsync on the
//! servers), under the request budget. A write is itself a list of
//! operations that must apply together (a job's record with its tasks, a
//! result with `Done`). Up to two transactions are in flight at a time;
//! what arrives meanwhile makes the next one bigger, so the batches grow
//! with the load and a lone write goes at once.
//!
//! Each write keeps its own answer, as if it had been sent alone: a multi
//! is atomic, so when one operation fails (`NodeExists`: a shard already
//! committed; `BadVersion`: a job cancelled meanwhile) ZooKeeper names it,
//! the write it belongs to gets the error, and the others go again without
//! it. A connection loss sends the whole batch again; a write applied
//! before the loss then fails on its first operation (`NodeExists` for a
//! create, `NoNode` for a delete), which callers read as done, as they did
//! with a lone write. A failed fence fails every write of the batch.

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
/// Connection losses a batch is sent again through.
const RETRIES: u32 = 20;
/// Transactions on their way at once: a transaction of big writes (shard
/// outputs of hundreds of KiB) must not hold the next one back for a whole
/// round trip and fsync, while ZooKeeper applies them in order anyway.
const IN_FLIGHT: usize = 2;

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

/// A write waiting for its transaction.
struct Write {
    /// Which metric it is measured under (one of [`crate::metrics::ZK_OPS`]).
    name: &'static str,
    ops: Vec<Op>,
    since: Instant,
    done: oneshot::Sender<Result<(), ZkError>>,
}

impl Write {
    fn bytes(&self) -> usize {
        self.ops.iter().map(Op::bytes).sum()
    }

    fn answer(self, result: Result<(), ZkError>) {
        metrics::histogram!(crate::metrics::ZK_OP_SECONDS, "op" => self.name)
            .record(self.since.elapsed().as_secs_f64());
        if matches!(&result, Err(e) if !matches!(e, ZkError::NodeExists | ZkError::NoNode)) {
            metrics::counter!(crate::metrics::ZK_ERRORS, "op" => self.name).increment(1);
        }
        let _ = self.done.send(result);
    }
}

/// The sending side; the writer task ends when the last clone is dropped.
#[derive(Clone, Debug)]
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<Write>,
    /// Transactions sent, retries included.
    sent: Arc<AtomicU64>,
}

impl Batcher {
    /// Starts the writer on the current runtime. It holds the lock weakly:
    /// the candidacy ends with the last `LeaderStore`, not with this task.
    pub(super) fn start(lock: Weak<OwnedLockClient>, acl: AclMode) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let sent = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(lock, rx, sent.clone(), acl));
        Batcher { tx, sent }
    }

    /// Transactions sent so far, retries included.
    pub(super) fn transactions(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Applies `ops` together, fenced, in the next transaction; answers as
    /// a lone fenced multi would (connection losses are retried inside).
    pub(super) async fn write(&self, name: &'static str, ops: Vec<Op>) -> Result<(), ZkError> {
        let (done, answer) = oneshot::channel();
        let write = Write {
            name,
            ops,
            since: Instant::now(),
            done,
        };
        if self.tx.send(write).is_err() {
            return Err(ZkError::SessionExpired);
        }
        answer.await.unwrap_or(Err(ZkError::SessionExpired))
    }
}

/// The writer: takes what is queued, up to the budget, and commits it,
/// with up to [`IN_FLIGHT`] transactions on their way at once.
async fn run(
    lock: Weak<OwnedLockClient>,
    mut rx: mpsc::UnboundedReceiver<Write>,
    sent: Arc<AtomicU64>,
    acl: AclMode,
) {
    use futures::StreamExt;
    let mut carried: Option<Write> = None;
    let mut flying = futures::stream::FuturesUnordered::new();
    loop {
        let first = match carried.take() {
            Some(w) => w,
            None if flying.len() >= IN_FLIGHT => {
                flying.next().await;
                continue;
            }
            None => {
                let next = tokio::select! {
                    w = rx.recv() => w,
                    Some(()) = flying.next(), if !flying.is_empty() => continue,
                };
                match next {
                    Some(w) => w,
                    None => {
                        while flying.next().await.is_some() {}
                        return;
                    }
                }
            }
        };
        let (mut bytes, mut ops) = (first.bytes(), first.ops.len());
        let mut batch = vec![first];
        loop {
            match rx.try_recv() {
                Ok(w) if bytes + w.bytes() > REQUEST_BUDGET || ops + w.ops.len() > MAX_OPS => {
                    carried = Some(w);
                    break;
                }
                Ok(w) => {
                    bytes += w.bytes();
                    ops += w.ops.len();
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        let Some(lock) = lock.upgrade() else {
            for w in batch {
                w.answer(Err(ZkError::SessionExpired));
            }
            return;
        };
        let sent = sent.clone();
        flying.push(async move { commit(&lock, batch, &sent, acl).await });
    }
}

/// Commits a batch, answering each write; retried as the module doc says.
async fn commit(lock: &OwnedLockClient, mut batch: Vec<Write>, sent: &AtomicU64, acl: AclMode) {
    let mut delay = Duration::from_millis(10);
    let mut losses = 0;
    while !batch.is_empty() {
        sent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::ZK_TRANSACTIONS).increment(1);
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
                for w in batch {
                    w.answer(Ok(()));
                }
                return;
            }
            Err(CheckWriteError::OperationFailed { index, source }) => {
                // The write that holds operation `index` fails alone.
                let mut first = 0;
                let owner = batch.iter().position(|w| {
                    first += w.ops.len();
                    index < first
                });
                match owner {
                    Some(k) => batch.remove(k).answer(Err(source)),
                    None => {
                        for w in batch {
                            w.answer(Err(source.clone()));
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
                for w in batch {
                    w.answer(Err(e.clone()));
                }
                return;
            }
        }
    }
}
