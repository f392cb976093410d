//! The conversation of a client with the master: a request opens a
//! stream ([`Request`]), the master answers it and may go on pushing on it
//! ([`Reply`]: a watched job's progress, a streamed job's outputs), and
//! the client may follow its first frame (a submission's tasks, the watch
//! behind them, the mark that a pushed result was read).

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{messages, ErrorKind, Message};
use crate::core::{Counters, ShardKey, TaskFailure};

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
    /// Its committed outputs may be streamed ([`Request::StreamJob`]): they
    /// are kept until the job is collected rather than deleted when it
    /// ends, so that a stream can always catch up. Left out of the
    /// encoding when false, so that older peers read such options.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    /// Higher runs first: 0 (the default) to
    /// [`crate::core::MAX_PRIORITY`]. Not part of the job's
    /// identity (a resubmission at another priority finds the job). Left
    /// out of the encoding when 0, as releases before priorities wrote it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
    /// Its fairness key: within a priority, keys get shards in proportion
    /// to their weights ([`Request::SetFairness`]). `None`: its owner's
    /// (the certificate's principal). A key that names a principal may be
    /// taken only by that principal, an admin or a node. Not part of the
    /// job's identity. Left out when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness_key: Option<String>,
    /// A delayed job: none of its tasks starts before this time
    /// (milliseconds since the Unix epoch, UTC), as the master's wall
    /// clock judges it. Not part of the job's identity. Left out when
    /// `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// The limits it is under ([`Request::SetLimit`]), besides those of
    /// its job type. Not part of the job's identity. Left out when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub under: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

pub(super) fn is_zero(n: &u8) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// A submission: everything but the task bodies, which follow in
/// [`Request::SubmitChunk`] frames on the same stream.
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
    #[serde(with = "crate::wire::core_serde::CountersDef")]
    pub counters: Counters,
    /// A delayed job's time (milliseconds since the Unix epoch), while it
    /// waits for it. Left out when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
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
    /// Shards ready to run, by priority, highest first (the priorities
    /// with none left out; empty from a release before priorities).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queued: Vec<QueuedAt>,
    /// The fairness keys with a weight set or shards waiting (the asker's
    /// own, for a client; every key for an admin or a node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fairness: Vec<FairnessKey>,
    /// The limits set or named by a job, with their use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitStatus>,
    /// The job whose shards have waited longest to run (for an admin or
    /// a node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_waiting: Option<WaitingJob>,
}

/// A job waiting to run, and for how long.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WaitingJob {
    /// The job.
    pub job_id: String,
    /// How long its first queued shard has waited.
    pub waiting_ms: u64,
}

/// Shards ready to run at one priority.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueuedAt {
    /// The priority.
    pub priority: u8,
    /// Its shards ready to run.
    pub shards: u64,
}

/// A finished job's result as fetched by a client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobOutcome {
    /// Final progress figures.
    pub progress: JobProgress,
    /// The encoded `Job::Result` (empty if cancelled).
    pub result: ByteBuf,
    /// Tasks that failed every attempt (at most a bounded number are kept).
    #[serde(with = "crate::wire::core_serde::list")]
    pub failures: Vec<TaskFailure>,
}

messages! {
    /// Client to master: the first frame of a stream asks; a submission's
    /// tasks, the watch behind them and the mark that a pushed result was
    /// read follow it on the same stream.
    pub enum Request("a client's request") {
        /// A submission header; its tasks follow in `SubmitChunk` frames.
        Submit(SubmitHeader),
        /// Encoded tasks of the submission in progress.
        SubmitChunk {
            /// Encoded tasks, in order.
            tasks: Vec<ByteBuf>,
        },
        /// Progress of a job.
        GetJob {
            /// The job.
            job_id: String,
        },
        /// The cluster's status.
        GetStatus,
        /// Fetch a finished job's result.
        FetchResult {
            /// The job.
            job_id: String,
        },
        /// Cancel a job.
        Cancel {
            /// The job.
            job_id: String,
        },
        /// Push this job's progress as it changes, ending with its final
        /// state. The master answers `Job` frames (at most one per
        /// [`WATCH_PERIOD`] while the job runs) and a last one that is
        /// `Done` or `Cancelled`, or, with `fetch`, the job's `Outcome`
        /// (which counts as its fetch); `Error` if there is no such job. A
        /// stream that ends before that (a failover) is opened again by
        /// the client.
        WatchJob {
            /// The job.
            job_id: String,
            /// End with the job's result rather than its final progress.
            fetch: bool,
            /// Without `fetch`: end with the job's result if the master has
            /// it at hand (the job ended as this master watched it),
            /// leaving it unfetched: the client sends `Fetched` once it has
            /// read it (`Client::submit`'s handle, whose `result()` then
            /// needs no request). Otherwise the final progress, as a plain
            /// watch.
            #[serde(default)]
            unmarked: bool,
        },
        /// Before a submission: how a job of `task_count` tasks would be
        /// cut (`shard_size` 0: by the master) and which workers run it.
        /// `Error` for a job type the cluster does not run.
        PlanJob {
            /// The registered job name.
            job_name: String,
            /// Its tasks.
            task_count: u64,
            /// Tasks per shard asked for (0: the master's choice).
            shard_size: u32,
            /// The submitting binary's [`crate::registry::shape`] of the
            /// job's types: a different one on the master is refused.
            shape: Option<String>,
        },
        /// The jobs the cluster holds that the query matches (and the
        /// asker may see).
        ListJobs(JobQuery),
        /// Send the job's committed outputs (`Partial` frames, each shard
        /// once, in commit order) except the shards in `seen`, then, once
        /// the job ends and every committed output was sent, its final
        /// `Job` progress. A stream that ends before (a failover) is
        /// opened again with what was seen since.
        StreamJob {
            /// The job.
            job_id: String,
            /// Shards the client has: runs of consecutive indexes of one
            /// generation (`(first index, count, generation)`).
            seen: Vec<(u32, u32, u32)>,
        },
        /// On an `unmarked` watch's stream once its `Outcome` is read: the
        /// result was fetched (its retention starts). Not answered.
        Fetched {
            /// The job.
            job_id: String,
        },
        /// Sets a fairness key's weight (1 to
        /// [`crate::core::MAX_WEIGHT`]; 1 is the default, and clears it),
        /// stored with the cluster: `Ok` once durable. An admin's or a
        /// node's (protocol 7).
        SetFairness {
            /// The key.
            key: String,
            /// Its weight.
            weight: u32,
        },
        /// The fairness keys with a weight set or shards waiting: answered
        /// with `Fairness` (protocol 7).
        ListFairness,
        /// Sets a limit (`Some`) or deletes it (`None`), stored with the
        /// cluster: `Ok` once durable. An admin's or a node's (protocol 8).
        SetLimit {
            /// The limit's name, as jobs name it.
            key: String,
            /// Its settings.
            limit: Option<LimitSpec>,
        },
        /// The limits set or named by a job, with their use: answered with
        /// `Limits` (protocol 8).
        ListLimits,
    }
}

impl Request {
    /// The job a first frame asks about, if it asks about one: only its
    /// owner, an admin or a node may.
    pub fn addressed_job(&self) -> Option<&str> {
        match self {
            Request::GetJob { job_id }
            | Request::FetchResult { job_id }
            | Request::Cancel { job_id }
            | Request::WatchJob { job_id, .. }
            | Request::StreamJob { job_id, .. } => Some(job_id),
            Request::Submit(_)
            | Request::SubmitChunk { .. }
            | Request::GetStatus
            | Request::PlanJob { .. }
            | Request::ListJobs(_)
            | Request::Fetched { .. }
            | Request::SetFairness { .. }
            | Request::ListFairness
            | Request::SetLimit { .. }
            | Request::ListLimits => None,
        }
    }
}

messages! {
    /// Master to client: the answer to a request, and what the master
    /// pushes after it on the same stream (a watched job's progress, a
    /// streamed job's outputs): one conversation, since a submission's
    /// stream carries its answer and then its watch.
    pub enum Reply("a master's reply") {
        /// The job is durable.
        Accepted {
            /// The job.
            job_id: String,
            /// True if the job id already existed and nothing new was
            /// created.
            existing: bool,
        },
        /// A job's progress.
        Job(JobProgress),
        /// The cluster's status.
        Status(ClusterStatus),
        /// A finished job's result.
        Outcome(JobOutcome),
        /// Done, nothing to say.
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
        /// The answer to `PlanJob`.
        Planned(JobPlanInfo),
        /// The answer to `ListJobs`.
        Jobs(JobList),
        /// One committed shard's output (the job's encoded partial result
        /// of that shard's successful tasks), pushed on a `StreamJob`.
        Partial {
            /// The shard.
            #[serde(with = "crate::wire::core_serde::ShardKeyDef")]
            shard: ShardKey,
            /// Its encoded partial `Job::Result`.
            output: ByteBuf,
        },
        /// The answer to `ListFairness`.
        Fairness(FairnessList),
        /// The answer to `ListLimits`.
        Limits(LimitList),
    }
}

/// A limit's settings (`limits set`): at least one of a cap on the runs
/// held at once and a rate.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LimitSpec {
    /// Most runs of its jobs held by workers at once (queued or running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Most runs started per `per_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    /// The rate's period (default a second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_ms: Option<u64>,
    /// Most runs started at once after a pause (default a tenth of the
    /// rate, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// Longest period of a rate.
pub const MAX_RATE_PERIOD: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

impl LimitSpec {
    /// Why these settings are not a limit, if they are not.
    pub fn check(&self) -> Result<(), String> {
        if self.max_running.is_none() && self.rate.is_none() {
            return Err("a limit needs --max-running N, --rate N, or both".into());
        }
        if self.max_running == Some(0) {
            return Err("--max-running must be at least 1".into());
        }
        if self.rate == Some(0) {
            return Err("--rate must be at least 1".into());
        }
        if self.rate.is_none() && (self.per_ms.is_some() || self.burst.is_some()) {
            return Err("--per and --burst go with --rate".into());
        }
        let per = self.per_ms.unwrap_or(1000);
        if per == 0 || per > MAX_RATE_PERIOD.as_millis() as u64 {
            return Err("--per must be from 1ms to 7 days".into());
        }
        if self.burst == Some(0) {
            return Err("--burst must be at least 1".into());
        }
        Ok(())
    }

    /// The limit as the scheduler keeps it.
    pub fn to_core(&self) -> crate::core::Limit {
        crate::core::Limit {
            max_running: self.max_running,
            rate: self.rate.map(|n| crate::core::Rate {
                n: n.max(1),
                per: std::time::Duration::from_millis(self.per_ms.unwrap_or(1000).max(1)),
                burst: self
                    .burst
                    .unwrap_or_else(|| crate::core::Rate::default_burst(n))
                    .max(1),
            }),
        }
    }
}

/// The limits the master knows ([`Request::ListLimits`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LimitList {
    /// By name.
    pub limits: Vec<LimitStatus>,
}

/// One limit and its use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LimitStatus {
    /// Its name.
    pub key: String,
    /// Its settings (`None`: named by jobs, not set: it holds nothing
    /// back).
    pub limit: Option<LimitSpec>,
    /// Runs of its jobs held by workers now.
    pub running: u32,
    /// Runs its bucket lets start now (with a rate).
    pub tokens: Option<u32>,
    /// Jobs waiting on it.
    pub waiting_jobs: u64,
    /// Their shards waiting to run.
    pub waiting_shards: u64,
    /// Times a job found it full, since the master took over.
    pub throttled: u64,
}

/// The fairness keys the master knows: those with a weight set, and
/// those with shards waiting ([`Request::ListFairness`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FairnessList {
    /// By key.
    pub keys: Vec<FairnessKey>,
}

/// One fairness key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FairnessKey {
    /// The key (a principal, `client:<name>`, unless a job named another).
    pub key: String,
    /// Its weight (1 unless set).
    pub weight: u32,
    /// Its shards waiting to run.
    pub queued: u64,
}

impl Reply {
    /// An `Error` reply of `kind`.
    pub fn error(kind: ErrorKind, message: impl std::fmt::Display) -> Reply {
        Reply::Error {
            kind,
            message: message.to_string(),
        }
    }

    /// Whether this frame ends a `WatchJob` stream.
    pub fn ends_watch(&self) -> bool {
        match self {
            Reply::Job(p) => p.state.is_final(),
            _ => true,
        }
    }
}

/// Most runs a [`Request::StreamJob`] carries: a client that has more sends
/// the first of them (it is then sent some shards again, and drops them),
/// and a master reads no more than these.
pub const MAX_SEEN_RUNS: usize = 8_192;

/// `keys` (sorted or not) as runs of consecutive indexes of one generation,
/// for [`Request::StreamJob`]: at most [`MAX_SEEN_RUNS`] of them.
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

/// How a job would be cut and run: the answer to [`Request::PlanJob`].
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

/// One job the cluster holds, as [`Request::ListJobs`] lists it.
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
    #[serde(with = "crate::wire::core_serde::maybe")]
    pub counters: Option<Counters>,
    /// When it was accepted (milliseconds since the Unix epoch; 0 if unknown).
    pub created_ms: u64,
    /// Whether its result was fetched.
    pub fetched: bool,
    /// Something its owner should know (no worker runs it).
    pub note: Option<String>,
    /// Whose it is (`client:<name>`; `None`: a job of an older version).
    pub owner: Option<String>,
    /// A delayed job's time (milliseconds since the Unix epoch), while it
    /// waits for it: such a running job is scheduled. Left out when
    /// `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// Its priority. Left out when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
    /// The fairness key it named (`None`: its owner's). Left out when
    /// `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness_key: Option<String>,
}

impl JobSummary {
    /// Running and waiting for its time.
    pub fn is_scheduled(&self) -> bool {
        self.state == JobState::Running && self.not_before_ms.is_some()
    }
}

/// Which jobs a [`Request::ListJobs`] asks for: every condition given must
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
    /// Of running jobs, only those waiting for their time (`Some(true)`:
    /// `jobs --state scheduled`), or only those not (`Some(false)`). Left
    /// out when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<bool>,
    /// Of this priority. Left out when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Under this fairness key (a job's owner's when it named none).
    /// Left out when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness_key: Option<String>,
}

/// Most jobs one [`Reply::Jobs`] lists.
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
    /// Of the running, those waiting for their time. Left out when 0.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub scheduled: u64,
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
            && self.priority.is_none_or(|p| j.priority == p)
            && self
                .fairness_key
                .as_ref()
                .is_none_or(|k| j.fairness_key.as_ref().or(j.owner.as_ref()) == Some(k))
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
            if j.is_scheduled() {
                counts.scheduled += 1;
            }
        }
        if !self.states.is_empty() {
            all.retain(|j| self.states.contains(&j.state));
        }
        if let Some(scheduled) = self.scheduled {
            all.retain(|j| j.state != JobState::Running || j.is_scheduled() == scheduled);
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

#[cfg(test)]
mod tests {
    use super::*;

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
                not_before_ms: None,
                priority: 0,
                fairness_key: None,
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
            scheduled: 0,
        };
        assert_eq!(l.counts, counts);
        let q = JobQuery {
            owner: Some("client:al".into()),
            since_ms: Some(30),
            ..Default::default()
        };
        assert_eq!(ids(&q.answer(all.clone())), ["e", "d", "b"]);
        let everything = JobQuery::default().answer(all.clone());
        assert_eq!(everything.matched, 5);
        assert_eq!(ids(&everything), ["e", "d", "b", "c", "a"]);
        // A delayed job waiting for its time is running and scheduled:
        // `--state scheduled` lists it alone, `--state running` the others.
        let mut all = all;
        let mut waits = job("f", JobState::Running, "wc", "client:al", 60);
        waits.not_before_ms = Some(1_000);
        all.push(waits);
        let q = |states: Vec<JobState>, scheduled| JobQuery {
            states,
            scheduled,
            ..Default::default()
        };
        let scheduled = q(vec![JobState::Running], Some(true)).answer(all.clone());
        assert_eq!(ids(&scheduled), ["f"]);
        assert_eq!(
            (scheduled.counts.running, scheduled.counts.scheduled),
            (2, 1)
        );
        let running = q(vec![JobState::Running], Some(false)).answer(all.clone());
        assert_eq!(ids(&running), ["b"]);
        let both = q(vec![JobState::Running, JobState::Done], Some(true)).answer(all.clone());
        assert_eq!(ids(&both), ["f", "e", "c", "a"]);
        // By priority, and by fairness key (the owner's when none named).
        all[0].priority = 9;
        all[2].fairness_key = Some("tenant".into());
        let q = JobQuery {
            priority: Some(9),
            ..Default::default()
        };
        assert_eq!(ids(&q.answer(all.clone())), ["a"]);
        let key = |k: &str| JobQuery {
            fairness_key: Some(k.into()),
            ..Default::default()
        };
        assert_eq!(ids(&key("tenant").answer(all.clone())), ["c"]);
        assert_eq!(ids(&key("client:bo").answer(all)), Vec::<String>::new());
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
