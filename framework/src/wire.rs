//! The byte format between nodes and clients: versioned MessagePack frames
//! with a `u32` big-endian length prefix, and bounded decoding.
//!
//! Only this module knows the byte layout, of frames and of the user values
//! they carry ([`encode`], [`decode`]). A frame longer than the reader's
//! limit is refused from its prefix, before any of its body is read.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::core::{Counters, ShardKey, TaskFailure};

/// The newest protocol version this build speaks: bumped when a frame
/// gains a variant or a meaning that a peer of an earlier version does not
/// know (a field added is not such a change: see [`encode_named`]).
pub const PROTOCOL_VERSION: u32 = 6;

/// The oldest protocol version this build still speaks: a link's version
/// is the newest both ends speak ([`negotiate`]), so that adjacent
/// releases interoperate on every link.
pub const PROTOCOL_MIN: u32 = 6;

/// The version a link between a peer speaking `oldest..=newest` and this
/// build uses: the newest both speak; an error when the ranges do not meet.
pub fn negotiate(oldest: u32, newest: u32) -> Result<u32, VersionMismatch> {
    let version = newest.min(PROTOCOL_VERSION);
    if version < oldest.max(PROTOCOL_MIN) {
        return Err(VersionMismatch {
            oldest,
            newest,
            this: "this build",
        });
    }
    Ok(version)
}

/// A peer speaks no protocol version this build does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "it speaks protocol versions {oldest} to {newest} and {this} {PROTOCOL_MIN} to \
     {PROTOCOL_VERSION}: upgrade the older of the two (adjacent releases work together; see \
     \"Upgrading\" in the README)"
)]
pub struct VersionMismatch {
    /// The oldest version the peer speaks.
    pub oldest: u32,
    /// The newest.
    pub newest: u32,
    /// This build, as the message names it ("this master").
    pub this: &'static str,
}

impl VersionMismatch {
    /// The same, with this build named `this` ("this master").
    pub fn by(self, this: &'static str) -> Self {
        VersionMismatch { this, ..self }
    }
}

/// Most bytes of a frame's body reserved before they arrive.
const RESERVE_AHEAD: usize = 64 << 10;

/// Default upper bound of one frame's body.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Errors of reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer announced a frame over the limit; nothing of it was read.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The reader's limit.
        max: usize,
    },
    /// The frame body is not a valid MessagePack [`Frame`].
    #[error("malformed frame: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    /// Encoding failed (a value serde cannot represent).
    #[error("cannot encode frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The stream ended or broke.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended cleanly between frames.
    #[error("stream closed by peer")]
    Closed,
    /// The frame does not fit in what its connection may hold in the
    /// reader's memory at once; nothing of it was read.
    #[error(
        "a request of {wanted} bytes does not fit in what one connection may hold in this \
         node's memory at once ({free} of {budget} bytes free): retry once some of its \
         requests are answered"
    )]
    OverBudget {
        /// What the frame would hold.
        wanted: usize,
        /// What was free.
        free: usize,
        /// The connection's whole budget.
        budget: usize,
    },
}

impl WireError {
    /// The kind of `Error` frame that answers a request that failed so.
    pub fn kind(&self) -> ErrorKind {
        match self {
            // A decoder that met a frame it does not know: the sender is
            // of a newer version.
            WireError::Malformed(rmp_serde::decode::Error::Syntax(m))
                if m.contains("unknown variant") =>
            {
                ErrorKind::Unsupported
            }
            WireError::OverBudget { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Invalid,
        }
    }
}

/// Errors of encoding and decoding user values (tasks, outputs, results).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a valid encoding of the expected type.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's error.
        source: rmp_serde::decode::Error,
    },
    /// The value could not be encoded.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        source: rmp_serde::encode::Error,
    },
    /// An accumulator of another job was passed.
    #[error("accumulator of the wrong job type")]
    WrongType,
}

/// Encodes a user value (task, output, result) the way the framework stores it.
pub fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec(value).map_err(|source| CodecError::Encode { what, source })
}

/// Decodes a user value encoded with [`encode`].
pub fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    rmp_serde::from_slice(bytes).map_err(|source| CodecError::Decode { what, source })
}

/// A decoder over an encoded user value, for [`crate::Job::merge_from`].
pub type PayloadDecoder<'a> = rmp_serde::Deserializer<rmp_serde::decode::ReadRefReader<'a, [u8]>>;

/// A decoder reading `bytes` (encoded with [`encode`]).
pub fn payload_decoder(bytes: &[u8]) -> PayloadDecoder<'_> {
    rmp_serde::Deserializer::from_read_ref(bytes)
}

/// How a job's tasks are cut and retried, chosen at submission.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobOptions {
    /// Tasks per shard.
    pub shard_size: u32,
    /// Attempts per task before it is reported failed (at least 1).
    pub max_attempts: u32,
    /// A shard running longer than this gets a copy on another worker
    /// (hung or very slow tasks); the first result is committed.
    #[serde(default)]
    pub shard_timeout_ms: Option<u64>,
    /// Its committed outputs may be streamed ([`Frame::StreamJob`]): they
    /// are kept until the job is collected rather than deleted when it
    /// ends, so that a stream can always catch up. Left out of the
    /// encoding when false, so that older peers read such options.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A submission: everything but the task bodies, which follow in
/// [`Frame::SubmitChunk`] frames on the same stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubmitHeader {
    /// Client-chosen id; resubmitting it returns the existing job.
    pub job_id: String,
    /// The registered job name.
    pub job_name: String,
    /// Cutting and retry options.
    pub options: JobOptions,
    /// Number of tasks that follow.
    pub task_count: u64,
    /// The submitting binary's types for the job
    /// ([`crate::registry::shape_id`]): a master whose own differ refuses
    /// the submission. `None` from a release that did not say.
    #[serde(default)]
    pub shape: Option<u64>,
}

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
    pub shard: ShardKey,
    /// Attempt number of this run (1-based).
    pub attempt: u32,
    /// `(task index, encoded task)` pairs.
    pub tasks: Vec<(u64, ByteBuf)>,
    /// The slot sends `Started` and waits for `StartAck` before it runs
    /// the shard; otherwise it runs at once after `Started`.
    pub ack_first: bool,
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
    pub shard: ShardKey,
    /// Attempt number of the run.
    pub attempt: u32,
    /// The encoded partial `Job::Result` of the tasks that succeeded
    /// (empty when it went to the store: see `output_object`).
    pub output: ByteBuf,
    /// Tasks that failed in this run.
    pub failures: Vec<TaskFailure>,
    /// The name of the store object holding the output, when it was too
    /// big to travel inline (written create-only by the worker).
    #[serde(default)]
    pub output_object: Option<String>,
}

/// A job's state as clients see it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Durable and being worked on.
    Running,
    /// Every task committed; the result can be fetched.
    Done,
    /// Cancelled by a client.
    Cancelled,
}

impl JobState {
    /// Done or cancelled: it will not change again.
    pub fn is_final(&self) -> bool {
        *self != JobState::Running
    }
}

/// Progress of one job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobProgress {
    /// The job.
    pub job_id: String,
    /// The registered job name.
    pub job_name: String,
    /// Current state.
    pub state: JobState,
    /// Its tasks; those whose final outcome (success or failure) is
    /// committed; of those, failed; failed attempts retried.
    pub counters: Counters,
}

/// A worker as the master sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Node id.
    pub node_id: String,
    /// Its QUIC address as registered.
    pub addr: String,
    /// Concurrent task slots.
    pub slots: u32,
    /// Shards it is running now.
    pub in_flight: u32,
    /// Whether it is connected to the master.
    pub connected: bool,
    /// Milliseconds since the master last heard from it (if connected).
    pub last_seen_ms: Option<u64>,
    /// Its build, as it registered ([`crate::build_id`]; `None` for a
    /// release that did not say).
    #[serde(default)]
    pub build: Option<String>,
    /// The protocol version of its link (if connected).
    #[serde(default)]
    pub protocol: Option<u32>,
    /// Job names it runs with other types than the master's: it gets no
    /// job of those (a rolling upgrade of the application under way).
    #[serde(default)]
    pub other_types: Vec<String>,
}

/// The cluster's state as the master sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    /// The master's node id.
    pub leader: String,
    /// The master's epoch.
    pub epoch: u64,
    /// Registered workers.
    pub workers: Vec<WorkerStatus>,
    /// Jobs the master knows.
    pub jobs: Vec<JobProgress>,
    /// The master's build ([`crate::build_id`]; `None` from a release
    /// that did not say).
    #[serde(default)]
    pub build: Option<String>,
    /// The cluster's feature level as the master last read it (`None`
    /// from a release before feature levels).
    #[serde(default)]
    pub feature_level: Option<u32>,
}

/// A finished job's result as fetched by a client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobOutcome {
    /// Final progress figures.
    pub progress: JobProgress,
    /// The encoded `Job::Result` (empty if cancelled).
    pub result: ByteBuf,
    /// Tasks that failed every attempt (at most a bounded number are kept).
    pub failures: Vec<TaskFailure>,
}

/// Every message on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Frame {
    /// Worker to master, first frame of the worker's control stream.
    WorkerHello {
        /// The oldest protocol version the sender speaks ([`PROTOCOL_MIN`];
        /// before versions were negotiated, the only one).
        version: u32,
        /// The worker's node id (its registration znode name).
        node_id: String,
        /// Concurrent task slots.
        slots: u32,
        /// Job names the worker can run.
        jobs: Vec<String>,
        /// Newest epoch the worker has seen.
        epoch: u64,
        /// The worker's store, as its node was given it (for messages).
        #[serde(default)]
        store: String,
        /// The mark its node left in that store at start
        /// ([`crate::store::Store::probe`]): a master that does not find
        /// it in its own store refuses the worker, whose outputs it could
        /// not read.
        #[serde(default)]
        store_mark: String,
        /// The newest protocol version the sender speaks
        /// ([`PROTOCOL_VERSION`]; `None` from a release that spoke one).
        #[serde(default)]
        newest: Option<u32>,
        /// The sender's build ([`crate::build_id`]), for the master's log
        /// and `status`.
        #[serde(default)]
        build: String,
        /// The types of each job it runs, by name
        /// ([`crate::registry::shape_id`]): the master gives it only the
        /// jobs whose types are its own. Empty from a release that did not
        /// say (trusted, as before).
        #[serde(default)]
        shapes: std::collections::BTreeMap<String, u64>,
    },
    /// Master to worker: accepted, with the master's epoch.
    Welcome {
        /// The master's epoch.
        epoch: u64,
        /// The protocol version of this link ([`negotiate`]); `None` from a
        /// release that spoke one version: the hello's `version`.
        #[serde(default)]
        version: Option<u32>,
    },
    /// Master to worker: run a shard.
    Assign(Assignment),
    /// Worker to master: a slot picked up this shard (from now on, the
    /// worker's death counts against the shard's attempts). Sent before
    /// the run starts; answered only if the assignment said `ack_first`.
    Started {
        /// Epoch of the assignment.
        epoch: u64,
        /// The job.
        job_id: String,
        /// The job's incarnation.
        incarnation: u64,
        /// The shard.
        shard: ShardKey,
        /// The attempt.
        attempt: u32,
    },
    /// Master to worker: `Started` is recorded; the shard may run.
    StartAck {
        /// The job.
        job_id: String,
        /// The job's incarnation.
        incarnation: u64,
        /// The shard.
        shard: ShardKey,
        /// The attempt.
        attempt: u32,
    },
    /// Master to worker: do not run that shard (the master holds no such
    /// run of this worker: committed by another copy, cancelled, or
    /// reassigned); its slot is free again. Also sent unasked for a run
    /// that moved to another worker's idle slot: a worker that has not
    /// started it drops it and says `Unstarted`.
    StartRefused {
        /// The job.
        job_id: String,
        /// The job's incarnation.
        incarnation: u64,
        /// Which shard.
        shard: ShardKey,
        /// Attempt number.
        attempt: u32,
    },
    /// Worker to master: a run it was refused while it waited in the
    /// queue is dropped, never started.
    Unstarted {
        /// The job.
        job_id: String,
        /// The job's incarnation.
        incarnation: u64,
        /// Which shard.
        shard: ShardKey,
        /// Attempt number.
        attempt: u32,
    },
    /// Worker to master: a shard's outcome.
    Report(ShardReport),
    /// Worker to master: stopping; send nothing new, requeue what I have not started.
    Draining,
    /// Worker to master: every shard I started is reported.
    Drained,
    /// Master to worker: every report before `Drained` is handled; go.
    DrainAck,
    /// Client to master: a submission header.
    Submit(SubmitHeader),
    /// Client to master: encoded tasks of the submission in progress.
    SubmitChunk {
        /// Encoded tasks, in order.
        tasks: Vec<ByteBuf>,
    },
    /// Master to client: the job is durable.
    Accepted {
        /// The job.
        job_id: String,
        /// True if the job id already existed and nothing new was created.
        existing: bool,
    },
    /// Client to master: progress of a job.
    GetJob {
        /// The job.
        job_id: String,
    },
    /// Master to client: a job's progress.
    Job(JobProgress),
    /// Client to master: the cluster's status.
    GetStatus,
    /// Master to client: the cluster's status.
    Status(ClusterStatus),
    /// Client to master: fetch a finished job's result.
    FetchResult {
        /// The job.
        job_id: String,
    },
    /// Master to client: a finished job's result.
    Outcome(JobOutcome),
    /// Client to master: cancel a job.
    Cancel {
        /// The job.
        job_id: String,
    },
    /// Any reply meaning "done, nothing to say".
    Ok,
    /// The receiving node is not the master (or not yet serving).
    NotMaster,
    /// A request failed: its kind says what the asker should do, the
    /// message says why, in words for a person.
    Error {
        /// What kind of failure: how to act on it.
        kind: ErrorKind,
        /// What went wrong.
        message: String,
    },
    /// Client to master: push this job's progress as it changes, ending
    /// with its final state. The master answers `Job` frames (at most one
    /// per [`WATCH_PERIOD`] while the job runs) and a last one that is
    /// `Done` or `Cancelled`, or, with `fetch`, the job's `Outcome` (which
    /// counts as its fetch); `Error` if there is no such job. A stream that
    /// ends before that (a failover) is opened again by the client.
    WatchJob {
        /// The job.
        job_id: String,
        /// End with the job's result rather than its final progress.
        fetch: bool,
        /// Without `fetch`: end with the job's result if the master has it
        /// at hand (the job ended as this master watched it), leaving it
        /// unfetched: the client sends [`Frame::Fetched`] once it has read
        /// it (`Client::submit`'s handle, whose `result()` then needs no
        /// request). Otherwise the final progress, as a plain watch.
        #[serde(default)]
        unmarked: bool,
    },
    /// Client to master, before a submission: how a job of `task_count`
    /// tasks would be cut (`shard_size` 0: by the master) and which
    /// workers run it. `Error` for a job type the cluster does not run.
    PlanJob {
        /// The registered job name.
        job_name: String,
        /// Its tasks.
        task_count: u64,
        /// Tasks per shard asked for (0: the master's choice).
        shard_size: u32,
        /// The submitting binary's [`crate::registry::shape`] of the job's
        /// types: a different one on the master is refused.
        shape: Option<String>,
    },
    /// Master to client: the answer to `PlanJob`.
    Planned(JobPlanInfo),
    /// Client to master: the jobs the cluster holds that the query
    /// matches (and the asker may see).
    ListJobs(JobQuery),
    /// Master to client: the answer to `ListJobs`.
    Jobs(JobList),
    /// Client to master: send the job's committed outputs (`Partial`
    /// frames, each shard once, in commit order) except the shards in
    /// `seen`, then, once the job ends and every committed output was sent,
    /// its final `Job` progress. A stream that ends before (a failover) is
    /// opened again with what was seen since.
    StreamJob {
        /// The job.
        job_id: String,
        /// Shards the client has: runs of consecutive indexes of one
        /// generation (`(first index, count, generation)`).
        seen: Vec<(u32, u32, u32)>,
    },
    /// Master to client: one committed shard's output (the job's encoded
    /// partial result of that shard's successful tasks).
    Partial {
        /// The shard.
        shard: ShardKey,
        /// Its encoded partial `Job::Result`.
        output: ByteBuf,
    },
    /// Master to worker: stop this run, whatever its state (its job was
    /// cancelled or ended, or another copy of its shard was committed): a
    /// run still waiting is dropped (`Unstarted` if it waited for a slot);
    /// a running one is told to stop ([`crate::TaskContext::is_cancelled`])
    /// and reports when it ends, which frees its slot at the master.
    StopRun {
        /// The job.
        job_id: String,
        /// The job's incarnation.
        incarnation: u64,
        /// The shard.
        shard: ShardKey,
        /// The attempt.
        attempt: u32,
    },
    /// Client to master, on an `unmarked` watch's stream once its
    /// `Outcome` is read: the result was fetched (its retention starts).
    /// Not answered.
    Fetched {
        /// The job.
        job_id: String,
    },
}

/// Most runs a [`Frame::StreamJob`] carries: a client that has more sends
/// the first of them (it is then sent some shards again, and drops them),
/// and a master reads no more than these.
pub const MAX_SEEN_RUNS: usize = 8_192;

/// `keys` (sorted or not) as runs of consecutive indexes of one generation,
/// for [`Frame::StreamJob`]: at most [`MAX_SEEN_RUNS`] of them.
pub fn key_runs(keys: &std::collections::HashSet<ShardKey>) -> Vec<(u32, u32, u32)> {
    let mut sorted: Vec<ShardKey> = keys.iter().copied().collect();
    sorted.sort_by_key(|k| (k.generation, k.index));
    let mut runs: Vec<(u32, u32, u32)> = Vec::new();
    for k in sorted {
        match runs.last_mut() {
            Some((first, count, g)) if *g == k.generation && *first + *count == k.index => {
                *count += 1
            }
            _ => runs.push((k.index, 1, k.generation)),
        }
    }
    runs.truncate(MAX_SEEN_RUNS);
    runs
}

/// The shards of a peer's runs ([`key_runs`]), as sorted, merged ranges:
/// its memory and the time to build it grow with the runs that arrived
/// (at most [`MAX_SEEN_RUNS`] are read), never with the shards they
/// claim. A run of four billion shards costs what a run of one does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRuns {
    /// `(generation, first index, end index exclusive)`, sorted, disjoint
    /// and not touching.
    ranges: Vec<(u32, u64, u64)>,
}

impl KeyRuns {
    /// The first [`MAX_SEEN_RUNS`] of `runs`.
    pub fn new(runs: &[(u32, u32, u32)]) -> Self {
        let mut ranges: Vec<(u32, u64, u64)> = runs
            .iter()
            .take(MAX_SEEN_RUNS)
            .filter(|(_, count, _)| *count > 0)
            .map(|&(first, count, generation)| {
                let first = u64::from(first);
                // Indexes are u32: a run past the last one ends there.
                let end = (first + u64::from(count)).min(1 << 32);
                (generation, first, end)
            })
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u64, u64)> = Vec::with_capacity(ranges.len());
        for (g, first, end) in ranges {
            match merged.last_mut() {
                Some((lg, _, lend)) if *lg == g && first <= *lend => *lend = (*lend).max(end),
                _ => merged.push((g, first, end)),
            }
        }
        KeyRuns { ranges: merged }
    }

    /// Whether `key` is in a run.
    pub fn contains(&self, key: ShardKey) -> bool {
        let at = (key.generation, u64::from(key.index));
        // The last range starting at or before `key`.
        let i = self
            .ranges
            .partition_point(|&(g, first, _)| (g, first) <= at);
        i > 0 && {
            let (g, _, end) = self.ranges[i - 1];
            g == key.generation && u64::from(key.index) < end
        }
    }

    /// The ranges kept (each costs 24 bytes).
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }
}

/// How a job would be cut and run: the answer to [`Frame::PlanJob`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobPlanInfo {
    /// Tasks per shard.
    pub shard_size: u32,
    /// Shards.
    pub shards: u32,
    /// Registered workers that run the job.
    pub workers: u32,
    /// Their slots.
    pub slots: u64,
    /// Registered workers in all.
    pub registered: u32,
}

/// One job the cluster holds, as [`Frame::ListJobs`] lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobSummary {
    /// The job.
    pub job_id: String,
    /// The registered job name.
    pub job_name: String,
    /// Its state.
    pub state: JobState,
    /// Its tasks.
    pub tasks_total: u64,
    /// A running job's figures (a finished job's are in its result).
    pub counters: Option<Counters>,
    /// When it was accepted (milliseconds since the Unix epoch; 0 if unknown).
    pub created_ms: u64,
    /// Whether its result was fetched.
    pub fetched: bool,
    /// Something its owner should know (no worker runs it).
    pub note: Option<String>,
    /// Whose it is (`client:<name>`; `None`: a job of an older version).
    pub owner: Option<String>,
}

/// Which jobs a [`Frame::ListJobs`] asks for: every condition given must
/// hold. A client is shown only its own jobs whatever it asks; an admin
/// or a node, everyone's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobQuery {
    /// In one of these states (empty: any).
    pub states: Vec<JobState>,
    /// Of this registered job name.
    pub job_name: Option<String>,
    /// Of this owner (`client:<name>`).
    pub owner: Option<String>,
    /// Accepted at or after this time (milliseconds since the Unix epoch).
    pub since_ms: Option<u64>,
    /// At most this many, newest first (0: up to [`MAX_LISTED`]).
    pub last: u32,
}

/// Most jobs one [`Frame::Jobs`] lists.
pub const MAX_LISTED: usize = 10_000;

/// The answer to a [`JobQuery`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobList {
    /// The newest jobs that match, newest first (at most the query's
    /// `last`).
    pub jobs: Vec<JobSummary>,
    /// How many match in all.
    pub matched: u64,
    /// The jobs that match every condition but the states, by state.
    pub counts: StateCounts,
}

/// Jobs by state.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateCounts {
    /// Running.
    pub running: u64,
    /// Done.
    pub done: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl JobQuery {
    /// Whether `j` matches every condition but the states.
    pub fn matches_but_state(&self, j: &JobSummary) -> bool {
        self.job_name.as_ref().is_none_or(|n| *n == j.job_name)
            && self
                .owner
                .as_ref()
                .is_none_or(|o| j.owner.as_ref() == Some(o))
            && self.since_ms.is_none_or(|t| j.created_ms >= t)
    }

    /// The answer to this query over `all` (in any order): counted,
    /// filtered, newest first, cut to `last`.
    pub fn answer(&self, mut all: Vec<JobSummary>) -> JobList {
        all.retain(|j| self.matches_but_state(j));
        let mut counts = StateCounts::default();
        for j in &all {
            match j.state {
                JobState::Running => counts.running += 1,
                JobState::Done => counts.done += 1,
                JobState::Cancelled => counts.cancelled += 1,
            }
        }
        if !self.states.is_empty() {
            all.retain(|j| self.states.contains(&j.state));
        }
        let matched = all.len() as u64;
        all.sort_by(|a, b| {
            b.created_ms
                .cmp(&a.created_ms)
                .then_with(|| a.job_id.cmp(&b.job_id))
        });
        let last = match self.last {
            0 => MAX_LISTED,
            n => (n as usize).min(MAX_LISTED),
        };
        all.truncate(last);
        JobList {
            jobs: all,
            matched,
            counts,
        }
    }
}

/// Shortest interval between two progress frames pushed for one job.
pub const WATCH_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

impl Frame {
    /// Whether this frame ends a `WatchJob` stream.
    pub fn ends_watch(&self) -> bool {
        match self {
            Frame::Job(p) => p.state.is_final(),
            _ => true,
        }
    }

    /// The frame's variant name, for error messages and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::WorkerHello { .. } => "WorkerHello",
            Frame::Welcome { .. } => "Welcome",
            Frame::Assign(_) => "Assign",
            Frame::Report(_) => "Report",
            Frame::Started { .. } => "Started",
            Frame::StartAck { .. } => "StartAck",
            Frame::StartRefused { .. } => "StartRefused",
            Frame::Unstarted { .. } => "Unstarted",
            Frame::Draining => "Draining",
            Frame::Drained => "Drained",
            Frame::DrainAck => "DrainAck",
            Frame::Submit(_) => "Submit",
            Frame::SubmitChunk { .. } => "SubmitChunk",
            Frame::Accepted { .. } => "Accepted",
            Frame::GetJob { .. } => "GetJob",
            Frame::Job(_) => "Job",
            Frame::GetStatus => "GetStatus",
            Frame::Status(_) => "Status",
            Frame::FetchResult { .. } => "FetchResult",
            Frame::Outcome(_) => "Outcome",
            Frame::Cancel { .. } => "Cancel",
            Frame::Ok => "Ok",
            Frame::NotMaster => "NotMaster",
            Frame::Error { .. } => "Error",
            Frame::WatchJob { .. } => "WatchJob",
            Frame::PlanJob { .. } => "PlanJob",
            Frame::Planned(_) => "Planned",
            Frame::ListJobs(_) => "ListJobs",
            Frame::Jobs(_) => "Jobs",
            Frame::StreamJob { .. } => "StreamJob",
            Frame::Partial { .. } => "Partial",
            Frame::StopRun { .. } => "StopRun",
            Frame::Fetched { .. } => "Fetched",
        }
    }
}

/// What a refused or failed request means for the one who asked: a
/// program acts on the kind, never on the message's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request cannot succeed as it is: bad arguments or options, a
    /// limit passed, an unknown job type, a malformed frame, a job id
    /// taken by another job. Sending it again gets the same answer.
    Invalid,
    /// No such job: unknown, never acknowledged, or collected once its
    /// result was fetched and its retention passed.
    NoSuchJob,
    /// The job belongs to another client.
    NotOwner,
    /// The job is not in a state for this request: still running (a
    /// fetch), already ended (a cancel), still being submitted.
    JobState,
    /// Not now: the master could not reach ZooKeeper or its store, its
    /// connection's budget is full, or the job's id is being freed.
    /// Nothing was done: send the same request again (a submission with
    /// the same job id) after a pause.
    Unavailable,
    /// A write was sent whose outcome the master cannot know (ZooKeeper's
    /// answer was lost): the job may have been accepted. Submitting again
    /// with the same job id finds it if it was, and submits it if not.
    OutcomeUnknown,
    /// The receiver does not know the request: a version from before it.
    Unsupported,
}

impl Frame {
    /// An `Error` frame of `kind`.
    pub fn error(kind: ErrorKind, message: impl std::fmt::Display) -> Frame {
        Frame::Error {
            kind,
            message: message.to_string(),
        }
    }
}

/// Encodes a frame's body or a record the way every format of the
/// cluster is written: MessagePack with structs as maps of named fields,
/// so that a reader of another release reads the fields it knows and
/// skips the others (ARCHITECTURE.md, "Formats that evolve"). Tuples stay
/// arrays: they never grow.
pub fn encode_named<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// Appends one length-prefixed frame to `buf`.
pub fn encode_into(buf: &mut Vec<u8>, frame: &Frame) -> Result<(), WireError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    rmp_serde::encode::write_named(buf, frame)?;
    let len = u32::try_from(buf.len() - start - 4).map_err(|_| WireError::TooLarge {
        len: buf.len() - start - 4,
        max: u32::MAX as usize,
    })?;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Decodes one frame body (without its prefix).
pub fn decode_frame(body: &[u8]) -> Result<Frame, WireError> {
    Ok(rmp_serde::from_slice(body)?)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<(), WireError> {
    let mut buf = Vec::with_capacity(128);
    encode_into(&mut buf, frame)?;
    w.write_all(&buf).await?;
    let (frames, bytes) = crate::metrics::frames(true);
    frames.increment(1);
    bytes.increment(buf.len() as u64);
    Ok(())
}

/// Reads one frame of at most `max` body bytes. Returns [`WireError::Closed`]
/// when the stream ends cleanly before a new frame.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Frame, WireError> {
    let len = read_prefix(r, max).await?;
    read_body(r, len).await
}

/// Reads a frame's length prefix: the length of its body, at most `max`
/// ([`WireError::Closed`] when the stream ends cleanly before it).
pub async fn read_prefix<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<usize, WireError> {
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(len)
}

/// Reads and decodes a frame body of `len` bytes (its prefix read).
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Frame, WireError> {
    // Memory grows with the bytes that arrive, not with what the prefix
    // announces: a thousand streams each announcing the limit and sending
    // nothing reserve nothing. It doubles as they come, and never past
    // the frame's length (a growth of `read_to_end` would take twice it).
    let mut body: Vec<u8> = Vec::new();
    while body.len() < len {
        let have = body.len();
        let next = len.min(have.saturating_mul(2).max(RESERVE_AHEAD));
        body.reserve_exact(next - have);
        body.resize(next, 0);
        if let Err(e) = r.read_exact(&mut body[have..next]).await {
            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                return Err(e.into());
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("frame of {len} bytes ended after at most {next}"),
            )
            .into());
        }
    }
    let (frames, bytes) = crate::metrics::frames(false);
    frames.increment(1);
    bytes.increment(len as u64 + 4);
    decode_frame(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_not_a_hang() {
        let mut buf = Vec::new();
        encode_into(
            &mut buf,
            &Frame::GetJob {
                job_id: "j".repeat(100_000),
            },
        )
        .unwrap();
        buf.truncate(70_000);
        let mut r = &buf[..];
        let err = read_frame(&mut r, 1 << 20).await.unwrap_err();
        assert!(err.to_string().contains("ended after"), "{err}");
    }

    #[test]
    fn a_link_speaks_the_newest_version_both_ends_speak_or_none() {
        assert_eq!(
            negotiate(PROTOCOL_MIN, PROTOCOL_VERSION),
            Ok(PROTOCOL_VERSION)
        );
        // A newer peer that still speaks this build's newest.
        assert_eq!(
            negotiate(PROTOCOL_VERSION, PROTOCOL_VERSION + 3),
            Ok(PROTOCOL_VERSION)
        );
        // An older peer that speaks this build's oldest.
        assert_eq!(negotiate(PROTOCOL_MIN - 2, PROTOCOL_MIN), Ok(PROTOCOL_MIN));
        // Ranges that do not meet, either way.
        let older = negotiate(1, PROTOCOL_MIN - 1).unwrap_err();
        assert!(older.to_string().contains("upgrade the older"), "{older}");
        assert!(negotiate(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 2).is_err());
    }

    #[tokio::test]
    async fn round_trip() {
        let mut buf = Vec::new();
        encode_into(&mut buf, &Frame::GetJob { job_id: "j".into() }).unwrap();
        encode_into(&mut buf, &Frame::Ok).unwrap();
        let mut r = &buf[..];
        assert!(
            matches!(read_frame(&mut r, 1024).await.unwrap(), Frame::GetJob { job_id } if job_id == "j")
        );
        assert!(matches!(read_frame(&mut r, 1024).await.unwrap(), Frame::Ok));
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(WireError::Closed)
        ));
    }

    #[tokio::test]
    async fn oversized_is_refused_from_prefix() {
        let mut buf = (1u32 << 30).to_be_bytes().to_vec();
        buf.extend_from_slice(b"abc");
        let mut r = &buf[..];
        assert!(
            matches!(read_frame(&mut r, 1024).await, Err(WireError::TooLarge { len, max: 1024 }) if len == 1 << 30)
        );
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let mut buf = 5u32.to_be_bytes().to_vec();
        buf.extend_from_slice(&[0xc1, 0xff, 0x00, 0x13, 0x37]);
        let mut r = &buf[..];
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(WireError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn truncated_body_is_io_error() {
        let mut buf = 10u32.to_be_bytes().to_vec();
        buf.extend_from_slice(&[1, 2]);
        let mut r = &buf[..];
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(WireError::Io(_))
        ));
    }

    /// A frame from a newer version: the decoder meets an unknown variant,
    /// and the refusal's kind says so (`Unsupported`), apart from garbage
    /// (`Invalid`). A client takes `Unsupported` for "ask the older way".
    #[test]
    fn a_frame_of_a_newer_version_is_refused_as_unsupported_and_garbage_as_invalid() {
        #[derive(Serialize)]
        enum Newer {
            #[allow(dead_code)]
            Ok,
            WatchJob {
                job_id: String,
                fetch: bool,
            },
        }
        let bytes = rmp_serde::to_vec(&Newer::WatchJob {
            job_id: "j".into(),
            fetch: true,
        })
        .unwrap();
        #[derive(Debug, Deserialize)]
        enum Older {
            #[allow(dead_code)]
            Ok,
        }
        let err = rmp_serde::from_slice::<Older>(&bytes).unwrap_err();
        let refusal = WireError::Malformed(err);
        assert_eq!(refusal.kind(), ErrorKind::Unsupported, "{refusal}");
        let garbage = rmp_serde::from_slice::<Frame>(&[0xc1]).unwrap_err();
        assert_eq!(WireError::Malformed(garbage).kind(), ErrorKind::Invalid);
    }

    #[test]
    fn a_job_query_counts_by_state_filters_and_keeps_the_newest() {
        let job =
            |id: &str, state: JobState, name: &str, owner: &str, created_ms: u64| JobSummary {
                job_id: id.into(),
                job_name: name.into(),
                state,
                tasks_total: 1,
                counters: None,
                created_ms,
                fetched: false,
                note: None,
                owner: Some(owner.into()),
            };
        let all = vec![
            job("a", JobState::Done, "wc", "client:al", 10),
            job("b", JobState::Running, "wc", "client:al", 30),
            job("c", JobState::Done, "wc", "client:bo", 20),
            job("d", JobState::Cancelled, "probe", "client:al", 40),
            job("e", JobState::Done, "wc", "client:al", 50),
        ];
        let ids = |l: &JobList| l.jobs.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>();
        let q = JobQuery {
            states: vec![JobState::Done],
            job_name: Some("wc".into()),
            last: 2,
            ..Default::default()
        };
        let l = q.answer(all.clone());
        assert_eq!(ids(&l), ["e", "c"]);
        assert_eq!(l.matched, 3);
        // Counted over every condition but the states.
        let counts = StateCounts {
            running: 1,
            done: 3,
            cancelled: 0,
        };
        assert_eq!(l.counts, counts);
        let q = JobQuery {
            owner: Some("client:al".into()),
            since_ms: Some(30),
            ..Default::default()
        };
        assert_eq!(ids(&q.answer(all.clone())), ["e", "d", "b"]);
        let everything = JobQuery::default().answer(all);
        assert_eq!(everything.matched, 5);
        assert_eq!(ids(&everything), ["e", "d", "b", "c", "a"]);
    }

    #[test]
    fn seen_shards_travel_as_runs_and_come_back_the_same() {
        use std::collections::HashSet;
        let key = |index, generation| ShardKey { index, generation };
        let seen: HashSet<ShardKey> = (0..1000)
            .map(|i| key(i, 0))
            .chain([key(5, 1), key(6, 1), key(9, 1), key(2000, 0)])
            .collect();
        let runs = key_runs(&seen);
        assert_eq!(runs, vec![(0, 1000, 0), (2000, 1, 0), (5, 2, 1), (9, 1, 1)]);
        let back = KeyRuns::new(&runs);
        for i in 0..2100 {
            for g in 0..3 {
                assert_eq!(
                    back.contains(key(i, g)),
                    seen.contains(&key(i, g)),
                    "{i}-{g}"
                );
            }
        }
        assert!(key_runs(&HashSet::new()).is_empty());
        // A client with more runs than a frame carries sends the first.
        let scattered: HashSet<ShardKey> = (0..2 * MAX_SEEN_RUNS as u32)
            .map(|i| key(2 * i, 0))
            .collect();
        assert_eq!(key_runs(&scattered).len(), MAX_SEEN_RUNS);
    }

    /// Issue 29, finding 2: what a peer claims costs what it sent, not
    /// what it claims; overlapping, unsorted and empty runs, and runs past
    /// the last index, read as the union of their shards.
    #[test]
    fn runs_a_peer_claims_cost_what_it_sent() {
        let key = |index, generation| ShardKey { index, generation };
        let all = KeyRuns::new(&[(0, u32::MAX, 0), (u32::MAX, u32::MAX, 0)]);
        assert_eq!(all.ranges(), 1);
        assert!(all.contains(key(0, 0)) && all.contains(key(u32::MAX, 0)));
        assert!(!all.contains(key(0, 1)));
        let mixed = KeyRuns::new(&[(10, 5, 1), (0, 0, 0), (3, 4, 1), (12, 10, 1), (40, 1, 0)]);
        assert_eq!(mixed.ranges(), 3, "{mixed:?}");
        for i in 0..50 {
            let want = (3..7).contains(&i) || (10..22).contains(&i);
            assert_eq!(mixed.contains(key(i, 1)), want, "{i}");
            assert_eq!(mixed.contains(key(i, 0)), i == 40, "{i}");
        }
        // Only the first MAX_SEEN_RUNS runs are read.
        let many: Vec<(u32, u32, u32)> = (0..MAX_SEEN_RUNS as u32 + 10)
            .map(|i| (2 * i, 1, 0))
            .collect();
        let read = KeyRuns::new(&many);
        assert_eq!(read.ranges(), MAX_SEEN_RUNS);
        assert!(!read.contains(key(2 * MAX_SEEN_RUNS as u32, 0)));
    }
}
