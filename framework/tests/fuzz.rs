#![allow(clippy::unwrap_used)]
//! The fuzz targets of `ringleader::fuzz`, run in the suite over their
//! seed corpus (`fuzz/seeds/`, replayed whole), valid encodings, and
//! mutations of both (bit flips, byte
//! changes, insertions, deletions, truncations, splices, length prefixes
//! announcing more or less than follows) and random bytes: a bounded,
//! deterministic run on stable Rust. Longer runs under libFuzzer:
//! `fuzz/` (see the README). A panic fails the test with the input.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringleader::coord::{
    JobRecord, JobStatus, MasterInfo, OutputRef, ResultRecord, ShardRecord, WorkerInfo,
};
use ringleader::core::{Counters, ShardKey, TaskFailure};
use ringleader::transport::tls::Role;
use ringleader::wire::{
    self, Assignment, FromWorker, Hello, JobOptions, Reply, Request, RunRef, ShardReport,
    SubmitHeader, ToWorker,
};
use serde_bytes::ByteBuf;

/// Mutations per target, and the wall-clock bound of the whole run.
const ROUNDS: usize = 20_000;
const BUDGET: Duration = Duration::from_secs(60);

/// Frames of every conversation, each with its length prefix.
fn framed(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

fn body(frame: &[u8]) -> Vec<u8> {
    frame[4..].to_vec()
}

/// One frame with its prefix.
fn prefixed<M: wire::Message>(m: M) -> Vec<u8> {
    let mut buf = Vec::new();
    wire::encode_into(&mut buf, &m).unwrap();
    buf
}

fn options() -> JobOptions {
    JobOptions {
        shard_size: 3,
        max_attempts: 2,
        shard_timeout_ms: Some(1000),
        stream: true,
        priority: 0,
        fairness_key: None,
        not_before_ms: None,
        under: Vec::new(),
    }
}

fn failure() -> TaskFailure {
    TaskFailure {
        index: 7,
        error: "boom".into(),
        attempt: 1,
        retryable: true,
    }
}

fn key() -> ShardKey {
    ShardKey {
        index: 4,
        generation: 1,
    }
}

fn frames() -> Vec<Vec<u8>> {
    vec![
        prefixed(FromWorker::WorkerHello(Hello {
            version: wire::PROTOCOL_MIN,
            newest: Some(wire::PROTOCOL_VERSION),
            build: "probe (ringleader 0.1.0 commit 1234567)".into(),
            shapes: [("probe".to_string(), 0x0123_4567_89ab_cdef)].into(),
            node_id: "n1".into(),
            slots: 2,
            jobs: vec!["wordcount".into()],
            epoch: 3,
            store: "file:///tmp/store".into(),
            store_mark: "0123abcd".into(),
        })),
        prefixed(ToWorker::Assign(Assignment {
            epoch: 3,
            job_id: "j".into(),
            incarnation: 0xabc,
            job_name: "probe".into(),
            shard: key(),
            attempt: 1,
            tasks: vec![
                (0, ByteBuf::from(vec![1, 2, 3])),
                (1, ByteBuf::from(vec![4])),
            ],
            ack_first: true,
            priority: 3,
        })),
        prefixed(FromWorker::Report(ShardReport {
            epoch: 3,
            job_id: "j".into(),
            incarnation: 0xabc,
            shard: key(),
            attempt: 1,
            output: ByteBuf::from(vec![9; 20]),
            failures: vec![failure()],
            output_object: Some("jobs/j/4-1.e3.a1.x.out".into()),
        })),
        prefixed(Request::Submit(SubmitHeader {
            job_id: "j".into(),
            job_name: "probe".into(),
            options: options(),
            task_count: 2,
            shape: Some(0x0123_4567_89ab_cdef),
        })),
        prefixed(Request::SubmitChunk {
            tasks: vec![ByteBuf::from(vec![1; 5]), ByteBuf::from(vec![])],
        }),
        prefixed(Request::StreamJob {
            job_id: "j".into(),
            seen: vec![(0, 3, 0), (5, 2, 1)],
        }),
        prefixed(Request::GetJob { job_id: "j".into() }),
        prefixed(Reply::Error {
            kind: ringleader::wire::ErrorKind::NoSuchJob,
            message: "no".into(),
        }),
        prefixed(ToWorker::DrainAck),
        prefixed(ToWorker::StopRun(RunRef {
            job_id: "j".into(),
            incarnation: 0xabc,
            shard: key(),
            attempt: 2,
        })),
    ]
}

fn records() -> Vec<Vec<u8>> {
    let enc = |v: &dyn erased::Encode| v.encode();
    vec![
        enc(&JobRecord {
            job_name: "probe".into(),
            options: options(),
            tasks_total: 10,
            batches: 1,
            status: JobStatus::Accepted,
            created_ms: 5,
            fetched_ms: Some(6),
            digest: Some(ByteBuf::from(vec![0; 32])),
            owner: Some("client:alice".into()),
            inline: None,
            result: None,
            incarnation: 0xabc,
            shape: Some(0x0123_4567_89ab_cdef),
        }),
        // A compact job, done, with its result kept in its record.
        enc(&JobRecord {
            job_name: "probe".into(),
            options: options(),
            tasks_total: 1,
            batches: 0,
            status: JobStatus::Done,
            created_ms: 5,
            fetched_ms: None,
            digest: Some(ByteBuf::from(vec![0; 32])),
            owner: Some("client:alice".into()),
            inline: Some(vec![ByteBuf::from(vec![3; 4])]),
            result: Some(ResultRecord {
                epoch: 2,
                output: OutputRef::Inline(ByteBuf::from(vec![9; 3])),
                counters: Counters::default(),
                failures: vec![failure()],
                form: ringleader::coord::ResultForm::Array,
            }),
            incarnation: 7,
            shape: None,
        }),
        enc(&ShardRecord {
            epoch: 2,
            attempt: 1,
            output: OutputRef::Inline(ByteBuf::from(vec![1, 2])),
            failures: vec![failure()],
        }),
        enc(&ResultRecord {
            epoch: 2,
            output: OutputRef::Object("results/j/result.e2.x.out".into()),
            counters: Counters::default(),
            failures: vec![failure()],
            form: ringleader::coord::ResultForm::Named,
        }),
        enc(&MasterInfo {
            node_id: "n1".into(),
            addr: "10.0.0.1:7470".into(),
            epoch: 4,
            session_timeout_ms: 2000,
            store: "s3://b/p".into(),
            protocol: Some([6, 6]),
            build: "probe (ringleader 0.1.0 commit 1234567)".into(),
        }),
        enc(&WorkerInfo {
            addr: "10.0.0.2:7470".into(),
            slots: 4,
            jobs: vec!["probe".into()],
            build: "probe (ringleader 0.1.0 commit 1234567)".into(),
            protocol: Some([6, 6]),
            shapes: [("probe".to_string(), 0x0123_4567_89ab_cdef)].into(),
        }),
    ]
}

/// Encoding through `wire::encode_named` (the records' own encoding), behind
/// one object-safe trait so that the corpus is one list.
mod erased {
    pub trait Encode {
        fn encode(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            ringleader::wire::encode_named(self).unwrap()
        }
    }
}

fn certificate() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ringleader::pki::make_ca(&ca).unwrap();
    ringleader::pki::issue_to(&ca, Role::Node, "n1", &dir.path().join("n1")).unwrap();
    let pem = std::fs::read(dir.path().join("n1/node.pem")).unwrap();
    let der = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    der
}

/// One mutation of `input` (possibly spliced with `other`).
fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let at = |rng: &mut StdRng, v: &Vec<u8>| rng.gen_range(0..=v.len());
        match rng.gen_range(0..8) {
            0 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] = [0x00, 0xff, 0x7f, 0x80, 0xc1, 0xdc, 0xdd, 0xce, 0xcf][rng.gen_range(0..9)];
            }
            2 => {
                let i = at(rng, &v);
                let n = rng.gen_range(1..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                v.splice(i..i, bytes);
            }
            3 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                let j = rng.gen_range(i..=v.len().min(i + 16));
                v.drain(i..j);
            }
            4 => v.truncate(at(rng, &v)),
            5 if !other.is_empty() => {
                let i = at(rng, &v);
                let j = rng.gen_range(0..other.len());
                v.truncate(i);
                v.extend_from_slice(&other[j..]);
            }
            6 => {
                // A length (a frame prefix, or a MessagePack array or
                // string header) announcing anything.
                let i = at(rng, &v);
                let n: u32 =
                    [0, 1, u32::MAX, 1 << 20, (1 << 20) + 1, rng.gen()][rng.gen_range(0..6)];
                v.splice(i..i, n.to_be_bytes());
            }
            _ => {
                let i = at(rng, &v);
                v.insert(i, rng.gen());
            }
        }
    }
    v
}

/// A target's seed corpus in the repository (`fuzz/seeds/<name>`: what
/// libFuzzer's long runs found, minimized), in a stable order.
fn seeds(name: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// Runs `target` over the corpus, its mutations and random bytes.
fn run(
    name: &str,
    target: ringleader::fuzz::Target,
    corpus: &[Vec<u8>],
    seed: u64,
    deadline: Instant,
) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut runs = 0;
    for input in corpus {
        target(input);
        runs += 1;
    }
    for round in 0..ROUNDS {
        if Instant::now() > deadline {
            break;
        }
        let input = if round % 10 == 0 {
            let n = rng.gen_range(0..64);
            (0..n).map(|_| rng.gen()).collect()
        } else {
            let a = &corpus[rng.gen_range(0..corpus.len())];
            let b = &corpus[rng.gen_range(0..corpus.len())];
            mutate(&mut rng, a, b)
        };
        let outcome = std::panic::catch_unwind(|| target(&input));
        assert!(
            outcome.is_ok(),
            "fuzz target {name} panicked on {} bytes: {input:02x?}",
            input.len()
        );
        runs += 1;
    }
    runs
}

#[test]
fn every_fuzz_target_survives_mutated_and_random_input() {
    let deadline = Instant::now() + BUDGET;
    let bodies: Vec<Vec<u8>> = frames().iter().map(|f| body(f)).collect();
    let stream = vec![framed(&frames()), framed(&frames()[..3])];
    let runs = wire::encode("runs", &vec![(0u32, 3u32, 0u32), (7, u32::MAX, 1)]).unwrap();
    let text = |s: &str| s.as_bytes().to_vec();
    let corpora: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("frame", bodies),
        ("frame_stream", stream),
        ("records", records()),
        (
            "certificate",
            vec![certificate(), text("urn:ringleader:node:n1")],
        ),
        (
            "connect_string",
            vec![text("zk1:2181,zk2:2181/chroot"), text("[::1]:2181")],
        ),
        ("shard_runs", vec![runs.clone()]),
        (
            "first_frames",
            vec![framed(&frames()), framed(&frames()[..1])],
        ),
    ];
    let mut total = 0;
    for (seed, (name, target)) in ringleader::fuzz::TARGETS.iter().enumerate() {
        let mut corpus = corpora
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no corpus for target {name}"))
            .1
            .clone();
        let kept = seeds(name);
        assert!(!kept.is_empty(), "no seed corpus in fuzz/seeds/{name}");
        corpus.extend(kept);
        let n = run(name, *target, &corpus, seed as u64, deadline);
        assert!(n > corpus.len(), "{name}: no mutation ran");
        total += n;
    }
    eprintln!(
        "{total} inputs over {} targets",
        ringleader::fuzz::TARGETS.len()
    );
}
