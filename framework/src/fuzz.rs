//! Entry points for fuzzers: each takes bytes an attacker or a broken peer
//! controls and must return (with an error, or a value) without a panic, a
//! hang, or an allocation out of proportion to its input. The suite runs
//! them over mutated inputs (`framework/tests/fuzz.rs`); `fuzz/` runs them
//! under libFuzzer for as long as one likes (see the README).

use crate::coord::{decode_record, JobRecord, MasterInfo, ResultRecord, ShardRecord, WorkerInfo};
use crate::transport::PeerId;
use crate::wire;

/// The frame limit the stream target reads with: a node's default
/// (`--max-frame`).
pub const MAX_FRAME: usize = wire::DEFAULT_MAX_FRAME;

/// A frame body as a peer sends it (after its length prefix), read as
/// each conversation's messages.
pub fn frame(data: &[u8]) {
    fn as_a<M: wire::Message>(data: &[u8]) {
        if let Ok(frame) = wire::decode_frame::<M>(data) {
            // What decodes must encode again (nothing half-built is kept).
            let mut buf = Vec::new();
            let _ = wire::encode_into(&mut buf, &frame);
        }
    }
    as_a::<wire::Request>(data);
    as_a::<wire::Reply>(data);
    as_a::<wire::FromWorker>(data);
    as_a::<wire::ToWorker>(data);
    let _ = wire::decode_frame::<wire::Opening>(data);
}

/// A stream of length-prefixed frames, read until it ends or errs: the
/// length prefix is honoured only up to [`MAX_FRAME`], and memory grows
/// with the bytes present, whatever a prefix announces.
pub fn frame_stream(data: &[u8]) {
    let mut r = data;
    futures::executor::block_on(async {
        // Each successful read consumes at least a prefix: this ends.
        while wire::read_frame::<_, wire::Opening>(&mut r, MAX_FRAME)
            .await
            .is_ok()
        {}
    });
}

/// A record read from ZooKeeper (anyone with access could have written
/// it), as each record type.
pub fn records(data: &[u8]) {
    let _ = decode_record::<JobRecord>("/fuzz", data);
    let _ = decode_record::<ShardRecord>("/fuzz", data);
    let _ = decode_record::<ResultRecord>("/fuzz", data);
    let _ = decode_record::<MasterInfo>("/fuzz", data);
    let _ = decode_record::<WorkerInfo>("/fuzz", data);
}

/// A peer's certificate (DER), as the identity check reads it, and the
/// bytes as an identity URI.
pub fn certificate(data: &[u8]) {
    let _ = PeerId::with_serial(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = PeerId::from_uri(text);
    }
}

/// A `--zk` connect string.
pub fn connect_string(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::coord::parse_connect_string(text);
    }
}

/// Shard ranges a client sends to resume a stream (`StreamJob`), read as
/// the master reads them.
pub fn shard_runs(data: &[u8]) {
    if let Ok(runs) = wire::decode::<Vec<(u32, u32, u32)>>("runs", data) {
        // The production reader: what it keeps is bounded by the runs
        // that arrived and by MAX_SEEN_RUNS, whatever they claim.
        let keys = wire::KeyRuns::new(&runs);
        assert!(
            keys.ranges() <= runs.len().min(wire::MAX_SEEN_RUNS),
            "KeyRuns kept more ranges than it read runs"
        );
        for &(first, count, generation) in runs.iter().take(16) {
            let k = crate::core::ShardKey {
                index: first,
                generation,
            };
            if count > 0 {
                assert!(keys.contains(k), "a run's first shard is not in it");
            }
        }
    }
}

/// A connection's streams' first frames, read as the gateway reads them
/// (production bounds: at most `FIRST_FRAME_LIMIT` each, each taking
/// `DECODED` times its length from the connection's `HEADERS_BUDGET`
/// before its body is read), every frame held as if its stream were still
/// open: what is held never passes the budget, a frame that does not fit
/// is refused from its prefix alone, and no frame read is longer than the
/// limit.
pub fn first_frames(data: &[u8]) {
    use crate::actors::gateway::{DECODED, FIRST_FRAME_LIMIT, HEADERS_BUDGET};
    let budget = crate::transport::Budget::new(HEADERS_BUDGET);
    let mut held = Vec::new();
    let mut holding = 0usize;
    let mut r = data;
    futures::executor::block_on(async {
        while let Ok(len) = wire::read_prefix(&mut r, FIRST_FRAME_LIMIT).await {
            assert!(len <= FIRST_FRAME_LIMIT, "a first frame past the limit");
            // Refused from the prefix: the body stays unread (the
            // gateway stops the stream).
            let Ok(h) = budget.take(len.saturating_mul(DECODED)) else {
                break;
            };
            if wire::read_body::<_, wire::Opening>(&mut r, len)
                .await
                .is_err()
            {
                break;
            }
            held.push(h);
            holding += len * DECODED;
        }
    });
    assert!(holding <= HEADERS_BUDGET, "more held than the budget");
    assert_eq!(
        HEADERS_BUDGET - budget.free(),
        holding,
        "the budget lost count"
    );
    drop(held);
    assert_eq!(budget.free(), HEADERS_BUDGET, "held bytes not given back");
}

/// A fuzz target: any bytes in, never a panic out.
pub type Target = fn(&[u8]);

/// Every target, by name (for the fuzz crate and the suite).
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("frame_stream", frame_stream),
    ("records", records),
    ("certificate", certificate),
    ("connect_string", connect_string),
    ("shard_runs", shard_runs),
    ("first_frames", first_frames),
];
