#![allow(clippy::unwrap_used)]
//! A client with an ordinary certificate that sends what it may, at its
//! worst: the master's memory and time for a request are bounded by what
//! the master already holds, not by what the request claims, and an honest
//! client's job finishes meanwhile (issue 29, finding 2).

use std::time::Duration;

use probe::{Behaviour, Probe};
use ringleader::client::SubmitOptions;
use ringleader::testkit::adversary;
use ringleader::testkit::*;
use ringleader::transport::{self, tls, FramedStream};
use ringleader::wire::{ErrorKind, Reply, Request};
use ringleader::{Client, Collect};

const BIN: &str = env!("CARGO_BIN_EXE_probe");

/// A process's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// The master's memory grew by less than 64 MiB.
fn within_64_mib(before: u64, peak: u64) {
    assert!(
        peak < before + (64 << 20),
        "the master grew from {before} to {peak} bytes"
    );
}

/// The master's worker linked to it, and its link was never lost.
fn the_worker_link_held(c: &Cluster) {
    let audit = c.audit();
    let linked = audit
        .iter()
        .any(|e| matches!(e.event, ringleader::audit::Event::LinkedToMaster { .. }));
    assert!(
        linked,
        "the audit log shows the worker's link\n{}",
        c.logs()
    );
    let lost = audit
        .iter()
        .filter(|e| matches!(e.event, ringleader::audit::Event::WorkerLost { .. }))
        .count();
    assert_eq!(lost, 0, "no worker link was lost\n{}", c.logs());
}

/// Thirty streams that each claim every shard of a job that does not
/// exist (`seen: [(0, u32::MAX, 0)]`, 20 bytes on the wire) cost the master
/// nothing they claim: it used to expand each into a set of ten million
/// keys on its only arbiter, its memory went from 15 to 753 MB, its worker
/// link was lost and an honest job's client gave up.
#[test]
fn streams_claiming_every_shard_cost_the_master_nothing_they_claim() {
    let mut c = Cluster::new(BIN);
    c.node("m", &["--slots", "2"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let master = c.master(&zk, None, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        // Warm: one job through, so that the baseline holds what a
        // running master holds.
        let warm: Vec<Probe> = (0..4)
            .map(|value| Probe {
                value,
                behaviour: Behaviour::Ok,
            })
            .collect();
        client
            .run::<Collect<Probe>>(warm, SubmitOptions::default())
            .await
            .unwrap();
        let pid = c.pid("m");
        let before = rss(pid);
        let honest: Vec<Probe> = (0..100)
            .map(|value| Probe {
                value,
                behaviour: Behaviour::Sleep(20),
            })
            .collect();
        let opts = SubmitOptions {
            shard_size: Some(1),
            ..Default::default()
        };
        let job = client.submit::<Collect<Probe>>(honest, opts).await.unwrap();
        let identity = tls::Identity::client(&c.certs).unwrap();
        let ep = dialer(&identity);
        let conn = transport::dial_node(&ep, &master.addr, &master.node_id)
            .await
            .unwrap();
        let streams = (0..30).map(|i| {
            let conn = conn.clone();
            async move {
                let mut s = FramedStream::open(&conn, 1 << 20).await.unwrap();
                let ask = Request::StreamJob {
                    job_id: format!("nope-{i}"),
                    seen: vec![(0, u32::MAX, 0)],
                };
                s.request(&[ask]).await
            }
        });
        let answers = futures::future::join_all(streams).await;
        let mut refused = 0;
        let mut peak = 0;
        for a in answers {
            peak = peak.max(rss(pid));
            match a {
                Ok(Reply::Error {
                    kind: ErrorKind::NoSuchJob,
                    message,
                }) if message.contains("no job nope-") => refused += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(refused, 30, "every stream was answered");
        let (out, _) = match tokio::time::timeout(Duration::from_secs(60), job.result()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("{e}\n{}", c.logs()),
            Err(_) => panic!("the honest job never finished\n{}", c.logs()),
        };
        assert_eq!(out.len(), 100);
        peak = peak.max(rss(pid));
        within_64_mib(before, peak);
    });
    the_worker_link_held(&c);
}

/// One connection's thousand streams, each with the worst first frame of a
/// request type a client may send (a job id, a type shape, runs of seen
/// shards, each just under the 256 KiB a stream's first frame may be; a
/// submission that claims every task, or four that send 4 MiB chunks):
/// what they hold of the master's memory at once is what one connection's
/// budgets allow, the rest are refused at once, the master's memory grows
/// by less than 64 MiB, no worker link is lost, and an honest client's
/// one-task jobs go on (their times are printed, not judged: a timed gate
/// belongs to a benchmark).
#[test]
fn a_connections_thousand_streams_hold_what_its_budget_allows() {
    let mut c = Cluster::new(BIN);
    c.node("m", &["--slots", "2"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 1, Duration::from_secs(20)).await;
        let master = c.master(&zk, None, Duration::from_secs(20)).await;
        let client = Client::connect(client_config(&c)).await.unwrap();
        let one = || {
            vec![Probe {
                value: 1,
                behaviour: Behaviour::Ok,
            }]
        };
        client
            .run::<Collect<Probe>>(one(), SubmitOptions::default())
            .await
            .unwrap();
        let pid = c.pid("m");
        let before = rss(pid);
        let sampling = std::sync::atomic::AtomicBool::new(true);
        let peak = std::sync::atomic::AtomicU64::new(before);
        let sample = async {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        // Made before they are sent: the connection's driver must not
        // wait a second of encoding for its turn.
        let all: Vec<Vec<u8>> = (0..adversary::STREAMS).map(adversary::encoded).collect();
        let identity = tls::Identity::client(&c.certs).unwrap();
        let ep = dialer(&identity);
        let conn = transport::dial_node(&ep, &master.addr, &master.node_id)
            .await
            .unwrap();
        let attack = async {
            let streams = all
                .iter()
                .map(|bytes| adversary::ask(&conn, bytes, Duration::from_secs(60)));
            let answers = futures::future::join_all(streams).await;
            sampling.store(false, std::sync::atomic::Ordering::Relaxed);
            answers
        };
        // An honest client's one-task jobs, one after another, meanwhile.
        let honest = async {
            let mut took = Vec::new();
            for _ in 0..20 {
                let t = std::time::Instant::now();
                let (out, _) = client
                    .run::<Collect<Probe>>(one(), SubmitOptions::default())
                    .await
                    .unwrap();
                assert_eq!(out, vec![(0, 2)]);
                took.push(t.elapsed());
            }
            took
        };
        let ((answers, mut took), ()) = futures::join!(futures::future::join(attack, honest), sample);
        let mut flooded = adversary::Flooded::default();
        let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
        for a in &answers {
            flooded.count(a);
            let a = a.as_ref().expect("every stream was answered or closed in time");
            let kind = match a {
                Ok(Reply::Error { message, .. }) => message.chars().take(60).collect(),
                Ok(f) => f.name().to_string(),
                Err(e) => format!("{e:?}").chars().take(120).collect(),
            };
            *kinds.entry(kind).or_default() += 1;
        }
        println!("{kinds:#?}");
        let peak = peak.into_inner();
        took.sort();
        println!(
            "rss {before} -> peak {peak}; honest one-task jobs: median {:?}, max {:?}; {} streams over budget",
            took[took.len() / 2],
            took[took.len() - 1],
            flooded.over_budget
        );
        assert!(flooded.over_budget > 0, "the budget refused some of the 1,024 streams\n{}", c.log("m"));
        within_64_mib(before, peak);
    });
    the_worker_link_held(&c);
}
