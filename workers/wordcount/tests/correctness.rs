#![allow(clippy::unwrap_used)]
//! Regression tests for the holes an adversarial reading found (issue 10),
//! each named after the behaviour it pins.

mod common;

use std::time::Duration;

use common::*;
use ringleader::client::Client;
use ringleader::coord::{OutputRef, ResultRecord};
use ringleader::wire::JobState;

/// Job ids may contain dots: collecting the garbage of job `a` must leave
/// the files of job `a.b` alone (it once removed every spilled file whose
/// name started with `a.`, and `a.b`'s acknowledged result vanished).
#[test]
fn collecting_job_a_keeps_the_spilled_result_of_job_a_dot_b() {
    let mut c = cluster();
    let (corpus, baseline) = corpus_with(c.dir.path(), 4, 21, 100_000);
    c.node("n1", &[]);
    let corpus = corpus.to_str().unwrap();
    let o = c.cli(
        "submit",
        &["--job-id", "a.b", "--detach", "--split-mib", "1", corpus],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    rt().block_on(async {
        let client = Client::connect(client_config(&c)).await.unwrap();
        eventually(Duration::from_secs(60), "job a.b to be done", || async {
            client
                .progress("a.b")
                .await
                .is_ok_and(|p| p.state == JobState::Done)
        })
        .await;
        // Its result is big enough to live outside ZooKeeper.
        let (data, _) = client
            .zookeeper()
            .get_data(&c.layout().result("a.b"))
            .await
            .unwrap();
        let rec: ResultRecord = rmp_serde::from_slice(&data).unwrap();
        assert!(
            !matches!(rec.output, OutputRef::Inline(_)),
            "{:?}",
            rec.epoch
        );
    });

    // Job `a` runs, its result is fetched, and (retention 0) it is collected.
    let out_a = c.path("a.tsv");
    let o = c.cli(
        "submit",
        &[
            "--job-id",
            "a",
            "--split-mib",
            "1",
            "--output",
            out_a.to_str().unwrap(),
            corpus,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    rt().block_on(async {
        let zk = c.zk().await;
        let a = c.layout().job("a");
        eventually(Duration::from_secs(30), "job a to be collected", || async {
            matches!(zk.check_stat(&a).await, Ok(None))
        })
        .await;
    });

    // `a.b`'s result is still whole.
    let out_ab = c.path("a.b.tsv");
    let o = c.cli("result", &["a.b", "--output", out_ab.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "job a.b lost its result: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same_file(&out_ab, &baseline);

    // Ids that are not a plain file name never name a directory.
    for id in ["..", "."] {
        let o = c.cli("submit", &["--job-id", id, "--detach", corpus]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("invalid job id"),
            "{id}: {err}"
        );
    }
}

/// A job id resubmitted with other tasks is refused, naming the job: it
/// used to return the old job and its result silently (`submit --job-id
/// daily today.txt` wrote yesterday's counts). The same submission again
/// still finds the job.
#[test]
fn resubmitting_an_id_with_other_tasks_is_refused() {
    let mut c = cluster();
    let (yesterday, _) = corpus(c.dir.path(), 1, 31);
    let (today, _) = corpus(c.dir.path(), 1, 32);
    c.node("n1", &[]);
    let submit = |file: &std::path::Path| {
        c.cli(
            "submit",
            &["--job-id", "daily", "--detach", file.to_str().unwrap()],
        )
    };
    let first = submit(&yesterday);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let same = submit(&yesterday);
    let err = String::from_utf8_lossy(&same.stderr);
    assert!(
        same.status.success() && err.contains("already exists"),
        "{err}"
    );
    let other = submit(&today);
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success(),
        "a different submission was accepted: {err}"
    );
    assert!(
        err.contains("job daily exists with a different submission"),
        "{err}"
    );
}
