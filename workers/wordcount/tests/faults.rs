#![allow(clippy::unwrap_used)]
//! Fault and bad-input tests: kill -9 and SIGSTOP of the master, watch
//! herd, garbage on the QUIC port, foreign certificates, unknown jobs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringleader::audit::Event;
use ringleader::client::Client;
use ringleader::transport::{self, tls, FramedStream};
use ringleader::wire::{JobOptions, Reply, Request};

/// Test 1: kill -9 the leader of 4 candidates: exactly one new leader, after
/// the session expires; each candidate znode is watched by at most one
/// session (the predecessor recipe: no herd).
#[test]
fn leader_kill9_elects_exactly_one_successor_without_herd() {
    let mut c = cluster();
    for i in 0..4 {
        c.node(&format!("n{i}"), &["--role", "candidate"]);
    }
    rt().block_on(async {
        let zk = c.zk().await;
        let election = c.layout().election();
        eventually(Duration::from_secs(20), "4 candidates", || async {
            zk.list_children(&election)
                .await
                .map(|v| v.len() == 4)
                .unwrap_or(false)
        })
        .await;
        let first = c.master(&zk, None, Duration::from_secs(30)).await;
        // Watches on candidate znodes: at most one watcher each, 3 in all
        // once every candidate has set its own (each sets it after listing
        // the candidates: wait for all three).
        let watches = || {
            let wchp = ringleader::zkserver::four_letter(c.servers[0].port(), "wchp").unwrap();
            let mut per_path = std::collections::BTreeMap::<String, usize>::new();
            let mut current = None;
            for line in wchp.lines() {
                if line.starts_with('/') {
                    current = Some(line.trim().to_string());
                } else if let Some(p) = &current {
                    if p.starts_with(&election) && !line.trim().is_empty() {
                        *per_path.entry(p.clone()).or_default() += 1;
                    }
                }
            }
            (per_path, wchp)
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let (per_path, wchp) = loop {
            let (per_path, wchp) = watches();
            if per_path.values().sum::<usize>() >= 3 || Instant::now() > deadline {
                break (per_path, wchp);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            per_path.values().all(|&n| n == 1),
            "a candidate znode has several watchers: {per_path:?}"
        );
        assert_eq!(
            per_path.values().sum::<usize>(),
            3,
            "each non-leader watches its predecessor: {per_path:?}\n{wchp}"
        );

        let t = Instant::now();
        c.kill9(&first.node_id);
        let second = c
            .master(&zk, Some(first.epoch), Duration::from_secs(30))
            .await;
        let took = t.elapsed();
        eprintln!("kill -9 failover: {took:?}, negotiated session timeout of the nodes: 2 s asked");
        assert_eq!(second.epoch, first.epoch + 1, "exactly one new leader");
        assert!(
            took >= Duration::from_millis(1000),
            "failover before the session could expire: {took:?}"
        );
        // Still exactly one leader a moment later: no second election happened.
        let again = ringleader::coord::read_master(&zk, &c.layout())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again, second);
        assert_eq!(zk.list_children(&election).await.unwrap().len(), 3);
    });
}

/// Test 4: a master paused past its session timeout, then resumed, commits
/// nothing (its writes are fenced), steps down, and the job is exact.
#[test]
fn paused_master_is_fenced_and_steps_down() {
    let mut c = cluster();
    let (corpus, baseline) = corpus(c.dir.path(), 16, 4);
    for i in 0..3 {
        c.node(&format!("n{i}"), &[]);
    }
    rt().block_on(async {
        let zk = c.zk().await;
        let first = c.master(&zk, None, Duration::from_secs(30)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let job = job_in_flight(&client, &corpus).await;
        c.signal(&first.node_id, "STOP");
        let second = c
            .master(&zk, Some(first.epoch), Duration::from_secs(30))
            .await;
        assert_ne!(second.node_id, first.node_id);
        c.signal(&first.node_id, "CONT");
        assert_exact(&job, &baseline, &c.path("out.tsv")).await;
        let id = first.node_id.clone();
        eventually(
            Duration::from_secs(20),
            "the resumed master to step down",
            || async {
                c.audit().iter().any(|e| {
                    e.node == id && e.epoch == first.epoch && e.event == Event::MasterStopped
                })
            },
        )
        .await;
        let now = ringleader::coord::read_master(&zk, &c.layout())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            now.epoch, second.epoch,
            "the resumed node did not take leadership back"
        );
        // It rejoined with a new session: a candidate and a worker again.
        let election = c.layout().election();
        let worker = format!("{}/{id}", c.layout().workers());
        eventually(
            Duration::from_secs(20),
            "the resumed node to rejoin",
            || async {
                let candidates = zk
                    .list_children(&election)
                    .await
                    .map(|v| v.len())
                    .unwrap_or(0);
                let registered = zk.check_stat(&worker).await.ok().flatten().is_some();
                candidates == 3 && registered
            },
        )
        .await;
    });
}

/// A node started while ZooKeeper is down says why (nothing listens),
/// keeps trying with growing pauses, says it once (not at every attempt),
/// and still stops cleanly on SIGTERM.
#[test]
fn node_without_zookeeper_reports_and_stops_cleanly() {
    let mut c = cluster();
    let port = ringleader::zkserver::free_port().unwrap();
    let zk = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    c.node("lonely", &["--zk", &zk, "--metrics-addr", &metrics]);
    let attempts = || {
        ringleader::prom::http_get(&metrics, "/metrics")
            .ok()
            .and_then(|(_, body)| {
                body.lines()
                    .find(|l| l.starts_with("ringleader_zk_errors_total{op=\"connect\"}"))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    rt().block_on(eventually(
        Duration::from_secs(30),
        "three failed attempts to reach ZooKeeper",
        || {
            let n = attempts();
            async move { n >= 3.0 }
        },
    ));
    let log = c.log("lonely");
    assert_eq!(
        log.matches("cannot reach ZooKeeper").count(),
        1,
        "said more than once: {log}"
    );
    assert!(
        log.contains(&format!(
            "127.0.0.1:{port}: connection refused (nothing listens on port {port})"
        )) && log.contains("check --zk"),
        "{log}"
    );
    c.signal("lonely", "TERM");
    let status = c.wait_exit("lonely", Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", c.log("lonely"));
}

/// Test 5: garbage and oversized frames, a foreign certificate, an unknown
/// job type and invalid UTF-8 each get a clear error; the cluster keeps serving.
#[test]
fn bad_input_gets_clear_errors_and_nothing_crashes() {
    let mut c = cluster();
    c.node("n0", &["--max-frame", "65536"]);
    rt().block_on(async {
        let zk = c.zk().await;
        let master = c.master(&zk, None, Duration::from_secs(30)).await;
        let identity = tls::Identity::load(&c.certs, "client").unwrap();
        let ep = dialer(&identity);
        let conn = transport::dial(&ep, &master.addr).await.unwrap();

        // Garbage body.
        let mut s = FramedStream::open(&conn, 1 << 20).await.unwrap();
        s.write_encoded(&[0, 0, 0, 4, 0xc1, 0xc1, 0xc1, 0xc1])
            .await
            .unwrap();
        let reply = s.recv().await.unwrap();
        assert!(
            matches!(&reply, Reply::Error { kind: ringleader::wire::ErrorKind::Invalid, message } if message.contains("malformed")),
            "{reply:?}"
        );

        // Oversized frame: refused from its prefix.
        let mut s = FramedStream::open(&conn, 1 << 20).await.unwrap();
        s.write_encoded(&(100u32 << 20).to_be_bytes())
            .await
            .unwrap();
        let reply = s.recv().await.unwrap();
        assert!(
            matches!(&reply, Reply::Error { kind: ringleader::wire::ErrorKind::Invalid, message } if message.contains("exceeds the limit")),
            "{reply:?}"
        );

        // Unknown job type.
        let client = Client::connect(client_config(&c)).await.unwrap();
        let err = client
            .submit_encoded(
                "no-such-job",
                vec![],
                JobOptions {
                    shard_size: 1,
                    max_attempts: 1,
                    shard_timeout_ms: None,
                    stream: false,
                    priority: 0,
                    fairness_key: None,
                    not_before_ms: None,
                    under: Vec::new(),
                },
                None,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unknown job type"), "{err}");

        // A certificate from another CA is refused.
        let other = c.path("other-certs");
        ringleader::pki::make_cluster_certs(&other).unwrap();
        let foreign = tls::Identity::load(&other, "client").unwrap();
        let ep2 = dialer(&foreign);
        let refused = async {
            let conn = transport::dial(&ep2, &master.addr).await?;
            let mut s = FramedStream::open(&conn, 1 << 20).await?;
            s.request(&[Request::GetStatus]).await
        };
        let r = tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .expect("foreign certificate: no hang");
        assert!(r.is_err(), "a foreign certificate got an answer: {r:?}");

        // Still serving.
        let status = client.status().await.unwrap();
        assert_eq!(status.epoch, master.epoch);
    });

    // Invalid UTF-8: the job reports the file and offset, not a crash.
    let bad = c.path("bad.txt");
    std::fs::write(&bad, b"fine words \xff\xfe more").unwrap();
    let o = c.cli("submit", &["--max-attempts", "1", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("not valid UTF-8 at byte offset 11"),
        "{err}"
    );
    assert!(err.contains("bad.txt"), "{err}");
    assert!(!c.log("n0").contains("panicked"), "{}", c.log("n0"));
}

/// Against a 3-server ZooKeeper ensemble, killing one server mid-job (the
/// first, which most sessions are connected to) loses no session and no
/// work: no master change, exact result.
#[test]
fn one_zookeeper_server_of_three_dies_mid_job() {
    let mut c = Cluster::with_servers(BIN, 3);
    let (corpus, baseline) = corpus(c.dir.path(), 16, 6);
    for i in 0..3 {
        c.node(&format!("n{i}"), &[]);
    }
    rt().block_on(async {
        let zk = c.zk().await;
        let first = c.master(&zk, None, Duration::from_secs(30)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let job = job_in_flight(&client, &corpus).await;
        c.servers[0].kill();
        assert_exact(&job, &baseline, &c.path("out.tsv")).await;
        let now = ringleader::coord::read_master(&zk, &c.layout())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now.epoch, first.epoch, "the master kept its session");
    });
    for n in ["n0", "n1", "n2"] {
        assert!(
            !c.log(n).contains("session expired"),
            "{n} lost its session:\n{}",
            c.log(n)
        );
    }
}

/// A master cut from ZooKeeper for less than its session timeout pauses its
/// assignments (it may not be master any more), says so once, resumes when
/// reconnected, keeps its leadership, and the job is exact.
#[test]
fn disconnected_master_pauses_and_resumes() {
    let mut c = cluster();
    let (corpus, baseline) = corpus(c.dir.path(), 16, 8);
    let proxy = Proxy::start(&c.zk_connect());
    c.node("m", &["--zk", proxy.addr(), "--session-timeout-ms", "4000"]);
    rt().block_on(async {
        let zk = c.zk().await;
        let first = c.master(&zk, None, Duration::from_secs(30)).await;
        assert_eq!(first.node_id, "m");
    });
    c.node("w1", &["--role", "worker"]);
    c.node("w2", &["--role", "worker"]);
    rt().block_on(async {
        let zk = c.zk().await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let job = job_in_flight(&client, &corpus).await;
        proxy.cut();
        let seen = |event: Event| {
            c.audit()
                .iter()
                .filter(|e| e.node == "m" && e.event == event)
                .count()
        };
        eventually(Duration::from_secs(10), "the master to pause", || async {
            seen(Event::AssignmentsPaused) > 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        proxy.heal();
        assert_exact(&job, &baseline, &c.path("out.tsv")).await;
        assert_eq!(seen(Event::AssignmentsPaused), 1, "{}", c.log("m"));
        assert_eq!(seen(Event::AssignmentsResumed), 1, "{}", c.log("m"));
        assert_eq!(seen(Event::MasterStopped), 0, "{}", c.log("m"));
        let log = c.log("m");
        assert!(!log.contains("session expired"), "{log}");
        let now = ringleader::coord::read_master(&zk, &c.layout())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now.epoch, 1, "leadership kept");
    });
}

/// A worker cut from the master over QUIC (a UDP proxy in front of the
/// master drops its packets) while its ZooKeeper session lives: the master
/// suspects it when the link times out and reassigns its shards without
/// waiting for the registration to vanish; the worker stays registered,
/// reconnects when healed, and the result is exact.
#[test]
fn worker_cut_from_master_is_suspected_and_comes_back() {
    let mut c = cluster();
    let (corpus, baseline) = corpus(c.dir.path(), 16, 10);
    let quic = free_udp_port();
    let proxy = UdpProxy::start(format!("127.0.0.1:{quic}").parse().unwrap());
    let listen = format!("127.0.0.1:{quic}");
    c.node(
        "m",
        &[
            "--role",
            "candidate",
            "--listen",
            &listen,
            "--advertise",
            proxy.addr(),
        ],
    );
    let w1_port = free_udp_port();
    let w1_listen = format!("127.0.0.1:{w1_port}");
    c.node("w1", &["--role", "worker", "--listen", &w1_listen]);
    c.node("w2", &["--role", "worker"]);
    rt().block_on(async {
        let zk = c.zk().await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let job = job_in_flight(&client, &corpus).await;
        proxy.block(w1_listen.parse().unwrap(), true);
        eventually(
            Duration::from_secs(15),
            "the master to suspect w1",
            || async {
                c.audit()
                    .iter()
                    .any(|e| matches!(&e.event, Event::WorkerLost { worker, .. } if worker == "w1"))
            },
        )
        .await;
        let registered = zk
            .check_stat(&format!("{}/w1", c.layout().workers()))
            .await
            .unwrap();
        assert!(
            registered.is_some(),
            "w1's session and registration survive the cut"
        );
        proxy.block(w1_listen.parse().unwrap(), false);
        assert_exact(&job, &baseline, &c.path("out.tsv")).await;
        eventually(Duration::from_secs(20), "w1 to reconnect", || async {
            let joins = c
                .audit()
                .iter()
                .filter(|e| e.node == "w1" && matches!(e.event, Event::LinkedToMaster { .. }))
                .count();
            joins >= 2
        })
        .await;
    });
}
