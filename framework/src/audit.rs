//! A node's audit log (`--audit-file`): one JSON object per line for
//! each decision of its master that changes what a client will read, and
//! each change of its worker's link to a master, in the order this node
//! made them. Operators read it to reconstruct a job's history; the chaos
//! harness reads every node's to check that no shard was committed twice,
//! and tests assert on these events rather than on log text. Lines are appended by a thread of their own (never on an actor's
//! thread), what is queued in one write, not fsynced: the log is evidence,
//! ZooKeeper is the truth.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// This node became master.
    Elected,
    /// This node's master stepped down: every other worker refused its
    /// certificate, or it refused every other worker for storing
    /// elsewhere (`core::standing`).
    SteppedDown {
        /// Refusals seen in the grace period.
        refusals: u64,
        /// Other workers registered, none linked.
        workers: u64,
    },
    /// A submission is durable and acknowledged.
    JobAccepted {
        /// The job.
        job: String,
        /// Its tasks.
        tasks: u64,
    },
    /// A shard's outcome was committed by this master (written now, not
    /// found committed).
    ShardCommitted {
        /// The job.
        job: String,
        /// `<index>-<generation>`.
        shard: String,
        /// The attempt committed.
        attempt: u32,
        /// The job's incarnation (0 in lines of older versions): two jobs
        /// of one id commit the same shards.
        #[serde(default)]
        incarnation: u64,
    },
    /// A committed output could not be merged: its tasks are failed.
    MergeFailed {
        /// The job.
        job: String,
        /// The shard.
        shard: String,
        /// Tasks failed by it.
        tasks: u64,
    },
    /// The job's result and `Done` are durable.
    JobDone {
        /// The job.
        job: String,
        /// Tasks with an outcome.
        tasks_done: u64,
        /// Of those, failed.
        tasks_failed: u64,
    },
    /// A client cancelled the job.
    JobCancelled {
        /// The job.
        job: String,
    },
    /// A worker's link ended without a drain: its shards go back to the
    /// queue (started ones with an attempt used).
    WorkerLost {
        /// The worker.
        worker: String,
        /// Shards it held.
        running: u64,
    },
    /// A worker finished draining (every report it owed is handled):
    /// nothing of its work is lost when it leaves.
    WorkerDrained {
        /// The worker.
        worker: String,
    },
    /// Slow shards got a copy on another worker.
    Speculated {
        /// Copies made.
        copies: u64,
    },
    /// The master lost its ZooKeeper connection: it assigns nothing until
    /// the session is back (or expires).
    AssignmentsPaused,
    /// The connection is back within the session: assignments resume.
    AssignmentsResumed,
    /// This node stopped serving as master (stepped down, its session
    /// expired, or it left); the epoch is the one it served.
    MasterStopped,
    /// Worker side: this node's worker joined the master `master` (the
    /// entry's epoch is that master's).
    LinkedToMaster {
        /// The master's node id.
        master: String,
    },
    /// Worker side: the link to the master ended without a drain (its
    /// shards are reassigned by a master).
    LinkLost {
        /// The master's node id.
        master: String,
        /// Why, as the transport said.
        error: String,
    },
    /// Worker side: the master refused this node (another CA, a refused
    /// hello); it tries again after `pause_ms`.
    JoinRefused {
        /// The master's node id.
        master: String,
        /// The refusal.
        reason: String,
        /// The pause before the next try.
        pause_ms: u64,
    },
    /// Worker side: the worker drained: every shard it started was
    /// reported and acknowledged by `master`.
    Drained {
        /// The master's node id.
        master: String,
    },
    /// The node read its certificate directory again (SIGHUP); the entry's
    /// epoch is 0.
    CertificatesReloaded {
        /// Serial numbers its revocation lists name.
        revoked: u64,
    },
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Milliseconds since the Unix epoch (this node's clock: for reading,
    /// not for ordering across nodes).
    pub ts_ms: u64,
    /// The node that wrote it.
    pub node: String,
    /// Its epoch as master when it wrote it; for a worker's event, the
    /// epoch of the master the event concerns.
    pub epoch: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// Where a node's audit lines go; a no-op without `--audit-file`. Cheap to
/// clone.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    node: String,
    tx: Option<std::sync::mpsc::SyncSender<Msg>>,
}

/// Lines that may wait for the audit thread. The master never waits for
/// its disk: a line that finds the queue full (a disk stalled for the
/// time of tens of thousands of events) is dropped and counted
/// (`ringleader_audit_lines_dropped_total`), and the log says so.
const AUDIT_QUEUE: usize = 65_536;

enum Msg {
    Line(String),
    /// Answered once every line sent before it is written.
    Sync(std::sync::mpsc::SyncSender<()>),
}

impl Audit {
    /// Appends to `path` (created if missing), from a thread of its own.
    pub fn open(path: Option<&Path>, node: &str) -> std::io::Result<Audit> {
        let Some(path) = path else {
            return Ok(Audit {
                node: node.to_string(),
                tx: None,
            });
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(AUDIT_QUEUE);
        let shown: PathBuf = path.to_path_buf();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                // Lines already queued go out in one write.
                let mut buf = String::new();
                let mut waiting = Vec::new();
                while let Ok(first) = rx.recv() {
                    for msg in std::iter::once(first).chain(rx.try_iter()) {
                        match msg {
                            Msg::Line(line) => buf.push_str(&line),
                            Msg::Sync(done) => waiting.push(done),
                        }
                    }
                    let written = file.write_all(buf.as_bytes()).and_then(|()| file.flush());
                    if let Err(e) = written {
                        tracing::warn!(path = %shown.display(), error = %e, "cannot append to the audit log");
                    }
                    buf.clear();
                    for done in waiting.drain(..) {
                        let _ = done.send(());
                    }
                }
            })?;
        Ok(Audit {
            node: node.to_string(),
            tx: Some(tx),
        })
    }

    /// Records `event` concerning the master of `epoch`.
    pub fn record(&self, epoch: u64, event: Event) {
        let Some(tx) = &self.tx else {
            return;
        };
        let entry = Entry {
            ts_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            node: self.node.clone(),
            epoch,
            event,
        };
        if let Ok(mut line) = serde_json::to_string(&entry) {
            line.push('\n');
            if let Err(std::sync::mpsc::TrySendError::Full(_)) = tx.try_send(Msg::Line(line)) {
                metrics::counter!(crate::metrics::AUDIT_DROPPED).increment(1);
                tracing::warn!(
                    "the audit log's queue is full (its disk is stalled?): a line is dropped"
                );
            }
        }
    }

    /// Waits until every line recorded before is written (tests, shutdown).
    pub fn sync(&self) {
        if let Some(tx) = &self.tx {
            let (done, written) = std::sync::mpsc::sync_channel(1);
            if tx.try_send(Msg::Sync(done)).is_ok() {
                let _ = written.recv_timeout(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// Reads an audit log; lines that do not parse (a line cut by a crash) are
/// skipped.
pub fn read(path: &Path) -> std::io::Result<Vec<Entry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_back_as_written_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let audit = Audit::open(Some(&path), "n1").unwrap();
        let event = Event::ShardCommitted {
            job: "j".into(),
            shard: "0-1".into(),
            attempt: 2,
            incarnation: 7,
        };
        audit.record(3, event.clone());
        audit.record(3, Event::Elected);
        audit.sync();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"ts_ms\":1,\"no")
            .unwrap();
        let entries = read(&path).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].epoch, &entries[0].node), (3, &"n1".to_string()));
        assert_eq!(entries[0].event, event);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"event\":\"shard_committed\""), "{text}");
    }
}
