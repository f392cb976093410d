//! A private Prometheus server beside a local cluster (`local --prometheus`)
//! and for tests: Debian's `prometheus`, started directly with a generated
//! configuration that scrapes the given targets every second and loads
//! Ringleader's alert rules. Stopped when its handle is dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ringleader's alert rules (`dashboards/alerts.yml`).
pub const ALERT_RULES: &str = include_str!("../../dashboards/alerts.yml");

/// Errors of starting or asking Prometheus.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    /// The binary is missing or could not start.
    #[error("cannot start prometheus (run scripts/setup, or apt-get install prometheus): {0}")]
    Start(std::io::Error),
    /// File or socket trouble.
    #[error("prometheus: {0}")]
    Io(#[from] std::io::Error),
    /// It did not scrape every target in time.
    #[error("prometheus did not scrape all {0} targets in time")]
    NotReady(usize),
}

/// A running Prometheus.
#[derive(Debug)]
pub struct PromServer {
    child: Option<Child>,
    addr: String,
}

/// A plain HTTP/1.0 GET on loopback; returns (status code, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Percent-encodes a query parameter.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl PromServer {
    /// Starts Prometheus on `addr` with its data under `dir`, scraping `targets`
    /// (host:port) every second, and waits until every target was scraped.
    pub fn start(dir: &Path, addr: &str, targets: &[String]) -> Result<Self, PromError> {
        std::fs::create_dir_all(dir)?;
        let rules = dir.join("alerts.yml");
        std::fs::write(&rules, ALERT_RULES)?;
        let list = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: ringleader\n    static_configs:\n      - targets: [{list}]\n",
                rules.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(PromError::Start)?;
        let server = PromServer {
            child: Some(child),
            addr: addr.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.scalar("count(up == 1)") != Some(targets.len() as f64) {
            if Instant::now() > deadline {
                return Err(PromError::NotReady(targets.len()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(server)
    }

    /// Its address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Evaluates `expr` and returns its single value, if it has one.
    pub fn scalar(&self, expr: &str) -> Option<f64> {
        let (code, body) = http_get(
            &self.addr,
            &format!("/api/v1/query?query={}", url_encode(expr)),
        )
        .ok()?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::process::terminate(&mut c, Duration::from_secs(10));
        }
    }
}
