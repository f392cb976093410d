//! Many worker nodes in one process, for the scale benchmark: each has its
//! own ZooKeeper session, registration, QUIC endpoint and link to the master,
//! exactly as if it were a process of its own.
//!
//! `bench-swarm --zk 127.0.0.1:2181 --certs DIR --data-dir DIR --count 1000`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ringleader::{NodeConfig, Role};

#[derive(Parser)]
struct Args {
    /// ZooKeeper connect string.
    #[arg(long)]
    zk: String,
    /// Cluster name.
    #[arg(long, default_value = "test")]
    cluster: String,
    /// Certificates directory (`ca.pem`, `node.pem`, `node.key`).
    #[arg(long)]
    certs: PathBuf,
    /// Shared data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// The cluster's store (default: the one a node on this host uses by
    /// default, as `ringleader node` without `--store`).
    #[arg(long, env = "RINGLEADER_STORE")]
    store: Option<String>,
    /// Worker nodes to run.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Node ids are `<prefix><n>`.
    #[arg(long, default_value = "swarm-")]
    prefix: String,
    /// Threads, each an actix system running its share of the nodes.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Reach ZooKeeper over its TLS port with the certificate of `--certs`.
    #[arg(long, env = "RINGLEADER_ZK_TLS")]
    zk_tls: bool,
    /// Requested ZooKeeper session timeout of each node.
    #[arg(long, default_value_t = 2000)]
    session_timeout_ms: u64,
    /// Nodes started per second (0: all at once, as a fleet restarted
    /// together). A session opened over the private ZooKeeper's TLS port
    /// costs its server some 11 ms of CPU (the handshake, with a client
    /// certificate, on the JVM's client compiler); the nodes' own start
    /// jitter spreads them (see `--start-jitter-ms`).
    #[arg(long, env = "BENCH_SWARM_STARTS_PER_S", default_value_t = 0)]
    starts_per_s: u32,
    /// Each node's start jitter, in ms (default: a node's).
    #[arg(long, env = "RINGLEADER_START_JITTER_MS")]
    start_jitter_ms: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(false)
        .init();
    let registry = ringleader::Node::builder()
        .task::<probe::Probe>()
        .cli_job::<wordcount::WordCount>()
        .registry()
        .clone();
    let store = match args.store.clone() {
        Some(s) => s,
        None => ringleader::node::default_dir(&args.cluster)?
            .join("store")
            .display()
            .to_string(),
    };
    let configs: Vec<NodeConfig> = (0..args.count)
        .map(|i| NodeConfig {
            zk: args.zk.clone(),
            cluster: args.cluster.clone(),
            node_id: Some(format!("{}{i}", args.prefix)),
            role: Role::Worker,
            listen: "127.0.0.1:0".parse().expect("a literal address"),
            advertise: None,
            certs: args.certs.clone(),
            zk_tls: args.zk_tls,
            data_dir: args.data_dir.clone(),
            store: store.clone(),
            slots: 1,
            session_timeout: Duration::from_millis(args.session_timeout_ms),
            start_jitter: args.start_jitter_ms.map_or(
                ringleader::node::DEFAULT_START_JITTER,
                Duration::from_millis,
            ),
            max_frame: ringleader::wire::DEFAULT_MAX_FRAME,
            max_job_bytes: 32 << 20,
            max_queued_bytes: 32 << 20,
            retention: Duration::from_secs(60),
            retention_max_jobs: 10_000,
            drain_timeout: Duration::from_secs(5),
            link_timeout: ringleader::transport::LINK_TIMEOUT,
            audit_file: None,
            build: ringleader::build_id("bench-swarm", None),
        })
        .collect();
    let threads = args.threads.clamp(1, configs.len().max(1));
    let mut shares: Vec<Vec<(NodeConfig, Duration)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, cfg) in configs.into_iter().enumerate() {
        let start = match args.starts_per_s {
            0 => Duration::ZERO,
            r => Duration::from_secs_f64(i as f64 / f64::from(r)),
        };
        shares[i % threads].push((cfg, start));
    }
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let registry = registry.clone();
            std::thread::spawn(move || run_share(share, registry))
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a swarm thread panicked"))??;
    }
    Ok(())
}

/// Runs some nodes on this thread's own actix system.
fn run_share(
    configs: Vec<(NodeConfig, Duration)>,
    registry: ringleader::registry::Registry,
) -> anyhow::Result<()> {
    actix::System::new().block_on(async move {
        let nodes: Vec<_> = configs
            .into_iter()
            .map(|(cfg, start)| {
                let id = cfg.node_id.clone().unwrap_or_default();
                let registry = registry.clone();
                actix::spawn(async move {
                    // Each node's start, counted from the swarm's.
                    actix::clock::sleep(start).await;
                    ringleader::node::run(cfg, registry)
                        .await
                        .with_context(|| format!("node {id}"))
                })
            })
            .collect();
        for n in nodes {
            n.await.context("a swarm node panicked")??;
        }
        Ok(())
    })
}
