//! A node: one QUIC endpoint, and per ZooKeeper session an election actor
//! (candidates), a worker actor (workers) and, once elected, the master
//! supervisor. When a session expires every actor of it stops and the node
//! starts over with a new session; on SIGTERM or Ctrl-C it stops its actors
//! and closes its session, so that its successor takes over at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{mpsc, watch};

use crate::actors::election::Election;
use crate::actors::gateway;
use crate::actors::master::{Master, MasterSettings};
use crate::actors::worker::{Worker, WorkerSettings};
use crate::actors::{Restart, Stop};
use crate::coord::{Connection, CoordError, Layout, Session};
use crate::metrics as m;
use crate::registry::Registry;
use crate::task::{Collect, Job, Task};
use crate::transport::{self, tls, TransportError};

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Candidate for master and worker.
    All,
    /// Only runs tasks.
    Worker,
    /// Only stands for master.
    Candidate,
}

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// ZooKeeper connect string.
    pub zk: String,
    /// Cluster name (znodes live under `/ringleader/<cluster>`).
    pub cluster: String,
    /// This node's id (its worker znode name). `None`: the id its
    /// certificate names (or, with a one-machine certificate directory
    /// that issues the node's certificate at start, a random one). A value
    /// that differs from the certificate's is an error at start.
    pub node_id: Option<String>,
    /// What it does.
    pub role: Role,
    /// QUIC address to bind; `[::]:port` falls back to `0.0.0.0:port`
    /// where IPv6 is off. See [`DEFAULT_PORT`].
    pub listen: SocketAddr,
    /// Address others dial (`IP:port`). By default the listen address if it
    /// names an IP, else this host's address toward ZooKeeper (the address
    /// the cluster's network reaches it on), with the bound port.
    pub advertise: Option<String>,
    /// Directory with `ca.pem`, `node.pem`, `node.key`.
    pub certs: PathBuf,
    /// Reach ZooKeeper over its TLS port with this node's certificate,
    /// and create the cluster's znodes so that only nodes may change them
    /// (`zk` then names the servers' TLS ports).
    pub zk_tls: bool,
    /// This host's scratch directory (tasks' `TaskContext::data_dir`).
    pub data_dir: PathBuf,
    /// The cluster's object store URL (see [`crate::store`]): outputs and
    /// results too big for ZooKeeper, uploaded inputs.
    pub store: String,
    /// Concurrent tasks on this worker.
    pub slots: u32,
    /// Requested ZooKeeper session timeout.
    pub session_timeout: Duration,
    /// Longest pause, drawn at random, before the node's first connection
    /// to ZooKeeper: a thousand nodes started in the same instant (a power
    /// restore, a fleet-wide deploy) then open their sessions spread over
    /// this window instead of in one burst of TLS handshakes that keeps
    /// ZooKeeper from answering the sessions already open (see
    /// [`DEFAULT_START_JITTER`] and `benches/RESULTS.md`). Zero: at once.
    pub start_jitter: Duration,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Largest submission accepted, in bytes of encoded tasks.
    pub max_job_bytes: usize,
    /// Most bytes of tasks all unfinished jobs together may hold (they live
    /// in ZooKeeper's memory until the job finishes).
    pub max_queued_bytes: usize,
    /// How long a fetched result stays in ZooKeeper.
    pub retention: Duration,
    /// Most fetched results kept in ZooKeeper: beyond it the oldest go,
    /// however young (a bound on ZooKeeper's memory for a work queue).
    pub retention_max_jobs: usize,
    /// On SIGTERM, how long a worker may take to finish the shards it started.
    pub drain_timeout: Duration,
    /// Silence after which a QUIC link is declared lost (worker failure
    /// detection before session expiry); see [`transport::LINK_TIMEOUT`].
    pub link_timeout: Duration,
    /// Where this node appends its audit log ([`crate::audit`]).
    pub audit_file: Option<PathBuf>,
    /// This node's build ([`crate::build_id`]): registered with it, shown
    /// by `status`.
    pub build: String,
}

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Transport set-up failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// TLS material missing or bad.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// ZooKeeper unreachable at start.
    #[error(transparent)]
    Coord(#[from] CoordError),
    /// The store cannot be opened, written, read or cleaned.
    #[error("{0}; check --store (RINGLEADER_STORE) and the store's credentials")]
    Store(#[from] crate::store::StoreError),
    /// Local I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The address this node would publish cannot be reached by the
    /// cluster, or is not an address.
    #[error("{0}")]
    Advertise(String),
    /// The cluster is at a feature level this build does not follow.
    #[error(transparent)]
    Features(#[from] crate::core::features::FeatureError),
}

/// The default of [`NodeConfig::start_jitter`]. Measured on a 2-core
/// machine running ZooKeeper (TLS port, 2 s sessions) beside a thousand
/// worker nodes started in the same instant (`cluster-bench --only
/// scale`): with no pause, 3 to 6 of the other nodes' sessions expired
/// (the master's among them) and the thousand took 11.6 s to register:
/// ZooKeeper's CPU went to TLS handshakes that clients gave up half done
/// (800 ms without an answer) and began again, 2,610 of them for 1,000
/// sessions. With pauses of up to 1 s and 2 s, 1-3 and 0-2 expired; with
/// up to 4 s, none in four runs, and all registered in 4.5-6.1 s, at some
/// 4.5 ms of ZooKeeper's CPU per session. A bigger fleet, or a ZooKeeper
/// with less CPU to spare, wants a longer window: some 4 ms per node
/// started together.
pub const DEFAULT_START_JITTER: Duration = Duration::from_secs(4);

/// The QUIC port a node listens on unless told otherwise (UDP; open it
/// between the cluster's hosts, and from clients to master candidates).
pub const DEFAULT_PORT: u16 = 7470;

/// The `host:port` entries of a ZooKeeper connect string (without chroot).
fn zk_hosts(connect: &str) -> Vec<&str> {
    let hosts = connect.split('/').next().unwrap_or_default();
    hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect()
}

/// Decides the address a node publishes (see [`NodeConfig::advertise`])
/// and refuses one that other hosts cannot dial while ZooKeeper is remote.
pub async fn advertised_addr(
    zk: &str,
    listen: SocketAddr,
    bound_port: u16,
    advertise: Option<&str>,
) -> Result<SocketAddr, NodeError> {
    let mut resolved = Vec::new();
    for host in zk_hosts(zk) {
        let found = tokio::net::lookup_host(host).await.map_err(|e| {
            NodeError::Advertise(format!(
                "cannot resolve ZooKeeper host {host:?} (from --zk {zk:?}): {e}; check --zk or RINGLEADER_ZK"
            ))
        })?;
        resolved.extend(found);
    }
    let Some(first) = resolved.first().copied() else {
        return Err(NodeError::Advertise(format!(
            "--zk {zk:?} names no ZooKeeper host (want host:port[,host:port...])"
        )));
    };
    let zk_remote = resolved.iter().any(|a| !a.ip().is_loopback());
    let addr = match advertise {
        Some(a) => a
            .parse::<SocketAddr>()
            .map_err(|e| NodeError::Advertise(format!("--advertise {a:?} is not IP:port: {e}")))?,
        None if !listen.ip().is_unspecified() => SocketAddr::new(listen.ip(), bound_port),
        None => {
            // The source address the kernel picks toward ZooKeeper: the
            // interface of the cluster's network. Nothing is sent.
            let ip = transport::route_source(first).map_err(|e| {
                NodeError::Advertise(format!(
                    "this host has no route to ZooKeeper at {first}: {e}; check --zk and this host's network"
                ))
            })?;
            SocketAddr::new(ip, bound_port)
        }
    };
    let ip = addr.ip();
    if zk_remote && (ip.is_loopback() || ip.is_unspecified()) {
        return Err(NodeError::Advertise(format!(
            "this node would advertise {addr}, which other hosts cannot dial, while ZooKeeper \
             ({zk}) is on another host: listen on an address of this host's network (the default \
             [::]:{DEFAULT_PORT} works) or pass --advertise IP:PORT"
        )));
    }
    if ip.is_unspecified() {
        return Err(NodeError::Advertise(format!(
            "--advertise {addr} is not an address peers can dial"
        )));
    }
    Ok(addr)
}

/// Registers the jobs a node knows; see [`crate::Node::builder`].
#[derive(Default, Clone)]
pub struct NodeBuilder {
    pub(crate) registry: Registry,
    /// Every registered job's command line, by registration order.
    pub(crate) cli: Vec<Arc<dyn crate::cli_job::ErasedCliJob>>,
    /// The binary's own version, for `--version`.
    pub(crate) version: Option<&'static str>,
}

impl NodeBuilder {
    /// Registers a bare task type: its job collects every output by index.
    /// On the command line it reads its tasks as JSON lines and writes one
    /// JSON line per output.
    pub fn task<T: Task>(mut self) -> Self {
        self.registry.add::<Collect<T>>();
        self.add_cli(Arc::new(crate::cli_job::TaskLines::<T>::default()));
        self
    }

    /// Registers a job with its own reduction. On the command line it
    /// reads its tasks as JSON lines and writes its result as JSON.
    pub fn job<J: Job>(mut self) -> Self {
        self.registry.add::<J>();
        self.add_cli(Arc::new(crate::cli_job::JobJson::<J>::default()));
        self
    }

    /// Registers a job with command-line arguments of its own for
    /// `submit` and `local`.
    pub fn cli_job<J: crate::cli_job::CliJob>(mut self) -> Self {
        self.registry.add::<J>();
        self.add_cli(Arc::new(crate::cli_job::CliEntry::<J>::default()));
        self
    }

    /// The binary's version for `--version`, usually
    /// `env!("CARGO_PKG_VERSION")` of the binary's crate.
    pub fn version(mut self, version: &'static str) -> Self {
        self.version = Some(version);
        self
    }

    /// A job registered again replaces its earlier entry.
    fn add_cli(&mut self, entry: Arc<dyn crate::cli_job::ErasedCliJob>) {
        self.cli.retain(|e| e.name() != entry.name());
        self.cli.push(entry);
    }

    /// The registered jobs.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// A node id for a node whose certificate does not name one: the host's
/// name, the process id and a random suffix.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    format!(
        "{}-{}-{}",
        if host.is_empty() { "node" } else { &host },
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// This host's directory for the nodes of `cluster` run by this user:
/// `<temp>/ringleader-<uid>-<cluster>`, created if missing, readable by
/// this user alone. A node's `--data-dir` defaults to it, and its `store`
/// subdirectory is the cluster's default store on this host whatever a
/// node's `--data-dir`, so that every node of a cluster on one machine
/// shares one store, and two users' clusters of one name share nothing.
/// A directory of that name that another user owns is refused.
pub fn default_dir(cluster: &str) -> std::io::Result<PathBuf> {
    let name: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let (user, uid) = current_user();
    let dir = std::env::temp_dir().join(format!("ringleader-{user}-{name}"));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    #[cfg(unix)]
    let theirs = uid.is_some_and(|uid| std::os::unix::fs::MetadataExt::uid(&meta) != uid);
    #[cfg(not(unix))]
    let theirs = uid.is_some();
    if !meta.is_dir() || theirs {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of this user's: give --data-dir and --store (or remove it)",
            dir.display()
        )));
    }
    Ok(dir)
}

/// This process's user, as a name for paths (its uid where `/proc` says
/// it), and its uid if known.
fn current_user() -> (String, Option<u32>) {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        let uid = std::os::unix::fs::MetadataExt::uid(&meta);
        return (uid.to_string(), Some(uid));
    }
    let user: String = std::env::var("USER")
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    (if user.is_empty() { "user".into() } else { user }, None)
}

/// A pause of between half `pause` and all of it, at random: nodes that
/// failed together (a thousand started at once, a ZooKeeper restart) do
/// not all try again in the same instant.
fn jittered(pause: Duration) -> Duration {
    pause / 2 + random_upto(pause / 2)
}

/// A pause of up to `most`, at random (zero for zero).
fn random_upto(most: Duration) -> Duration {
    use rand::Rng;
    if most.is_zero() {
        return Duration::ZERO;
    }
    rand::thread_rng().gen_range(Duration::ZERO..=most)
}

/// First pause between attempts to reach ZooKeeper; it doubles up to
/// [`CONNECT_BACKOFF_MAX`].
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest pause between attempts to reach ZooKeeper.
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The pause before a node whose master stepped down stands for election
/// again: the first, and the longest (it doubles with each step-down in a
/// row).
const STAND_PAUSE_MIN: Duration = Duration::from_secs(10);
const STAND_PAUSE_MAX: Duration = Duration::from_secs(320);

/// Runs a node until SIGTERM or Ctrl-C. Must be called inside an actix `System`.
pub async fn run(config: NodeConfig, registry: Registry) -> Result<(), NodeError> {
    let identity = tls::Identity::node(&config.certs, config.node_id.as_deref(), default_node_id)?;
    let node_id = identity.id().name.clone();
    let endpoint = if config.listen.ip() == std::net::Ipv6Addr::UNSPECIFIED {
        transport::endpoint_any(config.listen.port(), &identity, true, config.link_timeout)?
    } else {
        transport::endpoint(config.listen, &identity, true, config.link_timeout)?
    };
    let bound = endpoint.local_addr()?;
    let advertised = advertised_addr(
        &config.zk,
        config.listen,
        bound.port(),
        config.advertise.as_deref(),
    )
    .await?;
    let addr = advertised.to_string();
    tracing::info!(
        node = %node_id,
        %addr,
        role = ?config.role,
        version = crate::VERSION,
        commit = crate::COMMIT,
        "node starting"
    );
    std::fs::create_dir_all(&config.data_dir)?;
    let store = crate::store::Store::open(&config.store)?;
    let audit = crate::audit::Audit::open(config.audit_file.as_deref(), &node_id)?;
    let store_mark = store.probe(&node_id).await?;
    if store.is_local() && !advertised.ip().is_loopback() {
        tracing::warn!(
            store = store.url(),
            "the store is a directory of this host, and this node serves other hosts: master \
             candidates on other hosts cannot read what this one writes unless it is a shared \
             filesystem (use --store s3://bucket/prefix for clusters)"
        );
    }
    let (route_tx, route_rx) = watch::channel::<Option<Addr<Master>>>(None);
    let sampled = endpoint.clone();
    actix::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            metrics::gauge!(m::QUIC_CONNECTIONS).set(sampled.open_connections() as f64);
        }
    });
    let (revoked_tx, revoked_rx) = watch::channel(identity.revoked());
    let handshakes = transport::Handshakes::new(&node_id);
    actix::spawn(gateway::serve(
        endpoint.clone(),
        route_rx,
        gateway::Serving {
            max_frame: config.max_frame,
            max_job_bytes: config.max_job_bytes,
            link_timeout: config.link_timeout,
            revoked: revoked_rx,
            handshakes: handshakes.clone(),
            store: store.clone(),
        },
    ));
    // New ZooKeeper sessions present the certificate of the last reload,
    // and the worker dials with it (quinn keeps a dialing configuration
    // per endpoint handle: the reloaded handle is handed over).
    let (zk_identity_tx, zk_identity) = watch::channel(identity.clone());
    let (dialing_tx, dialing) = watch::channel(endpoint.clone());
    actix::spawn(reload_on_hangup(
        endpoint.clone(),
        config.certs.clone(),
        node_id.clone(),
        config.link_timeout,
        Reloaded {
            revoked: revoked_tx,
            identity: zk_identity_tx,
            dialing: dialing_tx,
        },
        audit.clone(),
    ));
    let layout = Layout::new(&config.cluster);
    let mut shutdown: Shutdown = Box::pin(shutdown_signal());
    if !config.zk_tls {
        tracing::warn!(
            "ZooKeeper over a plain connection: anyone who reaches it can read and change \
             this cluster's znodes; give --zk-tls and the servers' TLS ports to lock them down"
        );
    }
    let parts = Parts {
        node_id: node_id.clone(),
        addr,
        registry,
        audit: audit.clone(),
        route: route_tx,
        handshakes,
        store: store.clone(),
        store_mark: store_mark.clone(),
        dialing,
    };
    let mut reach = Reach::new(config.start_jitter);
    let mut stand = StandPause::default();
    loop {
        let zk_tls = config
            .zk_tls
            .then(|| crate::client::zk_tls(&zk_identity.borrow(), &config.certs));
        let Some(zk) = reach
            .session(&config, &layout, zk_tls.as_ref(), &mut shutdown)
            .await?
        else {
            break;
        };
        match enrol(&zk, &node_id, &config).await {
            Ok(()) => {}
            Err(NodeError::Coord(e)) if e.is_session_end() || e.is_connection_lost() => {
                tracing::warn!(error = %e, "could not register this node; starting a new session");
                continue;
            }
            Err(e) => return Err(e),
        }
        let mut session = parts.start_actors(&config, &zk, stand.take());
        let mut states = zk.connections();
        let stop = serve_session(&mut states, &mut session.fatal, &mut shutdown, &mut stand).await;
        if stop && config.role != Role::Candidate {
            session.drain(config.drain_timeout).await;
        }
        parts.end_session(zk, states, session).await;
        if stop {
            break;
        }
    }
    endpoint
        .close("node stopping", Duration::from_secs(1))
        .await;
    if let Err(e) = store.unmark(&node_id, &store_mark).await {
        tracing::debug!(error = %e, "could not delete this node's mark in the store");
    }
    // What the audit thread still holds is written before the process goes.
    audit.sync();
    tracing::info!(node = %node_id, "node stopped");
    Ok(())
}

/// What every session's actors get from their node, fixed for its life.
struct Parts {
    node_id: String,
    addr: String,
    registry: Registry,
    audit: crate::audit::Audit,
    /// Where the gateway finds the master this node runs, if any.
    route: watch::Sender<Option<Addr<Master>>>,
    handshakes: transport::Handshakes,
    store: crate::store::Store,
    store_mark: String,
    /// The endpoint the worker dials with (replaced on a reload).
    dialing: watch::Receiver<transport::Endpoint>,
}

/// One session's actors, and what tells the node about them.
struct SessionActors {
    actors: Vec<Recipient<Stop>>,
    /// An actor asks for a new session (its master stepped down, or
    /// failed).
    fatal: mpsc::Receiver<Restart>,
    /// Closed once every actor of the session dropped its clone of the
    /// session's client.
    alive: mpsc::Receiver<()>,
    drain: watch::Sender<bool>,
    drained: watch::Receiver<bool>,
}

impl Parts {
    /// Starts a session's actors for the node's roles: the election (which
    /// starts the master when it wins; after `pause`) and the worker.
    fn start_actors(&self, config: &NodeConfig, zk: &Session, pause: Duration) -> SessionActors {
        let (fatal_tx, fatal) = mpsc::channel(crate::actors::FATAL_QUEUE);
        let (alive_tx, alive) = mpsc::channel::<()>(1);
        let mut actors: Vec<Recipient<Stop>> = Vec::new();
        let (drain, drain_rx) = watch::channel(false);
        let (drained_tx, drained) = watch::channel(false);
        if config.role != Role::Worker {
            let settings = MasterSettings {
                node_id: self.node_id.clone(),
                addr: self.addr.clone(),
                build: config.build.clone(),
                registry: self.registry.clone(),
                retention: config.retention,
                retention_max_jobs: config.retention_max_jobs,
                max_queued_bytes: config.max_queued_bytes,
                audit: self.audit.clone(),
                route: self.route.clone(),
                fatal: fatal_tx.clone(),
                handshakes: self.handshakes.clone(),
                _alive: alive_tx.clone(),
            };
            let election = Election {
                pause,
                session: zk.clone(),
                store: self.store.clone(),
                settings,
                master: None,
                _alive: alive_tx.clone(),
            }
            .start();
            actors.push(election.recipient());
        }
        if config.role != Role::Candidate {
            let settings = Arc::new(WorkerSettings {
                node_id: self.node_id.clone(),
                addr: self.addr.clone(),
                slots: config.slots.max(1),
                data_dir: config.data_dir.clone(),
                store: self.store.clone(),
                store_mark: self.store_mark.clone(),
                link_timeout: config.link_timeout,
                registry: self.registry.clone(),
                dialing: self.dialing.clone(),
                max_frame: config.max_frame,
                drain: drain_rx,
                drained: drained_tx,
                audit: self.audit.clone(),
                build: config.build.clone(),
            });
            let worker = Worker {
                session: zk.clone(),
                settings,
                fatal: fatal_tx,
                _alive: alive_tx,
            }
            .start();
            actors.push(worker.recipient());
        }
        SessionActors {
            actors,
            fatal,
            alive,
            drain,
            drained,
        }
    }

    /// Stops a session's actors and waits until they let go of its
    /// client, then closes the session (deleting its ephemeral znodes).
    async fn end_session(
        &self,
        zk: Session,
        mut states: crate::coord::Connections,
        mut session: SessionActors,
    ) {
        metrics::gauge!(m::ZK_CONNECTED).set(0.0);
        for a in &session.actors {
            a.do_send(Stop);
        }
        session.actors.clear();
        let _ = self.route.send(None);
        // Wait until every actor of the session has dropped its client clone.
        let t = std::time::Instant::now();
        if tokio::time::timeout(Duration::from_secs(5), session.alive.recv())
            .await
            .is_err()
        {
            tracing::warn!("the session's actors did not stop within 5 s");
        }
        let ended = matches!(zk.connection(), Connection::Ended { .. });
        drop(zk);
        // Dropping the last clone closes a live session and deletes our
        // ephemeral znodes; an expired one has nothing left to close (and its
        // state will not change again, so do not wait for it).
        if !ended {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while !matches!(states.changed().await, Connection::Ended { .. }) {}
            })
            .await;
        }
        tracing::debug!(
            ms = t.elapsed().as_millis() as u64,
            "session's actors stopped"
        );
    }
}

impl SessionActors {
    /// Graceful drain: no new shards; the started ones finish and are
    /// reported (committed by the master, which still runs) before the
    /// node goes, for at most `timeout`.
    async fn drain(&mut self, timeout: Duration) {
        let _ = self.drain.send(true);
        let drained = tokio::time::timeout(timeout, self.drained.wait_for(|d| *d)).await;
        if drained.is_err() {
            tracing::warn!(
                timeout_s = timeout.as_secs(),
                "drain timed out; unfinished shards will be reassigned"
            );
        }
    }
}

/// After this node's master stepped down, it stands again only after a
/// pause, doubling with each step-down in a row.
#[derive(Default)]
struct StandPause {
    pause: Duration,
    next: Duration,
    stepped_down_at: Option<std::time::Instant>,
}

impl StandPause {
    /// The pause before the next candidacy (zero unless the last session's
    /// master stepped down).
    fn take(&mut self) -> Duration {
        std::mem::take(&mut self.next)
    }

    /// This node's master stepped down. A step-down long after the last
    /// starts again from the shortest pause.
    fn stepped_down(&mut self) {
        let again = self
            .stepped_down_at
            .is_some_and(|t| t.elapsed() < STAND_PAUSE_MAX * 2);
        self.pause = match again {
            true => (self.pause * 2).clamp(STAND_PAUSE_MIN, STAND_PAUSE_MAX),
            false => STAND_PAUSE_MIN,
        };
        self.next = self.pause;
        self.stepped_down_at = Some(std::time::Instant::now());
    }
}

/// Follows a session until it ends, an actor asks for a new one, or the
/// node is told to stop (then `true`).
async fn serve_session(
    states: &mut crate::coord::Connections,
    fatal: &mut mpsc::Receiver<Restart>,
    shutdown: &mut Shutdown,
    stand: &mut StandPause,
) -> bool {
    loop {
        tokio::select! {
            s = states.changed() => match s {
                Connection::Ended { expired: true } => {
                    metrics::counter!(m::SESSION_EXPIRED).increment(1);
                    tracing::warn!("ZooKeeper session expired: stepping down and starting a new session");
                    return false;
                }
                Connection::Ended { expired: false } => {
                    tracing::warn!("ZooKeeper session ended; starting a new one");
                    return false;
                }
                Connection::Disconnected => {
                    metrics::gauge!(m::ZK_CONNECTED).set(0.0);
                    tracing::warn!("disconnected from ZooKeeper");
                }
                Connection::Connected => {
                    metrics::gauge!(m::ZK_CONNECTED).set(1.0);
                    tracing::info!("reconnected to ZooKeeper");
                }
            },
            reason = fatal.recv() => {
                let why = reason.as_ref().map_or("?", Restart::reason);
                tracing::warn!(reason = why, "restarting the session");
                if let Some(Restart::SteppedDown(_)) = reason {
                    stand.stepped_down();
                }
                return false;
            }
            _ = &mut *shutdown => return true,
        }
    }
}

/// Registers this node for the session (`/nodes/<id>`: its build and the
/// feature level it follows), then refuses to go on in a cluster at a
/// level it does not follow. Registered first: a level raised after this
/// node's read was raised by one that saw it.
async fn enrol(zk: &Session, node_id: &str, config: &NodeConfig) -> Result<(), NodeError> {
    let role = match config.role {
        Role::All => "all",
        Role::Worker => "worker",
        Role::Candidate => "candidate",
    };
    let info = crate::coord::NodeInfo {
        role: role.to_string(),
        build: config.build.clone(),
        protocol: [crate::wire::PROTOCOL_MIN, crate::wire::PROTOCOL_VERSION],
        features: crate::core::features::SUPPORTED,
    };
    zk.register_node(node_id, &info).await?;
    // A new cluster starts with every feature its first nodes follow.
    let start = crate::core::features::initial(&Session::follows(&zk.live_nodes().await?));
    let record = crate::coord::FeaturesRecord {
        level: start,
        raised_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        by: config.build.clone(),
    };
    let level = zk.start_feature_level(&record).await?;
    crate::core::features::may_join(level)?;
    Ok(())
}

/// The node's shutdown signal (SIGTERM or Ctrl-C), polled by every wait.
type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// How a node reaches ZooKeeper, session after session: a random pause
/// before the first ([`NodeConfig::start_jitter`]), then attempts with
/// growing, jittered pauses, whose cause is logged when it changes (not at
/// every attempt of a node left pointing at a wrong address).
struct Reach {
    first_pause: Option<Duration>,
    failures: u32,
    connected_once: bool,
    backoff: Duration,
    last_cause: Option<String>,
}

impl Reach {
    fn new(start_jitter: Duration) -> Self {
        Reach {
            first_pause: Some(random_upto(start_jitter)).filter(|p| !p.is_zero()),
            failures: 0,
            connected_once: false,
            backoff: CONNECT_BACKOFF_MIN,
            last_cause: None,
        }
    }

    /// A new session, its root ensured; `None` if the node is told to
    /// stop meanwhile. A ZooKeeper that refuses this node's set-up (its
    /// certificate, the port's protocol) before any session was had is an
    /// error, not a retry loop that hides it; once the node has run, it is
    /// retried as any outage.
    async fn session(
        &mut self,
        config: &NodeConfig,
        layout: &Layout,
        zk_tls: Option<&crate::coord::ZkTls>,
        shutdown: &mut Shutdown,
    ) -> Result<Option<Session>, NodeError> {
        if let Some(pause) = self.first_pause.take() {
            tracing::info!(
                pause_ms = pause.as_millis() as u64,
                "connecting to ZooKeeper after a random pause (--start-jitter-ms: nodes started \
                 together do not all open their sessions at once)"
            );
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.as_mut() => return Ok(None),
            }
        }
        loop {
            let zk = tokio::select! {
                r = Session::connect_with(&config.zk, config.session_timeout, layout.clone(), zk_tls) => r,
                () = shutdown.as_mut() => return Ok(None),
            };
            match zk {
                Err(e @ CoordError::Refused { .. }) if !self.connected_once => {
                    return Err(e.into());
                }
                Err(e) => {
                    let cause = e.to_string();
                    if self.last_cause.as_deref() != Some(cause.as_str()) {
                        tracing::error!(
                            error = %e,
                            "cannot reach ZooKeeper; retrying, with pauses growing to {} s \
                             (logged again when the cause changes)",
                            CONNECT_BACKOFF_MAX.as_secs()
                        );
                        self.last_cause = Some(cause);
                    }
                    metrics::gauge!(m::ZK_CONNECTED).set(0.0);
                }
                // A session that ends at once (a ZooKeeper that a thousand
                // nodes starting together keep too busy to answer in time)
                // is retried as a failed connection is, not the node's end.
                Ok(zk) => match zk.ensure_root().await {
                    Ok(()) => return Ok(Some(self.reached(zk))),
                    Err(e) if e.is_session_end() || e.is_connection_lost() => {
                        tracing::warn!(error = %e, "the new ZooKeeper session ended before it was used; retrying");
                    }
                    Err(e) => return Err(e.into()),
                },
            }
            self.failures += 1;
            metrics::counter!(m::ZK_ERRORS, "op" => "connect").increment(1);
            tokio::select! {
                () = tokio::time::sleep(jittered(self.backoff)) => {
                    self.backoff = (self.backoff * 2).min(CONNECT_BACKOFF_MAX);
                }
                () = shutdown.as_mut() => return Ok(None),
            }
        }
    }

    /// A session was had: the next outage starts from the shortest pause.
    fn reached(&mut self, zk: Session) -> Session {
        if self.failures > 0 {
            tracing::info!(attempts = self.failures + 1, "ZooKeeper reached");
        }
        self.connected_once = true;
        self.failures = 0;
        self.backoff = CONNECT_BACKOFF_MIN;
        self.last_cause = None;
        metrics::gauge!(m::ZK_CONNECTED).set(1.0);
        tracing::info!(
            session_timeout_ms = zk.timeout().as_millis() as u64,
            "ZooKeeper session established"
        );
        zk
    }
}

/// Where a SIGHUP's reload goes besides the QUIC endpoint.
struct Reloaded {
    /// The serials the CRLs revoke (live connections of theirs close).
    revoked: watch::Sender<Arc<std::collections::HashSet<Vec<u8>>>>,
    /// The identity new ZooKeeper sessions present over TLS.
    identity: watch::Sender<tls::Identity>,
    /// The endpoint handle that dials with the reloaded certificate and
    /// trust (a worker's links to its master).
    dialing: watch::Sender<transport::Endpoint>,
}

/// On SIGHUP, reads the node's certificate directory again (its
/// certificate and key, `ca.pem`, `crl.pem`) and puts it in use for new
/// connections: QUIC, and ZooKeeper sessions started from then on (the
/// live session keeps its handshake). Live QUIC connections of
/// certificates now revoked are closed. A directory that no longer loads,
/// or names another node, is refused (logged) and the one in use stays.
async fn reload_on_hangup(
    mut endpoint: transport::Endpoint,
    certs: std::path::PathBuf,
    node_id: String,
    link_timeout: Duration,
    reloaded: Reloaded,
    audit: crate::audit::Audit,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        let loaded = tls::Identity::node(&certs, Some(&node_id), || node_id.clone())
            .map_err(transport::TransportError::from)
            .and_then(|identity| {
                transport::reload(&mut endpoint, &identity, true, link_timeout)?;
                Ok(identity)
            });
        match loaded {
            Ok(identity) => {
                let serials = identity.revoked();
                tracing::info!(
                    certs = %certs.display(),
                    revoked = serials.len(),
                    "SIGHUP: certificates reloaded"
                );
                audit.record(
                    0,
                    crate::audit::Event::CertificatesReloaded {
                        revoked: serials.len() as u64,
                    },
                );
                reloaded.revoked.send_replace(serials);
                reloaded.identity.send_replace(identity);
                reloaded.dialing.send_replace(endpoint.clone());
            }
            Err(e) => tracing::error!(
                certs = %certs.display(),
                error = %e,
                "SIGHUP: cannot reload the certificates; the ones in use stay"
            ),
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("interrupted: stopping"),
            }
        }
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_of_nodes_that_failed_together_spread_over_half_their_pause() {
        let pause = Duration::from_secs(4);
        let pauses: Vec<Duration> = (0..200).map(|_| jittered(pause)).collect();
        assert!(pauses.iter().all(|p| *p >= pause / 2 && *p <= pause));
        let distinct: std::collections::HashSet<_> = pauses.iter().collect();
        assert!(
            distinct.len() > 150,
            "{} distinct pauses of 200",
            distinct.len()
        );
    }

    #[test]
    fn first_connections_of_nodes_started_together_spread_over_the_whole_window() {
        assert_eq!(random_upto(Duration::ZERO), Duration::ZERO);
        let window = DEFAULT_START_JITTER;
        let pauses: Vec<Duration> = (0..400).map(|_| random_upto(window)).collect();
        assert!(pauses.iter().all(|p| *p <= window));
        // Each quarter of the window gets its share (80 of 100 expected):
        // a burst is spread, not moved.
        for q in 0..4u32 {
            let (lo, hi) = (window * q / 4, window * (q + 1) / 4);
            let n = pauses.iter().filter(|p| **p >= lo && **p < hi).count();
            assert!(n > 50, "{n} of 400 pauses in quarter {q}");
        }
    }

    fn advertise(zk: &str, listen: &str, flag: Option<&str>) -> Result<SocketAddr, NodeError> {
        let listen: SocketAddr = listen.parse().expect("a literal address");
        actix::System::new().block_on(advertised_addr(zk, listen, 7470, flag))
    }

    #[test]
    fn a_node_on_loopback_refuses_to_advertise_it_to_a_remote_zookeeper() {
        // Nothing is sent: the listen address names an IP, so no route is looked up.
        let err = advertise("10.77.0.1:2181", "127.0.0.1:0", None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("would advertise 127.0.0.1:7470"), "{text}");
        assert!(text.contains("--advertise"), "{text}");
        let err = advertise("10.77.0.1:2181", "[::]:7470", Some("0.0.0.0:7470")).unwrap_err();
        assert!(
            err.to_string().contains("would advertise 0.0.0.0:7470"),
            "{err}"
        );
    }

    #[test]
    fn advertised_addresses_follow_listen_zookeeper_and_the_flag() {
        let local = advertise("127.0.0.1:2181", "127.0.0.1:0", None).unwrap();
        assert_eq!(local, "127.0.0.1:7470".parse().unwrap());
        // Unspecified listen address: this host's address toward ZooKeeper.
        let any = advertise("127.0.0.1:2181,localhost:2182/chroot", "[::]:7470", None).unwrap();
        assert_eq!(any, "127.0.0.1:7470".parse().unwrap());
        let flag = advertise("10.77.0.1:2181", "[::]:7470", Some("10.77.0.9:7000")).unwrap();
        assert_eq!(flag, "10.77.0.9:7000".parse().unwrap());
        let bad = advertise("127.0.0.1:2181", "[::]:7470", Some("node-a:7470")).unwrap_err();
        assert!(bad.to_string().contains("is not IP:port"), "{bad}");
        let none = advertise(" , ", "[::]:7470", None).unwrap_err();
        assert!(
            none.to_string().contains("names no ZooKeeper host"),
            "{none}"
        );
    }
}
