//! Submitting jobs and fetching results from Rust. A [`Client`] finds the
//! master through `/master` in ZooKeeper, talks to it over QUIC with a
//! client certificate, and follows a new master after a failover: every
//! request is idempotent (a submission carries its client-chosen job id).

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_bytes::ByteBuf;
use tokio::sync::Mutex;

use crate::coord::{CoordError, Layout, MasterInfo, Session};
use crate::core::TaskFailure;
use crate::registry::{decode, encode, CodecError};
use crate::task::{Job, Task};
use crate::transport::{self, tls, FramedStream, TransportError};
use crate::wire::{
    ClusterStatus, ErrorKind, JobOptions, JobOutcome, JobProgress, Reply, Request, SubmitHeader,
    WireError, DEFAULT_MAX_FRAME,
};

/// A submission's parts, as [`Client::submit_frames`] sends them.
struct Submitting<'a> {
    name: &'a str,
    /// The job's types in the submitting binary.
    shape: Option<u64>,
    tasks: Vec<ByteBuf>,
    options: JobOptions,
    job_id: Option<String>,
}

/// Errors a client sees.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// ZooKeeper unreachable or garbage in it.
    #[error(transparent)]
    Coord(#[from] CoordError),
    /// QUIC or TLS trouble.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Certificates missing or bad.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Task or result encoding.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The cluster's object store, opened from this host.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// No master was published within the wait: `/master` is absent.
    #[error(
        "no master is serving cluster {cluster:?} (waited {secs} s for one to be published in \
         ZooKeeper): start a node with --role all or candidate, and check --cluster and --zk"
    )]
    NoMaster {
        /// The cluster.
        cluster: String,
        /// Seconds waited.
        secs: u64,
    },
    /// A master is published, but its address did not answer for longer
    /// than its ZooKeeper session timeout, and no successor took over.
    #[error(
        "the master {node} at {addr} (epoch {epoch}) did not answer for {secs:.1} s and no other \
         master took over: check that this host can reach {addr} over UDP (the master's --listen \
         port, its --advertise address) and that the node runs"
    )]
    Unreachable {
        /// The address dialled.
        addr: String,
        /// The master's node id.
        node: String,
        /// Its epoch.
        epoch: u64,
        /// Seconds waited.
        secs: f64,
    },
    /// The master's reply is bigger than this client accepts: retrying
    /// would get the same.
    #[error(
        "the master's reply is {len} bytes, over this client's limit of {max} bytes: raise \
         ClientConfig::max_reply_bytes, or have the job return references (store objects) \
         rather than the data"
    )]
    ReplyTooLarge {
        /// The reply's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The master refused the request: sending it again gets the same
    /// answer. `kind` says why (a program acts on it, never on the text).
    #[error("{message}")]
    Refused {
        /// Why, as a kind.
        kind: Refusal,
        /// Why, in words.
        message: String,
    },
    /// The master could not act now and did nothing: its ZooKeeper or
    /// store failed, the connection's budget was full, the queue is full
    /// (`--max-queued-bytes`), or the job's id is being freed. Send the
    /// same request again after a pause (a submission with the same job
    /// id: it is accepted once).
    #[error("{message}")]
    Unavailable {
        /// Why, in words.
        message: String,
    },
    /// A submission was sent, and whether the master accepted it is not
    /// known (the link or the master was lost before its answer, or the
    /// master could not learn whether its write applied). Submitting
    /// again with the same job id finds the job if it was accepted, and
    /// submits it if not: the job is accepted once (a task of it that
    /// already ran may run again).
    #[error(
        "the outcome of job {job_id}'s submission is unknown ({reason}): submit again with the \
         same job id (the job is accepted once; a task of it may run again), or look the job up"
    )]
    OutcomeUnknown {
        /// The job's id.
        job_id: String,
        /// What was seen.
        reason: String,
    },
    /// The master answered with something unexpected.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

/// Why the master refused a request ([`ClientError::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The request cannot succeed as it is: bad arguments or options, a
    /// limit passed, an unknown job type, a job id taken by another job.
    Invalid,
    /// No such job: unknown, never acknowledged, or collected once its
    /// result was fetched and its retention passed.
    NoSuchJob,
    /// The job belongs to another client.
    NotOwner,
    /// The job is not in a state for this request: still running (a
    /// fetch), already ended (a cancel), still being submitted.
    JobState,
    /// The master does not know the request: an older version.
    Unsupported,
    /// This certificate does not allow the request: an admin's or a
    /// node's is needed.
    Forbidden,
}

/// What a caller should do about a [`ClientError`] ([`ClientError::advice`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// Send the same request again after a pause (a submission with the
    /// same job id): nothing was done, or what was done is found by the
    /// same request.
    Retry,
    /// No master serves yet: wait for one (a node standing for election),
    /// then send the request again.
    Wait,
    /// Sending it again gets the same answer: change the request, the
    /// certificates or the configuration.
    Stop,
}

impl ClientError {
    /// The error of an `Error` frame of `kind` (`job_id`: the submission's,
    /// for an unknown outcome).
    fn from_frame(kind: ErrorKind, message: String, job_id: Option<&str>) -> ClientError {
        let refused = |kind| ClientError::Refused {
            kind,
            message: message.clone(),
        };
        match kind {
            ErrorKind::OutcomeUnknown => ClientError::OutcomeUnknown {
                job_id: job_id.unwrap_or_default().to_string(),
                reason: message,
            },
            ErrorKind::Unavailable => ClientError::Unavailable { message },
            ErrorKind::Invalid => refused(Refusal::Invalid),
            ErrorKind::NoSuchJob => refused(Refusal::NoSuchJob),
            ErrorKind::NotOwner => refused(Refusal::NotOwner),
            ErrorKind::JobState => refused(Refusal::JobState),
            ErrorKind::Unsupported => refused(Refusal::Unsupported),
            ErrorKind::Forbidden => refused(Refusal::Forbidden),
        }
    }

    /// The refusal's kind, if the master refused.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            ClientError::Refused { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// What a caller should do about this error.
    pub fn advice(&self) -> Advice {
        use crate::transport::TransportError as T;
        match self {
            ClientError::OutcomeUnknown { .. }
            | ClientError::Unavailable { .. }
            | ClientError::Unreachable { .. } => Advice::Retry,
            ClientError::NoMaster { .. } => Advice::Wait,
            ClientError::Coord(CoordError::Connect { .. }) => Advice::Retry,
            ClientError::Coord(e) if e.is_connection_lost() || e.is_session_end() => Advice::Retry,
            // A handshake the other side refused: a certificate's matter.
            ClientError::Transport(T::Connect { .. }) => Advice::Stop,
            ClientError::Transport(_) => Advice::Retry,
            ClientError::Refused { .. }
            | ClientError::Coord(_)
            | ClientError::Tls(_)
            | ClientError::Codec(_)
            | ClientError::Store(_)
            | ClientError::ReplyTooLarge { .. }
            | ClientError::Protocol(_) => Advice::Stop,
        }
    }
}

/// How to reach a cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// ZooKeeper connect string.
    pub zk: String,
    /// Cluster name.
    pub cluster: String,
    /// Directory with `ca.pem`, `client.pem`, `client.key`.
    pub certs: PathBuf,
    /// Requested ZooKeeper session timeout.
    pub session_timeout: Duration,
    /// How long to wait for a master to be published before giving up.
    pub master_wait: Duration,
    /// Added to a published master's session timeout: how long a master
    /// that does not answer is waited for (its znode outlives a crash by
    /// the session timeout; a successor then takes over).
    pub answer_margin: Duration,
    /// Largest reply accepted (a job's result comes in one frame).
    pub max_reply_bytes: usize,
    /// Reach ZooKeeper over its TLS port with this client's certificate
    /// (`zk` then names the servers' TLS ports).
    pub zk_tls: bool,
}

impl ClientConfig {
    /// Defaults for a cluster at `zk` with certificates in `certs`.
    pub fn new(
        zk: impl Into<String>,
        cluster: impl Into<String>,
        certs: impl Into<PathBuf>,
    ) -> Self {
        ClientConfig {
            zk: zk.into(),
            cluster: cluster.into(),
            certs: certs.into(),
            session_timeout: Duration::from_secs(10),
            master_wait: Duration::from_secs(60),
            answer_margin: Duration::from_secs(3),
            max_reply_bytes: DEFAULT_MAX_FRAME * 16,
            zk_tls: false,
        }
    }

    /// The cluster the environment names, as the command line reads it:
    /// `RINGLEADER_ZK` (default `127.0.0.1:2181`), `RINGLEADER_CLUSTER`
    /// (`default`), `RINGLEADER_CERTS` (`certs`) and `RINGLEADER_ZK_TLS`
    /// (`true` or `1` for ZooKeeper's TLS port), with the defaults of
    /// [`ClientConfig::new`] for the rest. `local --linger-secs` prints
    /// these variables for the cluster it runs.
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        let mut cfg = ClientConfig::new(
            var("RINGLEADER_ZK", "127.0.0.1:2181"),
            var("RINGLEADER_CLUSTER", "default"),
            var("RINGLEADER_CERTS", "certs"),
        );
        cfg.zk_tls = matches!(
            var("RINGLEADER_ZK_TLS", "false")
                .to_ascii_lowercase()
                .as_str(),
            "true" | "1" | "yes" | "on"
        );
        cfg
    }
}

struct Inner {
    /// The ZooKeeper session now (a new one replaces it when it ends).
    zk: std::sync::Mutex<Session>,
    /// What new sessions present over ZooKeeper's TLS port.
    zk_tls: Option<crate::coord::ZkTls>,
    cfg: ClientConfig,
    endpoint: transport::Endpoint,
    conn: Mutex<Option<(u64, transport::Connection)>>,
    /// QUIC connections made to masters so far.
    dialled: std::sync::atomic::AtomicU64,
    /// The newest protocol version of the master of the cached
    /// connection, as `/master` published it (0: it said none).
    master_newest: std::sync::atomic::AtomicU32,
    /// Job types whose shape the master was asked about.
    checked: std::sync::Mutex<std::collections::HashSet<&'static str>>,
    /// Each job type's [`crate::registry::shape_id`] in this binary,
    /// traced once (tracing takes a few passes over the types).
    shapes: std::sync::Mutex<std::collections::HashMap<&'static str, Option<u64>>>,
    /// Submission streams that handles may keep open for their result
    /// ([`HELD_STREAMS`]).
    held: Arc<tokio::sync::Semaphore>,
}

/// Longest a handle's `result()` waits for the master to receive the
/// `Fetched` of a result pushed to it (a master gone meanwhile leaves the
/// job to be fetched again).
const FETCHED_WAIT: Duration = Duration::from_secs(1);

/// Most submission streams a client's handles keep open, each for its
/// job's result to be pushed on (a master serves a connection's 1,024
/// streams at once: the rest stay free for requests). A handle submitted
/// beyond it asks for its result as a handle of [`Client::job`] does.
pub const HELD_STREAMS: usize = 256;

/// See the module doc. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Options of one submission.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Job id; a random UUID if `None`.
    pub job_id: Option<String>,
    /// Tasks per shard; the job's own if `None`, and if the job sets none
    /// the master cuts it so that every slot gets work.
    pub shard_size: Option<u32>,
    /// Attempts per task (default 3).
    pub max_attempts: Option<u32>,
    /// A shard running longer than this gets a copy on another worker.
    pub shard_timeout: Option<Duration>,
    /// Its outputs will be streamed ([`JobHandle::stream`]): they are kept
    /// until the job is collected, so that a stream can always catch up.
    pub stream: bool,
    /// Higher runs first: 0 (the default) to
    /// [`crate::core::MAX_PRIORITY`]. A higher job's shards go
    /// before every lower one that has not started (a level that waits
    /// still gets every tenth shard placed); the master refuses a
    /// priority past the highest ([`ClientError::Refused`]).
    pub priority: u8,
    /// Its fairness key (default: the submitter's principal,
    /// `client:<name>`): within a priority, keys with shards waiting get
    /// them in proportion to their weights ([`Client::set_fairness`]), and
    /// a key's jobs take turns. A key that names a principal may be taken
    /// only by that principal, an admin or a node.
    pub fairness_key: Option<String>,
    /// A delayed job: acknowledged and durable at once, none of its tasks
    /// started before this time, as the serving master's wall clock
    /// judges it (a time past starts it at once). Cancel works while it
    /// waits. Needs the cluster's feature level
    /// [`crate::core::features::SCHEDULING`] (a new cluster's; an older
    /// one's after `features upgrade`).
    pub not_before: Option<std::time::SystemTime>,
    /// The limits it is under, besides its type's (`Job::limits`): a
    /// shard of it starts only while each admits one more run
    /// ([`Client::set_limit`]). A limit not set holds nothing back. Needs
    /// the cluster's feature level [`crate::core::features::SCHEDULING`].
    pub under: Vec<String>,
}

/// Milliseconds since the Unix epoch (0 before it).
fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The error of an `Error` reply to a request of protocol 7 on: a master
/// of a release before it says `Unsupported`, and the message says which
/// feature it lacks.
fn older_master(kind: ErrorKind, message: String, what: &str) -> ClientError {
    match kind {
        ErrorKind::Unsupported => ClientError::Refused {
            kind: Refusal::Unsupported,
            message: format!(
                "the serving master is of a release before {what} ({message}): upgrade it \
                 (see \"Upgrading\" in the README)"
            ),
        },
        kind => ClientError::from_frame(kind, message, None),
    }
}

/// A finished job's figures and failed tasks.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Final progress.
    pub progress: JobProgress,
    /// Tasks that failed every attempt (bounded).
    pub failures: Vec<TaskFailure>,
}

/// A submitted job.
pub struct JobHandle<J> {
    client: Client,
    id: String,
    existing: bool,
    /// The submission's stream, on which the master pushes the job's
    /// result as it ends (`submit`'s handles, up to [`HELD_STREAMS`]).
    pushed: std::sync::Mutex<Option<Pushed>>,
    _job: PhantomData<fn() -> J>,
}

/// A submission's stream kept for its job's result.
struct Pushed {
    stream: FramedStream,
    _held: tokio::sync::OwnedSemaphorePermit,
}

/// What a submission asks to hear of its job on its own stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// Nothing: the stream ends with the answer.
    Not,
    /// Its result, counted as its fetch (`run`).
    Fetch,
    /// Its result if the master has it at hand, fetched only once read
    /// (`submit`'s handle).
    Unmarked,
}

const CHUNK_BYTES: usize = 4 << 20;

/// What `identity` presents to ZooKeeper over TLS.
/// What `identity` (read from `dir`) presents to ZooKeeper's TLS port.
pub(crate) fn zk_tls(identity: &tls::Identity, dir: &std::path::Path) -> crate::coord::ZkTls {
    let (cert, key, ca) = identity.pem();
    crate::coord::ZkTls {
        ca,
        cert,
        key,
        origin: dir.display().to_string(),
    }
}

impl Client {
    /// Connects to ZooKeeper and prepares a QUIC endpoint.
    pub async fn connect(cfg: ClientConfig) -> Result<Self, ClientError> {
        let identity = tls::Identity::client(&cfg.certs)?;
        // Any address, never loopback: the master is usually on another host.
        let endpoint = transport::endpoint_any(0, &identity, false, transport::LINK_TIMEOUT)?;
        let tls = cfg.zk_tls.then(|| zk_tls(&identity, &cfg.certs));
        let layout = Layout::new(&cfg.cluster);
        let zk = Session::connect_with(&cfg.zk, cfg.session_timeout, layout, tls.as_ref()).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                zk: std::sync::Mutex::new(zk),
                zk_tls: tls,
                cfg,
                endpoint,
                conn: Mutex::new(None),
                dialled: std::sync::atomic::AtomicU64::new(0),
                master_newest: std::sync::atomic::AtomicU32::new(0),
                checked: std::sync::Mutex::new(std::collections::HashSet::new()),
                shapes: std::sync::Mutex::new(std::collections::HashMap::new()),
                held: Arc::new(tokio::sync::Semaphore::new(HELD_STREAMS)),
            }),
        })
    }

    /// Job `J`'s types in this binary ([`crate::registry::shape_id`]),
    /// traced on its first submission.
    fn shape_id<J: Job>(&self) -> Option<u64> {
        let traced = || crate::registry::shape::<J>().map(|s| crate::registry::shape_id(&s));
        match self.inner.shapes.lock() {
            Ok(mut shapes) => *shapes.entry(J::NAME).or_insert_with(traced),
            Err(_) => traced(),
        }
    }

    /// Refuses `what` (a delayed job, a job under limits, a limit) before
    /// it is sent to a master of a release before them, which would start
    /// a delayed job at once and ignore limits. (A master of this release
    /// refuses them below the feature level that holds such masters out of
    /// the cluster.)
    /// The master's version is known from its connection (made now if
    /// there is none): no ZooKeeper read per submission.
    async fn serves_scheduling(&self, what: &str) -> Result<(), ClientError> {
        let (epoch, _) = self.connection(None).await?;
        let newest = self
            .inner
            .master_newest
            .load(std::sync::atomic::Ordering::Relaxed);
        if newest < crate::wire::SCHEDULING {
            return Err(ClientError::Refused {
                kind: Refusal::Unsupported,
                message: format!(
                    "the serving master (epoch {epoch}) is of a release before {what}: upgrade \
                     the cluster (see \"Upgrading\" in the README)"
                ),
            });
        }
        Ok(())
    }

    /// The published master, preferring one newer than `bad_epoch` (an
    /// epoch found unusable); [`ClientError::NoMaster`] when none is
    /// published within `master_wait`.
    async fn find_master(&self, bad_epoch: Option<u64>) -> Result<MasterInfo, ClientError> {
        let deadline = tokio::time::Instant::now() + self.inner.cfg.master_wait;
        let mut renewed = false;
        loop {
            match self.find_master_once(bad_epoch).await {
                // The session ended while it was read: once more on a new one.
                Err(ClientError::Coord(e)) if e.is_session_end() && !renewed => renewed = true,
                // ZooKeeper stopped answering on this connection (the
                // session goes on, and reconnects): read again, within the
                // wait for a master.
                Err(ClientError::Coord(e))
                    if e.is_connection_lost() && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(error = %e, "reading /master again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => return r,
            }
        }
    }

    async fn find_master_once(&self, bad_epoch: Option<u64>) -> Result<MasterInfo, ClientError> {
        let wait = self.inner.cfg.master_wait;
        let zk = &self.live_session().await?;
        // Prefer a newer master; fall back to the same one after a short wait
        // (the failure may have been the link, not the master).
        let master = match zk
            .wait_for_master(bad_epoch, Duration::from_millis(500))
            .await?
        {
            Some(m) => Some(m),
            None => {
                if zk.read_master().await?.is_none() {
                    // Say so: a failover leaves no master for seconds.
                    tracing::info!(
                        "no master is serving cluster {} now (a failover, or no candidate \
                         running); waiting up to {} s for one",
                        self.inner.cfg.cluster,
                        wait.as_secs()
                    );
                }
                zk.wait_for_master(None, wait).await?
            }
        };
        let master = master.ok_or_else(|| ClientError::NoMaster {
            cluster: self.inner.cfg.cluster.clone(),
            secs: wait.as_secs(),
        })?;
        // A master of a release with no protocol version in common: say
        // so before any request it would refuse.
        if let Some([oldest, newest]) = master.protocol {
            if let Err(why) = crate::wire::negotiate(oldest, newest) {
                let build = match master.build.as_str() {
                    "" => String::new(),
                    b => format!(" ({b})"),
                };
                let why = why.by("this client");
                return Err(ClientError::Refused {
                    kind: Refusal::Unsupported,
                    message: format!(
                        "the master {}{build} cannot serve this client: {why}",
                        master.node_id
                    ),
                });
            }
        }
        Ok(master)
    }

    /// A connection to the serving master. What is known at once (no
    /// route, a TLS failure, a refusal) is returned at once. A master that
    /// does not answer is waited for up to its session timeout plus
    /// [`ClientConfig::answer_margin`], following any successor published
    /// meanwhile; then [`ClientError::Unreachable`] names the address.
    async fn connection(
        &self,
        bad_epoch: Option<u64>,
    ) -> Result<(u64, transport::Connection), ClientError> {
        let mut guard = self.inner.conn.lock().await;
        if let Some((epoch, conn)) = guard.as_ref() {
            if Some(*epoch) != bad_epoch && !conn.is_closed() {
                return Ok((*epoch, conn.clone()));
            }
        }
        *guard = None;
        let mut master = self.find_master(bad_epoch).await?;
        let zk = &self.session();
        let mut silent_since: Option<(tokio::time::Instant, Duration)> = None;
        loop {
            let (addr, node) = (master.addr.clone(), master.node_id.clone());
            let dial = async {
                let dial = transport::dial_node(&self.inner.endpoint, &addr, &node);
                // Once the master is known to be silent, nothing may stretch
                // the wait past its bound (a handshake stalls up to 3 PTOs).
                match silent_since {
                    Some((since, wait)) => {
                        let until = since + wait + Duration::from_secs(1);
                        match tokio::time::timeout_at(until, dial).await {
                            Ok(r) => r,
                            Err(_) => Err(TransportError::NoAnswer {
                                addr: addr.clone(),
                                reason: "the handshake did not end".into(),
                            }),
                        }
                    }
                    None => dial.await,
                }
            };
            // A successor published while the dial waits on a dead master
            // (its address stays published until its session expires) is
            // dialled at once, not after the handshake's timeout.
            let epoch = master.epoch;
            let successor = async {
                // Not for a dial that ends at once (the usual case): no
                // ZooKeeper read is added to a live master's connection.
                tokio::time::sleep(SUCCESSOR_WATCH_AFTER).await;
                loop {
                    match zk
                        .wait_for_master(Some(epoch), Duration::from_secs(60))
                        .await
                    {
                        Ok(Some(m)) if m.epoch != epoch => return m,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        // ZooKeeper's trouble: the dial decides.
                        Err(_) => std::future::pending::<()>().await,
                    }
                }
            };
            let dialled = tokio::select! {
                r = dial => r,
                next = successor => {
                    tracing::debug!(old = %master.node_id, new = %next.node_id, "a successor was published while the old master was dialled");
                    master = next;
                    silent_since = None;
                    continue;
                }
            };
            match dialled {
                Ok(conn) => {
                    if silent_since.is_some() {
                        tracing::info!(master = %master.node_id, addr = %master.addr, "the master answers");
                    }
                    self.inner
                        .dialled
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let newest = master.protocol.map_or(0, |[_, newest]| newest);
                    self.inner
                        .master_newest
                        .store(newest, std::sync::atomic::Ordering::Relaxed);
                    *guard = Some((master.epoch, conn.clone()));
                    return Ok((master.epoch, conn));
                }
                Err(TransportError::NoAnswer { reason, .. }) => {
                    let (since, wait) = *silent_since.get_or_insert_with(|| {
                        let wait = answer_wait(&master, self.inner.cfg.answer_margin);
                        tracing::warn!(
                            "the master {} at {} does not answer ({reason}); waiting up to {:.1} s \
                             (its ZooKeeper session timeout plus a margin) for it or a successor",
                            master.node_id,
                            master.addr,
                            wait.as_secs_f64()
                        );
                        (tokio::time::Instant::now(), wait)
                    });
                    if since.elapsed() >= wait {
                        return Err(ClientError::Unreachable {
                            addr: master.addr,
                            node: master.node_id,
                            epoch: master.epoch,
                            secs: since.elapsed().as_secs_f64(),
                        });
                    }
                    // A successor may be published meanwhile.
                    let next = zk
                        .wait_for_master(Some(master.epoch), Duration::from_secs(1))
                        .await?;
                    let next = match next {
                        Some(m) => Some(m),
                        None => zk.read_master().await?,
                    };
                    match next {
                        Some(m) if m.epoch != master.epoch => {
                            master = m;
                            silent_since = None;
                        }
                        Some(_) => {}
                        // Its znode went with its session: a successor, if
                        // any candidate runs, follows within the same bound.
                        None => {
                            let left = (since + wait)
                                .saturating_duration_since(tokio::time::Instant::now())
                                .max(Duration::from_secs(2));
                            match zk.wait_for_master(None, left).await? {
                                Some(m) => {
                                    master = m;
                                    silent_since = None;
                                }
                                None => {
                                    return Err(ClientError::Unreachable {
                                        addr: master.addr,
                                        node: master.node_id,
                                        epoch: master.epoch,
                                        secs: since.elapsed().as_secs_f64(),
                                    })
                                }
                            }
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends a request, following failovers, and returns the master's reply.
    async fn request(&self, frames: &[Request]) -> Result<Reply, ClientError> {
        self.request_tracked(frames, &mut false).await
    }

    /// [`request`](Self::request) that sets `sent` once any of the
    /// request may have reached a master.
    async fn request_tracked(
        &self,
        frames: &[Request],
        sent: &mut bool,
    ) -> Result<Reply, ClientError> {
        Ok(self.request_stream(frames, sent).await?.0)
    }

    /// [`request_tracked`](Self::request_tracked), with the stream the
    /// reply came on (a master may go on writing on it).
    async fn request_stream(
        &self,
        frames: &[Request],
        sent: &mut bool,
    ) -> Result<(Reply, FramedStream), ClientError> {
        let deadline = tokio::time::Instant::now() + self.inner.cfg.master_wait;
        let mut bad = None;
        let mut breaks = Breaks::default();
        loop {
            let (epoch, conn) = self.connection(bad).await?;
            *sent = true;
            let reply = async {
                let mut s = FramedStream::open(&conn, self.inner.cfg.max_reply_bytes).await?;
                let reply = s.request(frames).await?;
                Ok::<_, TransportError>((reply, s))
            };
            let (err, how) = match reply.await {
                Ok((Reply::NotMaster, _)) => (
                    format!("the node of epoch {epoch} is not serving"),
                    Failed::Refused,
                ),
                Ok((f, s)) => return Ok((f, s)),
                Err(TransportError::Wire(WireError::TooLarge { len, max })) => {
                    return Err(ClientError::ReplyTooLarge { len, max })
                }
                Err(e) => {
                    // This host's certificate refused (revoked, another
                    // CA): known now, and the same at every retry.
                    let addr = conn.remote_address().to_string();
                    if let Some(refusal) = transport::refused(&conn, &addr) {
                        return Err(refusal.into());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(e.into());
                    }
                    (e.to_string(), Failed::Broke)
                }
            };
            bad = breaks.after(epoch, how);
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::NoMaster {
                    cluster: self.inner.cfg.cluster.clone(),
                    secs: self.inner.cfg.master_wait.as_secs(),
                });
            }
            tracing::debug!(error = %err, "request failed; retrying with the current master");
            pause_before_retry(bad).await;
        }
    }

    /// Submits encoded tasks of job `job_name`; returns `(job id, existed already)`.
    /// Their types are not compared with the master's
    /// ([`Client::submit_encoded_typed`] compares them).
    pub async fn submit_encoded(
        &self,
        job_name: &str,
        tasks: Vec<ByteBuf>,
        options: JobOptions,
        job_id: Option<String>,
    ) -> Result<(String, bool), ClientError> {
        self.submit_encoded_typed(job_name, None, tasks, options, job_id)
            .await
    }

    /// [`Client::submit_encoded`] of tasks whose types are `shape`
    /// ([`crate::registry::shape_id`] of the job as this binary defines
    /// it): a master whose own types differ refuses the submission.
    pub async fn submit_encoded_typed(
        &self,
        job_name: &str,
        shape: Option<u64>,
        tasks: Vec<ByteBuf>,
        options: JobOptions,
        job_id: Option<String>,
    ) -> Result<(String, bool), ClientError> {
        let job = Submitting {
            name: job_name,
            shape,
            tasks,
            options,
            job_id,
        };
        let (id, existing, _) = self.submit_frames(job, Follow::Not).await?;
        Ok((id, existing))
    }

    /// Submits, and with `watch` asks to watch the job's end on the same
    /// stream (`WatchJob` behind the tasks; a master that does not ends
    /// the stream after its answer). Returns the job id, whether it
    /// existed, and the stream if it may carry the watch.
    async fn submit_frames(
        &self,
        job: Submitting<'_>,
        follow: Follow,
    ) -> Result<(String, bool, Option<FramedStream>), ClientError> {
        let Submitting {
            name: job_name,
            shape,
            tasks,
            options,
            job_id,
        } = job;
        if options.not_before_ms.is_some() || !options.under.is_empty() {
            self.serves_scheduling("delayed jobs and limits").await?;
        }
        let job_id = job_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let header = SubmitHeader {
            job_id: job_id.clone(),
            job_name: job_name.to_string(),
            options,
            task_count: tasks.len() as u64,
            shape,
        };
        let mut frames = vec![Request::Submit(header)];
        let mut chunk = Vec::new();
        let mut size = 0;
        for t in tasks {
            size += t.len() + 8;
            chunk.push(t);
            if size > CHUNK_BYTES {
                frames.push(Request::SubmitChunk {
                    tasks: std::mem::take(&mut chunk),
                });
                size = 0;
            }
        }
        if !chunk.is_empty() {
            frames.push(Request::SubmitChunk { tasks: chunk });
        }
        if follow != Follow::Not {
            frames.push(Request::WatchJob {
                job_id: job_id.clone(),
                fetch: follow == Follow::Fetch,
                unmarked: follow == Follow::Unmarked,
            });
        }
        let mut sent = false;
        match self.request_stream(&frames, &mut sent).await {
            Ok((Reply::Accepted { job_id, existing }, s)) => {
                Ok((job_id, existing, (follow != Follow::Not).then_some(s)))
            }
            Ok((Reply::Error { kind, message }, _)) => {
                Err(ClientError::from_frame(kind, message, Some(&job_id)))
            }
            Ok((other, _)) => Err(ClientError::Protocol(other.name().into())),
            // Nothing left this host, or the master's answer was definite.
            Err(e) if !sent || matches!(e, ClientError::ReplyTooLarge { .. }) => Err(e),
            Err(e) => Err(ClientError::OutcomeUnknown {
                job_id,
                reason: e.to_string(),
            }),
        }
    }

    /// Submits a job of tasks and returns its handle once the job is durable.
    pub async fn submit<J: Job>(
        &self,
        tasks: Vec<J::Task>,
        options: SubmitOptions,
    ) -> Result<JobHandle<J>, ClientError> {
        // Its result comes on the submission's stream, if the client may
        // hold one more open.
        let held = self.inner.held.clone().try_acquire_owned().ok();
        let follow = match held {
            Some(_) => Follow::Unmarked,
            None => Follow::Not,
        };
        let (handle, stream) = self.submit_watching::<J>(tasks, options, follow).await?;
        if let (Some(stream), Some(held)) = (stream, held) {
            if let Ok(mut pushed) = handle.pushed.lock() {
                *pushed = Some(Pushed {
                    stream,
                    _held: held,
                });
            }
        }
        Ok(handle)
    }

    /// Submits a job and waits for its result: what
    /// `submit(..).await?.result()` gives, with the submission and the
    /// job's end on one stream (a work queue's job of one task costs the
    /// master one stream, not two, and the client one round trip less).
    /// A stream that ends before the job does (a failover, a master too
    /// old to watch on it) is followed by a watch, as
    /// [`JobHandle::result`] does.
    pub async fn run<J: Job>(
        &self,
        tasks: Vec<J::Task>,
        options: SubmitOptions,
    ) -> Result<(J::Result, JobReport), ClientError> {
        let (handle, stream) = self
            .submit_watching::<J>(tasks, options, Follow::Fetch)
            .await?;
        let watched = match stream {
            Some(mut s) => match read_watch(&mut s, &Default::default(), &mut |_| {}).await {
                Ok(Some(w)) => Some(w),
                // Refused, or ended early: watch again, wherever the
                // master is.
                Ok(None) | Err(_) => None,
            },
            None => None,
        };
        let watched = match watched {
            Some(w) => w,
            None => self.watch(&handle.id, true, |_| {}).await?,
        };
        handle.outcome(watched).await
    }

    async fn submit_watching<J: Job>(
        &self,
        tasks: Vec<J::Task>,
        options: SubmitOptions,
        follow: Follow,
    ) -> Result<(JobHandle<J>, Option<FramedStream>), ClientError> {
        let encoded = tasks
            .iter()
            .map(|t| encode("task", t).map(ByteBuf::from))
            .collect::<Result<Vec<_>, _>>()?;
        let opts = JobOptions {
            // 0: the master chooses (see `Job::default_shard_size`).
            shard_size: options
                .shard_size
                .or_else(J::default_shard_size)
                .unwrap_or(0),
            max_attempts: options.max_attempts.unwrap_or(3).max(1),
            shard_timeout_ms: options.shard_timeout.map(|t| t.as_millis() as u64),
            stream: options.stream,
            priority: options.priority,
            fairness_key: options.fairness_key.clone(),
            not_before_ms: options.not_before.map(unix_ms),
            under: options.under.clone(),
        };
        // The first submission of each job type checks that the master
        // defines it as this binary does (one round trip per type).
        let first = self
            .inner
            .checked
            .lock()
            .map(|mut c| c.insert(J::NAME))
            .unwrap_or(true);
        if first {
            let shape = crate::registry::shape::<J>();
            if let Err(e) = self
                .plan(
                    J::NAME,
                    encoded.len() as u64,
                    opts.shard_size,
                    shape.as_deref(),
                )
                .await
            {
                if let Ok(mut c) = self.inner.checked.lock() {
                    c.remove(J::NAME);
                }
                return Err(e);
            }
        }
        let job = Submitting {
            name: J::NAME,
            shape: self.shape_id::<J>(),
            tasks: encoded,
            options: opts,
            job_id: options.job_id,
        };
        let (id, existing, stream) = self.submit_frames(job, follow).await?;
        let handle = JobHandle {
            client: self.clone(),
            id,
            existing,
            pushed: std::sync::Mutex::new(None),
            _job: PhantomData,
        };
        Ok((handle, stream))
    }

    /// A handle on an existing job.
    pub fn job<J: Job>(&self, id: impl Into<String>) -> JobHandle<J> {
        JobHandle {
            client: self.clone(),
            id: id.into(),
            existing: true,
            pushed: std::sync::Mutex::new(None),
            _job: PhantomData,
        }
    }

    /// The cluster's status.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        match self.request(&[Request::GetStatus]).await? {
            Reply::Status(s) => Ok(s),
            Reply::Error { kind, message } => Err(ClientError::from_frame(kind, message, None)),
            other => Err(ClientError::Protocol(other.name().into())),
        }
    }

    /// How the master would cut a job of `task_count` tasks of
    /// `job_name` now (`shard_size` 0: its choice) and which workers run
    /// it; `None` from a master too old to say. A job type the cluster
    /// does not run is [`ClientError::Refused`].
    /// `shape` is the job's [`crate::registry::shape`] in this binary: a
    /// master whose differs refuses.
    pub async fn plan(
        &self,
        job_name: &str,
        task_count: u64,
        shard_size: u32,
        shape: Option<&str>,
    ) -> Result<Option<crate::wire::JobPlanInfo>, ClientError> {
        let ask = Request::PlanJob {
            job_name: job_name.to_string(),
            task_count,
            shard_size,
            shape: shape.map(str::to_string),
        };
        match self.request(&[ask]).await? {
            Reply::Planned(p) => Ok(Some(p)),
            Reply::Error {
                kind: ErrorKind::Unsupported,
                ..
            } => Ok(None),
            Reply::Error { kind, message } => Err(ClientError::from_frame(kind, message, None)),
            other => Err(ClientError::Protocol(other.name().into())),
        }
    }

    /// The jobs the cluster holds that `query` matches (a client sees only
    /// its own), newest first, with how many match and counts by state.
    /// `JobQuery::default()` asks for every job, up to
    /// [`crate::wire::MAX_LISTED`].
    pub async fn jobs(
        &self,
        query: crate::wire::JobQuery,
    ) -> Result<crate::wire::JobList, ClientError> {
        match self.request(&[Request::ListJobs(query)]).await? {
            Reply::Jobs(j) => Ok(j),
            Reply::Error { kind, message } => Err(ClientError::from_frame(kind, message, None)),
            other => Err(ClientError::Protocol(other.name().into())),
        }
    }

    /// Sets the weight of fairness `key` (1 to [`crate::core::MAX_WEIGHT`];
    /// 1, the default, clears it): within a priority, keys with shards
    /// waiting get them in proportion to their weights. Stored with the
    /// cluster (a new master keeps it); returns once durable. An admin's
    /// or a node's certificate is needed ([`Refusal::Forbidden`]).
    pub async fn set_fairness(&self, key: &str, weight: u32) -> Result<(), ClientError> {
        let ask = Request::SetFairness {
            key: key.to_string(),
            weight,
        };
        match self.request(&[ask]).await? {
            Reply::Ok => Ok(()),
            Reply::Error { kind, message } => Err(older_master(kind, message, "fairness weights")),
            other => Err(ClientError::Protocol(other.name().into())),
        }
    }

    /// The fairness keys with a weight set or shards waiting, with their
    /// weights and their shards waiting.
    pub async fn fairness(&self) -> Result<crate::wire::FairnessList, ClientError> {
        match self.request(&[Request::ListFairness]).await? {
            Reply::Fairness(list) => Ok(list),
            Reply::Error { kind, message } => Err(older_master(kind, message, "fairness weights")),
            other => Err(ClientError::Protocol(other.name().into())),
        }
    }

    /// Sets limit `key` (see [`crate::wire::LimitSpec`]): the runs of
    /// the jobs under it (`SubmitOptions::under`, or their type's
    /// `Job::limits`) held at once, started per period, or both, across
    /// the cluster. Stored with the cluster (a new master keeps it);
    /// returns once durable. An admin's or a node's certificate is needed
    /// ([`Refusal::Forbidden`]).
    pub async fn set_limit(
        &self,
        key: &str,
        limit: crate::wire::LimitSpec,
    ) -> Result<(), ClientError> {
        self.put_limit(key, Some(limit)).await
    }

    /// Deletes limit `key`: the jobs it held back go on. Deleting a limit
    /// that is not set is not an error.
    pub async fn delete_limit(&self, key: &str) -> Result<(), ClientError> {
        self.put_limit(key, None).await
    }

    async fn put_limit(
        &self,
        key: &str,
        limit: Option<crate::wire::LimitSpec>,
    ) -> Result<(), ClientError> {
        if let Some(Err(why)) = limit.map(|l| l.check()) {
            return Err(ClientError::Refused {
                kind: Refusal::Invalid,
                message: why,
            });
        }
        self.serves_scheduling("limits").await?;
        let ask = Request::SetLimit {
            key: key.to_string(),
            limit,
        };
        match self.request(&[ask]).await? {
            Reply::Ok => Ok(()),
            Reply::Error { kind, message } => Err(older_master(kind, message, "limits")),
            other => Err(ClientError::Protocol(other.name().into())),
        }
    }

    /// The limits set or named by a job, with their use: runs held,
    /// tokens left, jobs and shards waiting on each.
    pub async fn limits(&self) -> Result<crate::wire::LimitList, ClientError> {
        match self.request(&[Request::ListLimits]).await? {
            Reply::Limits(list) => Ok(list),
            Reply::Error { kind, message } => Err(older_master(kind, message, "limits")),
            other => Err(ClientError::Protocol(other.name().into())),
        }
    }

    /// A job's progress.
    pub async fn progress(&self, id: &str) -> Result<JobProgress, ClientError> {
        match self
            .request(&[Request::GetJob {
                job_id: id.to_string(),
            }])
            .await?
        {
            Reply::Job(p) => Ok(p),
            Reply::Error { kind, message } => Err(ClientError::from_frame(kind, message, None)),
            other => Err(ClientError::Protocol(other.name().into())),
        }
    }

    /// Waits until a job is done or cancelled, calling `on_progress` on each
    /// change. The master pushes the changes (see [`Request::WatchJob`]); a
    /// master too old for that is polled.
    pub async fn wait(
        &self,
        id: &str,
        on_progress: impl FnMut(&JobProgress),
    ) -> Result<JobProgress, ClientError> {
        match self.watch(id, false, on_progress).await? {
            Watched::Ended(p) => Ok(p),
            Watched::Outcome(o) => Ok(o.progress),
        }
    }

    /// Watches a job until it ends, following the master across failovers:
    /// its final progress, or with `fetch` its outcome (which counts as
    /// its fetch).
    async fn watch(
        &self,
        id: &str,
        fetch: bool,
        mut on_progress: impl FnMut(&JobProgress),
    ) -> Result<Watched, ClientError> {
        let mut last: Option<JobProgress> = None;
        let mut seen = |p: &JobProgress, last: &mut Option<JobProgress>| {
            if last.as_ref() != Some(p) {
                on_progress(p);
                *last = Some(p.clone());
            }
        };
        let mut bad = None;
        // Since when watches have ended early with nothing heard: a master
        // that answers clears it, so that each failover gets the full wait.
        let mut failing_since: Option<tokio::time::Instant> = None;
        let mut breaks = Breaks::default();
        loop {
            let (epoch, conn) = self.connection(bad).await?;
            // Atomic, not a Cell: the future must stay `Send` (callers spawn it).
            let heard = std::sync::atomic::AtomicBool::new(false);
            let ended = async {
                let mut s = FramedStream::open(&conn, self.inner.cfg.max_reply_bytes).await?;
                s.send(&Request::WatchJob {
                    job_id: id.to_string(),
                    fetch,
                    unmarked: false,
                })
                .await?;
                read_watch(&mut s, &heard, &mut |p| seen(p, &mut last)).await
            };
            let (err, how) = match ended.await {
                Ok(Some(w)) => return Ok(w),
                Ok(None) => {
                    failing_since = None;
                    continue;
                }
                Err(WatchError::Reply(Reply::Error { kind, message }))
                    if kind != ErrorKind::Unsupported =>
                {
                    return Err(ClientError::from_frame(kind, message, None))
                }
                Err(WatchError::Reply(Reply::Error { .. })) => {
                    // A master from before `WatchJob`: poll it.
                    let p = self.poll_until_ended(id, |p| seen(p, &mut last)).await?;
                    return Ok(Watched::Ended(p));
                }
                Err(WatchError::Reply(Reply::NotMaster)) => (
                    format!("the node of epoch {epoch} is not serving"),
                    Failed::Refused,
                ),
                Err(WatchError::Reply(other)) => {
                    return Err(ClientError::Protocol(other.name().into()))
                }
                Err(WatchError::Transport(TransportError::Wire(WireError::TooLarge {
                    len,
                    max,
                }))) => return Err(ClientError::ReplyTooLarge { len, max }),
                Err(WatchError::Transport(e)) => (e.to_string(), Failed::Broke),
            };
            // The stream ended before the job: the master went, or the link.
            if heard.load(std::sync::atomic::Ordering::Relaxed) {
                failing_since = None;
                breaks.answered();
            }
            let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= self.inner.cfg.master_wait {
                return Err(ClientError::NoMaster {
                    cluster: self.inner.cfg.cluster.clone(),
                    secs: self.inner.cfg.master_wait.as_secs(),
                });
            }
            bad = breaks.after(epoch, how);
            tracing::debug!(error = %err, "watch ended early; watching again at the current master");
            pause_before_retry(bad).await;
        }
    }

    /// Polls a job's progress until it ends (for masters that cannot push).
    async fn poll_until_ended(
        &self,
        id: &str,
        mut on_progress: impl FnMut(&JobProgress),
    ) -> Result<JobProgress, ClientError> {
        loop {
            let p = self.progress(id).await?;
            on_progress(&p);
            if p.state.is_final() {
                return Ok(p);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fetches a finished job's encoded result; starts its retention clock.
    pub async fn fetch_encoded(&self, id: &str) -> Result<(Vec<u8>, JobReport), ClientError> {
        match self
            .request(&[Request::FetchResult {
                job_id: id.to_string(),
            }])
            .await?
        {
            Reply::Outcome(o) => Ok((
                o.result.into_vec(),
                JobReport {
                    progress: o.progress,
                    failures: o.failures,
                },
            )),
            Reply::Error { kind, message } => Err(ClientError::from_frame(kind, message, None)),
            other => Err(ClientError::Protocol(other.name().into())),
        }
    }

    /// Cancels a job.
    pub async fn cancel(&self, id: &str) -> Result<(), ClientError> {
        match self
            .request(&[Request::Cancel {
                job_id: id.to_string(),
            }])
            .await?
        {
            Reply::Ok => Ok(()),
            Reply::Error { kind, message } => Err(ClientError::from_frame(kind, message, None)),
            other => Err(ClientError::Protocol(other.name().into())),
        }
    }

    /// The cluster's object store, as the serving master publishes it
    /// (opened with this process's credentials: `AWS_*` for S3).
    pub async fn cluster_store(&self) -> Result<crate::store::Store, ClientError> {
        let master = self.find_master(None).await?;
        if master.store.is_empty() {
            return Err(ClientError::Refused {
                kind: Refusal::Unsupported,
                message: "the master publishes no store URL (an older version); upgrade the nodes"
                    .into(),
            });
        }
        let store = crate::store::Store::open(&master.store)?;
        if store.is_local() {
            tracing::warn!(
                store = store.url(),
                "the cluster's store is a directory: files uploaded from this host land in \
                 this host's directory of that name, which workers read only if they share it"
            );
        }
        Ok(store)
    }

    /// How many QUIC connections this client has made to masters: one,
    /// and one more after each failover or lost connection (for tools and
    /// tests).
    pub fn connections_dialled(&self) -> u64 {
        self.inner
            .dialled
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The ZooKeeper session now (for tools and tests).
    pub fn session(&self) -> Session {
        self.inner
            .zk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The session, or a new one if it has ended (expired while this
    /// host was cut off or asleep): a client outlives its sessions, as a
    /// node does; it only reads `/master`, so nothing of the old one is
    /// lost with it.
    async fn live_session(&self) -> Result<Session, ClientError> {
        let zk = self.session();
        if !matches!(zk.connection(), crate::coord::Connection::Ended { .. }) {
            return Ok(zk);
        }
        tracing::info!("the client's ZooKeeper session ended; starting a new one");
        let cfg = &self.inner.cfg;
        let fresh = Session::connect_with(
            &cfg.zk,
            cfg.session_timeout,
            Layout::new(&cfg.cluster),
            self.inner.zk_tls.as_ref(),
        )
        .await?;
        *self
            .inner
            .zk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh.clone();
        Ok(fresh)
    }
}

impl<J: Job> JobHandle<J> {
    /// The job id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Whether the submission found the job already there.
    pub fn existed(&self) -> bool {
        self.existing
    }
    /// Current progress.
    pub async fn progress(&self) -> Result<JobProgress, ClientError> {
        self.client.progress(&self.id).await
    }
    /// Waits for the end of the job and returns its result and report, as
    /// soon as the job's end is durable (the master pushes it).
    pub async fn result(&self) -> Result<(J::Result, JobReport), ClientError> {
        let pushed = match self.pushed.lock() {
            Ok(mut p) => p.take(),
            Err(_) => None,
        };
        if let Some(mut p) = pushed {
            // What the master pushed on the submission's stream: the
            // result, if it had it at hand (then marked fetched by the
            // `Fetched` sent back), else the job's end (then fetched as a
            // handle without a stream does).
            let heard = Default::default();
            if let Ok(Some(watched)) = read_watch(&mut p.stream, &heard, &mut |_| {}).await {
                if let Watched::Outcome(_) = watched {
                    let fetched = Request::Fetched {
                        job_id: self.id.clone(),
                    };
                    if p.stream.send(&fetched).await.is_ok() {
                        p.stream.finish();
                        // Until the master's end has it (a round trip, not
                        // the mark's write): a program that returns or
                        // exits at once must not leave the job unfetched
                        // for good.
                        let _ = tokio::time::timeout(FETCHED_WAIT, p.stream.peer_gone()).await;
                    }
                }
                return self.outcome(watched).await;
            }
        }
        let watched = self.client.watch(&self.id, true, |_| {}).await?;
        self.outcome(watched).await
    }

    /// The result and report a watch that asked for the result ended with
    /// (fetched now if it ended without it).
    async fn outcome(&self, watched: Watched) -> Result<(J::Result, JobReport), ClientError> {
        let (bytes, report) = match watched {
            Watched::Outcome(o) => (
                o.result.into_vec(),
                JobReport {
                    progress: o.progress,
                    failures: o.failures,
                },
            ),
            Watched::Ended(_) => self.client.fetch_encoded(&self.id).await?,
        };
        let result = if bytes.is_empty() {
            J::Result::default()
        } else {
            decode("job result", &bytes)?
        };
        Ok((result, report))
    }
    /// Cancels the job.
    pub async fn cancel(&self) -> Result<(), ClientError> {
        self.client.cancel(&self.id).await
    }

    /// The job's committed outputs as they commit: each shard's partial
    /// result once, across failovers and reconnections (the stream holds
    /// the shards it has and asks the next master for the rest). For a
    /// bare task's job (`Collect<T>`) a partial is its tasks' outputs with
    /// their indexes. The job must have been submitted with
    /// [`SubmitOptions::stream`].
    pub fn stream(&self) -> PartialStream<J> {
        PartialStream {
            encoded: self.client.stream_encoded(&self.id),
            _job: PhantomData,
        }
    }
}

/// A job's committed outputs, from [`JobHandle::stream`].
pub struct PartialStream<J> {
    encoded: EncodedStream,
    _job: PhantomData<fn() -> J>,
}

impl<J: Job> PartialStream<J> {
    /// The next shard's partial result, or `None` once every committed
    /// output was given and the job ended ([`PartialStream::end`] then
    /// says how).
    pub async fn next(
        &mut self,
    ) -> Result<Option<(crate::core::ShardKey, J::Result)>, ClientError> {
        let Some((shard, output)) = self.encoded.next().await? else {
            return Ok(None);
        };
        let result = if output.is_empty() {
            J::Result::default()
        } else {
            decode("partial result", &output)?
        };
        Ok(Some((shard, result)))
    }

    /// How the job ended, once [`PartialStream::next`] gave `None`.
    pub fn end(&self) -> Option<&JobProgress> {
        self.encoded.end()
    }
}

impl Client {
    /// [`JobHandle::stream`] with the partial results left encoded.
    pub fn stream_encoded(&self, id: &str) -> EncodedStream {
        EncodedStream {
            client: self.clone(),
            id: id.to_string(),
            seen: std::collections::HashSet::new(),
            open: None,
            end: None,
            failing_since: None,
            breaks: Breaks::default(),
        }
    }
}

/// A job's committed outputs, encoded: see [`JobHandle::stream`].
pub struct EncodedStream {
    client: Client,
    id: String,
    seen: std::collections::HashSet<crate::core::ShardKey>,
    /// The stream now open, with the epoch of its master.
    open: Option<(u64, FramedStream)>,
    end: Option<JobProgress>,
    /// Since when streams have ended early with nothing heard.
    failing_since: Option<tokio::time::Instant>,
    /// Streams broken in a row without an answer.
    breaks: Breaks,
}

impl EncodedStream {
    /// The next shard's encoded partial result, or `None` once every
    /// committed output was given and the job ended.
    pub async fn next(&mut self) -> Result<Option<(crate::core::ShardKey, ByteBuf)>, ClientError> {
        let mut bad = None;
        loop {
            if self.end.is_some() {
                return Ok(None);
            }
            let (epoch, mut s) = match self.open.take() {
                Some(open) => open,
                None => {
                    let (epoch, conn) = self.client.connection(bad).await?;
                    let opened = async {
                        let max = self.client.inner.cfg.max_reply_bytes;
                        let mut s = FramedStream::open(&conn, max).await?;
                        s.send(&Request::StreamJob {
                            job_id: self.id.clone(),
                            seen: crate::wire::key_runs(&self.seen),
                        })
                        .await?;
                        Ok::<_, TransportError>(s)
                    };
                    match opened.await {
                        Ok(s) => (epoch, s),
                        Err(e) => {
                            bad = self
                                .ended_early(epoch, &e.to_string(), Failed::Broke)
                                .await?;
                            continue;
                        }
                    }
                }
            };
            match s.recv().await {
                Ok(Reply::Partial { shard, output }) => {
                    self.failing_since = None;
                    self.breaks.answered();
                    self.open = Some((epoch, s));
                    if self.seen.insert(shard) {
                        return Ok(Some((shard, output)));
                    }
                }
                Ok(Reply::Job(p)) if p.state.is_final() => {
                    self.end = Some(p);
                    return Ok(None);
                }
                Ok(Reply::Error { kind, message }) => {
                    return Err(ClientError::from_frame(kind, message, None))
                }
                Ok(Reply::NotMaster) => {
                    let why = format!("the node of epoch {epoch} is not serving");
                    bad = self.ended_early(epoch, &why, Failed::Refused).await?;
                }
                Ok(other) => return Err(ClientError::Protocol(other.name().into())),
                Err(TransportError::Wire(WireError::TooLarge { len, max })) => {
                    return Err(ClientError::ReplyTooLarge { len, max })
                }
                Err(e) => {
                    bad = self
                        .ended_early(epoch, &e.to_string(), Failed::Broke)
                        .await?
                }
            }
        }
    }

    /// How the job ended, once [`EncodedStream::next`] gave `None`.
    pub fn end(&self) -> Option<&JobProgress> {
        self.end.as_ref()
    }

    /// A stream ended before the job (a failover, a lost link): it is
    /// opened again at the current master, within the client's wait.
    /// Returns the epoch the next stream avoids, if any.
    async fn ended_early(
        &mut self,
        epoch: u64,
        why: &str,
        how: Failed,
    ) -> Result<Option<u64>, ClientError> {
        let since = *self
            .failing_since
            .get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= self.client.inner.cfg.master_wait {
            return Err(ClientError::NoMaster {
                cluster: self.client.inner.cfg.cluster.clone(),
                secs: self.client.inner.cfg.master_wait.as_secs(),
            });
        }
        let bad = self.breaks.after(epoch, how);
        tracing::debug!(error = %why, "stream ended early; streaming again at the current master");
        pause_before_retry(bad).await;
        Ok(bad)
    }
}

/// How an exchange with a master failed.
#[derive(Clone, Copy)]
enum Failed {
    /// It answered that it does not serve.
    Refused,
    /// The exchange broke without an answer.
    Broke,
}

/// Exchanges with masters that broke in a row, to choose which master a
/// retry avoids. A master that says it does not serve is avoided (the
/// client waits briefly for a newer one), and so is one whose exchanges
/// broke twice in a row. The first break is not held against it: a
/// connection left idle while its runtime was not polled (a caller that
/// blocks between requests) times out with its master healthy, and the
/// retry dials it again at once. (A master that is gone fails that dial,
/// and the client then waits for it or a successor.)
#[derive(Default)]
struct Breaks(u32);

impl Breaks {
    /// A master answered: its next break is a first one again.
    fn answered(&mut self) {
        self.0 = 0;
    }

    /// The master of `epoch` failed an exchange: the epoch the retry
    /// avoids, if any.
    fn after(&mut self, epoch: u64, how: Failed) -> Option<u64> {
        self.0 = match how {
            Failed::Refused => 0,
            Failed::Broke => self.0 + 1,
        };
        (self.0 != 1).then_some(epoch)
    }
}

/// A retry that avoids a master waits a little first; one that redials
/// the same master goes at once.
async fn pause_before_retry(avoid: Option<u64>) {
    if avoid.is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How a watch ended.
enum Watched {
    /// The job's final progress.
    Ended(JobProgress),
    /// Its result, fetched.
    Outcome(JobOutcome),
}

/// Why a watch stream ended before the job.
enum WatchError {
    Transport(TransportError),
    /// A frame that is not part of a watch.
    Reply(Reply),
}

impl From<TransportError> for WatchError {
    fn from(e: TransportError) -> Self {
        WatchError::Transport(e)
    }
}

/// How long a watch may stay silent before it is opened again.
const WATCH_QUIET: Duration = Duration::from_secs(10);

/// Reads a watch's frames until the job's end (`None`: the watch was
/// quiet for [`WATCH_QUIET`], to be opened again), setting `heard` at
/// the first frame and calling `seen` on each progress.
async fn read_watch(
    s: &mut FramedStream,
    heard: &std::sync::atomic::AtomicBool,
    seen: &mut impl FnMut(&JobProgress),
) -> Result<Option<Watched>, WatchError> {
    loop {
        // A quiet watch is opened again: it costs one frame.
        let Ok(frame) = tokio::time::timeout(WATCH_QUIET, s.recv()).await else {
            return Ok(None);
        };
        let frame = frame?;
        heard.store(true, std::sync::atomic::Ordering::Relaxed);
        match frame {
            Reply::Job(p) if p.state.is_final() => {
                seen(&p);
                return Ok(Some(Watched::Ended(p)));
            }
            Reply::Job(p) => seen(&p),
            Reply::Outcome(o) => {
                seen(&o.progress);
                return Ok(Some(Watched::Outcome(o)));
            }
            other => return Err(WatchError::Reply(other)),
        }
    }
}

/// How long a dial may take before the client also watches `/master`
/// for a successor (a dead master's address stays published until its
/// session expires).
const SUCCESSOR_WATCH_AFTER: Duration = Duration::from_millis(200);

/// How long a published master that does not answer is waited for.
fn answer_wait(master: &MasterInfo, margin: Duration) -> Duration {
    let session = match master.session_timeout_ms {
        // Published by a version that did not record it: ZooKeeper's
        // largest default (20 ticks of 2 s is 40 s; 10 s is common).
        0 => Duration::from_secs(10),
        ms => Duration::from_millis(ms),
    };
    session + margin
}

/// Keeps `Task` in scope for rustdoc links.
#[allow(dead_code)]
fn _doc<T: Task>() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_is_avoided_when_it_refuses_or_breaks_twice_in_a_row() {
        let mut b = Breaks::default();
        assert_eq!(b.after(1, Failed::Broke), None, "a first break redials");
        assert_eq!(b.after(1, Failed::Broke), Some(1), "a second avoids it");
        assert_eq!(b.after(1, Failed::Broke), Some(1));
        b.answered();
        assert_eq!(
            b.after(2, Failed::Broke),
            None,
            "first again after an answer"
        );
        assert_eq!(b.after(2, Failed::Refused), Some(2), "a refusal always");
        assert_eq!(b.after(2, Failed::Broke), None, "a refusal is an answer");
    }
}
