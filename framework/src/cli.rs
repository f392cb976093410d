//! The command line every node binary gets from [`NodeBuilder::run_cli`]:
//! `node`, `submit`, `result`, `status`, `cancel`, `certs` and `local`.
//! Jobs registered with [`NodeBuilder::cli_job`] add their own arguments to
//! `submit`, `result` and `local`.

use std::io::IsTerminal;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use serde_bytes::ByteBuf;

use crate::client::{Client, ClientConfig, JobReport};
use crate::node::{self, NodeBuilder, NodeConfig, Role};
use crate::registry::{decode, encode};
use crate::store::Store;
use crate::task::Job;
use crate::transport::tls;
use crate::wire::{JobOptions, JobProgress, JobState};
use crate::zkserver::{free_port, ZkServer, ZkServerOptions};

/// Errors user hooks return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A job that can be submitted from the command line.
pub trait CliJob: Job {
    /// Its arguments (added to `submit`, `result` and `local`).
    type Args: Args + FromArgMatches + Send + 'static;
    /// Builds the tasks from the arguments (client side).
    fn tasks(args: &Self::Args) -> Result<Vec<Self::Task>, BoxError>;
    /// The arguments that name input files, if any: `submit --upload`
    /// copies those that are local paths into the cluster's store and
    /// replaces them with the objects' URLs before [`CliJob::tasks`] runs.
    fn inputs(args: &mut Self::Args) -> Vec<&mut String> {
        let _ = args;
        Vec::new()
    }
    /// Writes or prints the result (client side).
    fn output(args: &Self::Args, result: Self::Result, report: &JobReport) -> Result<(), BoxError>;
}

type Finish = Box<dyn FnOnce(&[u8], &JobReport) -> anyhow::Result<()> + Send>;

pub(crate) trait ErasedCliJob: Send + Sync {
    fn name(&self) -> &'static str;
    fn default_shard_size(&self) -> u32;
    fn augment(&self, cmd: clap::Command) -> clap::Command;
    fn plan(
        &self,
        m: &ArgMatches,
        with_tasks: bool,
        upload: Option<&Store>,
    ) -> anyhow::Result<(Vec<ByteBuf>, Finish)>;
}

pub(crate) struct CliEntry<J>(PhantomData<fn() -> J>);

impl<J> Default for CliEntry<J> {
    fn default() -> Self {
        CliEntry(PhantomData)
    }
}

impl<J: CliJob> ErasedCliJob for CliEntry<J> {
    fn name(&self) -> &'static str {
        J::NAME
    }
    fn default_shard_size(&self) -> u32 {
        J::default_shard_size()
    }
    fn augment(&self, cmd: clap::Command) -> clap::Command {
        J::Args::augment_args(cmd)
    }
    fn plan(
        &self,
        m: &ArgMatches,
        with_tasks: bool,
        upload: Option<&Store>,
    ) -> anyhow::Result<(Vec<ByteBuf>, Finish)> {
        let mut args = J::Args::from_arg_matches(m)?;
        if let Some(store) = upload {
            for input in J::inputs(&mut args) {
                if let Some(url) = upload_input(store, input)? {
                    *input = url;
                }
            }
        }
        let tasks = if with_tasks {
            J::tasks(&args)
                .map_err(|e| anyhow!("{e}"))?
                .iter()
                .map(|t| encode("task", t).map(ByteBuf::from))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        let finish: Finish = Box::new(move |bytes, report| {
            let result: J::Result = if bytes.is_empty() {
                J::Result::default()
            } else {
                decode("job result", bytes)?
            };
            J::output(&args, result, report).map_err(|e| anyhow!("{e}"))
        });
        Ok((tasks, finish))
    }
}

/// Copies `input` into `store` if it is a local file; returns its URL.
fn upload_input(store: &Store, input: &str) -> anyhow::Result<Option<String>> {
    if input.contains("://") && !input.starts_with("file://") {
        return Ok(None);
    }
    let path = Path::new(input.strip_prefix("file://").unwrap_or(input));
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read input {}", path.display()))?
        .len();
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("input");
    let name = format!("inputs/{}/{file_name}", uuid::Uuid::new_v4().simple());
    let url = store.url_of(&name);
    eprintln!(
        "uploading {} ({:.1} MiB) to {url}",
        path.display(),
        size as f64 / f64::from(1 << 20)
    );
    let started = Instant::now();
    let mut next_report = size / 4;
    let sent = futures::executor::block_on(store.upload(path, &name, move |sent| {
        if sent >= next_report && sent < size {
            eprintln!("  {:.0}%", sent as f64 * 100.0 / size.max(1) as f64);
            next_report = sent + size / 4;
        }
    }))
    .with_context(|| format!("uploading {}", path.display()))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "  uploaded {:.1} MiB in {secs:.1} s ({:.0} MB/s)",
        sent as f64 / f64::from(1 << 20),
        sent as f64 / 1e6 / secs.max(1e-9)
    );
    Ok(Some(url))
}

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
    /// On SIGTERM, seconds to finish the shards already started before leaving.
    #[arg(long, env = "RINGLEADER_DRAIN_SECS", default_value_t = 30)]
    drain_secs: u64,
    /// Silence after which a QUIC link to a peer is declared lost and its
    /// shards reassigned (keep-alives go out four times per period).
    #[arg(long, env = "RINGLEADER_LINK_TIMEOUT_MS", default_value_t = crate::transport::LINK_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(50..=600_000))]
    link_timeout_ms: u64,
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

fn status_text(s: &crate::wire::ClusterStatus) -> String {
    let mut out = format!("leader {} epoch {}\n", s.leader, s.epoch);
    for w in &s.workers {
        let seen = match (w.connected, w.last_seen_ms) {
            (true, Some(ms)) => format!("connected, last heard {:.1} s ago", ms as f64 / 1000.0),
            (true, None) => "connected".to_string(),
            (false, _) => "registered, not connected".to_string(),
        };
        out.push_str(&format!(
            "worker {} {} slots {} in-flight {} {seen}\n",
            w.node_id, w.addr, w.slots, w.in_flight
        ));
    }
    if s.jobs.is_empty() {
        out.push_str("no jobs running\n");
    }
    for j in &s.jobs {
        out.push_str(&format!(
            "job {} {} {}/{} tasks, {} failed (dead letters), {} retries\n",
            j.job_id,
            j.job_name,
            j.counters.tasks_done,
            j.counters.tasks_total,
            j.counters.tasks_failed,
            j.counters.retries
        ));
    }
    out
}

fn status_json(s: &crate::wire::ClusterStatus) -> String {
    serde_json::to_string(s).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn block_on<T, F: std::future::Future<Output = anyhow::Result<T>>>(f: F) -> anyhow::Result<T> {
    actix::System::new().block_on(f)
}

fn client_config(c: &Conn) -> ClientConfig {
    ClientConfig::new(c.zk.clone(), c.cluster.clone(), c.certs.clone())
}

fn print_report(r: &JobReport) {
    let p = &r.progress;
    eprintln!(
        "job {}: {} tasks, {} failed, {} retried attempts",
        p.job_id, p.counters.tasks_total, p.counters.tasks_failed, p.counters.retries
    );
    for f in r.failures.iter().take(10) {
        eprintln!(
            "  task {} failed after {} attempt(s): {}",
            f.index, f.attempt, f.error
        );
    }
    if r.failures.len() > 10 {
        eprintln!("  ... and {} more failed tasks", r.failures.len() - 10);
    }
}

/// Job progress for a person: a bar with rate and ETA on a terminal, a
/// plain line per second otherwise (logs, CI).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: Instant,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{bar:40.cyan/blue} {pos}/{len} tasks {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Progress {
            bar,
            last: Instant::now() - Duration::from_secs(10),
        }
    }

    fn show(&mut self, p: &JobProgress) {
        let extra = format!(
            "({} failed, {} retries)",
            p.counters.tasks_failed, p.counters.retries
        );
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.counters.tasks_total);
                bar.set_position(p.counters.tasks_done);
                bar.set_message(extra);
                if p.state != JobState::Running {
                    bar.finish();
                }
            }
            None => {
                if p.state == JobState::Running && self.last.elapsed() < Duration::from_secs(1) {
                    return;
                }
                self.last = Instant::now();
                eprintln!(
                    "progress: {}/{} tasks {extra}",
                    p.counters.tasks_done, p.counters.tasks_total
                );
            }
        }
    }
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
        drain_timeout: Duration::from_secs(a.drain_secs),
        link_timeout: Duration::from_millis(a.link_timeout_ms),
    };
    let registry = builder.registry;
    actix::System::new().block_on(async move { node::run(config, registry).await })?;
    Ok(())
}

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

fn run_local(
    a: LocalArgs,
    name: &str,
    tasks: Vec<ByteBuf>,
    opts: JobOptions,
    finish: Finish,
) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("ringleader-local-")
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    let started = Instant::now();
    let zk = ZkServer::start(&dir.join("zk"), &ZkServerOptions::default())?;
    let certs = dir.join("certs");
    tls::make_cluster_certs(&certs)?;
    let exe = std::env::current_exe()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let slots = a
        .slots
        .unwrap_or_else(|| cpus.div_ceil(a.nodes.max(1)).max(1));
    let store = a
        .store
        .clone()
        .unwrap_or_else(|| dir.join("store").display().to_string());
    let mut children = Children(Vec::new());
    let mut metrics = Vec::new();
    for i in 0..a.nodes.max(1) {
        let log = std::fs::File::create(dir.join(format!("node-{i}.log")))?;
        let maddr = format!("127.0.0.1:{}", free_port()?);
        let child = Command::new(&exe)
            .args([
                "node",
                "--zk",
                &zk.connect_string(),
                "--cluster",
                "local",
                "--node-id",
                &format!("node-{i}"),
            ])
            .arg("--certs")
            .arg(&certs)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args([
                "--slots",
                &slots.to_string(),
                "--metrics-addr",
                &maddr,
                "--session-timeout-ms",
                "2000",
                // Several nodes on this host: each its own port.
                "--listen",
                "127.0.0.1:0",
                "--store",
                &store,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        children.0.push(child);
        metrics.push(maddr);
    }
    eprintln!(
        "local work dir (removed at exit unless --keep): {}",
        dir.display()
    );
    eprintln!(
        "local cluster: ZooKeeper at {}, {} nodes x {slots} slots",
        zk.connect_string(),
        a.nodes
    );
    for (i, m) in metrics.iter().enumerate() {
        eprintln!("  node-{i} metrics: http://{m}/metrics");
    }
    let prom = if a.prometheus {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let p = crate::prom::PromServer::start(&dir.join("prometheus"), &addr, &metrics)?;
        eprintln!(
            "Prometheus: http://{}/ (scraping every node each second)",
            p.addr()
        );
        Some(p)
    } else {
        None
    };
    let conn = Conn {
        zk: zk.connect_string(),
        cluster: "local".into(),
        certs: certs.clone(),
    };
    let n_tasks = tasks.len();
    // The job's clock starts when the cluster is up: a master serving and
    // every node registered as a worker.
    let nodes = a.nodes.max(1) as usize;
    let ready = conn.zk.clone();
    let logs = dir.clone();
    block_on(async move {
        let zk = crate::coord::connect(&ready, Duration::from_secs(10)).await?;
        let layout = crate::coord::Layout::new("local");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        crate::coord::wait_for_master(&zk, &layout, None, Duration::from_secs(60))
            .await?
            .ok_or_else(|| {
                anyhow!(
                    "no master within 60 s; see the node logs under {}",
                    logs.display()
                )
            })?;
        loop {
            let (names, _, watch) = match zk.get_and_watch_children(&layout.workers()).await {
                Ok(found) => found,
                Err(e) => bail!("cannot list workers: {e}"),
            };
            if names.len() >= nodes {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, watch.changed())
                .await
                .is_err()
            {
                bail!(
                    "only {} of {nodes} nodes registered within 60 s; see the node logs under {}",
                    names.len(),
                    logs.display()
                );
            }
        }
    })?;
    let job_started = Instant::now();
    let res = block_on(async move {
        let client = Client::connect(client_config(&conn)).await?;
        let (id, _) = client.submit_encoded(name, tasks, opts, None).await?;
        eprintln!("job {id} accepted: {n_tasks} tasks");
        run_to_end(&client, &id, finish).await
    });
    let secs = job_started.elapsed().as_secs_f64();
    if res.is_ok() {
        eprintln!(
            "job ran in {secs:.2} s ({:.0} tasks/s); whole local run {:.2} s",
            n_tasks as f64 / secs,
            started.elapsed().as_secs_f64()
        );
    } else {
        for i in 0..a.nodes {
            eprintln!(
                "--- last lines of node-{i}.log ---\n{}",
                tail(&dir.join(format!("node-{i}.log")), 15)
            );
        }
    }
    if let Some(p) = &prom {
        // Two more scrapes, so that the job's last counts are in.
        std::thread::sleep(Duration::from_millis(2500));
        eprintln!("Prometheus says:");
        for expr in [
            "sum(ringleader_node_role{role=\"master\"})",
            "max(ringleader_epoch)",
            "sum(ringleader_workers)",
            "sum(ringleader_tasks_run_total)",
            "sum(ringleader_shards_committed_total)",
            "sum(ringleader_jobs_completed_total)",
            "histogram_quantile(0.99, sum by (le) (rate(ringleader_task_duration_seconds_bucket[1m])))",
            "sum(rate(ringleader_quic_frame_bytes_total{direction=\"received\"}[1m]))",
        ] {
            let v = p.scalar(expr).map_or("no data".to_string(), |v| format!("{v}"));
            eprintln!("  {expr} = {v}");
        }
    }
    if a.linger_secs > 0 {
        eprintln!("lingering {} s; Ctrl-C to stop now", a.linger_secs);
        let linger = std::time::Duration::from_secs(a.linger_secs);
        actix::System::new().block_on(async move {
            tokio::select! {
                _ = tokio::time::sleep(linger) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        });
    }
    drop(prom);
    children.stop();
    drop(zk);
    if a.keep {
        eprintln!("kept {}", tmp.keep().display());
    }
    res
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
