//! The conversation of a worker's link: its hello, then the runs the
//! master gives it ([`ToWorker`]) and what the worker says of them
//! ([`FromWorker`]), on one stream for as long as the link lives.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{messages, ErrorKind, Message};
use crate::core::{RunId, ShardKey, TaskFailure};

/// One shard sent to a worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Assignment {
    /// Epoch of the master that sent it.
    pub epoch: u64,
    /// The job.
    pub job_id: String,
    /// The job's incarnation: a run of an earlier job of the same id is
    /// another run.
    pub incarnation: u64,
    /// The registered job name, so the worker knows how to run and fold.
    pub job_name: String,
    /// Which shard.
    #[serde(with = "crate::wire::core_serde::ShardKeyDef")]
    pub shard: ShardKey,
    /// Attempt number of this run (1-based).
    pub attempt: u32,
    /// `(task index, encoded task)` pairs.
    pub tasks: Vec<(u64, ByteBuf)>,
    /// The slot sends `Started` and waits for `StartAck` before it runs
    /// the shard; otherwise it runs at once after `Started`.
    pub ack_first: bool,
    /// Its job's priority: the worker runs what it holds highest first
    /// (`core::worker_session`). Left out when 0; a worker of a release
    /// before priorities runs in arrival order.
    #[serde(default, skip_serializing_if = "super::client::is_zero")]
    pub priority: u8,
}

/// A worker's report on one assignment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardReport {
    /// Epoch of the assignment this answers.
    pub epoch: u64,
    /// The job.
    pub job_id: String,
    /// The job's incarnation, as assigned.
    pub incarnation: u64,
    /// Which shard.
    #[serde(with = "crate::wire::core_serde::ShardKeyDef")]
    pub shard: ShardKey,
    /// Attempt number of the run.
    pub attempt: u32,
    /// The encoded partial `Job::Result` of the tasks that succeeded
    /// (empty when it went to the store: see `output_object`).
    pub output: ByteBuf,
    /// Tasks that failed in this run.
    #[serde(with = "crate::wire::core_serde::list")]
    pub failures: Vec<TaskFailure>,
    /// The name of the store object holding the output, when it was too
    /// big to travel inline (written create-only by the worker).
    #[serde(default)]
    pub output_object: Option<String>,
}

/// A run, as the frames of the link it was assigned on name it (its
/// epoch is the link's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRef {
    /// The job.
    pub job_id: String,
    /// The job's incarnation.
    pub incarnation: u64,
    /// The shard.
    #[serde(with = "crate::wire::core_serde::ShardKeyDef")]
    pub shard: ShardKey,
    /// The attempt.
    pub attempt: u32,
}

impl RunRef {
    /// How the link names `run`.
    pub fn of(run: RunId) -> RunRef {
        RunRef {
            job_id: run.job,
            incarnation: run.incarnation,
            shard: run.shard,
            attempt: run.attempt,
        }
    }

    /// The run, on a link of `epoch`.
    pub fn at(self, epoch: u64) -> RunId {
        RunId {
            epoch,
            job: self.job_id,
            incarnation: self.incarnation,
            shard: self.shard,
            attempt: self.attempt,
        }
    }
}

/// A worker's first frame on its link: who it is, what it runs, which
/// protocol versions it speaks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    /// The oldest protocol version the sender speaks
    /// ([`super::PROTOCOL_MIN`]; before versions were negotiated,
    /// the only one).
    pub version: u32,
    /// The worker's node id (its registration znode name).
    pub node_id: String,
    /// Concurrent task slots.
    pub slots: u32,
    /// Job names the worker can run.
    pub jobs: Vec<String>,
    /// Newest epoch the worker has seen.
    pub epoch: u64,
    /// The worker's store, as its node was given it (for messages).
    #[serde(default)]
    pub store: String,
    /// The mark its node left in that store at start
    /// ([`crate::store::Store::probe`]): a master that does not
    /// find it in its own store refuses the worker, whose outputs
    /// it could not read.
    #[serde(default)]
    pub store_mark: String,
    /// The newest protocol version the sender speaks
    /// ([`super::PROTOCOL_VERSION`]; `None` from a release that
    /// spoke one).
    #[serde(default)]
    pub newest: Option<u32>,
    /// The sender's build ([`crate::build_id`]), for the master's
    /// log and `status`.
    #[serde(default)]
    pub build: String,
    /// The types of each job it runs, by name
    /// ([`crate::registry::shape_id`]): the master gives it only
    /// the jobs whose types are its own. Empty from a release that
    /// did not say (trusted, as before).
    #[serde(default)]
    pub shapes: BTreeMap<String, u64>,
}

messages! {
    /// Worker to master, on its link: the hello that opens it, then what
    /// becomes of the runs it was given.
    pub enum FromWorker("a worker's link") {
        /// The first frame of the worker's control stream.
        WorkerHello(Hello),
        /// A slot picked up this shard (from now on, the worker's death
        /// counts against the shard's attempts). Sent before the run
        /// starts; answered only if the assignment said `ack_first`.
        Started {
            /// Epoch of the assignment.
            epoch: u64,
            /// The job.
            job_id: String,
            /// The job's incarnation.
            incarnation: u64,
            /// The shard.
            #[serde(with = "crate::wire::core_serde::ShardKeyDef")]
            shard: ShardKey,
            /// The attempt.
            attempt: u32,
        },
        /// A run it was refused while it waited in the queue is dropped,
        /// never started.
        Unstarted(RunRef),
        /// A shard's outcome.
        Report(ShardReport),
        /// Stopping: send nothing new, requeue what I have not started.
        Draining,
        /// Every shard I started is reported.
        Drained,
    }
}

messages! {
    /// Master to worker, on its link: the answer to its hello, then runs,
    /// their acknowledgements and stops.
    pub enum ToWorker("a master's answer to a worker") {
        /// The hello is accepted, with the master's epoch.
        Welcome {
            /// The master's epoch.
            epoch: u64,
            /// The protocol version of this link
            /// ([`super::negotiate`]); `None` from a release that spoke one
            /// version: the hello's `version`.
            #[serde(default)]
            version: Option<u32>,
        },
        /// Run a shard.
        Assign(Assignment),
        /// `Started` is recorded; the shard may run.
        StartAck(RunRef),
        /// Do not run that shard (the master holds no such run of this
        /// worker: committed by another copy, cancelled, or reassigned);
        /// its slot is free again. Also sent unasked for a run that moved
        /// to another worker's idle slot: a worker that has not started it
        /// drops it and says `Unstarted`.
        StartRefused(RunRef),
        /// Stop this run, whatever its state (its job was cancelled or
        /// ended, or another copy of its shard was committed): a run still
        /// waiting is dropped (`Unstarted` if it waited for a slot); a
        /// running one is told to stop ([`crate::TaskContext::is_cancelled`])
        /// and reports when it ends, which frees its slot at the master.
        StopRun(RunRef),
        /// Every report before `Drained` is handled; go.
        DrainAck,
        /// The node is not the master (or not yet serving): the hello is
        /// to be sent to the next one.
        NotMaster,
        /// The hello is refused: its kind says what the worker should do,
        /// the message says why, in words for a person.
        Error {
            /// What kind of refusal.
            kind: ErrorKind,
            /// Why.
            message: String,
        },
    }
}

impl ToWorker {
    /// An `Error` answer of `kind`.
    pub fn error(kind: ErrorKind, message: impl std::fmt::Display) -> ToWorker {
        ToWorker::Error {
            kind,
            message: message.to_string(),
        }
    }
}
