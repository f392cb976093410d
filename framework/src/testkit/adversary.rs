//! The adversary of the holes issue (29): a client with an ordinary
//! certificate whose streams each carry the worst first frame of a
//! request type a client may send. Used by `workers/probe/tests/adversary.rs`
//! (one round of 1,024 streams, memory bound) and by `cluster-bench --only
//! adversary` (`bench-adversary`, a process of its own on a host of its
//! own, keeping 1,024 streams open for a minute while an honest client's
//! latency is measured).

use std::time::{Duration, Instant};

use crate::transport::{Connection, FramedStream, TransportError};
use crate::wire::{self, JobOptions, Reply, Request, SubmitHeader, WireError};

/// Streams one connection may hold open (quinn's limit in `transport`).
pub const STREAMS: usize = 1024;

/// Just under the 256 KiB a stream's first frame may be.
pub const NEAR_LIMIT: usize = 250_000;

/// The `i`-th stream's frames: a job id, a type shape, runs of seen
/// shards, each just under the first-frame limit; a submission that claims
/// every task, or (every 256th, from the 4th) one that sends four 4 MiB
/// chunks.
pub fn worst_request(i: usize) -> Vec<Request> {
    match i % 4 {
        0 => vec![Request::GetJob {
            job_id: "j".repeat(NEAR_LIMIT),
        }],
        1 => vec![Request::PlanJob {
            job_name: "probe".into(),
            task_count: u64::MAX,
            shard_size: 0,
            shape: Some("s".repeat(NEAR_LIMIT)),
        }],
        2 => vec![Request::StreamJob {
            job_id: format!("nope-{i}"),
            seen: (0..30_000u32).map(|k| (2 * k, 1, 0)).collect(),
        }],
        _ => {
            let chunks = i % 256 == 3;
            let mut frames = vec![Request::Submit(SubmitHeader {
                job_id: format!("flood-{i}"),
                job_name: "probe".into(),
                options: JobOptions {
                    shard_size: 1,
                    max_attempts: 1,
                    shard_timeout_ms: None,
                    stream: false,
                    priority: 0,
                    fairness_key: None,
                    not_before_ms: None,
                    under: Vec::new(),
                },
                task_count: if chunks { 4 } else { u64::MAX },
                shape: None,
            })];
            if chunks {
                for _ in 0..4 {
                    frames.push(Request::SubmitChunk {
                        tasks: vec![serde_bytes::ByteBuf::from(vec![7u8; 4 << 20])],
                    });
                }
            }
            frames
        }
    }
}

/// [`worst_request`], encoded (made before they are sent: a connection's
/// driver must not wait for encoding).
pub fn encoded(i: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for f in worst_request(i) {
        wire::encode_into(&mut bytes, &f).expect("a frame encodes");
    }
    bytes
}

/// Sends `bytes` on a new stream of `conn` and reads the answer (as
/// `FramedStream::request`, with the frames encoded): `None` if none came
/// within `timeout`.
pub async fn ask(
    conn: &Connection,
    bytes: &[u8],
    timeout: Duration,
) -> Option<Result<Reply, TransportError>> {
    let ask = async {
        let mut s = FramedStream::open(conn, 1 << 20).await?;
        if s.write_encoded(bytes).await.is_err() {
            // Refused while sending: the answer says why.
            return match tokio::time::timeout(Duration::from_secs(5), s.recv()).await {
                Ok(r) => r,
                Err(_) => Err(WireError::Closed.into()),
            };
        }
        s.recv().await
    };
    tokio::time::timeout(timeout, ask).await.ok()
}

/// What a flood's streams came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flooded {
    /// Streams sent.
    pub streams: u64,
    /// Answered with an error frame (a refusal).
    pub refused: u64,
    /// Of those, refused for the connection's budget.
    pub over_budget: u64,
    /// Answered otherwise (a reply frame).
    pub answered: u64,
    /// Ended by a transport error (a stream or the connection closed).
    pub closed: u64,
    /// Not answered within 10 s.
    pub timed_out: u64,
}

impl std::ops::AddAssign for Flooded {
    fn add_assign(&mut self, o: Self) {
        self.streams += o.streams;
        self.refused += o.refused;
        self.over_budget += o.over_budget;
        self.answered += o.answered;
        self.closed += o.closed;
        self.timed_out += o.timed_out;
    }
}

impl Flooded {
    /// Counts one stream's outcome.
    pub fn count(&mut self, outcome: &Option<Result<Reply, TransportError>>) {
        self.streams += 1;
        match outcome {
            Some(Ok(Reply::Error { kind, .. })) => {
                self.refused += 1;
                self.over_budget += u64::from(*kind == crate::wire::ErrorKind::Unavailable);
            }
            Some(Ok(_)) => self.answered += 1,
            Some(Err(_)) => self.closed += 1,
            None => self.timed_out += 1,
        }
    }
}

/// Keeps `streams` streams of `conn` busy with the worst requests until
/// `until` (each stream, once answered, is followed by the next), and
/// says what they came to. Ends early if the connection closes.
pub async fn flood(conn: &Connection, streams: usize, until: Instant) -> Flooded {
    let all: Vec<Vec<u8>> = (0..streams).map(encoded).collect();
    let lanes = all.iter().map(|bytes| async move {
        let mut seen = Flooded::default();
        while Instant::now() < until && !conn.is_closed() {
            let outcome = ask(conn, bytes, Duration::from_secs(10)).await;
            seen.count(&outcome);
        }
        seen
    });
    let mut total = Flooded::default();
    for seen in futures::future::join_all(lanes).await {
        total += seen;
    }
    total
}
