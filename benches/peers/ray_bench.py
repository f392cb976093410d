"""Ray's figures for the work-queue rows of cluster-bench, on this machine.

Prints one JSON object per line: {"peer": "ray", "measure": ..., ...}.
Run by `cluster-bench --peers` with the virtual environment made by
`benches/peers/setup.sh`; runnable alone:
    target/peers-venv/bin/python benches/peers/ray_bench.py --one-by-one 300
"""

import argparse
import json
import time

import ray


def emit(**fields):
    print(json.dumps({"peer": "ray", **fields}), flush=True)


def percentile(sorted_ms, q):
    return sorted_ms[round((len(sorted_ms) - 1) * q)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--one-by-one", type=int, default=300)
    p.add_argument("--in-flight", type=int, default=3000)
    p.add_argument("--pipelined", type=int, default=100_000)
    p.add_argument("--cpus", type=int, default=2)
    a = p.parse_args()

    ray.init(num_cpus=a.cpus, include_dashboard=False, logging_level="ERROR")

    @ray.remote
    def square(x):
        return x * 2

    # Warm the workers up (process start, function export).
    ray.get([square.remote(i) for i in range(100)])

    lat = []
    for i in range(a.one_by_one):
        t = time.perf_counter()
        assert ray.get(square.remote(i)) == 2 * i
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    emit(measure="one_by_one", n=a.one_by_one, p50_ms=percentile(lat, 0.5),
         p99_ms=percentile(lat, 0.99))

    t = time.perf_counter()
    pending = {}
    next_i = 0
    done = 0
    while done < a.in_flight:
        while len(pending) < 64 and next_i < a.in_flight:
            pending[square.remote(next_i)] = next_i
            next_i += 1
        ready, _ = ray.wait(list(pending), num_returns=1)
        for r in ready:
            i = pending.pop(r)
            assert ray.get(r) == 2 * i
            done += 1
    emit(measure="in_flight_64", n=a.in_flight,
         per_s=a.in_flight / (time.perf_counter() - t))

    t = time.perf_counter()
    refs = [square.remote(i) for i in range(a.pipelined)]
    total = sum(ray.get(refs))
    assert total == a.pipelined * (a.pipelined - 1)
    emit(measure="pipelined", n=a.pipelined,
         per_s=a.pipelined / (time.perf_counter() - t))
    ray.shutdown()


if __name__ == "__main__":
    main()
