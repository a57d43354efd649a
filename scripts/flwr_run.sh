#!/usr/bin/env bash
# Run an experiment with Flower's own CLI (`flwr run .`) on a managed local SuperLink.
#
#   scripts/flwr_run.sh CONFIG OUT NODES
#
# FLWR_HOME lives inside OUT; telemetry, update checks and runtime dependency
# installation are off. Fails when the run's status is not finished:completed
# (`flwr run --stream` exits 0 even when the ServerApp fails), and always stops the
# SuperLink it started, by PID. Each ClientApp holds the GPUs the config's
# `gpus_per_site` says (by default a whole GPU when `device` is one, else none).
set -euo pipefail
if [[ $# -ne 3 ]]; then echo "usage: $0 CONFIG OUT NODES" >&2; exit 2; fi
here=$(cd "$(dirname "$0")/.." && pwd)
config=$(realpath "$1"); out=$(realpath -m "$2"); nodes=$3
[[ -f $config ]] || { echo "error: config not found: $1" >&2; exit 2; }
export PATH="$here/.venv/bin:$PATH" FLWR_HOME="$out/.flwr"
eval "$(python -m fedqc.transport.flower.env)"
if (exec 3<>/dev/tcp/127.0.0.1/39091) 2>/dev/null; then
  echo "error: a SuperLink already listens on 127.0.0.1:39091; stop it first" >&2; exit 1
fi
mkdir -p "$FLWR_HOME"

stop() {
  local pids pid
  pids=$(pgrep -f -- "--log-file $FLWR_HOME/local-superlink" || true)
  [[ -n $pids ]] || return 0
  for pid in $pids; do pkill -TERM -P "$pid" 2>/dev/null || true; kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do kill -0 $pids 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL $pids 2>/dev/null || true
}
trap stop EXIT INT TERM

cd "$here"
gpus=$(python - "$config" <<'PY'
import sys
from fedqc.config import load_config
from fedqc.errors import UserError
from fedqc.transport.flower.simulation import gpus_per_site
try:
    print(gpus_per_site(load_config(sys.argv[1])))
except UserError as exc:
    sys.exit(f"error: {exc}")
PY
)
flwr run . --stream --federation-config "num-supernodes=$nodes client-resources-num-gpus=$gpus" \
  --run-config "config='$config' out='$out' nodes=$nodes"
status=$(flwr ls --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["status"])')
echo "flwr run status: $status"
[[ $status == finished:completed ]]
