"""Per-hop overhead of Flower's deployment engine, stock and fedqc's fast path, against its simulation engine.

Runs configs/deploy-smoke.yaml (3 sites, 2 cycles, 16³) on Flower simulation, then as a
loopback deployment (``scripts/run_local_deployment.sh``) ``--repeats`` times on each
path, back to back: Flower's stock SuperNodes (``FAST=0``) and fedqc's fast path
(``FAST=1``: shorter SuperNode waits, a SuperExec that forks warm ClientApps; see
docs/deployment.md). Then, once per path, a 20-site deployment (8 scans a site, 16³,
one cycle, fixed threshold: the hops and the final evaluation round). A hop's overhead
is the server's wall time for it minus the site's own training time (``hop_seconds -
seconds`` in train_log.csv); the figures pool every repeat's hops. Also times a fresh
ClientApp's start (imports and site set-up), which every stock deployment message pays.

    python -m bench.deployment [--repeats 2] [--out bench/results/deployment.json] [--only smoke|wide]
"""

from __future__ import annotations

import argparse
import json
import shutil
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
PATHS = {"stock": "0", "fast": "1"}  # FAST= of scripts/run_local_deployment.sh
WIDE_SITES = 20  # the wide deployment: 20 sites of 8 scans (4 train, 2 val, 2 test)


def hop_overhead(*runs: Path) -> dict:
    log = pd.concat([pd.read_csv(run / "clean" / "train_log.csv") for run in runs])
    over = hop_overhead_s(log)
    return {"hops": len(over), "hop_overhead_s_median": float(np.median(over)),
            "hop_overhead_s_p95": float(np.percentile(over, 95)), "hop_s_median": float(log["hop_seconds"].median())}


def deployment(config: Path, sites: Path, out: Path, fast: str) -> float:
    """Run the loopback deployment into ``out`` (``FAST=fast``); its wall seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run([str(ROOT / "scripts" / "run_local_deployment.sh"), str(config), str(sites), str(out)],
                          capture_output=True, text=True, env={**flower_env(), "FAST": fast}, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"deployment run failed (its logs: {out / 'logs'}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def wide_deployment(tmp: Path) -> tuple[Path, Path]:
    """The 20-site cohort split per site, and its config: deploy-smoke's, one cycle, no calibration round."""
    from fedqc.data.synth.cohort import SiteSpec, generate_cohort
    from fedqc.transport.flower.deploy.sites import split_sites

    specs = [SiteSpec(f"site{i:02d}", f"scanner{i % 5 + 1:02d}", 4, 2, 2, 2, 1, 1, 2, 1, 1) for i in range(WIDE_SITES)]
    generate_cohort(tmp / "wide-cohort", preset="smoke", size=16, seed=0, sites=specs)
    split_sites(tmp / "wide-cohort" / "manifest.csv", tmp / "wide-sites")
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["name"] = "deploy-wide"
    cfg["train"]["cycles"] = 1
    cfg["calibration"]["threshold"] = "fixed"
    (tmp / "deploy-wide.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "deploy-wide.yaml", tmp / "wide-sites"


def simulation(out: Path) -> dict:
    cfg = yaml.safe_load(CONFIG.read_text()) | {"engine": "flower", "manifest": str(MANIFEST)}
    wall, _ = simulate(cfg, out.parent / "sim.yaml", out)
    return {"run_s": wall, **hop_overhead(out)}


def clientapp_start(repeats: int = 3) -> float:
    """Median seconds for a fresh interpreter to import the ClientApp and set up a site (no training)."""
    probe = ("from fedqc.transport.flower.client_app import _site; from fedqc.config import ModelSpec; "
             f"_site({str(SITES / 'hospitalA' / 'manifest.csv')!r}, 'hospitalA', ModelSpec('sfcn', 0.25, (16, 16, 16)), ())")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", probe], check=True, cwd=ROOT, env=flower_env())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare(config: Path, sites: Path, tmp: Path, name: str, repeats: int) -> dict:
    """Each path ``repeats`` times, alternating (stock, fast, stock, ...): whole-run seconds and hop overheads."""
    runs: dict[str, list[Path]] = {path: [] for path in PATHS}
    walls: dict[str, list[float]] = {path: [] for path in PATHS}
    for i in range(repeats):
        for path, fast in PATHS.items():
            out = tmp / f"{name}-{path}-{i}"
            walls[path].append(round(deployment(config, sites, out, fast), 1))
            runs[path].append(out)
    return {path: {"run_s": walls[path], **hop_overhead(*runs[path])} for path in PATHS}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.deployment", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="loopback runs of the smoke config per path")
    ap.add_argument("--out", type=Path, default=RESULTS / "deployment.json")
    ap.add_argument("--only", choices=("smoke", "wide"),
                    help="rerun one part (both paths, back to back) and replace it in --out; the rest is kept")
    args = ap.parse_args()
    subprocess.run(["make", "-s", "sites/deploy-smoke"], check=True, cwd=ROOT)
    tmp = Path(tempfile.mkdtemp(prefix="bench-deployment-"))  # kept when a run fails, for its logs
    if args.only:
        result = json.loads(args.out.read_text())
    else:
        result = {"machine": machine(), "repeats": args.repeats, "clientapp_start_s": clientapp_start(),
                  "simulation": simulation(tmp / "sim")}
    if args.only in (None, "smoke"):
        result["repeats"] = args.repeats
        result["smoke"] = compare(CONFIG, SITES, tmp, "smoke", args.repeats)
    if args.only in (None, "wide"):
        result["wide"] = {"sites": WIDE_SITES, "scans_per_site": 8, **compare(*wide_deployment(tmp), tmp, "wide", 1)}
    shutil.rmtree(tmp)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    sim = result["simulation"]
    print(f"simulation: hop overhead median {sim['hop_overhead_s_median']:.2f} s; run {sim['run_s']:.1f} s")
    for run in ("smoke", "wide"):
        for path in PATHS:
            r = result[run][path]
            print(f"{run:5s} {path:5s} hop overhead median {r['hop_overhead_s_median']:.2f} s, "
                  f"p95 {r['hop_overhead_s_p95']:.2f} s; run {r['run_s']} s")
    print(f"ClientApp start (imports + site set-up): {result['clientapp_start_s']:.2f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
