#!/usr/bin/env bash
# Build the fedqc image (Dockerfile) on a machine that reaches Debian's mirror and PyPI but neither Docker Hub
# nor PyTorch's index, as this project's build machines do. With internet, `docker build -t fedqc:latest .`
# (the Dockerfile's defaults: python:3.11-slim, torch from PyTorch's CPU index) is all a user needs.
#
#   scripts/build_image.sh [TAG]          (default fedqc:latest)
#
# 1. The base image: unless BASE names one that exists, a Debian bookworm made with debootstrap from Debian's
#    mirror (minbase with python3, python3-venv, ca-certificates), imported as fedqc-base:bookworm.
# 2. torch: the CPU wheel of torch==2.13.0 that pip on this machine finds through its own configuration
#    (WHEELS, default: pip's find-links, /opt/wheels here) is served over HTTP on 127.0.0.1 for the build only;
#    the build runs with host networking, so it reaches that server and PyPI and nothing else is opened.
# 3. CONSTRAIN=1 (default): the build installs the versions of the venv that runs the in-process runs
#    (VENV, default /work/main/.venv or .venv), so the containers compute what the loopback processes compute
#    bit for bit (tests/test_compose.py compares them).
# The wheel server listens on 127.0.0.1:WHEEL_PORT (default 38765; fixed so that Docker's layer cache holds across
# builds). NO_CACHE=1 rebuilds every layer (the cache does not see a changed wheel or constraint behind the same URL).
# Prints the build's wall time and the image's size. Needs a running Docker engine (`docker info`).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
tag=${1:-fedqc:latest}
base=${BASE:-fedqc-base:bookworm}
docker info >/dev/null 2>&1 || { echo "error: no Docker engine answers (start dockerd, or check DOCKER_HOST)" >&2; exit 2; }
start=$(date +%s)

if ! docker image inspect "$base" >/dev/null 2>&1; then
  [[ $base == fedqc-base:bookworm ]] || { echo "error: base image $base not found" >&2; exit 2; }
  command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  echo "debootstrap bookworm into $root"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" \
    "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$base" >/dev/null
  rm -rf "$root" "$root.log"
  trap - EXIT
fi

wheels=${WHEELS:-$(pip config get global.find-links 2>/dev/null || echo /opt/wheels)}
ls "$wheels"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 || { echo "error: no torch-2.13.0+cpu wheel in $wheels (set WHEELS)" >&2; exit 2; }
serve=$(mktemp -d)
ln -s "$(realpath "$wheels")" "$serve/wheels"
venv=${VENV:-$( [[ -x /work/main/.venv/bin/python ]] && echo /work/main/.venv || echo .venv )}
pip_args=""
# pip's CA bundle on this machine (a TLS-intercepting proxy's CA in it), for the build stage only
cert=${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}
cert_arg=()
if [[ -n $cert ]]; then cp "$cert" "$serve/ca.crt"; cert_arg=(--build-arg PIP_CERT_URL="http://127.0.0.1:PORT/ca.crt"); fi
if [[ ${CONSTRAIN:-1} == 1 ]]; then
  # the exact versions of the venv, less fedqc itself (installed from this tree) and torch (the wheel above)
  "$venv/bin/python" -m pip freeze --exclude-editable | grep -v -i -E '^(fedqc|torch)[ =@]' | grep '==' >"$serve/constraints.txt"
  pip_args="--constraint http://127.0.0.1:PORT/constraints.txt"
fi
# a fixed port (WHEEL_PORT): the URLs are build arguments, and a changed argument invalidates Docker's layer cache
port=${WHEEL_PORT:-38765}
python3 -m http.server --bind 127.0.0.1 --directory "$serve" "$port" >"$serve.http.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; rm -rf "$serve" "$serve.http.log"' EXIT
sleep 1
kill -0 "$server" 2>/dev/null || { echo "error: cannot serve the wheel on 127.0.0.1:$port (in use? set WHEEL_PORT)" >&2; exit 2; }

cache=()
if [[ ${NO_CACHE:-0} == 1 ]]; then cache=(--no-cache); fi
docker build "${cache[@]}" --network host -t "$tag" \
  --build-arg BASE="$base" \
  --build-arg TORCH_PIP_ARGS="--find-links http://127.0.0.1:$port/wheels/" \
  --build-arg PIP_ARGS="${pip_args//PORT/$port}" "${cert_arg[@]//PORT/$port}" .
end=$(date +%s)
size=$(docker image inspect "$tag" --format '{{.Size}}')
echo "built $tag on $base in $((end - start)) s; image size $((size / 1000000)) MB"
