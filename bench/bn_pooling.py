"""Federated BatchNorm pooling's share of a clean cycle at the reference shape, before and after a change.

    git archive <commit> | tar -x -C /tmp/before
    python -m bench.bn_pooling --before /tmp/before --cycles 3 --alone 3 --out bench/results/bn_pooling.json

The ``reference`` preset's shape (83 sites, 32³; made under data/reference when missing),
a half-width SFCN, the clean arm, seed 0, in-process, with the default end of cycle
(federated BatchNorm statistics, one pass per BatchNorm layer, then the threshold's
evaluation). Each source tree given (``--before``, and this one) runs the same
experiment in a fresh process, one after the other; the share is the calibration's
seconds (``calibration.csv``) over the cycle's (``cycles.csv``), per cycle, and their median after the first
cycle (which also reads every image). It also
compares the runs' checkpoints and thresholds: the largest difference of any array of
the last checkpoint, and of any threshold. ``--alone N`` also times the calibration by
itself (a fresh model each time, images already read), N times per tree, the trees
alternating twice: less exposed to the machine's load than a cycle.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import REFERENCE, RESULTS, ROOT, ensure_cohort, flower_env, machine, reference_config, run_measured
from fedqc.experiment.run_dir import RunDir, load_checkpoint


def run(code: Path, cfg: dict, out: Path) -> dict:
    """The clean arm with the fedqc of the source tree ``code``; its seconds per cycle and calibration's share."""
    import sys

    import yaml

    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(cfg))
    proc, peak = run_measured([sys.executable, "-m", "fedqc.simulate", "--config", str(config), "--out", str(out),
                               "--quiet"], cwd=code, env={**flower_env(), "PYTHONPATH": str(code)})
    if proc.returncode != 0:
        raise SystemExit(f"{code}: the run failed:\n{proc.stderr[-3000:]}")
    cycles = pd.read_csv(out / "clean" / "cycles.csv")
    calibration = pd.read_csv(out / "clean" / "calibration.csv")
    share = calibration["seconds"].to_numpy() / cycles["seconds"].to_numpy()
    steady = slice(1 if len(share) > 1 else 0, None)  # the first cycle also reads every image
    return {"code": str(code), "cycle_s": [round(float(s), 2) for s in cycles["seconds"]],
            "calibration_s": [round(float(s), 2) for s in calibration["seconds"]],
            "share": [round(float(s), 3) for s in share], "share_steady": round(float(np.median(share[steady])), 3),
            "peak_rss_mb": peak}


CALIBRATE = """
import json, sys, time
import torch
from fedqc.config import CalibrationConfig, ModelSpec
from fedqc.data.manifest import load_manifest
from fedqc.models.state import initial_state
from fedqc.strategies.calibration import Calibrator
from fedqc.transport.inprocess import InProcessTransport
torch.set_num_threads(int(sys.argv[2]))
table = load_manifest(sys.argv[1])
spec = ModelSpec("sfcn", 0.5, (32, 32, 32))
calibrate = Calibrator(InProcessTransport(table, spec), CalibrationConfig())
scans = {site: () for site in sorted(table["site"].unique())}
calibrate(initial_state(spec, 0), scans)  # every image read once
seconds = []
for seed in range(1, int(sys.argv[3]) + 1):
    t0 = time.perf_counter()
    calibrate(initial_state(spec, seed), scans)
    seconds.append(round(time.perf_counter() - t0, 2))
print(json.dumps(seconds))
"""


def calibration_alone(code: Path, threads: int, repeats: int) -> list[float]:
    """Seconds of the default calibration alone (every site's verification scans, a fresh model each time, images
    already read) with the fedqc of ``code``."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", CALIBRATE, str(REFERENCE), str(threads), str(repeats)], cwd=code,
                          env={**flower_env(), "PYTHONPATH": str(code)}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{code}: the calibration failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def differences(a: Path, b: Path) -> dict:
    """The largest absolute difference between two runs' last checkpoints (any array) and thresholds."""
    arm_a, arm_b = RunDir(a).arm("clean"), RunDir(b).arm("clean")
    last = arm_a.last_checkpoint()
    sa, sb = (load_checkpoint(arm.checkpoint(last))["state"] for arm in (arm_a, arm_b))
    ta, tb = (pd.read_csv(arm.path / "calibration.csv").filter(like="threshold_") for arm in (arm_a, arm_b))
    return {"state_max_abs": float(max(np.abs(np.asarray(sa[k], float) - np.asarray(sb[k], float)).max() for k in sa)),
            "threshold_max_abs": float((ta - tb).abs().to_numpy().max())}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bn_pooling", description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="a source tree of fedqc to compare with (e.g. from git archive)")
    ap.add_argument("--cycles", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--alone", type=int, default=0, help="also time the calibration alone, this many times per "
                    "tree, the trees alternating twice")
    ap.add_argument("--out", type=Path, default=RESULTS / "bn_pooling.json")
    args = ap.parse_args()
    ensure_cohort(REFERENCE)
    cfg = reference_config(args.cycles, "inprocess")
    cfg = {**{k: v for k, v in cfg.items() if k != "calibration"}, "threads": args.threads}  # the default calibration
    trees = ([("before", args.before.resolve())] if args.before else []) + [("after", ROOT)]
    result = {"machine": machine(), "shape": "reference preset: 83 sites, 32^3, SFCN width 0.5, clean arm, in-process, "
              "default calibration", "cycles": args.cycles, "threads": args.threads}
    for _ in range(2 if args.alone else 0):  # alternating, so that both see the machine's load alike
        for name, code in trees:
            result.setdefault(f"{name}_alone_s", []).extend(calibration_alone(code, args.threads, args.alone))
            print(f"{name}: the calibration alone {result[f'{name}_alone_s']} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, code in trees:
            result[name] = run(code, cfg, Path(tmp) / name)
            print(f"{name}: cycle {result[name]['cycle_s']} s, calibration {result[name]['calibration_s']} s, "
                  f"share {result[name]['share']} (after the first cycle: {result[name]['share_steady']})", flush=True)
        if args.before:
            result["difference"] = differences(Path(tmp) / "before", Path(tmp) / "after")
            print(f"largest difference: checkpoint {result['difference']['state_max_abs']:.3g}, "
                  f"threshold {result['difference']['threshold_max_abs']:.3g}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
