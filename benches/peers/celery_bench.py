"""Celery's figures (Redis broker and result backend, a private
redis-server, a prefork worker of 2 processes) for the work-queue rows of
cluster-bench, on this machine.

Prints one JSON object per line: {"peer": "celery", "measure": ..., ...}.
Run by `cluster-bench --peers`; runnable alone:
    target/peers-venv/bin/python benches/peers/celery_bench.py --one-by-one 300
Starts and stops its own redis-server and worker; leaves nothing running.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def emit(**fields):
    print(json.dumps({"peer": "celery", **fields}), flush=True)


def percentile(sorted_ms, q):
    return sorted_ms[round((len(sorted_ms) - 1) * q)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server did not listen on {port}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--one-by-one", type=int, default=300)
    p.add_argument("--in-flight", type=int, default=3000)
    p.add_argument("--pipelined", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=2)
    a = p.parse_args()

    port = free_port()
    work = tempfile.mkdtemp(prefix="ringleader-peers-")
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", work],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        wait_port(port)
        env = dict(os.environ, RINGLEADER_PEERS_REDIS=f"redis://127.0.0.1:{port}/0")
        os.environ.update(env)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker",
             "--concurrency", str(a.concurrency), "--pool", "prefork", "-l", "WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sys.path.insert(0, HERE)
        from celery_tasks import square

        # Warm up: the worker is ready once a task comes back.
        square.delay(1).get(timeout=60)
        for r in [square.delay(i) for i in range(100)]:
            r.get(timeout=60)

        lat = []
        for i in range(a.one_by_one):
            t = time.perf_counter()
            assert square.delay(i).get(timeout=60) == 2 * i
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        emit(measure="one_by_one", n=a.one_by_one, p50_ms=percentile(lat, 0.5),
             p99_ms=percentile(lat, 0.99))

        # 64 in flight: a window of results, each awaited in order.
        t = time.perf_counter()
        window = []
        for i in range(a.in_flight):
            window.append((i, square.delay(i)))
            if len(window) == 64:
                j, r = window.pop(0)
                assert r.get(timeout=60) == 2 * j
        for j, r in window:
            assert r.get(timeout=60) == 2 * j
        emit(measure="in_flight_64", n=a.in_flight,
             per_s=a.in_flight / (time.perf_counter() - t))

        t = time.perf_counter()
        rs = [square.delay(i) for i in range(a.pipelined)]
        total = sum(r.get(timeout=600) for r in rs)
        assert total == a.pipelined * (a.pipelined - 1)
        emit(measure="pipelined", n=a.pipelined,
             per_s=a.pipelined / (time.perf_counter() - t))
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        redis.terminate()
        redis.wait(timeout=20)


if __name__ == "__main__":
    main()
