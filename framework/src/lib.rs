//! Ringleader runs user-defined tasks on a cluster whose master is elected
//! through ZooKeeper, with shards sent to workers over QUIC.
//!
//! A user implements [`Task`] (and, for a custom reduction, [`Job`]),
//! registers it on a [`NodeBuilder`], and gets a command line with `node`,
//! `submit`, `result`, `status`, `cancel`, `certs` and `local`.
//!
//! # Layout
//! - [`task`]: the user-facing traits, `Task` and `Job`.
//! - [`core`]: decisions without I/O: the scheduler and failover recovery.
//! - [`coord`]: ZooKeeper: znode layout, records, fenced writes.
//! - [`wire`]: the frame format.
//! - [`transport`]: QUIC endpoints, mutual TLS, framed streams.
//! - `actors`: the actix actors: election, master supervisor, worker.
//! - [`node`]: builds and runs a node from its actors.
//! - [`client`]: submitting jobs and fetching results from Rust.
//! - [`cli`]: the command line every node binary gets.
//! - [`zkserver`]: starts private ZooKeeper servers for `local` and tests.
//! - [`prom`]: starts a private Prometheus for `local --prometheus` and tests.
//! - [`store`]: the object store for data too big for ZooKeeper (`--store`).
//! - [`process`]: stopping the child processes the project starts.
//! - `testkit` (feature): a harness of real node processes for integration tests.

#![warn(missing_docs)]

pub mod audit;
pub mod cli;
pub mod cli_job;
pub mod client;
pub mod coord;
/// Decisions without I/O: the crate `ringleader-core`.
pub use ringleader_core as core;
pub mod fuzz;
mod golden;
pub mod metrics;
pub mod node;
mod out;
pub mod pki;
pub mod process;
pub mod prom;
pub mod registry;
pub mod store;
pub mod task;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transport;
pub mod wire;
pub mod zkserver;

mod actors;

pub use client::{Client, ClientConfig, ClientError, JobHandle, JobReport, SubmitOptions};
pub use node::{NodeBuilder, NodeConfig, Role};
pub use task::{Collect, Job, Task, TaskContext, TaskError};

/// Entry point of the builder: `Node::builder().task::<T>()...`.
pub struct Node;

impl Node {
    /// A builder with no jobs registered.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }
}

/// This crate's version (what `--version` and `ringleader_build_info` name).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `--version` prints after the program's name: its own version, if
/// it gave one, and Ringleader's version and commit.
pub(crate) fn version_line(version: Option<&str>) -> String {
    let ringleader = format!("ringleader {VERSION} commit {COMMIT}");
    match version {
        Some(v) => format!("{v} ({ringleader})"),
        None => format!("({ringleader})"),
    }
}

/// A build's identity, as `--version` prints it: the program's name, its
/// own version if it gave one ([`NodeBuilder::version`]), and Ringleader's
/// version and commit. Nodes register it, `status` shows it.
pub fn build_id(program: &str, version: Option<&str>) -> String {
    format!("{program} {}", version_line(version))
}

/// The commit this build was made from (its short hash; "unknown" outside
/// a git work tree): `--version`, the node's first log line and
/// `ringleader_build_info` say it, and it tells two builds of one version
/// apart.
pub const COMMIT: &str = env!("RINGLEADER_COMMIT");
