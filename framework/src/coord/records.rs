//! Records stored in znodes, MessagePack-encoded. Decoding garbage gives a
//! [`CoordError::Garbage`](super::CoordError::Garbage) naming the path.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::core::{Counters, TaskFailure};
use crate::wire::JobOptions;

/// Data of `/master`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MasterInfo {
    /// The master's node id.
    pub node_id: String,
    /// Its QUIC address.
    pub addr: String,
    /// Its epoch.
    pub epoch: u64,
    /// Its negotiated ZooKeeper session timeout: how long this znode may
    /// outlive the master's crash, so how long a client waits for an
    /// address that does not answer before it gives up.
    #[serde(default)]
    pub session_timeout_ms: u64,
    /// The cluster's store URL (`--store`), so that clients can upload
    /// inputs to it.
    #[serde(default)]
    pub store: String,
    /// The protocol versions the master speaks, oldest and newest
    /// (`None`: a release that spoke only version 6). A client uses the
    /// newest it speaks too, and sends nothing newer.
    #[serde(default)]
    pub protocol: Option<[u32; 2]>,
    /// The master's build ([`crate::build_id`]).
    #[serde(default)]
    pub build: String,
}

/// Data of `/workers/<node-id>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker's QUIC address (for operators; workers dial the master).
    pub addr: String,
    /// Concurrent task slots.
    pub slots: u32,
    /// Job names it runs.
    pub jobs: Vec<String>,
    /// Its build ([`crate::build_id`]; empty for a release that did not
    /// say).
    #[serde(default)]
    pub build: String,
    /// The protocol versions it speaks, oldest and newest (`None`: a
    /// release that spoke only version 6).
    #[serde(default)]
    pub protocol: Option<[u32; 2]>,
    /// The types of each job it runs ([`crate::registry::shape_id`]), by
    /// name (empty: a release that did not say).
    #[serde(default)]
    pub shapes: std::collections::BTreeMap<String, u64>,
}

/// Data of `/nodes/<node-id>`: a live node (ephemeral, written when it
/// starts, whatever its role), and what it can follow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its role (`all`, `worker`, `candidate`).
    pub role: String,
    /// Its build ([`crate::build_id`]).
    pub build: String,
    /// The protocol versions it speaks, oldest and newest.
    pub protocol: [u32; 2],
    /// The highest cluster feature level it follows
    /// ([`crate::core::features::SUPPORTED`]).
    pub features: u32,
}

/// Data of `/features`: the cluster's feature level (absent: 0), raised
/// by `features upgrade`, never lowered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeaturesRecord {
    /// The level.
    pub level: u32,
    /// When it was raised (milliseconds since the Unix epoch).
    pub raised_ms: u64,
    /// The build that raised it.
    pub by: String,
}

/// Data of `/fairness`: the fairness keys' weights that are not 1
/// (absent: every key weighs 1). Written by the master, at an admin's
/// request ([`crate::wire::Request::SetFairness`]); read at each takeover.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FairnessRecord {
    /// Weight by key.
    #[serde(default)]
    pub weights: std::collections::BTreeMap<String, u32>,
}

/// Data of `/limits`: the limits set, by name (absent: none). Written by
/// the master, at an admin's request ([`crate::wire::Request::SetLimit`]);
/// read at each takeover.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LimitsRecord {
    /// Settings by name.
    #[serde(default)]
    pub limits: std::collections::BTreeMap<String, crate::wire::LimitSpec>,
}

/// Lifecycle of a job in ZooKeeper.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum JobStatus {
    /// Batches are being written; not acknowledged. A new master deletes such jobs.
    Writing,
    /// Durable and acknowledged.
    Accepted,
    /// Every task has a committed final outcome; `result` holds the reduction.
    Done,
    /// Cancelled by a client.
    Cancelled,
}

/// Data of `/jobs/<job-id>`.
///
/// Written as a map of named fields, like every record
/// ([`crate::wire::encode_named`]), so that a reader of any version reads
/// the fields it knows and skips the others; records of earlier versions
/// are positional arrays, and read as well (a field they lack takes its
/// default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobRecord {
    /// Registered job name.
    pub job_name: String,
    /// Cutting and retry options.
    pub options: JobOptions,
    /// Number of tasks.
    pub tasks_total: u64,
    /// Number of `batches/<k>` children.
    pub batches: u32,
    /// Lifecycle state.
    pub status: JobStatus,
    /// Milliseconds since the Unix epoch when accepted.
    pub created_ms: u64,
    /// When the result was first fetched, if it was.
    pub fetched_ms: Option<u64>,
    /// SHA-256 of the submission (see [`submission_digest`]): a
    /// resubmission of this id with other tasks or options is refused.
    #[serde(default)]
    pub digest: Option<ByteBuf>,
    /// Who submitted it (`transport::PeerId::principal`: `client:<name>`
    /// or `node:<id>`): only it, an admin or a node may read, watch or
    /// cancel it. `None` in records of earlier versions (anyone may).
    #[serde(default)]
    pub owner: Option<String>,
    /// A small job's tasks, kept in its record (see
    /// [`JobRecord::is_compact`]). Left out when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<Vec<ByteBuf>>,
    /// A compact job's result, once it is done, when it is small (see
    /// [`JobRecord::keep_result`]): its end is then one write of this
    /// record, and it has no `result` znode. Left out when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultRecord>,
    /// Which job of this id it is: a random number chosen when it was
    /// admitted, never 0 (0: a record of an earlier version). A job
    /// submitted under the id of one that was collected is another
    /// incarnation, and nothing of the earlier one (a run, a report, an
    /// output in the store) is taken for its own.
    #[serde(default)]
    pub incarnation: u64,
    /// The job's task and result types as the master that admitted it
    /// defines them ([`crate::registry::shape_id`]): a master whose own
    /// differ (a build with other types) quarantines the job until one of
    /// that build takes over. `None` in records of earlier releases and
    /// for types that cannot be traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<u64>,
}

/// A fresh job incarnation ([`JobRecord::incarnation`]): random, never 0.
pub fn new_incarnation() -> u64 {
    rand::random::<u64>().max(1)
}

/// The most bytes of output and failures a compact job's record keeps as
/// its result (beside its tasks, which take at most as many again).
pub const KEPT_RESULT_BYTES: usize = 16 * 1024;

impl JobRecord {
    /// The job's fairness key: the one it named, else its owner's
    /// principal (empty for a job of a release before owners).
    pub fn fairness_key(&self) -> String {
        self.options
            .fairness_key
            .clone()
            .or_else(|| self.owner.clone())
            .unwrap_or_default()
    }

    /// A compact job is one znode until it runs: its tasks are in its
    /// record (no `batches`), its commit records are its own children (no
    /// `done` and buckets), and `lost` is created at its first lost run.
    /// A work queue's small jobs are written, and collected, in a few
    /// operations instead of a dozen.
    pub fn is_compact(&self) -> bool {
        self.inline.is_some()
    }

    /// Whether a result of `output` and `failures` may be kept in this
    /// record ([`JobRecord::result`]): the job is compact, and they take at
    /// most 16 KiB.
    pub fn keep_result(&self, output: &[u8], failures: &[TaskFailure]) -> bool {
        let failures: usize = failures.iter().map(|f| f.error.len() + 32).sum();
        self.is_compact() && output.len().saturating_add(failures) <= KEPT_RESULT_BYTES
    }

    /// Most bytes of a result without failures its record keeps, if it
    /// keeps any (what [`JobRecord::keep_result`] allows): a compact job
    /// of one shard whose output fits ends in one write. A streamed job
    /// never does (its stream reads commits).
    pub fn kept_result_room(&self) -> Option<usize> {
        (self.is_compact() && !self.options.stream).then_some(KEPT_RESULT_BYTES)
    }

    /// The record without its bytes: no tasks (a compact job stays
    /// compact, with none), no output or failures in its result (the
    /// counts stay). What the collector keeps of jobs that change no more;
    /// never to be written back.
    pub fn without_payload(&self) -> JobRecord {
        JobRecord {
            inline: self.inline.as_ref().map(|_| Vec::new()),
            result: self.result.as_ref().map(|r| ResultRecord {
                output: OutputRef::Inline(ByteBuf::new()),
                failures: Vec::new(),
                ..r.clone()
            }),
            digest: None,
            ..self.clone()
        }
    }

    /// What the collector needs to know of it.
    pub fn stored(&self) -> crate::core::job::Stored {
        use crate::core::job::Stored;
        match self.status {
            JobStatus::Writing => Stored::Writing,
            JobStatus::Accepted => Stored::Running,
            JobStatus::Cancelled => Stored::Retained,
            JobStatus::Done if self.fetched_ms.is_some() => Stored::Retained,
            JobStatus::Done => Stored::Unfetched,
        }
    }
}

/// SHA-256 over a submission's job name, options and encoded tasks, each
/// length-prefixed so that no two submissions share an encoding.
pub fn submission_digest(job_name: &str, options: &JobOptions, tasks: &[ByteBuf]) -> ByteBuf {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // Small fields are gathered and hashed 64 KiB at a time: a million
    // tiny tasks would otherwise cost two calls each. (The same bytes in
    // the same order: the digest does not depend on the gathering.)
    const GATHER: usize = 64 << 10;
    let mut buf: Vec<u8> = Vec::with_capacity(GATHER + 64);
    let mut field = |b: &[u8]| {
        buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
        if b.len() > GATHER / 2 {
            ctx.update(&buf);
            buf.clear();
            ctx.update(b);
            return;
        }
        buf.extend_from_slice(b);
        if buf.len() >= GATHER {
            ctx.update(&buf);
            buf.clear();
        }
    };
    field(job_name.as_bytes());
    field(&options.shard_size.to_le_bytes());
    field(&options.max_attempts.to_le_bytes());
    field(&options.shard_timeout_ms.map_or([0xff; 8], u64::to_le_bytes));
    for t in tasks {
        field(t);
    }
    ctx.update(&buf);
    ByteBuf::from(ctx.finish().as_ref().to_vec())
}

/// Where an encoded output lives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum OutputRef {
    /// In the znode itself.
    Inline(ByteBuf),
    /// In a file of a shared data directory (written by earlier versions;
    /// still read).
    File(String),
    /// An object of the cluster's store (see [`crate::store`]), by name.
    Object(String),
}

/// One shard's committed outcome: an entry of a commit record
/// ([`RecordName`]), or the whole data of an older version's
/// `done/<bucket>/<i>-<g>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardRecord {
    /// Epoch of the committing master.
    pub epoch: u64,
    /// The attempt committed.
    pub attempt: u32,
    /// Encoded partial result of the tasks that succeeded.
    pub output: OutputRef,
    /// Tasks that failed in this attempt.
    #[serde(with = "crate::wire::core_serde::list")]
    pub failures: Vec<TaskFailure>,
}

/// The name of a commit record, `done/<bucket>/c<epoch>.<candidacy>.<seq>`:
/// the outcomes of one or more shards of a job, committed in one create
/// (an array of `[shard key, ShardRecord]` pairs). The master picks the
/// name before it writes, so a retry after a connection loss meets its
/// own record (`NodeExists`) instead of writing a second one: `candidacy`
/// is the sequence number of the master's election znode, unique to it
/// even where two candidates took the same epoch, and `seq` counts its
/// records. Recovery reads records in this order and takes each shard from
/// the first that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RecordName {
    /// Epoch of the writing master.
    pub epoch: u64,
    /// Sequence number of its election znode.
    pub candidacy: u64,
    /// Its records so far.
    pub seq: u64,
}

impl std::fmt::Display for RecordName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}.{}.{}", self.epoch, self.candidacy, self.seq)
    }
}

impl std::str::FromStr for RecordName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = s.strip_prefix('c').and_then(|rest| {
            let mut parts = rest.split('.').map(|p| p.parse::<u64>().ok());
            let name = RecordName {
                epoch: parts.next()??,
                candidacy: parts.next()??,
                seq: parts.next()??,
            };
            parts.next().is_none().then_some(name)
        });
        parsed.ok_or_else(|| format!("{s:?} is not c<epoch>.<candidacy>.<seq>"))
    }
}

/// A commit record's data from its entries, each one `[key, ShardRecord]`
/// pair already encoded: a MessagePack array header, then the entries.
pub(crate) fn join_entries(entries: &[&[u8]]) -> Vec<u8> {
    let n = entries.len();
    let mut out = Vec::with_capacity(5 + entries.iter().map(|e| e.len()).sum::<usize>());
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0xdc);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    for e in entries {
        out.extend_from_slice(e);
    }
    out
}

/// The shards a commit znode named `name` holds: a commit record's
/// entries, or the one shard of an older version's `<index>-<generation>`
/// znode. An error for garbage, or a name that is neither.
pub fn commit_entries(
    name: &str,
    data: &[u8],
) -> Result<Vec<(crate::core::ShardKey, ShardRecord)>, String> {
    if name.parse::<RecordName>().is_ok() {
        let entries: Vec<CommitEntry> = rmp_serde::from_slice(data).map_err(|e| e.to_string())?;
        return Ok(entries.into_iter().map(|e| (e.0, e.1)).collect());
    }
    let key = name
        .parse::<crate::core::ShardKey>()
        .map_err(|_| format!("{name:?} is not a commit record's name"))?;
    let record = rmp_serde::from_slice(data).map_err(|e| e.to_string())?;
    Ok(vec![(key, record)])
}

/// One entry of a commit record, as it is read: a shard and its outcome,
/// an array of two.
#[derive(Deserialize)]
struct CommitEntry(
    #[serde(with = "crate::wire::core_serde::ShardKeyDef")] crate::core::ShardKey,
    ShardRecord,
);

/// One entry of a commit record, as it is written ([`commit_entries`]
/// reads it).
#[derive(Serialize)]
pub(crate) struct CommitEntryRef<'a>(
    #[serde(with = "crate::wire::core_serde::ShardKeyDef")] pub crate::core::ShardKey,
    pub &'a ShardRecord,
);

/// Data of `jobs/<job-id>/result`, and a compact job's result in its
/// record.
///
/// Written in its [`ResultForm`]: a positional array, which the release
/// before feature levels reads (and only so), or, once the cluster's
/// feature level is [`crate::core::features::NAMED_RESULTS`], a map of
/// named fields, which can gain fields. Both are read.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(from = "ResultRecordRepr")]
pub struct ResultRecord {
    /// Epoch of the master that reduced the job.
    pub epoch: u64,
    /// Encoded `Job::Result`.
    pub output: OutputRef,
    /// Tasks that failed every attempt (bounded).
    #[serde(with = "crate::wire::core_serde::list")]
    pub failures: Vec<TaskFailure>,
    /// The job's final counts.
    #[serde(with = "crate::wire::core_serde::CountersDef")]
    pub counters: Counters,
    /// How it is written: as it was read, or as its master chose.
    #[serde(skip)]
    pub form: ResultForm,
}

/// How a [`ResultRecord`] is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResultForm {
    /// An array of four (what the release before feature levels reads).
    #[default]
    Array,
    /// A map of named fields (feature level 1 on).
    Named,
}

impl Serialize for ResultRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use crate::wire::core_serde::{Enc, EncList};
        match self.form {
            ResultForm::Array => {
                let (failures, counters) = (EncList(&self.failures), Enc(&self.counters));
                (&self.epoch, &self.output, failures, counters).serialize(serializer)
            }
            ResultForm::Named => {
                use serde::ser::SerializeStruct;
                let mut s = serializer.serialize_struct("ResultRecord", 4)?;
                s.serialize_field("epoch", &self.epoch)?;
                s.serialize_field("output", &self.output)?;
                s.serialize_field("failures", &EncList(&self.failures))?;
                s.serialize_field("counters", &Enc(&self.counters))?;
                s.end()
            }
        }
    }
}

/// A result record as stored now, as a map of named fields, or by
/// versions that kept the counts as three fields (without the total,
/// which the job record holds).
#[derive(Deserialize)]
#[serde(untagged)]
enum ResultRecordRepr {
    Named {
        epoch: u64,
        output: OutputRef,
        #[serde(with = "crate::wire::core_serde::list")]
        failures: Vec<TaskFailure>,
        #[serde(with = "crate::wire::core_serde::CountersDef")]
        counters: Counters,
    },
    Now(
        u64,
        OutputRef,
        #[serde(with = "crate::wire::core_serde::list")] Vec<TaskFailure>,
        #[serde(with = "crate::wire::core_serde::CountersDef")] Counters,
    ),
    Before(
        u64,
        OutputRef,
        #[serde(with = "crate::wire::core_serde::list")] Vec<TaskFailure>,
        u64,
        u64,
        u64,
    ),
}

impl From<ResultRecordRepr> for ResultRecord {
    fn from(r: ResultRecordRepr) -> Self {
        match r {
            ResultRecordRepr::Named {
                epoch,
                output,
                failures,
                counters,
            } => ResultRecord {
                epoch,
                output,
                failures,
                counters,
                form: ResultForm::Named,
            },
            ResultRecordRepr::Now(epoch, output, failures, counters) => ResultRecord {
                epoch,
                output,
                failures,
                counters,
                form: ResultForm::Array,
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
                    form: ResultForm::Array,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_records_of_earlier_versions_and_of_the_named_form_are_read() {
        #[derive(Serialize)]
        struct Before(
            u64,
            OutputRef,
            #[serde(with = "crate::wire::core_serde::list")] Vec<TaskFailure>,
            u64,
            u64,
            u64,
        );
        let old = Before(
            3,
            OutputRef::Inline(ByteBuf::from(vec![1])),
            Vec::new(),
            7,
            2,
            1,
        );
        let bytes = rmp_serde::to_vec(&old).unwrap();
        let r: ResultRecord = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            (
                r.epoch,
                r.counters.tasks_done,
                r.counters.tasks_failed,
                r.counters.retries
            ),
            (3, 7, 2, 1)
        );
        let now = ResultRecord {
            counters: Counters {
                tasks_total: 9,
                ..r.counters
            },
            ..r
        };
        let bytes = crate::wire::encode_named(&now).unwrap();
        assert_eq!(bytes[0], 0x94, "an array of four, as the baseline reads it");
        let again: ResultRecord = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(again, now);
        // The named form (feature level 1 on), with a field a later
        // release adds.
        #[derive(Serialize)]
        struct Named<'a> {
            epoch: u64,
            output: &'a OutputRef,
            failures: crate::wire::core_serde::EncList<'a, TaskFailure>,
            #[serde(with = "crate::wire::core_serde::CountersDef")]
            counters: Counters,
            later: &'a str,
        }
        let named = crate::wire::encode_named(&Named {
            epoch: now.epoch,
            output: &now.output,
            failures: crate::wire::core_serde::EncList(&now.failures),
            counters: now.counters,
            later: "a field this release does not know",
        })
        .unwrap();
        let read: ResultRecord = rmp_serde::from_slice(&named).unwrap();
        let named_now = ResultRecord {
            form: ResultForm::Named,
            ..now
        };
        assert_eq!(read, named_now);
        // Written again as it was read.
        let again = crate::wire::encode_named(&read).unwrap();
        assert_eq!(again[0], 0x84, "a map of four");
        assert_eq!(
            rmp_serde::from_slice::<ResultRecord>(&again).unwrap(),
            named_now
        );
    }

    #[test]
    fn commit_records_join_entries_into_one_array_and_names_sort_by_writer() {
        use crate::core::ShardKey;
        for n in [0usize, 1, 15, 16, 300, 70_000] {
            let entries: Vec<Vec<u8>> = (0..n as u32)
                .map(|i| {
                    let key = ShardKey {
                        index: i,
                        generation: i % 3,
                    };
                    let rec = ShardRecord {
                        epoch: 2,
                        attempt: 1,
                        output: OutputRef::Inline(ByteBuf::from(vec![i as u8])),
                        failures: Vec::new(),
                    };
                    rmp_serde::to_vec(&CommitEntryRef(key, &rec)).unwrap()
                })
                .collect();
            let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
            let read = commit_entries("c2.1.1", &join_entries(&refs)).unwrap();
            assert_eq!(read.len(), n);
            for (i, (key, rec)) in read.iter().enumerate() {
                assert_eq!((key.index, key.generation), (i as u32, i as u32 % 3));
                assert_eq!(rec.output, OutputRef::Inline(ByteBuf::from(vec![i as u8])));
            }
        }
        let name = RecordName {
            epoch: 7,
            candidacy: 12,
            seq: 3,
        };
        assert_eq!(name.to_string(), "c7.12.3");
        assert_eq!("c7.12.3".parse::<RecordName>(), Ok(name));
        for bad in [
            "7-0",
            "c7.12",
            "c7.12.3.4",
            "c7.x.3",
            "d7.12.3",
            "c.1.2",
            "",
        ] {
            assert!(bad.parse::<RecordName>().is_err(), "{bad} parsed");
        }
        // By epoch first, then candidacy, then the writer's count.
        let n = |e, c, s| RecordName {
            epoch: e,
            candidacy: c,
            seq: s,
        };
        let mut names = vec![n(2, 1, 0), n(1, 9, 10), n(1, 9, 2), n(1, 3, 50)];
        names.sort();
        assert_eq!(
            names,
            vec![n(1, 3, 50), n(1, 9, 2), n(1, 9, 10), n(2, 1, 0)]
        );
    }

    fn tasks(t: &[&str]) -> Vec<ByteBuf> {
        t.iter()
            .map(|s| ByteBuf::from(s.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_compact_jobs_small_result_is_kept_in_its_record_and_read_back() {
        let task = ByteBuf::from(vec![7; 10]);
        let mut record = JobRecord {
            job_name: "square".into(),
            options: JobOptions {
                shard_size: 1,
                max_attempts: 3,
                shard_timeout_ms: None,
                stream: false,
                priority: 0,
                fairness_key: None,
                not_before_ms: None,
                under: Vec::new(),
            },
            tasks_total: 1,
            batches: 0,
            status: JobStatus::Done,
            created_ms: 1,
            fetched_ms: Some(2),
            digest: Some(ByteBuf::from(vec![1; 32])),
            owner: Some("client:c".into()),
            inline: Some(vec![task.clone()]),
            result: None,
            incarnation: 5,
            shape: None,
        };
        let fail = |error: String| TaskFailure {
            index: 0,
            error,
            attempt: 1,
            retryable: false,
        };
        assert!(record.keep_result(&[0; KEPT_RESULT_BYTES - 40], &[fail("e".into())]));
        assert!(!record.keep_result(&[0; KEPT_RESULT_BYTES + 1], &[]));
        assert!(!record.keep_result(&[], &[fail("e".repeat(KEPT_RESULT_BYTES))]));
        let not_compact = JobRecord {
            inline: None,
            ..record.clone()
        };
        assert!(!not_compact.keep_result(&[1], &[]));
        // Without a result, a record reads as it did before results were
        // kept; with one, both come back.
        let plain = crate::wire::encode_named(&record).unwrap();
        assert_eq!(rmp_serde::from_slice::<JobRecord>(&plain).unwrap(), record);
        let result = ResultRecord {
            epoch: 4,
            output: OutputRef::Inline(ByteBuf::from(vec![9; 100])),
            failures: vec![fail("boom".into())],
            counters: Counters {
                tasks_total: 1,
                tasks_done: 1,
                tasks_failed: 1,
                retries: 0,
            },
            form: ResultForm::Array,
        };
        record.result = Some(result.clone());
        let bytes = crate::wire::encode_named(&record).unwrap();
        let read: JobRecord = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(read, record);
        assert_eq!(read.inline, Some(vec![task]));
        // What the collector keeps: no bytes, the same shape and counts.
        let light = record.without_payload();
        assert_eq!(light.inline, Some(Vec::new()), "still compact");
        assert!(light.is_compact());
        let kept = light.result.as_ref().unwrap();
        assert_eq!(kept.counters, result.counters);
        assert_eq!(kept.output, OutputRef::Inline(ByteBuf::new()));
        assert!(kept.failures.is_empty());
        assert_eq!(light.stored(), record.stored());
        // The 100 bytes of output are gone.
        assert!(crate::wire::encode_named(&light).unwrap().len() + 100 <= bytes.len());
    }

    /// A job record is a map of named fields: a record of an earlier
    /// version (a positional array, without an incarnation) reads with
    /// incarnation 0, and a reader that knows fewer fields (an earlier
    /// version's, here a mirror of its type) reads a record of this one.
    #[test]
    fn job_records_are_read_across_versions_both_ways() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Earlier {
            job_name: String,
            options: JobOptions,
            tasks_total: u64,
            batches: u32,
            status: JobStatus,
            created_ms: u64,
            fetched_ms: Option<u64>,
            #[serde(default)]
            digest: Option<ByteBuf>,
            #[serde(default)]
            owner: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            inline: Option<Vec<ByteBuf>>,
        }
        let earlier = Earlier {
            job_name: "square".into(),
            options: JobOptions {
                shard_size: 1,
                max_attempts: 3,
                shard_timeout_ms: Some(9),
                stream: true,
                priority: 0,
                fairness_key: None,
                not_before_ms: None,
                under: Vec::new(),
            },
            tasks_total: 1,
            batches: 0,
            status: JobStatus::Accepted,
            created_ms: 1,
            fetched_ms: None,
            digest: None,
            owner: Some("client:c".into()),
            inline: Some(vec![ByteBuf::from(vec![1, 2])]),
        };
        // Written by an earlier version: an array.
        let old = rmp_serde::to_vec(&earlier).unwrap();
        let read: JobRecord = rmp_serde::from_slice(&old).unwrap();
        assert_eq!(read.incarnation, 0);
        assert_eq!(read.owner.as_deref(), Some("client:c"));
        assert_eq!(read.inline, earlier.inline);
        assert!(read.result.is_none());
        // Written now: read by this version, and by the earlier one.
        let now = JobRecord {
            incarnation: 0x5eed,
            ..read
        };
        let bytes = crate::wire::encode_named(&now).unwrap();
        assert_eq!(rmp_serde::from_slice::<JobRecord>(&bytes).unwrap(), now);
        let by_earlier: Earlier = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(by_earlier, earlier);
    }

    #[test]
    fn digests_tell_apart_tasks_boundaries_options_and_names() {
        let o = JobOptions {
            shard_size: 1,
            max_attempts: 3,
            shard_timeout_ms: None,
            stream: false,
            priority: 0,
            fairness_key: None,
            not_before_ms: None,
            under: Vec::new(),
        };
        let d = |name: &str, o: &JobOptions, t: &[&str]| submission_digest(name, o, &tasks(t));
        let base = d("j", &o, &["ab", "c"]);
        assert_eq!(base, d("j", &o, &["ab", "c"]), "not deterministic");
        assert_eq!(base.len(), 32);
        assert_ne!(base, d("j", &o, &["a", "bc"]), "task boundaries");
        assert_ne!(base, d("k", &o, &["ab", "c"]), "job name");
        assert_ne!(base, d("j", &o, &["c", "ab"]), "task order");
        let mut o2 = o.clone();
        o2.shard_timeout_ms = Some(0);
        assert_ne!(base, d("j", &o2, &["ab", "c"]), "options");
        // The digest of the bytes as laid out: gathering does not change it
        // (jobs stored before keep matching their resubmissions).
        let big = "x".repeat(40_000);
        let many: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
        let mut refs: Vec<&str> = many.iter().map(String::as_str).collect();
        refs.insert(2500, &big);
        let mut plain = ring::digest::Context::new(&ring::digest::SHA256);
        let mut put = |b: &[u8]| {
            plain.update(&(b.len() as u64).to_le_bytes());
            plain.update(b);
        };
        put(b"j");
        put(&o.shard_size.to_le_bytes());
        put(&o.max_attempts.to_le_bytes());
        put(&[0xff; 8]);
        for t in &refs {
            put(t.as_bytes());
        }
        assert_eq!(d("j", &o, &refs).as_ref(), plain.finish().as_ref());
    }
}
