# fedqc with CPU torch: one image for the SuperLink, the SuperExecs (ServerApp and ClientApps) and the
# SuperNodes of docker-compose.yml. With internet: `docker build -t fedqc:latest .`. Without Docker Hub or
# PyTorch's index (a Debian-built base, torch from a local wheel): scripts/build_image.sh.
#
# Build arguments (defaults for a machine with internet):
#   BASE            the base image; it must have python3 (3.11: torch's wheel is cp311) with venv.
#   TORCH_PIP_ARGS  where pip finds torch==2.13.0 (a plain `pip install torch` pulls CUDA, GBs).
#   PIP_ARGS        more pip arguments for the whole install, e.g. `--constraint URL` for exact versions.
#   PIP_CERT_URL    a CA bundle for pip to trust (a TLS-intercepting proxy's), fetched into the build stage only.
ARG BASE=python:3.11-slim

# Stage 1: a virtual environment with torch and fedqc. pip and its caches stay in this stage.
FROM ${BASE} AS build
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ARG PIP_ARGS=""
ARG PIP_CERT_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
RUN if [ -n "$PIP_CERT_URL" ]; then python3 -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], '/opt/pip-ca.crt')" "$PIP_CERT_URL" \
 && /opt/venv/bin/pip config --site set global.cert /opt/pip-ca.crt; fi
RUN /opt/venv/bin/pip install $PIP_ARGS $TORCH_PIP_ARGS torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fedqc ./fedqc
# not editable, no compiler: fedqc is pure Python and every dependency a wheel; then pip and setuptools go
RUN /opt/venv/bin/pip install $PIP_ARGS .
RUN /opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel && rm -f /opt/venv/pip.conf

# Stage 2: the base and the environment, nothing else.
FROM ${BASE}
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 OMP_NUM_THREADS=1
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY configs ./configs

# Site data is never baked in: each site's SuperExec mounts its own folder at /site (read-only).
RUN useradd --create-home --uid 1000 app && mkdir -p /runs && chown app /runs
USER app
ENV FLWR_HOME=/home/app/.flwr
