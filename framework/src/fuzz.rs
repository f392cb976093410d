//! Entry points for fuzzers: each takes bytes an attacker or a broken peer
//! controls and must return (with an error, or a value) without a panic, a
//! hang, or an allocation out of proportion to its input. The suite runs
//! them over mutated inputs (`framework/tests/fuzz.rs`); `fuzz/` runs them
//! under libFuzzer for as long as one likes (see the README).

use crate::coord::{decode_record, JobRecord, MasterInfo, ResultRecord, ShardRecord, WorkerInfo};
use crate::transport::PeerId;
use crate::wire;

/// The frame limit the stream target reads with.
pub const MAX_FRAME: usize = 1 << 20;

/// A frame body as a peer sends it (after its length prefix).
pub fn frame(data: &[u8]) {
    if let Ok(frame) = wire::decode_frame(data) {
        // What decodes must encode again (nothing half-built is kept).
        let mut buf = Vec::new();
        let _ = wire::encode_into(&mut buf, &frame);
    }
}

/// A stream of length-prefixed frames, read until it ends or errs: the
/// length prefix is honoured only up to [`MAX_FRAME`], and memory grows
/// with the bytes present, whatever a prefix announces.
pub fn frame_stream(data: &[u8]) {
    let mut r = data;
    futures::executor::block_on(async {
        // Each successful read consumes at least a prefix: this ends.
        while wire::read_frame(&mut r, MAX_FRAME).await.is_ok() {}
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
];
