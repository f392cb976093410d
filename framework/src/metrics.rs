//! Metric names, their catalogue and their registration. Every node
//! registers every metric at start-up (counters and gauges at zero,
//! histograms empty), so dashboards and alert rules find series at once.
//! The catalogue with types, labels and meanings is `dashboards/METRICS.md`;
//! each constant's doc says the same.

use std::net::SocketAddr;

/// Gauge, label `role` (`master`, `worker`, `candidate`): 1 for the roles the node holds now.
pub const NODE_ROLE: &str = "ringleader_node_role";
/// Gauge: the epoch of this node if it is the serving master, else 0.
pub const EPOCH: &str = "ringleader_epoch";
/// Counter: times this node won an election and became master.
pub const ELECTIONS_WON: &str = "ringleader_elections_won_total";
/// Counter: times this node's master stepped down, every other worker refusing it.
pub const STEP_DOWNS: &str = "ringleader_master_step_downs_total";
/// Counter: master changes this node's worker observed (a new epoch published).
pub const LEADERSHIP_CHANGES: &str = "ringleader_leadership_changes_total";
/// Histogram, seconds: time a worker spent without a serving master, from
/// losing its master to the next one answering.
pub const MASTER_GAP: &str = "ringleader_master_gap_seconds";
/// Gauge: 1 while the node's ZooKeeper session is connected, else 0.
pub const ZK_CONNECTED: &str = "ringleader_zk_connected";
/// Counter: ZooKeeper sessions of this node that expired.
pub const SESSION_EXPIRED: &str = "ringleader_zk_session_expirations_total";
/// Histogram, seconds, label `op`: duration of the master's ZooKeeper writes.
pub const ZK_OP_SECONDS: &str = "ringleader_zk_op_duration_seconds";
/// Counter, label `op`: ZooKeeper operations of the master that failed.
pub const ZK_ERRORS: &str = "ringleader_zk_errors_total";
/// Histogram, label `op`: duration of the node's object store operations.
pub const STORE_OP_SECONDS: &str = "ringleader_store_op_duration_seconds";
/// Gauge: workers registered and connected (master only).
pub const WORKERS: &str = "ringleader_workers";
/// Gauge: shards waiting for a worker (master only).
pub const SHARDS_QUEUED: &str = "ringleader_shards_queued";
/// Gauge, by `priority` (0 to 9).
pub const SHARDS_QUEUED_BY_PRIORITY: &str = "ringleader_shards_queued_by_priority";
/// Gauge, label `limit` (limits set only): runs of its jobs held by
/// workers.
pub const LIMIT_RUNNING: &str = "ringleader_limit_running";
/// Gauge, label `limit`: shards of the jobs waiting on it.
pub const LIMIT_WAITING: &str = "ringleader_limit_waiting_shards";
/// Counter, label `limit`: times a job found it full.
pub const LIMIT_THROTTLED: &str = "ringleader_limit_throttled_total";
/// Histogram, by `priority`: how long a shard waited in its job's queue
/// before it was placed on a worker.
pub const SHARD_WAIT: &str = "ringleader_shard_wait_seconds";
/// Histogram, by `fairness_key` (keys with a weight set; the others as
/// `unweighted`): the same.
pub const SHARD_WAIT_BY_KEY: &str = "ringleader_shard_wait_by_key_seconds";
/// Gauge: how long the job waiting longest has had a shard ready (0: none
/// waits).
pub const OLDEST_WAITING: &str = "ringleader_oldest_waiting_seconds";
/// Gauge: delayed jobs waiting for their time (master only).
pub const JOBS_SCHEDULED: &str = "ringleader_jobs_scheduled";
/// Gauge: the earliest delayed job's time, in seconds since the Unix
/// epoch (0: none waits).
pub const NEXT_SCHEDULED: &str = "ringleader_next_scheduled_timestamp_seconds";
/// Gauge: shards sent to workers and not yet committed (master only).
pub const SHARDS_IN_FLIGHT: &str = "ringleader_shards_in_flight";
/// Gauge, label `worker`: shards a worker holds (master only).
pub const WORKER_IN_FLIGHT: &str = "ringleader_worker_in_flight";
/// Counter: shards sent to workers.
pub const SHARDS_ASSIGNED: &str = "ringleader_shards_assigned_total";
/// Counter: shard outcomes committed to ZooKeeper.
pub const SHARDS_COMMITTED: &str = "ringleader_shards_committed_total";
/// Counter: shards put back in the queue because their worker was lost.
pub const SHARDS_REASSIGNED: &str = "ringleader_shards_reassigned_total";
/// Counter: runs in doubt at their worker's death (not charged; rerun with
/// their start acknowledged).
pub const SHARDS_IN_DOUBT: &str = "ringleader_shards_in_doubt_total";
/// Counter: worker links lost without a drain (the worker is suspected and
/// its shards reassigned before its ZooKeeper session says whether it died).
pub const WORKER_LINKS_LOST: &str = "ringleader_worker_links_lost_total";
/// Links this node closed because their peer fell silent past the
/// link's adaptive threshold.
pub const LINKS_SILENT: &str = "ringleader_links_silent_total";
/// Counter: speculative copies of slow or hung shards sent to another worker.
pub const SHARDS_SPECULATED: &str = "ringleader_shards_speculated_total";
/// Counter: task attempts that failed and will be retried.
pub const TASKS_RETRIED: &str = "ringleader_tasks_retried_total";
/// Counter: tasks that failed every attempt (reported as failed tasks of their job).
pub const TASKS_DEAD_LETTERED: &str = "ringleader_tasks_dead_lettered_total";
/// Counter: tasks run by this worker (any outcome).
pub const TASKS_RUN: &str = "ringleader_tasks_run_total";
/// Histogram, seconds: duration of one task run on this worker.
pub const TASK_SECONDS: &str = "ringleader_task_duration_seconds";
/// Histogram, seconds: duration of one shard run on this worker.
pub const SHARD_SECONDS: &str = "ringleader_shard_duration_seconds";
/// Histogram, seconds: how long a slot of this worker waited for the
/// master's `StartAck` before it ran a shard that must wait for it.
pub const START_WAIT_SECONDS: &str = "ringleader_start_wait_seconds";
/// Counter: jobs accepted (durable).
pub const JOBS_SUBMITTED: &str = "ringleader_jobs_submitted_total";
/// Gauge: jobs in progress (master only).
pub const JOBS_RUNNING: &str = "ringleader_jobs_running";
/// Gauge: jobs this master cannot read or run, left for one that can.
pub const JOBS_QUARANTINED: &str = "ringleader_jobs_quarantined";
/// Counter: jobs finished with every task succeeded.
pub const JOBS_COMPLETED: &str = "ringleader_jobs_completed_total";
/// Counter: jobs finished with at least one failed task.
pub const JOBS_FAILED: &str = "ringleader_jobs_failed_total";
/// Counter: jobs cancelled by a client.
pub const JOBS_CANCELLED: &str = "ringleader_jobs_cancelled_total";
/// Gauge, labels `version`, `binary`, `binary_version`: 1, naming what runs.
pub const BUILD_INFO: &str = "ringleader_build_info";
/// Gauge: open QUIC connections of this node's endpoint.
pub const QUIC_CONNECTIONS: &str = "ringleader_quic_connections";
/// Counter, label `direction` (`sent`, `received`): frames on worker links.
pub const FRAMES: &str = "ringleader_quic_frames_total";
/// Counter, label `direction` (`sent`, `received`): bytes of frames on worker links.
pub const FRAME_BYTES: &str = "ringleader_quic_frame_bytes_total";
/// Counter, label `reason`: peers refused for who they are (see
/// [`PEER_REFUSAL_REASONS`]).
pub const PEER_REFUSALS: &str = "ringleader_peer_refusals_total";
/// Why a peer was refused: its handshake failed (another CA, expired);
/// its certificate carries no identity; a node dialled was not the node
/// ZooKeeper names; a worker speaks no protocol version this master
/// does; a certificate may not do what it asked (a client
/// registering as a worker, a node claiming another's id); a client acted
/// on another client's job; a live connection's certificate was revoked.
pub const PEER_REFUSAL_REASONS: &[&str] = &[
    "handshake",
    "no_identity",
    "not_the_node",
    "role",
    "version",
    "not_owner",
    "revoked",
];
/// Counter: frames refused as malformed or oversized.
pub const FRAME_ERRORS: &str = "ringleader_frame_errors_total";
/// Audit lines dropped because the audit thread was a whole queue behind.
pub const AUDIT_DROPPED: &str = "ringleader_audit_lines_dropped_total";
/// Peers dropped because their queue of outgoing frames was full.
pub const OUTBOX_FULL: &str = "ringleader_outbox_full_total";

/// Counter: fenced transactions the master's group-commit writer sent
/// (each carries the writes that waited together).
pub const ZK_TRANSACTIONS: &str = "ringleader_zk_transactions_total";
/// Counter: jobs whose end was written in place of their create (one
/// write for both; see `actors::master::creating`).
pub const JOBS_CREATED_DONE: &str = "ringleader_jobs_created_done_total";
/// Counter: jobs scheduled while their create waited whose create failed
/// (their id taken, or ZooKeeper refused): discarded.
pub const JOBS_DISCARDED: &str = "ringleader_jobs_discarded_total";
/// Job records the collector read.
pub const COLLECTOR_READS: &str = "ringleader_collector_reads_total";
/// Counter: commit records the master wrote, each one znode holding the
/// commits of one job that waited together.
pub const COMMIT_RECORDS: &str = "ringleader_commit_records_total";
/// Counter, label `request`: client requests the master received, by kind.
pub const CLIENT_REQUESTS: &str = "ringleader_client_requests_total";
/// The kinds of client request counted under [`CLIENT_REQUESTS`].
pub const CLIENT_REQUEST_KINDS: &[&str] = &[
    "Submit",
    "WatchJob",
    "GetJob",
    "GetStatus",
    "FetchResult",
    "Cancel",
    "PlanJob",
    "ListJobs",
    "StreamJob",
    "SetFairness",
    "ListFairness",
];

/// Object store operations measured under [`STORE_OP_SECONDS`].
pub const STORE_OPS: &[&str] = &["read", "write", "upload", "find", "list", "delete"];

/// ZooKeeper operations measured under [`ZK_OP_SECONDS`] and [`ZK_ERRORS`].
pub const ZK_OPS: &[&str] = &[
    "create_job",
    "commit",
    "finish",
    "record_loss",
    "set_status",
    "delete",
    "connect",
    "fairness",
    "limits",
];

/// What kind of metric an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic count.
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Bucketed distribution (seconds).
    Histogram,
}

/// One metric of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its labels, comma-separated ("" for none).
    pub labels: &'static str,
    /// Its unit.
    pub unit: &'static str,
    /// Which nodes export a value that moves.
    pub on: &'static str,
    /// What it means (the Prometheus help text).
    pub help: &'static str,
}

const fn metric(
    name: &'static str,
    kind: Kind,
    labels: &'static str,
    unit: &'static str,
    on: &'static str,
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        unit,
        on,
        help,
    }
}

/// Every metric a node exports.
pub const CATALOGUE: &[Metric] = &[
    metric(NODE_ROLE, Kind::Gauge, "role", "1/0", "all", "1 for each role (master, worker, candidate) the node holds now."),
    metric(EPOCH, Kind::Gauge, "", "epoch", "master", "Epoch of this node while it serves as master, else 0."),
    metric(ELECTIONS_WON, Kind::Counter, "", "elections", "candidates", "Times this node won an election and became master."),
    metric(STEP_DOWNS, Kind::Counter, "", "step-downs", "candidates", "Times this node's master stepped down because every other worker refused its certificate, or it refused every other worker for storing elsewhere."),
    metric(LEADERSHIP_CHANGES, Kind::Counter, "", "changes", "workers", "Master changes observed by this node's worker (a new epoch served)."),
    metric(MASTER_GAP, Kind::Histogram, "", "seconds", "workers", "Time this node's worker spent without a serving master, from losing one to the next answering."),
    metric(ZK_CONNECTED, Kind::Gauge, "", "1/0", "all", "1 while the node's ZooKeeper session is connected."),
    metric(SESSION_EXPIRED, Kind::Counter, "", "sessions", "all", "ZooKeeper sessions of this node that expired."),
    metric(ZK_OP_SECONDS, Kind::Histogram, "op", "seconds", "master", "Duration of the master's fenced ZooKeeper writes, retries included."),
    metric(ZK_ERRORS, Kind::Counter, "op", "errors", "all", "ZooKeeper writes of the master that failed; op=connect: failed attempts of any node to reach ZooKeeper."),
    metric(STORE_OP_SECONDS, Kind::Histogram, "op", "seconds", "all", "Duration of the node's object store operations (read, write, upload, find, list, delete), failed ones included."),
    metric(WORKERS, Kind::Gauge, "", "workers", "master", "Workers registered in ZooKeeper and connected over QUIC."),
    metric(SHARDS_QUEUED, Kind::Gauge, "", "shards", "master", "Shards waiting for a worker."),
    metric(SHARDS_QUEUED_BY_PRIORITY, Kind::Gauge, "priority", "shards", "master", "Shards ready to run, by their job's priority (0 to 9; retries in backoff are not ready)."),
    metric(SHARD_WAIT, Kind::Histogram, "priority", "seconds", "master", "Time a shard waited in its job's queue before it was placed, by its job's priority."),
    metric(SHARD_WAIT_BY_KEY, Kind::Histogram, "fairness_key", "seconds", "master", "The same by fairness key: the keys with a weight set (`fairness set`), the others as `unweighted`."),
    metric(OLDEST_WAITING, Kind::Gauge, "", "seconds", "master", "How long the job waiting longest has had a shard ready to run (0 when none waits): a delayed job waits from its time, a job held by a limit waits."),
    metric(LIMIT_RUNNING, Kind::Gauge, "limit", "runs", "master", "Runs of the jobs under a limit held by workers (limits set with `limits set`)."),
    metric(LIMIT_WAITING, Kind::Gauge, "limit", "shards", "master", "Shards of the jobs waiting on a limit (throttled)."),
    metric(LIMIT_THROTTLED, Kind::Counter, "limit", "times", "master", "Times a job's shard found a limit full and waited on it."),
    metric(JOBS_SCHEDULED, Kind::Gauge, "", "jobs", "master", "Delayed jobs (`submit --delay`, `--at`) waiting for their time."),
    metric(NEXT_SCHEDULED, Kind::Gauge, "", "seconds", "master", "When the earliest delayed job starts, in seconds since the Unix epoch (0 when none waits)."),
    metric(SHARDS_IN_FLIGHT, Kind::Gauge, "", "shards", "master", "Shards sent to workers and not yet reported."),
    metric(WORKER_IN_FLIGHT, Kind::Gauge, "worker", "shards", "master", "Shards each worker holds."),
    metric(SHARDS_ASSIGNED, Kind::Counter, "", "shards", "master", "Shards sent to workers."),
    metric(SHARDS_COMMITTED, Kind::Counter, "", "shards", "master", "Shard outcomes committed to ZooKeeper."),
    metric(SHARDS_REASSIGNED, Kind::Counter, "", "shards", "master", "Shards requeued because their worker was lost."),
    metric(SHARDS_IN_DOUBT, Kind::Counter, "", "shards", "master", "Runs that may have been running unseen when their worker died: charged no attempt, rerun with their start acknowledged (the one that kills a worker again is charged for both deaths)."),
    metric(WORKER_LINKS_LOST, Kind::Counter, "", "links", "master", "Worker links lost without a drain: the worker is suspected and its shards reassigned at once."),
    metric(LINKS_SILENT, Kind::Counter, "", "links", "all", "Links this node closed because their peer was silent past the link's threshold (the link timeout, raised by the longest recent silence of the link and stall of this process)."),
    metric(SHARDS_SPECULATED, Kind::Counter, "", "shards", "master", "Copies of slow or hung shards sent to another worker (the first result wins)."),
    metric(TASKS_RETRIED, Kind::Counter, "job_type", "tasks", "master", "Task attempts that failed and will be retried."),
    metric(TASKS_DEAD_LETTERED, Kind::Counter, "job_type", "tasks", "master", "Tasks that failed every attempt, reported as failed tasks of their job."),
    metric(TASKS_RUN, Kind::Counter, "job_type", "tasks", "workers", "Tasks run by this node's worker, any outcome."),
    metric(TASK_SECONDS, Kind::Histogram, "job_type", "seconds", "workers", "Duration of one task run."),
    metric(SHARD_SECONDS, Kind::Histogram, "job_type", "seconds", "workers", "Duration of one shard run."),
    metric(START_WAIT_SECONDS, Kind::Histogram, "", "seconds", "workers", "Time a slot waited for the master's StartAck before running a shard that must wait for it: a retry, or a suspect of a worker's death (other runs start at once)."),
    metric(JOBS_SUBMITTED, Kind::Counter, "job_type", "jobs", "master", "Jobs accepted (durable in ZooKeeper)."),
    metric(JOBS_RUNNING, Kind::Gauge, "", "jobs", "master", "Jobs in progress."),
    metric(JOBS_QUARANTINED, Kind::Gauge, "", "jobs", "master", "Jobs the master cannot read or run (their type not registered on its node, a record or batch that does not decode): left for a master that can, shown by `jobs` with the reason; every other job runs."),
    metric(JOBS_COMPLETED, Kind::Counter, "job_type", "jobs", "master", "Jobs finished with every task succeeded."),
    metric(JOBS_FAILED, Kind::Counter, "job_type", "jobs", "master", "Jobs finished with at least one failed task."),
    metric(JOBS_CANCELLED, Kind::Counter, "job_type", "jobs", "master", "Jobs cancelled by a client."),
    metric(BUILD_INFO, Kind::Gauge, "version, commit, binary, binary_version", "1", "all", "1, with Ringleader's version and commit and the node binary's name and version as labels."),
    metric(QUIC_CONNECTIONS, Kind::Gauge, "", "connections", "all", "Open QUIC connections of the node's endpoint."),
    metric(FRAMES, Kind::Counter, "direction", "frames", "all", "Frames sent and received."),
    metric(FRAME_BYTES, Kind::Counter, "direction", "bytes", "all", "Bytes of frames sent and received."),
    metric(PEER_REFUSALS, Kind::Counter, "reason", "connections", "all", "Peers refused for who they are: a failed handshake (another CA, an expired certificate), no identity in the certificate, a dialled node that is not the one ZooKeeper names, a worker of a protocol version this master does not speak (an upgrade skipped a release), a role that may not do what it asked (a client registering as a worker, a node claiming another's id), a client acting on another client's job, or a live connection whose certificate was revoked (SIGHUP with a new crl.pem)."),
    metric(FRAME_ERRORS, Kind::Counter, "", "frames", "master", "Frames refused as malformed or oversized."),
    metric(AUDIT_DROPPED, Kind::Counter, "", "lines", "master", "Audit log lines dropped because the audit thread fell a whole queue (65,536 lines) behind its disk."),
    metric(OUTBOX_FULL, Kind::Counter, "queue", "peers", "all", "Peers dropped because they fell a whole queue of frames behind (queue=link: a worker's link, dropped and its runs requeued; queue=watch: a job's watch, ended for its client to watch again)."),
    metric(ZK_TRANSACTIONS, Kind::Counter, "", "transactions", "master", "Fenced ZooKeeper transactions sent by the master's group-commit writer; each carries the writes (commits, job creations, finishes, deletions) that waited together, so under load there are fewer than writes."),
    metric(JOBS_CREATED_DONE, Kind::Counter, "", "jobs", "master", "Jobs created already done: a work queue's job of one shard ran while its create waited, and its end was written in place of the create (one write instead of two)."),
    metric(COLLECTOR_READS, Kind::Counter, "", "records", "master", "Job records the collector read from ZooKeeper: only those new to it (not the jobs the master runs, nor those it keeps in its caches of retained and unfetched jobs), so the rate stays flat however many jobs are queued or unfetched."),
    metric(JOBS_DISCARDED, Kind::Counter, "", "jobs", "master", "Jobs scheduled while their create waited whose create failed (their id was taken: a resubmission after a failover, or another client's id; or ZooKeeper refused): discarded, their task run, if it ran, for nothing."),
    metric(COMMIT_RECORDS, Kind::Counter, "", "records", "master", "Commit records written: each is one znode holding the outcomes of the shards of one job whose commits waited together, so under load there are fewer than shards committed."),
    metric(CLIENT_REQUESTS, Kind::Counter, "request", "requests", "master", "Client requests received, by kind (Submit, WatchJob, GetJob, GetStatus, FetchResult, Cancel)."),
];

/// The catalogue as a Markdown table (`dashboards/METRICS.md`).
pub fn catalogue_markdown() -> String {
    let mut out = String::from(
        "# Ringleader metrics\n\nEvery node registers every metric at start-up (counters and gauges at 0,\n\
         histograms empty); \"on\" says which nodes move it. Generated from\n\
         `framework/src/metrics.rs` (`UPDATE_METRICS_DOC=1 cargo test -p ringleader catalogue`).\n\n\
         | name | type | labels | unit | on | meaning |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for m in CATALOGUE {
        let kind = match m.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        out.push_str(&format!(
            "| `{}` | {kind} | {} | {} | {} | {} |\n",
            m.name, m.labels, m.unit, m.on, m.help
        ));
    }
    out
}

/// How long a gauge series stays on the metrics page after it was last
/// set: the master sets each registered worker's every few seconds, so a
/// worker that left is gone from the page this long after.
pub const GAUGE_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// The labels of this node's [`BUILD_INFO`] (binary, its version).
static BUILD: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// Keeps the node's own gauges on the page (see [`GAUGE_IDLE`]): adding
/// zero counts as setting them.
fn touch_node_gauges() {
    for g in node_gauges() {
        g.increment(0.0);
    }
    if let Some((binary, version)) = BUILD.get() {
        build_info(binary, version).increment(0.0);
    }
}

/// The gauges every node has, with their fixed labels.
fn node_gauges() -> impl Iterator<Item = metrics::Gauge> {
    let roles = ["master", "worker", "candidate"]
        .into_iter()
        .map(|role| metrics::gauge!(NODE_ROLE, "role" => role));
    let plain = [
        EPOCH,
        ZK_CONNECTED,
        WORKERS,
        SHARDS_QUEUED,
        SHARDS_IN_FLIGHT,
        JOBS_RUNNING,
        JOBS_SCHEDULED,
        NEXT_SCHEDULED,
        OLDEST_WAITING,
        JOBS_QUARANTINED,
        QUIC_CONNECTIONS,
    ]
    .into_iter()
    .map(|g| metrics::gauge!(g));
    let priorities = (0..=crate::core::MAX_PRIORITY)
        .map(|p| metrics::gauge!(SHARDS_QUEUED_BY_PRIORITY, "priority" => p.to_string()));
    roles.chain(plain).chain(priorities)
}

fn build_info(binary: &str, binary_version: &str) -> metrics::Gauge {
    metrics::gauge!(
        BUILD_INFO,
        "version" => crate::VERSION,
        "commit" => crate::COMMIT,
        "binary" => binary.to_string(),
        "binary_version" => binary_version.to_string()
    )
}

/// A counter of a fixed name (and fixed labels), looked up once per call
/// site: for counters moved per job or per shard, where a lookup by name
/// costs more than the increment. Counters only: a gauge left idle leaves
/// the registry ([`GAUGE_IDLE`]), and a handle kept on it would count for
/// nobody.
#[macro_export]
#[doc(hidden)]
macro_rules! counter_once {
    ($($key:tt)*) => {{
        static COUNTER: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
        COUNTER.get_or_init(|| metrics::counter!($($key)*))
    }};
}

/// A histogram's handle, looked up once per call site.
#[macro_export]
#[doc(hidden)]
macro_rules! histogram_once {
    ($($key:tt)*) => {{
        static HISTOGRAM: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();
        HISTOGRAM.get_or_init(|| metrics::histogram!($($key)*))
    }};
}

/// The handle of [`SHARD_WAIT`] at `priority` (above 9: 9), looked up
/// once per priority.
pub(crate) fn shard_wait(priority: u8) -> &'static metrics::Histogram {
    const LABELS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    static HANDLES: std::sync::OnceLock<Vec<metrics::Histogram>> = std::sync::OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        LABELS
            .iter()
            .map(|p| metrics::histogram!(SHARD_WAIT, "priority" => *p))
            .collect()
    });
    &handles[usize::from(priority.min(9))]
}

/// Frames, and their bytes, sent (`sent`) or received: handles looked up
/// once, since every frame counts them and a lookup by name and label
/// costs more than the increment. (The recorder is installed before any
/// frame moves: [`install`].)
pub(crate) fn frames(sent: bool) -> &'static (metrics::Counter, metrics::Counter) {
    static SENT: std::sync::OnceLock<(metrics::Counter, metrics::Counter)> =
        std::sync::OnceLock::new();
    static RECEIVED: std::sync::OnceLock<(metrics::Counter, metrics::Counter)> =
        std::sync::OnceLock::new();
    let (cell, direction) = if sent {
        (&SENT, "sent")
    } else {
        (&RECEIVED, "received")
    };
    cell.get_or_init(|| {
        (
            metrics::counter!(FRAMES, "direction" => direction),
            metrics::counter!(FRAME_BYTES, "direction" => direction),
        )
    })
}

/// The duration histogram of the master's ZooKeeper writes named `op`
/// (one of [`ZK_OPS`]), looked up once per name, as [`frames`].
pub(crate) fn zk_op_seconds(op: &'static str) -> metrics::Histogram {
    static BY_OP: OpHistograms = std::sync::OnceLock::new();
    op_histogram(&BY_OP, ZK_OP_SECONDS, ZK_OPS, op)
}

/// The duration histogram of the node's object store operations named
/// `op` (one of [`STORE_OPS`]), as [`zk_op_seconds`].
pub(crate) fn store_op_seconds(op: &'static str) -> metrics::Histogram {
    static BY_OP: OpHistograms = std::sync::OnceLock::new();
    op_histogram(&BY_OP, STORE_OP_SECONDS, STORE_OPS, op)
}

/// Histograms of one metric by its `op` label, looked up once.
type OpHistograms =
    std::sync::OnceLock<std::collections::HashMap<&'static str, metrics::Histogram>>;

fn op_histogram(
    cell: &OpHistograms,
    name: &'static str,
    ops: &'static [&'static str],
    op: &'static str,
) -> metrics::Histogram {
    let by_op = cell.get_or_init(|| {
        ops.iter()
            .map(|op| (*op, metrics::histogram!(name, "op" => *op)))
            .collect()
    });
    match by_op.get(op) {
        Some(h) => h.clone(),
        None => metrics::histogram!(name, "op" => op),
    }
}

/// Starts the Prometheus exporter on `addr` and registers every metric.
/// Call before the actor system starts: the exporter gets its own thread.
pub fn install(addr: SocketAddr) -> Result<(), metrics_exporter_prometheus::BuildError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        // A gauge series nobody sets leaves the page: a departed worker's
        // goes with it. The node's own gauges are touched every second.
        .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(GAUGE_IDLE))
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ])?
        .install()?;
    register();
    // The standard process_* metrics (CPU, memory, file descriptors,
    // threads, start time), read from /proc once a second.
    let collector = metrics_process::Collector::default();
    collector.describe();
    let _ = std::thread::Builder::new()
        .name("process-metrics".into())
        .spawn(move || loop {
            collector.collect();
            touch_node_gauges();
            std::thread::sleep(std::time::Duration::from_secs(1));
        });
    Ok(())
}

fn register() {
    for m in CATALOGUE {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, metrics::Unit::Seconds, m.help),
        }
    }
    for g in node_gauges() {
        g.set(0.0);
    }
    for c in [
        ELECTIONS_WON,
        STEP_DOWNS,
        LEADERSHIP_CHANGES,
        SESSION_EXPIRED,
        SHARDS_ASSIGNED,
        SHARDS_COMMITTED,
        SHARDS_REASSIGNED,
        SHARDS_IN_DOUBT,
        WORKER_LINKS_LOST,
        LINKS_SILENT,
        SHARDS_SPECULATED,
        FRAME_ERRORS,
        OUTBOX_FULL,
        AUDIT_DROPPED,
        ZK_TRANSACTIONS,
        JOBS_CREATED_DONE,
        JOBS_DISCARDED,
        COLLECTOR_READS,
        COMMIT_RECORDS,
    ] {
        metrics::counter!(c).absolute(0);
    }
    for r in PEER_REFUSAL_REASONS {
        metrics::counter!(PEER_REFUSALS, "reason" => *r).absolute(0);
    }
    for d in ["sent", "received"] {
        metrics::counter!(FRAMES, "direction" => d).absolute(0);
        metrics::counter!(FRAME_BYTES, "direction" => d).absolute(0);
    }
    for r in CLIENT_REQUEST_KINDS {
        metrics::counter!(CLIENT_REQUESTS, "request" => *r).absolute(0);
    }
    for op in ZK_OPS {
        metrics::counter!(ZK_ERRORS, "op" => *op).absolute(0);
        let _ = metrics::histogram!(ZK_OP_SECONDS, "op" => *op);
    }
    for op in STORE_OPS {
        let _ = metrics::histogram!(STORE_OP_SECONDS, "op" => *op);
    }
    let _ = metrics::histogram!(MASTER_GAP);
    let _ = metrics::histogram!(START_WAIT_SECONDS);
}

/// Counters with a `job_type` label (the registered job name; not `job`,
/// which Prometheus gives every scraped series for its own scrape job).
const JOB_COUNTERS: &[&str] = &[
    TASKS_RETRIED,
    TASKS_DEAD_LETTERED,
    TASKS_RUN,
    JOBS_SUBMITTED,
    JOBS_COMPLETED,
    JOBS_FAILED,
    JOBS_CANCELLED,
];

/// Registers the `job_type`-labelled series of each job this node registers
/// (at zero: a rate then has data before the first job), and
/// [`BUILD_INFO`].
pub fn register_node(jobs: &[String], binary: &str, binary_version: &str) {
    for job in jobs {
        for c in JOB_COUNTERS {
            metrics::counter!(*c, "job_type" => job.clone()).absolute(0);
        }
        for h in [TASK_SECONDS, SHARD_SECONDS] {
            let _ = metrics::histogram!(h, "job_type" => job.clone());
        }
    }
    build_info(binary, binary_version).set(1.0);
    let _ = BUILD.set((binary.to_string(), binary_version.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_doc_is_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/METRICS.md");
        let want = catalogue_markdown();
        if std::env::var_os("UPDATE_METRICS_DOC").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(have == want, "dashboards/METRICS.md is stale: run UPDATE_METRICS_DOC=1 cargo test -p ringleader catalogue");
    }

    #[test]
    fn catalogue_names_follow_prometheus_conventions() {
        let mut names = std::collections::BTreeSet::new();
        for m in CATALOGUE {
            assert!(names.insert(m.name), "{} twice", m.name);
            assert!(m.name.starts_with("ringleader_"), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram => assert!(m.name.ends_with("_seconds"), "{}", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
        }
    }
}
