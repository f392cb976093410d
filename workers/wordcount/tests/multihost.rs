#![allow(clippy::unwrap_used)]
//! Ringleader across hosts: every role in a network namespace of its own on
//! one bridge (`ringleader::testkit::net`), real ZooKeeper, real QUIC, real
//! processes. These tests need root; without it they say they were skipped
//! (in CI, with `CI=true`, they fail instead).

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringleader::coord::{MasterInfo, OutputRef};
use ringleader::testkit::net::{LinkParams, Net};

const STEP: Duration = Duration::from_secs(60);

/// The harness itself: hosts reach each other over the bridge, an
/// emulated link delays and drops what it should, a cut host is
/// unreachable until healed, and nothing is left behind: neither sets of
/// a process that died nor this harness's own.
#[test]
fn test_hosts_are_delayed_cut_and_removed() {
    // A set left by a process that died: its pid is in its names.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = format!("rl{dead_pid:06x}ff-stale");
    let made_stale = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .is_ok_and(|s| s.success());

    let Some(mut net) = Net::new("test_hosts_are_delayed_cut_and_removed") else {
        return;
    };
    let namespaces = || {
        String::from_utf8_lossy(
            &std::process::Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    assert!(made_stale, "could not make the stale namespace");
    assert!(
        !namespaces().contains(&stale),
        "a dead process's namespace survived a new harness"
    );

    net.host("plain");
    net.emulated_host(
        "far",
        LinkParams {
            one_way_delay: Duration::from_millis(5),
            loss: 0.0,
        },
    );
    let plain = net.rtt("plain", 5);
    let far = net.rtt("far", 5);
    eprintln!("round trips: plain {plain:?}, emulated 5 ms each way {far:?}");
    assert!(plain < Duration::from_millis(5), "plain link: {plain:?}");
    assert!(
        far >= Duration::from_millis(10) && far < Duration::from_millis(60),
        "emulated link: {far:?}"
    );

    net.set_link(
        "far",
        LinkParams {
            one_way_delay: Duration::ZERO,
            loss: 1.0,
        },
    );
    assert_eq!(
        net.rtt("far", 1),
        Duration::MAX,
        "a link losing everything answered"
    );
    net.set_link("far", LinkParams::default());
    assert!(net.rtt("far", 3) < Duration::from_millis(5));

    net.cut("plain");
    assert_eq!(net.rtt("plain", 1), Duration::MAX, "a cut host answered");
    net.heal("plain");
    assert!(net.rtt("plain", 3) < Duration::from_millis(5));

    // A process on a host is killed with it.
    let mut sleeper = net
        .command("plain", "sleep")
        .arg("600")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ns = net.netns("plain").to_string();
    let pid = sleeper.id().to_string();
    // `ip netns exec` enters the namespace, then execs: wait until it has.
    let inside = (0..250).any(|_| {
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .unwrap()
            .stdout;
        std::thread::sleep(Duration::from_millis(20));
        String::from_utf8_lossy(&pids)
            .split_whitespace()
            .any(|p| p == pid)
    });
    assert!(inside, "the process never entered host plain");
    drop(net);
    assert!(!namespaces().contains(&ns), "the harness left {ns}");
    let ended = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        sleeper.try_wait().unwrap().is_some()
    });
    assert!(ended, "a process on a removed host still runs");
}

/// Word count with ZooKeeper, the S3 store, three nodes and the client each
/// on a host of its own. The client uploads its corpus to the store
/// (`submit --upload`) and the workers read their splits from there; the
/// master is killed with kill -9 mid-job, with split counts big enough to
/// live in the store. The next master, on
/// another host, reads them back and finishes the job: the client's count
/// equals the single-process count and no task failed. A node given wrong
/// store credentials refuses to start.
#[test]
fn word_count_across_hosts_survives_the_master_killed_mid_job() {
    let Some(mut net) = Net::new("word_count_across_hosts_survives_the_master_killed_mid_job")
    else {
        return;
    };
    for h in ["zk", "store", "n1", "n2", "n3", "client"] {
        net.host(h);
    }
    let mut c = Cluster::on_net(BIN, net, &["zk"]);
    let store = c.s3_store_on("store");
    let (corpus, baseline) = corpus_with(c.dir.path(), 32, 11, 100_000);
    for n in ["n1", "n2", "n3"] {
        c.node_on(n, n, &[]);
    }
    let out = c.path("out.tsv");
    let first = rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 3, STEP).await;
        let first = c.master(&zk, None, STEP).await;
        // Each node advertises its own host's address on the default port.
        let host_ip = c.net().ip(&first.node_id);
        assert_eq!(first.addr, format!("{host_ip}:7470"), "{first:?}");
        first
    });
    let submit = Background::start(
        {
            let mut cmd = c.cli_command_on(
                "client",
                "submit",
                &[
                    "--upload",
                    "--job-id",
                    "wc-hosts",
                    "--split-mib",
                    "1",
                    "--output",
                    out.to_str().unwrap(),
                    corpus.to_str().unwrap(),
                ],
            );
            cmd.env("RUST_LOG", "info");
            cmd
        },
        c.dir.path(),
        "submit",
    );
    rt().block_on(async {
        let zk = c.zk().await;
        c.committed_at_least(&zk, "wc-hosts", 2, STEP).await;
        // The committed counts live outside ZooKeeper (referenced by name).
        let (shard, rec) = c.committed(&zk, "wc-hosts").await.remove(0);
        assert!(
            matches!(rec.output, OutputRef::Object(_)),
            "split counts not in the store: {shard} {:?}",
            std::mem::discriminant(&rec.output)
        );
        c.kill9(&first.node_id);
        let committed = c.committed(&zk, "wc-hosts").await.len();
        assert!(
            committed < 32,
            "the job ended before the kill; make it bigger"
        );
        let second = c.master(&zk, Some(first.epoch), STEP).await;
        assert_ne!(second.node_id, first.node_id);
    });
    let (status, stdout, stderr) = submit.wait(Duration::from_secs(180));
    assert!(
        status.success(),
        "submit from the client's host failed:\n{stderr}\n{}",
        c.logs()
    );
    assert!(stdout.contains("distinct"), "{stdout}");
    assert!(
        stderr.contains(&format!("to {store}/inputs/")),
        "the corpus was not uploaded: {stderr}"
    );
    assert_same_file(&out, &baseline);

    // Wrong credentials at submit: the upload fails at once, saying so.
    let mut bad = c.cli_command_on("client", "submit", &["--upload", corpus.to_str().unwrap()]);
    bad.env("AWS_SECRET_ACCESS_KEY", "wrong");
    let (status, _, stderr) =
        Background::start(bad, c.dir.path(), "submit-bad-store").wait(Duration::from_secs(60));
    assert!(!status.success());
    assert!(
        stderr.contains("uploading") && stderr.contains("SignatureDoesNotMatch"),
        "{stderr}"
    );

    // Wrong credentials: the node says so at start instead of failing jobs.
    let mut node = c.net().command("client", &c.bin);
    node.envs(c.env.iter().map(|(k, v)| (k, v)))
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .args([
            "node",
            "--zk",
            &c.zk_connect(),
            "--cluster",
            "other",
            "--store",
            &store,
        ])
        .arg("--certs")
        .arg(&c.certs);
    let (status, _, stderr) =
        Background::start(node, c.dir.path(), "node-bad-store").wait(Duration::from_secs(60));
    assert!(!status.success());
    assert!(
        stderr.contains("SignatureDoesNotMatch") && stderr.contains("check --store"),
        "{stderr}"
    );
}

/// A worker's host is cut off the network mid-job (ZooKeeper is a
/// three-server ensemble on three more hosts): the master notices by the
/// silent link, its shards run on the other worker, and the result is
/// exact. Healed, the worker registers and connects again.
#[test]
fn a_worker_host_cut_off_mid_job_runs_its_shards_elsewhere() {
    let Some(mut net) = Net::new("a_worker_host_cut_off_mid_job_runs_its_shards_elsewhere") else {
        return;
    };
    for h in ["zk1", "zk2", "zk3", "m", "w1", "w2", "client"] {
        net.host(h);
    }
    let metrics = format!("{}:9100", net.ip("m"));
    // A ZooKeeper ensemble, each server on a host of its own.
    let mut c = Cluster::on_net(BIN, net, &["zk1", "zk2", "zk3"]);
    let (corpus, baseline) = corpus_with(c.dir.path(), 32, 12, 20_000);
    c.node_on(
        "m",
        "m",
        &["--role", "candidate", "--metrics-addr", &metrics],
    );
    c.node_on("w1", "w1", &["--role", "worker"]);
    c.node_on("w2", "w2", &["--role", "worker"]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 2, STEP).await;
        c.master(&zk, None, STEP).await;
    });
    let out = c.path("out.tsv");
    let submit = Background::start(
        c.cli_command_on(
            "client",
            "submit",
            &[
                "--job-id",
                "wc-cut",
                "--split-mib",
                "1",
                "--output",
                out.to_str().unwrap(),
                corpus.to_str().unwrap(),
            ],
        ),
        c.dir.path(),
        "submit",
    );
    rt().block_on(async {
        let zk = c.zk().await;
        c.committed_at_least(&zk, "wc-cut", 1, STEP).await;
        c.net().cut("w1");
        let committed = c.committed(&zk, "wc-cut").await.len();
        assert!(
            committed < 32,
            "the job ended before the cut; make it bigger"
        );
    });
    let (status, _, stderr) = submit.wait(Duration::from_secs(180));
    assert!(status.success(), "submit failed:\n{stderr}\n{}", c.logs());
    assert_same_file(&out, &baseline);
    rt().block_on(async {
        // The job may end before the link's timeout: wait for the event.
        eventually(STEP, "the master to see w1's link go silent", || async {
            scrape(&metrics, "ringleader_worker_links_lost_total") >= 1.0
        })
        .await;
        c.net().heal("w1");
        let zk = c.zk().await;
        c.workers(&zk, 2, STEP).await;
    });
}

/// A client on another host learns at once what it can know at once (no
/// route to the published address), waits for a published master that
/// does not answer only as long as that master's session timeout plus a
/// margin, saying so, and then names the address. A node that would
/// advertise loopback while ZooKeeper is remote refuses to start.
#[test]
fn a_client_on_another_host_gets_errors_that_name_the_address() {
    let Some(mut net) = Net::new("a_client_on_another_host_gets_errors_that_name_the_address")
    else {
        return;
    };
    for h in ["zk", "ghost", "client"] {
        net.host(h);
    }
    let ghost = format!("{}:7470", net.ip("ghost"));
    let c = Cluster::on_net(BIN, net, &["zk"]);
    // Waited for on the blocking pool: the runtime must keep driving the
    // test's ZooKeeper session, which holds the /master it published.
    let status_on_client = |name: &str| {
        let cmd = c.cli_command_on("client", "status", &[]);
        let (dir, name) = (c.dir.path().to_path_buf(), name.to_string());
        async move {
            let started = Instant::now();
            let (status, _, stderr) = tokio::task::spawn_blocking(move || {
                Background::start(cmd, &dir, &name).wait(Duration::from_secs(60))
            })
            .await
            .unwrap();
            (status, stderr, started.elapsed())
        }
    };
    rt().block_on(async {
        let zk = c.zk().await;
        // No route from the client's host: known before anything is sent.
        let nowhere = "10.78.0.1:7470";
        let mut info = MasterInfo {
            node_id: "nowhere".into(),
            addr: nowhere.into(),
            epoch: 1,
            session_timeout_ms: 1000,
            store: String::new(),
            protocol: None,
            build: String::new(),
        };
        c.publish_master(&zk, &info).await;
        let (status, stderr, took) = status_on_client("status-noroute").await;
        assert!(!status.success());
        assert!(
            stderr.contains(&format!("cannot send to {nowhere} from this host")),
            "{stderr}"
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");

        // A published master whose address is silent.
        zk.delete(&c.layout().master(), None).await.unwrap();
        info.node_id = "ghost".into();
        info.addr = ghost.clone();
        c.publish_master(&zk, &info).await;
        let (status, stderr, took) = status_on_client("status-silent").await;
        assert!(!status.success());
        assert!(
            stderr.contains(&format!("the master ghost at {ghost} does not answer")),
            "no word that it waits: {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "the master ghost at {ghost} (epoch 1) did not answer"
            )),
            "{stderr}"
        );
        // Its session timeout (1 s) plus the client's margin (3 s).
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(30),
            "took {took:?}"
        );
        assert!(!stderr.contains("no master is serving"), "{stderr}");
    });

    // A node on loopback cannot be dialled from other hosts.
    let (status, _, stderr) = Background::start(
        c.cli_command_on(
            "ghost",
            "node",
            &["--listen", "127.0.0.1:0", "--node-id", "lo"],
        ),
        c.dir.path(),
        "node-loopback",
    )
    .wait(Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        stderr.contains("would advertise 127.0.0.1:") && stderr.contains("--advertise"),
        "{stderr}"
    );
}

/// A counter's value summed over its series, from a node's metrics page.
fn scrape(addr: &str, name: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").expect("metrics page");
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A submission's upload is cut off midway (the master's host loses its
/// link while about 6 MB of tasks travel over a 100 ms round trip), the
/// master is killed, and the link comes back: the client's retry with the
/// same job id reaches the next master and leaves exactly one job, whose
/// result is exact.
#[test]
fn a_submission_cut_mid_upload_and_retried_leaves_exactly_one_job() {
    let Some(mut net) = Net::new("a_submission_cut_mid_upload_and_retried_leaves_exactly_one_job")
    else {
        return;
    };
    net.host("zk");
    let slow = LinkParams {
        one_way_delay: Duration::from_millis(50),
        loss: 0.0,
    };
    net.emulated_host("m1", slow);
    net.host("m2");
    net.host("w");
    let metrics = format!("{}:9100", net.ip("m1"));
    let mut c = Cluster::on_net(BIN, net, &["zk"]);
    let (corpus, baseline) = corpus(c.dir.path(), 4, 13);
    c.node_on(
        "m1",
        "m1",
        &["--role", "candidate", "--metrics-addr", &metrics],
    );
    let size = std::fs::metadata(&corpus).unwrap().len();
    // 64-byte splits: many small tasks, a big submission.
    let tasks: Vec<wordcount::CountWords> = (0..size.div_ceil(64))
        .map(|i| wordcount::CountWords {
            input: corpus.display().to_string(),
            offset: i * 64,
            len: 64,
            normalize: false,
        })
        .collect();
    assert!(tasks.len() > 60_000);
    rt().block_on(async {
        let zk = c.zk().await;
        let first = c.master(&zk, None, STEP).await;
        assert_eq!(first.node_id, "m1");
        c.node_on("m2", "m2", &["--role", "candidate"]);
        c.node_on("w", "w", &["--role", "worker", "--slots", "2"]);
        c.workers(&zk, 1, STEP).await;
        let client = ringleader::Client::connect(client_config(&c))
            .await
            .unwrap();
        let opts = ringleader::SubmitOptions {
            job_id: Some("up-1".into()),
            shard_size: Some(2048),
            ..Default::default()
        };
        let submit = tokio::spawn({
            let client = client.clone();
            async move {
                client
                    .submit::<wordcount::WordCount>(tasks, opts)
                    .await
                    .map(|job| job.id().to_string())
            }
        });
        let local = tokio::task::LocalSet::new();
        let handle = local
            .run_until(async {
                // Midway: the upload has begun and the job is not written yet.
                tokio::time::sleep(Duration::from_millis(400)).await;
                c.net().cut("m1");
                let written = zk.check_stat(&c.layout().job("up-1")).await.unwrap();
                assert!(
                    written.is_none(),
                    "the upload ended before the cut; make it bigger"
                );
                c.kill9("m1");
                let second = c.master(&zk, Some(first.epoch), STEP).await;
                assert_eq!(second.node_id, "m2");
                c.net().heal("m1");
                submit.await.unwrap()
            })
            .await;
        let id =
            handle.unwrap_or_else(|e| panic!("the retried submission failed: {e}\n{}", c.logs()));
        assert_eq!(id, "up-1");
        let jobs = zk.list_children(&c.layout().jobs()).await.unwrap();
        assert_eq!(
            jobs,
            vec!["up-1".to_string()],
            "one job, whatever the retries"
        );
        let job = client.job::<wordcount::WordCount>("up-1");
        assert_exact(&job, &baseline, &c.path("out.tsv")).await;
    });
}

/// The README's walkthrough ("Running on several machines"), run as written
/// with the test's addresses in place of `zk1.example` and the bucket: the
/// CA, ZooKeeper's certificate (its server then started with it, TLS
/// port only for the cluster) and three identities made on the operator's
/// host (this process),
/// two nodes on hosts of their own, and a submission with `--upload` from
/// the laptop's host, whose count equals the single-process count. The
/// directories issued hold no CA key, and every key is readable by its
/// owner only.
#[test]
fn the_readme_walkthrough_runs_on_separate_hosts() {
    let Some(mut net) = Net::new("the_readme_walkthrough_runs_on_separate_hosts") else {
        return;
    };
    for h in ["zk", "zk1", "store", "n1", "n2", "laptop"] {
        net.host(h);
    }
    // The harness's own ZooKeeper (host zk) is not the walkthrough's: that
    // one, on host zk1, serves its TLS port with the certificate the
    // walkthrough issues from its own CA, and starts when it is issued.
    let mut c = Cluster::plain_on_net(BIN, net, &["zk"]);
    let zk1 = c.net().ip("zk1").to_string();
    let mut walk_zk: Option<ringleader::zkserver::ZkServer> = None;
    let store = c.s3_store_on("store");
    let work = c.path("walk");
    std::fs::create_dir(&work).unwrap();
    let (corpus, baseline) = corpus(c.dir.path(), 8, 14);
    std::fs::copy(&corpus, work.join("corpus.txt")).unwrap();

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let block = readme
        .split("<!-- walkthrough")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the README's walkthrough block");
    let mut nodes = Vec::new();
    let mut submitted = None;
    for line in block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let line = line
            .replace("zk1.example,10.0.0.11", &zk1)
            .replace("zk1.example:2281", &format!("{zk1}:2281"))
            .replace("s3://bucket/ringleader", &store);
        let args: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(args[0], "wordcount", "{line}");
        let host = match args[1] {
            // The node's host is named after its identity's directory
            // (its id comes from the certificate there).
            "node" => {
                let at = args.iter().position(|a| *a == "--certs").expect("--certs");
                Some(args[at + 1])
            }
            "submit" => Some("laptop"),
            _ => None,
        };
        let mut cmd = match host {
            Some(h) => c.net().command(h, BIN),
            None => std::process::Command::new(BIN),
        };
        cmd.args(&args[1..])
            .current_dir(&work)
            .env("TMPDIR", &work)
            .envs(c.env.iter().map(|(k, v)| (k, v)));
        let name = format!("walk-{}-{}", args[1], nodes.len());
        match args[1] {
            "node" => nodes.push(Background::start(cmd, c.dir.path(), &name)),
            "submit" => submitted = Some(Background::start(cmd, c.dir.path(), &name)),
            _ => {
                let out = cmd.output().unwrap();
                assert!(
                    out.status.success(),
                    "{line}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                // ZooKeeper's certificate: its host runs it with step 1's
                // zoo.cfg lines (the harness writes the same ones).
                if args.contains(&"--zookeeper") {
                    let at = args.iter().position(|a| *a == "--out").expect("--out");
                    let host = ringleader::zkserver::ServerHost::netns(
                        zk1.parse().unwrap(),
                        c.net().netns("zk1"),
                    );
                    let opts = ringleader::zkserver::ZkServerOptions {
                        tls: Some(work.join(args[at + 1])),
                        ..Default::default()
                    };
                    walk_zk = Some(
                        ringleader::zkserver::ZkServer::start_on(&c.path("walk-zk"), &host, &opts)
                            .expect("the walkthrough's ZooKeeper starts with its certificate"),
                    );
                }
            }
        }
    }
    assert_eq!(nodes.len(), 2, "the walkthrough starts two nodes");
    assert!(
        walk_zk.is_some(),
        "the walkthrough issues ZooKeeper's certificate"
    );
    let (status, _, stderr) = submitted
        .expect("the walkthrough submits")
        .wait(Duration::from_secs(180));
    assert!(
        status.success(),
        "the walkthrough's submit failed:\n{stderr}"
    );
    assert_same_file(&work.join("counts.tsv"), &baseline);

    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(work.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    for host_dir in ["n1", "n2", "laptop"] {
        assert!(
            !work.join(host_dir).join("ca.key").exists(),
            "{host_dir} holds the CA's key"
        );
        assert!(work.join(host_dir).join("ca.pem").exists());
    }
    assert_eq!(mode("ca/ca.key"), 0o600);
    assert_eq!(mode("ca"), 0o700);
    assert_eq!(mode("n1/node.key"), 0o600);
    assert_eq!(mode("laptop/client.key"), 0o600);
}

/// ZooKeeper that cannot be reached is told apart, from another host:
/// nothing listening (at once), a name that does not resolve (at once),
/// and a host that does not answer at all (after a bounded wait).
#[test]
fn zookeeper_out_of_reach_says_why() {
    let Some(mut net) = Net::new("zookeeper_out_of_reach_says_why") else {
        return;
    };
    net.host("zk");
    net.host("client");
    net.emulated_host(
        "blind",
        LinkParams {
            one_way_delay: Duration::ZERO,
            loss: 1.0,
        },
    );
    let certs = tempfile::tempdir().unwrap();
    ringleader::pki::make_cluster_certs(certs.path()).unwrap();
    let status = |host: &str, zk: &str| {
        let started = Instant::now();
        let o = net
            .command(host, BIN)
            .args(["status", "--zk", zk, "--certs"])
            .arg(certs.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            started.elapsed(),
        )
    };
    let zk_ip = net.ip("zk");
    let (code, err, took) = status("client", &format!("{zk_ip}:2181"));
    assert_eq!(code, Some(7), "{err}");
    assert!(
        err.contains(&format!(
            "{zk_ip}:2181: connection refused (nothing listens on port 2181)"
        )),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");

    let (code, err, took) = status("client", "zookeeper.invalid:2181");
    assert_eq!(code, Some(7), "{err}");
    assert!(
        err.contains("zookeeper.invalid: cannot resolve the host name"),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");

    // Every frame of this host is lost: no answer, then the error.
    let (code, err, took) = status("blind", &format!("{zk_ip}:2181"));
    assert_eq!(code, Some(7), "{err}");
    assert!(
        err.contains(&format!("{zk_ip}:2181: no answer within 2 s")),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}
