#!/usr/bin/env bash
# Compares this tree's speed with an older commit's, on this machine, in
# one run: builds the old commit's cluster-bench in a separate work tree,
# then alternates `cluster-bench --quick` runs of old and new (so that
# load and heat hit both alike) and prints each measure's median for both
# and the ratio new/old.
#
#   benches/compare-with.sh [COMMIT=bf19259] [ROUNDS=3] [SECTIONS=throughput,wordcount,failover,kill,handover]
#
# COMMIT `.` is this tree itself (nothing more is built): with OLD_ARGS
# and NEW_ARGS, extra cluster-bench arguments for each side, it compares
# this tree with and without an option, e.g. issue 33's features on:
#
#   NEW_ARGS="--queue-priority 5 --queue-fairness-key tenant-a" benches/compare-with.sh . 3 queue
#
# Needs what the suite needs (scripts/setup). Takes about 4 minutes per
# round after the two release builds.
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:-bf19259}
rounds=${2:-3}
sections=${3:-throughput,wordcount,failover,kill,handover}
work=$(mktemp -d /tmp/ringleader-compare.XXXXXX)
cleanup() {
    git worktree remove --force "$work/old" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

new_bin="$PWD/target/release/cluster-bench"
if [ "$old" = . ]; then
    echo "building $(git rev-parse --short HEAD) (release)..." >&2
    cargo build -q --release -p ringleader-benches --bins
    old_bin=$new_bin
else
    git worktree add --detach "$work/old" "$old" >/dev/null
    echo "building $old and $(git rev-parse --short HEAD) (release)..." >&2
    (cd "$work/old" && CARGO_TARGET_DIR="$PWD/../target-old" cargo build -q --release -p ringleader-benches --bins)
    cargo build -q --release -p ringleader-benches --bins
    old_bin="$work/target-old/release/cluster-bench"
fi

# A run that fails is tried once more; a round with a side that fails
# twice is left out (and said so), so that one flaky run does not void
# the comparison.
run() { # side round
    local bin=$old_bin extra=${OLD_ARGS:-}
    [ "$1" = new ] && bin=$new_bin && extra=${NEW_ARGS:-}
    # Each binary finds its own node binaries next to it.
    # shellcheck disable=SC2086
    "$bin" --quick --only "$sections" $extra >"$work/$1.$2.md" 2>"$work/$1.$2.log"
}
for i in $(seq 1 "$rounds"); do
    for side in old new; do
        echo "round $i: $side" >&2
        if ! run "$side" "$i" && ! run "$side" "$i"; then
            echo "cluster-bench ($side, round $i) failed twice; leaving the round out:" >&2
            grep -m3 -E 'panicked|Error|error' "$work/$side.$i.log" >&2 || tail -5 "$work/$side.$i.log" >&2
            rm -f "$work/old.$i.md" "$work/new.$i.md"
            break
        fi
    done
done

python3 - "$work" "$rounds" "$old" <<'EOF'
import re, statistics, sys
work, rounds, old = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def rows(path):
    out = {}
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) != 4 or cells[0] in ('measure', '---'):
            continue
        m = re.search(r'-?\d+(?:\.\d+)?', cells[1])
        if m:
            out[cells[0]] = (float(m.group()), cells[1])
    return out
import os
done = [i for i in range(1, rounds + 1)
        if all(os.path.exists(f"{work}/{side}.{i}.md") for side in ('old', 'new'))]
if not done:
    sys.exit("no round completed on both sides")
rounds = len(done)
runs = {side: [rows(f"{work}/{side}.{i}.md") for i in done] for side in ('old', 'new')}
measures = [m for m in runs['new'][0] if all(m in r for side in runs.values() for r in side)]
print(f"| measure | {old} (median of {rounds}) | this tree (median of {rounds}) | new / old |")
print("| --- | --- | --- | --- |")
for m in measures:
    o = statistics.median(r[m][0] for r in runs['old'])
    n = statistics.median(r[m][0] for r in runs['new'])
    # The unit: what follows the first number, up to a range or a note.
    unit = re.split(r'[(;,]', re.sub(r'^-?\d+(?:\.\d+)?', '', runs['new'][0][m][1]))[0].strip()
    ratio = f"{n / o:.2f}" if o else "-"
    print(f"| {m} | {o:g} {unit} | {n:g} {unit} | {ratio} |")
EOF
