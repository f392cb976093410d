//! Submitting tasks from Rust and checking every result.
//!
//! With a cluster of `minimal` nodes running:
//! ```sh
//! cargo run -p ringleader-examples --example submit -- 127.0.0.1:2181 certs
//! ```

use ringleader::client::SubmitOptions;
use ringleader::{Client, ClientConfig, Collect};
use ringleader_examples::Square;

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let zk = args.next().unwrap_or_else(|| "127.0.0.1:2181".into());
    let certs = args.next().unwrap_or_else(|| "certs".into());
    let client = Client::connect(ClientConfig::new(zk, "default", certs)).await?;
    let tasks: Vec<Square> = (0..1000).map(Square).collect();
    let opts = SubmitOptions {
        job_id: Some("squares-1".into()),
        shard_size: Some(100),
        ..Default::default()
    };
    let job = client.submit::<Collect<Square>>(tasks, opts).await?;
    println!(
        "job {} {}",
        job.id(),
        if job.existed() { "existed" } else { "accepted" }
    );
    let (results, report) = job.result().await?;
    anyhow::ensure!(
        report.failures.is_empty(),
        "failed tasks: {:?}",
        report.failures
    );
    for (i, sq) in &results {
        anyhow::ensure!(*sq == i * i, "task {i} returned {sq}");
    }
    println!("{} results, all correct", results.len());
    Ok(())
}
