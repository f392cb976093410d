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

/// One submission and what its client saw.
#[derive(Debug)]
struct Submitted {
    id: String,
    /// Its tasks' values (unique across the run).
    values: Vec<u64>,
    /// The submission's answer: `Ok` (acknowledged) or an error: refused
    /// for good, or not (the job may or may not exist).
    acked: Result<(), (Option<ringleader::client::Refusal>, String)>,
    /// Its result as read right after, when it was.
    read: Option<Vec<(u64, u64)>>,
    /// When its answer came.
    at: std::time::Instant,
}

/// What the roll came to.
#[derive(Debug, Default)]
struct Roll {
    submitted: usize,
    acknowledged: usize,
    exact: usize,
    /// Acknowledged jobs whose result was not exact, or is lost.
    wrong: Vec<String>,
    /// Submissions refused for good (not "unknown, retry").
    failed: Vec<String>,
    /// Unknown outcomes found done exactly / never created.
    unknown_found: usize,
    unknown_absent: usize,
    /// Task values completed more than once.
    duplicated: usize,
    /// Periods without a published master, longest first.
    gaps: Vec<Duration>,
    /// Jobs acknowledged per second before, during and after the roll.
    rates: [f64; 3],
    /// Masters restarted by the roll.
    masters_restarted: usize,
}

/// Submits one-task jobs at `per_sec`, and every `big_every` a job of
/// 200 tasks, each read back as soon as it is acknowledged, until `stop`.
async fn load(
    client: ringleader::Client,
    per_sec: u64,
    big_every: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Submitted> {
    use ringleader::Collect;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Submitted>(1024);
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded: a failover's pause holds at most this many in flight.
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let mut last_big = tokio::time::Instant::now();
    let mut k: u64 = 0;
    let mut history = Vec::new();
    while !*stop.borrow() {
        tick.tick().await;
        while let Ok(s) = rx.try_recv() {
            history.push(s);
        }
        k += 1;
        let big = last_big.elapsed() >= big_every;
        if big {
            last_big = tokio::time::Instant::now();
        }
        let n = if big { 200 } else { 1 };
        let values: Vec<u64> = (0..n).map(|i| k * 1_000 + i).collect();
        let id = format!("{}-{k}", if big { "big" } else { "one" });
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let tasks = probe_tasks(&values);
            let options = ringleader::SubmitOptions {
                job_id: Some(id.clone()),
                ..Default::default()
            };
            let (acked, read) = match client.submit::<Collect<probe::Probe>>(tasks, options).await {
                Ok(handle) => match handle.result().await {
                    Ok((results, _)) => (Ok(()), Some(results)),
                    Err(_) => (Ok(()), None),
                },
                Err(e) => (Err((e.refusal(), e.to_string())), None),
            };
            let at = std::time::Instant::now();
            let _ = tx
                .send(Submitted {
                    id,
                    values,
                    acked,
                    read,
                    at,
                })
                .await;
            drop(permit);
        });
    }
    drop(tx);
    // Every submission in flight ends (its client retries within its
    // own bounds).
    while let Some(s) = rx.recv().await {
        history.push(s);
    }
    history
}

fn probe_tasks(values: &[u64]) -> Vec<probe::Probe> {
    values
        .iter()
        .map(|&value| probe::Probe {
            value,
            behaviour: probe::Behaviour::Ok,
        })
        .collect()
}

/// Watches `/master`: the periods without one, until `stop`.
async fn master_gaps(
    zk: ringleader::coord::ZkClient,
    path: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Duration> {
    let mut gaps = Vec::new();
    let mut since: Option<tokio::time::Instant> = None;
    while !*stop.borrow() {
        let present = matches!(zk.check_stat(&path).await, Ok(Some(_)));
        match (present, since) {
            (false, None) => since = Some(tokio::time::Instant::now()),
            (true, Some(t)) => {
                gaps.push(t.elapsed());
                since = None;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gaps.sort_by(|a, b| b.cmp(a));
    gaps
}

/// A cluster of four nodes of the baseline under a steady load (one-task
/// jobs at 200/s, a 200-task job every 2 s) has each node replaced, one
/// at a time, by this build (SIGTERM, then the new binary), masters
/// included; then one node is rolled back to the baseline and forward
/// again, and the feature level is raised. Every
/// acknowledged job is exact, none fails for the upgrade, no task
/// completes twice, and no period without a master lasts longer than the
/// session timeout and a second.
#[test]
#[ignore = "needs the baseline's binary: scripts/upgrade-test"]
fn a_rolling_upgrade_from_the_baseline_under_load_keeps_every_acknowledged_job_exact() {
    let old = PathBuf::from(
        std::env::var_os("RINGLEADER_BASELINE_PROBE")
            .expect("RINGLEADER_BASELINE_PROBE names the baseline's probe binary"),
    );
    let new = PathBuf::from(BIN);
    const SESSION: Duration = Duration::from_millis(2000);
    let mut c = Cluster::new(&old);
    let ids = ["n0", "n1", "n2", "n3"];
    for id in ids {
        c.node(id, &["--slots", "2"]);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let zk = rt.block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 4, Duration::from_secs(30)).await;
        c.master(&zk, None, Duration::from_secs(30)).await;
        zk
    });
    let client = rt
        .block_on(ringleader::Client::connect(client_config(&c)))
        .unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let loading = rt.spawn(load(
        client.clone(),
        200,
        Duration::from_secs(2),
        stop.clone(),
    ));
    let gaps = rt.spawn(master_gaps(zk.clone(), c.layout().master(), stop));
    let now = std::time::Instant::now;
    let mut roll = Roll::default();
    let started = now();
    std::thread::sleep(Duration::from_secs(8));
    let rolling = now();

    // Each node in turn: SIGTERM, then this build in its place.
    for id in ids {
        let master = rt.block_on(c.master(&zk, None, Duration::from_secs(30)));
        if master.node_id == id {
            roll.masters_restarted += 1;
        }
        c.signal(id, "TERM");
        let status = c.wait_exit(id, Duration::from_secs(60));
        assert!(status.success(), "{id} stopped with {status}\n{}", c.logs());
        c.bin = new.clone();
        c.node(id, &["--slots", "2"]);
        rt.block_on(c.workers(&zk, 4, Duration::from_secs(30)));
        std::thread::sleep(Duration::from_secs(3));
    }
    let rolled = now();
    std::thread::sleep(Duration::from_secs(6));
    // One node back to the baseline: it reads everything this build
    // wrote (the feature level was not raised).
    c.signal("n3", "TERM");
    c.wait_exit("n3", Duration::from_secs(60));
    c.bin = old.clone();
    c.node("n3", &["--slots", "2"]);
    rt.block_on(c.workers(&zk, 4, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_secs(4));
    // Forward again, and the feature level raised (from then on a node of
    // the baseline, which predates levels, may not come back).
    c.signal("n3", "TERM");
    c.wait_exit("n3", Duration::from_secs(60));
    c.bin = new.clone();
    c.node("n3", &["--slots", "2"]);
    rt.block_on(c.workers(&zk, 4, Duration::from_secs(30)));
    let raised = c.cli("features", &["upgrade"]);
    assert!(
        raised.status.success()
            && String::from_utf8_lossy(&raised.stdout).contains("raised from 0 to 2"),
        "{}",
        String::from_utf8_lossy(&raised.stderr)
    );
    std::thread::sleep(Duration::from_secs(4));
    let ended = now();
    stop_tx.send(true).unwrap();
    let history = rt.block_on(loading).unwrap();
    roll.gaps = rt.block_on(gaps).unwrap();

    // The history, read against what the cluster holds.
    let mut completed: std::collections::HashMap<u64, usize> = Default::default();
    let bounds = [started, rolling, rolled, ended];
    let mut acked_in = [0usize; 3];
    for s in &history {
        if s.acked.is_ok() {
            if let Some(p) = (0..3).find(|&p| s.at >= bounds[p] && s.at < bounds[p + 1]) {
                acked_in[p] += 1;
            }
        }
        roll.submitted += 1;
        let want: Vec<(u64, u64)> = s
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v * 2))
            .collect();
        let read = match &s.read {
            Some(r) => Some(r.clone()),
            None => rt.block_on(async {
                let job = client.job::<ringleader::Collect<probe::Probe>>(s.id.clone());
                match tokio::time::timeout(Duration::from_secs(60), job.result()).await {
                    Ok(Ok((r, _))) => Some(r),
                    _ => None,
                }
            }),
        };
        match (&s.acked, read) {
            (Ok(()), Some(r)) if r == want => roll.exact += 1,
            (Ok(()), r) => roll.wrong.push(format!("{}: {r:?}", s.id)),
            (Err(_), Some(r)) if r == want => roll.unknown_found += 1,
            (Err((_, e)), Some(r)) => roll.wrong.push(format!("{} ({e}): {r:?}", s.id)),
            (Err((refused, e)), None) => {
                roll.unknown_absent += 1;
                if refused.is_some() {
                    roll.failed.push(format!("{}: {e}", s.id));
                }
            }
        }
        if s.acked.is_ok() {
            roll.acknowledged += 1;
        }
        for v in s.read.iter().flatten() {
            *completed.entry(v.1).or_default() += 1;
        }
    }
    roll.duplicated = completed.values().filter(|n| **n > 1).count();
    for p in 0..3 {
        roll.rates[p] = acked_in[p] as f64 / (bounds[p + 1] - bounds[p]).as_secs_f64();
    }
    eprintln!("{roll:#?}");
    assert!(roll.wrong.is_empty(), "{:?}\n{}", roll.wrong, c.logs());
    assert!(
        roll.failed.is_empty(),
        "failed for the upgrade: {:?}",
        roll.failed
    );
    assert_eq!(roll.duplicated, 0);
    assert!(roll.acknowledged > 1_000, "{roll:?}");
    let longest = roll.gaps.first().copied().unwrap_or_default();
    assert!(longest <= SESSION + Duration::from_secs(1), "{roll:?}");
    assert!(roll.gaps.len() <= roll.masters_restarted + 1, "{roll:?}");
}
