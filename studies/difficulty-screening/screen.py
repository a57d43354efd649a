"""Screen candidate effect sets: for each, a `reference` cohort (seed 0, 32³, no harm: the good scans, the same
images as in the harmed cohort), its oracle ceiling, a pooled central model (every train scan at one site,
the pinned model and optimiser, one visit a cycle = one epoch) and linear probes of scanner and sex on its
frozen features.

Run from the repository root: ``python studies/difficulty-screening/screen.py NAME=EFFECTS ... [--epochs 3]``
(EFFECTS: a set name or a YAML file). Results go to runs/difficulty-screening/<NAME>/ and one JSON line per
candidate to runs/difficulty-screening/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score

from fedqc.analysis.bias import checkpoint_probes
from fedqc.experiment.run_dir import RunDir

OUT = Path("runs/difficulty-screening")


def pooled_config(manifest: Path, epochs: int, lr: float) -> dict:
    """The pinned reference-shape settings (SFCN width 0.5, batch 5, the default calibration) at learning rate
    ``lr`` on one site, so each cycle is one epoch over every good training scan."""
    return {"name": "pooled", "manifest": str(manifest.resolve()), "engine": "inprocess", "threads": 1,
            "arms": ["clean"], "model": {"name": "sfcn", "width": 0.5, "input_shape": [32, 32, 32]},
            "train": {"cycles": epochs, "branch_cycle": 0, "batch_size": 5, "lr": lr, "seed": 0},
            "defence": {"update_norm": 0, "bn_pooling": "sum"}}  # as measured: the defences off


def screen(name: str, effects: str, epochs: int, lr: float) -> dict:
    folder = OUT / name
    cohort = folder / "cohort"
    t0 = time.perf_counter()
    if not (cohort / "manifest.csv").is_file():
        subprocess.run([sys.executable, "-m", "fedqc", "cohort", "--preset", "reference", "--seed", "0", "--size",
                        "32", "--no-harm", "--workers", "1", "--effects", effects, "--out", str(cohort)], check=True)
    gen_s = time.perf_counter() - t0
    meta = json.loads((cohort / "cohort.json").read_text())
    table = pd.read_csv(cohort / "manifest.csv")
    table["path"] = [str((cohort / p).resolve()) for p in table["path"]]
    pooled = folder / "pooled.csv"
    table.assign(site="pooled").to_csv(pooled, index=False)
    config = folder / "pooled.yaml"
    config.write_text(yaml.safe_dump(pooled_config(pooled, epochs, lr)))
    run = folder / "run"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fedqc", "simulate", "--config", str(config), "--out", str(run),
                    "--overwrite", "--quiet"], check=True)
    train_s = time.perf_counter() - t0
    arm = RunDir(run).arm("clean")
    aurocs = []
    for c in arm.cycles("predictions"):
        p = pd.read_csv(arm.predictions(c))
        aurocs.append(round(float(roc_auc_score(p["label"], p["score"])), 3))
    probe = checkpoint_probes(arm.checkpoint(arm.cycles("checkpoints")[-1]), table)
    result = {"name": name, "effects": effects, "lr": lr, "oracle_test_auroc": round(meta["oracle_test_auroc"], 3),
              "pooled_test_auroc": aurocs,
              "probe_scanner_bacc": round(probe["probe_scanner"], 3),
              "probe_scanner_chance": round(probe["probe_scanner_chance"], 3),
              "probe_sex_bacc": round(probe["probe_sex"], 3),
              "cohort_s": round(gen_s, 1), "train_s": round(train_s, 1)}
    with (OUT / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", help="NAME=EFFECTS (a set name or a YAML file)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3, help="the pooled model's learning rate")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for cand in args.candidates:
        name, effects = cand.split("=", 1)
        screen(name, effects, args.epochs, args.lr)


if __name__ == "__main__":
    main()
