//! Several hosts on one machine: a network namespace per host, all on one
//! bridge, each with its own address in a subnet of its own harness. The
//! test process sits on the bridge too (address `.254`), so it can reach
//! every host (ZooKeeper, for its own checks), and hosts reach each other
//! only through the bridge, as machines on a switch would.
//!
//! A host's link can be cut (`ip link set down` on the bridge's side) and
//! given a delay and a loss rate. This kernel has no netem, so a host with
//! an emulated link is wired to the bridge through two TAP devices and two
//! threads of this process that copy Ethernet frames across, holding each
//! for the one-way delay and dropping the chosen share. Every packet of
//! that host (ZooKeeper, QUIC, store, ARP) takes the same path; nothing
//! has to be pointed at a proxy.
//!
//! Names carry the owning process id (`rl<pid:06x><net:02x>...`), and a
//! lock file per subnet under `/tmp/ringleader-net/` says which process
//! holds it: sets left by a process that died are removed before a new
//! harness takes the subnet. Dropping a [`Net`] kills every process left in
//! its namespaces and removes them, their links and the bridge, also when
//! the test panics.
//!
//! Needs root (CI runs as root). Elsewhere [`Net::new`] returns `None` and
//! the test says it was skipped; with `CI=true` a harness that cannot be
//! made fails the test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LOCK_DIR: &str = "/tmp/ringleader-net";
/// Subnets are `10.77.<k>.0/24` for `k` in `1..=SUBNETS`.
const SUBNETS: u8 = 200;

/// Delay and loss of a host's emulated link, each way.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkParams {
    /// Held this long before it is passed on, each way: a round trip to a
    /// host on a plain link takes twice this.
    pub one_way_delay: Duration,
    /// Share of frames dropped, each way (0.0 to 1.0).
    pub loss: f64,
}

struct Host {
    name: String,
    ns: String,
    ip: Ipv4Addr,
    /// The link's end on the bridge, in the root namespace.
    bridge_end: String,
    wire: Option<Wire>,
}

/// See the module doc.
pub struct Net {
    k: u8,
    tag: String,
    bridge: String,
    hosts: Vec<Host>,
    lock: PathBuf,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn output(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The owner's pid of a name made by a harness: `rl` + 6 hex digits.
fn owner(name: &str) -> Option<u32> {
    let hex = name.strip_prefix("rl")?.get(..6)?;
    u32::from_str_radix(hex, 16).ok()
}

/// Kills the processes in `ns` and deletes it.
fn remove_ns(ns: &str) {
    for pid in output(&["ip", "netns", "pids", ns]).split_whitespace() {
        let _ = run(&["kill", "-9", pid]);
    }
    let _ = run(&["ip", "netns", "del", ns]);
}

/// Removes namespaces, links and lock files whose owning process is gone.
fn remove_stale() {
    for line in output(&["ip", "netns", "list"]).lines() {
        let ns = line.split_whitespace().next().unwrap_or_default();
        if owner(ns).is_some_and(|pid| !alive(pid)) {
            remove_ns(ns);
        }
    }
    for line in output(&["ip", "-o", "link", "show"]).lines() {
        // "12: rl00abcd01b: <...>" or "13: rl00abcd0101r@if12: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or_default();
        if owner(name).is_some_and(|pid| !alive(pid)) {
            let _ = run(&["ip", "link", "del", name]);
        }
    }
    if let Ok(entries) = std::fs::read_dir(LOCK_DIR) {
        for e in entries.flatten() {
            let pid = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            if pid.is_none_or(|p| !alive(p)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl Net {
    /// A new bridge and subnet, or `None` (with the reason on stderr) where
    /// namespaces cannot be made and `CI` is not `true`.
    pub fn new(test: &str) -> Option<Net> {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        match Self::try_new() {
            Ok(net) => Some(net),
            Err(e) if ci => panic!("{test}: cannot make test hosts in CI: {e}"),
            Err(e) => {
                eprintln!("SKIPPED {test}: it needs network namespaces ({e})");
                None
            }
        }
    }

    fn try_new() -> Result<Net, String> {
        if !is_root() {
            return Err("not running as root".into());
        }
        run(&["ip", "netns", "list"]).map_err(|e| format!("iproute2 is missing? {e}"))?;
        remove_stale();
        std::fs::create_dir_all(LOCK_DIR).map_err(|e| format!("{LOCK_DIR}: {e}"))?;
        let pid = std::process::id();
        // Spread parallel harnesses of one process over the subnets.
        let start = (pid as u64 + NEXT.fetch_add(1, Ordering::Relaxed) * 7) % SUBNETS as u64;
        for i in 0..SUBNETS as u64 {
            let k = ((start + i) % SUBNETS as u64) as u8 + 1;
            let lock = PathBuf::from(format!("{LOCK_DIR}/{k}"));
            let Ok(mut f) = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            else {
                continue;
            };
            use std::io::Write;
            f.write_all(pid.to_string().as_bytes())
                .map_err(|e| format!("{}: {e}", lock.display()))?;
            let tag = format!("rl{pid:06x}{k:02x}");
            let net = Net {
                k,
                bridge: format!("{tag}b"),
                tag,
                hosts: Vec::new(),
                lock,
            };
            // From here on, Drop removes whatever was made.
            let b = net.bridge.clone();
            run(&["ip", "link", "add", &b, "type", "bridge"])?;
            run(&["ip", "link", "set", &b, "up"])?;
            let me = format!("{}/24", net.controller());
            run(&["ip", "addr", "add", &me, "dev", &b])?;
            return Ok(net);
        }
        Err(format!("all {SUBNETS} test subnets are taken"))
    }

    /// The test process's own address on the bridge.
    pub fn controller(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.k, 254)
    }

    /// Adds a host with a plain link (a veth pair) and returns its address.
    pub fn host(&mut self, name: &str) -> Ipv4Addr {
        self.add(name, None)
    }

    /// Adds a host whose link goes through this process, with a delay and
    /// a loss rate that [`Net::set_link`] can change.
    pub fn emulated_host(&mut self, name: &str, params: LinkParams) -> Ipv4Addr {
        self.add(name, Some(params))
    }

    fn add(&mut self, name: &str, emulated: Option<LinkParams>) -> Ipv4Addr {
        assert!(self.hosts.len() < 200, "a harness has at most 200 hosts");
        assert!(
            self.hosts.iter().all(|h| h.name != name),
            "host {name} exists"
        );
        let i = self.hosts.len() as u8 + 1;
        let ip = Ipv4Addr::new(10, 77, self.k, i);
        let ns = format!("{}{i:02x}-{name}", self.tag);
        let bridge_end = format!("{}{i:02x}r", self.tag);
        let host_end = format!("{}{i:02x}h", self.tag);
        let mut host = Host {
            name: name.to_string(),
            ns: ns.clone(),
            ip,
            bridge_end: bridge_end.clone(),
            wire: None,
        };
        let made = (|| -> Result<(), String> {
            run(&["ip", "netns", "add", &ns])?;
            match emulated {
                None => run(&[
                    "ip",
                    "link",
                    "add",
                    &bridge_end,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &host_end,
                ])?,
                Some(params) => host.wire = Some(Wire::new(&bridge_end, &host_end, params)?),
            }
            run(&[
                "ip",
                "link",
                "set",
                &bridge_end,
                "master",
                &self.bridge,
                "up",
            ])?;
            run(&["ip", "link", "set", &host_end, "netns", &ns])?;
            let cidr = format!("{ip}/24");
            run(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", &host_end])?;
            run(&["ip", "-n", &ns, "link", "set", &host_end, "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])
        })();
        // Pushed first, so that Drop removes a half-made host too.
        self.hosts.push(host);
        if let Err(e) = made {
            panic!("cannot make test host {name}: {e}");
        }
        ip
    }

    fn find(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no test host {name}"))
    }

    /// A host's address.
    pub fn ip(&self, name: &str) -> Ipv4Addr {
        self.find(name).ip
    }

    /// A host's network namespace (for `ip netns exec`).
    pub fn netns(&self, name: &str) -> &str {
        &self.find(name).ns
    }

    /// A command that runs `program` on host `name`.
    pub fn command(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        crate::process::command_in(Some(self.netns(name)), program)
    }

    /// Cuts a host off the bridge (its link goes down: packets to and
    /// from it are lost, as with a pulled cable).
    pub fn cut(&self, name: &str) {
        let end = &self.find(name).bridge_end;
        run(&["ip", "link", "set", end, "down"]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Connects a cut host again.
    pub fn heal(&self, name: &str) {
        let end = &self.find(name).bridge_end;
        run(&["ip", "link", "set", end, "up"]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Changes the delay and loss of a host made by [`Net::emulated_host`].
    pub fn set_link(&self, name: &str, params: LinkParams) {
        let wire = self.find(name).wire.as_ref();
        let wire = wire.unwrap_or_else(|| panic!("{name} has no emulated link"));
        *wire.params.lock().unwrap_or_else(|p| p.into_inner()) = params;
    }

    /// The round trip from this process to a host, measured: the fastest
    /// of `n` TCP connections to a closed port (answered by a reset after
    /// one round trip). Waits at most 2 s per try.
    pub fn rtt(&self, name: &str, n: usize) -> Duration {
        let addr = SocketAddr::new(IpAddr::V4(self.ip(name)), 9);
        let mut best = Duration::MAX;
        for _ in 0..n {
            let t = Instant::now();
            let r = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2));
            if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused) {
                best = best.min(t.elapsed());
            }
        }
        best
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            remove_ns(&h.ns);
            let _ = run(&["ip", "link", "del", &h.bridge_end]);
        }
        // Closing the TAP devices ends their copy threads.
        for h in &mut self.hosts {
            if let Some(w) = h.wire.take() {
                w.stop.store(true, Ordering::SeqCst);
            }
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
        let _ = std::fs::remove_file(&self.lock);
    }
}

/// Two TAP devices and a thread per direction copying frames between them.
struct Wire {
    params: Arc<Mutex<LinkParams>>,
    stop: Arc<AtomicBool>,
}

impl Wire {
    /// Makes TAP devices `outer` (for the bridge) and `inner` (for the
    /// host's namespace); moving them keeps this process's descriptors.
    fn new(outer: &str, inner: &str, params: LinkParams) -> Result<Wire, String> {
        let open = |name: &str| {
            tun_tap::Iface::without_packet_info(name, tun_tap::Mode::Tap)
                .map(Arc::new)
                .map_err(|e| format!("cannot make TAP device {name}: {e}"))
        };
        let (a, b) = (open(outer)?, open(inner)?);
        let params = Arc::new(Mutex::new(params));
        let stop = Arc::new(AtomicBool::new(false));
        for (from, to, seed) in [(a.clone(), b.clone(), 1u64), (b, a, 2u64)] {
            let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
            let (p, s) = (params.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = seed ^ (std::process::id() as u64) << 17 | 1;
                let mut buf = vec![0u8; 65536];
                while !s.load(Ordering::SeqCst) {
                    // An error: the device is gone (its namespace deleted).
                    let Ok(n) = from.recv(&mut buf) else { break };
                    let LinkParams {
                        one_way_delay,
                        loss,
                    } = *p.lock().unwrap_or_else(|e| e.into_inner());
                    // xorshift: a loss draw per frame.
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    if loss > 0.0 && (rng % 1_000_000) as f64 / 1e6 < loss {
                        continue;
                    }
                    if tx
                        .send((Instant::now() + one_way_delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            });
            let s = stop.clone();
            std::thread::spawn(move || {
                while let Ok((due, frame)) = rx.recv() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if to.send(&frame).is_err() && s.load(Ordering::SeqCst) {
                        break;
                    }
                }
            });
        }
        Ok(Wire { params, stop })
    }
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn owner_pid_is_read_from_harness_names_only() {
        assert_eq!(owner("rl00abcd07b"), Some(0xabcd));
        assert_eq!(owner("rl00abcd0702h"), Some(0xabcd));
        assert_eq!(owner("rl00abcd0703-zk"), Some(0xabcd));
        assert_eq!(owner("eth0"), None);
        assert_eq!(owner("rlxyz"), None);
        assert_eq!(owner("rl12"), None);
    }
}
