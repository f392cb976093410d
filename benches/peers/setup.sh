#!/bin/sh
# Installs the peers that `cluster-bench --peers` measures in the same run:
# Ray and Celery in a virtual environment of their own (target/peers-venv,
# or $RINGLEADER_PEERS_VENV), and Debian's redis-server for Celery's broker
# (each run starts a private one on a free port and stops it).
set -eu
cd "$(dirname "$0")/../.."
venv=${RINGLEADER_PEERS_VENV:-target/peers-venv}
if ! command -v redis-server >/dev/null 2>&1; then
    apt-get update -q && apt-get install -y -q redis-server
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q "ray==2.60.0" "celery[redis]==5.7.0"
echo "peers installed in $venv; now: target/release/cluster-bench --quick --only queue --peers"
