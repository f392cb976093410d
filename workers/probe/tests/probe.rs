#![allow(clippy::unwrap_used)]
//! Task failures end to end: panics are retried, permanent failures and
//! exhausted attempts are reported with their message, a task that aborts
//! its process kills only the workers it runs on, and the budget of a
//! ZooKeeper request is enforced with a clear error.

use std::time::Duration;

use probe::{Behaviour, Probe};
use ringleader::audit::Event;
use ringleader::client::SubmitOptions;
use ringleader::testkit::*;
use ringleader::{Client, Collect};

const BIN: &str = env!("CARGO_BIN_EXE_probe");

fn probes(n: u64, special: &[(u64, Behaviour)]) -> Vec<Probe> {
    (0..n)
        .map(|value| {
            let behaviour = special
                .iter()
                .find(|(i, _)| *i == value)
                .map_or(Behaviour::Ok, |(_, b)| b.clone());
            Probe { value, behaviour }
        })
        .collect()
}

/// A cluster whose master is candidate `m1`, with `m2` standing by.
fn two_candidates_m1_leading() -> Cluster {
    two_candidates_m1_leading_with(&[])
}

/// [`two_candidates_m1_leading`], `m2` started with `m2_extra` too.
fn two_candidates_m1_leading_with(m2_extra: &[&str]) -> Cluster {
    let mut c = Cluster::new(BIN);
    c.node("m1", &["--role", "candidate"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await;
    });
    let mut args = vec!["--role", "candidate"];
    args.extend_from_slice(m2_extra);
    c.node("m2", &args);
    c
}

/// `n` tasks that each sleep `ms` milliseconds.
fn sleepers(n: u64, ms: u64) -> Vec<Probe> {
    (0..n)
        .map(|value| Probe {
            value,
            behaviour: Behaviour::Sleep(ms),
        })
        .collect()
}

#[test]
fn panics_retry_and_failures_are_reported_with_their_message() {
    let mut c = Cluster::new(BIN);
    c.node("n0", &[]);
    c.node("n1", &[]);
    rt().block_on(async {
        let client = Client::connect(client_config(&c)).await.unwrap();
        let tasks = probes(
            50,
            &[
                (7, Behaviour::PanicUntil(1)),
                (8, Behaviour::PanicUntil(5)),
                (9, Behaviour::Fail),
            ],
        );
        let opts = SubmitOptions {
            shard_size: Some(4),
            max_attempts: Some(3),
            ..Default::default()
        };
        let job = client.submit::<Collect<Probe>>(tasks, opts).await.unwrap();
        let (results, report) = job.result().await.unwrap();
        let got: Vec<u64> = results.iter().map(|(i, _)| *i).collect();
        let want: Vec<u64> = (0..50).filter(|i| *i != 8 && *i != 9).collect();
        assert_eq!(got, want, "every task but the two failed ones, each once");
        assert!(results.iter().all(|(i, v)| *v == i * 2));
        assert_eq!(report.progress.counters.tasks_failed, 2);
        let f8 = report.failures.iter().find(|f| f.index == 8).unwrap();
        assert_eq!(f8.attempt, 3, "{f8:?}");
        assert!(f8.error.contains("probe 8 panics on attempt 3"), "{f8:?}");
        let f9 = report.failures.iter().find(|f| f.index == 9).unwrap();
        assert_eq!(f9.attempt, 1, "permanent failures are not retried: {f9:?}");
        assert!(f9.error.contains("fails on purpose"));
        assert!(
            report.progress.counters.retries >= 3,
            "{:?}",
            report.progress
        );
    });
    assert!(c.log("n0").contains("panics on attempt") || c.log("n1").contains("panics on attempt"));
}

/// A task that aborts its process uses up an attempt per worker it kills;
/// with 2 attempts and 3 nodes, at least one node survives and the job
/// completes with that task reported failed.
#[test]
fn an_aborting_task_cannot_kill_every_worker() {
    let mut c = Cluster::new(BIN);
    for i in 0..3 {
        c.node(&format!("n{i}"), &[]);
    }
    rt().block_on(async {
        let zk = c.zk().await;
        let workers = c.layout().workers();
        c.workers(&zk, 3, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let tasks = probes(20, &[(5, Behaviour::Abort)]);
        let opts = SubmitOptions {
            shard_size: Some(1),
            max_attempts: Some(2),
            ..Default::default()
        };
        let job = client.submit::<Collect<Probe>>(tasks, opts).await.unwrap();
        let (results, report) = match job.result().await {
            Ok(r) => r,
            Err(e) => panic!("{e}\n{}", c.logs()),
        };
        assert_eq!(results.len(), 19, "{report:?}");
        assert_eq!(report.progress.counters.tasks_failed, 1);
        let f = &report.failures[0];
        assert_eq!(f.index, 5);
        assert!(f.error.contains("was lost while running"), "{f:?}");
        let alive = zk.list_children(&workers).await.unwrap();
        assert!(!alive.is_empty(), "no worker survived");
    });
}

/// A task too big for one ZooKeeper request is refused at submission with
/// the limit named; the cluster keeps serving.
#[test]
fn a_task_over_the_request_budget_is_refused_clearly() {
    let mut c = Cluster::new(BIN);
    c.node("n0", &[]);
    rt().block_on(async {
        let client = Client::connect(client_config(&c)).await.unwrap();
        let big = vec![serde_bytes::ByteBuf::from(vec![
            0u8;
            ringleader::coord::REQUEST_BUDGET
                + 1
        ])];
        let opts = ringleader::wire::JobOptions {
            shard_size: 1,
            max_attempts: 1,
            shard_timeout_ms: None,
            stream: false,
            priority: 0,
            fairness_key: None,
            not_before_ms: None,
            under: Vec::new(),
        };
        let err = client
            .submit_encoded("probe", big, opts, None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("request budget"), "{err}");
        let ok = client
            .submit::<Collect<Probe>>(probes(3, &[]), SubmitOptions::default())
            .await
            .unwrap();
        assert_eq!(ok.result().await.unwrap().0.len(), 3);
    });
}

/// A result bigger than the client accepts is a clear error at once, not
/// retries until "no master".
#[test]
fn a_result_over_the_clients_reply_limit_is_an_error_at_once() {
    let mut c = Cluster::new(BIN);
    c.node("m", &["--role", "all"]);
    rt().block_on(async {
        let mut cfg = client_config(&c);
        cfg.max_reply_bytes = 1000;
        let client = Client::connect(cfg).await.unwrap();
        let job = client
            .submit::<Collect<Probe>>(probes(300, &[]), SubmitOptions::default())
            .await
            .unwrap();
        client.wait(job.id(), |_| {}).await.unwrap();
        let asked = std::time::Instant::now();
        let err = job.result().await.unwrap_err();
        assert!(
            matches!(
                err,
                ringleader::ClientError::ReplyTooLarge { max: 1000, .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("max_reply_bytes"), "{err}");
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "{:?}",
            asked.elapsed()
        );
    });
}

/// SIGTERM on a worker: it takes nothing new, finishes and reports the
/// shards it started, hands back the rest for free, deregisters and exits 0.
/// No attempt is charged, nothing runs twice.
#[test]
fn a_worker_drains_on_sigterm() {
    let mut c = Cluster::new(BIN);
    c.node("m", &["--role", "candidate"]);
    c.node("w1", &["--role", "worker", "--slots", "2"]);
    c.node("w2", &["--role", "worker", "--slots", "2"]);
    rt().block_on(async {
        let zk = c.zk().await;
        let workers = c.layout().workers();
        c.workers(&zk, 2, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let tasks = sleepers(40, 150);
        let opts = SubmitOptions {
            shard_size: Some(1),
            max_attempts: Some(1),
            ..Default::default()
        };
        let job = client.submit::<Collect<Probe>>(tasks, opts).await.unwrap();
        eventually(Duration::from_secs(30), "some progress", || async {
            job.progress()
                .await
                .map(|p| p.counters.tasks_done >= 4)
                .unwrap_or(false)
        })
        .await;
        c.signal("w1", "TERM");
        let status = c.wait_exit("w1", Duration::from_secs(20));
        assert!(status.success(), "w1 exit {status:?}\n{}", c.log("w1"));
        let (results, report) = match job.result().await {
            Ok(r) => r,
            Err(e) => panic!("{e}\n{}", c.logs()),
        };
        assert_eq!(results.len(), 40, "{report:?}");
        assert!(results.iter().all(|(i, v)| *v == i * 2));
        assert_eq!(
            report.progress.counters.tasks_failed, 0,
            "with one attempt, a charged attempt would fail a task: {report:?}"
        );
        assert!(
            c.audit()
                .iter()
                .any(|e| e.node == "w1" && matches!(e.event, Event::Drained { .. })),
            "{}",
            c.log("w1")
        );
        eventually(
            Duration::from_secs(10),
            "the master saw w1 drain",
            || async {
                c.audit().iter().any(|e| {
                    e.event
                        == Event::WorkerDrained {
                            worker: "w1".into(),
                        }
                })
            },
        )
        .await;
        let audit = c.audit();
        assert!(
            !audit
                .iter()
                .any(|e| matches!(e.event, Event::WorkerLost { .. })),
            "{audit:?}"
        );
        let left = zk.list_children(&workers).await.unwrap();
        assert_eq!(left, vec!["w2".to_string()], "w1 deregistered");
    });
}

/// A worker whose link to the master is lost while a shard waits for its
/// slot: that shard is forgotten with the link (the next master reassigns
/// it), so a later SIGTERM drains at once instead of waiting `--drain-secs`
/// for an acknowledgement no master will send.
#[test]
fn a_worker_that_lost_its_link_while_shards_waited_still_drains_at_once() {
    let mut c = two_candidates_m1_leading();
    c.node(
        "w",
        &["--role", "worker", "--slots", "1", "--drain-secs", "60"],
    );
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let tasks = sleepers(3, 3000);
        let opts = SubmitOptions {
            shard_size: Some(1),
            ..Default::default()
        };
        let job = client.submit::<Collect<Probe>>(tasks, opts).await.unwrap();
        // Two shards per slot: one running, one waiting for the slot.
        eventually(Duration::from_secs(20), "w holds two shards", || async {
            let status = client.status().await;
            status.is_ok_and(|s| {
                s.workers
                    .iter()
                    .any(|w| w.node_id == "w" && w.in_flight == 2)
            })
        })
        .await;
        c.kill9("m1");
        let (results, report) = match job.result().await {
            Ok(r) => r,
            Err(e) => panic!("{e}\n{}", c.logs()),
        };
        assert_eq!(results.len(), 3, "{report:?}");
        assert!(
            c.audit().iter().any(|e| e.node == "w"
                && matches!(&e.event, Event::LinkLost { master, .. } if master == "m1")),
            "the link was lost\n{}",
            c.log("w")
        );
        let asked = std::time::Instant::now();
        c.signal("w", "TERM");
        let status = c.wait_exit("w", Duration::from_secs(30));
        let took = asked.elapsed();
        assert!(status.success(), "w exit {status:?}\n{}", c.log("w"));
        assert!(
            took < Duration::from_secs(15),
            "the drain took {took:?}: it waited for a shard of the lost link\n{}",
            c.log("w")
        );
        assert!(
            c.audit()
                .iter()
                .any(|e| e.node == "w" && matches!(e.event, Event::Drained { .. })),
            "{}",
            c.log("w")
        );
    });
}

/// A task that hangs on one worker: after the shard timeout the shard gets
/// a copy on another worker, the copy's result is committed, the hung one's
/// is never counted, and the job completes exactly.
#[test]
fn hung_shards_get_a_copy_elsewhere() {
    let mut c = Cluster::new(BIN);
    c.node("m", &["--role", "candidate"]);
    c.node("w1", &["--role", "worker"]);
    c.node("w2", &["--role", "worker", "--slots", "2"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 2, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let tasks: Vec<Probe> = (0..12)
            .map(|value| Probe {
                value,
                behaviour: Behaviour::HangOn("w1".into()),
            })
            .collect();
        let opts = SubmitOptions {
            shard_size: Some(1),
            max_attempts: Some(1),
            shard_timeout: Some(Duration::from_millis(800)),
            ..Default::default()
        };
        let job = client.submit::<Collect<Probe>>(tasks, opts).await.unwrap();
        let (results, report) = match job.result().await {
            Ok(r) => r,
            Err(e) => panic!("{e}\n{}", c.logs()),
        };
        assert_eq!(
            results.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..12).collect::<Vec<_>>()
        );
        assert!(results.iter().all(|(i, v)| *v == i * 2));
        assert_eq!(report.progress.counters.tasks_failed, 0, "{report:?}");
    });
    rt().block_on(eventually(
        Duration::from_secs(10),
        "speculative copies",
        || async {
            c.audit()
                .iter()
                .any(|e| matches!(e.event, Event::Speculated { copies } if copies > 0))
        },
    ));
}

/// A worker killed with kill -9 is suspected when its QUIC link goes
/// silent, not when its ZooKeeper session expires: its shards run elsewhere
/// and the job completes while its registration is still in ZooKeeper.
#[test]
fn a_killed_workers_shards_run_elsewhere_before_its_session_expires() {
    let mut c = Cluster::new(BIN);
    c.node("m", &["--role", "candidate"]);
    // The longest session the test server allows: 20 ticks of 200 ms.
    c.node(
        "w1",
        &[
            "--role",
            "worker",
            "--slots",
            "2",
            "--session-timeout-ms",
            "4000",
        ],
    );
    c.node("w2", &["--role", "worker", "--slots", "2"]);
    rt().block_on(async {
        let zk = c.zk().await;
        let w1 = format!("{}/w1", c.layout().workers());
        c.workers(&zk, 2, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let tasks = sleepers(8, 300);
        let opts = SubmitOptions {
            shard_size: Some(1),
            max_attempts: Some(3),
            ..Default::default()
        };
        let job = client.submit::<Collect<Probe>>(tasks, opts).await.unwrap();
        // Both workers got shards at once (least loaded first); after the
        // first commits, w1 holds shards of the second wave.
        eventually(Duration::from_secs(20), "some progress", || async {
            job.progress()
                .await
                .map(|p| p.counters.tasks_done >= 1)
                .unwrap_or(false)
        })
        .await;
        c.kill9("w1");
        let (results, report) = match job.result().await {
            Ok(r) => r,
            Err(e) => panic!("{e}\n{}", c.logs()),
        };
        let still_registered = zk.check_stat(&w1).await.unwrap().is_some();
        assert_eq!(results.len(), 8, "{report:?}");
        assert!(results.iter().all(|(i, v)| *v == i * 2));
        eventually(
            Duration::from_secs(10),
            "the master to suspect w1 by its link",
            || async {
                c.audit()
                    .iter()
                    .any(|e| matches!(&e.event, Event::WorkerLost { worker, .. } if worker == "w1"))
            },
        )
        .await;
        assert!(
            still_registered,
            "the job finished only after w1's session expired: suspicion by link did not work\n{}",
            c.log("m")
        );
    });
}

/// Unfinished jobs' tasks live in ZooKeeper's memory: past the cluster's
/// `--max-queued-bytes`, a submission is refused with a clear error
/// (instead of exhausting the ensemble's heap), and accepted once room is made.
#[test]
fn submissions_past_the_queued_bytes_limit_are_refused() {
    let mut c = Cluster::new(BIN);
    // A master without a worker: jobs stay queued.
    c.node("m", &["--role", "candidate", "--max-queued-bytes", "5000"]);
    rt().block_on(async {
        let client = Client::connect(client_config(&c)).await.unwrap();
        let opts = |id: &str| SubmitOptions {
            job_id: Some(id.into()),
            ..Default::default()
        };
        // About 6 bytes per task and 16 of overhead: 3,200 bytes per job.
        let first = client
            .submit::<Collect<Probe>>(probes(150, &[]), opts("first"))
            .await
            .unwrap();
        let err = match client
            .submit::<Collect<Probe>>(probes(150, &[]), opts("second"))
            .await
        {
            Ok(_) => panic!("a submission past the limit was accepted"),
            Err(e) => e,
        };
        // Not now, and nothing was done: the same submission later.
        assert!(
            matches!(err, ringleader::ClientError::Unavailable { .. }),
            "{err:?}"
        );
        assert_eq!(err.advice(), ringleader::client::Advice::Retry);
        assert!(err.to_string().contains("--max-queued-bytes"), "{err}");
        first.cancel().await.unwrap();
        client
            .submit::<Collect<Probe>>(probes(150, &[]), opts("third"))
            .await
            .expect("room was made by the cancel");
    });
}

/// ZooKeeper stopped for 5 s under a work queue: every error a submission
/// meets says by its type to retry or wait (never "refused"), each job
/// submitted again with its id until it is answered comes back exact, and
/// no job runs twice under one id. (The trial that found this: a
/// "connection reset" of ZooKeeper came back as `Refused`, whose text said
/// to retry.)
#[test]
fn a_zookeeper_outage_under_a_work_queue_says_retry_and_loses_nothing() {
    use ringleader::client::Advice;
    let mut c = Cluster::new(BIN);
    c.node("n0", &["--slots", "2"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        drop(zk);
        let mut cfg = client_config(&c);
        // Errors surface rather than waits for a master to come back.
        cfg.master_wait = Duration::from_secs(2);
        let client = Client::connect(cfg).await.unwrap();
        let outage = std::cell::Cell::new(false);
        let jobs = 60u64;
        let queue = async {
            let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
            for i in 0..jobs {
                let id = format!("zkout-{i}");
                let deadline = std::time::Instant::now() + Duration::from_secs(90);
                let (out, report) = loop {
                    let opts = SubmitOptions {
                        job_id: Some(id.clone()),
                        ..Default::default()
                    };
                    match client.run::<Collect<Probe>>(probe::oks(i, 1), opts).await {
                        Ok(r) => break r,
                        Err(e) => {
                            let advice = e.advice();
                            assert!(
                                matches!(advice, Advice::Retry | Advice::Wait),
                                "job {id}: {e:?} says {advice:?}"
                            );
                            let variant: String = format!("{e:?}")
                                .chars()
                                .take_while(|c| c.is_alphanumeric())
                                .collect();
                            *errors.entry(format!("{advice:?} {variant}")).or_default() += 1;
                            assert!(
                                std::time::Instant::now() < deadline,
                                "job {id} not answered in 90 s: {e}"
                            );
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                };
                assert_eq!(out, vec![(0, 2 * i)], "job {id}");
                assert_eq!(report.progress.counters.tasks_failed, 0);
                if i == 10 {
                    outage.set(true);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            errors
        };
        let cut = async {
            while !outage.get() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c.servers[0].kill();
            tokio::time::sleep(Duration::from_secs(5)).await;
            c.servers[0].restart().unwrap();
        };
        let (errors, ()) = futures::join!(queue, cut);
        eprintln!("errors met and retried: {errors:?}");
        assert!(
            errors.values().sum::<usize>() > 0,
            "no submission met the outage: the test saw nothing"
        );
    });
    // Each job's task committed once, under its one id.
    let mut commits = std::collections::HashMap::<String, usize>::new();
    for e in c.audit() {
        if let Event::ShardCommitted { job, .. } = e.event {
            *commits.entry(job).or_default() += 1;
        }
    }
    assert_eq!(commits.len(), 60, "{commits:?}");
    assert!(commits.values().all(|&n| n == 1), "{commits:?}");
}

/// The probe whose output [`probe::FragileSum`] cannot merge.
fn unmergeable() -> Probe {
    Probe {
        value: probe::UNMERGEABLE / 2,
        behaviour: Behaviour::Ok,
    }
}

/// Submits a [`probe::FragileSum`] job, one task per shard.
async fn submit_fragile(
    client: &Client,
    tasks: Vec<Probe>,
) -> ringleader::JobHandle<probe::FragileSum> {
    let opts = SubmitOptions {
        shard_size: Some(1),
        ..Default::default()
    };
    client
        .submit::<probe::FragileSum>(tasks, opts)
        .await
        .unwrap()
}

/// A committed shard output that the job cannot merge on the master (here
/// a user `merge_from` that refuses it) makes its tasks failed tasks of the
/// job, with the reason: the result never silently lacks them.
#[test]
fn an_output_that_cannot_be_merged_is_reported_not_dropped() {
    let mut c = Cluster::new(BIN);
    c.node("m", &["--role", "candidate"]);
    c.node("w", &["--role", "worker", "--slots", "2"]);
    rt().block_on(async {
        let client = Client::connect(client_config(&c)).await.unwrap();
        let mut tasks = probes(10, &[]);
        tasks.push(unmergeable());
        let job = submit_fragile(&client, tasks).await;
        let (sum, report) = match job.result().await {
            Ok(r) => r,
            Err(e) => panic!("{e}\n{}", c.logs()),
        };
        assert_eq!(sum, (0..10).map(|v| v * 2).sum::<u64>(), "{report:?}");
        assert_eq!(report.progress.counters.tasks_failed, 1, "{report:?}");
        let f = report.failures.iter().find(|f| f.index == 10).unwrap();
        assert!(f.error.contains("cannot be merged"), "{f:?}");
        assert!(f.error.contains("a partial this job cannot merge"), "{f:?}");
    });
}

/// The same after a failover: the new master, merging the committed
/// outputs it reads back, reports the unmergeable shard's tasks as failed.
#[test]
fn an_unmergeable_output_is_reported_after_a_failover() {
    let mut c = two_candidates_m1_leading();
    c.node("w", &["--role", "worker", "--slots", "2"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let mut tasks = probes(3, &[]);
        tasks.push(unmergeable());
        tasks.push(Probe {
            value: 4,
            behaviour: Behaviour::Sleep(2500),
        });
        let job = submit_fragile(&client, tasks).await;
        eventually(
            Duration::from_secs(20),
            "the unmergeable shard committed",
            || async {
                c.audit()
                    .iter()
                    .any(|e| matches!(&e.event, Event::MergeFailed { tasks: 1, .. }))
            },
        )
        .await;
        c.kill9("m1");
        let (sum, report) = match job.result().await {
            Ok(r) => r,
            Err(e) => panic!("{e}\n{}", c.logs()),
        };
        assert!(
            c.audit()
                .iter()
                .any(|e| { e.node == "m2" && matches!(e.event, Event::MergeFailed { .. }) }),
            "the new master met the output again\n{}",
            c.log("m2")
        );
        assert_eq!(sum, 2 * (1 + 2 + 4), "{report:?}");
        assert_eq!(report.progress.counters.tasks_failed, 1, "{report:?}");
        let f = report.failures.iter().find(|f| f.index == 3).unwrap();
        assert!(f.error.contains("cannot be merged"), "{f:?}");
    });
}

/// The `ringleader_client_requests_total` count of one kind in a scrape.
fn requests(scrape: &str, kind: &str) -> f64 {
    let prefix = format!("ringleader_client_requests_total{{request=\"{kind}\"}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A `Client::wait` running on a task of its own.
type Waiting =
    tokio::task::JoinHandle<Result<ringleader::wire::JobProgress, ringleader::ClientError>>;

/// `Client::wait` for job `id` on a task of its own; the tasks done of
/// each progress it reports, in order.
fn wait_in_background(
    client: &Client,
    id: &str,
) -> (Waiting, std::sync::Arc<std::sync::Mutex<Vec<u64>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (client, id, progress) = (client.clone(), id.to_string(), seen.clone());
    let waiting = tokio::spawn(async move {
        client
            .wait(&id, |p| {
                progress.lock().unwrap().push(p.counters.tasks_done)
            })
            .await
    });
    (waiting, seen)
}

#[test]
fn progress_is_pushed_and_a_watch_follows_a_failover() {
    let port = |_| ringleader::zkserver::free_port().unwrap();
    let (m1, m2) = (
        format!("127.0.0.1:{}", port(0)),
        format!("127.0.0.1:{}", port(1)),
    );
    let mut c = Cluster::new(BIN);
    c.node("m1", &["--role", "candidate", "--metrics-addr", &m1]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await;
    });
    c.node("m2", &["--role", "candidate", "--metrics-addr", &m2]);
    c.node("w", &["--role", "worker", "--slots", "1"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let opts = SubmitOptions {
            shard_size: Some(1),
            ..Default::default()
        };
        let job = client
            .submit::<Collect<Probe>>(sleepers(8, 300), opts)
            .await
            .unwrap();
        let (waiting, seen) = wait_in_background(&client, job.id());
        eventually(
            Duration::from_secs(20),
            "two tasks done, pushed to the waiting client",
            || async { seen.lock().unwrap().last().is_some_and(|&d| d >= 2) },
        )
        .await;
        let (_, scrape) = ringleader::prom::http_get(&m1, "/metrics").unwrap();
        assert_eq!(requests(&scrape, "GetJob"), 0.0, "nobody polled m1");
        assert_eq!(requests(&scrape, "WatchJob"), 1.0, "{scrape}");
        c.kill9("m1");
        let last = match waiting.await.unwrap() {
            Ok(p) => p,
            Err(e) => panic!("{e}\n{}", c.logs()),
        };
        assert_eq!(last.state, ringleader::wire::JobState::Done);
        assert_eq!(last.counters.tasks_done, 8);
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "progress never goes back: {seen:?}"
        );
        assert!(seen.len() >= 3, "progress came in steps: {seen:?}");
        let (_, scrape) = ringleader::prom::http_get(&m2, "/metrics").unwrap();
        assert_eq!(requests(&scrape, "GetJob"), 0.0, "nobody polled m2");
        assert!(
            requests(&scrape, "WatchJob") >= 1.0,
            "the watch followed to m2"
        );
        // The result, pushed with the job's end.
        let (results, _) = job.result().await.unwrap();
        assert_eq!(results.len(), 8);
    });
}

/// Many one-task jobs awaited at once, their results handed over as the
/// jobs end: each is marked fetched, so collection removes every one of
/// them. (A watch arriving during a job's final write once got the result
/// from memory unmarked, and the job stayed forever; `cluster-bench`
/// found it at 64 in flight. This guards the property; it does not force
/// that interleaving.) Each job's only shard commits with its end, in one
/// write: the master's metrics count no commit record. A third of the
/// jobs are `Client::run`'s, a third `submit`'s awaited by their handle,
/// both watched on the stream that submitted them.
#[test]
fn every_fetched_job_is_collected_even_under_load() {
    use futures::StreamExt;
    let metrics = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    let mut c = Cluster::new(BIN);
    c.node("n0", &["--metrics-addr", &metrics]);
    c.node("n1", &["--role", "worker"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 2, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let done: Vec<u64> = futures::stream::iter(0..300u64)
            .map(|i| {
                let client = &client;
                async move {
                    // A third submitted and awaited on one stream (`run`),
                    // a third awaited on their submission's stream by
                    // their handle, a third watched on a stream of their
                    // own (a handle made from the id).
                    let (results, _) = match i % 3 {
                        0 => {
                            let tasks = probes(1, &[]);
                            client
                                .run::<Collect<Probe>>(tasks, SubmitOptions::default())
                                .await
                                .unwrap()
                        }
                        held => {
                            let job = client
                                .submit::<Collect<Probe>>(probes(1, &[]), SubmitOptions::default())
                                .await
                                .unwrap();
                            if held == 1 {
                                job.result().await.unwrap()
                            } else {
                                let apart = client.job::<Collect<Probe>>(job.id());
                                drop(job);
                                apart.result().await.unwrap()
                            }
                        }
                    };
                    assert_eq!(results, vec![(0, 0)], "job {i}");
                    i
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        assert_eq!(done.len(), 300);
        let jobs = c.layout().jobs();
        eventually(
            Duration::from_secs(30),
            "every fetched job collected (retention 0)",
            || async { zk.list_children(&jobs).await.is_ok_and(|j| j.is_empty()) },
        )
        .await;
        // Each job's only shard was committed with its end, in one write:
        // no commit record.
        let (_, scrape) = ringleader::prom::http_get(&metrics, "/metrics").unwrap();
        let value = |prefix: &str| -> f64 {
            scrape
                .lines()
                .filter_map(|l| l.strip_prefix(prefix)?.trim().parse::<f64>().ok())
                .sum()
        };
        let writes = |op: &str| {
            value(&format!(
                "ringleader_zk_op_duration_seconds_count{{op=\"{op}\"}} "
            ))
        };
        assert_eq!(
            value("ringleader_shards_committed_total "),
            300.0,
            "{scrape}"
        );
        // A job whose shard reported before its create went was created
        // done (one write); the others ended with a finish.
        let created_done = value("ringleader_jobs_created_done_total ");
        assert_eq!(writes("finish") + created_done, 300.0, "{scrape}");
        assert_eq!(writes("commit"), 0.0, "{scrape}");
        assert_eq!(writes("create_job"), 300.0, "{scrape}");
        // Two thirds were watched on their submission's stream, and every
        // result came pushed with its job's end.
        assert_eq!(requests(&scrape, "Submit"), 300.0, "{scrape}");
        assert_eq!(requests(&scrape, "WatchJob"), 100.0, "{scrape}");
        assert_eq!(requests(&scrape, "FetchResult"), 0.0, "{scrape}");
        // A job run one at a time ends within a worker's round trip of its
        // acceptance: its watch, registered on the same stream as the
        // acceptance goes out, is there when it ends, and its end is marked
        // fetched in the same write (a separate mark is a `set_status`
        // write).
        let marks = writes("set_status");
        for _ in 0..50 {
            let (results, _) = client
                .run::<Collect<Probe>>(probes(1, &[]), SubmitOptions::default())
                .await
                .unwrap();
            assert_eq!(results, vec![(0, 0)]);
        }
        let (_, scrape) = ringleader::prom::http_get(&metrics, "/metrics").unwrap();
        let value = |prefix: &str| -> f64 {
            scrape
                .lines()
                .filter_map(|l| l.strip_prefix(prefix)?.trim().parse::<f64>().ok())
                .sum()
        };
        let op = |op: &str| {
            value(&format!(
                "ringleader_zk_op_duration_seconds_count{{op=\"{op}\"}} "
            ))
        };
        // One at a time, a job's run often comes back while its create is
        // held for it: created done, and marked fetched in that write (29
        // and 30 of 50 here, with a build loading both cores; a fifth is
        // asked, which a broken hold would not reach).
        let one_at_a_time = value("ringleader_jobs_created_done_total ") - created_done;
        assert!(
            one_at_a_time >= 10.0,
            "{one_at_a_time} of 50 created done: {scrape}"
        );
        assert_eq!(
            op("finish") + created_done + one_at_a_time,
            350.0,
            "{scrape}"
        );
        assert_eq!(op("set_status"), marks, "{scrape}");
    });
}

/// A result too big for its job's record goes to the store as an object
/// of its own; the client waiting for it gets it from the master's memory
/// with the end (marked fetched in the finish's write), not read back from
/// ZooKeeper and the store with a second mark, which cost the 256 MiB word
/// count 15-20 ms between its `Done` and its answer.
#[test]
fn a_result_stored_apart_is_handed_over_from_memory() {
    let metrics = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    let mut c = Cluster::new(BIN);
    c.node("n0", &["--role", "all", "--metrics-addr", &metrics]);
    let scrape = || ringleader::prom::http_get(&metrics, "/metrics").unwrap().1;
    let count = |scrape: &str, metric: &str, op: &str| -> f64 {
        let prefix = format!("{metric}_count{{op=\"{op}\"}} ");
        scrape
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
            .sum()
    };
    let (zk, store) = (
        "ringleader_zk_op_duration_seconds",
        "ringleader_store_op_duration_seconds",
    );
    rt().block_on(async {
        let zk_client = c.zk().await;
        c.workers(&zk_client, 1, Duration::from_secs(20)).await;
        // The node's start-up check of the store wrote and read an object.
        let before = scrape();
        let client = Client::connect(client_config(&c)).await.unwrap();
        let n = 60_000u64;
        let job = client
            .submit::<Collect<Probe>>(
                probes(n, &[]),
                SubmitOptions {
                    shard_size: Some(20_000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let (results, report) = job.result().await.unwrap();
        assert_eq!(report.progress.counters.tasks_done, n);
        assert_eq!(
            results,
            (0..n).map(|i| (i, i * 2)).collect::<Vec<_>>(),
            "the result as computed"
        );
        let encoded = rmp_serde::to_vec(&results).unwrap();
        assert!(
            encoded.len() > ringleader::coord::INLINE_LIMIT,
            "{} bytes: small enough to be kept in the record",
            encoded.len()
        );
        let after = scrape();
        let delta = |metric: &str, op: &str| count(&after, metric, op) - count(&before, metric, op);
        assert_eq!(delta(zk, "finish"), 1.0, "the job's end: {after}");
        assert_eq!(delta(store, "write"), 1.0, "the result's object: {after}");
        // Pushed on the submission's stream: no watch, no fetch asked for.
        assert_eq!(requests(&after, "WatchJob"), 0.0, "{after}");
        assert_eq!(requests(&after, "FetchResult"), 0.0, "{after}");
        // Nothing read back: the shards' outputs were kept in their
        // commits, the result came from memory.
        assert_eq!(delta(store, "read"), 0.0, "{after}");
        // Read, it is marked fetched (one write, which nobody waited for).
        eventually(
            Duration::from_secs(10),
            "the result marked fetched",
            || async {
                count(&scrape(), zk, "set_status") - count(&before, zk, "set_status") == 1.0
            },
        )
        .await;
    });
}

/// A watch follows one failover after another: each gets the client's
/// full wait for a master, however long ago the first was (the client
/// once counted from its first failure, and failed the second failover
/// at once).
#[test]
fn a_watch_follows_two_failovers_further_apart_than_its_wait() {
    let mut c = two_candidates_m1_leading();
    c.node("m3", &["--role", "candidate"]);
    c.node("w", &["--role", "worker", "--slots", "1"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let mut cfg = client_config(&c);
        let wait = Duration::from_secs(6);
        cfg.master_wait = wait;
        let client = Client::connect(cfg).await.unwrap();
        let opts = SubmitOptions {
            shard_size: Some(1),
            ..Default::default()
        };
        let job = client
            .submit::<Collect<Probe>>(sleepers(40, 300), opts)
            .await
            .unwrap();
        let (waiting, seen) = wait_in_background(&client, job.id());
        let done_now = || seen.lock().unwrap().last().copied().unwrap_or(0);
        eventually(Duration::from_secs(20), "a task done", || async {
            done_now() >= 1
        })
        .await;
        let first = c.master(&zk, None, Duration::from_secs(5)).await;
        c.kill9(&first.node_id);
        let killed_at = std::time::Instant::now();
        let second = c
            .master(&zk, Some(first.epoch), Duration::from_secs(20))
            .await;
        let before = done_now();
        eventually(
            Duration::from_secs(30),
            "progress pushed by the second master, the client's wait past",
            || async { done_now() > before && killed_at.elapsed() > wait + Duration::from_secs(1) },
        )
        .await;
        assert!(
            done_now() < 40,
            "the job must still be running: {}",
            done_now()
        );
        c.kill9(&second.node_id);
        let last = match waiting.await.unwrap() {
            Ok(p) => p,
            Err(e) => panic!("{e}\n{}", c.logs()),
        };
        assert_eq!(last.state, ringleader::wire::JobState::Done);
        assert_eq!(last.counters.tasks_done, 40);
    });
}

/// A job of one shard is scheduled while its create waits. After a
/// failover the new master holds no memory of jobs that ended before it,
/// so a resubmission of one is scheduled too; its create finds the id
/// taken, the job is discarded (nothing of it written), and the
/// resubmission is answered from ZooKeeper: the same submission finds the
/// job and its result, another is refused.
#[test]
fn a_resubmission_after_a_failover_finds_its_job_and_its_run_is_discarded() {
    let m2 = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    let mut c = two_candidates_m1_leading_with(&["--metrics-addr", &m2]);
    c.node("w", &["--role", "worker"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let opts = SubmitOptions {
            job_id: Some("again".into()),
            ..Default::default()
        };
        let (first, _) = client
            .run::<Collect<Probe>>(probes(1, &[]), opts.clone())
            .await
            .unwrap();
        assert_eq!(first, vec![(0, 0)]);
        let job_path = c.layout().job("again");
        let (stored, _) = zk.get_data(&job_path).await.unwrap();
        let m1 = c.master(&zk, None, Duration::from_secs(20)).await;
        c.signal("m1", "TERM");
        let m = c.master(&zk, Some(m1.epoch), Duration::from_secs(20)).await;
        assert_eq!(m.node_id, "m2");
        // The same submission finds the job, and its result.
        let job = client
            .submit::<Collect<Probe>>(probes(1, &[]), opts.clone())
            .await
            .unwrap();
        assert!(job.existed(), "the resubmission found its job");
        let (again, _) = job.result().await.unwrap();
        assert_eq!(again, first);
        // Another submission under the id is refused, naming it.
        let other = vec![Probe {
            value: 7,
            behaviour: Behaviour::Ok,
        }];
        let err = match client.submit::<Collect<Probe>>(other, opts).await {
            Ok(_) => panic!("another submission under a taken id was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("exists with a different submission"), "{err}");
        // Both were scheduled while their create waited, and discarded;
        // the job is as m1 wrote it.
        let (_, scrape) = ringleader::prom::http_get(&m2, "/metrics").unwrap();
        let discarded = scrape.lines().find_map(|l| {
            l.strip_prefix("ringleader_jobs_discarded_total ")?
                .trim()
                .parse::<f64>()
                .ok()
        });
        assert_eq!(discarded, Some(2.0), "{scrape}");
        let (now, _) = zk.get_data(&job_path).await.unwrap();
        assert_eq!(now, stored, "the job's record is untouched");
    });
}

/// A streamed job's outputs reach the client as they commit, each once,
/// across a failover of the master mid-job (the stream tells the next
/// master what it has); a slow reader holds nobody up: another job
/// finishes while the stream is not read. A job not submitted to be
/// streamed is refused a stream, saying how.
#[test]
fn streamed_outputs_arrive_once_each_across_a_failover() {
    let m2 = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    let mut c = two_candidates_m1_leading_with(&["--metrics-addr", &m2]);
    c.node("w", &["--role", "worker", "--slots", "2"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let opts = SubmitOptions {
            shard_size: Some(1),
            stream: true,
            ..Default::default()
        };
        let job = client
            .submit::<Collect<Probe>>(sleepers(30, 300), opts)
            .await
            .unwrap();
        let mut stream = job.stream();
        let mut outputs: Vec<(u64, u64)> = Vec::new();
        while outputs.len() < 6 {
            let (_, partial) = stream.next().await.unwrap().expect("more outputs");
            outputs.extend(partial);
        }
        // Not read while another job runs start to end.
        let other = client
            .submit::<Collect<Probe>>(probes(4, &[]), SubmitOptions::default())
            .await
            .unwrap();
        let (done, _) = tokio::time::timeout(Duration::from_secs(20), other.result())
            .await
            .expect("another job is not held up by an unread stream")
            .unwrap();
        assert_eq!(done.len(), 4);
        // The failover comes mid-job, as the test's name says.
        let now = client.progress(job.id()).await.unwrap();
        assert_eq!(now.state, ringleader::wire::JobState::Running, "{now:?}");
        assert!(now.counters.tasks_done < 30, "{now:?}");
        c.kill9("m1");
        while let Some((_, partial)) = match stream.next().await {
            Ok(item) => item,
            Err(e) => panic!("{e}\n{}", c.logs()),
        } {
            outputs.extend(partial);
        }
        let end = stream.end().expect("the end is told").clone();
        assert_eq!(end.state, ringleader::wire::JobState::Done);
        assert_eq!(end.counters.tasks_done, 30);
        let (_, scrape) = ringleader::prom::http_get(&m2, "/metrics").unwrap();
        assert!(
            requests(&scrape, "StreamJob") >= 1.0,
            "the stream followed to m2"
        );
        outputs.sort_unstable();
        let want: Vec<(u64, u64)> = (0..30).map(|i| (i, i * 2)).collect();
        assert_eq!(outputs, want, "every output once");

        // A job submitted without `stream` is not streamed.
        let plain = client
            .submit::<Collect<Probe>>(probes(2, &[]), SubmitOptions::default())
            .await
            .unwrap();
        let err = match plain.stream().next().await {
            Ok(item) => panic!("streamed a job not submitted to be: {item:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("was not submitted to be streamed"), "{err}");
    });
}

/// A job id names one incarnation: a job submitted under the id of a
/// cancelled and collected one runs its own task, and gets its own output,
/// never the cancelled run's (issue 29, finding 1: the worker took the new
/// assignment for a duplicate of the old run, whose report then counted
/// for the new job). The cancel reaches the running task, which stops.
#[test]
fn a_reused_job_id_gets_its_own_output_not_a_cancelled_runs() {
    let mut c = Cluster::new(BIN);
    c.node("p", &["--slots", "1", "--retention-secs", "1"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let opts = SubmitOptions {
            job_id: Some("x".into()),
            ..Default::default()
        };
        let first = vec![Probe {
            value: 1,
            behaviour: Behaviour::Sleep(8_000),
        }];
        let first = client
            .submit::<Collect<Probe>>(first, opts.clone())
            .await
            .unwrap();
        eventually(
            Duration::from_secs(20),
            "the first run holds the slot",
            || async {
                client
                    .status()
                    .await
                    .is_ok_and(|s| s.workers.iter().any(|w| w.in_flight == 1))
            },
        )
        .await;
        first.cancel().await.unwrap();
        eventually(
            Duration::from_secs(30),
            "the cancelled job collected",
            || async {
                client
                    .jobs(Default::default())
                    .await
                    .is_ok_and(|list| list.jobs.iter().all(|j| j.job_id != "x"))
            },
        )
        .await;
        let second = vec![Probe {
            value: 2,
            behaviour: Behaviour::Ok,
        }];
        let again = client.submit::<Collect<Probe>>(second, opts).await.unwrap();
        assert!(!again.existed(), "a new job, not the collected one");
        let (out, report) =
            match tokio::time::timeout(Duration::from_secs(30), again.result()).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => panic!("{e}\n{}", c.logs()),
                Err(_) => panic!("the new job never ran\n{}", c.logs()),
            };
        assert_eq!(out, vec![(0, 4)], "the new job's own output");
        assert_eq!(report.progress.counters.tasks_done, 1);
    });
}

/// A cancel reaches the running task (it sees `is_cancelled` and returns),
/// and the worker's slot counts as taken until the run really ends: a task
/// deaf to the cancel keeps it, as `status` shows, and the next job runs
/// once it ends (issue 29, finding 1: the slot was counted free at once,
/// and the next job queued unseen behind the cancelled run).
#[test]
fn a_cancel_stops_the_running_task_and_its_slot_is_held_until_it_ends() {
    let mut c = Cluster::new(BIN);
    c.node("p", &["--slots", "1"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let in_flight = || async {
            let s = client.status().await.unwrap();
            s.workers.iter().map(|w| w.in_flight).sum::<u32>()
        };
        let one = |behaviour| {
            vec![Probe {
                value: 3,
                behaviour,
            }]
        };
        // A task that would sleep ten minutes stops when cancelled: the next
        // job gets the slot.
        let long = client
            .submit::<Collect<Probe>>(one(Behaviour::Sleep(600_000)), SubmitOptions::default())
            .await
            .unwrap();
        eventually(
            Duration::from_secs(20),
            "the long run holds the slot",
            || async { in_flight().await == 1 },
        )
        .await;
        long.cancel().await.unwrap();
        let next = client
            .submit::<Collect<Probe>>(one(Behaviour::Ok), SubmitOptions::default())
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(30), next.result()).await {
            Ok(Ok((out, _))) => assert_eq!(out, vec![(0, 6)]),
            Ok(Err(e)) => panic!("{e}\n{}", c.logs()),
            Err(_) => panic!("the cancelled task never stopped\n{}", c.logs()),
        }
        // A task deaf to the cancel keeps its slot until it returns.
        let deaf = client
            .submit::<Collect<Probe>>(one(Behaviour::Busy(5_000)), SubmitOptions::default())
            .await
            .unwrap();
        eventually(
            Duration::from_secs(20),
            "the deaf run holds the slot",
            || async { in_flight().await == 1 },
        )
        .await;
        deaf.cancel().await.unwrap();
        assert_eq!(
            in_flight().await,
            1,
            "a cancelled run still running holds its slot"
        );
        eventually(
            Duration::from_secs(30),
            "the slot freed when the run ended",
            || async { in_flight().await == 0 },
        )
        .await;
    });
}

/// Acknowledged means durable, the fast path included (issue 29, finding
/// 5): two identical submissions at once, under the id of a job of another
/// submission that an earlier master ended, are both refused. The first
/// is scheduled while its create waits and its create finds the id taken;
/// the second came while it waited, and used to be answered `Accepted`
/// (the job existing) from memory, for a job that never was.
#[test]
fn a_resubmission_racing_a_create_that_fails_is_not_accepted() {
    let mut c = two_candidates_m1_leading();
    c.node("w", &["--role", "worker"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let opts = SubmitOptions {
            job_id: Some("taken".into()),
            ..Default::default()
        };
        client
            .run::<Collect<Probe>>(probes(1, &[]), opts.clone())
            .await
            .unwrap();
        let m1 = c.master(&zk, None, Duration::from_secs(20)).await;
        c.signal("m1", "TERM");
        c.master(&zk, Some(m1.epoch), Duration::from_secs(20)).await;
        let other = || {
            vec![Probe {
                value: 7,
                behaviour: Behaviour::Ok,
            }]
        };
        for round in 0..5 {
            let (a, b) = futures::join!(
                client.submit::<Collect<Probe>>(other(), opts.clone()),
                client.submit::<Collect<Probe>>(other(), opts.clone())
            );
            for r in [a, b] {
                match r {
                    Ok(job) => panic!(
                        "round {round}: a submission of another job under a taken id was \
                         accepted (existing: {})\n{}",
                        job.existed(),
                        c.logs()
                    ),
                    Err(e) => assert!(
                        e.to_string().contains("exists with a different submission")
                            || e.to_string().contains("submit it again"),
                        "{e}"
                    ),
                }
            }
        }
    });
}

/// A stream of a job that was being collected as it was read says it is
/// incomplete rather than ending `Done` with outputs missing (issue 29,
/// finding 6). The collection is played by deleting one of the done
/// job's commit records, as the collector does first.
#[test]
fn a_stream_that_races_a_collection_says_it_is_incomplete() {
    use ringleader::transport::{self, tls, FramedStream};
    use ringleader::wire::{Reply, Request};
    let mut c = Cluster::new(BIN);
    c.node("m", &["--slots", "2"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let master = c.master(&zk, None, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let opts = SubmitOptions {
            job_id: Some("s".into()),
            shard_size: Some(1),
            stream: true,
            ..Default::default()
        };
        let tasks: Vec<Probe> = (0..4)
            .map(|value| Probe {
                value,
                behaviour: Behaviour::Sleep(50),
            })
            .collect();
        let (out, _) = client.run::<Collect<Probe>>(tasks, opts).await.unwrap();
        assert_eq!(out.len(), 4);
        let job = c.layout().job("s");
        let records: Vec<String> = zk
            .list_children(&job)
            .await
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with('c'))
            .collect();
        assert!(!records.is_empty(), "a streamed job keeps its commit records");
        zk.delete(&format!("{job}/{}", records[0]), None)
            .await
            .unwrap();
        let identity = tls::Identity::client(&c.certs).unwrap();
        let ep = dialer(&identity);
        let conn = transport::dial_node(&ep, &master.addr, &master.node_id)
            .await
            .unwrap();
        let mut s = FramedStream::open(&conn, 1 << 20).await.unwrap();
        s.send(&Request::StreamJob {
            job_id: "s".into(),
            seen: Vec::new(),
        })
        .await
        .unwrap();
        let mut partials = 0;
        let end = loop {
            match s.recv().await.unwrap() {
                Reply::Partial { .. } => partials += 1,
                other => break other,
            }
        };
        assert!(partials < 4, "{partials} outputs sent");
        assert!(
            matches!(&end, Reply::Error { kind: ringleader::wire::ErrorKind::JobState, message } if message.contains("this stream is incomplete")),
            "{end:?}"
        );
    });
}

/// A job durable and unfinished in ZooKeeper that the master does not run
/// (the create an earlier submission attempt made, whose answer was lost,
/// here written directly) runs once a resubmission finds it: the master
/// schedules it then. It used to answer `existing` and leave it unrun
/// until a failover (issue 29, finding 6: every job durable in ZooKeeper
/// reaches a final state without one).
#[test]
fn a_durable_job_the_master_did_not_run_runs_when_it_is_resubmitted() {
    use ringleader::coord::{submission_digest, JobRecord, JobStatus};
    use ringleader::wire::JobOptions;
    let mut c = Cluster::new(BIN);
    c.node("m", &["--slots", "2"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let tasks = probes(2, &[]);
        let encoded: Vec<serde_bytes::ByteBuf> = tasks
            .iter()
            .map(|t| serde_bytes::ByteBuf::from(ringleader::wire::encode("task", t).unwrap()))
            .collect();
        // As the client sends them: the master's choice of shard size.
        let sent = JobOptions {
            shard_size: 0,
            max_attempts: 3,
            shard_timeout_ms: None,
            stream: false,
            priority: 0,
            fairness_key: None,
            not_before_ms: None,
            under: Vec::new(),
        };
        let record = JobRecord {
            job_name: "probe".into(),
            options: JobOptions {
                shard_size: 1,
                ..sent.clone()
            },
            tasks_total: 2,
            batches: 0,
            status: JobStatus::Accepted,
            created_ms: 1,
            fetched_ms: None,
            digest: Some(submission_digest("probe", &sent, &encoded)),
            owner: None,
            inline: Some(encoded),
            result: None,
            incarnation: 42,
            shape: None,
        };
        // Planted once the master has listed the jobs at its takeover.
        c.master(&zk, None, Duration::from_secs(20)).await;
        c.plant_job(&zk, "orphan", &record).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let opts = SubmitOptions {
            job_id: Some("orphan".into()),
            ..Default::default()
        };
        let job = client.submit::<Collect<Probe>>(tasks, opts).await.unwrap();
        assert!(job.existed(), "the resubmission found the job");
        match tokio::time::timeout(Duration::from_secs(30), job.result()).await {
            Ok(Ok((out, _))) => assert_eq!(out, vec![(0, 0), (1, 2)]),
            Ok(Err(e)) => panic!("{e}\n{}", c.logs()),
            Err(_) => panic!("the job never ran\n{}", c.logs()),
        }
    });
}

/// The collector's ZooKeeper reads do not grow with the jobs a master runs
/// or keeps: with 300 jobs queued and 20 done and unfetched, passes read
/// only a record they cannot know (a half-written job planted behind the
/// master's back, read once and collected, which shows the passes run).
/// They used to read every running and every unfetched job every second
/// (issue 29, finding 6).
#[test]
fn the_collectors_reads_do_not_grow_with_queued_or_unfetched_jobs() {
    use ringleader::coord::{JobRecord, JobStatus};
    let metrics = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    let mut c = Cluster::new(BIN);
    c.node("m", &["--role", "candidate", "--metrics-addr", &metrics]);
    c.node("w", &["--role", "worker", "--slots", "2"]);
    let reads = || {
        let (_, scrape) = ringleader::prom::http_get(&metrics, "/metrics").unwrap();
        scrape
            .lines()
            .find_map(|l| l.strip_prefix("ringleader_collector_reads_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("the collector's reads are counted")
    };
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        // Done, never fetched (fire and forget).
        let mut done = Vec::new();
        for value in 0..20 {
            let job = client
                .submit::<Collect<Probe>>(probes(1, &[]), SubmitOptions::default())
                .await
                .unwrap();
            done.push((value, job));
        }
        for (_, job) in &done {
            client.wait(job.id(), |_| {}).await.unwrap();
        }
        // Queued: the worker leaves, nobody runs them.
        c.signal("w", "TERM");
        c.wait_exit("w", Duration::from_secs(20));
        for _ in 0..300 {
            client
                .submit::<Collect<Probe>>(probes(1, &[]), SubmitOptions::default())
                .await
                .unwrap();
        }
        let unknown = JobRecord {
            job_name: "probe".into(),
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
            tasks_total: 1,
            batches: 0,
            status: JobStatus::Writing,
            created_ms: 1,
            fetched_ms: None,
            digest: None,
            owner: None,
            inline: Some(Vec::new()),
            result: None,
            incarnation: 9,
            shape: None,
        };
        // Two passes to settle, then a planted record, collected, and two
        // passes more.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let before = reads();
        c.plant_job(&zk, "unknown", &unknown).await;
        let path = c.layout().job("unknown");
        eventually(
            Duration::from_secs(10),
            "the planted record collected",
            || async { zk.check_stat(&path).await.is_ok_and(|s| s.is_none()) },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        let read = reads() - before;
        assert!(
            (1.0..=8.0).contains(&read),
            "{read} records read in three passes or more with 320 jobs held"
        );
    });
}

/// The figure for issue 29, finding 6 (not part of the suite: `cargo test
/// -p probe --test probe -- --ignored collector_load --nocapture`): with
/// 100,000 one-task jobs queued on a master without workers, the
/// requests ZooKeeper receives per second (its `mntr` packet count, which
/// any version shows) and the collector's reads (this version's metric).
#[test]
#[ignore]
fn collector_load_at_100000_queued_jobs() {
    use futures::StreamExt;
    let metrics = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    let mut c = Cluster::new(BIN);
    c.node(
        "m",
        &[
            "--role",
            "candidate",
            "--metrics-addr",
            &metrics,
            "--max-queued-bytes",
            "1000000000",
        ],
    );
    let packets = |c: &Cluster| {
        let addr: std::net::SocketAddr = c.servers[0].connect_string().parse().unwrap();
        let mntr = ringleader::zkserver::four_letter_at(addr, "mntr").unwrap();
        mntr.lines()
            .find_map(|l| l.strip_prefix("zk_packets_received"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap()
    };
    rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let started = std::time::Instant::now();
        futures::stream::iter(0..100_000)
            .map(|_| client.submit::<Collect<Probe>>(probes(1, &[]), SubmitOptions::default()))
            .buffer_unordered(64)
            .for_each(|r| async move {
                r.unwrap();
            })
            .await;
        println!("100,000 jobs queued in {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (p0, t0) = (packets(&c), std::time::Instant::now());
        let reads = || {
            let (_, scrape) = ringleader::prom::http_get(&metrics, "/metrics").unwrap();
            scrape
                .lines()
                .find_map(|l| l.strip_prefix("ringleader_collector_reads_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        let r0 = reads();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let secs = t0.elapsed().as_secs_f64();
        let p = (packets(&c) - p0) as f64 / secs;
        let r = match (r0, reads()) {
            (Some(a), Some(b)) => format!("{:.1}", (b - a) / secs),
            _ => "not counted by this version".into(),
        };
        println!(
            "with 100,000 jobs queued: ZooKeeper packets received {p:.0}/s; collector reads {r}/s"
        );
    });
}

/// Issue 30: `submit`, then `result()`, as fast as `run`. A handle's result
/// comes on its submission's stream (no watch, no fetch asked for), and
/// is marked fetched once read: its retention starts then (here 0 s: it
/// is collected). A handle dropped unread leaves its job to be fetched
/// later, as before; handles beyond the client's held streams fall back
/// to a watch, and every one gets its result.
#[test]
fn a_submitted_jobs_result_comes_on_its_own_stream_and_is_fetched_once_read() {
    let metrics = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    let mut c = Cluster::new(BIN);
    c.node("n0", &["--metrics-addr", &metrics, "--slots", "4"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let id = |s: &str| SubmitOptions {
            job_id: Some(s.into()),
            ..Default::default()
        };
        let read = client
            .submit::<Collect<Probe>>(probe::oks(7, 1), id("read"))
            .await
            .unwrap();
        let unread = client
            .submit::<Collect<Probe>>(probe::oks(8, 1), id("unread"))
            .await
            .unwrap();
        let (out, report) = read.result().await.unwrap();
        assert_eq!(out, vec![(0, 14)], "{report:?}");
        let (_, scrape) = ringleader::prom::http_get(&metrics, "/metrics").unwrap();
        for asked in ["WatchJob", "FetchResult", "GetJob"] {
            assert_eq!(requests(&scrape, asked), 0.0, "{asked}: {scrape}");
        }
        assert_eq!(requests(&scrape, "Submit"), 2.0, "{scrape}");
        // Marked fetched once read: collected (retention 0); the unread
        // one stays, to be fetched.
        let jobs = c.layout().jobs();
        eventually(
            Duration::from_secs(20),
            "the read job collected",
            || async {
                let left = zk.list_children(&jobs).await.unwrap_or_default();
                !left.contains(&"read".to_string()) && left.contains(&"unread".to_string())
            },
        )
        .await;
        // A program that ends as soon as it has its result (its runtime
        // and connection gone at once) leaves no job unfetched.
        let (cfg, tasks) = (client_config(&c), probe::oks(9, 1));
        std::thread::spawn(move || {
            let program = rt();
            let out = program.block_on(async {
                let client = Client::connect(cfg).await.unwrap();
                let job = client
                    .submit::<Collect<Probe>>(tasks, id("exiting"))
                    .await
                    .unwrap();
                job.result().await.unwrap().0
            });
            drop(program);
            assert_eq!(out, vec![(0, 18)]);
        })
        .join()
        .unwrap();
        eventually(
            Duration::from_secs(20),
            "the exiting program's job collected",
            || async {
                let left = zk.list_children(&jobs).await.unwrap_or_default();
                !left.contains(&"exiting".to_string())
            },
        )
        .await;
        drop(unread);
        let (out, _) = client
            .job::<Collect<Probe>>("unread")
            .result()
            .await
            .unwrap();
        assert_eq!(out, vec![(0, 16)]);

        // More handles than the client holds streams for: all answered.
        let n = ringleader::client::HELD_STREAMS as u64 + 20;
        let mut handles = Vec::new();
        for i in 0..n {
            let h = client
                .submit::<Collect<Probe>>(probe::oks(100 + i, 1), id(&format!("h{i}")))
                .await
                .unwrap();
            handles.push(h);
        }
        for (i, h) in handles.iter().enumerate().rev() {
            let (out, _) = h.result().await.unwrap();
            assert_eq!(out, vec![(0, 2 * (100 + i as u64))]);
        }
        let (_, scrape) = ringleader::prom::http_get(&metrics, "/metrics").unwrap();
        assert_eq!(
            requests(&scrape, "WatchJob"),
            21.0,
            "the unread job's later handle and the 20 past the held streams watched: {scrape}"
        );
    });
}
