//! The command line every node binary gets from [`NodeBuilder::run_cli`]:
//! `node`, `submit`, `result`, `status`, `cancel`, `certs` and `local`.
//! `submit JOB ARGS...` and `local JOB ARGS...` take the job's own
//! arguments (the job's name may be left out when the binary runs one
//! job); `result JOB-ID` needs none.
//!
//! Here: the arguments and their dispatch, `node`, `submit`, `result`,
//! `status`, `cancel` and `certs`, and the exit codes ([`Exit`]);
//! `render` prints, `local` runs the one-machine demo. The jobs
//! themselves are described in [`crate::cli_job`].

mod fairness;
mod features;
mod limits;
mod local;
mod render;

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use crate::out;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, FromArgMatches, Parser, Subcommand};
use serde_bytes::ByteBuf;

use crate::cli_job::ErasedCliJob;
pub use crate::cli_job::{BoxError, CliJob, Output};
use crate::client::{Client, ClientConfig, ClientError};
use crate::node::{self, NodeBuilder, NodeConfig, Role};
use crate::transport::tls;
use crate::wire::{JobOptions, JobState};
use crate::zkserver::{free_port, ZkServer, ZkServerOptions};
use local::run_local;
use render::{jobs_text, print_report, status_json, status_text, Progress};

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

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Reach ZooKeeper over its TLS port (--zk names the servers'
    /// secureClientPort) with this host's certificate: nodes then create
    /// the cluster's znodes so that only node certificates may change
    /// them (ZooKeeper's x509 authentication).
    #[arg(long, env = "RINGLEADER_ZK_TLS")]
    zk_tls: bool,
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
    /// Node id (default: the one its certificate names; with a
    /// one-machine certificate directory, which issues the node's
    /// certificate at start, a random one).
    #[arg(long, env = "RINGLEADER_NODE_ID")]
    node_id: Option<String>,
    /// This host's scratch directory (default: one directory per cluster
    /// and user under the temporary directory).
    #[arg(long, env = "RINGLEADER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The cluster's object store, for outputs, results and inputs too big
    /// for ZooKeeper: s3://bucket/prefix (with the usual AWS_* variables)
    /// for clusters, file:///path for one machine or a shared filesystem
    /// (default: one directory per cluster and user under the temporary
    /// directory, shared by such nodes of this host whatever their
    /// --data-dir; a master refuses a worker whose store is not its own).
    #[arg(long, env = "RINGLEADER_STORE")]
    store: Option<String>,
    /// Concurrent tasks (default: number of CPUs).
    #[arg(long, env = "RINGLEADER_SLOTS")]
    slots: Option<u32>,
    /// Requested ZooKeeper session timeout.
    #[arg(long, env = "RINGLEADER_SESSION_TIMEOUT_MS", default_value_t = 4000)]
    session_timeout_ms: u64,
    /// Longest random pause before the first connection to ZooKeeper, so
    /// that nodes started together (hundreds after a power restore or a
    /// fleet-wide deploy) do not open their sessions in one burst that
    /// keeps ZooKeeper from answering the open ones (default: 4000, which
    /// kept a thousand nodes started at once on a 2-core machine from
    /// starving the open sessions; 0 to connect at once, as `local` does).
    #[arg(long, env = "RINGLEADER_START_JITTER_MS")]
    start_jitter_ms: Option<u64>,
    /// Serve Prometheus metrics here: PORT (on loopback) or IP:PORT. An
    /// address others can reach is warned about: keep it on a private
    /// network, or behind a proxy with TLS and authentication.
    #[arg(long, env = "RINGLEADER_METRICS_ADDR", value_parser = metrics_addr)]
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
    /// Write the result here (default: stdout).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Refuse to submit when no registered worker runs the job (by
    /// default it is accepted with a warning and waits for one).
    #[arg(long)]
    require_workers: bool,
    /// Print the job's outputs as they commit, one JSON line each (a bare
    /// task's outputs with their indexes, other jobs' shard partials);
    /// the whole result goes only to --output. Follows failovers; each
    /// item is printed once.
    #[arg(long, conflicts_with = "detach")]
    stream: bool,
    /// Start the job no sooner than this from now: `30s`, `5m`, `1h30m`
    /// (a bare number is seconds). It is acknowledged and durable at once,
    /// shown as scheduled by `jobs` and `status`, and can be cancelled
    /// while it waits.
    #[arg(long, value_name = "DURATION", value_parser = parse_delay, conflicts_with = "at")]
    delay: Option<Duration>,
    /// Start the job no sooner than this time, in RFC 3339 with a zone
    /// (`2026-12-24T18:00:00Z`, `2026-12-24T19:00:00+01:00`), as the
    /// master's clock judges it.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    at: Option<std::time::SystemTime>,
    /// A limit the job is under (repeat for several; `limits set`): a
    /// shard of it starts only while each admits one more run. Besides
    /// those of the job's type.
    #[arg(long, value_name = "KEY")]
    under: Vec<String>,
}

impl SubmitArgs {
    /// When the job may start, if it is delayed.
    fn not_before(&self) -> Option<std::time::SystemTime> {
        match (self.delay, self.at) {
            (_, Some(at)) => Some(at),
            (Some(d), None) => Some(std::time::SystemTime::now() + d),
            (None, None) => None,
        }
    }
}

/// A delay: a duration as `30s`, `5m` or `1h30m`, or a bare number of
/// seconds.
fn parse_delay(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.trim().parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    parse_duration(s)
}

/// A time in RFC 3339 with a zone (`Z` or an offset).
fn parse_time(s: &str) -> Result<std::time::SystemTime, String> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            format!("{e}: write a time in RFC 3339 with a zone, as 2026-12-24T18:00:00Z or 2026-12-24T19:00:00+01:00")
        })?;
    Ok(t.into())
}

/// How a submitted job is cut and retried (`submit` and `local`).
#[derive(Args, Debug, Clone)]
struct JobArgs {
    /// Tasks per shard (default: the job's own, or if it sets none, a size
    /// that gives every slot of the workers that run it a few shards).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    shard_size: Option<u32>,
    /// Attempts per task.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Seconds after which a running shard gets a copy on another worker
    /// (default: 4x the job's typical shard time).
    #[arg(long)]
    shard_timeout_secs: Option<f64>,
    /// Higher runs first: 0 (the default) to 9. A higher job's shards go
    /// before every lower one that has not started, except that a level
    /// that waits gets every tenth shard placed (no job starves).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: u8,
    /// The job's fairness key (default: its owner, `client:NAME`): within
    /// a priority, keys with shards waiting get slots in proportion to
    /// their weights (`fairness set`), and a key's jobs take turns.
    #[arg(long)]
    fairness_key: Option<String>,
}

impl JobArgs {
    fn options(&self, job: &dyn ErasedCliJob) -> JobOptions {
        JobOptions {
            // 0: the master chooses.
            shard_size: self
                .shard_size
                .or_else(|| job.default_shard_size())
                .unwrap_or(0),
            max_attempts: self.max_attempts.max(1),
            shard_timeout_ms: self.shard_timeout_secs.map(|s| (s * 1000.0) as u64),
            stream: false,
            priority: self.priority,
            fairness_key: self.fairness_key.clone(),
            not_before_ms: None,
            under: Vec::new(),
        }
    }
}

#[derive(Args, Debug, Clone)]
struct ResultArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job.
    job_id: String,
    /// Wait for a running job to end (default: a running job is an error).
    #[arg(long)]
    wait: bool,
    /// Write the result here (default: stdout).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
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
struct JobsArgs {
    #[command(flatten)]
    conn: Conn,
    /// Print JSON: `{"jobs": [...], "matched": N, "counts": {...}}`.
    #[arg(long)]
    json: bool,
    /// Only jobs in this state (repeat for several).
    #[arg(long, value_enum)]
    state: Vec<StateArg>,
    /// Only jobs of this registered job name.
    #[arg(long, value_name = "NAME")]
    job: Option<String>,
    /// Only jobs of this owner: a client's name (admins see everyone's;
    /// a client only its own).
    #[arg(long, value_name = "CLIENT")]
    owner: Option<String>,
    /// Only jobs accepted in the last DURATION (`30s`, `5m`, `1h30m`, `2d`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    since: Option<Duration>,
    /// Only jobs of this priority (0 to 9).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,
    /// Only jobs under this fairness key (a job's owner, `client:NAME`,
    /// unless it named another).
    #[arg(long, value_name = "KEY")]
    fairness_key: Option<String>,
    /// The newest N that match (0: up to 10,000).
    #[arg(long, value_name = "N", default_value_t = 50)]
    last: u32,
}

/// A job state, as `jobs --state` names it.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum StateArg {
    /// Running, its time come.
    Running,
    /// Running, waiting for its time (`submit --delay`, `--at`).
    Scheduled,
    Done,
    Cancelled,
}

impl From<StateArg> for crate::wire::JobState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Running | StateArg::Scheduled => crate::wire::JobState::Running,
            StateArg::Done => crate::wire::JobState::Done,
            StateArg::Cancelled => crate::wire::JobState::Cancelled,
        }
    }
}

/// A duration as `30s`, `5m`, `1h30m` or `2d` (humantime's forms).
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}: write a duration as 30s, 5m, 1h30m or 2d"))
}

impl JobsArgs {
    /// The listing request these flags ask for.
    fn query(&self) -> crate::wire::JobQuery {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut states: Vec<crate::wire::JobState> = Vec::new();
        for s in self.state.iter().map(|s| (*s).into()) {
            if !states.contains(&s) {
                states.push(s);
            }
        }
        let (running, scheduled) = (
            self.state.contains(&StateArg::Running),
            self.state.contains(&StateArg::Scheduled),
        );
        crate::wire::JobQuery {
            states,
            scheduled: match (running, scheduled) {
                (false, true) => Some(true),
                (true, false) => Some(false),
                _ => None,
            },
            job_name: self.job.clone(),
            owner: self.owner.as_ref().map(|o| match o.contains(':') {
                true => o.clone(),
                false => format!("client:{o}"),
            }),
            since_ms: self
                .since
                .map(|d| now_ms.saturating_sub(d.as_millis() as u64)),
            priority: self.priority,
            fairness_key: self.fairness_key.clone(),
            last: self.last,
        }
    }
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
    /// to copy to that host alone. The certificate carries the identity
    /// as the URI urn:ringleader:<role>:<name>.
    #[command(group(clap::ArgGroup::new("identity").required(true).multiple(false)))]
    Issue {
        /// The CA made by `certs init`.
        #[arg(long)]
        ca_dir: PathBuf,
        /// A node's certificate for node id ID (the node takes its id from it).
        #[arg(long, value_name = "ID", group = "identity")]
        node: Option<String>,
        /// A client's certificate, named after the client.
        #[arg(long, value_name = "NAME", group = "identity")]
        client: Option<String>,
        /// A client's certificate with the admin role (may act on every
        /// client's jobs).
        #[arg(long, value_name = "NAME", group = "identity")]
        admin: Option<String>,
        /// A ZooKeeper server's certificate (zookeeper.pem: key and
        /// certificate, ZooKeeper's PEM key store) for the host names and
        /// IP addresses its clients dial, comma-separated.
        #[arg(
            long,
            value_name = "HOST,...",
            group = "identity",
            value_delimiter = ','
        )]
        zookeeper: Option<Vec<String>>,
        /// Also trust the CA certificates in FILE (a CA rollover: the new
        /// CA's hosts trust the old one until every host has moved).
        #[arg(long, value_name = "FILE")]
        trust: Vec<PathBuf>,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a certificate issued by the CA: ca-dir/crl.pem is written
    /// again listing it. Copy crl.pem beside ca.pem on every host and send
    /// the nodes SIGHUP.
    Revoke {
        /// The CA made by `certs init`.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The certificate to revoke (node.pem or client.pem).
        #[arg(long)]
        cert: PathBuf,
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
    /// Write the result here (default: stdout).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Join a cluster: by default a master candidate and a worker.
    Node(NodeArgs),
    /// Submit a job (`submit JOB ARGS...`), wait for it and write its result.
    Submit(SubmitArgs),
    /// Write a job's result (`--wait` for a running one).
    Result(ResultArgs),
    /// Show the leader, epoch, workers and jobs.
    Status(StatusArgs),
    /// List every job the cluster holds, newest first.
    Jobs(JobsArgs),
    /// Cancel a job.
    Cancel(CancelArgs),
    /// Make a cluster CA with node and client certificates.
    Certs(CertsArgs),
    /// The cluster's feature level: `show`, or `upgrade` once every node
    /// follows a higher one (with a node's certificates).
    Features(features::FeaturesArgs),
    /// Fairness keys' weights: `set KEY --weight W` (an admin's or a
    /// node's certificate), `list`.
    Fairness(fairness::FairnessArgs),
    /// Cluster-wide limits: `set KEY [--max-running N] [--rate N --per
    /// 1s] [--burst B]`, `delete KEY` (an admin's or a node's
    /// certificate), `list`.
    Limits(limits::LimitsArgs),
    /// Start a private ZooKeeper and N nodes here, run a job (`local JOB
    /// ARGS...`), stop everything.
    Local(LocalArgs),
}

/// Jobs `status` lists (the newest); `jobs` lists more, and filters.
const STATUS_JOBS: u32 = 10;

fn init_tracing(format: LogFormat) {
    if format == LogFormat::Json {
        render::json_reports();
    }
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

/// What a command's exit code says; the README lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// 1: anything else: local files, a job's arguments, a bad result.
    Error,
    /// 2: the command line is wrong (as for every parse error).
    Usage,
    /// 3: the cluster refused the request (a certificate, a limit, an
    /// unknown job type, options, an unknown job id).
    Refused,
    /// 4: the job finished with failed tasks (the others' result was written).
    TasksFailed,
    /// 5: the job was cancelled.
    Cancelled,
    /// 6: whether the submission was accepted is unknown: the message
    /// names the job id to submit again (it is accepted once) or query.
    OutcomeUnknown,
    /// 7: not now: ZooKeeper, a master or the serving master cannot be
    /// reached, or the master could not act (its ZooKeeper failed, the
    /// queue is full) and did nothing: run the command again later.
    Unreachable,
    /// 8: the job is still running (`result` without `--wait`).
    Running,
    /// 130: interrupted (Ctrl-C); a submitted job keeps running.
    Interrupted,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            Exit::Error => 1,
            Exit::Usage => 2,
            Exit::Refused => 3,
            Exit::TasksFailed => 4,
            Exit::Cancelled => 5,
            Exit::OutcomeUnknown => 6,
            Exit::Unreachable => 7,
            Exit::Running => 8,
            Exit::Interrupted => 130,
        }
    }

    /// The exit a command's error calls for: the first cause that says.
    pub fn of(e: &anyhow::Error) -> Exit {
        for cause in e.chain() {
            if let Some(ended) = cause.downcast_ref::<Ended>() {
                return ended.exit;
            }
            if let Some(c) = cause.downcast_ref::<ClientError>() {
                return Exit::of_client(c);
            }
            if cause
                .downcast_ref::<crate::core::features::FeatureError>()
                .is_some()
            {
                return Exit::Refused;
            }
            match cause.downcast_ref() {
                Some(crate::coord::CoordError::Connect { .. }) => return Exit::Unreachable,
                Some(crate::coord::CoordError::Refused { .. }) => return Exit::Refused,
                _ => {}
            }
        }
        Exit::Error
    }

    fn of_client(e: &ClientError) -> Exit {
        use crate::transport::TransportError as T;
        match e {
            ClientError::Refused { .. } => Exit::Refused,
            ClientError::Unavailable { .. } => Exit::Unreachable,
            ClientError::Transport(T::Connect { .. }) => Exit::Refused,
            ClientError::Transport(_) => Exit::Unreachable,
            ClientError::NoMaster { .. } | ClientError::Unreachable { .. } => Exit::Unreachable,
            ClientError::Coord(crate::coord::CoordError::Connect { .. }) => Exit::Unreachable,
            ClientError::Coord(crate::coord::CoordError::Refused { .. }) => Exit::Refused,
            ClientError::OutcomeUnknown { .. } => Exit::OutcomeUnknown,
            _ => Exit::Error,
        }
    }
}

/// A command's end that is not a plain error: it carries its exit.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Ended {
    exit: Exit,
    message: String,
}

fn ended(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    Ended {
        exit,
        message: message.into(),
    }
    .into()
}

/// The commands that take a job.
const JOB_COMMANDS: [&str; 2] = ["submit", "local"];

/// The job `submit` or `local` is about: the first word after the
/// command that is neither an option nor an option's value, when it names
/// a registered job (it is taken out of the arguments), else the binary's
/// only job. `None` for other commands, or when the binary runs several
/// jobs and none is named.
fn pick_job(
    args: &mut Vec<std::ffi::OsString>,
    jobs: &[std::sync::Arc<dyn ErasedCliJob>],
) -> Option<std::sync::Arc<dyn ErasedCliJob>> {
    let base = <Cli as clap::CommandFactory>::command();
    // Options (of the command line and of a command) that take a value.
    let takes_value = |cmd: &clap::Command, word: &str| {
        cmd.get_arguments().any(|a| {
            a.get_action().takes_values()
                && (word
                    .strip_prefix("--")
                    .is_some_and(|l| a.get_long() == Some(l))
                    || (word.len() == 2
                        && word.starts_with('-')
                        && a.get_short().map(|c| c.to_string())
                            == word.get(1..).map(str::to_string)))
        })
    };
    let mut i = 1;
    let mut command: Option<(usize, String)> = None;
    while i < args.len() {
        let word = args[i].to_string_lossy().into_owned();
        let scope = match &command {
            Some((_, c)) => base.find_subcommand(c).unwrap_or(&base),
            None => &base,
        };
        if word == "--" {
            break;
        } else if word.starts_with('-') {
            i += if !word.contains('=') && (takes_value(scope, &word) || takes_value(&base, &word))
            {
                2
            } else {
                1
            };
        } else if let Some((_, c)) = &command {
            if !JOB_COMMANDS.contains(&c.as_str()) {
                return None;
            }
            if let Some(job) = jobs.iter().find(|j| j.name() == word) {
                let job = job.clone();
                args.remove(i);
                return Some(job);
            }
            break;
        } else {
            command = Some((i, word));
            i += 1;
        }
    }
    match (command, jobs) {
        (Some((_, c)), [only]) if JOB_COMMANDS.contains(&c.as_str()) => Some(only.clone()),
        _ => None,
    }
}

fn job_list(jobs: &[std::sync::Arc<dyn ErasedCliJob>]) -> String {
    let mut text =
        String::from("Jobs this binary runs (`submit JOB --help` for a job's arguments):\n");
    for j in jobs {
        text.push_str(&format!("  {:<20} {}\n", j.name(), j.about()));
    }
    text
}

/// An error and its causes, one per line; a cause whose text the line
/// before already holds is left out (many errors quote their source).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = format!("error: {e}");
    let mut last = e.to_string();
    for cause in e.chain().skip(1) {
        let line = cause.to_string();
        if !last.contains(&line) {
            text.push_str(&format!("\n  because: {line}"));
        }
        last = line;
    }
    text
}

/// This program's name, as typed.
fn program() -> String {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "ringleader".into())
}

impl NodeBuilder {
    /// Parses the process arguments and runs the chosen command. On an
    /// error it prints the error and its causes (no backtrace) and exits
    /// with the code [`Exit`] gives it.
    pub fn run_cli(self) -> anyhow::Result<()> {
        if let Err(e) = self.run_cli_from(std::env::args_os()) {
            // A reader that stopped reading (`status | head`) is not an error.
            if out::is_closed(&e) {
                std::process::exit(0);
            }
            eprintln!("{}", error_text(&e));
            std::process::exit(Exit::of(&e).code());
        }
        Ok(())
    }

    /// Like [`run_cli`](Self::run_cli) with explicit arguments; returns
    /// the error instead of exiting ([`Exit::of`] gives its code).
    pub fn run_cli_from<I, T>(self, args: I) -> anyhow::Result<()>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        self.check_reserved()?;
        let picked = pick_job(&mut args, &self.cli);
        let name = args
            .first()
            .map(std::path::PathBuf::from)
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(program);
        let cmd = self.command(&name, picked.as_ref());
        let matches = cmd.try_get_matches_from(args).unwrap_or_else(|e| e.exit());
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        init_tracing(cli.log_format);
        let sub = matches
            .subcommand()
            .map(|(_, m)| m.clone())
            .ok_or_else(|| anyhow!("no command"))?;
        let job = || picked.clone().ok_or_else(|| self.no_job(&name, &sub));
        match cli.cmd {
            Cmd::Node(a) => run_node(self, a),
            Cmd::Certs(a) => run_certs(a),
            Cmd::Features(a) => features::run_features(a),
            Cmd::Fairness(a) => fairness::run_fairness(a),
            Cmd::Limits(a) => limits::run_limits(a),
            Cmd::Submit(a) => {
                let job = job()?;
                self.run_submit(a, job, &sub)
            }
            Cmd::Result(a) => run_result(a, &self.cli),
            Cmd::Jobs(a) => run_jobs(a),
            Cmd::Status(a) => run_status(a),
            Cmd::Cancel(a) => block_on(async move {
                let client = Client::connect(client_config(&a.conn)).await?;
                client.cancel(&a.job_id).await?;
                writeln!(out::stdout(), "cancelled {}", a.job_id)?;
                Ok(())
            }),
            Cmd::Local(a) => {
                let job = job()?;
                let tasks = job.tasks(&sub, None)?;
                let opts = a.job.options(job.as_ref());
                run_local(a, &self.cli, job.name(), tasks, opts)
            }
        }
    }

    /// Refuses a job whose arguments take a name `submit` or `local`
    /// uses itself (`--priority`, `--output`, `-o`...): they would clash
    /// on every command line, and a later release may reserve more (the
    /// message names the argument).
    fn check_reserved(&self) -> anyhow::Result<()> {
        let cmd = <Cli as clap::CommandFactory>::command();
        for sub in JOB_COMMANDS {
            let Some(c) = cmd.find_subcommand(sub) else {
                continue;
            };
            let own = |a: &clap::Arg| {
                (
                    a.get_id().to_string(),
                    a.get_long().map(str::to_string),
                    a.get_short(),
                )
            };
            let reserved: Vec<_> = c
                .get_arguments()
                .chain(cmd.get_arguments())
                .map(own)
                .collect();
            for job in &self.cli {
                let args = job.augment(clap::Command::new(job.name()));
                for a in args.get_arguments() {
                    let (id, long, short) = own(a);
                    let clash = reserved.iter().find(|(rid, rlong, rshort)| {
                        *rid == id
                            || (long.is_some() && *rlong == long)
                            || (short.is_some() && *rshort == short)
                    });
                    if let Some((rid, _, _)) = clash {
                        let named = long.map_or_else(|| id.clone(), |l| format!("--{l}"));
                        return Err(ended(
                            Exit::Error,
                            format!(
                                "job {} registers the argument {named}, which `{sub}` reserves                                  for itself (as {rid:?}): rename the job's argument",
                                job.name()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The command line of this binary named `name`, with the arguments of
    /// the job `picked` (or, if none was named, whatever follows kept so
    /// that the error can say which jobs there are).
    fn command(&self, name: &str, picked: Option<&Arc<dyn ErasedCliJob>>) -> clap::Command {
        let version = crate::version_line(self.version);
        let mut cmd = <Cli as clap::CommandFactory>::command()
            .name(name.to_string())
            .bin_name(name.to_string())
            .version(version)
            .after_help(job_list(&self.cli));
        for sub in JOB_COMMANDS {
            cmd = cmd.mut_subcommand(sub, |c| match picked {
                Some(job) => {
                    // The job's arguments, under the subcommand's own description.
                    let about = c.get_about().cloned();
                    let c = job
                        .augment(c)
                        .override_usage(format!("{name} {sub} [{}] [OPTIONS] [ARGS]", job.name()));
                    match about {
                        Some(about) => c.about(about),
                        None => c,
                    }
                }
                None => c
                    .arg(
                        clap::Arg::new("job args")
                            .num_args(0..)
                            .trailing_var_arg(true)
                            .allow_hyphen_values(true)
                            .hide(true),
                    )
                    .override_usage(format!("{name} {sub} JOB [OPTIONS] [ARGS]"))
                    .after_help(job_list(&self.cli)),
            });
        }
        cmd
    }

    /// The error of a job command that names no job this binary runs.
    fn no_job(&self, name: &str, sub: &clap::ArgMatches) -> anyhow::Error {
        // The word where a job's name was expected, if it looks like one
        // (not a file of arguments).
        let named = sub
            .try_get_many::<String>("job args")
            .ok()
            .flatten()
            .and_then(|mut words| words.next().cloned())
            .filter(|w| {
                let name_like = w
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_');
                name_like && !std::path::Path::new(w).exists()
            });
        let names: Vec<&str> = self.cli.iter().map(|j| j.name()).collect();
        match &named {
            _ if names.is_empty() => ended(Exit::Usage, "this binary registers no job"),
            Some(word) => ended(
                Exit::Usage,
                format!(
                    "unknown job {word:?}: this binary runs {}; name one first: `{name} \
                     submit JOB [ARGS]` (or `local JOB`)",
                    names.join(", ")
                ),
            ),
            None => ended(
                Exit::Usage,
                format!(
                    "say which job: `{name} submit JOB [ARGS]` (or `local JOB`), with JOB \
                     one of: {}",
                    names.join(", ")
                ),
            ),
        }
    }

    /// `submit`: the job's inputs read (and uploaded, with `--upload`),
    /// then submitted and, unless `--detach`, followed to the end.
    fn run_submit(
        &self,
        a: SubmitArgs,
        job: Arc<dyn ErasedCliJob>,
        sub: &clap::ArgMatches,
    ) -> anyhow::Result<()> {
        let store = if a.upload {
            let conn = a.conn.clone();
            Some(block_on(async move {
                let client = Client::connect(client_config(&conn)).await?;
                Ok(client.cluster_store().await?)
            })?)
        } else {
            None
        };
        // Reading (and uploading) the inputs may take long: Ctrl-C
        // stops it, and nothing is submitted.
        let tasks = {
            let (job, sub) = (job.clone(), sub.clone());
            block_on(async move {
                // A thread of its own, not the runtime's blocking
                // pool: the runtime's end would wait for it.
                let (tx, read) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || tx.send(job.tasks(&sub, store.as_ref())));
                tokio::select! {
                    r = read => r.map_err(|e| anyhow!("reading the job's inputs: {e}"))?,
                    _ = tokio::signal::ctrl_c() => Err(ended(
                        Exit::Interrupted,
                        "interrupted while the job's inputs were read or uploaded: \
                         nothing was submitted (objects already uploaded stay in the \
                         store's inputs/)",
                    )),
                }
            })?
        };
        let mut opts = a.job.options(job.as_ref());
        opts.stream = a.stream;
        opts.under = a.under.clone();
        opts.not_before_ms = a.not_before().map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        });
        let out = Output::new(a.output);
        let how = HowToSubmit {
            job_id: a.job_id,
            detach: a.detach,
            require_workers: a.require_workers,
            shape: self.registry.shape(job.name()).map(str::to_string),
        };
        block_on(submit(
            &a.conn,
            &self.cli,
            job.name(),
            tasks,
            opts,
            how,
            &out,
        ))
    }
}

/// `result`: a job's outputs, once it ended (`--wait` waits for it).
fn run_result(a: ResultArgs, cli: &[Arc<dyn ErasedCliJob>]) -> anyhow::Result<()> {
    let out = Output::new(a.output);
    block_on(async move {
        let client = Client::connect(client_config(&a.conn)).await?;
        let p = client.progress(&a.job_id).await?;
        if !p.state.is_final() && !a.wait {
            return Err(ended(
                Exit::Running,
                format!(
                    "job {} is still running ({}/{} tasks): add --wait to wait for it",
                    a.job_id, p.counters.tasks_done, p.counters.tasks_total
                ),
            ));
        }
        run_to_end(&client, cli, &a.job_id, &out).await
    })
}

/// `jobs`: the jobs the cluster holds, as text or JSON.
fn run_jobs(a: JobsArgs) -> anyhow::Result<()> {
    block_on(async move {
        let client = Client::connect(client_config(&a.conn)).await?;
        let list = client.jobs(a.query()).await?;
        if a.json {
            writeln!(out::stdout(), "{}", serde_json::to_string(&list)?)?;
        } else {
            write!(out::stdout(), "{}", jobs_text(&list))?;
        }
        Ok(())
    })
}

/// `status`: the cluster and its newest jobs, once or every second
/// (`--watch`).
fn run_status(a: StatusArgs) -> anyhow::Result<()> {
    block_on(async move {
        let client = Client::connect(client_config(&a.conn)).await?;
        loop {
            let s = client.status().await?;
            // The newest jobs and counts by state, from a master that can
            // list them.
            let newest = crate::wire::JobQuery {
                last: STATUS_JOBS,
                ..Default::default()
            };
            let jobs = match client.jobs(newest).await {
                Ok(j) => Some(j),
                Err(e) if e.refusal() == Some(crate::client::Refusal::Unsupported) => None,
                Err(e) => return Err(e.into()),
            };
            let text = if a.json {
                status_json(&s, jobs.as_ref())
            } else {
                status_text(&s, jobs.as_ref())
            };
            if a.watch && std::io::stdout().is_terminal() {
                // Clear the screen and go home, like watch(1).
                write!(out::stdout(), "\x1b[2J\x1b[H")?;
            }
            writeln!(out::stdout(), "{text}")?;
            if !a.watch {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    })
}

fn run_certs(a: CertsArgs) -> anyhow::Result<()> {
    match a.action {
        None => {
            crate::pki::make_cluster_certs(&a.out)
                .with_context(|| format!("writing certificates to {}", a.out.display()))?;
            writeln!(
                out::stdout(),
                "wrote the cluster CA and node/client certificates to {} (for one machine; \
                 use `certs init` and `certs issue` for a cluster of several)",
                a.out.display()
            )?;
        }
        Some(CertsAction::Init { ca_dir }) => {
            crate::pki::make_ca(&ca_dir)
                .with_context(|| format!("making the cluster CA in {}", ca_dir.display()))?;
            writeln!(
                out::stdout(),
                "made the cluster CA in {}: keep ca.key on this machine; issue each host's \
                 certificate with `certs issue`",
                ca_dir.display()
            )?;
        }
        Some(CertsAction::Revoke { ca_dir, cert }) => {
            let id = crate::pki::revoke(&ca_dir, &cert)
                .with_context(|| format!("revoking {}", cert.display()))?;
            writeln!(
                out::stdout(),
                "revoked {id}: copy {} beside ca.pem on every host and send the nodes SIGHUP \
                 (its live connections are closed, new ones refused)",
                ca_dir.join("crl.pem").display()
            )?;
        }
        Some(CertsAction::Issue {
            zookeeper: Some(hosts),
            ca_dir,
            out,
            ..
        }) => {
            crate::pki::issue_zookeeper(&ca_dir, &hosts, &out).with_context(|| {
                format!("issuing ZooKeeper's certificate into {}", out.display())
            })?;
            writeln!(
                out::stdout(),
                "issued ZooKeeper's certificate for {} into {}: point the server's \
                 ssl.keyStore.location at zookeeper.pem and ssl.trustStore.location at ca.pem \
                 (both type PEM), with ssl.clientAuth=need and the x509 provider (README)",
                hosts.join(", "),
                out.display()
            )?;
        }
        Some(CertsAction::Issue {
            ca_dir,
            node,
            client,
            admin,
            trust,
            out,
            zookeeper: None,
        }) => {
            let (role, name) = match (node, client, admin) {
                (Some(n), _, _) => (tls::Role::Node, n),
                (_, Some(c), _) => (tls::Role::Client, c),
                (_, _, Some(a)) => (tls::Role::Admin, a),
                _ => bail!("say --node ID, --client NAME or --admin NAME"),
            };
            crate::pki::issue_to(&ca_dir, role, &name, &out)
                .with_context(|| format!("issuing {name} into {}", out.display()))?;
            for extra in &trust {
                crate::pki::trust(&out, extra)
                    .with_context(|| format!("adding {} to {}", extra.display(), out.display()))?;
            }
            writeln!(
                out::stdout(),
                "issued {name} into {}: copy that directory to its host (it holds no CA key)",
                out.display()
            )?;
        }
    }
    Ok(())
}

/// `submit`'s choices besides the job.
struct HowToSubmit {
    job_id: Option<String>,
    detach: bool,
    require_workers: bool,
    /// The job's shape in this binary.
    shape: Option<String>,
}

async fn submit(
    conn: &Conn,
    jobs: &[std::sync::Arc<dyn ErasedCliJob>],
    name: &str,
    tasks: Vec<ByteBuf>,
    opts: JobOptions,
    how: HowToSubmit,
    out: &Output,
) -> anyhow::Result<()> {
    // The id is chosen and shown before anything is sent: if the outcome
    // is unknown (the link or the master lost midway), a retry with this
    // id finds the job instead of running it twice.
    let id = how
        .job_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let opts_stream = opts.stream;
    let not_before = opts.not_before_ms;
    let detach = how.detach;
    eprintln!("job {id}: submitting {} {name} tasks", tasks.len());
    let not_sent = |e: ClientError| {
        anyhow!(e).context(format!(
            "job {id} was not submitted (no master got it): run the same command again once \
             the cause below is fixed, with --job-id {id} to keep its id"
        ))
    };
    // Until the tasks are sent, Ctrl-C leaves nothing behind.
    let prepare = async {
        let client = Client::connect(client_config(conn))
            .await
            .map_err(not_sent)?;
        // What the master would do with it: known before anything is uploaded.
        let plan = client
            .plan(
                name,
                tasks.len() as u64,
                opts.shard_size,
                how.shape.as_deref(),
            )
            .await
            .map_err(not_sent)?;
        Ok::<_, anyhow::Error>((client, plan))
    };
    let (client, plan) = tokio::select! {
        r = prepare => r?,
        _ = tokio::signal::ctrl_c() => {
            return Err(ended(
                Exit::Interrupted,
                format!("interrupted before job {id} was sent: nothing was submitted"),
            ));
        }
    };
    match plan {
        Some(p) if p.workers == 0 => {
            let why = format!(
                "no worker runs job {name}; {} workers registered",
                p.registered
            );
            if how.require_workers {
                return Err(ended(
                    Exit::Refused,
                    format!("job {id} was not submitted: {why} (--require-workers)"),
                ));
            }
            eprintln!(
                "warning: {why}: the job waits until a node that registers {name} joins \
                 (--require-workers refuses instead)"
            );
            eprintln!("job {id}: {} shards of {} tasks", p.shards, p.shard_size);
        }
        Some(p) => eprintln!(
            "job {id}: {} shards of {} tasks; {} of {} registered workers run {name}, with {} \
             slots",
            p.shards, p.shard_size, p.workers, p.registered, p.slots
        ),
        None => {}
    }
    // Ctrl-C while the tasks are sent: the job may or may not be in.
    let shape = how.shape.as_deref().map(crate::registry::shape_id);
    let sending = client.submit_encoded_typed(name, shape, tasks, opts, Some(id.clone()));
    let sent = tokio::select! {
        r = sending => r,
        _ = tokio::signal::ctrl_c() => {
            return Err(ended(Exit::Interrupted, format!(
                "interrupted while job {id} was sent: it may or may not have been accepted. \
                 See it with `{} result {id} --wait`, or run the same command with --job-id \
                 {id} (the job is accepted once)",
                program()
            )));
        }
    };
    let (id, existing) = match sent {
        Ok(r) => r,
        Err(e @ ClientError::OutcomeUnknown { .. }) => {
            return Err(anyhow!(e).context(format!(
                "job {id} may or may not have been accepted: run the same command with \
                 --job-id {id} to retry (the job is accepted once; a task of it may run \
                 again), or see it with `{} result {id} --wait`",
                program()
            )))
        }
        Err(e) => return Err(not_sent(e)),
    };
    let scheduled = match not_before {
        Some(ms) if !existing => format!(", scheduled for {}", render::time_text(ms)),
        _ => String::new(),
    };
    eprintln!(
        "job {id} {}{scheduled}",
        if existing {
            "already exists"
        } else {
            "accepted"
        }
    );
    if detach {
        writeln!(out::stdout(), "{id}")?;
        return Ok(());
    }
    if opts_stream {
        return stream_to_end(&client, jobs, name, &id, out).await;
    }
    run_to_end(&client, jobs, &id, out).await
}

/// `submit --stream`: each committed output as a JSON line as it comes,
/// then the job's end as `run_to_end` reports it (the result itself only
/// to `--output`).
async fn stream_to_end(
    client: &Client,
    jobs: &[std::sync::Arc<dyn ErasedCliJob>],
    name: &str,
    id: &str,
    out: &Output,
) -> anyhow::Result<()> {
    let job = jobs
        .iter()
        .find(|j| j.name() == name)
        .ok_or_else(|| anyhow!("no entry for job {name}"))?;
    let mut items = client.stream_encoded(id);
    loop {
        let next = tokio::select! {
            n = items.next() => n?,
            _ = tokio::signal::ctrl_c() => {
                return Err(ended(Exit::Interrupted, format!(
                    "detached; job {id} keeps running. Write its result later with `{} result {id} --wait`",
                    program()
                )));
            }
        };
        let Some((shard, bytes)) = next else { break };
        let mut w = out::stdout();
        job.stream_item(shard, &bytes, &mut w)?;
        std::io::Write::flush(&mut w)?;
    }
    let end = items.end().cloned();
    if end.as_ref().is_some_and(|p| p.state == JobState::Cancelled) {
        return Err(ended(Exit::Cancelled, format!("job {id} was cancelled")));
    }
    let (bytes, report) = client.fetch_encoded(id).await?;
    print_report(&report);
    if out.path().is_some() {
        job.output(&bytes, &report, out)?;
    }
    tasks_failed(id, &report)
}

/// The exit for a finished job's failed tasks, if any.
fn tasks_failed(id: &str, report: &crate::client::JobReport) -> anyhow::Result<()> {
    let c = &report.progress.counters;
    if c.tasks_failed > 0 {
        return Err(ended(
            Exit::TasksFailed,
            format!(
                "{} of {} tasks of job {id} failed (listed above); the result of the others was \
                 written",
                c.tasks_failed, c.tasks_total
            ),
        ));
    }
    Ok(())
}

/// Waits for job `id` to end, then writes its result with the job's
/// entry; the job's end (cancelled, tasks failed) becomes the exit.
async fn run_to_end(
    client: &Client,
    jobs: &[std::sync::Arc<dyn ErasedCliJob>],
    id: &str,
    out: &Output,
) -> anyhow::Result<()> {
    let mut progress = Progress::new();
    let wait = client.wait(id, |p| progress.show(p));
    let p = tokio::select! {
        p = wait => p?,
        _ = tokio::signal::ctrl_c() => {
            return Err(ended(Exit::Interrupted, format!(
                "detached; job {id} keeps running. Write its result later with `{} result {id} --wait`",
                program()
            )));
        }
    };
    if p.state == JobState::Cancelled {
        return Err(ended(Exit::Cancelled, format!("job {id} was cancelled")));
    }
    let Some(job) = jobs.iter().find(|j| j.name() == p.job_name) else {
        return Err(ended(
            Exit::Error,
            format!(
                "job {id} is a {:?} job, which this binary does not run: write its result with \
                 the binary that submitted it",
                p.job_name
            ),
        ));
    };
    let (bytes, report) = client.fetch_encoded(id).await?;
    print_report(&report);
    job.output(&bytes, &report, out)?;
    tasks_failed(id, &report)
}

/// `--metrics-addr`: a bare port is on loopback.
fn metrics_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)));
    }
    s.parse()
        .map_err(|e| format!("{e}: want PORT (on loopback) or IP:PORT"))
}

fn run_node(builder: NodeBuilder, a: NodeArgs) -> anyhow::Result<()> {
    if let Some(addr) = a.metrics_addr {
        crate::metrics::install(addr)
            .with_context(|| format!("starting the metrics exporter on {addr}"))?;
        tracing::info!("metrics at http://{addr}/metrics");
        if !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "the metrics page is open to every host that reaches {addr}: it names job \
                 types, workers and versions; keep it on a private network or behind a proxy \
                 with TLS and authentication (a bare --metrics-addr PORT binds to loopback)"
            );
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    // One directory per cluster and user on this host: its `store` is the
    // default store of every such node, whatever its --data-dir.
    let shared = if a.data_dir.is_none() || a.store.is_none() {
        Some(node::default_dir(&a.conn.cluster).context(
            "making this host's directory of the cluster (give --data-dir and --store instead)",
        )?)
    } else {
        None
    };
    let data_dir = a.data_dir.or_else(|| shared.clone()).unwrap_or_default();
    let config = NodeConfig {
        zk: a.conn.zk,
        cluster: a.conn.cluster.clone(),
        node_id: a.node_id,
        role: a.role,
        listen: a.listen,
        advertise: a.advertise,
        certs: a.conn.certs,
        zk_tls: a.conn.zk_tls,
        store: a.store.unwrap_or_else(|| {
            shared
                .unwrap_or_default()
                .join("store")
                .display()
                .to_string()
        }),
        data_dir,
        slots: a.slots.unwrap_or(cpus),
        session_timeout: Duration::from_millis(a.session_timeout_ms),
        start_jitter: a
            .start_jitter_ms
            .map_or(node::DEFAULT_START_JITTER, Duration::from_millis),
        max_frame: a.max_frame,
        max_job_bytes: a.max_job_bytes,
        max_queued_bytes: a.max_queued_bytes,
        retention: Duration::from_secs(a.retention_secs),
        retention_max_jobs: a.retention_max_jobs,
        drain_timeout: Duration::from_secs(a.drain_secs),
        link_timeout: Duration::from_millis(a.link_timeout_ms),
        audit_file: a.audit_file,
        build: crate::build_id(&program(), builder.version),
    };
    crate::metrics::register_node(
        &builder.registry.names(),
        &program(),
        builder.version.unwrap_or(""),
    );
    let registry = builder.registry;
    actix::System::new().block_on(async move { node::run(config, registry).await })?;
    Ok(())
}

fn block_on<T, F: std::future::Future<Output = anyhow::Result<T>>>(f: F) -> anyhow::Result<T> {
    actix::System::new().block_on(f)
}

fn client_config(c: &Conn) -> ClientConfig {
    let mut cfg = ClientConfig::new(c.zk.clone(), c.cluster.clone(), c.certs.clone());
    cfg.zk_tls = c.zk_tls;
    cfg
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

    fn jobs() -> Vec<std::sync::Arc<dyn ErasedCliJob>> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct A(u32);
        impl crate::Task for A {
            type Output = u32;
            const NAME: &'static str = "a";
            fn run(self, _: &crate::TaskContext) -> Result<u32, crate::TaskError> {
                Ok(self.0)
            }
        }
        #[derive(serde::Serialize, serde::Deserialize)]
        struct B(u32);
        impl crate::Task for B {
            type Output = u32;
            const NAME: &'static str = "b";
            fn run(self, _: &crate::TaskContext) -> Result<u32, crate::TaskError> {
                Ok(self.0)
            }
        }
        NodeBuilder::default().task::<A>().task::<B>().cli
    }

    fn picked(
        args: &[&str],
        jobs: &[std::sync::Arc<dyn ErasedCliJob>],
    ) -> (Option<String>, Vec<String>) {
        let mut args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        let job = pick_job(&mut args, jobs).map(|j| j.name().to_string());
        (
            job,
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        )
    }

    #[test]
    fn the_job_is_the_first_word_after_the_command_and_its_options() {
        let two = jobs();
        assert_eq!(
            picked(&["bin", "submit", "b", "x"], &two),
            (
                Some("b".into()),
                vec!["bin".into(), "submit".into(), "x".into()]
            )
        );
        // Options (and their values) may come first, as the testkit puts them.
        let (job, rest) = picked(
            &[
                "bin",
                "--log-format",
                "json",
                "submit",
                "--zk",
                "a",
                "-o",
                "f",
                "--detach",
                "a",
                "t",
            ],
            &two,
        );
        assert_eq!(job.as_deref(), Some("a"));
        // The value of --zk stays; the job's name is taken out.
        assert_eq!(
            rest,
            [
                "bin",
                "--log-format",
                "json",
                "submit",
                "--zk",
                "a",
                "-o",
                "f",
                "--detach",
                "t"
            ]
        );
        // Several jobs, none named: none picked, nothing taken.
        assert_eq!(picked(&["bin", "submit", "file"], &two).0, None);
        // Other commands never take a job.
        assert_eq!(picked(&["bin", "result", "a"], &two).0, None);
        // One job: it is the default, and may still be named.
        let one = &two[..1];
        assert_eq!(
            picked(&["bin", "submit", "file"], one),
            (
                Some("a".into()),
                vec!["bin".into(), "submit".into(), "file".into()]
            )
        );
        assert_eq!(picked(&["bin", "submit", "a", "file"], one).1.len(), 3);
    }

    #[test]
    fn exits_follow_what_the_client_knows() {
        let of = |e: ClientError| Exit::of(&anyhow::Error::from(e).context("job x"));
        let refused = ClientError::Refused {
            kind: crate::client::Refusal::NoSuchJob,
            message: "no".into(),
        };
        assert_eq!(of(refused), Exit::Refused);
        let unavailable = ClientError::Unavailable {
            message: "ZooKeeper failed".into(),
        };
        assert_eq!(of(unavailable), Exit::Unreachable);
        assert_eq!(
            of(ClientError::OutcomeUnknown {
                job_id: "x".into(),
                reason: "lost".into()
            }),
            Exit::OutcomeUnknown
        );
        assert_eq!(
            of(ClientError::NoMaster {
                cluster: "c".into(),
                secs: 1
            }),
            Exit::Unreachable
        );
        assert_eq!(
            Exit::of(&ended(Exit::Cancelled, "c").context("more")),
            Exit::Cancelled
        );
        assert_eq!(Exit::of(&anyhow!("other")), Exit::Error);
        let codes = [
            Exit::Error,
            Exit::Usage,
            Exit::Refused,
            Exit::TasksFailed,
            Exit::Cancelled,
            Exit::OutcomeUnknown,
            Exit::Unreachable,
            Exit::Running,
            Exit::Interrupted,
        ]
        .map(Exit::code);
        let distinct: std::collections::BTreeSet<i32> = codes.iter().copied().collect();
        assert_eq!(distinct.len(), codes.len(), "{codes:?}");
    }

    #[test]
    fn an_error_quoting_its_cause_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let quoting = anyhow::Error::new(crate::transport::tls::TlsError::File {
            path: "certs/ca.pem".into(),
            source: io,
        });
        assert_eq!(
            error_text(&quoting),
            "error: cannot access certs/ca.pem: no such file"
        );
        let wrapped = anyhow!("inner cause").context("outer");
        assert_eq!(error_text(&wrapped), "error: outer\n  because: inner cause");
    }

    /// A job whose argument takes a name `submit` uses itself
    /// (`--priority` here) is refused when the binary starts, whatever
    /// the command, with the argument's name; one whose arguments are its
    /// own is not.
    #[test]
    fn a_job_registering_an_argument_submit_reserves_is_refused_at_start() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct T(u32);
        impl crate::Task for T {
            type Output = u32;
            const NAME: &'static str = "t";
            fn run(self, _: &crate::TaskContext) -> Result<u32, crate::TaskError> {
                Ok(self.0)
            }
        }
        macro_rules! cli_job {
            ($job:ident, $args:ident, $name:literal) => {
                struct $job;
                impl crate::Job for $job {
                    type Task = T;
                    type Result = u32;
                    const NAME: &'static str = $name;
                    fn fold(acc: &mut u32, _: u64, output: u32) {
                        *acc += output;
                    }
                    fn merge(acc: &mut u32, other: u32) {
                        *acc += other;
                    }
                }
                impl crate::cli_job::CliJob for $job {
                    type Args = $args;
                    fn tasks(_: &$args) -> Result<Vec<T>, crate::cli_job::BoxError> {
                        Ok(Vec::new())
                    }
                    fn output(
                        _: u32,
                        _: &crate::JobReport,
                        _: &crate::cli_job::Output,
                    ) -> Result<(), crate::cli_job::BoxError> {
                        Ok(())
                    }
                }
            };
        }
        #[derive(clap::Args)]
        struct Clashing {
            /// How urgent, in the job's own words.
            #[arg(long)]
            priority: Option<String>,
        }
        #[derive(clap::Args)]
        struct Own {
            /// A name of its own.
            #[arg(long)]
            urgency: Option<String>,
        }
        cli_job!(Urgent, Clashing, "urgent");
        cli_job!(Calm, Own, "calm");
        let refused = NodeBuilder::default()
            .cli_job::<Calm>()
            .cli_job::<Urgent>()
            .run_cli_from(["bin", "status"])
            .unwrap_err();
        let message = refused.to_string();
        assert!(
            message
                .contains("job urgent registers the argument --priority, which `submit` reserves"),
            "{message}"
        );
        assert!(NodeBuilder::default()
            .cli_job::<Calm>()
            .check_reserved()
            .is_ok());
    }
}
