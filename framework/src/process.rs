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
