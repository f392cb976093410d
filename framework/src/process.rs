//! Stopping child processes the project starts (ZooKeeper, Prometheus,
//! nodes of `local`): SIGTERM, a grace period, then SIGKILL.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Sends SIGTERM to every child, waits up to `grace` for all of them, then
/// kills and reaps the ones still running.
pub fn terminate_all(children: &mut [Child], grace: Duration) {
    for c in children.iter() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
    }
    let deadline = Instant::now() + grace;
    for c in children.iter_mut() {
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// [`terminate_all`] for one child.
pub fn terminate(child: &mut Child, grace: Duration) {
    terminate_all(std::slice::from_mut(child), grace);
}

/// A command for `program`, run inside the network namespace `netns` when
/// one is given (`ip netns exec NS PROGRAM`: the namespace's own addresses
/// and routes; `ip` execs the program, so the child's pid is the
/// program's). Used by the multi-host test harness.
pub fn command_in(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}
