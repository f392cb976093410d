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
        // Its result is big enough to live outside ZooKeeper (read with a
        // node's session: a client may read `/master` only).
        let (data, _) = c
            .zk()
            .await
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
/// still finds the job, right after it was submitted and once it is done
/// and fetched (then from ZooKeeper: the create finds the id taken).
#[test]
fn resubmitting_an_id_with_other_tasks_is_refused() {
    let mut c = cluster();
    let (yesterday, _) = corpus(c.dir.path(), 1, 31);
    let (today, _) = corpus(c.dir.path(), 1, 32);
    c.node("n1", &["--retention-secs", "600"]);
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
    // The same submission finds the job; another is refused, naming it.
    let answers = || {
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
    };
    answers();
    // Done and fetched (kept for the retention): the same answers.
    let done = c.cli("result", &["daily", "--wait"]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    answers();
}

/// A submission that fails names its job id before anything is sent and
/// says how to retry it: run again with that id, the job exists once.
/// (The CLI printed a generated id only on success, so a user whose
/// submission's outcome was unknown resubmitted under a new id.)
#[test]
fn a_failed_submission_names_its_job_id_and_its_retry_runs_once() {
    let mut c = cluster();
    let (corpus, baseline) = corpus(c.dir.path(), 1, 33);
    let corpus = corpus.to_str().unwrap().to_string();
    let out = c.path("out.tsv");
    let out = out.to_str().unwrap().to_string();
    // A published master that does not answer: the submission cannot land.
    let silent = format!("127.0.0.1:{}", free_udp_port());
    let stderr = rt().block_on(async {
        let zk = c.zk().await;
        let info = ringleader::coord::MasterInfo {
            node_id: "gone".into(),
            addr: silent,
            epoch: 0,
            session_timeout_ms: 400,
            store: String::new(),
            protocol: None,
            build: String::new(),
        };
        c.publish_master(&zk, &info).await;
        // Waited for on the blocking pool: `zk` must keep its session.
        let cmd = c.cli_command("submit", &["--output", &out, &corpus]);
        let dir = c.dir.path().to_path_buf();
        let (status, _, stderr) = tokio::task::spawn_blocking(move || {
            Background::start(cmd, &dir, "submit-lost").wait(Duration::from_secs(60))
        })
        .await
        .unwrap();
        assert!(!status.success(), "{stderr}");
        stderr
    });
    let id = stderr
        .split("--job-id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id to retry with: {stderr}"))
        .to_string();
    assert!(
        stderr.contains(&format!("job {id}: submitting")),
        "the id was not named before the submission: {stderr}"
    );
    // A real node takes over (replacing the silent /master) and serves.
    c.node("n1", &[]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, Some(0), Duration::from_secs(30)).await;
    });
    let o = c.cli("submit", &["--job-id", &id, "--output", &out, &corpus]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_file(std::path::Path::new(&out), &baseline);
    rt().block_on(async {
        let zk = c.zk().await;
        let jobs = zk
            .list_children(&c.layout().jobs())
            .await
            .unwrap_or_default();
        assert!(jobs.len() <= 1 && jobs.iter().all(|j| *j == id), "{jobs:?}");
    });
}
