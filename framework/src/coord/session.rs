//! A node's or a client's ZooKeeper session, as the rest of the crate sees
//! it: connection states, `/master` reads and watches, the worker's
//! and node registrations, the master's watch of registrations, the
//! cluster's feature level, and the election.
//! Nothing outside `coord/` holds zookeeper-client's types.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::Stream;
use zookeeper_client::{
    Client, Error as ZkError, LockOptions, LockPrefix, OneshotWatcher, SessionState, StateWatcher,
};

use super::records::{FeaturesRecord, MasterInfo, NodeInfo, WorkerInfo};
use super::zk::{decode_record, encode_record, CoordError, Layout};

/// A session's connection, as its users act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// Connected: reads and writes go through.
    Connected,
    /// Disconnected, and the session may still be alive: wait.
    Disconnected,
    /// The session is over (expired, closed or refused): its ephemeral
    /// znodes are gone or going; start a new one.
    Ended {
        /// Whether it expired (as opposed to being closed).
        expired: bool,
    },
}

impl From<SessionState> for Connection {
    fn from(s: SessionState) -> Self {
        match s {
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => Connection::Connected,
            SessionState::Expired => Connection::Ended { expired: true },
            s if s.is_terminated() => Connection::Ended { expired: false },
            _ => Connection::Disconnected,
        }
    }
}

/// Changes of a session's [`Connection`].
pub struct Connections(StateWatcher);

impl Connections {
    /// The next change. Once [`Connection::Ended`] is returned, it is
    /// returned again at once.
    pub async fn changed(&mut self) -> Connection {
        self.0.changed().await.into()
    }
}

/// See the module doc. Clones share the session, which closes when the
/// last clone is dropped (deleting its ephemeral znodes).
#[derive(Clone, Debug)]
pub struct Session {
    client: Client,
    layout: Layout,
}

/// An election this node won: the lock (its candidate znode, which fences
/// every write of its master) and the cluster's layout. Only the store can
/// use it ([`crate::coord::LeaderStore::take_over`]).
pub struct Won {
    pub(super) lock: zookeeper_client::OwnedLockClient,
    pub(super) layout: Layout,
}

impl Session {
    /// Connects to the ensemble `hosts` (a ZooKeeper connect string) for
    /// the cluster `layout` names, asking for `session_timeout`; the
    /// server may negotiate another ([`Session::timeout`]). Must run on
    /// the long-lived arbiter that keeps the session: its task is spawned
    /// there.
    pub async fn connect(
        hosts: &str,
        session_timeout: Duration,
        layout: Layout,
    ) -> Result<Session, CoordError> {
        Self::connect_with(hosts, session_timeout, layout, None).await
    }

    /// [`Session::connect`], over TLS when `tls` is given: then the
    /// cluster's znodes are created with [`super::AclMode::Cluster`]
    /// (whatever `layout` says), open ones otherwise.
    pub async fn connect_with(
        hosts: &str,
        session_timeout: Duration,
        layout: Layout,
        tls: Option<&super::ZkTls>,
    ) -> Result<Session, CoordError> {
        let client = super::zk::connect_with(hosts, session_timeout, tls).await?;
        let acl = if tls.is_some() {
            super::AclMode::Cluster
        } else {
            super::AclMode::Open
        };
        Ok(Session {
            client,
            layout: layout.with_acl(acl),
        })
    }

    /// The session a master's store was made from.
    pub(super) fn of(client: Client, layout: Layout) -> Session {
        Session { client, layout }
    }

    /// The cluster's znode layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The negotiated session timeout.
    pub fn timeout(&self) -> Duration {
        self.client.session_timeout()
    }

    /// The connection now.
    pub fn connection(&self) -> Connection {
        self.client.state().into()
    }

    /// Changes of the connection from now on.
    pub fn connections(&self) -> Connections {
        Connections(self.client.state_watcher())
    }

    /// Creates the cluster's root znode if it is missing.
    pub async fn ensure_root(&self) -> Result<(), CoordError> {
        super::zk::ensure_path(&self.client, self.layout.root(), self.layout.acl()).await
    }

    /// The serving master, if one is published.
    pub async fn read_master(&self) -> Result<Option<MasterInfo>, CoordError> {
        super::zk::read_master(&self.client, &self.layout).await
    }

    /// Waits until a master other than `not` (an epoch already found
    /// unusable) is published, for at most `timeout`.
    pub async fn wait_for_master(
        &self,
        not: Option<u64>,
        timeout: Duration,
    ) -> Result<Option<MasterInfo>, CoordError> {
        super::zk::wait_for_master(&self.client, &self.layout, not, timeout).await
    }

    /// Resolves once `/master` no longer holds `epoch`.
    pub async fn master_changed(&self, epoch: u64) -> Result<(), CoordError> {
        let path = self.layout.master();
        loop {
            let watcher = match self.client.get_and_watch_data(&path).await {
                Ok((data, _, w)) => match decode_record::<MasterInfo>(&path, &data) {
                    Ok(info) if info.epoch == epoch => w,
                    _ => return Ok(()),
                },
                Err(ZkError::NoNode) => return Ok(()),
                Err(e) => return Err(CoordError::zk(&path, e)),
            };
            let ev = watcher.changed().await;
            if ev.session_state.is_terminated() {
                return Err(CoordError::zk(&path, ZkError::SessionExpired));
            }
        }
    }

    /// Registers this node as a worker (`/workers/<node-id>`, ephemeral).
    /// A registration left by an earlier incarnation whose session has not
    /// expired yet, or ours before a connection loss, is replaced.
    pub async fn register_worker(
        &self,
        node_id: &str,
        info: &WorkerInfo,
    ) -> Result<(), CoordError> {
        let path = self.layout.worker(node_id);
        let data = encode_record(&path, info)?;
        self.register(&self.layout.workers(), &path, &data).await
    }

    /// Registers this node (`/nodes/<node-id>`, ephemeral): what it is and
    /// which feature level it follows. Replaced as a worker's is.
    pub async fn register_node(&self, node_id: &str, info: &NodeInfo) -> Result<(), CoordError> {
        let path = self.layout.node(node_id);
        let data = encode_record(&path, info)?;
        self.register(&self.layout.nodes(), &path, &data).await
    }

    /// The cluster's feature level (0 if none was ever raised), with the
    /// version of its znode for a conditional raise.
    pub async fn feature_level(&self) -> Result<(u32, Option<i32>), CoordError> {
        let path = self.layout.features();
        match self.client.get_data(&path).await {
            Ok((data, stat)) => {
                let record: FeaturesRecord = decode_record(&path, &data)?;
                Ok((record.level, Some(stat.version)))
            }
            Err(ZkError::NoNode) => Ok((0, None)),
            Err(e) => Err(CoordError::zk(&path, e)),
        }
    }

    /// Raises the feature level to `record.level`, if its znode is still
    /// at `version` (`None`: absent). [`CoordError::is_conflict`] when it
    /// changed meanwhile.
    pub async fn set_feature_level(
        &self,
        record: &FeaturesRecord,
        version: Option<i32>,
    ) -> Result<(), CoordError> {
        let path = self.layout.features();
        let data = encode_record(&path, record)?;
        let written = match version {
            None => self
                .client
                .create(&path, &data, &self.layout.acl().persistent())
                .await
                .map(drop),
            Some(v) => self.client.set_data(&path, &data, Some(v)).await.map(drop),
        };
        written.map_err(|e| CoordError::zk(&path, e))
    }

    /// Starts a cluster that never had a master (no `/epoch`, no level
    /// set) at `level` and answers the cluster's level: `level` if this
    /// call or a concurrent one set it, what is set otherwise. A cluster an
    /// earlier release made keeps its level until `features upgrade`.
    pub async fn start_feature_level(&self, record: &FeaturesRecord) -> Result<u32, CoordError> {
        let (level, version) = self.feature_level().await?;
        if version.is_some() || record.level == 0 {
            return Ok(level);
        }
        let epoch = self.layout.epoch();
        match self.client.check_stat(&epoch).await {
            Ok(Some(_)) => return Ok(level),
            Ok(None) => {}
            Err(e) => return Err(CoordError::zk(&epoch, e)),
        }
        match self.set_feature_level(record, None).await {
            Ok(()) => Ok(record.level),
            Err(e) if e.is_node_exists() => Ok(self.feature_level().await?.0),
            Err(e) => Err(e),
        }
    }

    /// The levels the live nodes follow (0: a release before levels), for
    /// the decisions of [`crate::core::features`].
    pub fn follows(nodes: &BTreeMap<String, Option<NodeInfo>>) -> Vec<crate::core::features::Live> {
        nodes
            .iter()
            .map(|(node, info)| crate::core::features::Live {
                node: node.clone(),
                follows: info.as_ref().map_or(0, |i| i.features),
            })
            .collect()
    }

    /// Every live node: candidates (whose election znodes name them),
    /// workers and registered nodes, each with its registration if it
    /// wrote one (a node of a release before registrations did not).
    pub async fn live_nodes(&self) -> Result<BTreeMap<String, Option<NodeInfo>>, CoordError> {
        let mut ids: BTreeSet<String> = BTreeSet::new();
        for parent in [self.layout.workers(), self.layout.nodes()] {
            ids.extend(self.children(&parent).await?);
        }
        let election = self.layout.election();
        for child in self.children(&election).await? {
            let path = format!("{election}/{child}");
            match self.client.get_data(&path).await {
                Ok((data, _)) => {
                    if let Ok(id) = String::from_utf8(data) {
                        ids.insert(id);
                    }
                }
                // Its candidate left meanwhile.
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(CoordError::zk(&path, e)),
            }
        }
        let mut live = BTreeMap::new();
        for id in ids {
            let path = self.layout.node(&id);
            let info = match self.client.get_data(&path).await {
                Ok((data, _)) => Some(decode_record::<NodeInfo>(&path, &data)?),
                Err(ZkError::NoNode) => None,
                Err(e) => return Err(CoordError::zk(&path, e)),
            };
            live.insert(id, info);
        }
        Ok(live)
    }

    /// The children of `path` (none if it does not exist).
    async fn children(&self, path: &str) -> Result<Vec<String>, CoordError> {
        match self.client.list_children(path).await {
            Ok(names) => Ok(names),
            Err(ZkError::NoNode) => Ok(Vec::new()),
            Err(e) => Err(CoordError::zk(path, e)),
        }
    }

    /// Creates the ephemeral `path` under `parent` with `data`, replacing
    /// one left by an earlier incarnation whose session has not expired
    /// yet, or ours before a connection loss.
    async fn register(&self, parent: &str, path: &str, data: &[u8]) -> Result<(), CoordError> {
        super::zk::ensure_path(&self.client, parent, self.layout.acl()).await?;
        loop {
            match self
                .client
                .create(path, data, &self.layout.acl().ephemeral())
                .await
            {
                Ok(_) => return Ok(()),
                Err(ZkError::NodeExists) => match self.client.delete(path, None).await {
                    Ok(()) | Err(ZkError::NoNode) => {}
                    Err(e) => return Err(CoordError::zk(path, e)),
                },
                Err(ZkError::ConnectionLoss) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(CoordError::zk(path, e)),
            }
        }
    }

    /// Stands for election (zookeeper-client's lock recipe, with Curator's
    /// `_c_<uuid>-latch-` names: each candidate watches only its
    /// predecessor) and returns, once this node leads, the election won:
    /// [`crate::coord::LeaderStore::take_over`] makes the fenced store of
    /// the next epoch of it.
    pub async fn campaign(&self, node_id: &str) -> Result<Won, CoordError> {
        let dir = self.layout.election();
        let prefix =
            LockPrefix::new_curator(&dir, "latch-").map_err(|e| CoordError::zk(&dir, e))?;
        let acl = self.layout.acl();
        let options = LockOptions::new(acl.acls())
            .with_ancestor_options(acl.persistent())
            .map_err(|e| CoordError::zk(&dir, e))?;
        let lock = self
            .client
            .lock(prefix, node_id.as_bytes(), options)
            .await
            .map_err(|e| CoordError::zk(&dir, e))?
            .into_owned();
        tracing::info!(path = lock.lock_path(), "won the election");
        Ok(Won {
            lock,
            layout: self.layout.clone(),
        })
    }

    /// The registered workers, each time they change. Registrations are
    /// written once (ephemeral, never updated), so only new names are
    /// read: a thousand workers joining cost a thousand reads, not a
    /// million. Garbage registrations are skipped with a warning. Ends
    /// with an error when the session ends.
    pub fn workers(
        &self,
    ) -> impl Stream<Item = Result<BTreeMap<String, WorkerInfo>, CoordError>> + 'static {
        let client = self.client.clone();
        let path = self.layout.workers();
        let state: (
            Client,
            String,
            BTreeMap<String, WorkerInfo>,
            Option<OneshotWatcher>,
        ) = (client, path, BTreeMap::new(), None);
        futures::stream::unfold(state, |(client, path, mut infos, watcher)| async move {
            if let Some(w) = watcher {
                let event = w.changed().await;
                if event.session_state.is_terminated() {
                    let e = CoordError::zk(&path, ZkError::SessionExpired);
                    return Some((Err(e), (client, path, infos, None)));
                }
            }
            let (names, watcher) = match client.get_and_watch_children(&path).await {
                Ok((names, _, w)) => (names, w),
                Err(e) => {
                    return Some((Err(CoordError::zk(&path, e)), (client, path, infos, None)))
                }
            };
            let current: BTreeSet<&String> = names.iter().collect();
            infos.retain(|n, _| current.contains(n));
            let new: Vec<&String> = names.iter().filter(|n| !infos.contains_key(*n)).collect();
            let reads: Vec<_> = new
                .iter()
                .map(|n| {
                    let p = format!("{path}/{n}");
                    let read = client.get_data(&p);
                    async move { (p, read.await) }
                })
                .collect();
            for (n, (p, r)) in new.into_iter().zip(futures::future::join_all(reads).await) {
                if let Ok((data, _)) = r {
                    match decode_record::<WorkerInfo>(&p, &data) {
                        Ok(info) => {
                            infos.insert(n.clone(), info);
                        }
                        Err(e) => {
                            tracing::warn!(worker = %n, error = %e, "ignoring a garbage worker registration")
                        }
                    }
                }
            }
            let out = infos.clone();
            Some((Ok(out), (client, path, infos, Some(watcher))))
        })
    }

    /// The raw client, for test harnesses that inspect znodes.
    #[doc(hidden)]
    pub fn zookeeper(&self) -> &Client {
        &self.client
    }
}
