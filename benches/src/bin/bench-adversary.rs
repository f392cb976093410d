//! The adversary of `cluster-bench --only adversary`: a client with an
//! ordinary certificate, in a process (and, with `--rtt-ms`, on a host) of
//! its own, that keeps 1,024 streams of one connection busy with the worst
//! first frame of each request type a client may send
//! (`ringleader::testkit::adversary`) for `--secs` seconds, then prints
//! what they came to as one JSON line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ringleader::testkit::adversary;
use ringleader::transport::{self, tls};

#[derive(Parser)]
struct Args {
    /// The master's address (IP:PORT).
    #[arg(long)]
    master: String,
    /// The master's node id.
    #[arg(long)]
    node: String,
    /// A client's certificate directory.
    #[arg(long)]
    certs: PathBuf,
    /// How long to keep the streams busy.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Streams kept open at once.
    #[arg(long, default_value_t = adversary::STREAMS)]
    streams: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let identity = tls::Identity::client(&args.certs)?;
        let any = "0.0.0.0:0".parse().context("an address")?;
        let ep = transport::endpoint(any, &identity, false, transport::LINK_TIMEOUT)?;
        let conn = transport::dial_node(&ep, &args.master, &args.node).await?;
        // Said once connected: the benchmark starts its clock then.
        println!("attacking");
        let until = Instant::now() + Duration::from_secs(args.secs);
        let flooded = adversary::flood(&conn, args.streams, until).await;
        println!(
            "{}",
            serde_json::json!({
                "streams": flooded.streams,
                "refused": flooded.refused,
                "over_budget": flooded.over_budget,
                "answered": flooded.answered,
                "closed": flooded.closed,
                "timed_out": flooded.timed_out,
            })
        );
        Ok(())
    })
}
