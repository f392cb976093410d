#!/usr/bin/env python3
"""Writes ringleader.json, the Grafana dashboard, from the panel list below.

Edit the list and run `python3 dashboards/make_dashboard.py`; the test suite
checks that the JSON is current, well formed, and that every query returns
series against a live cluster.
"""
import json
import os

RATE = "$__rate_interval"

ROWS = [
    ("Cluster", [
        ("Serving masters", "sum(ringleader_node_role{role=\"master\"})", "stat"),
        ("Epoch", "max(ringleader_epoch)", "stat"),
        ("Workers connected", "sum(ringleader_workers)", "stat"),
        ("Roles by node", "ringleader_node_role", "timeseries"),
        ("Elections won", f"sum(increase(ringleader_elections_won_total[{RATE}]))", "timeseries"),
        ("Masters stepped down (they could serve no other worker)", f"sum by (instance) (increase(ringleader_master_step_downs_total[{RATE}]))", "timeseries"),
        ("Leadership changes seen by workers", f"sum(increase(ringleader_leadership_changes_total[{RATE}]))", "timeseries"),
        ("Time without a master (p99)", f"histogram_quantile(0.99, sum by (le) (rate(ringleader_master_gap_seconds_bucket[{RATE}])))", "timeseries"),
    ]),
    ("Throughput and latency", [
        ("Tasks run per second", f"sum(rate(ringleader_tasks_run_total[{RATE}]))", "timeseries"),
        ("Tasks run per second by job type", f"sum by (job_type) (rate(ringleader_tasks_run_total[{RATE}]))", "timeseries"),
        ("Shards committed per second", f"sum(rate(ringleader_shards_committed_total[{RATE}]))", "timeseries"),
        ("Shards queued", "sum(ringleader_shards_queued)", "timeseries"),
        ("Shards ready by priority", "max by (priority) (ringleader_shards_queued_by_priority)", "timeseries"),
        ("Runs held and shards waiting, by limit", [
            "max by (limit) (ringleader_limit_running)",
            "max by (limit) (ringleader_limit_waiting_shards)",
        ], "timeseries"),
        ("Shard wait in the queue p99, by priority", f"histogram_quantile(0.99, sum by (le, priority) (rate(ringleader_shard_wait_seconds_bucket[{RATE}])))", "timeseries"),
        ("Shard wait in the queue p99, by weighted fairness key", f"histogram_quantile(0.99, sum by (le, fairness_key) (rate(ringleader_shard_wait_by_key_seconds_bucket[{RATE}])))", "timeseries"),
        ("Oldest waiting job", "max(ringleader_oldest_waiting_seconds)", "timeseries"),
        ("Throttled by limit per second", f"sum by (limit) (rate(ringleader_limit_throttled_total[{RATE}]))", "timeseries"),
        ("Shards in flight", "sum(ringleader_shards_in_flight)", "timeseries"),
        ("In flight by worker", "max by (worker) (ringleader_worker_in_flight)", "timeseries"),
        ("Task duration p50 / p99", [
            f"histogram_quantile(0.5, sum by (le) (rate(ringleader_task_duration_seconds_bucket[{RATE}])))",
            f"histogram_quantile(0.99, sum by (le) (rate(ringleader_task_duration_seconds_bucket[{RATE}])))",
        ], "timeseries"),
        ("Shard duration p99", f"histogram_quantile(0.99, sum by (le) (rate(ringleader_shard_duration_seconds_bucket[{RATE}])))", "timeseries"),
        ("Slot wait for StartAck p50 / p99", [
            f"histogram_quantile(0.5, sum by (le) (rate(ringleader_start_wait_seconds_bucket[{RATE}])))",
            f"histogram_quantile(0.99, sum by (le) (rate(ringleader_start_wait_seconds_bucket[{RATE}])))",
        ], "timeseries"),
        ("Jobs running, and of them delayed jobs waiting for their time", [
            "sum(ringleader_jobs_running)",
            "max(ringleader_jobs_scheduled)",
        ], "timeseries"),
        ("Jobs submitted / completed / failed / cancelled", [
            f"sum(increase(ringleader_jobs_submitted_total[{RATE}]))",
            f"sum(increase(ringleader_jobs_completed_total[{RATE}]))",
            f"sum(increase(ringleader_jobs_failed_total[{RATE}]))",
            f"sum(increase(ringleader_jobs_cancelled_total[{RATE}]))",
        ], "timeseries"),
        ("Task duration p99 by job type", f"histogram_quantile(0.99, sum by (le, job_type) (rate(ringleader_task_duration_seconds_bucket[{RATE}])))", "timeseries"),
    ]),
    ("Failures", [
        ("Task retries per second", f"sum(rate(ringleader_tasks_retried_total[{RATE}]))", "timeseries"),
        ("Dead-lettered tasks per second", f"sum(rate(ringleader_tasks_dead_lettered_total[{RATE}]))", "timeseries"),
        ("Shards reassigned per second", f"sum(rate(ringleader_shards_reassigned_total[{RATE}]))", "timeseries"),
        ("Shards in doubt at a worker's death per second", f"sum(rate(ringleader_shards_in_doubt_total[{RATE}]))", "timeseries"),
        ("Worker links lost (suspicions)", f"sum(increase(ringleader_worker_links_lost_total[{RATE}]))", "timeseries"),
        ("Links closed for silence past their adaptive threshold, by node", f"sum by (instance) (increase(ringleader_links_silent_total[{RATE}]))", "timeseries"),
        ("Frame errors per second", f"sum(rate(ringleader_frame_errors_total[{RATE}]))", "timeseries"),
        ("Peers refused by reason", f"sum by (reason) (increase(ringleader_peer_refusals_total[{RATE}]))", "timeseries"),
    ]),
    ("ZooKeeper", [
        ("Sessions connected", "sum(ringleader_zk_connected)", "timeseries"),
        ("Session expirations", f"sum(increase(ringleader_zk_session_expirations_total[{RATE}]))", "timeseries"),
        ("Jobs created already done (one write) per second", f"sum(rate(ringleader_jobs_created_done_total[{RATE}]))", "timeseries"),
        ("Jobs discarded (their create failed) per second", f"sum(rate(ringleader_jobs_discarded_total[{RATE}]))", "timeseries"),
        ("Job records the collector read per second (flat, however many jobs are held)", f"sum(rate(ringleader_collector_reads_total[{RATE}]))", "timeseries"),
        ("Write latency p99 by operation", f"histogram_quantile(0.99, sum by (le, op) (rate(ringleader_zk_op_duration_seconds_bucket[{RATE}])))", "timeseries"),
        ("Errors by operation", f"sum by (op) (rate(ringleader_zk_errors_total[{RATE}]))", "timeseries"),
    ]),
    ("Object store", [
        ("Operations per second by kind", f"sum by (op) (rate(ringleader_store_op_duration_seconds_count[{RATE}]))", "timeseries"),
        ("Operation latency p99 by kind", f"histogram_quantile(0.99, sum by (le, op) (rate(ringleader_store_op_duration_seconds_bucket[{RATE}])))", "timeseries"),
    ]),
    ("Processes", [
        ("CPU by node (cores)", f"rate(process_cpu_seconds_total[{RATE}])", "timeseries"),
        ("Resident memory by node", "process_resident_memory_bytes", "timeseries"),
        ("Open file descriptors by node", "process_open_fds", "timeseries"),
        ("Versions", "ringleader_build_info", "table"),
    ]),
    ("QUIC", [
        ("Open connections", "sum(ringleader_quic_connections)", "timeseries"),
        ("Frames per second", f"sum by (direction) (rate(ringleader_quic_frames_total[{RATE}]))", "timeseries"),
        ("Bytes per second", f"sum by (direction) (rate(ringleader_quic_frame_bytes_total[{RATE}]))", "timeseries"),
    ]),
]


def main():
    ds = {"type": "prometheus", "uid": "${datasource}"}
    panels = []
    pid = 1
    y = 0
    for row_title, row_panels in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        for i, (title, exprs, kind) in enumerate(row_panels):
            if isinstance(exprs, str):
                exprs = [exprs]
            targets = [{"refId": chr(ord("A") + k), "expr": e, "datasource": ds} for k, e in enumerate(exprs)]
            w = 6 if kind == "stat" else 8
            per_line = 24 // w
            panels.append({
                "id": pid, "type": kind, "title": title, "datasource": ds, "targets": targets,
                "gridPos": {"h": 6 if kind == "stat" else 8, "w": w, "x": (i % per_line) * w, "y": y + (i // per_line) * 8},
                "fieldConfig": {"defaults": {}, "overrides": []}, "options": {},
            })
            pid += 1
        y += ((len(row_panels) + 2) // 3) * 8
    dashboard = {
        "title": "Ringleader",
        "uid": "ringleader",
        "schemaVersion": 38,
        "version": 1,
        "editable": True,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "tags": ["ringleader"],
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "options": [],
        }]},
        "annotations": {"list": []},
        "panels": panels,
    }
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ringleader.json")
    with open(out, "w") as f:
        json.dump(dashboard, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
