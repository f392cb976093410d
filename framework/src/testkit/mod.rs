//! A test harness for clusters of real processes: a private ZooKeeper,
//! cluster certificates, `node` processes of any Ringleader binary, and
//! bounded waits that fail with a message. Enabled by the `testkit` feature;
//! meant for integration tests (it panics on set-up failures).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::coord::{self, Layout, MasterInfo};
use crate::zkserver::{ServerHost, ZkServer, ZkServerOptions};

pub mod adversary;
pub mod net;
pub mod s3;

pub struct Node {
    pub id: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Its test host (multi-host clusters).
    pub host: Option<String>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// The ZooKeeper servers (one, or an ensemble).
    pub servers: Vec<ZkServer>,
    pub certs: PathBuf,
    pub nodes: Vec<Node>,
    pub cluster: String,
    /// The node binary under test.
    pub bin: PathBuf,
    /// The test hosts, for a cluster spread over several (see [`net`]).
    /// Dropped last: its namespaces go after every process in them.
    pub net: Option<net::Net>,
    /// Environment of every node and CLI command (store credentials).
    pub env: Vec<(String, String)>,
    /// A store server of the cluster's own, stopped before the hosts go.
    pub s3: Option<s3::S3Server>,
    /// Whether nodes started from now on keep an audit log (on by
    /// default; benchmarks turn it off to measure what users run).
    pub audit_logs: bool,
    /// `RUST_LOG` of nodes started from now on: `info,ringleader=debug` by
    /// default (tests read the debug lines); benchmarks use `info`, what
    /// users run, since a line per shard costs the master's thread.
    pub log_filter: String,
    /// Extra environment of particular nodes (by id), kept across restarts.
    pub node_env: std::collections::HashMap<String, Vec<(String, String)>>,
    /// Whether ZooKeeper is reached over its TLS port (see
    /// [`Cluster::new`]; [`Cluster::plain`] if not).
    pub zk_tls: bool,
}

impl Cluster {
    /// A ZooKeeper and certificates for nodes of the binary `bin`. As in
    /// `local`, ZooKeeper serves its TLS port with x509 authentication,
    /// and the nodes, clients and the test's own session use it
    /// (`--zk-tls`): the cluster's znodes take node certificates only.
    pub fn new(bin: impl Into<PathBuf>) -> Cluster {
        Self::with_servers(bin, 1)
    }

    /// Like [`Cluster::new`] with an ensemble of `n` ZooKeeper servers.
    pub fn with_servers(bin: impl Into<PathBuf>, n: usize) -> Cluster {
        Self::start_with(bin, &vec![ServerHost::loopback(); n], None, true)
    }

    /// Like [`Cluster::new`], but reached over ZooKeeper's plain port,
    /// with the open ACLs a plain connection gets (and the nodes' warning
    /// about it): for what the TLS port would stop before it is tested,
    /// and for the benchmarks' one figure of the plain port.
    pub fn plain(bin: impl Into<PathBuf>, n: usize) -> Cluster {
        Self::start_with(bin, &vec![ServerHost::loopback(); n], None, false)
    }

    /// A cluster on the test hosts of `net`, with a ZooKeeper server on
    /// each host of `zk_hosts` (one host: a single server; three: an
    /// ensemble). Nodes go on hosts of their own with [`Cluster::node_on`].
    pub fn on_net(bin: impl Into<PathBuf>, net: net::Net, zk_hosts: &[&str]) -> Cluster {
        let hosts = Self::server_hosts(&net, zk_hosts);
        Self::start_with(bin, &hosts, Some(net), true)
    }

    fn server_hosts(net: &net::Net, zk_hosts: &[&str]) -> Vec<ServerHost> {
        zk_hosts
            .iter()
            .map(|h| ServerHost::netns(std::net::IpAddr::V4(net.ip(h)), net.netns(h)))
            .collect()
    }

    /// [`Cluster::on_net`] over ZooKeeper's plain port (see
    /// [`Cluster::plain`]).
    pub fn plain_on_net(bin: impl Into<PathBuf>, net: net::Net, zk_hosts: &[&str]) -> Cluster {
        let hosts = Self::server_hosts(&net, zk_hosts);
        Self::start_with(bin, &hosts, Some(net), false)
    }

    fn start_with(
        bin: impl Into<PathBuf>,
        hosts: &[ServerHost],
        net: Option<net::Net>,
        zk_tls: bool,
    ) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("ringleader-test-")
            .tempdir()
            .expect("temp dir");
        let certs = dir.path().join("certs");
        crate::pki::make_cluster_certs(&certs).expect("certificates");
        let mut opts = ZkServerOptions::default();
        if zk_tls {
            let zk_certs = dir.path().join("zk-certs");
            let names: Vec<String> = hosts.iter().map(|h| h.ip.to_string()).collect();
            crate::pki::issue_zookeeper(&certs, &names, &zk_certs)
                .expect("ZooKeeper's certificate");
            opts.tls = Some(zk_certs);
        }
        let zk_dir = dir.path().join("zk");
        let servers = match hosts {
            [one] => vec![ZkServer::start_on(&zk_dir, one, &opts).expect("ZooKeeper starts")],
            _ => {
                crate::zkserver::ZkEnsemble::start_on(&zk_dir, hosts, &opts)
                    .expect("ZooKeeper ensemble starts")
                    .servers
            }
        };
        // The temporary directory of every node and command: nodes that
        // are given no --store share the default one in it, as the
        // nodes of a cluster on one host do.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("the cluster's temporary directory");
        let mut env = vec![("TMPDIR".to_string(), tmp.display().to_string())];
        if zk_tls {
            env.push(("RINGLEADER_ZK_TLS".to_string(), "true".to_string()));
        }
        Cluster {
            zk_tls,
            dir,
            servers,
            certs,
            nodes: Vec::new(),
            cluster: "test".into(),
            bin: bin.into(),
            net,
            env,
            s3: None,
            audit_logs: true,
            log_filter: "info,ringleader=debug".into(),
            node_env: std::collections::HashMap::new(),
        }
    }

    /// Starts an S3-compatible server (moto's) on test host `host` and
    /// points every node started afterwards at it (`--store` and the
    /// `AWS_*` variables); returns the store URL.
    pub fn s3_store_on(&mut self, host: &str) -> String {
        let net = self.net();
        let at = (
            net.netns(host).to_string(),
            std::net::IpAddr::V4(net.ip(host)),
        );
        let server = s3::S3Server::start(self.dir.path(), Some((&at.0, at.1)));
        let url = server.url(&self.cluster);
        self.env.extend(server.env());
        self.env.push(("RINGLEADER_STORE".into(), url.clone()));
        self.s3 = Some(server);
        url
    }

    /// Starts an S3-compatible server (moto's) on loopback behind a
    /// [`Proxy`] (so a test can slow it or cut it) and points every node
    /// and CLI command started afterwards at the proxy; returns the store
    /// URL and the proxy. Signatures are checked, listings included.
    pub fn s3_store_behind_proxy(&mut self) -> (String, Proxy) {
        let server = s3::S3Server::start(self.dir.path(), None);
        let proxy = Proxy::start(&server.endpoint()["http://".len()..]);
        let url = server.url(&self.cluster);
        self.env.extend(server.env().into_iter().map(|(k, v)| {
            if k == "AWS_ENDPOINT" {
                (k, format!("http://{}", proxy.addr()))
            } else {
                (k, v)
            }
        }));
        self.env.push(("RINGLEADER_STORE".into(), url.clone()));
        self.s3 = Some(server);
        (url, proxy)
    }

    /// The test hosts (panics for a cluster on loopback).
    pub fn net(&self) -> &net::Net {
        self.net
            .as_ref()
            .expect("a cluster made by Cluster::on_net")
    }

    /// The ZooKeeper connect string of every server.
    pub fn zk_connect(&self) -> String {
        self.zk_addrs().join(",")
    }

    /// Each server's address on the port the cluster uses (TLS or plain).
    pub fn zk_addrs(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| match self.zk_tls {
                true => s.secure_connect_string().expect("a TLS port"),
                false => s.connect_string(),
            })
            .collect()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `node` with id `id` on this machine's loopback; `extra`
    /// arguments override the defaults.
    pub fn node(&mut self, id: &str, extra: &[&str]) {
        self.spawn_node(None, id, extra)
    }

    /// Starts `node` with id `id` on test host `host` (listening on the
    /// default port, advertising the host's address).
    pub fn node_on(&mut self, host: &str, id: &str, extra: &[&str]) {
        self.spawn_node(Some(host), id, extra)
    }

    fn spawn_node(&mut self, host: Option<&str>, id: &str, extra: &[&str]) {
        let log = self.path(&format!("{id}.log"));
        // Appended: a restarted node keeps its earlier log.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let zk = self.zk_connect();
        let certs = self.certs.display().to_string();
        let data = self.path("data").display().to_string();
        let audit = self
            .path(&format!("{id}.audit.jsonl"))
            .display()
            .to_string();
        let defaults = [
            ("--audit-file", audit.as_str()),
            ("--zk", zk.as_str()),
            ("--certs", certs.as_str()),
            ("--data-dir", data.as_str()),
            ("--slots", "1"),
            ("--session-timeout-ms", "2000"),
            // A test's few nodes: at once (the scale benchmark's swarm
            // keeps the default).
            ("--start-jitter-ms", "0"),
            ("--listen", "127.0.0.1:0"),
            ("--retention-secs", "0"),
        ];
        let mut args: Vec<&str> = Vec::new();
        for (flag, value) in defaults {
            // On a host of its own a node keeps the default port.
            let keep_default = host.is_some() && flag == "--listen";
            let off = flag == "--audit-file" && !self.audit_logs;
            if !extra.contains(&flag) && !keep_default && !off {
                args.extend([flag, value]);
            }
        }
        let mut cmd = match host {
            Some(h) => self.net().command(h, &self.bin),
            None => Command::new(&self.bin),
        };
        let child = cmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(
                self.node_env
                    .get(id)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v)),
            )
            .args(["node", "--cluster", &self.cluster, "--node-id", id])
            .args(&args)
            .args(extra)
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .expect("node starts");
        let node = Node {
            id: id.to_string(),
            child: Some(child),
            log,
            host: host.map(str::to_string),
        };
        match self.nodes.iter_mut().find(|n| n.id == id) {
            Some(old) => {
                if let Some(mut c) = old.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                *old = node;
            }
            None => self.nodes.push(node),
        }
    }

    pub fn pid(&self, id: &str) -> u32 {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.child.as_ref())
            .map(Child::id)
            .expect("node runs")
    }

    pub fn signal(&self, id: &str, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid(id).to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {id}");
    }

    /// kill -9, and reap.
    pub fn kill9(&mut self, id: &str) {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("known node");
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for a node process to exit by itself.
    pub fn wait_exit(&mut self, id: &str, timeout: Duration) -> std::process::ExitStatus {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("known node");
        let c = n.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                n.child = None;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{id} did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self, id: &str) -> String {
        let n = self.nodes.iter().find(|n| n.id == id).expect("known node");
        std::fs::read_to_string(&n.log).unwrap_or_default()
    }

    /// Every node's audit log ([`crate::audit`]), read now: what each
    /// did as master.
    pub fn audit(&self) -> Vec<crate::audit::Entry> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let path = self.path(&format!("{}.audit.jsonl", n.id));
            out.extend(crate::audit::read(&path).expect("audit log readable"));
        }
        out
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}\n", n.id, self.log(&n.id)))
            .collect()
    }

    /// A CLI command against the cluster (`submit`, `status`, ...).
    pub fn cli_command(&self, cmd: &str, args: &[&str]) -> Command {
        self.cli_command_in(Command::new(&self.bin), cmd, args)
    }

    /// [`Cluster::cli_command`] run on test host `host`.
    pub fn cli_command_on(&self, host: &str, cmd: &str, args: &[&str]) -> Command {
        self.cli_command_in(self.net().command(host, &self.bin), cmd, args)
    }

    fn cli_command_in(&self, mut c: Command, cmd: &str, args: &[&str]) -> Command {
        c.envs(self.env.iter().map(|(k, v)| (k, v)))
            .args([cmd, "--zk", &self.zk_connect(), "--cluster", &self.cluster])
            .arg("--certs")
            .arg(&self.certs)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs a CLI command to its end.
    pub fn cli(&self, cmd: &str, args: &[&str]) -> Output {
        self.cli_command(cmd, args).output().expect("cli runs")
    }

    pub fn layout(&self) -> Layout {
        let acl = match self.zk_tls {
            true => coord::AclMode::Cluster,
            false => coord::AclMode::Open,
        };
        Layout::new(&self.cluster).with_acl(acl)
    }

    pub async fn zk(&self) -> coord::ZkClient {
        // Over TLS the test's session is a node's: nothing else may read
        // the cluster's znodes.
        let tls = self.zk_tls.then(|| {
            let id =
                crate::transport::tls::Identity::node(&self.certs, Some("test-harness"), || {
                    "test-harness".into()
                })
                .expect("the harness's certificate");
            crate::client::zk_tls(&id, &self.certs)
        });
        coord::connect_with(&self.zk_connect(), Duration::from_secs(10), tls.as_ref())
            .await
            .expect("test's ZooKeeper session")
    }

    /// Waits until `n` workers are registered.
    pub async fn workers(&self, zk: &coord::ZkClient, n: usize, timeout: Duration) {
        self.children(zk, &self.layout().workers(), n, timeout)
            .await;
    }

    /// Waits until the znode `path` has at least `n` children.
    pub async fn children(&self, zk: &coord::ZkClient, path: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while zk.list_children(path).await.map(|w| w.len()).unwrap_or(0) < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} children of {path} after {timeout:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The committed shards of job `job` as ZooKeeper holds them now, read
    /// from its commit records (a shard held by two records appears twice).
    pub async fn committed(
        &self,
        zk: &coord::ZkClient,
        job: &str,
    ) -> Vec<(crate::core::ShardKey, coord::ShardRecord)> {
        let path = self.layout().job(job);
        let done = format!("{path}/done");
        let mut out = Vec::new();
        // A compact job's records are its own children; another's are in
        // the buckets of its `done`.
        let mut parents = vec![path.clone()];
        for bucket in zk.list_children(&done).await.unwrap_or_default() {
            parents.push(format!("{done}/{bucket}"));
        }
        for bucket in parents {
            for name in zk.list_children(&bucket).await.unwrap_or_default() {
                if bucket == path && name.parse::<coord::RecordName>().is_err() {
                    continue;
                }
                if let Ok((data, _)) = zk.get_data(&format!("{bucket}/{name}")).await {
                    out.extend(
                        coord::commit_entries(&name, &data)
                            .unwrap_or_else(|e| panic!("garbage commit {bucket}/{name}: {e}")),
                    );
                }
            }
        }
        out
    }

    /// Waits until at least `n` shards of job `job` are committed.
    pub async fn committed_at_least(
        &self,
        zk: &coord::ZkClient,
        job: &str,
        n: usize,
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        while self.committed(zk, job).await.len() < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} shards of {job} committed after {timeout:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publishes `info` as `/master` from the test's own session `zk`, as
    /// a master that is not there would have (a crashed master's znode
    /// lingers until its session expires): for tests of what clients do
    /// when the published address does not answer. Gone when `zk` closes.
    pub async fn publish_master(&self, zk: &coord::ZkClient, info: &MasterInfo) {
        let layout = self.layout();
        coord::ensure_path(zk, layout.root(), layout.acl())
            .await
            .expect("cluster root");
        let path = layout.master();
        let data = coord::encode_record(&path, info).expect("record");
        zk.create(&path, &data, &layout.acl().discovery())
            .await
            .expect("publish /master");
    }

    /// Writes job `id`'s record into ZooKeeper as a master would, without
    /// any master knowing of it: for tests of jobs durable in ZooKeeper
    /// that the master serving did not write (a create whose answer was
    /// lost).
    pub async fn plant_job(&self, zk: &coord::ZkClient, id: &str, record: &coord::JobRecord) {
        let layout = self.layout();
        coord::ensure_path(zk, &layout.jobs(), layout.acl())
            .await
            .expect("the jobs' parent");
        let path = layout.job(id);
        let data = coord::encode_record(&path, record).expect("record");
        zk.create(&path, &data, &layout.acl().persistent())
            .await
            .expect("the job's record");
    }

    /// Writes bytes as job `id`'s record, as no master would: for tests of
    /// records that do not decode (a newer version's, or corrupt).
    pub async fn plant_garbage(&self, zk: &coord::ZkClient, id: &str, data: &[u8]) {
        let layout = self.layout();
        coord::ensure_path(zk, &layout.jobs(), layout.acl())
            .await
            .expect("the jobs' parent");
        zk.create(&layout.job(id), data, &layout.acl().persistent())
            .await
            .expect("the job's record");
    }

    /// Writes `data` at `path` (a persistent znode, its parent made if
    /// missing), as no node would: a registration of a node of another
    /// release, a feature level.
    pub async fn plant(&self, zk: &coord::ZkClient, path: &str, data: &[u8]) {
        let layout = self.layout();
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        coord::ensure_path(zk, parent, layout.acl())
            .await
            .expect("the parent");
        zk.create(path, data, &layout.acl().persistent())
            .await
            .expect("the znode");
    }

    /// Waits until a master with an epoch other than `not` is published.
    pub async fn master(
        &self,
        zk: &coord::ZkClient,
        not: Option<u64>,
        timeout: Duration,
    ) -> MasterInfo {
        match coord::wait_for_master(zk, &self.layout(), not, timeout).await {
            Ok(Some(m)) => m,
            other => panic!(
                "no new master within {timeout:?}: {other:?}\n{}",
                self.logs()
            ),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for s in &mut self.servers {
            s.kill();
        }
        drop(self.s3.take());
        // RINGLEADER_KEEP_TEST_DIRS=1 keeps logs and data for a post-mortem.
        if std::env::var_os("RINGLEADER_KEEP_TEST_DIRS").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

/// A command running in the background with its output in files, so that
/// a test can act while it runs; killed if dropped before [`Background::wait`].
pub struct Background {
    child: Option<Child>,
    what: String,
    out: PathBuf,
    err: PathBuf,
}

impl Background {
    /// Starts `cmd` with stdout and stderr in `dir/<name>.out` and `.err`.
    pub fn start(mut cmd: Command, dir: &Path, name: &str) -> Background {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let what = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Background {
            child: Some(child),
            what,
            out,
            err,
        }
    }

    /// Waits for the end (failing the test after `timeout`) and returns
    /// the exit status, stdout and stderr.
    pub fn wait(mut self, timeout: Duration) -> (std::process::ExitStatus, String, String) {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not end within {timeout:?}; stderr:\n{}",
                    self.what,
                    std::fs::read_to_string(&self.err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        (status, read(&self.out), read(&self.err))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The lines a child process writes to a pipe, read on a thread of their
/// own, for a test to wait for the one it needs.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    /// Reads `pipe` (a child's stdout or stderr) line by line until it ends.
    pub fn of(pipe: impl std::io::Read + Send + 'static) -> Lines {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The first value `f` makes of a line from now on; panics with every
    /// line seen if none comes within `timeout` of the last line.
    pub fn until<T>(&mut self, timeout: Duration, mut f: impl FnMut(&str) -> Option<T>) -> T {
        loop {
            let line = self
                .rx
                .recv_timeout(timeout)
                .unwrap_or_else(|e| panic!("no line wanted came ({e}); seen: {:#?}", self.seen));
            let found = f(&line);
            self.seen.push(line);
            if let Some(v) = found {
                return v;
            }
        }
    }
}

/// Polls `cond` every 20 ms until it holds, failing after `timeout` with `what`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn assert_same_file(a: &Path, b: &Path) {
    let x = std::fs::read(a).unwrap_or_else(|e| panic!("{}: {e}", a.display()));
    let y = std::fs::read(b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
    assert!(
        x == y,
        "{} and {} differ ({} vs {} bytes)",
        a.display(),
        b.display(),
        x.len(),
        y.len()
    );
}

/// A loopback endpoint that dials with `identity` (for raw requests).
pub fn dialer(identity: &crate::transport::tls::Identity) -> crate::transport::Endpoint {
    crate::transport::endpoint(
        "127.0.0.1:0".parse().expect("a literal address"),
        identity,
        false,
        crate::transport::LINK_TIMEOUT,
    )
    .expect("a dialing endpoint")
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn client_config(c: &Cluster) -> crate::ClientConfig {
    let mut cfg = crate::ClientConfig::new(c.zk_connect(), c.cluster.clone(), c.certs.clone());
    cfg.master_wait = Duration::from_secs(30);
    cfg.zk_tls = c.zk_tls;
    cfg
}

pub use crate::prom::{http_get, url_encode};

/// A TCP proxy that can cut the network between a node and a server: while
/// cut, every connection through it is closed and new ones are closed at
/// once, as a partition would look to both sides.
pub struct Proxy {
    addr: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// 0: off; 1: the next request is forwarded, then...; 2: ...the next
    /// reply is dropped and the connection cut.
    lose: std::sync::Arc<std::sync::atomic::AtomicU8>,
    lost: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Milliseconds every reply is held before it is passed on (0: none).
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Replies held so.
    delayed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    /// Listens on a free loopback port, forwarding to `upstream`.
    pub fn start(upstream: &str) -> Proxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let lose = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delayed = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_string();
        let (c, g) = (cut.clone(), generation.clone());
        let (lose2, lost2) = (lose.clone(), lost.clone());
        let (delay2, delayed2) = (delay_ms.clone(), delayed.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let my_gen = g.load(Ordering::SeqCst);
                for (request, mut from, mut to) in [
                    (
                        true,
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (false, server, client),
                ] {
                    let g = g.clone();
                    let (lose, lost) = (lose2.clone(), lost2.clone());
                    let (delay, delayed) = (delay2.clone(), delayed2.clone());
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            if g.load(Ordering::SeqCst) != my_gen {
                                break;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    // The reply to a forwarded request is
                                    // lost: the request may have been applied.
                                    if !request
                                        && lose
                                            .compare_exchange(
                                                2,
                                                0,
                                                Ordering::SeqCst,
                                                Ordering::SeqCst,
                                            )
                                            .is_ok()
                                    {
                                        lost.fetch_add(1, Ordering::SeqCst);
                                        g.fetch_add(1, Ordering::SeqCst);
                                        break;
                                    }
                                    // A slow server: its replies come late.
                                    let hold = delay.load(Ordering::SeqCst);
                                    if !request && hold > 0 {
                                        delayed.fetch_add(1, Ordering::SeqCst);
                                        std::thread::sleep(Duration::from_millis(hold));
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                    if request {
                                        let _ = lose.compare_exchange(
                                            1,
                                            2,
                                            Ordering::SeqCst,
                                            Ordering::SeqCst,
                                        );
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            addr,
            cut,
            generation,
            lose,
            lost,
            delay_ms,
            delayed,
        }
    }

    /// Holds every reply `delay` before passing it on (zero: at once), as
    /// a slow or overloaded server would answer.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// How many replies were held by [`Proxy::set_delay`].
    pub fn replies_delayed(&self) -> u64 {
        self.delayed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forwards the next request, then drops its reply and cuts the
    /// connection: the client cannot know whether the request was applied
    /// (a write's outcome is unknown). The node reconnects as after any cut.
    pub fn lose_next_reply(&self) {
        self.lose.store(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops losing replies (undoes an unused [`Proxy::lose_next_reply`]).
    pub fn keep_replies(&self) {
        self.lose.store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many replies were lost so.
    pub fn replies_lost(&self) -> u64 {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Where nodes should connect.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Cuts every connection and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.cut.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The environment that runs a process with its wall clock `offset`
/// (libfaketime's syntax: `+1h`, `-30s`) and its monotonic clock untouched,
/// or `None` where libfaketime is not installed (`scripts/setup` installs it).
pub fn skewed_clock(offset: &str) -> Option<Vec<(String, String)>> {
    let lib = std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())?;
    Some(vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        ("FAKETIME".into(), offset.to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ])
}

/// A UDP proxy in front of a node's QUIC port that can drop the packets of
/// chosen peers (by their source address), as a partition between that node
/// and those peers would; nothing else changes for them.
pub struct UdpProxy {
    addr: String,
    blocked: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<std::net::SocketAddr>>>,
}

impl UdpProxy {
    /// Listens on a free loopback port, forwarding to `upstream`.
    pub fn start(upstream: std::net::SocketAddr) -> UdpProxy {
        use std::collections::HashMap;
        use std::net::{SocketAddr, UdpSocket};
        use std::sync::{Arc, Mutex};
        let front = UdpSocket::bind("127.0.0.1:0").expect("udp proxy binds");
        let addr = front.local_addr().expect("udp proxy address").to_string();
        let blocked: Arc<Mutex<std::collections::HashSet<SocketAddr>>> = Arc::default();
        let b = blocked.clone();
        std::thread::spawn(move || {
            let mut backs: HashMap<SocketAddr, UdpSocket> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            loop {
                // Errors here are ICMP reports about earlier sends (a peer
                // that died): not a reason to stop forwarding.
                let Ok((n, peer)) = front.recv_from(&mut buf) else {
                    continue;
                };
                if b.lock().map(|s| s.contains(&peer)).unwrap_or(false) {
                    continue;
                }
                let back = match backs.get(&peer) {
                    Some(s) => s,
                    None => {
                        let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
                            continue;
                        };
                        if s.connect(upstream).is_err() {
                            continue;
                        }
                        let (Ok(reader), Ok(front2)) = (s.try_clone(), front.try_clone()) else {
                            continue;
                        };
                        let b2 = b.clone();
                        std::thread::spawn(move || {
                            let mut buf = vec![0u8; 65536];
                            loop {
                                // ECONNREFUSED while the upstream node restarts: keep going.
                                let Ok(n) = reader.recv(&mut buf) else {
                                    std::thread::sleep(Duration::from_millis(5));
                                    continue;
                                };
                                if b2.lock().map(|s| s.contains(&peer)).unwrap_or(false) {
                                    continue;
                                }
                                let _ = front2.send_to(&buf[..n], peer);
                            }
                        });
                        backs.entry(peer).or_insert(s)
                    }
                };
                let _ = back.send(&buf[..n]);
            }
        });
        UdpProxy { addr, blocked }
    }

    /// The address peers should dial.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Drops (or lets through again) every packet from and to `peer`.
    pub fn block(&self, peer: std::net::SocketAddr, blocked: bool) {
        if let Ok(mut s) = self.blocked.lock() {
            if blocked {
                s.insert(peer);
            } else {
                s.remove(&peer);
            }
        }
    }
}

/// A free UDP port on loopback (bound then released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port")
}
