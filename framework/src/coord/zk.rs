//! Session set-up, paths, errors and small read helpers.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use zookeeper_client::{Acl, Acls, Client, CreateMode, CreateOptions, EventType, Permission};

use super::records::MasterInfo;
use crate::core::ShardKey;

/// Upper bound of one ZooKeeper request the framework builds, well below
/// the server's `jute.maxbuffer` (1 MiB by default).
pub const REQUEST_BUDGET: usize = 512 * 1024;

/// Errors of the coordination layer.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// ZooKeeper refused or failed a request.
    #[error("zookeeper error at {path}: {source}")]
    Zk {
        /// The path involved.
        path: String,
        /// The client's error.
        source: zookeeper_client::Error,
    },
    /// Could not connect to the ensemble.
    #[error(
        "cannot connect to ZooKeeper at {hosts}: {diagnosis}; check --zk (or RINGLEADER_ZK) and \
         that the servers run"
    )]
    Connect {
        /// The connect string.
        hosts: String,
        /// What was found trying each server: refused, unresolvable,
        /// silent, or not a ZooKeeper.
        diagnosis: String,
        /// The client's error, if it gave one before the diagnosis.
        #[source]
        source: Option<zookeeper_client::Error>,
    },
    /// Every server answered, and none will take this client as it is set
    /// up: its certificate refused, the server's certificate untrusted, or
    /// TLS spoken to a plain port (or the reverse). Waiting will not help.
    #[error("ZooKeeper at {hosts} refused this connection: {diagnosis}")]
    Refused {
        /// The connect string.
        hosts: String,
        /// Each server's answer, and what to change.
        diagnosis: String,
    },
    /// This node no longer holds the leadership its write was fenced with.
    #[error("leadership lost: a fenced write was refused")]
    LostLeadership,
    /// A znode holds data that is not a valid record.
    #[error("garbage in znode {path}: {reason}")]
    Garbage {
        /// The path.
        path: String,
        /// Why it does not decode.
        reason: String,
    },
    /// A record would not fit in one request.
    #[error("{what} is {len} bytes, over the ZooKeeper request budget of {REQUEST_BUDGET} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its encoded size.
        len: usize,
    },
    /// Local file I/O for outputs written by earlier versions.
    #[error("cannot access {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The cluster's object store failed or holds garbage.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl CoordError {
    pub(crate) fn zk(path: impl Into<String>, source: zookeeper_client::Error) -> Self {
        match source {
            zookeeper_client::Error::RuntimeInconsistent => CoordError::LostLeadership,
            source => CoordError::Zk {
                path: path.into(),
                source,
            },
        }
    }

    /// Whether a versioned write found the record changed since it was
    /// read (another request got there first).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            CoordError::Zk {
                source: zookeeper_client::Error::BadVersion,
                ..
            }
        )
    }

    /// Whether a create found its znode there already.
    pub fn is_node_exists(&self) -> bool {
        matches!(
            self,
            CoordError::Zk {
                source: zookeeper_client::Error::NodeExists,
                ..
            }
        )
    }

    /// Whether a write that failed so may still have been applied: the
    /// connection or the session went before its answer came. An I/O
    /// error of the connection (zookeeper-client's `Custom`, "Connection
    /// reset by peer") is one: the request may have reached the server.
    pub fn is_outcome_unknown(&self) -> bool {
        use zookeeper_client::Error as E;
        matches!(
            self,
            CoordError::Zk {
                source: E::ConnectionLoss
                    | E::Timeout
                    | E::SessionExpired
                    | E::ClientClosed
                    | E::Custom(_),
                ..
            }
        )
    }

    /// Whether the request failed with its connection, the session going
    /// on: the connection broke, or the server stopped answering on it
    /// (which zookeeper-client reports as "no response from connection"
    /// with an error of its own). The client reconnects; a read may be
    /// asked again.
    pub fn is_connection_lost(&self) -> bool {
        use zookeeper_client::Error as E;
        matches!(
            self,
            CoordError::Zk {
                source: E::ConnectionLoss | E::Timeout | E::Custom(_),
                ..
            }
        )
    }

    /// Whether the session is gone for good (expired or closed).
    pub fn is_session_end(&self) -> bool {
        matches!(
            self,
            CoordError::LostLeadership
                | CoordError::Zk {
                    source: zookeeper_client::Error::SessionExpired
                        | zookeeper_client::Error::ClientClosed,
                    ..
                }
        )
    }
}

/// Paths of one cluster's znodes, and the ACLs they are created with.
#[derive(Debug, Clone)]
pub struct Layout {
    root: String,
    acl: AclMode,
}

impl Layout {
    /// The layout of cluster `cluster` under `/ringleader` (open ACLs:
    /// see [`Layout::with_acl`]).
    pub fn new(cluster: &str) -> Self {
        Layout {
            root: format!("/ringleader/{cluster}"),
            acl: AclMode::Open,
        }
    }
    /// The same layout, creating znodes with `acl`.
    pub fn with_acl(mut self, acl: AclMode) -> Self {
        self.acl = acl;
        self
    }
    /// The ACLs znodes are created with.
    pub fn acl(&self) -> AclMode {
        self.acl
    }
    /// The cluster's root.
    pub fn root(&self) -> &str {
        &self.root
    }
    /// Parent of candidate znodes.
    pub fn election(&self) -> String {
        format!("{}/election", self.root)
    }
    /// The epoch counter.
    pub fn epoch(&self) -> String {
        format!("{}/epoch", self.root)
    }
    /// The serving master.
    pub fn master(&self) -> String {
        format!("{}/master", self.root)
    }
    /// Parent of node registrations ([`super::NodeInfo`]).
    pub fn nodes(&self) -> String {
        format!("{}/nodes", self.root)
    }
    /// One node's registration.
    pub fn node(&self, node_id: &str) -> String {
        format!("{}/nodes/{node_id}", self.root)
    }
    /// The cluster's feature level ([`super::FeaturesRecord`]).
    pub fn features(&self) -> String {
        format!("{}/features", self.root)
    }
    /// The fairness keys' weights ([`super::FairnessRecord`]).
    pub fn fairness(&self) -> String {
        format!("{}/fairness", self.root)
    }
    /// The limits ([`super::LimitsRecord`]).
    pub fn limits(&self) -> String {
        format!("{}/limits", self.root)
    }
    /// Parent of worker registrations.
    pub fn workers(&self) -> String {
        format!("{}/workers", self.root)
    }
    /// One worker's registration.
    pub fn worker(&self, node_id: &str) -> String {
        format!("{}/workers/{node_id}", self.root)
    }
    /// Parent of jobs.
    pub fn jobs(&self) -> String {
        format!("{}/jobs", self.root)
    }
    /// One job.
    pub fn job(&self, job: &str) -> String {
        format!("{}/jobs/{job}", self.root)
    }
    /// A job's task batch `k`.
    pub fn batch(&self, job: &str, k: u32) -> String {
        format!("{}/jobs/{job}/batches/{k}", self.root)
    }
    /// Parent of a job's commit buckets.
    pub fn done(&self, job: &str) -> String {
        format!("{}/jobs/{job}/done", self.root)
    }
    /// Bucket of shard index `index` (1000 shard indexes per bucket, so no
    /// child list grows past ZooKeeper's response limit).
    pub fn bucket(&self, job: &str, index: u32) -> String {
        format!("{}/jobs/{job}/done/{}", self.root, index / 1000)
    }
    /// Parent of a job's lost-attempt records.
    pub fn lost(&self, job: &str) -> String {
        format!("{}/jobs/{job}/lost", self.root)
    }
    /// The lost-attempt record of a shard: the attempt its next run has,
    /// after workers died running it.
    pub fn lost_shard(&self, job: &str, key: ShardKey) -> String {
        format!("{}/{}-{}", self.lost(job), key.index, key.generation)
    }
    /// A job's reduced result.
    pub fn result(&self, job: &str) -> String {
        format!("{}/jobs/{job}/result", self.root)
    }
}

/// Who may touch the znodes a cluster creates. ZooKeeper keeps an ACL per
/// znode (children do not inherit): every create says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AclMode {
    /// Anyone who reaches ZooKeeper: a plain connection, where ZooKeeper
    /// cannot tell who connects.
    #[default]
    Open,
    /// Over TLS with ZooKeeper's x509 authentication (a certificate's
    /// subject is its id): nodes (`CN=ringleader-node`) may do anything;
    /// clients and admins may read `/master`, to find the master; nobody
    /// else may read or change anything.
    Cluster,
}

/// The x509 id of every node certificate (the node id lives in its SAN).
pub const NODE_SUBJECT: &str = "CN=ringleader-node";
static NODES_ALL: [Acl; 1] = [Acl::new_const(Permission::ALL, "x509", NODE_SUBJECT)];
static DISCOVERY: [Acl; 3] = [
    Acl::new_const(Permission::ALL, "x509", NODE_SUBJECT),
    Acl::new_const(Permission::READ, "x509", "CN=ringleader-client"),
    Acl::new_const(Permission::READ, "x509", "CN=ringleader-admin"),
];

impl AclMode {
    /// The ACL of the cluster's znodes.
    pub(crate) fn acls(self) -> Acls<'static> {
        match self {
            AclMode::Open => Acls::anyone_all(),
            AclMode::Cluster => Acls::new(&NODES_ALL),
        }
    }
    /// A persistent znode of the cluster.
    pub(crate) fn persistent(self) -> CreateOptions<'static> {
        CreateMode::Persistent.with_acls(self.acls())
    }
    /// An ephemeral znode of the cluster.
    pub(crate) fn ephemeral(self) -> CreateOptions<'static> {
        CreateMode::Ephemeral.with_acls(self.acls())
    }
    /// `/master`: clients read it to find the master.
    pub(crate) fn discovery(self) -> CreateOptions<'static> {
        CreateMode::Ephemeral.with_acls(match self {
            AclMode::Open => Acls::anyone_all(),
            AclMode::Cluster => Acls::new(&DISCOVERY),
        })
    }
}

pub(crate) fn encode_record<T: Serialize>(path: &str, value: &T) -> Result<Vec<u8>, CoordError> {
    let bytes = crate::wire::encode_named(value).map_err(|e| CoordError::Garbage {
        path: path.to_string(),
        reason: format!("cannot encode: {e}"),
    })?;
    if bytes.len() > REQUEST_BUDGET {
        return Err(CoordError::TooLarge {
            what: format!("record for {path}"),
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

pub(crate) fn decode_record<T: DeserializeOwned>(
    path: &str,
    bytes: &[u8],
) -> Result<T, CoordError> {
    rmp_serde::from_slice(bytes).map_err(|e| CoordError::Garbage {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// Connects to the ensemble `hosts` (a ZooKeeper connect string) asking for
/// `session_timeout`; the server may negotiate another (read
/// [`Client::session_timeout`]). Must run on the long-lived arbiter that will
/// keep the session: the client's session task is spawned there.
pub async fn connect(hosts: &str, session_timeout: Duration) -> Result<Client, CoordError> {
    connect_with(hosts, session_timeout, None).await
}

/// What a ZooKeeper client presents and trusts over ZooKeeper's TLS port
/// (`secureClientPort`): PEM text.
#[derive(Clone)]
pub struct ZkTls {
    /// The CAs whose certificates the servers must carry.
    pub ca: String,
    /// This client's certificate chain: ZooKeeper's x509 authentication
    /// takes its subject as the client's id.
    pub cert: String,
    /// Its private key.
    pub key: String,
    /// The directory the certificate came from, for errors that name it.
    pub origin: String,
}

impl std::fmt::Debug for ZkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkTls").finish_non_exhaustive()
    }
}

/// [`connect`], over TLS when `tls` is given (to the servers' TLS ports,
/// which the connect string must name).
pub async fn connect_with(
    hosts: &str,
    session_timeout: Duration,
    tls: Option<&ZkTls>,
) -> Result<Client, CoordError> {
    let failed = |diagnosis: String, source| CoordError::Connect {
        hosts: hosts.to_string(),
        diagnosis,
        source,
    };
    // Nonsense is refused before the client tries anything.
    let servers = parse_connect_string(hosts).map_err(|why| failed(why, None))?;
    if tls.is_some() {
        // zookeeper-client panics on a host a TLS certificate cannot name.
        if let Some((host, _)) = servers
            .iter()
            .find(|(host, _)| !crate::transport::is_server_name(host))
        {
            let why = format!(
                "{host:?} is neither a host name nor an IP address a TLS certificate can name"
            );
            return Err(failed(why, None));
        }
    }
    let connector = Client::connector()
        .with_session_timeout(session_timeout)
        .with_connection_timeout(session_timeout.min(Duration::from_secs(5)));
    let connecting = async move {
        match tls {
            None => connector.connect(hosts).await,
            Some(tls) => {
                // zookeeper-client's TLS uses rustls's process-wide provider.
                crate::transport::install_crypto_provider();
                let options = zookeeper_client::TlsOptions::new()
                    .with_pem_ca(&tls.ca)
                    .and_then(|o| o.with_pem_identity(&tls.cert, &tls.key))?;
                connector.with_tls(options).secure_connect(hosts).await
            }
        }
    };
    tokio::pin!(connecting);
    // A reachable ensemble answers in milliseconds; past that, each server
    // is looked at (the client keeps trying meanwhile), and when none can
    // be reached for a reason that waiting will not change (refused,
    // unresolvable), that is the answer at once.
    tokio::select! {
        r = &mut connecting => return r.map_err(|e| failed(e.to_string(), Some(e))),
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
    let list = hosts.to_string();
    let probe_with = tls.cloned();
    let mut looking = tokio::task::spawn_blocking(move || diagnose(&list, probe_with.as_ref()));
    let diagnosis = tokio::select! {
        r = &mut connecting => {
            return match r {
                Ok(client) => Ok(client),
                Err(e) => {
                    let d = (&mut looking).await.map_or_else(|_| e.to_string(), |d| d.text);
                    Err(failed(d, Some(e)))
                }
            };
        }
        d = &mut looking => d.ok(),
    };
    match diagnosis {
        Some(d) if d.refused => Err(CoordError::Refused {
            hosts: hosts.to_string(),
            diagnosis: d.text,
        }),
        Some(d) if d.definite => Err(failed(d.text, None)),
        d => connecting.await.map_err(|e| {
            let text = d.map_or_else(|| e.to_string(), |d| d.text);
            failed(text, Some(e))
        }),
    }
}

/// What dialling each server of a connect string found.
struct Diagnosis {
    /// One clause per server.
    text: String,
    /// Every server refused or could not be resolved: waiting will not help.
    definite: bool,
    /// Every server answered and refused this client's TLS set-up (or
    /// lack of it): a configuration to change, not an outage.
    refused: bool,
}

/// The servers of a connect string (`host:port[,host:port...][/chroot]`),
/// or what is wrong with it.
pub fn parse_connect_string(hosts: &str) -> Result<Vec<(String, u16)>, String> {
    let servers = hosts.split('/').next().unwrap_or_default();
    if servers.trim().is_empty() {
        return Err("the connect string is empty: give host:port[,host:port...]".into());
    }
    servers
        .split(',')
        .map(|server| {
            let server = server.trim();
            let (host, port) = server.rsplit_once(':').ok_or_else(|| {
                format!("{server:?} is not host:port (ZooKeeper's client port is usually 2181)")
            })?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{server:?} has no valid port"))?;
            if host.is_empty() {
                return Err(format!("{server:?} has no host"));
            }
            Ok((host.to_string(), port))
        })
        .collect()
}

/// What each server of `hosts` does when dialled: resolved or not,
/// refused, silent, or listening (then it gave no session: perhaps not a
/// ZooKeeper, or one that refuses clients). Blocking: seconds at most.
fn diagnose(hosts: &str, tls: Option<&ZkTls>) -> Diagnosis {
    use std::net::{TcpStream, ToSocketAddrs};
    const DIAL: Duration = Duration::from_secs(2);
    let Ok(servers) = parse_connect_string(hosts) else {
        return Diagnosis {
            text: "the connect string is not host:port[,host:port...]".into(),
            definite: true,
            refused: false,
        };
    };
    let mut definite = true;
    let mut refusals = 0;
    let each: Vec<String> = servers
        .iter()
        .map(|(host, port)| {
            let addrs: Vec<std::net::SocketAddr> = match (host.as_str(), *port).to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => return format!("{host}: cannot resolve the host name ({e})"),
            };
            let Some(addr) = addrs.first() else {
                return format!("{host}: the host name resolves to no address");
            };
            match TcpStream::connect_timeout(addr, DIAL) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    format!("{addr}: connection refused (nothing listens on port {port})")
                }
                Ok(stream) => match tls_setup_refused(stream, host, tls, DIAL) {
                    Some(why) => {
                        refusals += 1;
                        format!("{addr}: {why}")
                    }
                    None => {
                        definite = false;
                        format!(
                            "{addr}: accepts connections but gives no ZooKeeper session (is it \
                             a ZooKeeper client port? the server's log may say why)"
                        )
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    definite = false;
                    format!(
                        "{addr}: no answer within {} s (a firewall, a wrong address, or the \
                         host is down)",
                        DIAL.as_secs()
                    )
                }
                Err(e) => {
                    definite = false;
                    format!("{addr}: {e}")
                }
            }
        })
        .collect();
    Diagnosis {
        text: each.join("; "),
        definite,
        // Only when every server refused this client's set-up: one that
        // cannot be reached may still take it.
        refused: refusals == servers.len(),
    }
}

/// Why a server that accepts connections will not take this client as it
/// is set up, if a TLS handshake shows it: over TLS, its certificate
/// refused, the server's untrusted, or a port that does not speak TLS;
/// without TLS, a port that speaks it.
fn tls_setup_refused(
    stream: std::net::TcpStream,
    host: &str,
    tls: Option<&ZkTls>,
    timeout: Duration,
) -> Option<String> {
    use crate::transport::probe::{probe_tls, ProbePem, TlsProbe};
    match tls {
        Some(tls) => {
            let pem = ProbePem {
                ca: &tls.ca,
                cert: &tls.cert,
                key: &tls.key,
            };
            match probe_tls(stream, host, Some(pem), timeout) {
                TlsProbe::RefusedUs(how) => Some(format!(
                    "it refused the certificate in {} ({how}): its trust store (ssl.trustStore \
                     in zoo.cfg) must hold the CA that issued that certificate",
                    tls.origin
                )),
                TlsProbe::Untrusted(why) => Some(format!(
                    "its own certificate does not check out against {}/ca.pem for the name \
                     {host:?} ({why}): issue the server's certificate from the cluster's CA \
                     (`certs issue --zookeeper {host}`), or trust its CA in that ca.pem",
                    tls.origin
                )),
                TlsProbe::NotTls(how) => Some(format!(
                    "it does not speak TLS ({how}): is it ZooKeeper's plain client port? With \
                     --zk-tls, --zk must name the servers' TLS port (secureClientPort)"
                )),
                TlsProbe::Accepted | TlsProbe::Unknown(_) => None,
            }
        }
        None => probe_tls(stream, host, None, timeout)
            .speaks_tls()
            .then(|| {
                "it speaks TLS (ZooKeeper's secureClientPort): give --zk-tls \
                 (RINGLEADER_ZK_TLS=true), or name the plain client port"
                    .to_string()
            }),
    }
}

/// Creates `path` and its ancestors as empty persistent znodes (with the
/// ACLs of `acl`) if missing.
pub async fn ensure_path(client: &Client, path: &str, acl: AclMode) -> Result<(), CoordError> {
    // A read first: creating an existing node is a write that fails, and
    // costs a trip through the servers' log.
    if let Ok(Some(_)) = client.check_stat(path).await {
        return Ok(());
    }
    match client.mkdir(path, &acl.persistent()).await {
        Ok(()) | Err(zookeeper_client::Error::NodeExists) => Ok(()),
        Err(e) => Err(CoordError::zk(path, e)),
    }
}

/// The serving master, if one is published.
pub async fn read_master(
    client: &Client,
    layout: &Layout,
) -> Result<Option<MasterInfo>, CoordError> {
    let path = layout.master();
    match client.get_data(&path).await {
        Ok((data, _)) => Ok(Some(decode_record(&path, &data)?)),
        Err(zookeeper_client::Error::NoNode) => Ok(None),
        Err(e) => Err(CoordError::zk(path, e)),
    }
}

/// Waits until a master other than `not` (an epoch already found unusable)
/// is published, for at most `timeout`. Event-driven: a watch on `/master`.
pub async fn wait_for_master(
    client: &Client,
    layout: &Layout,
    not: Option<u64>,
    timeout: Duration,
) -> Result<Option<MasterInfo>, CoordError> {
    let path = layout.master();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let watcher = match client.get_and_watch_data(&path).await {
            Ok((data, _, watcher)) => {
                let info: MasterInfo = decode_record(&path, &data)?;
                if Some(info.epoch) != not {
                    return Ok(Some(info));
                }
                watcher
            }
            Err(zookeeper_client::Error::NoNode) => {
                match client.check_and_watch_stat(&path).await {
                    Ok((Some(_), _)) => continue,
                    Ok((None, watcher)) => watcher,
                    Err(e) => return Err(CoordError::zk(path, e)),
                }
            }
            Err(e) => return Err(CoordError::zk(path, e)),
        };
        match tokio::time::timeout_at(deadline, watcher.changed()).await {
            Err(_) => return Ok(None),
            Ok(event) if event.event_type == EventType::Session => {
                if event.session_state.is_terminated() {
                    return Err(CoordError::zk(
                        path,
                        zookeeper_client::Error::SessionExpired,
                    ));
                }
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zookeeper_client::Error as E;

    #[test]
    fn only_a_lost_answer_leaves_a_write_unknown() {
        let e = |source| CoordError::zk("/p", source);
        for unknown in [E::ConnectionLoss, E::Timeout, E::SessionExpired] {
            assert!(e(unknown).is_outcome_unknown());
        }
        for known in [E::NodeExists, E::NoNode, E::BadVersion] {
            assert!(!e(known).is_outcome_unknown());
        }
        // A fence that refused the write: it was not applied.
        assert!(!e(E::RuntimeInconsistent).is_outcome_unknown());
        assert!(e(E::BadVersion).is_conflict());
    }
}
