//! Golden files of the formats: every frame and every record as a
//! baseline release wrote them, committed under `framework/tests/compat/`,
//! and read by this build in the suite.
//!
//! A reader one release newer must read what the previous release wrote
//! (ARCHITECTURE.md, "Formats that evolve"). The files of a baseline are
//! never rewritten: they are what nodes of that release put on the wire
//! and in ZooKeeper. Each one decodes, with this build's types, to the
//! value this module builds for its name (a field added since takes its
//! default in both). A new baseline's files are written once, by
//! `RINGLEADER_WRITE_GOLDEN=<dir> cargo test -p ringleader --lib golden`.
#![cfg(test)]

mod baseline_ef9caa21;

use std::path::{Path, PathBuf};

use serde_bytes::ByteBuf;

use crate::coord::{
    commit_entries, decode_record, encode_record, CommitEntryRef, FairnessRecord, FeaturesRecord,
    JobRecord, JobStatus, LimitsRecord, MasterInfo, NodeInfo, OutputRef, ResultRecord, ShardRecord,
    WorkerInfo,
};
use crate::core::{Counters, ShardKey, TaskFailure};
use crate::wire::{
    self, Assignment, ClusterStatus, ErrorKind, FairnessKey, FairnessList, FromWorker, Hello,
    JobList, JobOptions, JobOutcome, JobPlanInfo, JobProgress, JobQuery, JobState, JobSummary,
    LimitList, LimitSpec, LimitStatus, Reply, Request, RunRef, ShardReport, StateCounts,
    SubmitHeader, ToWorker, WorkerStatus,
};

/// The directory of golden files.
fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat")
}

/// One value as it is stored or sent.
#[derive(Debug, PartialEq)]
enum Sample {
    Request(Request),
    Reply(Reply),
    FromWorker(FromWorker),
    ToWorker(ToWorker),
    Master(MasterInfo),
    Worker(WorkerInfo),
    Job(JobRecord),
    Result(ResultRecord),
    Commit(Vec<(ShardKey, ShardRecord)>),
    Batch(Vec<ByteBuf>),
    Node(NodeInfo),
    Features(FeaturesRecord),
    Fairness(FairnessRecord),
    Limits(LimitsRecord),
}

/// A frame's body as this build sends it.
fn frame<M: wire::Message>(m: &M) -> Vec<u8> {
    let mut buf = Vec::new();
    wire::encode_into(&mut buf, m).expect("encodes");
    buf.split_off(4)
}

impl Sample {
    fn encode(&self) -> Vec<u8> {
        match self {
            Sample::Request(f) => frame(f),
            Sample::Reply(f) => frame(f),
            Sample::FromWorker(f) => frame(f),
            Sample::ToWorker(f) => frame(f),
            Sample::Master(r) => encode_record("golden", r).expect("encodes"),
            Sample::Worker(r) => encode_record("golden", r).expect("encodes"),
            Sample::Job(r) => encode_record("golden", r).expect("encodes"),
            Sample::Result(r) => encode_record("golden", r).expect("encodes"),
            Sample::Commit(r) => {
                let entries: Vec<CommitEntryRef> =
                    r.iter().map(|(k, rec)| CommitEntryRef(*k, rec)).collect();
                encode_record("golden", &entries).expect("encodes")
            }
            Sample::Batch(r) => encode_record("golden", r).expect("encodes"),
            Sample::Node(r) => encode_record("golden", r).expect("encodes"),
            Sample::Features(r) => encode_record("golden", r).expect("encodes"),
            Sample::Fairness(r) => encode_record("golden", r).expect("encodes"),
            Sample::Limits(r) => encode_record("golden", r).expect("encodes"),
        }
    }

    /// `bytes` read as a node of the baseline `ef9caa21` reads this kind
    /// of value, and encoded again as it would.
    fn through_baseline(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        use baseline_ef9caa21 as b;
        fn via<T: serde::de::DeserializeOwned + serde::Serialize>(
            bytes: &[u8],
        ) -> Result<Vec<u8>, String> {
            let value: T = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
            Ok(b::encode(&value))
        }
        match self {
            Sample::Request(_) | Sample::Reply(_) | Sample::FromWorker(_) | Sample::ToWorker(_) => {
                via::<b::Frame>(bytes)
            }
            Sample::Master(_) => via::<b::MasterInfo>(bytes),
            Sample::Worker(_) => via::<b::WorkerInfo>(bytes),
            Sample::Job(_) => via::<b::JobRecord>(bytes),
            Sample::Result(_) => via::<b::ResultRecord>(bytes),
            Sample::Commit(_) => via::<Vec<(b::ShardKey, b::ShardRecord)>>(bytes),
            Sample::Batch(_) => via::<Vec<ByteBuf>>(bytes),
            // Kinds the baseline does not have.
            Sample::Node(_) | Sample::Features(_) | Sample::Fairness(_) | Sample::Limits(_) => {
                Err("not a kind of the baseline".into())
            }
        }
    }

    /// `bytes` read as the same kind of value as `self`.
    fn decode_like(&self, bytes: &[u8]) -> Result<Sample, String> {
        let e = |e: crate::coord::CoordError| e.to_string();
        let w = |e: wire::WireError| e.to_string();
        Ok(match self {
            Sample::Request(_) => Sample::Request(wire::decode_frame(bytes).map_err(w)?),
            Sample::Reply(_) => Sample::Reply(wire::decode_frame(bytes).map_err(w)?),
            Sample::FromWorker(_) => Sample::FromWorker(wire::decode_frame(bytes).map_err(w)?),
            Sample::ToWorker(_) => Sample::ToWorker(wire::decode_frame(bytes).map_err(w)?),
            Sample::Master(_) => Sample::Master(decode_record("golden", bytes).map_err(e)?),
            Sample::Worker(_) => Sample::Worker(decode_record("golden", bytes).map_err(e)?),
            Sample::Job(_) => Sample::Job(decode_record("golden", bytes).map_err(e)?),
            Sample::Result(_) => Sample::Result(decode_record("golden", bytes).map_err(e)?),
            Sample::Commit(_) => Sample::Commit(commit_entries("c1.1.1", bytes)?),
            Sample::Batch(_) => Sample::Batch(decode_record("golden", bytes).map_err(e)?),
            Sample::Node(_) => Sample::Node(decode_record("golden", bytes).map_err(e)?),
            Sample::Features(_) => Sample::Features(decode_record("golden", bytes).map_err(e)?),
            Sample::Fairness(_) => Sample::Fairness(decode_record("golden", bytes).map_err(e)?),
            Sample::Limits(_) => Sample::Limits(decode_record("golden", bytes).map_err(e)?),
        })
    }
}

fn limit_spec() -> LimitSpec {
    LimitSpec {
        max_running: Some(4),
        rate: Some(200),
        per_ms: Some(1000),
        burst: Some(20),
    }
}

fn limit_status() -> LimitStatus {
    LimitStatus {
        key: "payments-api".into(),
        limit: Some(limit_spec()),
        running: 4,
        tokens: Some(3),
        waiting_jobs: 2,
        waiting_shards: 17,
        throttled: 40,
    }
}

fn key(index: u32, generation: u32) -> ShardKey {
    ShardKey { index, generation }
}

fn failure() -> TaskFailure {
    TaskFailure {
        index: 7,
        error: "boom".into(),
        attempt: 2,
        retryable: true,
    }
}

fn counters() -> Counters {
    Counters {
        tasks_total: 10,
        tasks_done: 6,
        tasks_failed: 1,
        retries: 2,
    }
}

fn options() -> JobOptions {
    JobOptions {
        shard_size: 2,
        max_attempts: 3,
        shard_timeout_ms: Some(5_000),
        stream: true,
        priority: 0,
        fairness_key: None,
        not_before_ms: None,
        under: Vec::new(),
    }
}

fn progress(state: JobState) -> JobProgress {
    JobProgress {
        job_id: "job-1".into(),
        job_name: "word-count".into(),
        state,
        counters: counters(),
        not_before_ms: None,
    }
}

fn bytes(b: &[u8]) -> ByteBuf {
    ByteBuf::from(b.to_vec())
}

fn job_record() -> JobRecord {
    JobRecord {
        job_name: "word-count".into(),
        options: options(),
        tasks_total: 10,
        batches: 2,
        status: JobStatus::Accepted,
        created_ms: 1_765_000_000_000,
        fetched_ms: None,
        digest: Some(bytes(&[0xab; 32])),
        owner: Some("client:alice".into()),
        inline: None,
        result: None,
        incarnation: 0x5eed,
        shape: None,
    }
}

fn result_record() -> ResultRecord {
    ResultRecord {
        epoch: 4,
        output: OutputRef::Inline(bytes(&[0x91, 0x01])),
        failures: vec![failure()],
        counters: counters(),
        form: crate::coord::ResultForm::Array,
    }
}

/// Every frame variant and every record, by file name.
fn samples() -> Vec<(&'static str, Sample)> {
    use Sample as S;
    let fw = S::FromWorker;
    let tw = S::ToWorker;
    let rq = S::Request;
    let rp = S::Reply;
    vec![
        (
            "frame-worker-hello",
            fw(FromWorker::WorkerHello(Hello {
                // The baseline's one version.
                version: 6,
                node_id: "node-a".into(),
                slots: 4,
                jobs: vec!["word-count".into(), "square".into()],
                epoch: 3,
                store: "s3://bucket/prefix".into(),
                store_mark: "mark-1".into(),
                newest: None,
                build: String::new(),
                shapes: Default::default(),
            })),
        ),
        (
            "frame-welcome",
            tw(ToWorker::Welcome {
                epoch: 3,
                version: None,
            }),
        ),
        (
            "frame-assign",
            tw(ToWorker::Assign(Assignment {
                epoch: 3,
                job_id: "job-1".into(),
                incarnation: 0x5eed,
                job_name: "word-count".into(),
                shard: key(1, 2),
                attempt: 1,
                tasks: vec![(2, bytes(b"\xa3abc")), (3, bytes(b"\xa3def"))],
                ack_first: true,
                priority: 0,
            })),
        ),
        (
            "frame-started",
            fw(FromWorker::Started {
                epoch: 3,
                job_id: "job-1".into(),
                incarnation: 0x5eed,
                shard: key(1, 2),
                attempt: 1,
            }),
        ),
        (
            "frame-start-ack",
            tw(ToWorker::StartAck(RunRef {
                job_id: "job-1".into(),
                incarnation: 0x5eed,
                shard: key(1, 2),
                attempt: 1,
            })),
        ),
        (
            "frame-start-refused",
            tw(ToWorker::StartRefused(RunRef {
                job_id: "job-1".into(),
                incarnation: 0x5eed,
                shard: key(1, 2),
                attempt: 1,
            })),
        ),
        (
            "frame-unstarted",
            fw(FromWorker::Unstarted(RunRef {
                job_id: "job-1".into(),
                incarnation: 0x5eed,
                shard: key(1, 2),
                attempt: 1,
            })),
        ),
        (
            "frame-report",
            fw(FromWorker::Report(ShardReport {
                epoch: 3,
                job_id: "job-1".into(),
                incarnation: 0x5eed,
                shard: key(1, 2),
                attempt: 1,
                output: bytes(&[0x81, 0xa1, b'a', 0x01]),
                failures: vec![failure()],
                output_object: None,
            })),
        ),
        (
            "frame-report-object",
            fw(FromWorker::Report(ShardReport {
                epoch: 3,
                job_id: "job-1".into(),
                incarnation: 0x5eed,
                shard: key(1, 2),
                attempt: 1,
                output: ByteBuf::new(),
                failures: Vec::new(),
                output_object: Some("outputs/job-1/1-2.1".into()),
            })),
        ),
        ("frame-draining", fw(FromWorker::Draining)),
        ("frame-drained", fw(FromWorker::Drained)),
        ("frame-drain-ack", tw(ToWorker::DrainAck)),
        (
            "frame-submit",
            rq(Request::Submit(SubmitHeader {
                job_id: "job-1".into(),
                job_name: "word-count".into(),
                options: options(),
                task_count: 10,
                shape: None,
            })),
        ),
        (
            "frame-submit-chunk",
            rq(Request::SubmitChunk {
                tasks: vec![bytes(b"\xa3abc"), bytes(b"\xa3def")],
            }),
        ),
        (
            "frame-accepted",
            rp(Reply::Accepted {
                job_id: "job-1".into(),
                existing: true,
            }),
        ),
        (
            "frame-get-job",
            rq(Request::GetJob {
                job_id: "job-1".into(),
            }),
        ),
        ("frame-job", rp(Reply::Job(progress(JobState::Running)))),
        ("frame-get-status", rq(Request::GetStatus)),
        (
            "frame-status",
            rp(Reply::Status(ClusterStatus {
                queued: Vec::new(),
                fairness: Vec::new(),
                limits: Vec::new(),
                oldest_waiting: None,
                leader: "node-a".into(),
                epoch: 3,
                workers: vec![WorkerStatus {
                    node_id: "node-b".into(),
                    addr: "10.0.0.2:7000".into(),
                    slots: 4,
                    in_flight: 2,
                    connected: true,
                    last_seen_ms: Some(120),
                    build: None,
                    protocol: None,
                    other_types: Vec::new(),
                }],
                jobs: vec![progress(JobState::Running)],
                build: None,
                feature_level: None,
            })),
        ),
        (
            "frame-fetch-result",
            rq(Request::FetchResult {
                job_id: "job-1".into(),
            }),
        ),
        (
            "frame-outcome",
            rp(Reply::Outcome(JobOutcome {
                progress: progress(JobState::Done),
                result: bytes(&[0x81, 0xa1, b'a', 0x01]),
                failures: vec![failure()],
            })),
        ),
        (
            "frame-cancel",
            rq(Request::Cancel {
                job_id: "job-1".into(),
            }),
        ),
        ("frame-ok", rp(Reply::Ok)),
        ("frame-not-master", rp(Reply::NotMaster)),
        (
            "frame-error",
            rp(Reply::error(ErrorKind::NoSuchJob, "no job \"job-9\"")),
        ),
        (
            "frame-watch-job",
            rq(Request::WatchJob {
                job_id: "job-1".into(),
                fetch: false,
                unmarked: true,
            }),
        ),
        (
            "frame-plan-job",
            rq(Request::PlanJob {
                job_name: "word-count".into(),
                task_count: 10,
                shard_size: 0,
                shape: Some("shape-of-word-count".into()),
            }),
        ),
        (
            "frame-planned",
            rp(Reply::Planned(JobPlanInfo {
                shard_size: 2,
                shards: 5,
                workers: 3,
                slots: 12,
                registered: 4,
            })),
        ),
        (
            "frame-list-jobs",
            rq(Request::ListJobs(JobQuery {
                states: vec![JobState::Running, JobState::Done],
                job_name: Some("word-count".into()),
                owner: Some("client:alice".into()),
                since_ms: Some(1_765_000_000_000),
                last: 20,
                scheduled: None,
                priority: None,
                fairness_key: None,
            })),
        ),
        (
            "frame-jobs",
            rp(Reply::Jobs(JobList {
                jobs: vec![JobSummary {
                    job_id: "job-1".into(),
                    job_name: "word-count".into(),
                    state: JobState::Running,
                    tasks_total: 10,
                    counters: Some(counters()),
                    created_ms: 1_765_000_000_000,
                    fetched: false,
                    note: Some("no worker runs word-count".into()),
                    owner: Some("client:alice".into()),
                    not_before_ms: None,
                    priority: 0,
                    fairness_key: None,
                }],
                matched: 1,
                counts: StateCounts {
                    running: 1,
                    done: 2,
                    cancelled: 3,
                    scheduled: 0,
                },
            })),
        ),
        (
            "frame-stream-job",
            rq(Request::StreamJob {
                job_id: "job-1".into(),
                seen: vec![(0, 3, 0), (5, 1, 1)],
            }),
        ),
        (
            "frame-partial",
            rp(Reply::Partial {
                shard: key(1, 2),
                output: bytes(&[0x81, 0xa1, b'a', 0x01]),
            }),
        ),
        (
            "frame-stop-run",
            tw(ToWorker::StopRun(RunRef {
                job_id: "job-1".into(),
                incarnation: 0x5eed,
                shard: key(1, 2),
                attempt: 1,
            })),
        ),
        (
            "frame-fetched",
            rq(Request::Fetched {
                job_id: "job-1".into(),
            }),
        ),
        (
            "frame-set-fairness",
            rq(Request::SetFairness {
                key: "client:alice".into(),
                weight: 3,
            }),
        ),
        ("frame-list-fairness", rq(Request::ListFairness)),
        (
            "frame-fairness",
            rp(Reply::Fairness(FairnessList {
                keys: vec![FairnessKey {
                    key: "client:alice".into(),
                    weight: 3,
                    queued: 12,
                }],
            })),
        ),
        (
            "frame-error-forbidden",
            rp(Reply::error(
                ErrorKind::Forbidden,
                "an admin's certificate is needed",
            )),
        ),
        (
            "record-fairness",
            S::Fairness(FairnessRecord {
                weights: [("client:alice".to_string(), 3), ("tenant-b".to_string(), 2)].into(),
            }),
        ),
        (
            "frame-set-limit",
            rq(Request::SetLimit {
                key: "payments-api".into(),
                limit: Some(limit_spec()),
            }),
        ),
        (
            "frame-delete-limit",
            rq(Request::SetLimit {
                key: "payments-api".into(),
                limit: None,
            }),
        ),
        ("frame-list-limits", rq(Request::ListLimits)),
        (
            "frame-limits",
            rp(Reply::Limits(LimitList {
                limits: vec![limit_status()],
            })),
        ),
        (
            "record-limits",
            S::Limits(LimitsRecord {
                limits: [("payments-api".to_string(), limit_spec())].into(),
            }),
        ),
        (
            "record-master",
            S::Master(MasterInfo {
                node_id: "node-a".into(),
                addr: "10.0.0.1:7000".into(),
                epoch: 3,
                session_timeout_ms: 4_000,
                store: "s3://bucket/prefix".into(),
                protocol: None,
                build: String::new(),
            }),
        ),
        (
            "record-worker",
            S::Worker(WorkerInfo {
                addr: "10.0.0.2:7000".into(),
                slots: 4,
                jobs: vec!["word-count".into()],
                build: String::new(),
                protocol: None,
                shapes: Default::default(),
            }),
        ),
        ("record-job", S::Job(job_record())),
        (
            "record-job-compact-done",
            S::Job(JobRecord {
                status: JobStatus::Done,
                fetched_ms: Some(1_765_000_001_000),
                batches: 0,
                inline: Some(vec![bytes(b"\xa3abc")]),
                result: Some(result_record()),
                ..job_record()
            }),
        ),
        ("record-result", S::Result(result_record())),
        (
            "record-result-named",
            S::Result(ResultRecord {
                form: crate::coord::ResultForm::Named,
                ..result_record()
            }),
        ),
        (
            "record-node",
            S::Node(NodeInfo {
                role: "all".into(),
                build: "probe (ringleader 0.1.0 commit 1234567)".into(),
                protocol: [6, 6],
                features: 1,
            }),
        ),
        (
            "record-features",
            S::Features(FeaturesRecord {
                level: 1,
                raised_ms: 1_765_000_000_000,
                by: "probe (ringleader 0.1.0 commit 1234567)".into(),
            }),
        ),
        (
            "record-commit",
            S::Commit(vec![
                (
                    key(0, 0),
                    ShardRecord {
                        epoch: 3,
                        attempt: 1,
                        output: OutputRef::Inline(bytes(&[0x81, 0xa1, b'a', 0x01])),
                        failures: vec![failure()],
                    },
                ),
                (
                    key(1, 2),
                    ShardRecord {
                        epoch: 3,
                        attempt: 2,
                        output: OutputRef::Object("outputs/job-1/1-2.2".into()),
                        failures: Vec::new(),
                    },
                ),
            ]),
        ),
        (
            "record-batch",
            S::Batch(vec![bytes(b"\xa3abc"), bytes(b"\xa3def")]),
        ),
    ]
}

/// Samples with the fields added since the baseline `ef9caa21` set, each
/// with the name of the baseline's file it must read as (the baseline
/// skips what it does not know).
fn extended_samples() -> Vec<(&'static str, Sample)> {
    let mut out = Vec::new();
    for (name, sample) in samples() {
        let extended = match sample {
            Sample::FromWorker(FromWorker::WorkerHello(mut hello)) => {
                hello.newest = Some(wire::PROTOCOL_VERSION + 1);
                hello.build = "probe 2.0.0 (ringleader 0.2.0 commit 1234567)".into();
                hello
                    .shapes
                    .insert("word-count".into(), 0x1234_5678_9abc_def0);
                Sample::FromWorker(FromWorker::WorkerHello(hello))
            }
            Sample::ToWorker(ToWorker::Welcome { epoch, .. }) => {
                Sample::ToWorker(ToWorker::Welcome {
                    epoch,
                    version: Some(wire::PROTOCOL_VERSION),
                })
            }
            Sample::Reply(Reply::Status(mut status)) => {
                status.build = Some("probe".into());
                status.feature_level = Some(1);
                status.queued = vec![wire::QueuedAt {
                    priority: 9,
                    shards: 3,
                }];
                status.fairness = vec![FairnessKey {
                    key: "client:alice".into(),
                    weight: 3,
                    queued: 3,
                }];
                status.limits = vec![limit_status()];
                status.oldest_waiting = Some(wire::WaitingJob {
                    job_id: "job-1".into(),
                    waiting_ms: 12_000,
                });
                for w in &mut status.workers {
                    w.build = Some("probe".into());
                    w.protocol = Some(wire::PROTOCOL_VERSION);
                    w.other_types = vec!["square".into()];
                }
                Sample::Reply(Reply::Status(status))
            }
            Sample::Master(info) => Sample::Master(MasterInfo {
                protocol: Some([6, 7]),
                build: "probe".into(),
                ..info
            }),
            Sample::Worker(info) => Sample::Worker(WorkerInfo {
                protocol: Some([6, 7]),
                build: "probe".into(),
                shapes: [("word-count".to_string(), 7)].into(),
                ..info
            }),
            Sample::Request(Request::Submit(header)) => {
                Sample::Request(Request::Submit(SubmitHeader {
                    shape: Some(0x1234_5678_9abc_def0),
                    options: JobOptions {
                        priority: 7,
                        fairness_key: Some("tenant-a".into()),
                        not_before_ms: Some(1_765_000_060_000),
                        under: vec!["payments-api".into()],
                        ..header.options
                    },
                    ..header
                }))
            }
            Sample::Job(record) => Sample::Job(JobRecord {
                shape: Some(0x1234_5678_9abc_def0),
                options: JobOptions {
                    priority: 7,
                    fairness_key: Some("tenant-a".into()),
                    not_before_ms: Some(1_765_000_060_000),
                    under: vec!["payments-api".into()],
                    ..record.options
                },
                ..record
            }),
            Sample::ToWorker(ToWorker::Assign(a)) => {
                Sample::ToWorker(ToWorker::Assign(Assignment { priority: 9, ..a }))
            }
            Sample::Request(Request::ListJobs(query)) => {
                Sample::Request(Request::ListJobs(JobQuery {
                    scheduled: Some(true),
                    priority: Some(7),
                    fairness_key: Some("tenant-a".into()),
                    ..query
                }))
            }
            Sample::Reply(Reply::Jobs(mut list)) => {
                list.counts.scheduled = 1;
                for j in &mut list.jobs {
                    j.not_before_ms = Some(1_765_000_060_000);
                    j.priority = 7;
                    j.fairness_key = Some("tenant-a".into());
                }
                Sample::Reply(Reply::Jobs(list))
            }
            Sample::Reply(Reply::Job(p)) => Sample::Reply(Reply::Job(JobProgress {
                not_before_ms: Some(1_765_000_060_000),
                ..p
            })),
            _ => continue,
        };
        out.push((name, extended));
    }
    out
}

/// The baselines whose files this build must read: each directory under
/// `tests/compat/`.
fn baselines() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(compat_dir())
        .expect("tests/compat exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Writes this build's encodings as a new baseline's files (run once per
/// baseline, never over an existing directory).
#[test]
fn write_golden_files_when_asked() {
    let Ok(name) = std::env::var("RINGLEADER_WRITE_GOLDEN") else {
        return;
    };
    let dir = compat_dir().join(name);
    assert!(
        !dir.exists(),
        "{} exists: a baseline's files are never rewritten",
        dir.display()
    );
    std::fs::create_dir_all(&dir).expect("creates");
    for (name, sample) in samples() {
        std::fs::write(dir.join(format!("{name}.msgpack")), sample.encode()).expect("writes");
    }
}

#[test]
fn every_frame_and_record_a_baseline_wrote_is_read_as_it_meant() {
    let baselines = baselines();
    assert!(!baselines.is_empty(), "no baseline under tests/compat");
    for dir in baselines {
        for (name, sample) in samples() {
            let path = dir.join(format!("{name}.msgpack"));
            let Ok(bytes) = std::fs::read(&path) else {
                // A sample added after this baseline.
                continue;
            };
            let read = sample
                .decode_like(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(read, sample, "{}", path.display());
        }
    }
}

/// Every golden file of a baseline has a sample here: none is skipped
/// because its name changed.
#[test]
fn every_golden_file_is_checked() {
    let names: Vec<String> = samples()
        .into_iter()
        .map(|(n, _)| format!("{n}.msgpack"))
        .collect();
    let mut seen = 0;
    for dir in baselines() {
        for entry in std::fs::read_dir(&dir).expect("reads") {
            let file = entry.expect("entry").file_name();
            let file = file.to_string_lossy();
            assert!(
                names.iter().any(|n| *n == file),
                "{}/{file} has no sample",
                dir.display()
            );
            seen += 1;
        }
    }
    assert!(seen > 0, "no golden file found");
}

/// What this build writes, a node of the baseline reads as it meant: each
/// sample, encoded now, read with the baseline's own types and encoded
/// again as the baseline does, is byte for byte the baseline's file.
#[test]
fn every_frame_and_record_this_build_writes_is_read_by_the_baseline() {
    let dir = compat_dir().join("ef9caa21");
    let mut checked = 0;
    let extended = extended_samples();
    assert_eq!(
        extended.len(),
        12,
        "every value with a field added is extended"
    );
    for (name, sample) in samples().into_iter().chain(extended) {
        let path = dir.join(format!("{name}.msgpack"));
        let Ok(golden) = std::fs::read(&path) else {
            continue;
        };
        let now = sample.encode();
        let again = sample
            .through_baseline(&now)
            .unwrap_or_else(|e| panic!("{name}: the baseline cannot read it: {e}"));
        assert_eq!(again, golden, "{name}: the baseline reads it otherwise");
        checked += 1;
    }
    assert!(checked >= 45, "only {checked} samples checked");
}
