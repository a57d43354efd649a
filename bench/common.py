"""What the benchmarks share: paths, the reference experiment, the machine, peak memory, fedqc runs and their scores."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from fedqc.transport.flower.env import FLOWER_ENV, RAY_ENV

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REFERENCE = ROOT / "data" / "reference" / "manifest.csv"
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def machine() -> dict:
    """Cores, torch threads, device and versions of the machine a figure was measured on."""
    import flwr

    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device, "cpu": cpu,
            "python": platform.python_version(), "torch": torch.__version__, "flwr": flwr.__version__}


def flower_env() -> dict[str, str]:
    """This process's environment with fedqc's Flower and Ray settings (:mod:`fedqc.transport.flower.env`),
    for the runs a benchmark starts, whether or not ``make`` exported them."""
    return {**os.environ, **FLOWER_ENV, **RAY_ENV}


def reference_config(cycles: int, engine: str, manifest: Path = REFERENCE, **train) -> dict:
    """The benchmark experiment: reference shape, half-width SFCN, clean arm only, 2 threads, the reference's end of
    cycle (no calibration rounds: the plain loop of ``bench.overhead`` has none, and the figures before calibration
    existed were measured without them)."""
    return {"name": "bench", "manifest": str(manifest), "engine": engine, "threads": 2, "arms": ["clean"],
            "model": {"name": "sfcn", "width": 0.5, "input_shape": [32, 32, 32]},
            "calibration": {"batchnorm": "site", "threshold": "fixed"},
            "train": {"cycles": cycles, "branch_cycle": 0, "batch_size": 5, "lr": 1e-3, "seed": 0, **train}}


def ensure_cohort(manifest: Path, preset: str = "reference", harm: dict | None = None) -> None:
    """Generate the ``preset`` cohort (32³, seed 0) under ``manifest``'s folder when it is missing."""
    if not manifest.is_file():
        from fedqc.data.synth.cohort import generate_cohort

        print(f"generating the {preset} cohort under {manifest.parent} ...", flush=True)
        generate_cohort(manifest.parent, preset=preset, size=32, seed=0, harm=harm)


def hop_overhead_s(log: pd.DataFrame) -> np.ndarray:
    """Per hop of a ``train_log.csv``: the server's wall time minus the site's own training time."""
    return (log["hop_seconds"] - log["seconds"]).to_numpy()


def _tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and all its descendants (Ray workers, SuperNodes, ClientApps), from /proc."""
    parent, rss = {}, {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            parent[int(p.name)] = int(fields[1])
            rss[int(p.name)] = int((p / "statm").read_text().split()[1]) * PAGE_MB
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        kids = [pid for pid, ppid in parent.items() if ppid in frontier and pid not in tree]
        tree.update(kids)
        frontier = kids
    return sum(rss.get(pid, 0.0) for pid in tree)


def run_measured(cmd: list[str], *, interval: float = 0.25, **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd`` to completion; also return the peak resident memory (MB) of its whole process tree."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), round(peak[0], 1)


def own_peak_rss_mb() -> float:
    """Peak resident memory of this process (MB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def simulate(cfg: dict, config: Path, out: Path) -> tuple[float, float]:
    """Write ``cfg`` to ``config`` and run it with ``python -m fedqc.simulate`` into ``out``
    (a fresh process, like a user's run); return its wall seconds and peak RSS (MB)."""
    config.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    proc, peak = run_measured([sys.executable, "-m", "fedqc.simulate", "--config", str(config), "--out", str(out),
                               "--quiet"], cwd=ROOT, env=flower_env())
    if proc.returncode != 0:
        raise SystemExit(f"{config} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, peak


def final_auroc(out: Path, arm: str, last: int = 3) -> float:
    """Mean test AUROC of an arm's last ``last`` cycles (from its saved predictions)."""
    from sklearn.metrics import roc_auc_score

    files = sorted((out / arm / "predictions").glob("cycle_*.csv"))[-last:]
    return float(sum(roc_auc_score(p["label"], p["score"]) for p in map(pd.read_csv, files)) / len(files))


def arm_row(run: Path, arm: str, label: str) -> dict:
    """One arm of a run as a table row: its test AUROC and, for a QC arm, what it detected and what it cost."""
    row = {"arm": label, "auroc_last3": round(final_auroc(run, arm), 3)}
    summary_file = run / arm / "qc_summary.json"
    if not summary_file.is_file():
        return row
    summary = json.loads(summary_file.read_text())
    det = pd.read_csv(run / arm / "detection.csv").set_index(["level", "name"])
    for (level, name), r in det.iterrows():
        if level == "kind":
            row[f"recall {r['scope']} {name}"] = round(r["recall"], 2)
    overall = det.loc[("overall", "all")]
    whole = det.loc[("scope", "whole-site")]
    row |= {"recall whole-site": round(whole["recall"], 2),
            "whole-site out at end": round((whole["eliminated"] + whole["pending"]) / whole["harmful"], 2),
            "recall single-scan": round(det.loc[("scope", "single-scan"), "recall"], 2),
            "precision": None if pd.isna(overall["precision"]) else round(overall["precision"], 2),
            "good lost": f"{int(overall['good_eliminated'])} ({overall['good_eliminated_rate']:.1%})",
            "verifications": summary["verifications"], "seconds": round(summary["arm_seconds"])}
    return row
