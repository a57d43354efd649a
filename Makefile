# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fedqc-installed

# Flower's settings (no telemetry, no update checks, no runtime dependency installation) are
# applied by fedqc itself (fedqc/transport/flower/env.py) and by the scripts it starts.

DEMO_DATA := data/demo
DEMO_RUN  := runs/demo

.PHONY: install demo test cohort clean bench bench-gpu image compose-smoke

SMOKE_SITES := sites/deploy-smoke

install: $(STAMP)

# torch first, pinned to the CPU wheel: any looser torch spec pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

cohort: install
	$(VENV)/bin/fedqc cohort --preset demo --out $(DEMO_DATA) --seed 0
	$(VENV)/bin/fedqc validate $(DEMO_DATA)/manifest.csv

demo: cohort
	$(PY) -m fedqc.simulate --config configs/demo.yaml --out $(DEMO_RUN) --overwrite
	$(VENV)/bin/fedqc infer --run $(DEMO_RUN)

# The deployment smoke test's sites: the `smoke` cohort (3 sites, 16³) split per site.
data/smoke/manifest.csv: | install
	$(VENV)/bin/fedqc cohort --preset smoke --size 16 --out data/smoke --seed 0

$(SMOKE_SITES): data/smoke/manifest.csv
	$(VENV)/bin/fedqc sites split --manifest data/smoke/manifest.csv --out $@ --overwrite

test: install
	$(PY) -m pytest -q

# The image (scripts/build_image.sh: a Debian-built base and the machine's CPU torch wheel when Docker Hub and
# PyTorch's index are out of reach), then the smoke experiment as docker-compose containers, checked against the
# in-process run (tests/test_compose.py; it skips when no Docker engine answers).
image:
	scripts/build_image.sh

compose-smoke: install
	$(PY) -m pytest -q -m docker tests/test_compose.py

# Benchmarks (bench/): JSON under bench/results/ and the table in studies/performance/README.md. About an hour on 2 cores.
bench: install
	$(PY) -m bench.overhead
	$(PY) -m bench.scaling
	$(PY) -m bench.qc_cost
	$(PY) -m bench.deployment
	$(PY) -m bench.report

# Seconds per scan on CPU and GPU (cuda skipped without one) from 32³ to 160×192×160; bench/results/gpu.json.
bench-gpu: install
	$(PY) -m bench.gpu

clean:
	rm -rf $(VENV) runs data $(SMOKE_SITES)
