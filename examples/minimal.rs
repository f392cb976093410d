//! The smallest Ringleader program: a node binary for the `Square` task
//! (defined in this crate's `src/lib.rs`, which the client shares).
//!
//! ```sh
//! cargo run -p ringleader-examples --example minimal -- certs --out certs
//! cargo run -p ringleader-examples --example minimal -- node --zk 127.0.0.1:2181 --certs certs
//! ```
//! Then submit `Square` tasks from Rust (see `submit.rs`), or from the
//! command line as JSON lines: `printf '3\n4\n' | minimal submit --certs certs`.

use ringleader_examples::Square;

fn main() -> anyhow::Result<()> {
    ringleader::Node::builder().task::<Square>().run_cli()
}
