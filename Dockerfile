# fedqc on python:3.11-slim with CPU torch: one image for the SuperLink, the SuperExecs
# (ServerApp and ClientApps) and the SuperNodes of docker-compose.yml.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 OMP_NUM_THREADS=1

# CPU torch first, from PyTorch's CPU index: a plain `pip install torch` pulls CUDA (GBs).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fedqc ./fedqc
RUN pip install .
COPY configs ./configs

# Site data is never baked in: each site's SuperExec mounts its own folder at /site (read-only).
RUN useradd --create-home --uid 1000 app && mkdir -p /runs && chown app /runs
USER app
ENV FLWR_HOME=/home/app/.flwr
