//! The smallest Ringleader program: a custom task and a node binary.
//!
//! ```sh
//! cargo run -p ringleader-examples --example minimal -- certs --out certs
//! cargo run -p ringleader-examples --example minimal -- node --zk 127.0.0.1:2181 --certs certs
//! ```
//! Then submit `Square` tasks from Rust (see `submit.rs`).

use ringleader::{Task, TaskContext, TaskError};
use serde::{Deserialize, Serialize};

/// Squares a number; fails (permanently) on overflow.
#[derive(Serialize, Deserialize)]
pub struct Square(pub u64);

impl Task for Square {
    type Output = u64;
    const NAME: &'static str = "square";
    fn run(self, _ctx: &TaskContext) -> Result<u64, TaskError> {
        self.0
            .checked_mul(self.0)
            .ok_or_else(|| TaskError::permanent(format!("{} squared overflows", self.0)))
    }
}

fn main() -> anyhow::Result<()> {
    ringleader::Node::builder().task::<Square>().run_cli()
}
