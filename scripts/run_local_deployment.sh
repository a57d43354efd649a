#!/usr/bin/env bash
# Run an experiment on Flower's deployment engine with every component a plain process on
# loopback: one SuperLink, one SuperNode per site (its own port, node config naming the
# site and that site's own manifest), then `flwr run APP loopback` against the SuperLink.
# The same topology as docker-compose.yml, without a Docker engine.
#
#   scripts/run_local_deployment.sh CONFIG [SITES_DIR] [OUT]
#
# SITES_DIR: per-site folders from `fedqc sites split` (default sites/<config name>; built
#   with `make SITES_DIR` when the Makefile knows how, as for configs/deploy-smoke.yaml).
# OUT: the run folder (default runs/<config name>-deployment); logs and FLWR_HOME inside it.
# Ports: LINK_PORT (default: a free one) for the SuperLink, and the next free ones per node.
# TLS=1: TLS and SuperNode authentication. A CA, the SuperLink's certificate (127.0.0.1,
#   localhost) and a key pair per site go to OUT/tls (the sites' folders are not touched);
#   the SuperLink runs with TLS and --enable-supernode-auth, each site's public key is
#   registered with `flwr supernode register`, each SuperNode checks the SuperLink against
#   the CA and signs with its own private key, and the flwr CLI connects over TLS too.
# FAST=1 (default): fedqc's fast path. Each SuperNode runs as `python -m fedqc.transport.flower.fast.supernode`:
#   Flower's SuperNode with its idle wait for work 0.2 s instead of 3 s (FEDQC_SUPERNODE_POLL_S; with more than 8
#   sites 0.025 s × sites, as the SuperExecs' task poll FLWR_SUPEREXEC_TASK_POLL_INTERVAL beyond 4) and a SuperExec
#   that forks each ClientApp from a warm process instead of starting a fresh interpreter; SuperNode, ClientApp
#   and ServerApp ask again for a message's objects not yet there after 10 ms, not 1 s, and the SuperLink's
#   SuperExec looks for the ServerApp's task every 0.1 s (docs/deployment.md, "Per-hop overhead").
#   FAST=0: Flower's stock `flower-supernode`, pulls and polls, for comparison.
# RESUME=1: continue the run in OUT after its last complete checkpoint (`resume=true` in the run config), e.g.
#   after the ServerApp or the server died. The ended attempt's launcher state goes (OUT/.flwr: its SuperLink
#   database; OUT/tls); its logs move to OUT/logs/previous.
#
# In a git checkout the app's files (tracked, or untracked and not ignored) are staged in OUT/.flwr/app and
# `flwr run` builds the FAB from there: Flower walks every file under the app's folder, .venv and runs/ too,
# before it applies .gitignore (14 s of a smoke run, measured). Elsewhere the FAB is built from the repository.
# Telemetry, update checks and runtime dependency installation are off. The script fails
# unless `flwr ls` reports the run finished:completed (`flwr run --stream` exits 0 even when
# the ServerApp fails; when the log stream ends before the run, it waits for the run), and stops every
# process it started, by process group, on success, failure or Ctrl-C (TERM, then KILL for what still runs
# after about 2 s). Each component's log is OUT/logs/<component>.log, its PID (= its process
# group) OUT/logs/<component>.pid: stopping one SuperNode's group stops its site.
set -euo pipefail
if [[ $# -lt 1 || $# -gt 3 ]]; then echo "usage: $0 CONFIG [SITES_DIR] [OUT]" >&2; exit 2; fi
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
[[ -f $1 ]] || { echo "error: config not found: $1" >&2; exit 2; }
case ${TLS:-0} in 0|1) secure=${TLS:-0} ;; *) echo "error: TLS must be 0 or 1, got ${TLS}" >&2; exit 2 ;; esac
case ${FAST:-1} in 0|1) fast=${FAST:-1} ;; *) echo "error: FAST must be 0 or 1, got ${FAST}" >&2; exit 2 ;; esac
case ${RESUME:-0} in 0) resume=false ;; 1) resume=true ;; *) echo "error: RESUME must be 0 or 1, got ${RESUME}" >&2; exit 2 ;; esac
[[ -x .venv/bin/fedqc ]] || make -s install
export PATH="$here/.venv/bin:$PATH" OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
eval "$(python -m fedqc.transport.flower.env)"

source scripts/deploy_args.sh
resolve_run "$1" "${2:-}" "${3:-}" deployment
# one line per site, "<site><TAB><node config>", from a single Python start
mapfile -t nodes < <(python -c 'import sys; from fedqc.transport.flower.deploy.sites import read_sites, node_config
for s in read_sites(sys.argv[1]): print(s, node_config(s, f"{sys.argv[1]}/{s}"), sep="\t")' "$sites")
names=("${nodes[@]%%$'\t'*}")
if [[ $resume == true ]]; then
  [[ -f $out/config.yaml ]] || { echo "error: RESUME=1: $out holds no run to continue (no config.yaml)" >&2; exit 2; }
  rm -rf "$out/.flwr" "$out/tls"
  if [[ -d $out/logs ]]; then mv "$out/logs" "$out/logs.previous" && mkdir "$out/logs" && mv "$out/logs.previous" "$out/logs/previous"; fi
else
  [[ ! -e $out ]] || { echo "error: $out exists; remove it, pass another OUT, or continue it with RESUME=1" >&2; exit 2; }
fi
mkdir -p "$out/logs"
export FLWR_HOME="$out/.flwr"
mkdir -p "$FLWR_HOME"

free_port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pids=()
# signal SIG PID: PID's process group, or PID alone while setsid has not yet made the group
signal() { kill "-$1" -- "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null; }
# running: a process of the started sessions (= process groups, made by setsid) that is not a zombie (a SuperExec
# whose SuperNode ended first stays a zombie until init reaps it)
running() { ps -e -o sid=,stat= | awk -v s=" ${pids[*]} " 'index(s, " " $1 " ") && $2 !~ /^Z/ {f=1} END {exit !f}'; }
stop() {  # TERM every group; what still runs after about 2 s gets KILL
  local pid i
  for pid in "${pids[@]}"; do signal TERM "$pid" || true; done
  for i in $(seq 50); do
    running || return 0
    [[ $i == 20 ]] && for pid in "${pids[@]}"; do signal KILL "$pid" || true; done
    sleep 0.1
  done
}
trap stop EXIT
trap 'exit 130' INT TERM
start() {  # start LOG CMD...: in its own process group, so that stop() also ends its children; PID in LOG's .pid
  local log=$1; shift
  setsid "$@" >"$log" 2>&1 &
  pids+=($!)
  disown  # stop() ends it; bash need not report it as Killed
  echo $! >"${log%.log}.pid"
}
wait_port() {  # wait_port PORT PID: until something listens on PORT, or PID's group is gone
  for _ in $(seq 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    signal 0 "$2" || return 1
    sleep 0.2
  done
  return 1
}

link=${LINK_PORT:-$(free_port)}
if [[ $fast == 1 ]]; then
  supernode=(python -m fedqc.transport.flower.fast.supernode)
  # every site polls on this one machine: idle polls slow down with the number of sites, so that all of them
  # together ask about 40 times a second (20 sites on 2 cores: a hop's overhead 4.7 s at 0.2/0.1 s, 2.1 s at 0.5/0.5 s)
  read -r node_poll task_poll < <(python -c 'import sys; n = 0.025 * int(sys.argv[1])
print(round(max(0.2, n), 3), round(max(0.1, n), 3))' "${#names[@]}")
  export FEDQC_SUPERNODE_POLL_S=${FEDQC_SUPERNODE_POLL_S:-$node_poll}
  export FLWR_SUPEREXEC_TASK_POLL_INTERVAL=${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-$task_poll}
else
  supernode=(flower-supernode)
fi
tls=$out/tls
if [[ $secure == 1 ]]; then
  python -m fedqc.transport.flower.deploy.certificates "$tls" "${names[@]}"
  link_security=(--ssl-ca-certfile "$tls/ca.crt" --ssl-certfile "$tls/server.crt" --ssl-keyfile "$tls/server.key"
                 --enable-supernode-auth)
  cli_security="root-certificates = \"$tls/ca.crt\""
else
  link_security=(--insecure)
  cli_security="insecure = true"
fi
cat >"$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "loopback"

[superlink.loopback]
address = "127.0.0.1:$link"
$cli_security
EOF
# fast path: the SuperLink's own SuperExec (it starts the ServerApp) looks for its task every 0.1 s, not 1 s
link_env=()
if [[ $fast == 1 ]]; then link_env=(env "FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.1"); fi
start "$out/logs/superlink.log" "${link_env[@]}" flower-superlink "${link_security[@]}" --host 127.0.0.1 --port "$link" \
  --database "$out/.flwr/superlink.db" \
  --disable-runtime-dependency-installation
wait_port "$link" "${pids[-1]}" || { echo "error: the SuperLink did not start (see $out/logs/superlink.log)" >&2; exit 1; }
for line in "${nodes[@]}"; do
  site=${line%%$'\t'*}
  node_security=(--insecure)
  if [[ $secure == 1 ]]; then
    flwr supernode register "$tls/$site.pub" loopback --name "$site" >>"$out/logs/register.log" 2>&1 ||
      { echo "error: registering $site's public key failed (see $out/logs/register.log)" >&2; exit 1; }
    node_security=(--root-certificates "$tls/ca.crt" --auth-supernode-private-key "$tls/$site.key")
  fi
  start "$out/logs/supernode-$site.log" "${supernode[@]}" "${node_security[@]}" --superlink "127.0.0.1:$link" \
    --host 127.0.0.1 --port "$(free_port)" --node-config "${line#*$'\t'}"
done
mode=$([[ $secure == 1 ]] && echo "TLS, SuperNode authentication" || echo "plaintext")
echo "SuperLink 127.0.0.1:$link ($mode), ${#names[@]} $([[ $fast == 1 ]] && echo "fast " || echo "stock ")SuperNodes (${names[*]}); logs in $out/logs"
# Flower builds the FAB by walking every file under the app's folder (.venv and runs/ included: seconds) before it
# applies .gitignore; in a git checkout the app's own files (tracked, or untracked and not ignored) are staged first
app=.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  app=$FLWR_HOME/app
  mkdir -p "$app"
  git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$app"
fi
flwr run "$app" loopback --stream \
  --run-config "config='$config' out='$out' nodes=${#names[@]} resume=$resume fast=$([[ $fast == 1 ]] && echo true || echo false)" 2>&1 | tee "$out/logs/run.log" || true
run_status() { flwr ls loopback --format json | python -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["status"])'; }
status=$(run_status)
# the log stream can end before the run does (seen once with 20 stock SuperNodes): wait for the run itself
while [[ $status != finished:* ]]; do
  echo "the log stream ended while the run is $status; waiting for it to finish (logs: $out/logs)"
  sleep 5
  status=$(run_status)
done
echo "flwr run status: $status"
[[ $status == finished:completed ]]
