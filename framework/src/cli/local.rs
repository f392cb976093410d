//! `local`: a private ZooKeeper and N nodes on this machine, one job run
//! through them, everything stopped at the end (the demo, and a user's
//! first run).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::*;

/// Child processes stopped with SIGTERM (then SIGKILL) when dropped.
struct Children(Vec<Child>);

impl Children {
    fn stop(&mut self) {
        crate::process::terminate_all(&mut self.0, Duration::from_secs(10));
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(super) fn run_local(
    a: LocalArgs,
    jobs: &[std::sync::Arc<dyn ErasedCliJob>],
    name: &str,
    tasks: Vec<ByteBuf>,
    opts: JobOptions,
) -> anyhow::Result<()> {
    let out = Output::new(a.output.clone());
    let tmp = tempfile::Builder::new()
        .prefix("ringleader-local-")
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    let started = Instant::now();
    let certs = dir.join("certs");
    crate::pki::make_cluster_certs(&certs)?;
    let (zk, zk_connect) = start_zookeeper(&dir, &certs)?;
    let nodes = a.nodes.max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let slots = a.slots.unwrap_or_else(|| cpus.div_ceil(nodes).max(1));
    let store = a
        .store
        .clone()
        .unwrap_or_else(|| dir.join("store").display().to_string());
    let node = NodeArgs {
        dir: &dir,
        certs: &certs,
        zk_connect: &zk_connect,
        slots,
        store: &store,
    };
    let (mut children, metrics) = start_nodes(&node, nodes)?;
    eprintln!(
        "local work dir (removed at exit unless --keep): {}",
        dir.display()
    );
    eprintln!("local cluster: ZooKeeper at {zk_connect} (TLS), {nodes} nodes x {slots} slots");
    for (i, m) in metrics.iter().enumerate() {
        eprintln!("  node-{i} metrics: http://{m}/metrics");
    }
    let prom = match a.prometheus {
        true => Some(start_prometheus(&dir, &metrics)?),
        false => None,
    };
    let conn = Conn {
        zk: zk_connect.clone(),
        cluster: "local".into(),
        certs: certs.clone(),
        zk_tls: true,
    };
    wait_until_up(&conn, nodes as usize, &dir)?;
    let res = run_job(&conn, jobs, (name, tasks, opts), &out, started);
    if res.is_err() {
        for i in 0..nodes {
            eprintln!(
                "--- last lines of node-{i}.log ---\n{}",
                tail(&dir.join(format!("node-{i}.log")), 15)
            );
        }
    }
    if let Some(p) = &prom {
        report_prometheus(p);
    }
    if a.linger_secs > 0 {
        linger(Duration::from_secs(a.linger_secs), &zk_connect, &certs);
    }
    drop(prom);
    children.stop();
    drop(zk);
    if a.keep {
        eprintln!("kept {}", tmp.keep().display());
    }
    res
}

/// A private ZooKeeper serving its TLS port with the cluster's CA, as a
/// cluster of several machines should: only node certificates change
/// the znodes. Returns it and its TLS connect string.
fn start_zookeeper(dir: &Path, certs: &Path) -> anyhow::Result<(ZkServer, String)> {
    let zk_certs = dir.join("zk-certs");
    crate::pki::issue_zookeeper(certs, &["127.0.0.1".to_string()], &zk_certs)?;
    let zk = ZkServer::start(
        &dir.join("zk"),
        &ZkServerOptions {
            tls: Some(zk_certs),
            ..ZkServerOptions::default()
        },
    )?;
    let zk_connect = zk
        .secure_connect_string()
        .ok_or_else(|| anyhow!("the private ZooKeeper opened no TLS port"))?;
    Ok((zk, zk_connect))
}

/// What every node of the one-machine cluster shares.
struct NodeArgs<'a> {
    dir: &'a Path,
    certs: &'a Path,
    zk_connect: &'a str,
    slots: u32,
    store: &'a str,
}

/// Starts `n` nodes of this binary, each logging to `node-<i>.log` in the
/// work directory. Returns them and their metrics addresses.
fn start_nodes(node: &NodeArgs<'_>, n: u32) -> anyhow::Result<(Children, Vec<String>)> {
    let exe = std::env::current_exe()?;
    let mut children = Children(Vec::new());
    let mut metrics = Vec::new();
    for i in 0..n {
        let log = std::fs::File::create(node.dir.join(format!("node-{i}.log")))?;
        let maddr = format!("127.0.0.1:{}", free_port()?);
        let child = Command::new(&exe)
            .args([
                "node",
                "--zk",
                node.zk_connect,
                "--zk-tls",
                "--cluster",
                "local",
                "--node-id",
                &format!("node-{i}"),
            ])
            .arg("--certs")
            .arg(node.certs)
            .arg("--data-dir")
            .arg(node.dir.join("data"))
            .args([
                "--slots",
                &node.slots.to_string(),
                "--metrics-addr",
                &maddr,
                "--session-timeout-ms",
                "2000",
                // Three nodes: no burst to spread.
                "--start-jitter-ms",
                "0",
                // Several nodes on this host: each its own port.
                "--listen",
                "127.0.0.1:0",
                "--store",
                node.store,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        children.0.push(child);
        metrics.push(maddr);
    }
    Ok((children, metrics))
}

/// `--prometheus`: a private Prometheus scraping every node each second.
fn start_prometheus(dir: &Path, metrics: &[String]) -> anyhow::Result<crate::prom::PromServer> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let p = crate::prom::PromServer::start(&dir.join("prometheus"), &addr, metrics)?;
    eprintln!(
        "Prometheus: http://{}/ (scraping every node each second)",
        p.addr()
    );
    Ok(p)
}

/// Waits until the cluster is up: a master serving and every node
/// registered as a worker (the job's clock starts then), at most 60 s.
fn wait_until_up(conn: &Conn, nodes: usize, logs: &Path) -> anyhow::Result<()> {
    // Listing the workers takes a node's certificate under the cluster's
    // ACLs; the one-machine directory issues one in memory.
    let watcher = tls::Identity::node(&conn.certs, Some("local-watch"), || "local-watch".into())?;
    block_on(async move {
        let layout = crate::coord::Layout::new("local").with_acl(crate::coord::AclMode::Cluster);
        let zk = crate::coord::Session::connect_with(
            &conn.zk,
            Duration::from_secs(10),
            layout,
            Some(&crate::client::zk_tls(&watcher, &conn.certs)),
        )
        .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        zk.wait_for_master(None, Duration::from_secs(60))
            .await?
            .ok_or_else(|| {
                anyhow!(
                    "no master within 60 s; see the node logs under {}",
                    logs.display()
                )
            })?;
        use futures::StreamExt;
        let mut workers = Box::pin(zk.workers());
        let mut seen = 0;
        loop {
            match tokio::time::timeout_at(deadline, workers.next()).await {
                Ok(Some(Ok(w))) if w.len() >= nodes => return Ok(()),
                Ok(Some(Ok(w))) => seen = w.len(),
                Ok(Some(Err(e))) => bail!("cannot list workers: {e}"),
                Ok(None) | Err(_) => bail!(
                    "only {seen} of {nodes} nodes registered within 60 s; see the node logs under {}",
                    logs.display()
                ),
            }
        }
    })
}

/// Submits the job and prints its outputs; says how fast it ran.
fn run_job(
    conn: &Conn,
    jobs: &[std::sync::Arc<dyn ErasedCliJob>],
    (name, tasks, opts): (&str, Vec<ByteBuf>, JobOptions),
    out: &Output,
    started: Instant,
) -> anyhow::Result<()> {
    let n_tasks = tasks.len();
    let job_started = Instant::now();
    block_on(async move {
        let client = Client::connect(client_config(conn)).await?;
        let (id, _) = client.submit_encoded(name, tasks, opts, None).await?;
        eprintln!("job {id} accepted: {n_tasks} tasks");
        run_to_end(&client, jobs, &id, out).await
    })?;
    let secs = job_started.elapsed().as_secs_f64();
    eprintln!(
        "job ran in {secs:.2} s ({:.0} tasks/s); whole local run {:.2} s",
        n_tasks as f64 / secs,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--prometheus`: what Prometheus says of the run, after two more
/// scrapes so that the job's last counts are in.
fn report_prometheus(p: &crate::prom::PromServer) {
    std::thread::sleep(Duration::from_millis(2500));
    eprintln!("Prometheus says:");
    use crate::metrics as m;
    for expr in [
        format!("sum({}{{role=\"master\"}})", m::NODE_ROLE),
        format!("max({})", m::EPOCH),
        format!("sum({})", m::WORKERS),
        format!("sum({})", m::TASKS_RUN),
        format!("sum({})", m::SHARDS_COMMITTED),
        format!("sum({})", m::JOBS_COMPLETED),
        format!(
            "histogram_quantile(0.99, sum by (le) (rate({}_bucket[1m])))",
            m::TASK_SECONDS
        ),
        format!(
            "sum(rate({}{{direction=\"received\"}}[1m]))",
            m::FRAME_BYTES
        ),
    ] {
        let v = p
            .scalar(&expr)
            .map_or("no data".to_string(), |v| format!("{v}"));
        eprintln!("  {expr} = {v}");
    }
}

/// `--linger-secs`: keeps the cluster up (Ctrl-C ends it sooner), saying
/// how another shell or a program reaches it meanwhile.
fn linger(linger: Duration, zk_connect: &str, certs: &Path) {
    eprintln!("lingering {} s; Ctrl-C to stop now", linger.as_secs());
    let bin = std::env::args()
        .next()
        .unwrap_or_else(|| "BINARY".to_string());
    let conn = format!(
        "--zk {zk_connect} --zk-tls --cluster local --certs {}",
        certs.display()
    );
    eprintln!("to reach it from another shell meanwhile:");
    eprintln!("  {bin} status {conn}");
    eprintln!("  {bin} submit {conn} JOB ARGS...");
    eprintln!("or, for a program of yours (ClientConfig::from_env):");
    eprintln!(
        "  export RINGLEADER_ZK={zk_connect} RINGLEADER_ZK_TLS=true RINGLEADER_CLUSTER=local \
         RINGLEADER_CERTS={}",
        certs.display()
    );
    actix::System::new().block_on(async move {
        tokio::select! {
            _ = tokio::time::sleep(linger) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
}
