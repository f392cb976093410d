//! Private ZooKeeper servers for `local` and for tests: Debian's package,
//! started directly with `QuorumPeerMain`, data in a temp dir, heap capped,
//! autopurge on, four-letter words `ruok`, `mntr`, `conf`, `stat` enabled.
//! A server is stopped (SIGTERM, then SIGKILL) when its handle is dropped.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's package puts the server jar.
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
/// Netty's codec, which Debian's `zookeeper.jar` manifest does not list.
const NETTY_CODEC_JAR: &str = "/usr/share/java/netty-codec.jar";

/// Errors of starting a server.
#[derive(Debug, thiserror::Error)]
pub enum ZkServerError {
    /// The package is not installed.
    #[error("ZooKeeper is not installed ({ZOOKEEPER_JAR} missing): run `scripts/setup` or `apt-get install zookeeper`")]
    NotInstalled,
    /// File or process trouble.
    #[error("cannot start ZooKeeper: {0}")]
    Io(#[from] std::io::Error),
    /// It did not answer `ruok` in time.
    #[error("ZooKeeper on port {port} did not answer within {secs} s; its log: {log}")]
    NotReady {
        /// The client port.
        port: u16,
        /// Seconds waited.
        secs: u64,
        /// Log file.
        log: String,
    },
}

/// Settings of a private server.
#[derive(Debug, Clone)]
pub struct ZkServerOptions {
    /// ZooKeeper's tick; session timeouts are 2 to 20 ticks.
    pub tick_ms: u32,
    /// Java heap cap.
    pub heap_mb: u32,
    /// `maxClientCnxns` per client IP.
    pub max_client_cnxns: u32,
    /// Also serve ZooKeeper's TLS client port (`secureClientPort`) with
    /// x509 authentication: a directory holding `zookeeper.pem` (key and
    /// certificate, from `crate::pki::issue_zookeeper`) and `ca.pem` (the CAs
    /// whose client certificates it accepts). In an ensemble, the servers'
    /// quorum and election traffic then goes over TLS too, with the same
    /// certificate.
    pub tls: Option<PathBuf>,
}

impl Default for ZkServerOptions {
    /// A tick of 200 ms (so that 2 s sessions are granted), or
    /// `RINGLEADER_ZK_TICK_MS` (2000 is Debian's stock `zoo.cfg`, whose
    /// shortest session is then 4 s).
    fn default() -> Self {
        let tick_ms = std::env::var("RINGLEADER_ZK_TICK_MS")
            .ok()
            .and_then(|t| t.parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(200);
        ZkServerOptions {
            tick_ms,
            heap_mb: 256,
            max_client_cnxns: 2000,
            tls: None,
        }
    }
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where a server runs: its address and, on a test host of the
/// multi-host harness, the network namespace it is started in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHost {
    /// The address it binds and clients dial.
    pub ip: IpAddr,
    /// `ip netns exec` this namespace first.
    pub netns: Option<String>,
}

impl ServerHost {
    /// This machine's loopback (free ports are picked).
    pub fn loopback() -> Self {
        ServerHost {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
        }
    }

    /// A host of its own (a namespace): ZooKeeper's usual ports are free there.
    pub fn netns(ip: IpAddr, netns: impl Into<String>) -> Self {
        ServerHost {
            ip,
            netns: Some(netns.into()),
        }
    }

    /// Client, quorum and election ports: ZooKeeper's own on a host of
    /// its own, free ones on a shared loopback.
    fn ports(&self) -> std::io::Result<(u16, u16, u16)> {
        if self.netns.is_some() {
            Ok((2181, 2888, 3888))
        } else {
            Ok((free_port()?, free_port()?, free_port()?))
        }
    }
}

/// One running server process.
#[derive(Debug)]
pub struct ZkServer {
    child: Option<Child>,
    addr: SocketAddr,
    /// The TLS client port's address, when it serves one.
    secure: Option<SocketAddr>,
    netns: Option<String>,
    dir: PathBuf,
}

/// Sends a four-letter-word command to a server on this machine's
/// loopback and returns the answer.
pub fn four_letter(port: u16, cmd: &str) -> std::io::Result<String> {
    four_letter_at(SocketAddr::from(([127, 0, 0, 1], port)), cmd)
}

/// Sends a four-letter-word command to the server at `addr`.
pub fn four_letter_at(addr: SocketAddr, cmd: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(cmd.as_bytes())?;
    let mut out = String::new();
    match s.read_to_string(&mut out) {
        Ok(_) => Ok(out),
        // Netty's factory (the TLS port's) answers, then may leave the
        // connection open: what came before the read timeout is the answer.
        Err(_) if !out.is_empty() => Ok(out),
        Err(e) => Err(e),
    }
}

fn spawn(
    dir: &Path,
    cfg: &str,
    opts: &ZkServerOptions,
    netns: Option<&str>,
) -> Result<Child, ZkServerError> {
    if !Path::new(ZOOKEEPER_JAR).exists() {
        return Err(ZkServerError::NotInstalled);
    }
    std::fs::create_dir_all(dir)?;
    let cfg_path = dir.join("zoo.cfg");
    std::fs::write(&cfg_path, cfg)?;
    let log = std::fs::File::create(dir.join("server.log"))?;
    let child = crate::process::command_in(netns, "java")
        .arg(format!("-Xmx{}m", opts.heap_mb))
        .arg("-XX:+UseSerialGC")
        // The client compiler only: the server compiler (C2) spends most
        // of a core for minutes after start on this server's hot loops,
        // which on a 2-core machine is the core the cluster needs. C1's
        // code is slower at bulk reads (a takeover reading back tens of
        // MB of commit records), faster for everything a running cluster
        // of short-lived servers does (see benches/RESULTS.md).
        .arg("-XX:TieredStopAtLevel=1")
        // An operator's or a benchmark's own JVM options, last so that
        // they win (`-XX:TieredStopAtLevel=4` gives the server compiler
        // back, for a long-lived server).
        .args(
            std::env::var("RINGLEADER_ZK_JAVA_OPTS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .arg("-Dzookeeper.admin.enableServer=false")
        .arg(format!("-Dzookeeper.log.dir={}", dir.display()))
        .arg("-cp")
        // Debian's jar leaves Netty's codec off its class path; the Netty
        // factory (the TLS port's) needs it (package libnetty-java, a
        // dependency of zookeeper).
        .arg(format!("{ZOOKEEPER_JAR}:{NETTY_CODEC_JAR}"))
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok(child)
}

fn base_cfg(data: &Path, ip: IpAddr, port: u16, opts: &ZkServerOptions) -> String {
    format!(
        "tickTime={tick}\ndataDir={data}\nclientPort={port}\nclientPortAddress={ip}\n\
         minSessionTimeout={min}\nmaxSessionTimeout={max}\nmaxClientCnxns={cnx}\n\
         autopurge.snapRetainCount=3\nautopurge.purgeInterval=1\nadmin.enableServer=false\n\
         4lw.commands.whitelist=ruok,mntr,conf,stat,srvr,wchc,wchs,wchp\npreAllocSize=4096\nsnapCount=10000\n",
        tick = opts.tick_ms,
        data = data.display(),
        min = opts.tick_ms * 2,
        max = opts.tick_ms * 20,
        cnx = opts.max_client_cnxns,
    )
}

/// Opens the TLS client port in `cfg` when `opts` asks for it (ZooKeeper's
/// usual 2281 on a host of its own, a free port on loopback): its address.
fn tls_port(
    cfg: &mut String,
    opts: &ZkServerOptions,
    host: &ServerHost,
) -> std::io::Result<Option<SocketAddr>> {
    let Some(tls) = &opts.tls else {
        return Ok(None);
    };
    let port = if host.netns.is_some() {
        2281
    } else {
        free_port()?
    };
    cfg.push_str(&tls_cfg(tls, host.ip, port));
    Ok(Some(SocketAddr::new(host.ip, port)))
}

/// The TLS the private servers speak: TLS 1.3 with ChaCha20-Poly1305,
/// which the JVM runs fast in plain Java. The server runs on the JVM's
/// client compiler (see [`ZkServerOptions`]), which has no AES intrinsics:
/// with AES-GCM, a job of a million tasks (its tasks and its shards'
/// outputs, some 20 MiB through the TLS port) ran at 0.87 M tasks/s
/// against 1.08-1.15 M with ChaCha20 and 1.45 M over the plain port
/// (`cluster-bench --quick --only throughput`, shard size 10,000).
const TLS_SUITES: &str = "ssl.ciphersuites=TLS_CHACHA20_POLY1305_SHA256\n\
                          ssl.enabledProtocols=TLSv1.3\nssl.protocol=TLSv1.3\n";

/// The lines of `zoo.cfg` that open the TLS client port: Netty (the only
/// factory with TLS), PEM key and trust stores, client certificates
/// required, [`TLS_SUITES`], and the x509 provider, which makes a client's
/// certificate subject its id for ACLs (`x509:CN=ringleader-node`).
fn tls_cfg(dir: &Path, ip: IpAddr, port: u16) -> String {
    format!(
        "secureClientPort={port}\nsecureClientPortAddress={ip}\n\
         serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
         ssl.keyStore.location={key}\nssl.keyStore.type=PEM\n\
         ssl.trustStore.location={ca}\nssl.trustStore.type=PEM\n\
         ssl.clientAuth=need\n{TLS_SUITES}\
         authProvider.x509=org.apache.zookeeper.server.auth.X509AuthenticationProvider\n",
        key = dir.join("zookeeper.pem").display(),
        ca = dir.join("ca.pem").display(),
    )
}

/// The lines of `zoo.cfg` that put an ensemble's quorum and election
/// traffic under mutual TLS with the same certificate (it names every
/// server's address, and has client and server usage).
fn quorum_tls_cfg(dir: &Path) -> String {
    format!(
        "sslQuorum=true\n\
         ssl.quorum.keyStore.location={key}\nssl.quorum.keyStore.type=PEM\n\
         ssl.quorum.trustStore.location={ca}\nssl.quorum.trustStore.type=PEM\n\
         ssl.quorum.ciphersuites=TLS_CHACHA20_POLY1305_SHA256\n\
         ssl.quorum.enabledProtocols=TLSv1.3\nssl.quorum.protocol=TLSv1.3\n",
        key = dir.join("zookeeper.pem").display(),
        ca = dir.join("ca.pem").display(),
    )
}

/// Runs `start` (which picks free ports and waits for its servers) up to
/// three times: a port is released between being picked and being bound by
/// the JVM, and another process may take it meanwhile. `dir` is emptied
/// before each new try.
fn on_fresh_ports<T>(
    dir: &Path,
    mut start: impl FnMut() -> Result<T, ZkServerError>,
) -> Result<T, ZkServerError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match start() {
            Err(ZkServerError::NotReady { port, .. }) if tries < 3 => {
                eprintln!("ZooKeeper not ready (port {port}); starting it again on fresh ports");
                let _ = std::fs::remove_dir_all(dir);
            }
            other => return other,
        }
    }
}

impl ZkServer {
    /// Starts a standalone server with its data under `dir` and waits until
    /// it serves; like [`ZkEnsemble::start`], tries again on a fresh port
    /// (three tries) if it does not come up.
    pub fn start(dir: &Path, opts: &ZkServerOptions) -> Result<Self, ZkServerError> {
        Self::start_on(dir, &ServerHost::loopback(), opts)
    }

    /// [`ZkServer::start`] on a given host.
    pub fn start_on(
        dir: &Path,
        host: &ServerHost,
        opts: &ZkServerOptions,
    ) -> Result<Self, ZkServerError> {
        on_fresh_ports(dir, || Self::start_once(dir, host, opts))
    }

    fn start_once(
        dir: &Path,
        host: &ServerHost,
        opts: &ZkServerOptions,
    ) -> Result<Self, ZkServerError> {
        let (port, _, _) = host.ports()?;
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let mut cfg = base_cfg(&data, host.ip, port, opts);
        let secure = tls_port(&mut cfg, opts, host)?;
        let child = spawn(dir, &cfg, opts, host.netns.as_deref())?;
        let server = ZkServer {
            child: Some(child),
            addr: SocketAddr::new(host.ip, port),
            secure,
            netns: host.netns.clone(),
            dir: dir.to_path_buf(),
        };
        server.wait_ready(Duration::from_secs(30))?;
        Ok(server)
    }

    /// Waits until the server answers `ruok` with `imok` and reports a mode.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), ZkServerError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if four_letter_at(self.addr, "srvr").is_ok_and(|s| s.contains("Mode:")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ZkServerError::NotReady {
            port: self.addr.port(),
            secs: timeout.as_secs(),
            log: self.dir.join("server.log").display().to_string(),
        })
    }

    /// `<ip>:<port>`.
    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    /// `<ip>:<port>` of the TLS client port, if it serves one.
    pub fn secure_connect_string(&self) -> Option<String> {
        self.secure.map(|a| a.to_string())
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed or stopped server again, with its data and port.
    pub fn restart(&mut self) -> Result<(), ZkServerError> {
        if self.child.is_some() {
            return Ok(());
        }
        let cfg = std::fs::read_to_string(self.dir.join("zoo.cfg"))?;
        let opts = ZkServerOptions::default();
        self.child = Some(spawn(&self.dir, &cfg, &opts, self.netns.as_deref())?);
        Ok(())
    }

    /// Whether the server process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::process::terminate(&mut c, Duration::from_secs(5));
        }
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A 3-server ensemble (or any size) on loopback.
#[derive(Debug)]
pub struct ZkEnsemble {
    /// The servers, in `myid` order.
    pub servers: Vec<ZkServer>,
}

impl ZkEnsemble {
    /// Starts `n` servers under `dir` and waits until all serve. Ports are
    /// picked free and released before the servers bind them, so another
    /// process can take one in between: an ensemble that does not come up
    /// is started again on fresh ports (three tries).
    pub fn start(dir: &Path, n: usize, opts: &ZkServerOptions) -> Result<Self, ZkServerError> {
        Self::start_on(dir, &vec![ServerHost::loopback(); n], opts)
    }

    /// [`ZkEnsemble::start`] with server `i` on `hosts[i]`.
    pub fn start_on(
        dir: &Path,
        hosts: &[ServerHost],
        opts: &ZkServerOptions,
    ) -> Result<Self, ZkServerError> {
        on_fresh_ports(dir, || Self::start_once(dir, hosts, opts))
    }

    fn start_once(
        dir: &Path,
        hosts: &[ServerHost],
        opts: &ZkServerOptions,
    ) -> Result<Self, ZkServerError> {
        let ports: Vec<(u16, u16, u16)> = hosts
            .iter()
            .map(ServerHost::ports)
            .collect::<std::io::Result<_>>()?;
        let peers: String = ports
            .iter()
            .zip(hosts)
            .enumerate()
            .map(|(i, ((_, a, b), h))| format!("server.{}={}:{a}:{b}\n", i + 1, h.ip))
            .collect();
        let mut servers = Vec::new();
        for (i, ((port, _, _), host)) in ports.iter().zip(hosts).enumerate() {
            let sdir = dir.join(format!("zk{}", i + 1));
            let data = sdir.join("data");
            std::fs::create_dir_all(&data)?;
            std::fs::write(data.join("myid"), format!("{}\n", i + 1))?;
            let mut cfg = format!(
                "{}initLimit=20\nsyncLimit=10\n{peers}",
                base_cfg(&data, host.ip, *port, opts)
            );
            // Clients over TLS, and then the servers among themselves too.
            let secure = tls_port(&mut cfg, opts, host)?;
            if let Some(tls) = &opts.tls {
                cfg.push_str(&quorum_tls_cfg(tls));
            }
            let child = spawn(&sdir, &cfg, opts, host.netns.as_deref())?;
            servers.push(ZkServer {
                child: Some(child),
                addr: SocketAddr::new(host.ip, *port),
                secure,
                netns: host.netns.clone(),
                dir: sdir,
            });
        }
        // Dropping `servers` on an early return stops every server.
        for s in &servers {
            s.wait_ready(Duration::from_secs(30))?;
        }
        Ok(ZkEnsemble { servers })
    }

    /// Connect string of all servers.
    pub fn connect_string(&self) -> String {
        self.servers
            .iter()
            .map(ZkServer::connect_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}
