//! `wordcount`: a Ringleader node binary with the word-count job, plus
//! `generate` (a Zipf corpus) and `count` (the single-process baseline).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use wordcount::{corpus, count_task, merge, plan, sorted, write_counts, Counts, WordCount};

#[derive(Parser)]
#[command(about = "Generate a Zipf corpus")]
struct Generate {
    /// Output file.
    #[arg(long)]
    output: PathBuf,
    /// Size in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// Distinct words.
    #[arg(long, default_value_t = 100_000)]
    vocabulary: usize,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Parser)]
#[command(about = "Count words in this process (the baseline), with T threads")]
struct Count {
    /// Input files.
    files: Vec<String>,
    /// Output file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Lowercase and keep only alphanumerics.
    #[arg(long)]
    normalize: bool,
    /// Threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("generate") => {
            let g = Generate::parse_from(&args[1..]);
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&g.output)
                    .with_context(|| format!("creating {}", g.output.display()))?,
            );
            corpus::generate(&mut f, g.size_mib << 20, g.vocabulary, g.seed)?;
            f.flush()?;
            eprintln!("wrote {} MiB to {}", g.size_mib, g.output.display());
            Ok(())
        }
        Some("count") => {
            let c = Count::parse_from(&args[1..]);
            let started = Instant::now();
            let tasks = plan(&c.files, 4 << 20, c.normalize).map_err(|e| anyhow::anyhow!("{e}"))?;
            let bytes: u64 = tasks.iter().map(|t| t.len).sum();
            let threads = c.threads.max(1);
            let chunks: Vec<Vec<_>> = (0..threads)
                .map(|i| tasks.iter().skip(i).step_by(threads).cloned().collect())
                .collect();
            let results: Vec<anyhow::Result<Counts>> = std::thread::scope(|s| {
                let handles: Vec<_> = chunks
                    .iter()
                    .map(|chunk| {
                        s.spawn(move || {
                            let mut acc = Counts::default();
                            for t in chunk {
                                merge(&mut acc, count_task(t, None)?);
                            }
                            Ok(acc)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("counting thread panicked")))
                    })
                    .collect()
            });
            let mut all = Counts::default();
            for r in results {
                merge(&mut all, r?);
            }
            let secs = started.elapsed().as_secs_f64();
            if let Some(out) = &c.output {
                write_counts(out, &all)?;
            }
            let total: u64 = all.values().sum();
            let mut text = format!(
                "{total} words, {} distinct in {secs:.2} s ({:.1} MB/s)\n",
                all.len(),
                bytes as f64 / 1e6 / secs
            );
            for (w, n) in sorted(&all).into_iter().take(10) {
                text.push_str(&format!("{n:>12}  {w}\n"));
            }
            match std::io::stdout().lock().write_all(text.as_bytes()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => Ok(r?),
            }
        }
        _ => ringleader::Node::builder()
            .version(env!("CARGO_PKG_VERSION"))
            .cli_job::<WordCount>()
            .run_cli(),
    }
}
