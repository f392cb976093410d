#!/bin/bash
# CPU share of each benchmark process (nodes, ZooKeeper, cluster-bench)
# over a window: `benches/cpu-share.sh SECONDS` while cluster-bench runs,
# e.g. beside `cluster-bench --only wordcount --wc-secs 25`. Read from
# /proc/PID/stat (user + system ticks), 100% being one core.
set -euo pipefail
secs=${1:-5}
snap() {
    for p in $(pgrep -f 'bench-node|java|cluster-bench' || true); do
        [ -r "/proc/$p/stat" ] || continue
        name=$(tr '\0' ' ' < "/proc/$p/cmdline" | grep -o -- '--node-id [^ ]*\|zookeeper\|cluster-bench' | head -1 | tr ' ' _ || true)
        echo "$p ${name:-?} $(awk '{print $14+$15}' "/proc/$p/stat")"
    done
}
a=$(mktemp) b=$(mktemp)
trap 'rm -f "$a" "$b"' EXIT
snap | sort > "$a"
sleep "$secs"
snap | sort > "$b"
hz=$(getconf CLK_TCK)
join "$a" "$b" | awk -v s="$secs" -v hz="$hz" '{printf "%-8s %-22s %5.1f%%\n", $1, $2, ($5-$3)/hz/s*100}'
