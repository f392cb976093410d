//! Metric names and their registration. Every node registers every metric
//! at zero on start-up, so dashboards and alerts find series at once.

use std::net::SocketAddr;

/// Node role gauge: 1 for the roles the node holds now, label `role`.
pub const NODE_ROLE: &str = "ringleader_node_role";
/// The master's epoch (0 on non-masters).
pub const EPOCH: &str = "ringleader_epoch";
/// Times this node became master.
pub const ELECTIONS_WON: &str = "ringleader_elections_won_total";
/// ZooKeeper sessions that expired under this node.
pub const SESSION_EXPIRED: &str = "ringleader_zk_session_expirations_total";
/// Workers registered and connected (master only).
pub const WORKERS: &str = "ringleader_workers";
/// Shards waiting for a worker (master only).
pub const SHARDS_QUEUED: &str = "ringleader_shards_queued";
/// Shards sent to workers.
pub const SHARDS_ASSIGNED: &str = "ringleader_shards_assigned_total";
/// Shard outcomes committed to ZooKeeper.
pub const SHARDS_COMMITTED: &str = "ringleader_shards_committed_total";
/// Shards put back in the queue because their worker was lost.
pub const SHARDS_REASSIGNED: &str = "ringleader_shards_reassigned_total";
/// Task attempts that failed and will be retried.
pub const TASKS_RETRIED: &str = "ringleader_tasks_retried_total";
/// Tasks that failed every attempt.
pub const TASKS_FAILED: &str = "ringleader_tasks_failed_total";
/// Tasks run by this worker.
pub const TASKS_RUN: &str = "ringleader_tasks_run_total";
/// Seconds a worker spent running one shard.
pub const SHARD_SECONDS: &str = "ringleader_shard_duration_seconds";
/// Jobs accepted.
pub const JOBS_SUBMITTED: &str = "ringleader_jobs_submitted_total";
/// Jobs finished.
pub const JOBS_COMPLETED: &str = "ringleader_jobs_completed_total";
/// Frames refused as malformed or oversized.
pub const FRAME_ERRORS: &str = "ringleader_frame_errors_total";

/// Starts the Prometheus exporter on `addr` and registers every metric at zero.
/// Call before the actor system starts: the exporter gets its own thread.
pub fn install(addr: SocketAddr) -> Result<(), metrics_exporter_prometheus::BuildError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0])?
        .install()?;
    register();
    Ok(())
}

fn register() {
    for role in ["master", "worker", "candidate"] {
        metrics::gauge!(NODE_ROLE, "role" => role).set(0.0);
    }
    metrics::gauge!(EPOCH).set(0.0);
    metrics::gauge!(WORKERS).set(0.0);
    metrics::gauge!(SHARDS_QUEUED).set(0.0);
    for c in [
        ELECTIONS_WON,
        SESSION_EXPIRED,
        SHARDS_ASSIGNED,
        SHARDS_COMMITTED,
        SHARDS_REASSIGNED,
        TASKS_RETRIED,
        TASKS_FAILED,
        TASKS_RUN,
        JOBS_SUBMITTED,
        JOBS_COMPLETED,
        FRAME_ERRORS,
    ] {
        metrics::counter!(c).absolute(0);
    }
    metrics::histogram!(SHARD_SECONDS).record(0.0);
}
