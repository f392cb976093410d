//! The command line every node binary gets from [`NodeBuilder::run_cli`]:
//! `node`, `submit`, `result`, `status`, `cancel`, `certs` and `local`.
//! Jobs registered with [`NodeBuilder::cli_job`] add their own arguments to
//! `submit`, `result` and `local`.
//!
//! Here: the arguments and their dispatch, `node`, `submit`, `result`,
//! `status`, `cancel` and `certs`; [`render`] prints, [`local`] runs the
//! one-machine demo. The jobs themselves are described in [`crate::cli_job`].

mod local;
mod render;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, FromArgMatches, Parser, Subcommand};
use serde_bytes::ByteBuf;

pub use crate::cli_job::{BoxError, CliJob};
use crate::cli_job::{ErasedCliJob, Finish};
use crate::client::{Client, ClientConfig};
use crate::node::{self, NodeBuilder, NodeConfig, Role};
use crate::transport::tls;
use crate::wire::{JobOptions, JobState};
use crate::zkserver::{free_port, ZkServer, ZkServerOptions};
use local::run_local;
use render::{print_report, status_json, status_text, Progress};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A Ringleader node binary: run nodes, submit jobs, watch the cluster"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Args, Debug, Clone)]
struct Conn {
    /// ZooKeeper connect string (host:port[,host:port...]).
    #[arg(long, env = "RINGLEADER_ZK", default_value = "127.0.0.1:2181")]
    zk: String,
    /// Cluster name.
    #[arg(long, env = "RINGLEADER_CLUSTER", default_value = "default")]
    cluster: String,
    /// Directory of the cluster CA and certificates (see `certs`).
    #[arg(long, env = "RINGLEADER_CERTS", default_value = "certs")]
    certs: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct NodeArgs {
    #[command(flatten)]
    conn: Conn,
    /// What this node does.
    #[arg(long, env = "RINGLEADER_ROLE", value_enum, default_value = "all")]
    role: Role,
    /// QUIC (UDP) address to bind: every address on port 7470 by default
    /// (IPv6 and IPv4; IPv4 only where IPv6 is off).
    #[arg(long, env = "RINGLEADER_LISTEN", default_value = "[::]:7470")]
    listen: SocketAddr,
    /// IP:port other nodes and clients dial (default: the --listen IP if it
    /// names one, else this host's address toward ZooKeeper, with the bound port).
    #[arg(long, env = "RINGLEADER_ADVERTISE")]
    advertise: Option<String>,
    /// Node id (default: random).
    #[arg(long, env = "RINGLEADER_NODE_ID")]
    node_id: Option<String>,
    /// This host's scratch directory (default: a directory of the
    /// cluster's name under the temporary directory).
    #[arg(long, env = "RINGLEADER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The cluster's object store, for outputs, results and inputs too big
    /// for ZooKeeper: s3://bucket/prefix (with the usual AWS_* variables)
    /// for clusters, file:///path for one machine or a shared filesystem
    /// (default: file://<data-dir>/store).
    #[arg(long, env = "RINGLEADER_STORE")]
    store: Option<String>,
    /// Concurrent tasks (default: number of CPUs).
    #[arg(long, env = "RINGLEADER_SLOTS")]
    slots: Option<u32>,
    /// Requested ZooKeeper session timeout.
    #[arg(long, env = "RINGLEADER_SESSION_TIMEOUT_MS", default_value_t = 4000)]
    session_timeout_ms: u64,
    /// Serve Prometheus metrics here.
    #[arg(long, env = "RINGLEADER_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Largest frame accepted, in bytes.
    #[arg(long, env = "RINGLEADER_MAX_FRAME", default_value_t = crate::wire::DEFAULT_MAX_FRAME)]
    max_frame: usize,
    /// Largest submission accepted, in bytes of encoded tasks.
    #[arg(long, env = "RINGLEADER_MAX_JOB_BYTES", default_value_t = 32 << 20)]
    max_job_bytes: usize,
    /// Most bytes of tasks all unfinished jobs may hold together: they live
    /// in ZooKeeper's memory until their job finishes.
    #[arg(long, env = "RINGLEADER_MAX_QUEUED_BYTES", default_value_t = 32 << 20)]
    max_queued_bytes: usize,
    /// Seconds a fetched result stays in ZooKeeper.
    #[arg(long, env = "RINGLEADER_RETENTION_SECS", default_value_t = 60)]
    retention_secs: u64,
    /// Most fetched results kept in ZooKeeper: beyond it the oldest go
    /// before their retention ends (each costs a few znodes of ZooKeeper's
    /// memory; a work queue fetches thousands a second).
    #[arg(long, env = "RINGLEADER_RETENTION_MAX_JOBS", default_value_t = 10_000)]
    retention_max_jobs: usize,
    /// On SIGTERM, seconds to finish the shards already started before leaving.
    #[arg(long, env = "RINGLEADER_DRAIN_SECS", default_value_t = 30)]
    drain_secs: u64,
    /// Silence after which a QUIC link to a peer is declared lost and its
    /// shards reassigned (keep-alives go out four times per period).
    #[arg(long, env = "RINGLEADER_LINK_TIMEOUT_MS", default_value_t = crate::transport::LINK_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(50..=600_000))]
    link_timeout_ms: u64,
    /// Append an audit log here while this node is master: one JSON line
    /// per accepted job, committed shard, failed merge, finished or
    /// cancelled job, lost or drained worker, speculative copy.
    #[arg(long, env = "RINGLEADER_AUDIT_FILE")]
    audit_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct SubmitArgs {
    #[command(flatten)]
    conn: Conn,
    /// Job id (default: a random UUID); resubmitting an id returns the existing job.
    #[arg(long)]
    job_id: Option<String>,
    /// Return once the job is accepted, without waiting for the result.
    #[arg(long)]
    detach: bool,
    /// Copy input files that are local paths into the cluster's store first
    /// (the store the master publishes), so that workers on other hosts
    /// read them from there.
    #[arg(long)]
    upload: bool,
    #[command(flatten)]
    job: JobArgs,
}

/// How a submitted job is cut and retried (`submit` and `local`).
#[derive(Args, Debug, Clone)]
struct JobArgs {
    /// Tasks per shard (default: the job's own).
    #[arg(long)]
    shard_size: Option<u32>,
    /// Attempts per task.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Seconds after which a running shard gets a copy on another worker
    /// (default: 4x the job's typical shard time).
    #[arg(long)]
    shard_timeout_secs: Option<f64>,
}

impl JobArgs {
    fn options(&self, job: &dyn ErasedCliJob) -> JobOptions {
        JobOptions {
            shard_size: self
                .shard_size
                .unwrap_or_else(|| job.default_shard_size())
                .max(1),
            max_attempts: self.max_attempts.max(1),
            shard_timeout_ms: self.shard_timeout_secs.map(|s| (s * 1000.0) as u64),
        }
    }
}

#[derive(Args, Debug, Clone)]
struct ResultArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job.
    job_id: String,
}

#[derive(Args, Debug, Clone)]
struct StatusArgs {
    #[command(flatten)]
    conn: Conn,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Refresh every second until Ctrl-C.
    #[arg(long)]
    watch: bool,
}

#[derive(Args, Debug, Clone)]
struct CancelArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job.
    job_id: String,
}

#[derive(Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
struct CertsArgs {
    #[command(subcommand)]
    action: Option<CertsAction>,
    /// Without a subcommand: one directory with the CA, a node and a client
    /// certificate, for one machine (every host given this directory holds
    /// the CA's key: use `init` and `issue` for clusters).
    #[arg(long, default_value = "certs")]
    out: PathBuf,
}

#[derive(Subcommand, Debug, Clone)]
enum CertsAction {
    /// Make the cluster CA (ca.pem, ca.key). Keep this directory on the
    /// operator's machine: whoever holds ca.key can mint certificates.
    Init {
        /// Where the CA goes (made 0700; the key is 0600).
        #[arg(long)]
        ca_dir: PathBuf,
    },
    /// Issue one identity: a directory with ca.pem and the host's own
    /// certificate and key (node.pem/node.key or client.pem/client.key),
    /// to copy to that host alone.
    Issue {
        /// The CA made by `certs init`.
        #[arg(long)]
        ca_dir: PathBuf,
        /// A node's certificate, named after its node id.
        #[arg(long, conflicts_with = "client", required_unless_present = "client")]
        node: Option<String>,
        /// A client's certificate, named after the client.
        #[arg(long)]
        client: Option<String>,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug, Clone)]
struct LocalArgs {
    /// Nodes to start (each a master candidate and a worker).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Task slots per node (default: CPUs / nodes, at least 1).
    #[arg(long)]
    slots: Option<u32>,
    #[command(flatten)]
    job: JobArgs,
    /// Keep the temporary directory (logs, ZooKeeper data) after the run.
    #[arg(long)]
    keep: bool,
    /// Also start Prometheus scraping the nodes (with Ringleader's alert rules).
    #[arg(long)]
    prometheus: bool,
    /// Keep the cluster (and Prometheus) up this many seconds after the job.
    #[arg(long, default_value_t = 0)]
    linger_secs: u64,
    /// The cluster's object store (default: a directory in the temporary
    /// directory, removed at the end; the objects of a given store stay).
    #[arg(long, env = "RINGLEADER_STORE")]
    store: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Join a cluster: by default a master candidate and a worker.
    Node(NodeArgs),
    /// Submit a job, wait for it and write its result.
    Submit(SubmitArgs),
    /// Fetch a finished job's result.
    Result(ResultArgs),
    /// Show the leader, epoch, workers and jobs.
    Status(StatusArgs),
    /// Cancel a job.
    Cancel(CancelArgs),
    /// Make a cluster CA with node and client certificates.
    Certs(CertsArgs),
    /// Start a private ZooKeeper and N nodes here, run a job, stop everything.
    Local(LocalArgs),
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,quinn=warn,zookeeper_client=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

impl NodeBuilder {
    /// The job `submit`, `result` and `local` work with.
    fn command_line_job(&self) -> anyhow::Result<std::sync::Arc<dyn ErasedCliJob>> {
        self.cli
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("this binary registers no command-line job"))
    }

    /// Parses the process arguments and runs the chosen command.
    pub fn run_cli(self) -> anyhow::Result<()> {
        self.run_cli_from(std::env::args_os())
    }

    /// Like [`run_cli`](Self::run_cli) with explicit arguments.
    pub fn run_cli_from<I, T>(self, args: I) -> anyhow::Result<()>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        if let Some(job) = self.cli.first() {
            for sub in ["submit", "local", "result"] {
                cmd = cmd.mut_subcommand(sub, |c| {
                    // The job's arguments, under the subcommand's own description.
                    let about = c.get_about().cloned();
                    let c = job.augment(c);
                    match about {
                        Some(about) => c.about(about),
                        None => c,
                    }
                });
            }
        }
        let matches = cmd.try_get_matches_from(args).unwrap_or_else(|e| e.exit());
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        init_tracing(cli.log_format);
        let sub = matches
            .subcommand()
            .map(|(_, m)| m.clone())
            .ok_or_else(|| anyhow!("no command"))?;
        match cli.cmd {
            Cmd::Node(a) => run_node(self, a),
            Cmd::Certs(a) => run_certs(a),
            Cmd::Submit(a) => {
                let job = self.command_line_job()?;
                let store = if a.upload {
                    let conn = a.conn.clone();
                    Some(block_on(async move {
                        let client = Client::connect(client_config(&conn)).await?;
                        Ok(client.cluster_store().await?)
                    })?)
                } else {
                    None
                };
                let (tasks, finish) = job.plan(&sub, true, store.as_ref())?;
                let opts = a.job.options(job.as_ref());
                block_on(submit(
                    &a.conn,
                    job.name(),
                    tasks,
                    opts,
                    a.job_id,
                    a.detach,
                    finish,
                ))
            }
            Cmd::Result(a) => {
                let job = self.command_line_job()?;
                let (_, finish) = job.plan(&sub, false, None)?;
                block_on(async move {
                    let client = Client::connect(client_config(&a.conn)).await?;
                    let (bytes, report) = client.fetch_encoded(&a.job_id).await?;
                    print_report(&report);
                    finish(&bytes, &report)
                })
            }
            Cmd::Status(a) => block_on(async move {
                let client = Client::connect(client_config(&a.conn)).await?;
                loop {
                    let s = client.status().await?;
                    let text = if a.json {
                        status_json(&s)
                    } else {
                        status_text(&s)
                    };
                    if a.watch && std::io::stdout().is_terminal() {
                        // Clear the screen and go home, like watch(1).
                        print!("\x1b[2J\x1b[H");
                    }
                    println!("{text}");
                    if !a.watch {
                        return Ok(());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                    }
                }
            }),
            Cmd::Cancel(a) => block_on(async move {
                let client = Client::connect(client_config(&a.conn)).await?;
                client.cancel(&a.job_id).await?;
                println!("cancelled {}", a.job_id);
                Ok(())
            }),
            Cmd::Local(a) => {
                let job = self.command_line_job()?;
                let (tasks, finish) = job.plan(&sub, true, None)?;
                let opts = a.job.options(job.as_ref());
                run_local(a, job.name(), tasks, opts, finish)
            }
        }
    }
}

fn run_certs(a: CertsArgs) -> anyhow::Result<()> {
    match a.action {
        None => {
            tls::make_cluster_certs(&a.out)
                .with_context(|| format!("writing certificates to {}", a.out.display()))?;
            println!(
                "wrote the cluster CA and node/client certificates to {} (for one machine; \
                 use `certs init` and `certs issue` for a cluster of several)",
                a.out.display()
            );
        }
        Some(CertsAction::Init { ca_dir }) => {
            tls::make_ca(&ca_dir)
                .with_context(|| format!("making the cluster CA in {}", ca_dir.display()))?;
            println!(
                "made the cluster CA in {}: keep ca.key on this machine; issue each host's \
                 certificate with `certs issue`",
                ca_dir.display()
            );
        }
        Some(CertsAction::Issue {
            ca_dir,
            node,
            client,
            out,
        }) => {
            let (role, name) = match (node, client) {
                (Some(n), _) => (tls::Role::Node, n),
                (None, Some(c)) => (tls::Role::Client, c),
                (None, None) => bail!("say --node ID or --client NAME"),
            };
            tls::issue_to(&ca_dir, role, &name, &out)
                .with_context(|| format!("issuing {name} into {}", out.display()))?;
            println!(
                "issued {name} into {}: copy that directory to its host (it holds no CA key)",
                out.display()
            );
        }
    }
    Ok(())
}

async fn submit(
    conn: &Conn,
    name: &str,
    tasks: Vec<ByteBuf>,
    opts: JobOptions,
    job_id: Option<String>,
    detach: bool,
    finish: Finish,
) -> anyhow::Result<()> {
    // The id is chosen and shown before anything is sent: if the outcome
    // is unknown (the link or the master lost midway), a retry with this
    // id finds the job instead of running it twice.
    let id = job_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    eprintln!("job {id}: submitting {} tasks", tasks.len());
    let retry = |e: crate::client::ClientError| {
        anyhow!(e).context(format!(
            "job {id} may or may not have been accepted: run the same command with \
             --job-id {id} to retry (the job runs at most once), or see it with `status`"
        ))
    };
    let client = Client::connect(client_config(conn)).await.map_err(retry)?;
    let (id, existing) = client
        .submit_encoded(name, tasks, opts, Some(id.clone()))
        .await
        .map_err(retry)?;
    eprintln!(
        "job {id} {}",
        if existing {
            "already exists"
        } else {
            "accepted"
        }
    );
    if detach {
        println!("{id}");
        return Ok(());
    }
    run_to_end(&client, &id, finish).await
}

async fn run_to_end(client: &Client, id: &str, finish: Finish) -> anyhow::Result<()> {
    let mut progress = Progress::new();
    let wait = client.wait(id, |p| progress.show(p));
    let p = tokio::select! {
        p = wait => p?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ndetached; the job keeps running. Fetch it later with `result {id}`");
            return Ok(());
        }
    };
    if p.state == JobState::Cancelled {
        bail!("job {id} was cancelled");
    }
    let (bytes, report) = client.fetch_encoded(id).await?;
    print_report(&report);
    finish(&bytes, &report)
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!(
        "{}-{}-{}",
        host.trim(),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

fn run_node(builder: NodeBuilder, a: NodeArgs) -> anyhow::Result<()> {
    if let Some(addr) = a.metrics_addr {
        crate::metrics::install(addr)
            .with_context(|| format!("starting the metrics exporter on {addr}"))?;
        tracing::info!("metrics at http://{addr}/metrics");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let data_dir = a
        .data_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ringleader-{}", a.conn.cluster)));
    let config = NodeConfig {
        zk: a.conn.zk,
        cluster: a.conn.cluster.clone(),
        node_id: a.node_id.unwrap_or_else(default_node_id),
        role: a.role,
        listen: a.listen,
        advertise: a.advertise,
        certs: a.conn.certs,
        store: a
            .store
            .unwrap_or_else(|| data_dir.join("store").display().to_string()),
        data_dir,
        slots: a.slots.unwrap_or(cpus),
        session_timeout: Duration::from_millis(a.session_timeout_ms),
        max_frame: a.max_frame,
        max_job_bytes: a.max_job_bytes,
        max_queued_bytes: a.max_queued_bytes,
        retention: Duration::from_secs(a.retention_secs),
        retention_max_jobs: a.retention_max_jobs,
        drain_timeout: Duration::from_secs(a.drain_secs),
        link_timeout: Duration::from_millis(a.link_timeout_ms),
        audit_file: a.audit_file,
    };
    let registry = builder.registry;
    actix::System::new().block_on(async move { node::run(config, registry).await })?;
    Ok(())
}

fn block_on<T, F: std::future::Future<Output = anyhow::Result<T>>>(f: F) -> anyhow::Result<T> {
    actix::System::new().block_on(f)
}

fn client_config(c: &Conn) -> ClientConfig {
    ClientConfig::new(c.zk.clone(), c.cluster.clone(), c.certs.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_listens_on_the_documented_port_of_every_address_by_default() {
        let cli = Cli::try_parse_from(["bin", "node"]).expect("parses");
        let Cmd::Node(a) = cli.cmd else {
            panic!("not the node command")
        };
        assert!(a.listen.ip().is_unspecified(), "{}", a.listen);
        assert_eq!(a.listen.port(), node::DEFAULT_PORT);
    }
}
