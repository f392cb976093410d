#![allow(clippy::unwrap_used)]
//! End-to-end tests: real ZooKeeper, real QUIC, real node processes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringleader::client::Client;

/// Test 6: the cluster's count equals the single-process count, on a Zipf
/// corpus and on text with non-ASCII whitespace; test 7: resubmitting an id
/// returns the job, and fetched jobs leave ZooKeeper.
#[test]
fn word_count_matches_single_process_and_zookeeper_empties() {
    let mut c = cluster();
    let (corpus, baseline) = corpus(c.dir.path(), 4, 1);
    for i in 0..3 {
        c.node(&format!("n{i}"), &[]);
    }
    count_matches(&c, &corpus, &baseline, &["--job-id", "wc-1"]);

    // Non-ASCII whitespace and multi-byte words split at every size.
    let text = "día\u{a0}noche día\u{3000}夜 夜\u{2029}día\tnoche\u{85}x ".repeat(5000);
    let special = c.path("special.txt");
    std::fs::write(&special, &text).unwrap();
    let mut want = wordcount::Counts::default();
    wordcount::count_str(&text, false, &mut want);
    let want_file = c.path("special-want.tsv");
    wordcount::write_counts(&want_file, &want).unwrap();
    let out2 = c.path("special.tsv");
    let o = c.cli(
        "submit",
        &[
            "--split-mib",
            "1",
            "--output",
            out2.to_str().unwrap(),
            special.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_file(&out2, &want_file);

    // Resubmitting an id finds the job instead of running it twice (before
    // its result is fetched; after fetch + retention it is gone).
    let first = c.cli(
        "submit",
        &["--job-id", "wc-0", "--detach", corpus.to_str().unwrap()],
    );
    assert!(String::from_utf8_lossy(&first.stderr).contains("accepted"));
    let again = c.cli(
        "submit",
        &["--job-id", "wc-0", "--detach", corpus.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        again.status.success() && err.contains("already exists"),
        "resubmission: {err}"
    );
    let out0 = c.path("out0.tsv");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let o = c.cli("result", &["wc-0", "--output", out0.to_str().unwrap()]);
        if o.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "result wc-0: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_same_file(&out0, &baseline);

    // `status --json` names the leader and the three workers.
    let o = c.cli("status", &["--json"]);
    let json = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && json.contains("\"leader\":\"n"),
        "{json}"
    );
    assert_eq!(json.matches("\"connected\":true").count(), 3, "{json}");

    // Fetched results leave ZooKeeper (retention 0 in tests).
    rt().block_on(async {
        let zk = c.zk().await;
        let jobs = c.layout().jobs();
        eventually(
            Duration::from_secs(20),
            "ZooKeeper to hold no job data",
            || async {
                zk.list_children(&jobs)
                    .await
                    .map(|j| j.is_empty())
                    .unwrap_or(false)
            },
        )
        .await;
    });
}

/// Test 2: kill -9 a worker mid-job; the job completes with the exact result.
#[test]
fn worker_killed_mid_job_loses_nothing() {
    let mut c = cluster();
    let (corpus, baseline) = corpus(c.dir.path(), 16, 2);
    c.node("master", &["--role", "candidate"]);
    c.node("w1", &["--role", "worker"]);
    c.node("w2", &["--role", "worker"]);
    rt().block_on(async {
        let client = Client::connect(client_config(&c)).await.expect("client");
        let job = job_in_flight(&client, &corpus).await;
        c.kill9("w1");
        assert_exact(&job, &baseline, &c.path("out.tsv")).await;
    });
}

/// Test 3: kill -9 the master mid-job; the next candidate takes over from
/// ZooKeeper and the job completes exactly (a shard committed twice would
/// double its words); the waiting client follows the new master.
#[test]
fn master_killed_mid_job_next_one_finishes_it() {
    let mut c = cluster();
    let (corpus, baseline) = corpus(c.dir.path(), 16, 3);
    for i in 0..3 {
        c.node(&format!("n{i}"), &[]);
    }
    rt().block_on(async {
        let zk = c.zk().await;
        let first = c.master(&zk, None, Duration::from_secs(30)).await;
        let client = Client::connect(client_config(&c)).await.expect("client");
        let job = job_in_flight(&client, &corpus).await;
        let killed = Instant::now();
        c.kill9(&first.node_id);
        let second = c
            .master(&zk, Some(first.epoch), Duration::from_secs(30))
            .await;
        let failover = killed.elapsed();
        assert_ne!(second.node_id, first.node_id);
        assert!(second.epoch > first.epoch);
        eprintln!(
            "failover after kill -9: {failover:?} (the nodes' session timeout {} ms)",
            first.session_timeout_ms
        );
        assert_exact(&job, &baseline, &c.path("out.tsv")).await;
    });
}

/// Test 1 (part): a graceful stop of the leader hands over without waiting
/// for session expiry, and exactly one new leader serves.
#[test]
fn graceful_leader_stop_hands_over_at_once() {
    let mut c = cluster();
    for i in 0..3 {
        c.node(&format!("n{i}"), &["--role", "candidate"]);
    }
    rt().block_on(async {
        let zk = c.zk().await;
        let first = c.master(&zk, None, Duration::from_secs(30)).await;
        // Every candidate registered before the handover.
        let election = c.layout().election();
        eventually(Duration::from_secs(20), "3 candidates", || async {
            zk.list_children(&election)
                .await
                .map(|v| v.len() == 3)
                .unwrap_or(false)
        })
        .await;
        let t = Instant::now();
        c.signal(&first.node_id, "TERM");
        let second = c
            .master(&zk, Some(first.epoch), Duration::from_secs(30))
            .await;
        let took = t.elapsed();
        assert!(
            second.epoch == first.epoch + 1,
            "exactly one new leader: epochs {} -> {}",
            first.epoch,
            second.epoch
        );
        // The nodes' own session timeout (as the master published it), not
        // this test's session's: a handover waiting for expiry takes that.
        let node_timeout = Duration::from_millis(first.session_timeout_ms);
        assert!(node_timeout > Duration::ZERO, "{first:?}");
        assert!(
            took < node_timeout,
            "handover took {took:?}, not below the nodes' session timeout {node_timeout:?}"
        );
        eprintln!("graceful handover: {took:?}");
        let status = c.wait_exit(&first.node_id, Duration::from_secs(15));
        assert!(status.success(), "stopped node exit status {status:?}");
        let cands = zk.list_children(&election).await.unwrap();
        assert_eq!(
            cands.len(),
            2,
            "the stopped node's candidacy is gone: {cands:?}"
        );
    });
}

/// Test 5 (part): a missing input file and ZooKeeper down give clear errors.
#[test]
fn clear_errors_for_missing_input_and_missing_zookeeper() {
    let c = cluster();
    let o = c.cli("submit", &["/no/such/input.txt"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("/no/such/input.txt"),
        "{err}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("x.txt");
    std::fs::write(&f, "a b").unwrap();
    let port = ringleader::zkserver::free_port().unwrap();
    let o = std::process::Command::new(BIN)
        .args(["submit", "--zk", &format!("127.0.0.1:{port}"), "--certs"])
        .arg(&c.certs)
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert!(
        err.contains("cannot connect to ZooKeeper")
            && err.contains(&format!(
                "connection refused (nothing listens on port {port})"
            ))
            && err.contains("check --zk"),
        "{err}"
    );

    // Nonsense in --zk is said to be nonsense, at once.
    let started = std::time::Instant::now();
    let o = std::process::Command::new(BIN)
        .args(["status", "--zk", "zookeeper.example", "--certs"])
        .arg(&c.certs)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert!(
        err.contains("\"zookeeper.example\" is not host:port"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// The newcomer's path: `certs` writes usable certificates, and `local`
/// runs ZooKeeper plus nodes (with the demo's own arguments, over
/// ZooKeeper's TLS port), returns the exact count, and leaves no
/// process, port or directory behind.
#[test]
fn certs_and_local_commands_work_and_clean_up() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let o = std::process::Command::new(BIN)
        .args(["certs", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // One machine's directory: an admin client, and the CA's key from
    // which each node issues its own certificate for its id.
    use ringleader::transport::tls::Identity;
    let client = Identity::client(&certs).unwrap();
    assert_eq!(client.id().to_string(), "admin local");
    let node = Identity::node(&certs, Some("n1"), || unreachable!()).unwrap();
    assert_eq!(node.id().to_string(), "node n1");

    let (corpus, baseline) = corpus(tmp.path(), 2, 5);
    let out = tmp.path().join("out.tsv");
    // The demo's own command line (scripts/demo), on a small corpus.
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/demo"))
        .unwrap();
    let line = demo
        .lines()
        .find_map(|l| l.strip_prefix("$bin local "))
        .expect("scripts/demo runs `$bin local`");
    let args: Vec<String> = line
        .split(" 2>")
        .next()
        .unwrap()
        .split_whitespace()
        .map(|a| match a {
            "\"$work/counts.tsv\"" => out.display().to_string(),
            "\"$work/corpus.txt\"" => corpus.display().to_string(),
            a => {
                assert!(!a.contains('$'), "an unknown variable in the demo: {a}");
                a.to_string()
            }
        })
        .collect();
    let o = std::process::Command::new(BIN)
        .arg("local")
        .args(["--split-mib", "1"])
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{args:?}: {err}");
    // Its ZooKeeper was reached over TLS.
    assert!(err.contains("(TLS)"), "{err}");
    assert_same_file(&out, &baseline);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("distinct; top 10"), "{stdout}");
    let work = err
        .lines()
        .find_map(|l| l.strip_prefix("local work dir (removed at exit unless --keep): "))
        .unwrap();
    assert!(
        !std::path::Path::new(work).exists(),
        "{work} was left behind"
    );
    let zk = err
        .lines()
        .find_map(|l| l.split("ZooKeeper at ").nth(1))
        .unwrap()
        .split([',', ' '])
        .next()
        .unwrap();
    assert!(
        std::net::TcpStream::connect(zk).is_err(),
        "ZooKeeper at {zk} still runs"
    );
    for m in err
        .lines()
        .filter_map(|l| l.split("metrics: http://").nth(1))
    {
        let addr = m.trim_end_matches("/metrics");
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "a node still serves metrics at {addr}"
        );
    }
}

/// A task whose input a worker cannot read (it passed no check at submit:
/// the Rust client sends tasks as built) fails with the reason after its
/// attempts, and the rest of the job completes with the exact counts.
#[test]
fn an_input_a_worker_cannot_read_fails_its_task_and_the_rest_completes() {
    let mut c = cluster();
    let (corpus, baseline) = corpus(c.dir.path(), 2, 4);
    c.node("n1", &[]);
    let mut tasks =
        wordcount::plan(&[corpus.display().to_string()], 256 << 10, false).expect("plan");
    tasks.push(wordcount::CountWords {
        input: "/no/such/input.txt".into(),
        offset: 0,
        len: 10,
        normalize: false,
    });
    rt().block_on(async {
        let client = Client::connect(client_config(&c)).await.unwrap();
        let opts = ringleader::SubmitOptions {
            shard_size: Some(1),
            max_attempts: Some(2),
            ..Default::default()
        };
        let job = client
            .submit::<wordcount::WordCount>(tasks, opts)
            .await
            .unwrap();
        let (counts, report) = job.result().await.unwrap();
        assert_eq!(report.progress.counters.tasks_failed, 1, "{report:?}");
        let f = &report.failures[0];
        assert!(
            f.error.contains("cannot read /no/such/input.txt") && f.attempt == 2,
            "{f:?}"
        );
        let out = c.path("out.tsv");
        wordcount::write_counts(&out, &counts).unwrap();
        assert_same_file(&out, &baseline);
    });
}

/// On one host, nodes with their own `--data-dir` and no `--store` share
/// the cluster's default store: split counts over ZooKeeper's inline
/// limit, written by one node, are merged by another. A master whose
/// `--store` is another place refuses every other worker, saying what to
/// give, and steps down for one of theirs; that master then refuses the
/// odd node's worker in turn.
#[test]
fn nodes_of_one_host_share_the_default_store_and_a_master_storing_elsewhere_steps_down() {
    use ringleader::audit::Event;
    let mut c = cluster();
    // 100,000 words: each 1 MiB split's counts exceed the inline limit.
    let (corpus, baseline) = corpus_with(c.dir.path(), 3, 7, 100_000);
    let elsewhere = c.path("elsewhere");
    c.node("odd", &["--store", elsewhere.to_str().unwrap()]);
    let next = rt().block_on(async {
        let zk = c.zk().await;
        let first = c.master(&zk, None, Duration::from_secs(20)).await;
        assert_eq!(first.node_id, "odd", "the odd node stands first");
        for n in ["n1", "n2"] {
            let dir = c.path(&format!("{n}-data"));
            c.node(n, &["--data-dir", dir.to_str().unwrap()]);
        }
        c.master(&zk, Some(first.epoch), Duration::from_secs(60))
            .await
    });
    assert!(next.node_id == "n1" || next.node_id == "n2", "{next:?}");
    let log = c.log("odd");
    for said in [
        "is not this master's",
        "give every node the same --store",
        "every other worker's node stores elsewhere than this master",
    ] {
        assert!(log.contains(said), "{said:?} not in:\n{log}");
    }
    let audit = c.audit();
    assert!(
        audit.iter().any(|e| e.node == "odd"
            && matches!(&e.event, Event::SteppedDown { workers: 2, refusals } if *refusals >= 3)),
        "{audit:?}"
    );

    count_matches(&c, &corpus, &baseline, &[]);
    // Nothing went to the nodes' own data directories: one store.
    for n in ["n1", "n2"] {
        assert!(!c.path(&format!("{n}-data/store")).exists());
    }

    // The new master refuses the odd node's worker, naming both stores.
    rt().block_on(eventually(
        Duration::from_secs(30),
        "the odd node's worker refused by the new master",
        || async {
            c.audit().iter().any(|e| {
                e.node == "odd"
                    && matches!(&e.event, Event::JoinRefused { master, reason, .. }
                        if *master == next.node_id
                            && reason.contains("is not this master's")
                            && reason.contains(elsewhere.to_str().unwrap_or_default()))
            })
        },
    ));
}
