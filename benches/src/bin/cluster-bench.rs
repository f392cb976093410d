//! The cluster benchmark: a private ZooKeeper and real node processes, each
//! measure printed beside the baseline this same run measured.
//!
//! `cargo run --release -p ringleader-benches --bin cluster-bench -- --quick`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use probe::{Behaviour, Probe};
use ringleader::client::SubmitOptions;
use ringleader::testkit::{client_config, Cluster};
use ringleader::{Client, Collect};

#[derive(Parser)]
struct Args {
    /// Smaller inputs: finishes in about two minutes.
    #[arg(long)]
    quick: bool,
    /// Worker nodes (plus two master candidates).
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

struct Row {
    measure: String,
    value: String,
    baseline: String,
    ratio: String,
}

fn row(
    measure: impl Into<String>,
    value: impl Into<String>,
    baseline: impl Into<String>,
    ratio: impl Into<String>,
) -> Row {
    Row {
        measure: measure.into(),
        value: value.into(),
        baseline: baseline.into(),
        ratio: ratio.into(),
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let node = exe.with_file_name("bench-node");
    if !node.exists() {
        bail!(
            "{} is missing: build with `cargo build --release -p ringleader-benches`",
            node.display()
        );
    }
    Ok(node)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    let mut c = Cluster::new(bin()?);
    c.node("cand-0", &["--role", "candidate"]);
    let rt = ringleader::testkit::rt();
    rt.block_on(async {
        let zk = c.zk().await;
        c.master(&zk, None, Duration::from_secs(30)).await;
    });
    c.node("cand-1", &["--role", "candidate"]);
    let slots = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .to_string();
    for i in 0..args.workers {
        c.node(&format!("w{i}"), &["--role", "worker", "--slots", &slots]);
    }
    // The nodes' negotiated session timeout (testkit asks for 2 s; tickTime 200 ms allows it).
    let session = Duration::from_millis(2000);
    rt.block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, args.workers, Duration::from_secs(30)).await;
    });
    std::thread::sleep(Duration::from_millis(500));
    for n in &c.nodes {
        if let Some(ch) = &n.child {
            rows.push(row(
                format!("idle RSS of {}", n.id),
                format!("{:.1} MiB", rss_mib(ch.id())),
                "goal < 20 MiB",
                "",
            ));
        }
    }

    // Tasks per second end to end, by shard size, beside the same tasks run in this process.
    let sizes: &[(u32, usize)] = if args.quick {
        &[(1, 2_000), (100, 100_000), (10_000, 500_000)]
    } else {
        &[(1, 10_000), (100, 500_000), (10_000, 2_000_000)]
    };
    for &(shard, n) in sizes {
        let tasks: Vec<Probe> = (0..n as u64)
            .map(|value| Probe {
                value,
                behaviour: Behaviour::Ok,
            })
            .collect();
        let t = Instant::now();
        let local: u64 = tasks.iter().map(|p| p.value * 2).sum();
        let local_rate = n as f64 / t.elapsed().as_secs_f64().max(1e-9);
        let (rate, ok) = rt.block_on(async {
            let client = Client::connect(client_config(&c)).await?;
            let t = Instant::now();
            let opts = SubmitOptions {
                shard_size: Some(shard),
                ..Default::default()
            };
            let job = client.submit::<Collect<Probe>>(tasks, opts).await?;
            let (results, _) = job.result().await?;
            let secs = t.elapsed().as_secs_f64();
            let sum: u64 = results.iter().map(|(_, v)| *v).sum();
            Ok::<_, anyhow::Error>((n as f64 / secs, results.len() == n && sum == local))
        })?;
        anyhow::ensure!(ok, "wrong results at shard size {shard}");
        rows.push(row(
            format!("tasks/s end to end, shard size {shard} ({n} tasks, results checked)"),
            format!("{rate:.0}"),
            format!("{local_rate:.0} in-process loop"),
            format!("{:.4}", rate / local_rate),
        ));
    }
    if let Some(m) = c
        .nodes
        .iter()
        .find(|n| n.id == "cand-0")
        .and_then(|n| n.child.as_ref())
    {
        rows.push(row(
            "master RSS after the biggest job",
            format!("{:.1} MiB", rss_mib(m.id())),
            "",
            "",
        ));
    }

    // Word count against the same counting code in 2 plain threads.
    let mib: u64 = if args.quick { 64 } else { 256 };
    let corpus = c.path("corpus.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&corpus)?);
        wordcount::corpus::generate(&mut f, mib << 20, 100_000, 7)?;
        std::io::Write::flush(&mut f)?;
    }
    let bytes = std::fs::metadata(&corpus)?.len() as f64;
    let splits = wordcount::plan(
        std::slice::from_ref(&corpus),
        (bytes as u64 / 12).max(1 << 20),
        false,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = Instant::now();
    let halves: Vec<Vec<_>> = (0..2)
        .map(|i| splits.iter().skip(i).step_by(2).cloned().collect())
        .collect();
    let base: wordcount::Counts = std::thread::scope(|s| {
        let hs: Vec<_> = halves
            .iter()
            .map(|h| {
                s.spawn(move || {
                    let mut acc = wordcount::Counts::new();
                    for t in h {
                        if let Ok(c) = wordcount::count_split(&t.path, t.offset, t.len, false) {
                            wordcount::merge(&mut acc, c);
                        }
                    }
                    acc
                })
            })
            .collect();
        let mut all = wordcount::Counts::new();
        for h in hs {
            if let Ok(part) = h.join() {
                wordcount::merge(&mut all, part);
            }
        }
        all
    });
    let base_mbs = bytes / 1e6 / t.elapsed().as_secs_f64();
    let cluster_mbs = rt.block_on(async {
        let client = Client::connect(client_config(&c)).await?;
        let t = Instant::now();
        let job = client
            .submit::<wordcount::WordCount>(splits, SubmitOptions::default())
            .await?;
        let (counts, _) = job.result().await?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(counts == base, "word counts differ from the baseline");
        Ok::<_, anyhow::Error>(bytes / 1e6 / secs)
    })?;
    rows.push(row(
        format!("word count {mib} MiB, MB/s"),
        format!("{cluster_mbs:.1}"),
        format!("{base_mbs:.1} (2 plain threads)"),
        format!("{:.2}", cluster_mbs / base_mbs),
    ));

    // Failover after kill -9 of the master, with unfinished jobs in ZooKeeper.
    let jobs = if args.quick { 20 } else { 100 };
    let (failover, recovery_line) = rt.block_on(async {
        let zk = c.zk().await;
        let first = c.master(&zk, None, Duration::from_secs(10)).await;
        for i in 0..args.workers {
            c.signal(&format!("w{i}"), "STOP");
        }
        let client = Client::connect(client_config(&c)).await?;
        for j in 0..jobs {
            let tasks: Vec<Probe> = (0..100)
                .map(|value| Probe {
                    value,
                    behaviour: Behaviour::Ok,
                })
                .collect();
            let opts = SubmitOptions {
                shard_size: Some(1),
                job_id: Some(format!("unfinished-{j}")),
                ..Default::default()
            };
            client.submit::<Collect<Probe>>(tasks, opts).await?;
        }
        let t = Instant::now();
        c.kill9(&first.node_id);
        let second = c
            .master(&zk, Some(first.epoch), Duration::from_secs(30))
            .await;
        let took = t.elapsed();
        for i in 0..args.workers {
            c.signal(&format!("w{i}"), "CONT");
        }
        let log = c.log(&second.node_id);
        let recovery = log
            .lines()
            .rev()
            .find(|l| l.contains("serving as master"))
            .map(|l| l.to_string())
            .unwrap_or_default();
        for j in 0..jobs {
            client
                .job::<Collect<Probe>>(format!("unfinished-{j}"))
                .result()
                .await
                .context("unfinished job")?;
        }
        Ok::<_, anyhow::Error>((took, recovery))
    })?;
    let recovery_ms = recovery_line
        .split("recovery_ms=")
        .nth(1)
        .map(|r| {
            r.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .unwrap_or_default();
    rows.push(row(
        format!(
            "failover after kill -9 ({jobs} unfinished jobs, {} shards)",
            jobs * 100
        ),
        format!(
            "{:.0} ms (recovery {recovery_ms} ms)",
            failover.as_secs_f64() * 1e3
        ),
        format!("{} ms session timeout", session.as_millis()),
        format!("{:.2}", failover.as_secs_f64() / session.as_secs_f64()),
    ));
    c.node("cand-0", &["--role", "candidate"]);

    // A worker killed while running shards: time until the master reassigns them.
    let reassign = rt.block_on(async {
        let zk = c.zk().await;
        let m = c.master(&zk, None, Duration::from_secs(10)).await;
        let client = Client::connect(client_config(&c)).await?;
        let tasks: Vec<Probe> = (0..40)
            .map(|value| Probe {
                value,
                behaviour: Behaviour::Sleep(1000),
            })
            .collect();
        let opts = SubmitOptions {
            shard_size: Some(1),
            max_attempts: Some(3),
            ..Default::default()
        };
        let job = client.submit::<Collect<Probe>>(tasks, opts).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = c.log(&m.node_id).matches("reassigning its shards").count();
        let t = Instant::now();
        c.kill9("w0");
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.log(&m.node_id).matches("reassigning its shards").count() == before {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no reassignment after killing w0"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = t.elapsed();
        job.result().await?;
        Ok::<_, anyhow::Error>(took)
    })?;
    rows.push(row(
        "worker kill -9 to its shards requeued (master log)",
        format!("{:.0} ms", reassign.as_secs_f64() * 1e3),
        format!("{} ms session timeout", session.as_millis()),
        format!("{:.2}", reassign.as_secs_f64() / session.as_secs_f64()),
    ));

    // Graceful handover.
    let handover = rt.block_on(async {
        let zk = c.zk().await;
        let m = c.master(&zk, None, Duration::from_secs(10)).await;
        // Wait for the restarted candidate to be in line behind the master.
        c.children(&zk, &c.layout().election(), 2, Duration::from_secs(30))
            .await;
        let t = Instant::now();
        c.signal(&m.node_id, "TERM");
        c.master(&zk, Some(m.epoch), Duration::from_secs(30)).await;
        t.elapsed()
    });
    rows.push(row(
        "graceful handover (SIGTERM on the master to the next one serving)",
        format!("{:.1} ms", handover.as_secs_f64() * 1e3),
        format!("{} ms session timeout", session.as_millis()),
        format!("{:.4}", handover.as_secs_f64() / session.as_secs_f64()),
    ));

    println!("\n| measure | value | baseline (same run) | ratio |\n| --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.measure, r.value, r.baseline, r.ratio
        );
    }
    Ok(())
}
