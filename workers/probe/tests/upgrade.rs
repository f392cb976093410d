#![allow(clippy::unwrap_used)]
//! A master of the baseline release (`framework/tests/compat/README.md`),
//! which does not compare a worker's task types with its own, and a
//! worker of this build whose `probe` task has other types
//! (`PROBE_TYPES=2`): the worker asks the master about each of its job
//! types, as a client would, and offers none that the master defines
//! otherwise, so that none of its tasks is decoded as other types.
//!
//! Run by `scripts/upgrade-test` with `RINGLEADER_BASELINE_PROBE` naming
//! the baseline's `probe` binary; ignored otherwise.

use std::path::PathBuf;
use std::time::Duration;

use ringleader::prom::http_get;
use ringleader::testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_probe");

/// Tasks of `probe` this node's worker ran, from its metrics page.
fn tasks_run(addr: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").expect("metrics page");
    body.lines()
        .filter(|l| l.starts_with("ringleader_tasks_run_total") && l.contains("job_type=\"probe\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
#[ignore = "needs the baseline's binary: scripts/upgrade-test"]
fn under_a_baseline_master_a_worker_of_other_task_types_runs_none_of_those_jobs() {
    let old = PathBuf::from(
        std::env::var_os("RINGLEADER_BASELINE_PROBE")
            .expect("RINGLEADER_BASELINE_PROBE names the baseline's probe binary"),
    );
    let port = || format!("127.0.0.1:{}", ringleader::zkserver::free_port().unwrap());
    let (m1, m2) = (port(), port());
    let mut c = Cluster::new(&old);
    // The baseline's master and a worker of its types; a worker of this
    // build with other types.
    c.node("n0", &[]);
    let master = rt().block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(30)).await
    });
    assert_eq!(master.node_id, "n0");
    c.node("n1", &["--role", "worker", "--metrics-addr", &m1]);
    c.bin = PathBuf::from(BIN);
    c.node_env
        .insert("n2".into(), vec![("PROBE_TYPES".into(), "2".into())]);
    c.node("n2", &["--role", "worker", "--metrics-addr", &m2]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 3, Duration::from_secs(30)).await;
    });
    // It linked, and said why it runs no probe job of this master.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !c.log("n2").contains("connected to master") {
        assert!(std::time::Instant::now() < deadline, "{}", c.log("n2"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        c.log("n2")
            .contains("this worker runs no probe job of this master"),
        "{}",
        c.log("n2")
    );

    // Probe jobs of the baseline's types, with a client of the baseline:
    // every one exact, all run by the baseline's worker.
    c.bin = old.clone();
    let dir = c.path("jobs");
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<String> = (1..=20)
        .map(|v| format!(r#"{{"value":{v},"behaviour":"Ok"}}"#))
        .collect();
    let tasks = dir.join("twenty.jsonl");
    std::fs::write(&tasks, lines.join("\n") + "\n").unwrap();
    let o = c.cli("submit", &["probe", tasks.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        c.logs()
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 20);
    assert!(tasks_run(&m1) >= 20.0, "the baseline's worker ran them");
    assert_eq!(tasks_run(&m2), 0.0, "the worker of other types ran none");
}
