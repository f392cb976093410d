//! The frame and record types of the baseline `ef9caa21`, as that commit
//! declared them (documentation left out), with its encoding: positional
//! arrays, but for the job record's map. The suite reads this build's
//! encodings with them, as a node of the baseline would. Never edited:
//! a new baseline gets a module of its own.
#![cfg(test)]
#![allow(dead_code, missing_docs, clippy::enum_variant_names)]

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

fn is_false(b: &bool) -> bool {
    !*b
}

/// Encodes as the baseline did.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("encodes")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardKey {
    pub index: u32,
    pub generation: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub index: u64,
    pub error: String,
    pub attempt: u32,
    pub retryable: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub tasks_total: u64,
    pub tasks_done: u64,
    pub tasks_failed: u64,
    pub retries: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobOptions {
    pub shard_size: u32,
    pub max_attempts: u32,
    #[serde(default)]
    pub shard_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitHeader {
    pub job_id: String,
    pub job_name: String,
    pub options: JobOptions,
    pub task_count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub epoch: u64,
    pub job_id: String,
    pub incarnation: u64,
    pub job_name: String,
    pub shard: ShardKey,
    pub attempt: u32,
    pub tasks: Vec<(u64, ByteBuf)>,
    pub ack_first: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardReport {
    pub epoch: u64,
    pub job_id: String,
    pub incarnation: u64,
    pub shard: ShardKey,
    pub attempt: u32,
    pub output: ByteBuf,
    pub failures: Vec<TaskFailure>,
    #[serde(default)]
    pub output_object: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum JobState {
    Running,
    Done,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobProgress {
    pub job_id: String,
    pub job_name: String,
    pub state: JobState,
    pub counters: Counters,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerStatus {
    pub node_id: String,
    pub addr: String,
    pub slots: u32,
    pub in_flight: u32,
    pub connected: bool,
    pub last_seen_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub leader: String,
    pub epoch: u64,
    pub workers: Vec<WorkerStatus>,
    pub jobs: Vec<JobProgress>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobOutcome {
    pub progress: JobProgress,
    pub result: ByteBuf,
    pub failures: Vec<TaskFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Frame {
    WorkerHello {
        version: u32,
        node_id: String,
        slots: u32,
        jobs: Vec<String>,
        epoch: u64,
        #[serde(default)]
        store: String,
        #[serde(default)]
        store_mark: String,
    },
    Welcome {
        epoch: u64,
    },
    Assign(Assignment),
    Started {
        epoch: u64,
        job_id: String,
        incarnation: u64,
        shard: ShardKey,
        attempt: u32,
    },
    StartAck {
        job_id: String,
        incarnation: u64,
        shard: ShardKey,
        attempt: u32,
    },
    StartRefused {
        job_id: String,
        incarnation: u64,
        shard: ShardKey,
        attempt: u32,
    },
    Unstarted {
        job_id: String,
        incarnation: u64,
        shard: ShardKey,
        attempt: u32,
    },
    Report(ShardReport),
    Draining,
    Drained,
    DrainAck,
    Submit(SubmitHeader),
    SubmitChunk {
        tasks: Vec<ByteBuf>,
    },
    Accepted {
        job_id: String,
        existing: bool,
    },
    GetJob {
        job_id: String,
    },
    Job(JobProgress),
    GetStatus,
    Status(ClusterStatus),
    FetchResult {
        job_id: String,
    },
    Outcome(JobOutcome),
    Cancel {
        job_id: String,
    },
    Ok,
    NotMaster,
    Error {
        kind: ErrorKind,
        message: String,
    },
    WatchJob {
        job_id: String,
        fetch: bool,
        #[serde(default)]
        unmarked: bool,
    },
    PlanJob {
        job_name: String,
        task_count: u64,
        shard_size: u32,
        shape: Option<String>,
    },
    Planned(JobPlanInfo),
    ListJobs(JobQuery),
    Jobs(JobList),
    StreamJob {
        job_id: String,
        seen: Vec<(u32, u32, u32)>,
    },
    Partial {
        shard: ShardKey,
        output: ByteBuf,
    },
    StopRun {
        job_id: String,
        incarnation: u64,
        shard: ShardKey,
        attempt: u32,
    },
    Fetched {
        job_id: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobPlanInfo {
    pub shard_size: u32,
    pub shards: u32,
    pub workers: u32,
    pub slots: u64,
    pub registered: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobSummary {
    pub job_id: String,
    pub job_name: String,
    pub state: JobState,
    pub tasks_total: u64,
    pub counters: Option<Counters>,
    pub created_ms: u64,
    pub fetched: bool,
    pub note: Option<String>,
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobQuery {
    pub states: Vec<JobState>,
    pub job_name: Option<String>,
    pub owner: Option<String>,
    pub since_ms: Option<u64>,
    pub last: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
    pub matched: u64,
    pub counts: StateCounts,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateCounts {
    pub running: u64,
    pub done: u64,
    pub cancelled: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    Invalid,
    NoSuchJob,
    NotOwner,
    JobState,
    Unavailable,
    OutcomeUnknown,
    Unsupported,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MasterInfo {
    pub node_id: String,
    pub addr: String,
    pub epoch: u64,
    #[serde(default)]
    pub session_timeout_ms: u64,
    #[serde(default)]
    pub store: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerInfo {
    pub addr: String,
    pub slots: u32,
    pub jobs: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum JobStatus {
    Writing,
    Accepted,
    Done,
    Cancelled,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct JobRecord {
    pub job_name: String,
    pub options: JobOptions,
    pub tasks_total: u64,
    pub batches: u32,
    pub status: JobStatus,
    pub created_ms: u64,
    pub fetched_ms: Option<u64>,
    #[serde(default)]
    pub digest: Option<ByteBuf>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<Vec<ByteBuf>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultRecord>,
    #[serde(default)]
    pub incarnation: u64,
}

impl Serialize for JobRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let n = 10 + usize::from(self.inline.is_some()) + usize::from(self.result.is_some());
        let mut m = serializer.serialize_map(Some(n))?;
        m.serialize_entry("job_name", &self.job_name)?;
        m.serialize_entry("options", &self.options)?;
        m.serialize_entry("tasks_total", &self.tasks_total)?;
        m.serialize_entry("batches", &self.batches)?;
        m.serialize_entry("status", &self.status)?;
        m.serialize_entry("created_ms", &self.created_ms)?;
        m.serialize_entry("fetched_ms", &self.fetched_ms)?;
        m.serialize_entry("digest", &self.digest)?;
        m.serialize_entry("owner", &self.owner)?;
        if let Some(inline) = &self.inline {
            m.serialize_entry("inline", inline)?;
        }
        if let Some(result) = &self.result {
            m.serialize_entry("result", result)?;
        }
        m.serialize_entry("incarnation", &self.incarnation)?;
        m.end()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum OutputRef {
    Inline(ByteBuf),
    File(String),
    Object(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardRecord {
    pub epoch: u64,
    pub attempt: u32,
    pub output: OutputRef,
    pub failures: Vec<TaskFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(from = "ResultRecordRepr")]
pub struct ResultRecord {
    pub epoch: u64,
    pub output: OutputRef,
    pub failures: Vec<TaskFailure>,
    pub counters: Counters,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ResultRecordRepr {
    Now(u64, OutputRef, Vec<TaskFailure>, Counters),
    Before(u64, OutputRef, Vec<TaskFailure>, u64, u64, u64),
}

impl From<ResultRecordRepr> for ResultRecord {
    fn from(r: ResultRecordRepr) -> Self {
        match r {
            ResultRecordRepr::Now(epoch, output, failures, counters) => ResultRecord {
                epoch,
                output,
                failures,
                counters,
            },
            ResultRecordRepr::Before(epoch, output, failures, done, failed, retries) => {
                ResultRecord {
                    epoch,
                    output,
                    failures,
                    counters: Counters {
                        tasks_total: done,
                        tasks_done: done,
                        tasks_failed: failed,
                        retries,
                    },
                }
            }
        }
    }
}
