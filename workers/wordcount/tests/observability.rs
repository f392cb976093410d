#![allow(clippy::unwrap_used)]
//! Observability end to end: every role's scrape passes `promtool check
//! metrics`; a real Prometheus scrapes a cluster that ran a job, and every
//! dashboard panel's query and every metric named by panels and alert rules
//! has series. Alert rules are checked and unit-tested with promtool.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ringleader::zkserver::free_port;

fn dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards")
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dashboards())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/setup)");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn promtool_checks_config_rules_and_alert_tests() {
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "rules", "alerts.yml"],
        &["test", "rules", "alerts_test.yml"],
    ] {
        let (ok, out) = promtool(args, None);
        assert!(ok, "promtool {args:?}:\n{out}");
    }
}

/// Kills the Prometheus server when dropped.
struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query(prom: &str, expr: &str) -> serde_json::Value {
    let (code, body) =
        http_get(prom, &format!("/api/v1/query?query={}", url_encode(expr))).unwrap();
    assert_eq!(code, 200, "query {expr}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("ringleader_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn prometheus_scrapes_every_role_and_every_panel_has_data() {
    let mut c = cluster();
    let (corpus, _) = corpus(c.dir.path(), 2, 9);
    let ports: Vec<u16> = (0..3).map(|_| free_port().unwrap()).collect();
    let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
    c.node("m", &["--metrics-addr", &addr(0)]);
    rt().block_on(async {
        let zk = c.zk().await;
        let first = c.master(&zk, None, Duration::from_secs(30)).await;
        assert_eq!(first.node_id, "m");
    });
    c.node("w", &["--role", "worker", "--metrics-addr", &addr(1)]);
    c.node("cand", &["--role", "candidate", "--metrics-addr", &addr(2)]);
    // The master's own worker only takes shards no other worker can:
    // `w` must be connected to the master before the job comes, or it may
    // run none.
    rt().block_on(eventually(
        Duration::from_secs(30),
        "the master to see w connected",
        || async { c.log("m").contains("worker connected worker=w ") },
    ));
    let o = c.cli("submit", &["--split-mib", "1", corpus.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Each role's scrape is valid exposition format.
    for (i, role) in ["master", "worker", "candidate"].iter().enumerate() {
        let (code, body) = http_get(&addr(i), "/metrics").unwrap();
        assert_eq!(code, 200);
        assert!(
            body.contains(&format!("ringleader_node_role{{role=\"{role}\"}} 1")),
            "{role}:\n{body}"
        );
        let (ok, out) = promtool(&["check", "metrics"], Some(&body));
        assert!(ok, "promtool check metrics on the {role}:\n{out}");
        // What runs, and the process's own figures.
        assert!(
            body.contains(&format!(
                "ringleader_build_info{{version=\"{}\",commit=\"{}\",binary=\"wordcount\",binary_version=\"{}\"}} 1",
                ringleader::VERSION,
                ringleader::COMMIT,
                env!("CARGO_PKG_VERSION")
            )),
            "{role}:\n{body}"
        );
        assert!(
            body.contains("process_resident_memory_bytes "),
            "{role}:\n{body}"
        );
    }
    // Task figures by job type (`job` is Prometheus's own label).
    let (_, worker) = http_get(&addr(1), "/metrics").unwrap();
    let ran: f64 = worker
        .lines()
        .find(|l| l.starts_with("ringleader_tasks_run_total{job_type=\"word-count\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no tasks by job type:\n{worker}"));
    assert!(ran > 0.0, "{worker}");

    // A real Prometheus scraping the three nodes every second.
    let prom_port = free_port().unwrap();
    let prom = format!("127.0.0.1:{prom_port}");
    let cfg = c.path("prometheus.yml");
    let rules = dashboards().join("alerts.yml").canonicalize().unwrap();
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: ringleader\n    static_configs:\n      - targets: [\"{}\", \"{}\", \"{}\"]\n",
            rules.display(),
            addr(0),
            addr(1),
            addr(2)
        ),
    )
    .unwrap();
    let log = std::fs::File::create(c.path("prometheus.log")).unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--web.listen-address={prom}"))
            .arg(format!("--storage.tsdb.path={}", c.path("tsdb").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus is installed (scripts/setup)"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = http_get(
            &prom,
            &format!("/api/v1/query?query={}", url_encode("count(up == 1)")),
        );
        if let Ok((200, body)) = up {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if v["data"]["result"][0]["value"][1] == "3" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the 3 nodes:\n{}",
            std::fs::read_to_string(c.path("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A second job while Prometheus watches; below, the panels are asked
    // until every one has data (rates need two scrapes after it).
    // Under a limit, for the limits' panels.
    let o = c.cli("limits", &["set", "corpus", "--rate", "1000"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = c.cli(
        "submit",
        &[
            "--split-mib",
            "1",
            "--under",
            "corpus",
            corpus.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The dashboard's structure.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dashboards().join("ringleader.json")).unwrap(),
    )
    .unwrap();
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["type"] == "datasource"
        && v["query"] == "prometheus"
        && v["name"] == "datasource"));
    let panels: Vec<&serde_json::Value> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .collect();
    assert!(panels.len() >= 20, "{} panels", panels.len());
    let panel_failures = || {
        let mut failures = Vec::new();
        let mut all_exprs = String::new();
        for p in &panels {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
            for t in targets {
                let expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "10s");
                all_exprs.push_str(&expr);
                all_exprs.push('\n');
                let v = query(&prom, &expr);
                if v["status"] != "success"
                    || v["data"]["result"].as_array().is_none_or(|r| r.is_empty())
                {
                    failures.push(format!("{}: {expr} -> {v}", p["title"]));
                }
            }
        }
        (failures, all_exprs)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (failures, all_exprs) = loop {
        let (failures, all_exprs) = panel_failures();
        if failures.is_empty() || Instant::now() >= deadline {
            break (failures, all_exprs);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        failures.is_empty(),
        "panels without data:\n{}",
        failures.join("\n")
    );

    // Every metric named by a panel or an alert rule has series.
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let mut missing = Vec::new();
    for name in metric_names(&all_exprs).union(&metric_names(&rules_text)) {
        let (code, body) = http_get(
            &prom,
            &format!("/api/v1/series?match[]={}", url_encode(name)),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if code != 200 || v["data"].as_array().is_none_or(|d| d.is_empty()) {
            missing.push(name.clone());
        }
    }
    assert!(missing.is_empty(), "metrics without series: {missing:?}");

    // Alert rules are loaded, evaluated (asked until they are), and none
    // fires on a healthy cluster.
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let (_, body) = http_get(&prom, "/api/v1/rules").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let rules = v["data"]["groups"][0]["rules"].as_array();
        let evaluated = rules.is_some_and(|r| r.iter().all(|r| r["health"] == "ok"));
        if evaluated || Instant::now() >= deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let loaded: Vec<&serde_json::Value> = v["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    // Every rule of the file, loaded.
    let rules_file = std::fs::read_to_string(dashboards().join("alerts.yml")).unwrap();
    let written = rules_file.matches("- alert:").count();
    assert!(written >= 7, "{written} rules in alerts.yml");
    assert_eq!(loaded.len(), written);
    assert!(loaded.iter().all(|r| r["health"] == "ok"), "{loaded:?}");
    let firing: Vec<_> = loaded
        .iter()
        .filter(|r| r["state"] == "firing")
        .map(|r| r["name"].clone())
        .collect();
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy cluster: {firing:?}"
    );
}
