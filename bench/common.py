"""What every benchmark reports beside its figures: the machine, and peak memory."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import torch

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def machine() -> dict:
    """Cores, torch threads, device and versions of the machine a figure was measured on."""
    import flwr

    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), cpu)
    return {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": "cpu", "cpu": cpu,
            "python": platform.python_version(), "torch": torch.__version__, "flwr": flwr.__version__}


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
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def simulate(cfg: dict, config: Path, out: Path) -> tuple[float, float]:
    """Write ``cfg`` to ``config`` and run it with ``python -m fedqc.simulate`` into ``out``
    (a fresh process, like a user's run); return its wall seconds and peak RSS (MB)."""
    import sys
    import time

    import yaml

    config.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    proc, peak = run_measured([sys.executable, "-m", "fedqc.simulate", "--config", str(config), "--out", str(out),
                               "--quiet"], cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise SystemExit(f"{config} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, peak
