#![allow(clippy::unwrap_used)]
//! Two adjacent releases in one cluster: nodes and clients of the
//! baseline (`framework/tests/compat/README.md`) beside this build's, on
//! every link, across a failover from a master of one to a master of the
//! other.
//!
//! The baseline's binary is built in a work tree of its own by
//! `scripts/upgrade-test`, which runs these tests with
//! `RINGLEADER_BASELINE_BIN` naming it; outside that script they are
//! ignored (the suite does not build a second tree).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// The baseline's `wordcount` binary.
fn baseline() -> PathBuf {
    let bin = std::env::var_os("RINGLEADER_BASELINE_BIN").expect(
        "RINGLEADER_BASELINE_BIN names the baseline's wordcount binary: run scripts/upgrade-test",
    );
    let bin = PathBuf::from(bin);
    assert!(bin.is_file(), "{} is not a file", bin.display());
    bin
}

/// Tasks of `word-count` this node's worker ran, from its metrics page.
fn tasks_run(addr: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").expect("metrics page");
    body.lines()
        .filter(|l| l.starts_with("ringleader_tasks_run_total") && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The cluster's status as JSON, asked by the client binary `bin`.
fn status(c: &mut Cluster, bin: &Path) -> serde_json::Value {
    let ours = std::mem::replace(&mut c.bin, bin.to_path_buf());
    let o = c.cli("status", &["--json"]);
    c.bin = ours;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Counts the corpus with the client binary `bin` and checks the result.
fn count_with(c: &mut Cluster, bin: &Path, corpus: &Path, want: &Path) {
    let ours = std::mem::replace(&mut c.bin, bin.to_path_buf());
    count_matches(c, corpus, want, &[]);
    c.bin = ours;
}

/// A master of the baseline serves workers and clients of both builds;
/// then it stops, a master of this build takes over, and it serves them
/// too. Every word count is exact, and workers of both builds run tasks
/// under both masters.
#[test]
#[ignore = "needs the baseline's binary: scripts/upgrade-test"]
fn nodes_and_clients_of_the_baseline_and_of_this_build_serve_jobs_together() {
    let old = baseline();
    let new = PathBuf::from(BIN);
    let mut c = cluster();
    let (corpus, want) = corpus(c.dir.path(), 4, 11);
    let port = || format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    let (m0, m1, m2) = (port(), port(), port());

    // A master of the baseline; a worker of each build.
    c.bin = old.clone();
    c.node("n0", &["--metrics-addr", &m0]);
    let first = rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(30)).await
    });
    assert_eq!(first.node_id, "n0");
    assert_eq!(first.protocol, None, "the baseline publishes no range");
    c.bin = new.clone();
    c.node("n1", &["--metrics-addr", &m1]);
    c.bin = old.clone();
    c.node("n2", &["--role", "worker", "--metrics-addr", &m2]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 3, Duration::from_secs(30)).await;
    });
    c.bin = new.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&mut c, &new);
        let linked = s["workers"]
            .as_array()
            .is_some_and(|w| w.iter().filter(|w| w["connected"] == true).count() == 3);
        if linked {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "three workers linked: {s}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for bin in [&new, &old] {
        count_with(&mut c, bin, &corpus, &want);
    }
    let (n1_before, n2_before) = (tasks_run(&m1), tasks_run(&m2));
    assert!(
        n1_before > 0.0,
        "this build's worker ran tasks for the baseline's master"
    );
    assert!(n2_before > 0.0, "the baseline's worker ran tasks");

    // The baseline's master stops; this build's candidate takes over.
    c.signal("n0", "TERM");
    let second = rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, Some(first.epoch), Duration::from_secs(30))
            .await
    });
    assert_eq!(second.node_id, "n1");
    assert_eq!(
        second.protocol,
        Some([
            ringleader::wire::PROTOCOL_MIN,
            ringleader::wire::PROTOCOL_VERSION
        ])
    );
    for bin in [&new, &old] {
        count_with(&mut c, bin, &corpus, &want);
    }
    assert!(
        tasks_run(&m2) > n2_before,
        "the baseline's worker ran tasks for this build's master"
    );
    // This build's master says which worker runs which build.
    let s = status(&mut c, &new);
    let workers = s["workers"].as_array().unwrap();
    let n2 = workers.iter().find(|w| w["node_id"] == "n2").unwrap();
    assert_eq!(n2["connected"], true, "{s}");
    assert!(
        n2["build"].is_null(),
        "the baseline registers no build: {s}"
    );
    let n1 = workers.iter().find(|w| w["node_id"] == "n1").unwrap();
    assert!(
        n1["build"]
            .as_str()
            .is_some_and(|b| b.contains(ringleader::COMMIT)),
        "{s}"
    );
}
