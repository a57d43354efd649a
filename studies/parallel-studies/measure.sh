#!/usr/bin/env bash
# The parallel-studies measurements (README.md), one after another: CONFIG's 2 seeds × 2 learning rates sequentially
# with 2 threads and with 1, with --parallel 2 (1 thread each), and on a two-node Ray cluster on loopback.
# Usage: studies/parallel-studies/measure.sh CONFIG OUT   (from the repository root; logs in OUT/*.log)
set -u
config=$1 out=$2
py=${PYTHON:-python}
ray=$(dirname "$(command -v "$py")")/ray
mkdir -p "$out"
study() {  # NAME ARGS...: one study, timed with its CPU use
  local name=$1; shift
  "$py" studies/parallel-studies/cpu_time.py "${ALSO[@]}" -- "$py" -m fedqc study --config "$config" --seeds 0 1 \
    --sweep train.lr=0.001,0.002 --out "$out/$name" --quiet "$@" > "$out/$name.log" 2>&1
  tail -1 "$out/$name.log"
}
ALSO=()
study seq2 --threads-per-run 2
study seq1 --threads-per-run 1
study par2 --threads-per-run 1 --parallel 2
# two Ray nodes on this host, 1 CPU and a 100 MB object store each, in a temp dir of their own (other programs use
# Ray on this machine: `ray stop` would end theirs too, so the nodes are stopped by process id below)
tmp=/tmp/ray-i35
"$ray" start --head --node-ip-address 127.0.0.1 --port 6390 --num-cpus 1 --object-store-memory 100000000 \
  --include-dashboard false --temp-dir $tmp --dashboard-agent-listen-port 52401 --metrics-export-port 52402 \
  --disable-usage-stats > "$out/ray-head.log" 2>&1
"$ray" start --address 127.0.0.1:6390 --node-ip-address 127.0.0.1 --num-cpus 1 --object-store-memory 100000000 \
  --temp-dir $tmp --dashboard-agent-listen-port 52411 --metrics-export-port 52412 --disable-usage-stats \
  > "$out/ray-worker.log" 2>&1
"$ray" status --address 127.0.0.1:6390 | grep -E "node_|CPU" > "$out/ray-status.log"
ALSO=(--also $tmp)
study cluster --threads-per-run 1 --ray-address 127.0.0.1:6390
daemons=$(pgrep -f "$tmp" | tr '\n' ' ')
children=$(for p in $daemons; do pgrep -P "$p"; done | tr '\n' ' ')
kill -9 $children $daemons 2>/dev/null
sleep 2
pgrep -f "$tmp" && echo "Ray processes of $tmp still running" || echo "Ray nodes stopped"
