"""Seconds per scan on CPU and GPU from 32³ to full resolution, peak GPU memory, the share of training spent
waiting for data, and one clean cycle of the reference shape at full resolution.

    python -m bench.gpu                                   # every size on every device present
    python -m bench.gpu --sizes 32 64 --devices cpu       # a subset
    python -m bench.gpu --cycle                           # + one clean reference cycle at 160x192x160

For each size a one-site cohort is generated (``--scans`` training scans on a GPU,
``--cpu-scans`` on CPU, where a full-resolution scan costs tens of seconds) and the
reference network (full-width SFCN, batches of 5, lr 1e-4) trains two local epochs
and scores its scans once, through :class:`fedqc.site.Site`:

* ``train_s_per_scan`` / ``eval_s_per_scan``: the second epoch and the scoring
  (steady state: scans decoded, on a GPU held in its memory, cuDNN tuned);
* ``wait_share_first`` / ``wait_share``: the share of each epoch's training time
  spent waiting for the next batch, first epoch (scans decoded from disk while the
  model trains) and second;
* ``peak_gpu_mb``: peak memory allocated on the GPU in the second epoch.

``--cycle`` generates the ``reference`` preset at 160×192×160 (``--cohort``,
reused when present) and runs one clean cycle of ``configs/reference-full.yaml`` in-process on the best device,
then extrapolates the reference experiment (clean 30 cycles, dirty and QC 20 each)
with the QC cost factor given by ``--qc-factor`` (measured by ``bench.qc_cost``).
Every figure is written with the device it ran on to ``bench/results/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from bench.common import RESULTS, ROOT, machine
from fedqc.config import DataConfig, ModelSpec, load_config
from fedqc.data.manifest import load_manifest
from fedqc.data.synth.cohort import SiteSpec, generate_cohort
from fedqc.models.state import initial_state
from fedqc.protocol import EvalRequest, TrainRequest
from fedqc.site import Site

SIZES = {"32": (32, 32, 32), "64": (64, 64, 64), "128": (128, 128, 128), "160x192x160": (160, 192, 160)}
FULL = SIZES["160x192x160"]
BATCH, LR = 5, 1e-4
CYCLES = {"clean": 30, "dirty": 20, "qc": 20}  # the reference experiment


def one_site(root: Path, shape: tuple[int, ...], n: int) -> pd.DataFrame:
    """A one-site cohort of ``n`` training scans (half PD) at ``shape``."""
    spec = SiteSpec("bench", "scannerA", n, n // 2, n // 2, 1, 0, 1, 1, 0, 1)
    generate_cohort(root, size=shape, seed=0, sites=[spec], harm={})
    return load_manifest(root / "manifest.csv", check_images=False)


def measure(rows: pd.DataFrame, shape: tuple[int, ...], device: str) -> dict:
    """Two local epochs and one scoring of the site's training scans on ``device``."""
    spec = ModelSpec("sfcn", 1.0, shape)
    site = Site("bench", rows, model=spec, device=device, data=DataConfig(cache_gb=8.0))
    cuda = site.device.type == "cuda"
    first = site.train(initial_state(spec, 0), TrainRequest(lr=LR, seed=0, batch_size=BATCH))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    second = site.train(first.state, TrainRequest(lr=LR, seed=1, batch_size=BATCH))
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    t0 = time.perf_counter()
    scored = site.evaluate(second.state, EvalRequest("train"))
    evaluate_s = time.perf_counter() - t0
    return {"device": str(site.device), "gpu": torch.cuda.get_device_name(site.device) if cuda else None,
            "size": "x".join(map(str, shape)), "scans": second.n_scans,
            "train_s_per_scan": round(second.seconds / second.n_scans, 4),
            "eval_s_per_scan": round(evaluate_s / len(scored.scores), 4),
            "wait_share_first": round(first.data_wait_s / first.seconds, 3),
            "wait_share": round(second.data_wait_s / second.seconds, 3),
            "peak_gpu_mb": None if peak is None else round(peak, 1)}


def reference_cycle(cohort: Path, out: Path, qc_factor: float) -> dict:
    """One clean cycle of the reference shape at full resolution, in-process, and the whole experiment
    extrapolated from it."""
    from fedqc.experiment.runner import simulate

    if not (cohort / "manifest.csv").is_file():
        t0 = time.perf_counter()
        generate_cohort(cohort, preset="reference", size=FULL, seed=0)
        print(f"generated {cohort} in {time.perf_counter() - t0:.0f} s", flush=True)
    cfg = load_config(ROOT / "configs" / "reference-full.yaml", {
        "manifest": str((cohort / "manifest.csv").resolve()), "model.input_shape": list(FULL), "engine": "inprocess",
        "arms": ["clean"], "train.cycles": 1, "train.branch_cycle": 0, "device": "auto"})
    simulate(cfg, out, quiet=True)
    cycle = pd.read_csv(out / "clean" / "cycles.csv").iloc[0]
    seconds = float(cycle["seconds"])
    total = seconds * (CYCLES["clean"] + CYCLES["dirty"] + CYCLES["qc"] * qc_factor)
    return {"device": "cuda" if torch.cuda.is_available() else "cpu",
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "scans": int(load_manifest(cohort / "manifest.csv", check_images=False).shape[0]),
            "clean_cycle_s": round(seconds, 1), "qc_factor": qc_factor,
            "experiment_h_extrapolated": round(total / 3600, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"],
                    help="cuda is skipped (and said so) when torch sees no GPU")
    ap.add_argument("--scans", type=int, default=20, help="training scans per size on a GPU")
    ap.add_argument("--cpu-scans", type=int, default=5, help="training scans per size on CPU")
    ap.add_argument("--cycle", action="store_true", help="also one clean reference cycle at full resolution")
    ap.add_argument("--cohort", type=Path, default=ROOT / "data" / "reference-full",
                    help="where the full-resolution reference cohort is (or is made)")
    ap.add_argument("--qc-factor", type=float, default=2.61, help="a QC cycle's cost over a clean one (bench.qc_cost)")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    args = ap.parse_args()
    devices = [d for d in args.devices if d == "cpu" or torch.cuda.is_available()]
    skipped = sorted(set(args.devices) - set(devices))
    if skipped:
        print("no GPU: cuda skipped", flush=True)
    results = {"machine": machine(), "skipped_devices": skipped, "sizes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for device in devices:
                n = args.scans if device == "cuda" else args.cpu_scans
                rows = one_site(Path(tmp) / f"{size}-{n}", SIZES[size], n)
                results["sizes"].append(row := measure(rows, SIZES[size], device))
                print(json.dumps(row), flush=True)
        if args.cycle:
            results["reference_cycle"] = reference_cycle(args.cohort, Path(tmp) / "cycle", args.qc_factor)
            print(json.dumps(results["reference_cycle"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
