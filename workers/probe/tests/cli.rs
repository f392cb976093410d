#![allow(clippy::unwrap_used)]
//! The command line as a user meets it, with a binary of two jobs (`probe`,
//! a bare task, and `fragile-sum`, a job of its own): each job submitted
//! by name with tasks as JSON lines, `result` by job id alone (with
//! `--wait`, `--output`), and an exit code for each way a job ends.

use std::path::Path;
use std::time::{Duration, Instant};

use ringleader::audit::Event;
use ringleader::prom::http_get;
use ringleader::testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_probe");

/// Probes `0..n` that succeed.
fn ok_probes(n: u64) -> Vec<probe::Probe> {
    probe::oks(0, n)
}

fn write_tasks(path: &Path, lines: &[String]) -> String {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    path.display().to_string()
}

fn ok(value: u64) -> String {
    format!(r#"{{"value":{value},"behaviour":"Ok"}}"#)
}

fn sleep(value: u64, ms: u64) -> String {
    format!(r#"{{"value":{value},"behaviour":{{"Sleep":{ms}}}}}"#)
}

/// Runs a command of the cluster: (exit code, stdout, stderr).
fn run(c: &Cluster, cmd: &str, args: &[&str]) -> (i32, String, String) {
    let o = c.cli(cmd, args);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A counter's value summed over its series with `label`, from a node's metrics page.
fn scrape(addr: &str, name: &str, label: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").expect("metrics page");
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn every_job_of_a_binary_has_a_command_line_and_each_end_its_exit_code() {
    let mut c = Cluster::new(BIN);
    let metrics = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    c.node(
        "n0",
        &[
            "--max-job-bytes",
            "200000",
            "--metrics-addr",
            &metrics,
            "--slots",
            "2",
        ],
    );
    c.node("n1", &["--role", "worker", "--slots", "2"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 2, Duration::from_secs(30)).await;
    });
    let dir = c.dir.path().to_path_buf();
    let three = write_tasks(&dir.join("three.jsonl"), &[ok(1), ok(2), ok(3)]);

    // Several jobs: which one must be said, and the list says what there is.
    let (code, _, err) = run(&c, "submit", &[&three]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("say which job") && err.contains("probe") && err.contains("fragile-sum"),
        "{err}"
    );
    // A job this binary lacks is named as unknown.
    let (code, _, err) = run(&c, "submit", &["cube", &three]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown job \"cube\": this binary runs probe, fragile-sum"),
        "{err}"
    );

    // A bare task: tasks as JSON lines in, one JSON line per output out.
    let (code, out, err) = run(&c, "submit", &["probe", &three]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            r#"{"index":0,"output":2}"#,
            r#"{"index":1,"output":4}"#,
            r#"{"index":2,"output":6}"#
        ],
        "{err}"
    );
    // A job of its own, named after the options: its result as JSON.
    let (code, out, err) = run(
        &c,
        "submit",
        &["--max-attempts", "2", "fragile-sum", &three],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "12", "{err}");

    // Streamed: each output as it commits, then nothing more on stdout
    // (the result goes to --output only).
    let (code, out, err) = run(&c, "submit", &["probe", "--stream", &three]);
    assert_eq!(code, 0, "{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            r#"{"index":0,"output":2}"#,
            r#"{"index":1,"output":4}"#,
            r#"{"index":2,"output":6}"#
        ],
        "{err}"
    );
    let streamed_sum = dir.join("sum.json");
    let (code, out, err) = run(
        &c,
        "submit",
        &[
            "fragile-sum",
            "--stream",
            "--output",
            streamed_sum.to_str().unwrap(),
            &three,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            r#"{"shard":"0-0","partial":2}"#,
            r#"{"shard":"1-0","partial":4}"#,
            r#"{"shard":"2-0","partial":6}"#
        ],
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&streamed_sum).unwrap(), "12\n");

    // Garbage in the tasks: the line is named, nothing is submitted.
    let garbage = write_tasks(&dir.join("garbage.jsonl"), &[ok(1), "{\"value\":".into()]);
    let (code, _, err) = run(&c, "submit", &["probe", &garbage]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("line 2") && err.contains("not a probe task"),
        "{err}"
    );

    // A failed task: the others' outputs are written, and the exit says so.
    let failing = write_tasks(
        &dir.join("failing.jsonl"),
        &[ok(1), r#"{"value":2,"behaviour":"Fail"}"#.into(), ok(3)],
    );
    let (code, out, err) = run(&c, "submit", &["probe", &failing]);
    assert_eq!(code, 4, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        err.contains("1 of 3 tasks") && err.contains("fails on purpose"),
        "{err}"
    );
    // Every failure, as JSON, with --log-format json (text shows ten).
    let many: Vec<String> = (0..12)
        .map(|v| format!(r#"{{"value":{v},"behaviour":"Fail"}}"#))
        .collect();
    let many = write_tasks(&dir.join("many.jsonl"), &many);
    let (code, _, err) = run(&c, "submit", &["probe", "--log-format", "json", &many]);
    assert_eq!(code, 4, "{err}");
    let report: serde_json::Value = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("failures").is_some())
        .unwrap_or_else(|| panic!("no JSON report: {err}"));
    assert_eq!(
        report["failures"].as_array().map(Vec::len),
        Some(12),
        "{report}"
    );
    assert_eq!(report["counters"]["tasks_failed"], 12, "{report}");

    // `result` by id alone: a running job is an error unless --wait.
    let slow = write_tasks(&dir.join("slow.jsonl"), &[sleep(7, 4000)]);
    let (code, out, err) = run(
        &c,
        "submit",
        &["probe", "--detach", "--job-id", "slow", &slow],
    );
    assert_eq!((code, out.trim()), (0, "slow"), "{err}");
    let (code, _, err) = run(&c, "result", &["slow"]);
    assert_eq!(code, 8, "{err}");
    assert!(
        err.contains("still running") && err.contains("--wait"),
        "{err}"
    );
    let written = dir.join("slow.out");
    let (code, out, err) = run(
        &c,
        "result",
        &["slow", "--wait", "--output", written.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "{\"index\":0,\"output\":14}\n"
    );

    // Ctrl-C detaches: the job keeps running, the exit says interrupted,
    // and the message says how to get the result.
    let err_file = dir.join("interrupted.err");
    let mut submit = c
        .cli_command("submit", &["probe", "--job-id", "interrupted", &slow])
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    rt().block_on(eventually(
        Duration::from_secs(20),
        "the submission to be accepted",
        || {
            let err = std::fs::read_to_string(&err_file).unwrap_or_default();
            async move { err.contains("job interrupted accepted") }
        },
    ));
    let kill = std::process::Command::new("kill")
        .args(["-INT", &submit.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = submit.wait().unwrap();
    let err = std::fs::read_to_string(&err_file).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("detached; job interrupted keeps running")
            && err.contains("result interrupted --wait"),
        "{err}"
    );
    let (code, _, err) = run(&c, "result", &["interrupted", "--wait"]);
    assert_eq!(code, 0, "{err}");

    // Errors print their causes, not a backtrace, whatever RUST_BACKTRACE says.
    let o = c
        .cli_command("result", &["no-such-job"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("error: no job no-such-job"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    // No certificates where --certs points: says what to give and how to make them.
    let o = std::process::Command::new(BIN)
        .args([
            "status",
            "--zk",
            &c.zk_connect(),
            "--certs",
            "/no/such/certs",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no such certificate directory") && err.contains("`certs --out DIR`"),
        "{err}"
    );
    let o = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!(
            "probe (ringleader {} commit {})",
            ringleader::VERSION,
            ringleader::COMMIT
        )
    );
    assert_ne!(
        ringleader::COMMIT,
        "unknown",
        "the suite runs in a git work tree"
    );

    // A cancelled job says so, with its own exit.
    let long = write_tasks(&dir.join("long.jsonl"), &[sleep(1, 30_000)]);
    let (code, _, err) = run(
        &c,
        "submit",
        &["probe", "--detach", "--job-id", "gone", &long],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&c, "cancel", &["gone"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&c, "result", &["gone", "--wait"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("job gone was cancelled"), "{err}");

    // A submission over the master's limit: refused at once, naming the
    // limit and its flag, and uploaded once.
    let submits = || {
        scrape(
            &metrics,
            "ringleader_client_requests_total",
            "request=\"Submit\"",
        )
    };
    let received = || {
        scrape(
            &metrics,
            "ringleader_quic_frame_bytes_total",
            "direction=\"received\"",
        )
    };
    let (submits_before, received_before) = (submits(), received());
    assert_eq!(submits_before, 9.0, "the submissions so far are counted");
    // 6 MB: more than QUIC lets in flight before the master reads.
    let pad = "x".repeat(1000);
    let big: Vec<String> = (0..6_000)
        .map(|v| format!(r#"{{"value":{v},"behaviour":{{"HangOn":"{pad}"}}}}"#))
        .collect();
    let big = write_tasks(&dir.join("big.jsonl"), &big);
    let started = Instant::now();
    let (code, _, err) = run(&c, "submit", &["probe", &big]);
    let took = started.elapsed();
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("exceeds the limit of 200000 bytes") && err.contains("--max-job-bytes"),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(
        submits() - submits_before,
        1.0,
        "the refused upload was sent again"
    );
    // Under the limit with many small tasks (5,000 tasks of some 24
    // counted bytes each): accepted, although decoded they hold more than
    // the limit (each task's buffer), and run.
    let small: Vec<String> = (0..5_000).map(ok).collect();
    let small = write_tasks(&dir.join("small.jsonl"), &small);
    let (code, out, err) = run(&c, "submit", &["probe", &small]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 5_000, "{err}");
    // A task type of the same name but another shape is refused before
    // it runs, naming both; the cluster's own shape is accepted.
    rt().block_on(async {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Probe {
            value: u64,
        }
        impl ringleader::Task for Probe {
            type Output = u64;
            const NAME: &'static str = "probe";
            fn run(self, _: &ringleader::TaskContext) -> Result<u64, ringleader::TaskError> {
                Ok(self.value)
            }
        }
        let client = ringleader::Client::connect(client_config(&c))
            .await
            .unwrap();
        let err = match client
            .submit::<ringleader::Collect<Probe>>(vec![Probe { value: 1 }], Default::default())
            .await
        {
            Ok(_) => panic!("a task of another shape was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("job type probe is defined differently")
                && err.contains("Named { name: \"value\", value: U64 }]")
                && err.contains("Named { name: \"behaviour\""),
            "{err}"
        );
        let same = vec![probe::Probe {
            value: 4,
            behaviour: probe::Behaviour::Ok,
        }];
        let job = client
            .submit::<ringleader::Collect<probe::Probe>>(same, Default::default())
            .await
            .unwrap();
        assert_eq!(job.result().await.unwrap().0, vec![(0, 8)]);
    });
    let sent = received() - received_before;
    assert!(
        sent < 6_000_000.0,
        "{sent} bytes received for a refused submission"
    );
}

/// No worker yet: refused with `--require-workers`, else accepted with a
/// warning that `status` repeats; the job runs once workers come. A job
/// that leaves its shard size to the cluster is cut so that every worker
/// gets work, and `submit` says how.
#[test]
fn a_job_without_workers_waits_with_a_warning_and_its_shards_reach_every_worker() {
    let mut c = Cluster::new(BIN);
    c.node("m", &["--role", "candidate"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await;
    });
    let dir = c.dir.path().to_path_buf();
    let (code, out, err) = run(&c, "status", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("workers: none registered"), "{out}");

    let sleepers = |n: u64, ms: u64| (0..n).map(|v| sleep(v, ms)).collect::<Vec<_>>();
    let first = write_tasks(&dir.join("first.jsonl"), &sleepers(30, 300));
    let (code, _, err) = run(&c, "submit", &["probe", "--require-workers", &first]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("no worker runs job probe; 0 workers registered")
            && err.contains("--require-workers"),
        "{err}"
    );
    let (code, out, err) = run(&c, "jobs", &[]);
    assert_eq!(
        (code, out.as_str()),
        (0, "no jobs\n0 running, 0 done, 0 cancelled\n"),
        "{err}"
    );

    let (code, _, err) = run(
        &c,
        "submit",
        &["probe", "--detach", "--job-id", "early", &first],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: no worker runs job probe; 0 workers registered"),
        "{err}"
    );
    let (_, out, _) = run(&c, "status", &[]);
    assert!(
        out.contains("job early probe 0/30 tasks")
            && out.contains("(no worker runs job probe; 0 workers registered)"),
        "{out}"
    );

    // Three workers of one slot each come.
    let metrics: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap()))
        .collect();
    for (i, m) in metrics.iter().enumerate() {
        c.node(
            &format!("w{i}"),
            &["--role", "worker", "--slots", "1", "--metrics-addr", m],
        );
    }
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 3, Duration::from_secs(30)).await;
    });
    let (code, out, err) = run(&c, "result", &["early", "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 30, "{out}");

    // Left to the cluster, 30 tasks on three slots are cut in ten shards,
    // and every worker runs some.
    let ran = || -> Vec<f64> {
        metrics
            .iter()
            .map(|m| scrape(m, "ringleader_tasks_run_total", ""))
            .collect()
    };
    let before = ran();
    let second = write_tasks(&dir.join("second.jsonl"), &sleepers(30, 100));
    let (code, out, err) = run(&c, "submit", &["probe", "--job-id", "spread", &second]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 30, "{out}");
    assert!(
        err.contains(
            "job spread: 10 shards of 3 tasks; 3 of 3 registered workers run probe, with 3 slots"
        ),
        "{err}"
    );
    let after = ran();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a > b,
            "worker w{i} ran none of the job: {before:?} -> {after:?}"
        );
    }
    assert_eq!(after.iter().sum::<f64>() - before.iter().sum::<f64>(), 30.0);

    // A job nobody fetched is held, and listed by `jobs` (fetched ones go
    // at once: the tests' retention is 0), running until it is done.
    let held = write_tasks(&dir.join("held.jsonl"), &[ok(1), ok(2)]);
    let (code, _, err) = run(
        &c,
        "submit",
        &["probe", "--detach", "--job-id", "held", &held],
    );
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = run(&c, "jobs", &[]);
        assert_eq!(code, 0, "{err}");
        let line = out
            .lines()
            .find(|l| l.starts_with("job held probe "))
            .unwrap_or_else(|| panic!("job held not listed: {out}"));
        if line.starts_with("job held probe done, 2 tasks, submitted") {
            break;
        }
        assert!(line.starts_with("job held probe running, "), "{line}");
        assert!(Instant::now() < deadline, "job held did not end: {line}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `jobs` on a queue: filtered by state, job name, owner and age, the
/// newest first and cut to `--last`, with how many match and counts by
/// state; as JSON too. `status` counts the jobs held by state.
#[test]
fn jobs_are_listed_by_state_name_owner_and_age_newest_first() {
    let mut c = Cluster::new(BIN);
    // Kept for the test's length: the cancelled job too.
    c.node("n0", &["--slots", "2", "--retention-secs", "600"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
    });
    let dir = c.dir.path().to_path_buf();
    // Five done (not fetched: held), one running, one cancelled.
    let quick = write_tasks(&dir.join("quick.jsonl"), &[ok(1)]);
    for i in 0..5 {
        let id = format!("d{i}");
        let (code, _, err) = run(
            &c,
            "submit",
            &["probe", "--detach", "--job-id", &id, &quick],
        );
        assert_eq!(code, 0, "{err}");
    }
    let slow = write_tasks(&dir.join("slow.jsonl"), &[sleep(1, 60_000)]);
    for id in ["r", "x"] {
        let (code, _, err) = run(&c, "submit", &["probe", "--detach", "--job-id", id, &slow]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = run(&c, "cancel", &["x"]);
    assert_eq!(code, 0, "{err}");
    let listed = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (code, out, err) = run(&c, "jobs", &all);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_str().unwrap().to_string())
            .collect()
    };
    // Each done job ends on its own; wait until all five have.
    let deadline = Instant::now() + Duration::from_secs(30);
    while listed(&["--state", "done"])["matched"] != 5 {
        assert!(Instant::now() < deadline, "{}", listed(&[]));
        std::thread::sleep(Duration::from_millis(100));
    }
    let done = listed(&["--state", "done", "--last", "2"]);
    assert_eq!(ids(&done), ["d4", "d3"], "{done}");
    assert_eq!(done["matched"], 5);
    let counts = &done["counts"];
    assert_eq!(
        (&counts["running"], &counts["done"], &counts["cancelled"]),
        (&1.into(), &5.into(), &1.into()),
        "{done}"
    );
    assert_eq!(ids(&listed(&["--state", "running"])), ["r"]);
    let ended = listed(&["--state", "cancelled", "--state", "running"]);
    assert_eq!(ids(&ended), ["x", "r"], "{ended}");
    assert_eq!(listed(&["--job", "fragile-sum"])["matched"], 0);
    assert_eq!(listed(&["--job", "probe", "--since", "1h"])["matched"], 7);
    // Every job here is the admin certificate's ("local").
    assert_eq!(listed(&["--owner", "someone-else"])["matched"], 0);
    assert_eq!(listed(&["--owner", "local"])["matched"], 7);
    let (code, _, err) = run(&c, "jobs", &["--since", "soon"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("30s, 5m, 1h30m"), "{err}");
    // Text: newest first, how many more match, the counts.
    let (code, out, err) = run(&c, "jobs", &["--last", "3"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("job x probe cancelled"), "{out}");
    assert!(lines[1].starts_with("job r probe running"), "{out}");
    assert!(lines[2].starts_with("job d4 probe done"), "{out}");
    assert_eq!(
        lines[3],
        "... and 4 more that match (`--last N`, or `--last 0` for up to 10,000)"
    );
    assert_eq!(lines[4], "1 running, 5 done, 1 cancelled");
    let (code, out, err) = run(&c, "status", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("jobs held: 1 running, 5 done, 1 cancelled"),
        "{out}"
    );
    // One node, the master: its worker's slots are a fallback, said so.
    assert!(
        out.contains(
            "workers: 1 registered, 1 connected, 0 slots (and 2 on the master's own worker, used \
             when those are full)"
        ) && out.contains("(the master's own: a fallback)"),
        "{out}"
    );
    // A reader that closed its end (`status | head`) ends the command
    // quietly: exit 0, no panic, nothing said.
    for cmd in ["status", "jobs"] {
        let mut child = c
            .cli_command(cmd, &[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{cmd}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{cmd}: {err}"
        );
    }
}

/// A node given certificates of another CA (same cluster name) says once
/// why it cannot join, and tries again with growing pauses rather than
/// every second; a client with such certificates is refused at once.
#[test]
fn a_node_or_client_of_another_ca_is_told_so_once_and_backs_off() {
    // ZooKeeper's plain port: over its TLS port ZooKeeper would refuse
    // these certificates before the QUIC checks under test see them
    // (`zookeeper_refuses_what_is_not_the_clusters_node`).
    let mut c = Cluster::plain(BIN, 1);
    let metrics = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    c.node("n0", &["--metrics-addr", &metrics]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await;
    });
    let other = c.path("other-certs");
    ringleader::pki::make_cluster_certs(&other).unwrap();
    let other = other.display().to_string();

    // A client: refused at once, exit 3, the cause named.
    let started = Instant::now();
    let o = std::process::Command::new(BIN)
        .args(["status", "--zk", &c.zk_connect(), "--cluster", &c.cluster])
        .args(["--certs", &other])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("not signed by this node's cluster CA"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // A key others may read is refused, saying how to fix it (as ssh does).
    let open_key = c.path("open-certs");
    ringleader::pki::make_cluster_certs(&open_key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let key = open_key.join("client.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let o = std::process::Command::new(BIN)
        .args([
            "status",
            "--zk",
            &c.zk_connect(),
            "--cluster",
            &c.cluster,
            "--certs",
        ])
        .arg(&open_key)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("permissions 0644 are too open") && err.contains("chmod 600"),
        "{err}"
    );

    c.node("alien", &["--role", "worker", "--certs", &other]);
    // Its fourth try comes after pauses of 0.5, 1 and 2 s.
    rt().block_on(eventually(
        Duration::from_secs(30),
        "the foreign node to pause 4 s before trying again",
        || async {
            c.audit().iter().any(|e| {
                e.node == "alien" && matches!(e.event, Event::JoinRefused { pause_ms: 4000, .. })
            })
        },
    ));
    let log = c.log("alien");
    assert_eq!(
        log.matches("this node cannot join the master").count(),
        1,
        "said more than once: {log}"
    );
    assert!(
        log.contains("not signed by this node's cluster CA"),
        "{log}"
    );
    // The master saw each try (a failed handshake, counted), and no more
    // than the pauses allow; the client's made one more.
    let tries = scrape(
        &metrics,
        "ringleader_peer_refusals_total",
        "reason=\"handshake\"",
    );
    assert!(
        (4.0..=7.0).contains(&tries),
        "{tries} tries seen by the master"
    );
    // One foreign worker against the master's own is a tie: the master,
    // whose own worker is linked, stays (`core::standing`).
    assert_eq!(
        seen(&c, "n0", &|e| matches!(e, Event::SteppedDown { .. })),
        0,
        "{}",
        c.log("n0")
    );

    // Registered in ZooKeeper, it has a gauge series on the master's page;
    // once it stops, the series goes (the master's own stays).
    let series = |worker: &str| {
        let (_, body) = http_get(&metrics, "/metrics").expect("metrics page");
        body.contains(&format!(
            "ringleader_worker_in_flight{{worker=\"{worker}\"}}"
        ))
    };
    assert!(series("alien") && series("n0"));
    c.signal("alien", "TERM");
    let status = c.wait_exit("alien", Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    rt().block_on(eventually(
        Duration::from_secs(30),
        "the departed node's gauge series to leave the page",
        || {
            let gone = !series("alien");
            async move { gone }
        },
    ));
    assert!(series("n0"));
}

/// A master whose certificate every other worker refuses serves no one:
/// it steps down, a candidate the workers accept takes over, and the
/// refused node stands again only after a pause, behind it. (The trial
/// that found this: a node of another CA, consistent with itself, won the
/// election on plain ZooKeeper and locked every client and worker out.)
#[test]
fn a_master_every_other_worker_refuses_steps_down_for_one_they_accept() {
    use probe::{Behaviour, Probe};
    use ringleader::client::SubmitOptions;
    use ringleader::{Client, Collect};
    // ZooKeeper's plain port: over TLS it would refuse the rogue's session.
    let mut c = Cluster::plain(BIN, 1);
    let rogue_certs = c.path("rogue-certs");
    ringleader::pki::make_cluster_certs(&rogue_certs).unwrap();
    let rogue_certs = rogue_certs.display().to_string();
    c.node("rogue", &["--certs", &rogue_certs]);
    rt().block_on(async {
        let zk = c.zk().await;
        let first = c.master(&zk, None, Duration::from_secs(20)).await;
        assert_eq!(first.node_id, "rogue", "the rogue node stands first");
        // Two nodes of the cluster: their workers refuse the rogue master.
        c.node("n1", &[]);
        c.node("n2", &[]);
        let next = c
            .master(&zk, Some(first.epoch), Duration::from_secs(60))
            .await;
        assert!(next.node_id == "n1" || next.node_id == "n2", "{next:?}");
        assert_eq!(
            seen(
                &c,
                "rogue",
                &|e| matches!(e, Event::SteppedDown { workers: 2, refusals } if *refusals >= 3)
            ),
            1,
            "{}",
            c.log("rogue")
        );
        let log = c.log("rogue");
        assert!(
            log.contains("every other worker refused this master's certificate"),
            "{log}"
        );
        // The rogue stands again after its pause (a candidacy in the
        // election), behind the new master, which stays.
        let candidates = || async {
            let dir = c.layout().election();
            let mut ids = Vec::new();
            for n in zk.list_children(&dir).await.unwrap_or_default() {
                if let Ok((data, _)) = zk.get_data(&format!("{dir}/{n}")).await {
                    ids.push(String::from_utf8_lossy(&data).into_owned());
                }
            }
            ids
        };
        let during_pause = candidates().await;
        assert!(
            during_pause.contains(&"n1".to_string())
                && !during_pause.contains(&"rogue".to_string()),
            "{during_pause:?}"
        );
        eventually(
            Duration::from_secs(40),
            "the rogue to stand for election again",
            || async { candidates().await.contains(&"rogue".to_string()) },
        )
        .await;
        // Jobs run on the master the workers accept.
        let client = Client::connect(client_config(&c)).await.unwrap();
        let tasks: Vec<Probe> = (0..8)
            .map(|value| Probe {
                value,
                behaviour: Behaviour::Ok,
            })
            .collect();
        let (out, _) = client
            .run::<Collect<Probe>>(tasks, SubmitOptions::default())
            .await
            .unwrap();
        assert_eq!(out, (0..8).map(|v| (v, v * 2)).collect::<Vec<_>>());
        let now = c.master(&zk, None, Duration::from_secs(5)).await;
        assert_eq!(now.epoch, next.epoch, "the accepted master stays");
    });
}

/// The README's CA rollover, run as an operator would, command by
/// command, on three nodes with their own certificates, while a job runs
/// throughout (it cannot end before the test lets it) and a new job runs
/// after every step: `certs init` of a second CA; the new CA added to
/// every host's `ca.pem`, SIGHUP; new identities (`certs issue --trust`)
/// installed, SIGHUP; the old CA dropped, SIGHUP. Then a client of the old
/// CA is refused, and a failover (the master killed) shows every node
/// dialing and serving with its new certificate alone; the job submitted
/// before the rollover ends exact, read by the same client's new
/// certificate.
#[test]
fn the_readmes_ca_rollover_runs_step_by_step_with_a_job_running_throughout() {
    use probe::{Behaviour, Probe};
    use ringleader::client::SubmitOptions;
    use ringleader::wire::JobState;
    use ringleader::{Client, ClientConfig, Collect};
    // ZooKeeper's plain port: with --zk-tls the servers' trust stores
    // change by a restart of each (the README says so), not tried here.
    let mut c = Cluster::plain(BIN, 1);
    let certs = |args: &[&str]| {
        let o = std::process::Command::new(BIN)
            .arg("certs")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "certs {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let ca1 = c.certs.display().to_string();
    let ca2 = c.path("ca2").display().to_string();
    let nodes = ["n0", "n1", "n2"];
    let root = c.path("gate").parent().unwrap().to_path_buf();
    let dir = |name: &str| root.join(format!("{name}-certs")).display().to_string();
    for n in nodes {
        certs(&["issue", "--ca-dir", &ca1, "--node", n, "--out", &dir(n)]);
    }
    certs(&[
        "issue",
        "--ca-dir",
        &ca1,
        "--client",
        "alice",
        "--out",
        &dir("alice"),
    ]);
    for n in nodes {
        c.node(n, &["--certs", &dir(n), "--slots", "3"]);
    }
    let reloads =
        |c: &Cluster, n: &str| seen(c, n, &|e| matches!(e, Event::CertificatesReloaded { .. }));
    // SIGHUP to every node, and wait until each has reloaded.
    let hangup = |c: &Cluster| {
        let before: Vec<usize> = nodes.iter().map(|n| reloads(c, n)).collect();
        for n in nodes {
            c.signal(n, "HUP");
        }
        rt().block_on(eventually(
            Duration::from_secs(20),
            "every node to reload its certificates",
            || {
                let done = nodes.iter().zip(&before).all(|(n, b)| reloads(c, n) > *b);
                async move { done }
            },
        ));
    };
    let client_of = |c: &Cluster, d: &str| {
        let mut cfg = ClientConfig::new(
            c.zk_connect(),
            c.cluster.clone(),
            std::path::PathBuf::from(d),
        );
        cfg.master_wait = Duration::from_secs(30);
        cfg
    };
    let gate = c.path("gate");
    let runtime = rt();
    let zk = runtime.block_on(c.zk());
    let first = runtime.block_on(c.master(&zk, None, Duration::from_secs(30)));
    // The job that runs throughout: one task waits for the gate. (One, on
    // three slots a node: after the failover its run on a surviving
    // worker goes on unseen by the new master, which runs it again
    // beside it; the quick jobs still find a slot.)
    let tasks: Vec<Probe> = (0..40)
        .map(|value| Probe {
            value,
            behaviour: if value == 0 {
                Behaviour::WaitFor(gate.display().to_string())
            } else {
                Behaviour::Sleep(50)
            },
        })
        .collect();
    let old_client = runtime
        .block_on(Client::connect(client_of(&c, &dir("alice"))))
        .unwrap();
    let opts = SubmitOptions {
        job_id: Some("throughout".into()),
        shard_size: Some(1),
        ..Default::default()
    };
    runtime
        .block_on(old_client.submit::<Collect<Probe>>(tasks.clone(), opts))
        .unwrap();
    // After each step: the job still runs, and a new one runs to its end.
    let step = |c: &Cluster, client_dir: &str, what: &str| {
        runtime.block_on(async {
            let client = Client::connect(client_of(c, client_dir)).await.unwrap();
            let p = client.progress("throughout").await.unwrap();
            assert_eq!(p.state, JobState::Running, "after {what}: {p:?}");
            let quick: Vec<Probe> = (0..4)
                .map(|value| Probe {
                    value,
                    behaviour: Behaviour::Ok,
                })
                .collect();
            let (out, report) = tokio::time::timeout(
                Duration::from_secs(60),
                client.run::<Collect<Probe>>(quick, SubmitOptions::default()),
            )
            .await
            .unwrap_or_else(|_| panic!("a job after {what} did not end in 60 s\n{}", c.logs()))
            .unwrap();
            assert_eq!(
                out,
                (0..4).map(|v| (v, v * 2)).collect::<Vec<_>>(),
                "after {what}"
            );
            assert_eq!(report.progress.counters.tasks_failed, 0);
        })
    };
    step(&c, &dir("alice"), "the start");

    // 1. A second CA, on the operator's machine.
    certs(&["init", "--ca-dir", &ca2]);
    // 2. The new CA beside the old in every host's ca.pem (the client's
    // too), and SIGHUP.
    let ca2_pem = std::fs::read_to_string(c.path("ca2").join("ca.pem")).unwrap();
    for host in nodes.iter().chain(&["alice"]) {
        let path = std::path::Path::new(&dir(host)).join("ca.pem");
        let mut pem = std::fs::read_to_string(&path).unwrap();
        pem.push_str(&ca2_pem);
        std::fs::write(&path, pem).unwrap();
    }
    hangup(&c);
    step(&c, &dir("alice"), "the new CA was added");

    // 3. New identities of the new CA, trusting the old one meanwhile,
    // installed over the old files, and SIGHUP.
    let ca1_pem = format!("{ca1}/ca.pem");
    for host in nodes {
        let new = format!("{}-new", dir(host));
        certs(&[
            "issue", "--ca-dir", &ca2, "--node", host, "--trust", &ca1_pem, "--out", &new,
        ]);
        for f in ["node.pem", "node.key", "ca.pem"] {
            std::fs::copy(format!("{new}/{f}"), format!("{}/{f}", dir(host))).unwrap();
        }
    }
    let alice2 = c.path("alice2-certs").display().to_string();
    certs(&[
        "issue", "--ca-dir", &ca2, "--client", "alice", "--trust", &ca1_pem, "--out", &alice2,
    ]);
    hangup(&c);
    step(&c, &alice2, "new certificates were installed");

    // 4. The old CA dropped from every ca.pem, and SIGHUP.
    for host in nodes {
        std::fs::write(std::path::Path::new(&dir(host)).join("ca.pem"), &ca2_pem).unwrap();
    }
    std::fs::write(std::path::Path::new(&alice2).join("ca.pem"), &ca2_pem).unwrap();
    hangup(&c);
    step(&c, &alice2, "the old CA was dropped");

    // A client of the old CA is refused now, saying why.
    let o = std::process::Command::new(BIN)
        .args([
            "status",
            "--zk",
            &c.zk_connect(),
            "--cluster",
            &c.cluster,
            "--certs",
        ])
        .arg(dir("alice"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    // A failover: the surviving nodes dial the next master, and it
    // serves them, with the new certificates alone.
    let relinks = |c: &Cluster| {
        seen(c, "n0", &|e| matches!(e, Event::LinkedToMaster { .. }))
            + seen(c, "n1", &|e| matches!(e, Event::LinkedToMaster { .. }))
            + seen(c, "n2", &|e| matches!(e, Event::LinkedToMaster { .. }))
    };
    let links_before = relinks(&c);
    c.kill9(&first.node_id);
    let next = runtime.block_on(c.master(&zk, Some(first.epoch), Duration::from_secs(30)));
    assert_ne!(next.node_id, first.node_id);
    rt().block_on(eventually(
        Duration::from_secs(30),
        "both surviving workers to link to the next master",
        || {
            let n = relinks(&c);
            async move { n >= links_before + 2 }
        },
    ));
    step(&c, &alice2, "a failover");
    // The job that ran throughout ends exact, read with the new
    // certificate of the client that submitted it.
    std::fs::write(&gate, b"open").unwrap();
    runtime.block_on(async {
        let client = Client::connect(client_of(&c, &alice2)).await.unwrap();
        let (out, report) = tokio::time::timeout(
            Duration::from_secs(60),
            client.job::<Collect<Probe>>("throughout").result(),
        )
        .await
        .expect("the job ended once its gate opened")
        .unwrap();
        let want: Vec<(u64, u64)> = (0..40).map(|v| (v, v * 2)).collect();
        assert_eq!(out, want);
        assert_eq!(report.progress.counters.tasks_failed, 0, "{report:?}");
    });
}

/// Certificates say who may do what. A node takes its id from its
/// certificate and refuses to start under another; the master lets a
/// certificate register only as the node it names (a client's, or another
/// node's, is refused, logged with the peer's identity and counted), and
/// only a worker that speaks a protocol version it speaks (counted apart).
#[test]
fn a_worker_joins_only_as_the_node_its_certificate_names_and_in_a_protocol_both_speak() {
    use ringleader::transport::tls::{self, Role};
    use ringleader::transport::{self, FramedStream};
    use ringleader::wire::{FromWorker, Hello, ToWorker, PROTOCOL_MIN, PROTOCOL_VERSION};
    // ZooKeeper's plain port: over its TLS port ZooKeeper would refuse
    // these certificates before the QUIC checks under test see them
    // (`zookeeper_refuses_what_is_not_the_clusters_node`).
    let mut c = Cluster::plain(BIN, 1);
    let metrics = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    c.node("n0", &["--metrics-addr", &metrics]);
    // n0 is the master (whose metrics and log are read below).
    let master = rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await
    });
    assert_eq!(master.node_id, "n0");
    // The operator's path: one identity per host, no CA key in it.
    let n1 = c.path("n1-certs");
    ringleader::pki::issue_to(&c.certs, Role::Node, "n1", &n1).unwrap();
    assert!(!n1.join("ca.key").exists());
    let n1s = n1.display().to_string();

    // Under another id: refused at start, exit 1, with what to do.
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["node", "--zk", &c.zk_connect(), "--cluster", &c.cluster])
        .args([
            "--certs",
            &n1s,
            "--node-id",
            "n2",
            "--listen",
            "127.0.0.1:0",
        ]);
    let (status, _, err) = Background::start(cmd, c.dir.path(), "n2").wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("the certificate is node n1's, but --node-id says n2"),
        "{err}"
    );

    // Under its own: it joins as n1.
    c.node("n1", &["--certs", &n1s]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 2, Duration::from_secs(20)).await;
        // A client's certificate, and n1's claiming to be n0: refused;
        // a worker of a release whose protocol this one no longer speaks:
        // refused for that first, whoever it is.
        use ringleader::wire::ErrorKind::{Invalid, Unsupported};
        for (identity, claim, versions, kind, want) in [
            (
                tls::Identity::client(&c.certs).unwrap(),
                "n9",
                (3, 3),
                Unsupported,
                "worker n9 (an older build) cannot join: it speaks protocol versions 3 to 3 and \
                 this master 6 to",
            ),
            (
                tls::Identity::client(&c.certs).unwrap(),
                "n9",
                (PROTOCOL_MIN, PROTOCOL_VERSION),
                Invalid,
                "the certificate of admin local may not register as a worker",
            ),
            (
                tls::Identity::node(&n1, None, || unreachable!()).unwrap(),
                "n0",
                (PROTOCOL_MIN, PROTOCOL_VERSION),
                Invalid,
                "the certificate of node n1 may not register as node n0",
            ),
        ] {
            let ep = dialer(&identity);
            let conn = transport::dial_node(&ep, &master.addr, &master.node_id)
                .await
                .unwrap();
            let mut s = FramedStream::open(&conn, 1 << 20).await.unwrap();
            let hello = FromWorker::WorkerHello(Hello {
                version: versions.0,
                newest: Some(versions.1),
                build: String::new(),
                shapes: Default::default(),
                node_id: claim.into(),
                slots: 1,
                jobs: vec!["probe".into()],
                epoch: master.epoch,
                store: String::new(),
                store_mark: String::new(),
            });
            s.send(&hello).await.unwrap();
            let reply: ToWorker = s.recv().await.unwrap();
            assert!(
                matches!(&reply, ToWorker::Error { kind: k, message } if *k == kind && message.contains(want)),
                "{reply:?}"
            );
        }
    });
    assert_eq!(
        scrape(
            &metrics,
            "ringleader_peer_refusals_total",
            "reason=\"role\""
        ),
        2.0
    );
    assert_eq!(
        scrape(
            &metrics,
            "ringleader_peer_refusals_total",
            "reason=\"version\""
        ),
        1.0
    );
    let log = c.log("n0");
    assert!(
        log.contains("refused a worker") && log.contains("peer=node n1"),
        "{log}"
    );
    // The refused claims took no link over: n0's and n1's stay.
    let audit = c.audit();
    let joined = |id: &str| {
        audit
            .iter()
            .any(|e| e.node == id && matches!(e.event, Event::LinkedToMaster { .. }))
    };
    assert!(joined("n0") && joined("n1"), "{audit:?}");
    assert!(
        !audit
            .iter()
            .any(|e| matches!(e.event, Event::WorkerLost { .. } | Event::LinkLost { .. })),
        "{audit:?}"
    );
}

/// Jobs belong to the client that submitted them: another client can
/// neither read, watch, cancel, list nor resubmit them (refused, logged
/// and counted); an admin can, and so can the owner.
#[test]
fn a_clients_jobs_are_its_own_unless_an_admin_asks() {
    use probe::{Behaviour, Probe};
    use ringleader::client::SubmitOptions;
    use ringleader::{Client, Collect};
    let mut c = Cluster::new(BIN);
    let metrics = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    c.node("n0", &["--metrics-addr", &metrics]);
    let (alice_dir, bob_dir) = (client_certs(&c, "alice"), client_certs(&c, "bob"));
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await;
        let connect = |certs: &Path| {
            let mut cfg = client_config(&c);
            cfg.certs = certs.to_path_buf();
            Client::connect(cfg)
        };
        let alice = connect(&alice_dir).await.unwrap();
        let bob = connect(&bob_dir).await.unwrap();
        let admin = connect(&c.certs).await.unwrap();
        let tasks: Vec<Probe> = (0..4)
            .map(|value| Probe {
                value,
                behaviour: Behaviour::Sleep(300),
            })
            .collect();
        let opts = SubmitOptions {
            job_id: Some("alices".into()),
            shard_size: Some(1),
            ..Default::default()
        };
        let job = alice
            .submit::<Collect<Probe>>(tasks.clone(), opts.clone())
            .await
            .unwrap();
        let theirs = "job alices belongs to client alice";
        let refused = |r: Result<String, ringleader::client::ClientError>| match r {
            Err(e) => assert!(e.to_string().contains(theirs), "{e}"),
            Ok(what) => panic!("bob was served: {what}"),
        };
        refused(bob.progress("alices").await.map(|p| format!("{p:?}")));
        refused(bob.cancel("alices").await.map(|()| "cancel".into()));
        refused(
            bob.job::<Collect<Probe>>("alices")
                .result()
                .await
                .map(|r| format!("{r:?}")),
        );
        refused(
            bob.submit::<Collect<Probe>>(tasks, opts)
                .await
                .map(|_| "resubmission".into()),
        );
        refused(
            bob.job::<Collect<Probe>>("alices")
                .stream()
                .next()
                .await
                .map(|partial| format!("a stream: {partial:?}")),
        );
        let listed = bob.jobs(Default::default()).await.unwrap();
        assert!(
            listed.jobs.iter().all(|j| j.job_id != "alices"),
            "{listed:?}"
        );
        assert_eq!(listed.matched, 0, "{listed:?}");
        // Asking for alice's jobs by owner shows bob nothing either.
        let asked = ringleader::wire::JobQuery {
            owner: Some("client:alice".into()),
            ..Default::default()
        };
        assert_eq!(bob.jobs(asked).await.unwrap().matched, 0);
        let status = bob.status().await.unwrap();
        assert!(status.jobs.iter().all(|j| j.job_id != "alices"));
        // An admin sees it; its owner fetches it.
        assert!(admin
            .jobs(Default::default())
            .await
            .unwrap()
            .jobs
            .iter()
            .any(|j| j.job_id == "alices" && j.owner.as_deref() == Some("client:alice")));
        admin.progress("alices").await.unwrap();
        assert!(alice
            .jobs(Default::default())
            .await
            .unwrap()
            .jobs
            .iter()
            .any(|j| j.job_id == "alices"));
        let (results, _) = job.result().await.unwrap();
        assert_eq!(results.len(), 4);
    });
    let refusals = scrape(
        &metrics,
        "ringleader_peer_refusals_total",
        "reason=\"not_owner\"",
    );
    assert!(refusals >= 5.0, "{refusals} refusals counted");
    let log = c.log("n0");
    assert!(
        log.contains("refused a request on another client's job")
            && log.contains("peer=client bob"),
        "{log}"
    );
}

/// Ownership is checked when a watch or a stream attaches, not only when
/// its request arrives (issue 29, finding 4): client bob, watching and
/// streaming ids while client alice submits jobs under them, never sees
/// anything of hers (he was handed her result when his watch came while
/// her submission was under way: the gateway had let it through, the job
/// not being there yet).
#[test]
fn a_watch_or_stream_opened_before_a_job_exists_sees_nothing_of_another_clients() {
    use probe::{Behaviour, Probe};
    use ringleader::client::SubmitOptions;
    use ringleader::transport::tls;
    use ringleader::transport::{self, FramedStream};
    use ringleader::wire::{Reply, Request};
    use ringleader::{Client, Collect};
    let mut c = Cluster::new(BIN);
    c.node("n0", &[]);
    let (alice_dir, bob_dir) = (client_certs(&c, "alice"), client_certs(&c, "bob"));
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let master = c.master(&zk, None, Duration::from_secs(20)).await;
        let mut cfg = client_config(&c);
        cfg.certs = alice_dir.clone();
        let alice = Client::connect(cfg).await.unwrap();
        let bob_id = tls::Identity::client(&bob_dir).unwrap();
        let ep = dialer(&bob_id);
        let conn = transport::dial_node(&ep, &master.addr, &master.node_id)
            .await
            .unwrap();
        let done = std::cell::Cell::new(false);
        let current = std::cell::Cell::new(0u64);
        let rounds = 20;
        // Alice: jobs of tasks too big to be kept in their record (their
        // submission writes batches: the longest window), one at a time.
        let submit = async {
            for i in 0..rounds {
                let tasks = vec![Probe {
                    value: i,
                    behaviour: Behaviour::HangOn("x".repeat(20_000)),
                }];
                let opts = SubmitOptions {
                    job_id: Some(format!("x{i}")),
                    stream: true,
                    ..Default::default()
                };
                current.set(i);
                let (out, _) = alice.run::<Collect<Probe>>(tasks, opts).await.unwrap();
                assert_eq!(out, vec![(0, 2 * i)]);
            }
            done.set(true);
        };
        // Bob: watches and streams of the id being submitted, over and over.
        let (mut refused, mut leaked) = (0usize, Vec::new());
        let snoop = async {
            while !done.get() {
                {
                    let i = current.get();
                    for ask in [
                        Request::WatchJob {
                            job_id: format!("x{i}"),
                            fetch: true,
                            unmarked: false,
                        },
                        Request::StreamJob {
                            job_id: format!("x{i}"),
                            seen: Vec::new(),
                        },
                    ] {
                        let Ok(mut s) = FramedStream::open(&conn, 1 << 20).await else {
                            continue;
                        };
                        if s.send(&ask).await.is_err() {
                            continue;
                        }
                        while let Ok(Ok(frame)) =
                            tokio::time::timeout(Duration::from_millis(200), s.recv::<Reply>())
                                .await
                        {
                            match frame {
                                Reply::Error { kind, message } => {
                                    refused += usize::from(
                                        kind == ringleader::wire::ErrorKind::NotOwner
                                            && message.contains("belongs to client alice"),
                                    );
                                    break;
                                }
                                Reply::Job(_) | Reply::Outcome(_) | Reply::Partial { .. } => {
                                    leaked.push(format!("x{i}: {}", frame.name()));
                                }
                                _ => break,
                            }
                        }
                    }
                }
            }
        };
        futures::join!(submit, snoop);
        assert!(leaked.is_empty(), "bob saw alice's jobs: {leaked:?}");
        assert!(refused > 0, "bob's requests reached alice's jobs");
    });
}

/// A directory of client `name`'s certificate, issued by the cluster's CA.
fn client_certs(c: &Cluster, name: &str) -> std::path::PathBuf {
    use ringleader::transport::tls::Role;
    let d = c.path(&format!("{name}-certs"));
    ringleader::pki::issue_to(&c.certs, Role::Client, name, &d).unwrap();
    d
}

/// How many audit events of `node` match `what`.
fn seen(c: &Cluster, node: &str, what: &dyn Fn(&Event) -> bool) -> usize {
    c.audit()
        .iter()
        .filter(|e| e.node == node && what(&e.event))
        .count()
}

/// Certificate life without a restart. A revoked node (`certs revoke`,
/// then SIGHUP) has its live link closed and cannot join again; a second
/// CA, trusted beside the first, lets a node of the new CA join and run
/// shards (a rollover).
#[test]
fn a_revoked_node_is_cut_off_and_a_new_ca_is_trusted_beside_the_old() {
    use probe::{Behaviour, Probe};
    use ringleader::client::SubmitOptions;
    use ringleader::transport::tls::Role;
    use ringleader::{Client, Collect};
    // ZooKeeper's plain port: over its TLS port ZooKeeper would refuse
    // these certificates before the QUIC checks under test see them
    // (`zookeeper_refuses_what_is_not_the_clusters_node`).
    let mut c = Cluster::plain(BIN, 1);
    let metrics = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    c.node("n0", &["--metrics-addr", &metrics]);
    let n1 = c.path("n1-certs");
    ringleader::pki::issue_to(&c.certs, Role::Node, "n1", &n1).unwrap();
    let n1s = n1.display().to_string();
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await;
    });
    c.node("n1", &["--certs", &n1s, "--role", "worker"]);
    rt().block_on(eventually(
        Duration::from_secs(20),
        "n1 to join",
        || async { seen(&c, "n1", &|e| matches!(e, Event::LinkedToMaster { .. })) > 0 },
    ));

    // Revoked, then SIGHUP: its link is closed and it is refused after.
    let o = std::process::Command::new(BIN)
        .args(["certs", "revoke", "--ca-dir"])
        .arg(&c.certs)
        .arg("--cert")
        .arg(n1.join("node.pem"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("revoked node n1"),
        "{out}"
    );
    c.signal("n0", "HUP");
    rt().block_on(eventually(
        Duration::from_secs(20),
        "n1 to be cut off and refused",
        || async {
            seen(
                &c,
                "n0",
                &|e| matches!(e, Event::WorkerLost { worker, .. } if worker == "n1"),
            ) > 0
                && seen(&c, "n1", &|e| matches!(e, Event::JoinRefused { .. })) > 0
        },
    ));
    assert_eq!(
        seen(&c, "n0", &|e| matches!(
            e,
            Event::CertificatesReloaded { revoked: 1 }
        )),
        1
    );
    assert!(
        scrape(
            &metrics,
            "ringleader_peer_refusals_total",
            "reason=\"revoked\""
        ) >= 1.0
    );
    let rejoins = seen(&c, "n1", &|e| matches!(e, Event::LinkedToMaster { .. }));
    assert_eq!(rejoins, 1, "the revoked node joined again");

    // A second CA: n0 trusts it beside the first (SIGHUP); n2, of the new
    // CA, trusts the old one (n0's certificate) during the overlap.
    let ca2 = c.path("ca2");
    ringleader::pki::make_ca(&ca2).unwrap();
    let n2 = c.path("n2-certs");
    ringleader::pki::issue_to(&ca2, Role::Node, "n2", &n2).unwrap();
    ringleader::pki::trust(&n2, &c.certs.join("ca.pem")).unwrap();
    ringleader::pki::trust(&c.certs, &ca2.join("ca.pem")).unwrap();
    c.signal("n0", "HUP");
    rt().block_on(eventually(
        Duration::from_secs(20),
        "n0 to reload again",
        || async {
            seen(&c, "n0", &|e| {
                matches!(e, Event::CertificatesReloaded { .. })
            }) == 2
        },
    ));
    c.node(
        "n2",
        &["--certs", &n2.display().to_string(), "--role", "worker"],
    );
    rt().block_on(async {
        eventually(
            Duration::from_secs(20),
            "n2 of the new CA to join",
            || async { seen(&c, "n2", &|e| matches!(e, Event::LinkedToMaster { .. })) > 0 },
        )
        .await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let tasks: Vec<Probe> = (0..6)
            .map(|value| Probe {
                value,
                behaviour: Behaviour::HangOn("n0".into()),
            })
            .collect();
        let opts = SubmitOptions {
            shard_size: Some(1),
            ..Default::default()
        };
        // n0 hangs on these (it would sit on them): n2 runs them all.
        let job = client.submit::<Collect<Probe>>(tasks, opts).await.unwrap();
        let (results, _) = tokio::time::timeout(Duration::from_secs(60), job.result())
            .await
            .expect("the job ran on n2")
            .unwrap();
        assert_eq!(results.len(), 6);
    });
}

/// The README's renewal and revocation, step by step, with a job running
/// throughout (issue 29, finding 3): a worker's certificate is issued
/// again and copied over its own, SIGHUP; its old certificate is revoked,
/// `crl.pem` copied beside every `ca.pem`, SIGHUP to every node. The master
/// closes the worker's link of the revoked certificate, and the worker
/// dials again with its new one (it used to keep dialing with the
/// certificate it started with, refused: an outage) and finishes the job.
#[test]
fn a_renewed_worker_rejoins_once_its_old_certificate_is_revoked() {
    use probe::{Behaviour, Probe};
    use ringleader::client::SubmitOptions;
    use ringleader::transport::tls::Role;
    use ringleader::{Client, Collect};
    let mut c = Cluster::plain(BIN, 1);
    c.node("n0", &["--role", "candidate"]);
    let w = c.path("w-certs");
    ringleader::pki::issue_to(&c.certs, Role::Node, "w", &w).unwrap();
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await;
    });
    c.node(
        "w",
        &[
            "--certs",
            &w.display().to_string(),
            "--role",
            "worker",
            "--slots",
            "1",
        ],
    );
    rt().block_on(async {
        let client = Client::connect(client_config(&c)).await.unwrap();
        let tasks: Vec<Probe> = (0..60)
            .map(|value| Probe {
                value,
                behaviour: Behaviour::Sleep(100),
            })
            .collect();
        let opts = SubmitOptions {
            shard_size: Some(1),
            ..Default::default()
        };
        let job = client.submit::<Collect<Probe>>(tasks, opts).await.unwrap();
        eventually(Duration::from_secs(20), "w to join and run", || async {
            client
                .progress(job.id())
                .await
                .is_ok_and(|p| p.counters.tasks_done > 0)
        })
        .await;
        // Renewed: a new certificate over the old one, SIGHUP.
        let old = c.path("w-old.pem");
        std::fs::copy(w.join("node.pem"), &old).unwrap();
        let renewed = c.path("w-renewed");
        ringleader::pki::issue_to(&c.certs, Role::Node, "w", &renewed).unwrap();
        for f in ["node.pem", "node.key"] {
            std::fs::copy(renewed.join(f), w.join(f)).unwrap();
        }
        c.signal("w", "HUP");
        eventually(Duration::from_secs(20), "w to reload", || async {
            seen(&c, "w", &|e| {
                matches!(e, Event::CertificatesReloaded { .. })
            }) == 1
        })
        .await;
        // The old one revoked: crl.pem beside every ca.pem, SIGHUP to all.
        let o = std::process::Command::new(BIN)
            .args(["certs", "revoke", "--ca-dir"])
            .arg(&c.certs)
            .arg("--cert")
            .arg(&old)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::copy(c.certs.join("crl.pem"), w.join("crl.pem")).unwrap();
        c.signal("n0", "HUP");
        c.signal("w", "HUP");
        let (results, _) = match tokio::time::timeout(Duration::from_secs(60), job.result()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("{e}\n{}", c.logs()),
            Err(_) => panic!("the job stopped: w could not rejoin\n{}", c.logs()),
        };
        assert_eq!(results.len(), 60);
    });
    // Its link of the revoked certificate was closed, and it linked again.
    assert!(
        seen(
            &c,
            "n0",
            &|e| matches!(e, Event::WorkerLost { worker, .. } if worker == "w")
        ) >= 1,
        "{}",
        c.logs()
    );
    assert!(seen(&c, "w", &|e| matches!(e, Event::LinkedToMaster { .. })) >= 2);
}

/// ZooKeeper locked down, end to end: nodes, clients and the command line
/// reach it over its TLS port with their certificates and a job runs;
/// ZooKeeper's own client (`zkCli.sh`), without the cluster's credentials
/// on the plain port, can neither read, delete, alter nor join anything of
/// the cluster.
#[test]
fn zookeeper_over_tls_takes_only_the_clusters_certificates() {
    use probe::{Behaviour, Probe};
    use ringleader::client::SubmitOptions;
    use ringleader::{Client, Collect};
    let mut c = Cluster::new(BIN);
    c.node("n0", &[]);
    c.node("n1", &["--role", "worker"]);
    let plain = c.servers[0].connect_string();
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await;
        c.workers(&zk, 2, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let tasks: Vec<Probe> = (0..6)
            .map(|value| Probe {
                value,
                behaviour: Behaviour::Ok,
            })
            .collect();
        let opts = SubmitOptions {
            shard_size: Some(1),
            ..Default::default()
        };
        let job = client.submit::<Collect<Probe>>(tasks, opts).await.unwrap();
        let (results, _) = job.result().await.unwrap();
        assert_eq!(results.len(), 6);
    });
    let (code, out, err) = run(&c, "status", &[]);
    assert_eq!(code, 0, "{out}{err}");
    let layout = c.layout();
    let election = format!("{}/election/_c_x-latch-0000000000", layout.root());
    let (master, jobs) = (layout.master(), layout.jobs());
    for args in [
        vec!["get", master.as_str()],
        vec!["ls", jobs.as_str()],
        vec!["delete", jobs.as_str()],
        vec!["set", layout.root(), "x"],
        vec!["create", election.as_str(), "x"],
    ] {
        let o = std::process::Command::new("/usr/share/zookeeper/bin/zkCli.sh")
            .args(["-server", &plain])
            .args(&args)
            .env("ZOO_LOG_DIR", c.dir.path())
            .output()
            .expect("zkCli.sh (Debian's zookeeper package)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            text.contains("Insufficient permission"),
            "zkCli {args:?} was not refused:\n{text}"
        );
    }
}

/// What ZooKeeper's TLS port refuses is a clear error at start, naming the
/// certificate and what to do, within seconds and without a retry loop
/// that hides it: a node or client of another CA, and a port mix-up
/// either way (TLS to the plain port, plain to the TLS port).
#[test]
fn zookeeper_refuses_what_is_not_the_clusters_node() {
    let mut c = Cluster::new(BIN);
    c.node("n0", &[]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await;
    });
    let other = c.path("other-certs");
    ringleader::pki::make_cluster_certs(&other).unwrap();
    // Another CA's node that trusts this cluster's CA too: ZooKeeper's
    // certificate checks out, and ZooKeeper refuses the node's.
    let trusting = c.path("trusting-certs");
    ringleader::pki::make_cluster_certs(&trusting).unwrap();
    ringleader::pki::trust(&trusting, &c.certs.join("ca.pem")).unwrap();
    let trusting = trusting.display().to_string();
    let other = other.display().to_string();
    let other_ca = format!("{other}/ca.pem");
    let certs = c.certs.display().to_string();
    let plain = c.servers[0].connect_string();
    let secure = c.zk_connect();
    // (what, command, --zk-tls, zk, certs, what stderr must say)
    type Case<'a> = (&'a str, &'a str, bool, &'a str, &'a str, &'a [&'a str]);
    let cases: [Case; 6] = [
        (
            "node of another CA",
            "node",
            true,
            &secure,
            &other,
            &["refused", "does not check out", &other_ca],
        ),
        (
            "client of another CA",
            "status",
            true,
            &secure,
            &other,
            &["refused", "does not check out", &other_ca],
        ),
        (
            "node of another CA trusting this one",
            "node",
            true,
            &secure,
            &trusting,
            &["refused the certificate in", &trusting, "ssl.trustStore"],
        ),
        (
            "TLS to the plain port",
            "node",
            true,
            &plain,
            &certs,
            &["--zk-tls", "TLS"],
        ),
        (
            "plain to the TLS port",
            "node",
            false,
            &secure,
            &certs,
            &["--zk-tls"],
        ),
        (
            "client plain to the TLS port",
            "status",
            false,
            &secure,
            &certs,
            &["--zk-tls"],
        ),
    ];
    for (what, cmd, tls, zk, dir, says) in cases {
        let mut command = std::process::Command::new(BIN);
        command
            .args([cmd, "--zk", zk, "--cluster", &c.cluster, "--certs", dir])
            .env("RINGLEADER_ZK_TLS", tls.to_string());
        if cmd == "node" {
            command.args(["--node-id", "stranger", "--listen", "127.0.0.1:0"]);
        }
        let started = Instant::now();
        let (status, _, err) =
            Background::start(command, c.dir.path(), &format!("refused-{cmd}-{tls}"))
                .wait(Duration::from_secs(40));
        assert!(!status.success(), "{what}: {err}");
        for s in says {
            assert!(
                err.contains(s),
                "{what}: the error does not say {s:?}:\n{err}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: {:?}",
            started.elapsed()
        );
    }
}

/// ZooKeeper stops answering the client while it looks for the master
/// (its connection is declared dead and made again): the submission waits
/// it out instead of failing with "no response from connection".
#[test]
fn a_client_looking_for_the_master_rides_out_a_silent_zookeeper() {
    use probe::Probe;
    use ringleader::client::SubmitOptions;
    use ringleader::coord::Connection;
    use ringleader::{Client, Collect};
    let mut c = Cluster::new(BIN);
    c.node("n0", &[]);
    let proxy = Proxy::start(&c.zk_connect());
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let mut cfg = client_config(&c);
        cfg.zk = proxy.addr().to_string();
        // Connected to ZooKeeper; the master is read at the first request.
        let client = Client::connect(cfg).await.unwrap();
        let mut changes = client.session().connections();
        proxy.set_delay(Duration::from_secs(60));
        let submit = client.submit::<Collect<Probe>>(ok_probes(4), SubmitOptions::default());
        let heal = async {
            let seen = tokio::time::timeout(Duration::from_secs(30), async {
                while changes.changed().await != Connection::Disconnected {}
            })
            .await;
            proxy.set_delay(Duration::ZERO);
            seen.is_ok()
        };
        let (job, disconnected) = tokio::join!(submit, heal);
        assert!(
            disconnected,
            "the client's connection to ZooKeeper never dropped"
        );
        assert!(proxy.replies_delayed() > 0, "no reply was held");
        let job = job.expect("a submission while ZooKeeper was silent for a while");
        assert_eq!(job.result().await.unwrap().0.len(), 4);
    });
}

/// A client outlives its ZooKeeper session: cut from ZooKeeper until the
/// session expires, it starts a new one when it next needs `/master`, and
/// follows a failover that happened meanwhile.
#[test]
fn a_client_whose_session_expired_follows_the_next_master() {
    use probe::Probe;
    use ringleader::client::SubmitOptions;
    use ringleader::coord::Connection;
    use ringleader::{Client, Collect};
    let mut c = Cluster::new(BIN);
    c.node("n0", &[]);
    let proxy = Proxy::start(&c.zk_connect());
    rt().block_on(async {
        let zk = c.zk().await;
        let first = c.master(&zk, None, Duration::from_secs(20)).await;
        assert_eq!(first.node_id, "n0");
        c.node("n1", &[]);
        c.workers(&zk, 2, Duration::from_secs(20)).await;
        let mut cfg = client_config(&c);
        cfg.zk = proxy.addr().to_string();
        let client = Client::connect(cfg).await.unwrap();
        let job = client
            .submit::<Collect<Probe>>(ok_probes(3), SubmitOptions::default())
            .await
            .unwrap();
        assert_eq!(job.result().await.unwrap().0.len(), 3);

        // Cut until the client itself declares its session expired.
        let mut changes = client.session().connections();
        proxy.cut();
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Connection::Ended { expired } = changes.changed().await {
                    return expired;
                }
            }
        })
        .await
        .expect("the client's session never ended");
        assert!(ended, "the client's session was closed, not expired");
        proxy.heal();
        // The master dies meanwhile: the client must read `/master` again.
        c.kill9("n0");
        let second = c
            .master(&zk, Some(first.epoch), Duration::from_secs(30))
            .await;
        assert_eq!(second.node_id, "n1");
        let job = client
            .submit::<Collect<Probe>>(ok_probes(4), SubmitOptions::default())
            .await
            .expect("a submission after the session expired and the master changed");
        assert_eq!(job.result().await.unwrap().0.len(), 4);
        assert!(matches!(
            client.session().connection(),
            Connection::Connected
        ));
    });
}

/// A caller that blocks between requests leaves its runtime unpolled: the
/// client's QUIC connection to the master idles out meanwhile (nothing
/// answers the master's packets, nothing sends the keep-alives), with the
/// master healthy. The next request dials it again at once. It used to
/// take the broken exchange for a failing master and wait half a second
/// for a successor first: 600 ms added to the request, every time.
#[test]
fn a_request_after_an_idle_spell_dials_the_same_master_again_at_once() {
    use probe::Probe;
    use ringleader::client::SubmitOptions;
    use ringleader::{Client, Collect};
    let mut c = Cluster::new(BIN);
    c.node("n0", &[]);
    let rt = rt();
    let client = rt.block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let job = client
            .submit::<Collect<Probe>>(ok_probes(2), SubmitOptions::default())
            .await
            .unwrap();
        assert_eq!(job.result().await.unwrap().0.len(), 2);
        client
    });
    // The fastest of three tries: one stall of a loaded machine is not
    // the finding, and the old path took at least 600 ms each time.
    let mut fastest = Duration::MAX;
    let mut idled_out = 0;
    for i in 0..3u64 {
        std::thread::sleep(ringleader::transport::LINK_TIMEOUT * 3);
        let t = Instant::now();
        rt.block_on(async {
            let job = client
                .submit::<Collect<Probe>>(ok_probes(i + 1), SubmitOptions::default())
                .await
                .unwrap();
            assert_eq!(job.result().await.unwrap().0.len() as u64, i + 1);
        });
        fastest = fastest.min(t.elapsed());
        idled_out += u32::from(client.connections_dialled() > i + 1);
    }
    assert_eq!(idled_out, 3, "the connection outlived each idle spell");
    assert!(
        fastest < Duration::from_millis(450),
        "a request after an idle spell took {fastest:?} at best"
    );
}

/// `local --linger-secs` says how to reach the cluster from another shell,
/// and the lines it prints work as pasted.
#[test]
fn a_lingering_local_cluster_prints_the_lines_that_reach_it() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = write_tasks(&dir.path().join("t.jsonl"), &[ok(1)]);
    let mut local = std::process::Command::new(BIN)
        .args([
            "local",
            "probe",
            "--nodes",
            "1",
            "--linger-secs",
            "60",
            &tasks,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::of(local.stderr.take().unwrap());
    let status = lines.until(Duration::from_secs(60), |line| {
        line.trim()
            .strip_prefix(&format!("{BIN} status "))
            .map(str::to_string)
    });
    // And the variables a program's `ClientConfig::from_env` reads.
    lines.until(Duration::from_secs(10), |line| {
        let line = line.trim();
        (line.starts_with("export RINGLEADER_ZK=") && line.contains("RINGLEADER_CLUSTER=local"))
            .then_some(())
    });
    let o = std::process::Command::new(BIN)
        .arg("status")
        .args(status.split_whitespace())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let _ = std::process::Command::new("kill")
        .args(["-INT", &local.id().to_string()])
        .status();
    let ended = local.wait().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("leader node-0"), "{out}");
    assert!(ended.success(), "{ended:?}");
}

/// Ctrl-C while a submission's inputs are still being read (here, a pipe
/// that never ends) stops the command at once, saying nothing was
/// submitted (exit 130), and nothing was.
#[test]
fn ctrl_c_while_the_inputs_are_read_submits_nothing_and_says_so() {
    let mut c = Cluster::new(BIN);
    c.node("n0", &[]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await;
    });
    let fifo = c.path("endless.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // A writer that never writes: the reader waits for ever.
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(fifo))
    };
    let fifo_arg = fifo.display().to_string();
    let child = c
        .cli_command("submit", &["probe", "--job-id", "never", &fifo_arg])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Once the command catches SIGINT (its handler is installed when the
    // inputs start being read), Ctrl-C.
    let catches_sigint = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (2 - 1)) != 0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !catches_sigint() {
        assert!(Instant::now() < deadline, "the command never caught SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("nothing was submitted"), "{err}");
    drop(writer.join());
    let (code, _, err) = run(&c, "result", &["never"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no job never"), "{err}");
}

/// A worker that stalls (SIGSTOP) for ever longer, each stall less than
/// twice the one before, keeps its link, though the last stall is longer
/// than the link timeout: the master's threshold grew with what the link
/// showed, and the worker's own detector takes its stall for its own.
/// Killed, the worker is still suspected, and long before its session
/// expires.
#[test]
fn a_worker_that_stalls_ever_longer_keeps_its_link_and_a_killed_one_is_still_suspected() {
    use probe::{Behaviour, Probe};
    use ringleader::client::SubmitOptions;
    use ringleader::{Client, Collect};
    let mut c = Cluster::new(BIN);
    let metrics = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    let timeout = ["--link-timeout-ms", "1000", "--session-timeout-ms", "20000"];
    c.node(
        "n0",
        &[&timeout[..], &["--metrics-addr", &metrics]].concat(),
    );
    let rt = rt();
    let zk = rt.block_on(c.zk());
    rt.block_on(c.master(&zk, None, Duration::from_secs(20)));
    c.node("n1", &timeout);
    rt.block_on(c.workers(&zk, 2, Duration::from_secs(20)));
    let linked = |c: &Cluster| {
        c.audit()
            .iter()
            .filter(|e| e.node == "n1" && matches!(e.event, Event::LinkedToMaster { .. }))
            .count()
    };
    rt.block_on(eventually(Duration::from_secs(20), "n1 linked", || async {
        linked(&c) == 1
    }));
    let lost = || {
        scrape(&metrics, "ringleader_worker_links_lost_total", "")
            + scrape(&metrics, "ringleader_links_silent_total", "")
    };
    assert_eq!(lost(), 0.0);
    // Each stall ends well within the threshold the last one left (twice
    // it), and the last is longer than the link timeout.
    for stall_ms in [600, 900, 1400] {
        c.signal("n1", "STOP");
        std::thread::sleep(Duration::from_millis(stall_ms));
        c.signal("n1", "CONT");
        // Heard again (its keep-alives resume at once) before the next.
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert_eq!(lost(), 0.0, "{}", c.logs());
    assert_eq!(linked(&c), 1, "n1 linked once, never again: {}", c.logs());
    // The link is alive, not merely unjudged: a job runs on it (the
    // master's own worker runs shards only when no other worker can).
    let client = rt.block_on(Client::connect(client_config(&c))).unwrap();
    let tasks: Vec<Probe> = (0..4)
        .map(|value| Probe {
            value,
            behaviour: Behaviour::HangOn("n0".into()),
        })
        .collect();
    let (out, report) = rt
        .block_on(client.run::<Collect<Probe>>(tasks, SubmitOptions::default()))
        .unwrap();
    assert!(report.failures.is_empty() && out.len() == 4, "{report:?}");
    // Killed, it is suspected by its link, with a session of 20 s.
    let killed = Instant::now();
    c.kill9("n1");
    rt.block_on(eventually(
        Duration::from_secs(15),
        "the killed worker suspected by its link",
        || async { scrape(&metrics, "ringleader_links_silent_total", "") == 1.0 },
    ));
    assert!(killed.elapsed() < Duration::from_secs(15));
}

/// Nothing unreadable stops a master: with an unfinished job of a type
/// this binary does not register (a word count, left by a node of another
/// binary) and a job record that does not decode (a newer version's) in
/// ZooKeeper, a node takes over and serves. Both are quarantined: `jobs`
/// shows each with its reason, the gauge counts them, every other job
/// runs, and no master steps down (one used to, then won again and again:
/// 1,396 sessions in 40 s). A cancel takes the readable one away.
#[test]
fn a_job_the_master_cannot_read_or_run_is_quarantined_and_every_other_job_runs() {
    use ringleader::coord::{JobRecord, JobStatus};
    let metrics = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    let mut c = Cluster::new(BIN);
    let tasks = (0..3)
        .map(|i| serde_bytes::ByteBuf::from(format!("text {i}").into_bytes()))
        .collect();
    let other = JobRecord {
        job_name: "word-count".into(),
        options: ringleader::wire::JobOptions {
            shard_size: 1,
            max_attempts: 3,
            shard_timeout_ms: None,
            stream: false,
            priority: 0,
            fairness_key: None,
            not_before_ms: None,
            under: Vec::new(),
        },
        tasks_total: 3,
        batches: 0,
        status: JobStatus::Accepted,
        created_ms: 1,
        fetched_ms: None,
        digest: None,
        owner: None,
        inline: Some(tasks),
        result: None,
        incarnation: 5,
        shape: None,
    };
    rt().block_on(async {
        let zk = c.zk().await;
        c.plant_job(&zk, "count1", &other).await;
        c.plant_garbage(&zk, "newer", b"\x9f\xa5a record of another version")
            .await;
    });
    c.node("m", &["--slots", "2", "--metrics-addr", &metrics]);
    let dir = c.path("quarantine");
    std::fs::create_dir_all(&dir).unwrap();
    let two = write_tasks(&dir.join("two.jsonl"), &[ok(1), ok(2)]);
    let (code, out, err) = run(&c, "submit", &["probe", &two]);
    assert_eq!(code, 0, "{err}\n{}", c.logs());
    assert_eq!(out.lines().count(), 2, "{out}");

    let (code, out, err) = run(&c, "jobs", &[]);
    assert_eq!(code, 0, "{err}");
    let line = |id: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("job {id} ")))
            .unwrap_or_else(|| panic!("no {id} in:\n{out}"))
            .to_string()
    };
    let count1 = line("count1");
    assert!(
        count1.contains("quarantined")
            && count1.contains("job type \"word-count\" is not registered")
            && count1.contains("cancel it"),
        "{count1}"
    );
    let newer = line("newer");
    assert!(
        newer.contains("quarantined") && newer.contains("cannot be read"),
        "{newer}"
    );
    // The gauge is refreshed at most every 200 ms.
    let quarantined = |want: f64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while scrape(&metrics, "ringleader_jobs_quarantined", "") != want {
            assert!(Instant::now() < deadline, "the gauge never said {want}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    quarantined(2.0);
    let logs = c.logs();
    assert!(logs.contains("job quarantined"), "{logs}");
    assert!(!logs.contains("master stepping down"), "{logs}");

    let (code, _, err) = run(&c, "cancel", &["count1"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(&c, "jobs", &[]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("job count1 ") && l.contains("cancelled")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("job newer ")), "{out}");
    quarantined(1.0);
}

/// A rolling upgrade of the application that changes a task's types:
/// nodes of the first build (`probe`) and of a second (`PROBE_TYPES=2`:
/// the `probe` task has a field more) in one cluster. A master gives a
/// job's shards only to workers whose types are its own and says which
/// workers run other types; a client of the other types is refused; a
/// master of the second build quarantines the first build's unfinished
/// job, which finishes, exact, once a master of the first build is back.
/// Nothing fails and nothing is decoded as the other types.
#[test]
fn during_a_rolling_upgrade_of_task_types_each_job_runs_only_on_workers_of_its_types() {
    let port = || format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    let (m1, m2) = (port(), port());
    let tasks_run = |addr: &str| scrape(addr, "ringleader_tasks_run_total", "job_type=\"probe\"");
    let mut c = Cluster::new(BIN);
    let second = |mut cmd: std::process::Command| {
        let o = cmd.env("PROBE_TYPES", "2").output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // The first build's master; a candidate and worker of the second
    // build; a worker of the first.
    c.node("n0", &[]);
    let first_master = rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(30)).await
    });
    assert_eq!(first_master.node_id, "n0");
    c.node_env
        .insert("n2".into(), vec![("PROBE_TYPES".into(), "2".into())]);
    c.node("n2", &["--metrics-addr", &m2]);
    c.node("n1", &["--role", "worker", "--metrics-addr", &m1]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 3, Duration::from_secs(30)).await;
    });
    let (code, out, err) = run(&c, "status", &["--json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let worker = |id: &str| {
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["node_id"] == id)
            .unwrap_or_else(|| panic!("no {id}: {status}"))
            .clone()
    };
    assert_eq!(worker("n2")["other_types"], serde_json::json!(["probe"]));
    assert_eq!(worker("n1")["other_types"], serde_json::json!([]));
    let (_, text, _) = run(&c, "status", &[]);
    assert!(
        text.lines().any(|l| l.starts_with("worker n2 ")
            && l.contains("runs probe with other task types than the master's")),
        "{text}"
    );

    // A job of the first build's types runs on its worker only.
    let dir = c.path("types");
    std::fs::create_dir_all(&dir).unwrap();
    let oks: Vec<String> = (1..=20).map(ok).collect();
    let twenty = write_tasks(&dir.join("twenty.jsonl"), &oks);
    let (code, out, err) = run(&c, "submit", &["probe", &twenty]);
    assert_eq!(code, 0, "{err}\n{}", c.logs());
    assert_eq!(out.lines().count(), 20, "{out}");
    assert!(tasks_run(&m1) >= 20.0, "the first build's worker ran them");
    assert_eq!(tasks_run(&m2), 0.0, "the second build's worker ran none");

    // A client of the second build is refused, and told why.
    let (code, _, err) = second(c.cli_command("submit", &["probe", &twenty]));
    assert_ne!(code, 0);
    assert!(
        err.contains("job type probe is defined differently"),
        "{err}"
    );

    // A job of the first build's types, left waiting on a gate.
    let gate = dir.join("gate");
    let held = write_tasks(
        &dir.join("held.jsonl"),
        &[
            format!(
                r#"{{"value":1,"behaviour":{{"WaitFor":"{}"}}}}"#,
                gate.display()
            ),
            ok(2),
        ],
    );
    let (code, _, err) = run(
        &c,
        "submit",
        &["probe", "--job-id", "held", "--detach", &held],
    );
    assert_eq!(code, 0, "{err}");

    // The first build's master stops: the second build's takes over.
    c.signal("n0", "TERM");
    let second_master = rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, Some(first_master.epoch), Duration::from_secs(30))
            .await
    });
    assert_eq!(second_master.node_id, "n2");
    let (code, out, err) = run(&c, "jobs", &[]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("job held "))
        .unwrap_or_else(|| panic!("no held in:\n{out}"));
    assert!(
        line.contains("quarantined") && line.contains("other task and result types"),
        "{line}"
    );
    // The second build's jobs run, on its own worker (the only one).
    let (code, out, err) = second(c.cli_command("submit", &["probe", &twenty]));
    assert_eq!(code, 0, "{err}\n{}", c.logs());
    assert_eq!(out.lines().count(), 20, "{out}");
    assert!(tasks_run(&m2) >= 20.0, "the second build's worker ran them");

    // A master of the first build is back: the held job finishes, exact.
    std::fs::write(&gate, b"open").unwrap();
    c.node("n0", &[]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 3, Duration::from_secs(30)).await;
    });
    c.signal("n2", "TERM");
    let third = rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, Some(second_master.epoch), Duration::from_secs(30))
            .await
    });
    assert_eq!(third.node_id, "n0");
    let (code, out, err) = run(&c, "result", &["held", "--wait"]);
    assert_eq!(code, 0, "{err}\n{}", c.logs());
    let mut values: Vec<&str> = out.lines().collect();
    values.sort();
    assert_eq!(values.len(), 2, "{out}");
    let logs = c.logs();
    assert!(
        !logs.contains("cannot decode"),
        "nothing decoded as the other types:\n{logs}"
    );
}

/// The cluster's feature level: `features show` says it and what each
/// node follows; `features upgrade` refuses while a node of a release
/// before feature levels is live (naming it), then raises it; from then
/// on result records are written as maps of named fields; and a node of
/// a build that does not follow the cluster's level refuses to start.
#[test]
fn the_feature_level_rises_only_when_every_live_node_follows_it_and_is_never_outrun() {
    use ringleader::coord::{JobRecord, ResultForm, WorkerInfo};
    let mut c = Cluster::new(BIN);
    // A cluster an earlier release made (it had a master, and no level
    // was raised): it keeps level 0 until `features upgrade`. (A new
    // cluster starts at the highest level its first nodes follow.)
    rt().block_on(async {
        let zk = c.zk().await;
        c.plant(&zk, &c.layout().epoch(), &1u64.to_be_bytes()).await;
    });
    c.node("n0", &[]);
    c.node("n1", &["--role", "worker"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 2, Duration::from_secs(30)).await;
    });
    let (code, out, err) = run(&c, "features", &["show"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("feature level 0 (this build follows up to 2)"),
        "{out}"
    );
    assert!(out.contains("level 1: result records are written as maps of named fields (they can gain fields) (off)"), "{out}");
    assert!(
        out.contains("node n0 follows 2 (all,") && out.contains("node n1 follows 2 (worker,"),
        "{out}"
    );
    assert!(
        out.contains("`features upgrade` would raise it to 2"),
        "{out}"
    );

    // A worker of a release before feature levels (a registration and
    // nothing else) holds the level back.
    let old = c.layout().worker("old");
    let info = WorkerInfo {
        addr: "127.0.0.1:9".into(),
        slots: 1,
        jobs: vec!["probe".into()],
        build: String::new(),
        protocol: None,
        shapes: Default::default(),
    };
    rt().block_on(async {
        let zk = c.zk().await;
        c.plant(&zk, &old, &ringleader::wire::encode_named(&info).unwrap())
            .await;
    });
    let (code, _, err) = run(&c, "features", &["upgrade"]);
    assert_eq!(code, 3, "refused: {err}");
    assert!(
        err.contains("the feature level stays 0: old (a release before feature levels)"),
        "{err}"
    );
    // Below level 2 a delayed job is refused: a master of a release
    // before delayed jobs could take over and start it at once.
    let dir = c.path("features");
    std::fs::create_dir_all(&dir).unwrap();
    let one = write_tasks(&dir.join("one.jsonl"), &[ok(1)]);
    let (code, _, err) = run(&c, "submit", &["probe", "--delay", "5", "--detach", &one]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("delayed jobs need the cluster's feature level 2 and it is 0")
            && err.contains("run `ringleader features upgrade`"),
        "{err}"
    );
    rt().block_on(async {
        let zk = c.zk().await;
        zk.delete(&old, None).await.unwrap();
    });
    let (code, out, err) = run(&c, "features", &["upgrade"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("feature level raised from 0 to 2"), "{out}");
    let (code, out, _) = run(&c, "features", &["upgrade"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to raise"), "{out}");
    // The master follows the raise, and `status` says so.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out, _) = run(&c, "status", &[]);
        let first = out.lines().next().unwrap_or_default().to_string();
        if first.contains(", feature level 2, build probe") {
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The master follows the raise: a job's result record is named.
    let (code, _, err) = run(
        &c,
        "submit",
        &["probe", "--job-id", "named", "--detach", &one],
    );
    assert_eq!(code, 0, "{err}");
    let form = rt().block_on(async {
        let zk = c.zk().await;
        let path = c.layout().job("named");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (data, _) = zk.get_data(&path).await.unwrap();
            let record: JobRecord = rmp_serde::from_slice(&data).unwrap();
            if let Some(result) = record.result {
                break result.form;
            }
            assert!(Instant::now() < deadline, "{}", c.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(form, ResultForm::Named);
    let (code, out, err) = run(&c, "result", &["named"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");

    // A level this build does not follow: a node of it refuses to start.
    rt().block_on(async {
        let zk = c.zk().await;
        let record = ringleader::coord::FeaturesRecord {
            level: 99,
            raised_ms: 1,
            by: "a later build".into(),
        };
        let (_, stat) = zk.get_data(&c.layout().features()).await.unwrap();
        zk.set_data(
            &c.layout().features(),
            &ringleader::wire::encode_named(&record).unwrap(),
            Some(stat.version),
        )
        .await
        .unwrap();
    });
    c.node("n2", &["--role", "worker"]);
    let status = c.wait_exit("n2", Duration::from_secs(30));
    assert!(!status.success());
    let log = c.log("n2");
    assert!(
        log.contains("the cluster's feature level is 99 and this build follows up to 2"),
        "{log}"
    );
}

/// Issue 33, item 1: behind a backlog of lower jobs that fills every
/// worker's queue, a job of priority 9 runs first: lower runs waiting in
/// the worker's queue are revoked to make room, and the worker runs the
/// higher ones next. When it ends, the backlog has moved by about the run
/// that held the slot (taking turns with the five jobs, it would have
/// waited behind some twenty of their runs). A priority past 9 is refused
/// by the command line and by the master, each saying the range.
#[test]
fn a_job_of_a_higher_priority_runs_before_the_backlog_of_lower_ones() {
    use probe::{Behaviour, Probe};
    use ringleader::client::{ClientError, SubmitOptions};
    use ringleader::{Client, Collect};
    let mut c = Cluster::new(BIN);
    c.node("m", &["--role", "candidate"]);
    c.node("w", &["--role", "worker", "--slots", "1"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(30)).await;
        c.workers(&zk, 1, Duration::from_secs(30)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let sleepers = |first: u64| -> Vec<Probe> {
            (first..first + 8)
                .map(|value| Probe {
                    value,
                    behaviour: Behaviour::Sleep(100),
                })
                .collect()
        };
        let one_per_shard = |id: String, priority: u8| SubmitOptions {
            job_id: Some(id),
            shard_size: Some(1),
            priority,
            ..Default::default()
        };
        let mut backlog = Vec::new();
        for i in 0..5 {
            let opts = one_per_shard(format!("low-{i}"), 0);
            let job = client.submit::<Collect<Probe>>(sleepers(i * 8), opts);
            backlog.push(job.await.unwrap());
        }
        let done = || async {
            let mut done = 0;
            for i in 0..5 {
                let p = client.progress(&format!("low-{i}")).await.unwrap();
                done += p.counters.tasks_done;
            }
            done
        };
        // The worker is busy with the backlog, its queue full.
        let deadline = Instant::now() + Duration::from_secs(30);
        while done().await == 0 {
            assert!(Instant::now() < deadline, "the backlog never started\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = done().await;
        let urgent = probe::oks(100, 3);
        let opts = one_per_shard("urgent".into(), 9);
        let job = client.submit::<Collect<Probe>>(urgent, opts).await.unwrap();
        let (results, _) = job.result().await.unwrap();
        let after = done().await;
        assert_eq!(results.len(), 3);
        assert!(
            after - before <= 6,
            "the backlog moved by {} runs while the urgent job waited ({before} done before, 40 in all)",
            after - before
        );
        assert!(after < 30, "{after} of 40 backlog runs done first");
        // Priorities past 9 are refused, by the master too.
        let opts = one_per_shard("too-urgent".into(), 10);
        let refused = client.submit::<Collect<Probe>>(probe::oks(0, 1), opts).await;
        match refused {
            Err(ClientError::Refused { message, .. }) => {
                assert!(message.contains("use 0 (the default) to 9"), "{message}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a priority of 10 was accepted"),
        }
        for job in backlog {
            let (results, report) = job.result().await.unwrap();
            assert_eq!((results.len(), report.progress.counters.tasks_failed), (8, 0));
        }
    });
    // The command line says the range before anything is sent, and takes
    // a priority in it.
    let dir = c.dir.path().to_path_buf();
    let one = write_tasks(&dir.join("one.jsonl"), &[ok(1)]);
    let (code, _, err) = run(&c, "submit", &["probe", "--priority", "10", &one]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("10 is not in 0..=9"), "{err}");
    let (code, out, err) = run(&c, "submit", &["probe", "--priority", "7", &one]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains('2'), "{out}");
    // The listing says each job's priority, and filters by it (jobs
    // whose result was not fetched yet: fetched ones are collected).
    for (id, p) in [("kept-7", "7"), ("kept-0", "0")] {
        let (code, _, err) = run(
            &c,
            "submit",
            &["probe", "--priority", p, "--job-id", id, "--detach", &one],
        );
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = run(&c, "jobs", &["--priority", "7"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("job kept-7 probe") && out.contains(", priority 7"),
        "{out}"
    );
    assert!(!out.contains("kept-0"), "{out}");
}

/// Issue 33, item 2: two fairness keys with weights 1 and 3 (`fairness
/// set`), each with a backlog of one-task jobs that keeps the worker busy:
/// the slots go a quarter and three quarters. A weight is set with an
/// admin's certificate only, and a job names another principal's key only
/// as an admin.
#[test]
fn fairness_keys_get_slots_in_proportion_to_the_weights_set_on_the_command_line() {
    use probe::{Behaviour, Probe};
    use ringleader::client::{ClientError, Refusal, SubmitOptions};
    use ringleader::{Client, ClientConfig, Collect};
    let mut c = Cluster::new(BIN);
    c.node("m", &["--role", "candidate"]);
    c.node("w", &["--role", "worker", "--slots", "2"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(30)).await;
        c.workers(&zk, 1, Duration::from_secs(30)).await;
    });
    let (code, out, err) = run(&c, "fairness", &["set", "heavy", "--weight", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("heavy: weight 3"), "{out}");
    let alice = c.dir.path().join("alice-certs");
    ringleader::pki::issue_to(&c.certs, ringleader::pki::Role::Client, "alice", &alice).unwrap();
    rt().block_on(async {
        let client = Client::connect(client_config(&c)).await.unwrap();
        let sleepers = |first: u64| -> Vec<Probe> {
            (first..first + 40)
                .map(|value| Probe {
                    value,
                    behaviour: Behaviour::Sleep(50),
                })
                .collect()
        };
        let mut ids = Vec::new();
        for i in 0..2u64 {
            for key in ["light", "heavy"] {
                let id = format!("{key}-{i}");
                let opts = SubmitOptions {
                    job_id: Some(id.clone()),
                    shard_size: Some(1),
                    fairness_key: Some(key.into()),
                    ..Default::default()
                };
                client
                    .submit::<Collect<Probe>>(sleepers(i * 40), opts)
                    .await
                    .unwrap();
                ids.push(id);
            }
        }
        let done = || async {
            let (mut light, mut heavy) = (0, 0);
            for id in &ids {
                let p = client.progress(id).await.unwrap();
                match id.starts_with("heavy") {
                    true => heavy += p.counters.tasks_done,
                    false => light += p.counters.tasks_done,
                }
            }
            (light, heavy)
        };
        let until = |n: u64| {
            let done = &done;
            async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let (light, heavy) = done().await;
                    if light + heavy >= n {
                        return (light, heavy);
                    }
                    assert!(Instant::now() < deadline, "{light} + {heavy} done of {n}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        // Past the runs placed as the jobs came, the shares hold.
        let (l0, h0) = until(20).await;
        let (l1, h1) = until(80).await;
        let heavy = (h1 - h0) as f64 / ((h1 - h0) + (l1 - l0)) as f64;
        assert!(
            (0.62..=0.88).contains(&heavy),
            "heavy had {:.0}% of the slots ({h0}->{h1} heavy, {l0}->{l1} light)",
            100.0 * heavy
        );
        // Shown by `status`, with what waits, while the backlog does.
        let status = client.status().await.unwrap();
        let heavy_key = status.fairness.iter().find(|k| k.key == "heavy");
        assert!(
            heavy_key.is_some_and(|k| k.weight == 3 && k.queued > 0),
            "{:?}",
            status.fairness
        );
        let (code, out, err) = run(&c, "status", &[]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("fair share: heavy weight 3,"), "{out}");
        // Listed with their weights and what waits.
        let list = client.fairness().await.unwrap();
        let weight = |k: &str| list.keys.iter().find(|f| f.key == k).map(|f| f.weight);
        assert_eq!(
            (weight("heavy"), weight("light")),
            (Some(3), Some(1)),
            "{list:?}"
        );
        for id in &ids {
            client.cancel(id).await.unwrap();
        }
        // Alice is a client: she sets no weight, and names no other
        // principal's key (her own she may).
        let mut cfg = ClientConfig::new(c.zk_connect(), c.cluster.clone(), alice.clone());
        cfg.master_wait = Duration::from_secs(30);
        cfg.zk_tls = c.zk_tls;
        let alice = Client::connect(cfg).await.unwrap();
        match alice.set_fairness("client:alice", 9).await {
            Err(ClientError::Refused { kind, message }) => {
                assert_eq!(kind, Refusal::Forbidden, "{message}");
                assert!(message.contains("admin"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let named = |key: &str| SubmitOptions {
            fairness_key: Some(key.into()),
            ..Default::default()
        };
        let theirs = alice
            .submit::<Collect<Probe>>(probe::oks(0, 1), named("client:local"))
            .await;
        assert!(
            matches!(&theirs, Err(e) if e.refusal() == Some(Refusal::Forbidden)),
            "{:?}",
            theirs.err()
        );
        let own = alice
            .submit::<Collect<Probe>>(probe::oks(0, 1), named("client:alice"))
            .await
            .unwrap();
        assert_eq!(own.result().await.unwrap().0.len(), 1);
    });
    let (code, out, err) = run(&c, "fairness", &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("heavy") && l.contains(" 3 ")),
        "{out}"
    );
}

/// Issue 33, item 4: a delayed job (`submit --delay`, `--at`,
/// `SubmitOptions::not_before`) is acknowledged at once, listed as
/// scheduled with its time by `jobs` and `status`, runs none of its tasks
/// before its time, also when its master is killed while it waits, and
/// runs promptly after it; a delayed job cancelled while it waits never
/// runs; a time past runs at once. A new cluster starts at the feature
/// level that accepts delayed jobs.
#[test]
fn a_delayed_job_runs_nothing_before_its_time_across_a_failover_and_can_be_cancelled_while_it_waits(
) {
    use ringleader::client::SubmitOptions;
    use ringleader::{Client, Collect};
    let mut c = Cluster::new(BIN);
    c.node("n0", &[]);
    c.node("n1", &[]);
    let first = rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 2, Duration::from_secs(30)).await;
        c.master(&zk, None, Duration::from_secs(30)).await
    });
    let (code, out, err) = run(&c, "features", &["show"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("feature level 2 (this build follows up to 2)"),
        "{out}"
    );

    let dir = c.path("delays");
    std::fs::create_dir_all(&dir).unwrap();
    let three = write_tasks(&dir.join("three.jsonl"), &[ok(1), ok(2), ok(3)]);
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let submitted = now_ms();
    let (code, out, err) = run(
        &c,
        "submit",
        &[
            "probe", "--detach", "--job-id", "later", "--delay", "20s", &three,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "later");
    assert!(
        err.contains("job later accepted, scheduled for 20"),
        "{err}"
    );
    // `--at` in another zone, far enough ahead to be cancelled first.
    let at = time::OffsetDateTime::now_utc()
        .to_offset(time::UtcOffset::from_hms(5, 30, 0).unwrap())
        + time::Duration::minutes(10);
    let at = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (code, _, err) = run(
        &c,
        "submit",
        &["probe", "--detach", "--job-id", "gone", "--at", &at, &three],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&c, "submit", &["probe", "--at", "tomorrow", &three]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("write a time in RFC 3339 with a zone"),
        "{err}"
    );

    let (code, out, err) = run(&c, "jobs", &["--state", "scheduled"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("job later probe scheduled for 20"), "{out}");
    assert!(out.contains("job gone probe scheduled for"), "{out}");
    assert!(out.contains("2 running (2 scheduled)"), "{out}");
    let (_, out, _) = run(&c, "jobs", &["--state", "running"]);
    assert!(
        out.contains("no jobs"),
        "a scheduled job is not running yet: {out}"
    );
    let (_, out, _) = run(&c, "status", &[]);
    assert!(out.contains("job later probe scheduled for"), "{out}");

    let (code, _, err) = run(&c, "cancel", &["gone"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(&c, "jobs", &["--state", "scheduled"]);
    assert!(!out.contains("job gone"), "{out}");
    assert!(out.contains("1 running (1 scheduled)"), "{out}");

    // The master dies while the job waits; the next one keeps its time.
    c.kill9(&first.node_id);
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, Some(first.epoch), Duration::from_secs(60))
            .await
    });
    let due = submitted + 20_000;
    let (done_at, polls) = rt().block_on(async {
        let client = Client::connect(client_config(&c)).await.unwrap();
        let mut polls = 0;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let p = client.progress("later").await.unwrap();
            let seen = now_ms();
            if p.counters.tasks_done > 0 {
                break (seen, polls);
            }
            if seen + 500 < due {
                polls += 1;
            }
            assert!(Instant::now() < deadline, "never ran\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(
        polls > 10,
        "the job was looked at while it waited ({polls} times)"
    );
    // The CLI's clock is the master's here: nothing ran before the time.
    assert!(done_at >= due, "a task was done {} ms early", due - done_at);
    assert!(done_at < due + 10_000, "done {} ms late", done_at - due);
    let (code, out, err) = run(&c, "result", &["later", "--wait"]);
    assert_eq!(code, 0, "{err}");
    let values: Vec<&str> = out.lines().collect();
    assert_eq!(
        values,
        [
            r#"{"index":0,"output":2}"#,
            r#"{"index":1,"output":4}"#,
            r#"{"index":2,"output":6}"#
        ]
    );
    // A time past runs at once; the Rust API's option as well.
    rt().block_on(async {
        let client = Client::connect(client_config(&c)).await.unwrap();
        // Cancelled while it waited: nothing of it ran (a cancelled job
        // with nothing to fetch may be gone already).
        match client.progress("gone").await {
            Ok(p) => assert_eq!(
                (p.state, p.counters.tasks_done),
                (ringleader::wire::JobState::Cancelled, 0)
            ),
            Err(e) => assert!(e.to_string().contains("no job gone"), "{e}"),
        }
        let opts = SubmitOptions {
            job_id: Some("past".into()),
            not_before: Some(std::time::SystemTime::now() - Duration::from_secs(60)),
            ..Default::default()
        };
        let job = client.submit::<Collect<probe::Probe>>(probe::oks(5, 2), opts);
        let (results, _) = job.await.unwrap().result().await.unwrap();
        assert_eq!(results.len(), 2);
    });
}

/// Issue 33, item 3: limits set on the command line (`limits set`,
/// stored with the cluster) hold the runs of the jobs under them
/// (`SubmitOptions::under`, `submit --under`) across every worker: at most
/// one at a time under `--max-running 1`, though four slots stand free,
/// with the shards waiting shown as such; at most five a second under
/// `--rate 5`. A new master keeps them. Setting one takes an admin's
/// certificate; `limits delete` lets the jobs go on.
#[test]
fn limits_set_on_the_command_line_hold_the_runs_of_their_jobs_across_workers_and_a_failover() {
    use probe::{Behaviour, Probe};
    use ringleader::client::{ClientError, Refusal, SubmitOptions};
    use ringleader::{Client, ClientConfig, Collect};
    let mut c = Cluster::new(BIN);
    c.node("m0", &["--role", "candidate"]);
    c.node("m1", &["--role", "candidate"]);
    c.node("w1", &["--role", "worker", "--slots", "2"]);
    c.node("w2", &["--role", "worker", "--slots", "2"]);
    let first = rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 2, Duration::from_secs(30)).await;
        c.master(&zk, None, Duration::from_secs(30)).await
    });
    let (code, out, err) = run(&c, "limits", &["set", "one", "--max-running", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "limit one: at most 1 running");
    let (code, out, err) = run(
        &c,
        "limits",
        &["set", "slow", "--rate", "5", "--per", "1s", "--burst", "1"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "limit slow: 5 per 1s (burst 1)");
    let (code, _, err) = run(&c, "limits", &["set", "bare"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("a limit needs --max-running N, --rate N, or both"),
        "{err}"
    );

    let sleepers = |first: u64, n: u64, ms: u64| -> Vec<Probe> {
        (first..first + n)
            .map(|value| Probe {
                value,
                behaviour: Behaviour::Sleep(ms),
            })
            .collect()
    };
    let under = |id: &str, limits: &[&str]| SubmitOptions {
        job_id: Some(id.into()),
        shard_size: Some(1),
        under: limits.iter().map(|l| l.to_string()).collect(),
        ..Default::default()
    };
    // Held to one run at a time, beside a job under no limit that uses
    // the other slots.
    let (most, waiting_seen) = rt().block_on(async {
        let client = Client::connect(client_config(&c)).await.unwrap();
        let started = Instant::now();
        let capped = client
            .submit::<Collect<Probe>>(sleepers(0, 8, 100), under("capped", &["one"]))
            .await
            .unwrap();
        let free = client
            .submit::<Collect<Probe>>(sleepers(100, 8, 100), under("free", &[]))
            .await
            .unwrap();
        let (mut most, mut waiting_seen) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = client.progress("capped").await.unwrap();
            if p.state.is_final() {
                break;
            }
            let list = client.limits().await.unwrap();
            let one = list.limits.iter().find(|l| l.key == "one").unwrap();
            most = most.max(one.running);
            if one.waiting_shards > 0 {
                waiting_seen += 1;
            }
            assert!(Instant::now() < deadline, "{}", c.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (results, _) = capped.result().await.unwrap();
        assert_eq!(results.len(), 8);
        assert!(
            started.elapsed() >= Duration::from_millis(800),
            "eight 100 ms runs one at a time took {:?}",
            started.elapsed()
        );
        let (results, _) = free.result().await.unwrap();
        assert_eq!(results.len(), 8);
        (most, waiting_seen)
    });
    assert_eq!(most, 1, "runs held at once under limit one");
    assert!(waiting_seen > 0, "its shards were seen waiting on it");

    // Paced at five a second (the bucket holds one): ten take 1.8 s.
    let dir = c.path("limits");
    std::fs::create_dir_all(&dir).unwrap();
    let ten: Vec<String> = (0..10).map(ok).collect();
    let ten = write_tasks(&dir.join("ten.jsonl"), &ten);
    let started = Instant::now();
    let (code, out, err) = run(
        &c,
        "submit",
        &["probe", "--under", "slow", "--shard-size", "1", &ten],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 10, "{out}");
    assert!(
        started.elapsed() >= Duration::from_millis(1700),
        "ten runs at five a second took {:?}",
        started.elapsed()
    );

    // A client may not set one.
    let alice = c.dir.path().join("alice-certs");
    ringleader::pki::issue_to(&c.certs, ringleader::pki::Role::Client, "alice", &alice).unwrap();
    rt().block_on(async {
        let mut cfg: ClientConfig = client_config(&c);
        cfg.certs = alice.clone();
        let client = Client::connect(cfg).await.unwrap();
        let spec = ringleader::wire::LimitSpec {
            max_running: Some(100),
            ..Default::default()
        };
        match client.set_limit("one", spec).await {
            Err(ClientError::Refused {
                kind: Refusal::Forbidden,
                message,
            }) => assert!(
                message.contains("an admin's or a node's certificate"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
    });

    // The next master keeps them, and holds jobs to them.
    c.kill9(&first.node_id);
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, Some(first.epoch), Duration::from_secs(60))
            .await
    });
    let (code, out, err) = run(&c, "limits", &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("at most 1 running") && out.contains("5 per 1s (burst 1)"),
        "{out}"
    );
    let most = rt().block_on(async {
        let client = Client::connect(client_config(&c)).await.unwrap();
        let job = client
            .submit::<Collect<Probe>>(sleepers(200, 4, 100), under("after", &["one"]))
            .await
            .unwrap();
        let mut most = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client.progress("after").await.unwrap().state.is_final() {
            let list = client.limits().await.unwrap();
            let one = list.limits.iter().find(|l| l.key == "one").unwrap();
            most = most.max(one.running);
            assert!(Instant::now() < deadline, "{}", c.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(job.result().await.unwrap().0.len(), 4);
        most
    });
    assert_eq!(
        most, 1,
        "runs held at once under limit one after the failover"
    );
    let (code, out, err) = run(&c, "limits", &["delete", "slow"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "limit slow deleted");
    let (_, out, _) = run(&c, "limits", &["list"]);
    assert!(!out.contains("per 1s"), "{out}");
}
