//! Word-count specifics on top of `ringleader::testkit`.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use ringleader::testkit::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_wordcount");

pub fn cluster() -> Cluster {
    Cluster::new(BIN)
}

/// Counts `corpus` on the cluster in splits of `split_mib` MiB and checks
/// the result against `baseline` (the nodes' logs if it fails).
pub fn count_matches(c: &Cluster, corpus: &Path, baseline: &Path, extra: &[&str]) {
    let out = c.path(&format!("out-{}.tsv", uuid_like()));
    let o = c.cli(
        "submit",
        &[
            &["--split-mib", "1", "--output", out.to_str().unwrap()][..],
            extra,
            &[corpus.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(
        o.status.success(),
        "submit failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        c.logs()
    );
    assert_same_file(&out, baseline);
}

/// A name no other call of this process gave.
fn uuid_like() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A corpus and its single-process count.
pub fn corpus(dir: &Path, mib: u64, seed: u64) -> (PathBuf, PathBuf) {
    corpus_with(dir, mib, seed, 20_000)
}

/// [`corpus`] with a vocabulary of `vocabulary` words (100,000 make each
/// split's counts bigger than ZooKeeper takes inline).
pub fn corpus_with(dir: &Path, mib: u64, seed: u64, vocabulary: u32) -> (PathBuf, PathBuf) {
    let corpus = dir.join(format!("corpus-{seed}.txt"));
    let baseline = dir.join(format!("baseline-{seed}.tsv"));
    let ok = Command::new(BIN)
        .args([
            "generate",
            "--size-mib",
            &mib.to_string(),
            "--seed",
            &seed.to_string(),
            "--vocabulary",
            &vocabulary.to_string(),
            "--output",
        ])
        .arg(&corpus)
        .status()
        .expect("generate")
        .success();
    assert!(ok, "corpus generation");
    let ok = Command::new(BIN)
        .arg("count")
        .arg(&corpus)
        .arg("--output")
        .arg(&baseline)
        .output()
        .expect("count")
        .status
        .success();
    assert!(ok, "baseline count");
    (corpus, baseline)
}

/// Submits a word count of `corpus` in 128 KiB splits and returns once a
/// few tasks are done but not all: the moment to inject a fault.
pub async fn job_in_flight(
    client: &ringleader::Client,
    corpus: &Path,
) -> ringleader::JobHandle<wordcount::WordCount> {
    let tasks = wordcount::plan(&[corpus.display().to_string()], 128 << 10, false).expect("plan");
    let n = tasks.len() as u64;
    let job = client
        .submit::<wordcount::WordCount>(tasks, Default::default())
        .await
        .expect("submit");
    eventually(Duration::from_secs(60), "some progress", || async {
        job.progress()
            .await
            .map(|p| p.counters.tasks_done >= 3)
            .unwrap_or(false)
    })
    .await;
    let done = job.progress().await.expect("progress").counters.tasks_done;
    assert!(
        done < n,
        "the job finished before the fault; make it bigger"
    );
    job
}

/// Waits for the job's result and checks it equals the baseline file.
pub async fn assert_exact(
    job: &ringleader::JobHandle<wordcount::WordCount>,
    baseline: &Path,
    out: &Path,
) {
    let (counts, report) = job.result().await.expect("result");
    assert_eq!(report.progress.counters.tasks_failed, 0, "{report:?}");
    wordcount::write_counts(out, &counts).expect("write counts");
    assert_same_file(out, baseline);
}
