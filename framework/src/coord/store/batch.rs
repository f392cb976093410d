//! Group commit of shard commits: the creates that are waiting when a
//! transaction can be sent go together in one fenced multi (one check of
//! the election znode, one fsync on the servers), under the request budget.
//! One transaction is in flight at a time; what arrives meanwhile makes the
//! next one bigger, so the batches grow with the load and a lone commit
//! goes at once.
//!
//! Each create keeps its own answer, as if it had been sent alone: a multi
//! is atomic, so when one create fails (`NodeExists`: the shard is already
//! committed) ZooKeeper names it, that create gets the error, and the rest
//! go again without it. A connection loss sends the whole batch again; a
//! create applied before the loss then answers `NodeExists`, which the
//! caller reads as it always has (the record there is its own). A failed
//! fence fails every create of the batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use zookeeper_client::{CheckWriteError, Error as ZkError, OwnedLockClient};

use crate::coord::zk::{PERSISTENT, REQUEST_BUDGET};

/// Most creates in one transaction.
const MAX_BATCH: usize = 1000;
/// Bytes a create adds to a request besides its path and data.
const CREATE_OVERHEAD: usize = 64;

struct Create {
    path: String,
    data: Vec<u8>,
    done: oneshot::Sender<Result<(), ZkError>>,
}

impl Create {
    fn bytes(&self) -> usize {
        self.path.len() + self.data.len() + CREATE_OVERHEAD
    }
}

/// The sending side; the writer task ends when the last clone is dropped.
#[derive(Clone, Debug)]
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<Create>,
    /// Transactions sent, retries included.
    sent: Arc<AtomicU64>,
}

impl Batcher {
    /// Starts the writer on the current runtime. It holds the lock weakly:
    /// the candidacy ends with the last `LeaderStore`, not with this task.
    pub(super) fn start(lock: Weak<OwnedLockClient>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let sent = Arc::new(AtomicU64::new(0));
        tokio::spawn(write(lock, rx, sent.clone()));
        Batcher { tx, sent }
    }

    /// Transactions sent so far, retries included.
    pub(super) fn transactions(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Creates a persistent znode in the next transaction; answers as a
    /// lone fenced create would (connection losses are retried inside).
    pub(super) async fn create(&self, path: &str, data: Vec<u8>) -> Result<(), ZkError> {
        let (done, answer) = oneshot::channel();
        let create = Create {
            path: path.to_string(),
            data,
            done,
        };
        if self.tx.send(create).is_err() {
            return Err(ZkError::SessionExpired);
        }
        answer.await.unwrap_or(Err(ZkError::SessionExpired))
    }
}

/// The writer: takes what is queued, up to the budget, and commits it.
async fn write(
    lock: Weak<OwnedLockClient>,
    mut rx: mpsc::UnboundedReceiver<Create>,
    sent: Arc<AtomicU64>,
) {
    let mut carried: Option<Create> = None;
    loop {
        let first = match carried.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(c) => c,
                None => return,
            },
        };
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) if bytes + c.bytes() > REQUEST_BUDGET => {
                    carried = Some(c);
                    break;
                }
                Ok(c) => {
                    bytes += c.bytes();
                    batch.push(c);
                }
                Err(_) => break,
            }
        }
        let Some(lock) = lock.upgrade() else {
            for c in batch {
                let _ = c.done.send(Err(ZkError::SessionExpired));
            }
            return;
        };
        commit(&lock, batch, &sent).await;
    }
}

/// Commits a batch, answering each create; retried as the module doc says.
async fn commit(lock: &OwnedLockClient, mut batch: Vec<Create>, sent: &AtomicU64) {
    let mut delay = Duration::from_millis(10);
    let mut losses = 0;
    while !batch.is_empty() {
        let started = std::time::Instant::now();
        sent.fetch_add(1, Ordering::Relaxed);
        let res = {
            let mut w = lock.new_check_writer();
            let added = batch
                .iter()
                .try_for_each(|c| w.add_create(&c.path, &c.data, &PERSISTENT));
            match added {
                Ok(()) => w.commit().await.map(|_| ()),
                Err(e) => Err(CheckWriteError::RequestFailed { source: e }),
            }
        };
        metrics::histogram!(crate::metrics::ZK_OP_SECONDS, "op" => "commit")
            .record(started.elapsed().as_secs_f64());
        match res {
            Ok(()) => {
                for c in batch {
                    let _ = c.done.send(Ok(()));
                }
                return;
            }
            Err(CheckWriteError::OperationFailed { index, source }) if index < batch.len() => {
                let failed = batch.remove(index);
                if !matches!(source, ZkError::NodeExists) {
                    metrics::counter!(crate::metrics::ZK_ERRORS, "op" => "commit").increment(1);
                }
                let _ = failed.done.send(Err(source));
            }
            Err(CheckWriteError::RequestFailed {
                source: ZkError::ConnectionLoss,
            }) if losses < 20 => {
                losses += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(e) => {
                metrics::counter!(crate::metrics::ZK_ERRORS, "op" => "commit").increment(1);
                let e = ZkError::from(e);
                for c in batch {
                    let _ = c.done.send(Err(e.clone()));
                }
                return;
            }
        }
    }
}
