"""Per-hop overhead of Flower's deployment engine against its simulation engine.

Runs configs/deploy-smoke.yaml (3 sites, 2 cycles, 16³) on Flower simulation, then
``--repeats`` times as a loopback deployment (``scripts/run_local_deployment.sh``, with
fedqc's reply polling: push, then pull with a wait growing from 5 ms to 1 s). A hop's
overhead is the server's wall time for it minus the site's own training time
(``hop_seconds - seconds`` in train_log.csv); the figures pool every repeat's hops. Also
times a fresh ClientApp's start (imports and site set-up), which every deployment
message pays.

    python -m bench.deployment [--repeats 2] [--out bench/results/deployment.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench.common import RESULTS, ROOT, flower_env, hop_overhead_s, machine, simulate

CONFIG = ROOT / "configs" / "deploy-smoke.yaml"
SITES = ROOT / "sites" / "deploy-smoke"
MANIFEST = ROOT / "data" / "smoke" / "manifest.csv"
DEPLOYMENT = "deployment_fedqc_polling"


def hop_overhead(*runs: Path) -> dict:
    log = pd.concat([pd.read_csv(run / "clean" / "train_log.csv") for run in runs])
    over = hop_overhead_s(log)
    return {"hops": len(over), "hop_overhead_s_median": float(np.median(over)),
            "hop_overhead_s_p95": float(np.percentile(over, 95)), "hop_s_median": float(log["hop_seconds"].median())}


def deployment(out: Path) -> float:
    """Run the loopback deployment into ``out``; its wall seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run([str(ROOT / "scripts" / "run_local_deployment.sh"), str(CONFIG), str(SITES), str(out)],
                          capture_output=True, text=True, env=flower_env(), cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"deployment run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def simulation(out: Path) -> dict:
    cfg = yaml.safe_load(CONFIG.read_text()) | {"engine": "flower", "manifest": str(MANIFEST)}
    wall, _ = simulate(cfg, out.parent / "sim.yaml", out)
    return {"run_s": wall, **hop_overhead(out)}


def clientapp_start(repeats: int = 3) -> float:
    """Median seconds for a fresh interpreter to import the ClientApp and set up a site (no training)."""
    probe = ("from fedqc.transport.flower.client_app import _site; from fedqc.config import ModelSpec; "
             f"_site({str(SITES / 'hospitalA' / 'manifest.csv')!r}, 'hospitalA', None, ModelSpec('sfcn', 0.25, (16, 16, 16)))")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", probe], check=True, cwd=ROOT, env=flower_env())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.deployment", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "deployment.json")
    args = ap.parse_args()
    subprocess.run(["make", "-s", "sites/deploy-smoke"], check=True, cwd=ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result = {"machine": machine(), "repeats": args.repeats, "clientapp_start_s": clientapp_start(),
                  "simulation": simulation(tmp / "sim")}
        runs = [tmp / f"{DEPLOYMENT}-{i}" for i in range(args.repeats)]
        walls = [deployment(run) for run in runs]
        result[DEPLOYMENT] = {"run_s": [round(w, 1) for w in walls], **hop_overhead(*runs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for key in ("simulation", DEPLOYMENT):
        r = result[key]
        print(f"{key:27s} hop overhead median {r['hop_overhead_s_median']:.2f} s, p95 {r['hop_overhead_s_p95']:.2f} s; "
              f"run {r['run_s']} s")
    print(f"ClientApp start (imports + site set-up): {result['clientapp_start_s']:.2f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
