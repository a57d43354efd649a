#!/usr/bin/env bash
# Run an experiment on a Docker engine as docker-compose.yml describes it: the SuperLink, the ServerApp's
# SuperExec, and per site a SuperNode and a SuperExec (fedqc's fast path), each site's SuperExec mounting only
# that site's folder, read-only. Then `flwr run APP compose` from the host against the SuperLink.
#
#   scripts/run_compose.sh CONFIG [SITES_DIR] [OUT]
#
# SITES_DIR: per-site folders from `fedqc sites split` (default sites/<config name>).
# OUT: the run folder (default runs/<config name>-compose), mounted in the ServerApp's container at
#   /runs/<config name>: the results land there as in a loopback run; logs (OUT/logs/compose.log: every
#   container's output), FLWR_HOME and the generated compose file (OUT/.flwr/docker-compose.yml) too.
# The compose file is `fedqc sites compose`'s for SITES_DIR, with these changes for one run on this machine:
#   the SuperLink's port is published on 127.0.0.1 only (LINK_PORT, default a free port), OUT is the ServerApp's
#   /runs/<name>, CONFIG is mounted read-only where the ServerApp reads it, and the project is named
#   fedqc-<name>-<PID> (its own bridge network: the containers reach each other and the host's 127.0.0.1:LINK_PORT
#   and nothing else is opened). IMAGE (default fedqc:latest, from scripts/build_image.sh) must exist.
# TLS=1: docker-compose.tls.yml's topology: TLS and SuperNode authentication. A CA and the SuperLink's certificate
#   (superlink, 127.0.0.1, localhost) go to OUT/tls; each site's own key pair (SITES_DIR/<site>/keys, from
#   `fedqc sites keys`; the private key readable by uid 1000) is used as is and its public key registered with
#   `flwr supernode register` before the SuperNodes start; the flwr CLI connects over TLS too.
# RESUME=1: continue the run in OUT after its last complete checkpoint, as scripts/run_local_deployment.sh does.
# KEEP=1: leave the containers running (stop them with `docker-compose -p PROJECT -f OUT/.flwr/docker-compose.yml
#   down`); by default they are removed on success, failure or Ctrl-C. The script fails unless `flwr ls` reports
#   the run finished:completed. The project name is in OUT/logs/project.
set -euo pipefail
if [[ $# -lt 1 || $# -gt 3 ]]; then echo "usage: $0 CONFIG [SITES_DIR] [OUT]" >&2; exit 2; fi
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
[[ -f $1 ]] || { echo "error: config not found: $1" >&2; exit 2; }
case ${TLS:-0} in 0) tls=false ;; 1) tls=true ;; *) echo "error: TLS must be 0 or 1, got ${TLS}" >&2; exit 2 ;; esac
case ${RESUME:-0} in 0) resume=false ;; 1) resume=true ;; *) echo "error: RESUME must be 0 or 1, got ${RESUME}" >&2; exit 2 ;; esac
if [[ -x .venv/bin/python ]]; then export PATH="$here/.venv/bin:$PATH"; fi
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
eval "$(python -m fedqc.transport.flower.env)"
image=${IMAGE:-fedqc:latest}
compose=(env -u PYTHONPATH -u PYTHONHOME docker-compose)  # Debian's runs on the system Python: no venv paths
command -v docker-compose >/dev/null || compose=(docker compose)
docker info >/dev/null 2>&1 || { echo "error: no Docker engine answers (start dockerd, or check DOCKER_HOST)" >&2; exit 2; }
docker image inspect "$image" >/dev/null 2>&1 || { echo "error: image $image not found (scripts/build_image.sh)" >&2; exit 2; }

source scripts/deploy_args.sh
resolve_run "$1" "${2:-}" "${3:-}" compose
mapfile -t names < <(python -c 'import sys; from fedqc.transport.flower.deploy.sites import read_sites
print(*read_sites(sys.argv[1]), sep="\n")' "$sites")
if [[ $tls == true ]]; then
  for site in "${names[@]}"; do
    key=$sites/$site/keys/supernode.key
    [[ -f $key ]] || { echo "error: $key not found (make it with \`fedqc sites keys --site $sites/$site\`)" >&2; exit 2; }
    [[ $(stat -c %u "$key") == 1000 ]] || { echo "error: $key must belong to uid 1000, the containers' user (chown 1000 it)" >&2; exit 2; }
  done
fi
if [[ $resume == true ]]; then
  [[ -f $out/config.yaml ]] || { echo "error: RESUME=1: $out holds no run to continue (no config.yaml)" >&2; exit 2; }
  rm -rf "$out/.flwr"
  if [[ -d $out/logs ]]; then mv "$out/logs" "$out/logs.previous" && mkdir "$out/logs" && mv "$out/logs.previous" "$out/logs/previous"; fi
else
  [[ ! -e $out ]] || { echo "error: $out exists; remove it, pass another OUT, or continue it with RESUME=1" >&2; exit 2; }
fi
mkdir -p "$out/logs" "$out/.flwr"
export FLWR_HOME="$out/.flwr"
link=${LINK_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
file=$FLWR_HOME/docker-compose.yml
inner=/runs/$name
certs=$out/tls
if [[ $tls == true ]]; then
  rm -rf "$certs"
  python -m fedqc sites certificates --out "$certs" --host superlink >"$out/logs/certificates.log"
  chown 1000 "$certs/server.key"  # the SuperLink's container reads it as uid 1000; ca.key is never mounted
fi
python - "$sites" "$config" "$image" "$link" "$out" "$inner" "$file" "$tls" "$certs" <<'EOF'
import sys
from pathlib import Path

import yaml

from fedqc.transport.flower.deploy.sites import compose_file

sites, config, image, link, out, inner, file, tls, certs = sys.argv[1:]
spec = yaml.safe_load(compose_file(sites, config=f"configs/{Path(config).name}", image=image, tls=tls == "true",
                                   certificates=certs))
services = spec["services"]
services["superlink"].pop("build")  # the image is built beforehand (scripts/build_image.sh)
services["superlink"]["ports"] = [f"127.0.0.1:{link}:8000"]
volumes = services["superexec-serverapp"]["volumes"]
volumes[0] = f"{out}:{inner}"  # ./runs in the shipped file
volumes.append(f"{config}:/app/configs/{Path(config).name}:ro")
Path(file).write_text(yaml.safe_dump(spec, sort_keys=False, width=200))
EOF
chown 1000 "$out"  # the containers run as uid 1000; the ServerApp writes the run folder
project=fedqc-$(echo "$name" | tr -c 'a-z0-9\n' '-')-$$
echo "$project" >"$out/logs/project"
dc() { "${compose[@]}" -p "$project" -f "$file" "$@"; }
stop() {
  dc logs --no-color --timestamps >"$out/logs/compose.log" 2>&1 || true
  if [[ ${KEEP:-0} != 1 ]]; then dc down --timeout 5 >>"$out/logs/down.log" 2>&1 || true; fi
}
trap stop EXIT
trap 'exit 130' INT TERM
security=$([[ $tls == true ]] && echo "root-certificates = \"$certs/ca.crt\"" || echo "insecure = true")
cat >"$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "compose"

[superlink.compose]
address = "127.0.0.1:$link"
$security
EOF
dc up -d --no-build superlink >"$out/logs/up.log" 2>&1 || { cat "$out/logs/up.log" >&2; exit 1; }
for _ in $(seq 60); do flwr ls compose >/dev/null 2>&1 && break; sleep 1; done
flwr ls compose >/dev/null 2>&1 || { echo "error: the SuperLink did not answer on 127.0.0.1:$link" >&2; exit 1; }
if [[ $tls == true ]]; then  # a SuperNode whose key is not registered is refused: register every site's first
  for site in "${names[@]}"; do
    flwr supernode register "$sites/$site/keys/supernode.pub" compose --name "$site" >>"$out/logs/register.log" 2>&1 ||
      { echo "error: registering $site's public key failed (see $out/logs/register.log)" >&2; exit 1; }
  done
fi
dc up -d --no-build >>"$out/logs/up.log" 2>&1 || { cat "$out/logs/up.log" >&2; exit 1; }
n=${#names[@]}
echo "project $project: SuperLink 127.0.0.1:$link ($([[ $tls == true ]] && echo "TLS, SuperNode authentication" || echo plaintext)), $n sites; run folder $out"
app=.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  app=$FLWR_HOME/app
  mkdir -p "$app"
  git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$app"
fi
flwr run "$app" compose --stream \
  --run-config "config='/app/configs/$(basename "$config")' out='$inner' nodes=$n resume=$resume" 2>&1 | tee "$out/logs/run.log" || true
run_status() { flwr ls compose --format json | python -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["status"])'; }
status=$(run_status)
while [[ $status != finished:* ]]; do
  echo "the log stream ended while the run is $status; waiting for it to finish"
  sleep 5
  status=$(run_status)
done
echo "flwr run status: $status"
[[ $status == finished:completed ]]
