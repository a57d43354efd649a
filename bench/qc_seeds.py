"""Clean, dirty and the configured QC (audit off) over several training seeds.

    python -m bench.qc_seeds --config configs/demo.yaml --seeds 0 1 2 --out runs/qc-seeds

One AUROC per arm and seed is a single draw: on the demo's 79 test scans, arms that
train the same data differ by tenths between seeds (see docs/results/qc.md).
This runs the whole experiment (in-process) once per ``train.seed`` — same cohort,
other scan orders, site orders and dropout — with the QC arm's audit stage off, and
reports per seed and as mean ± sd: test AUROC (mean of the last three cycles) per arm,
and the QC arm's whole-site recall and good scans lost.

Writes ``OUT/qc_seeds.csv`` and ``OUT/qc_seeds.md`` (the table in docs/results/qc.md).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd
import torch

from bench.common import arm_row, final_auroc
from fedqc.analysis.report import markdown_table
from fedqc.config import load_config
from fedqc.data.manifest import load_manifest
from fedqc.experiment.run_dir import RunDir
from fedqc.experiment.runner import run_experiment
from fedqc.transport.inprocess import InProcessTransport


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.qc_seeds", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/qc-seeds")
    args = parser.parse_args()
    base = load_config(args.config, {"engine": "inprocess"})
    torch.set_num_threads(base.threads)
    transport = InProcessTransport(load_manifest(base.manifest), base.model)
    rows = []
    for seed in args.seeds:
        cfg = dataclasses.replace(base, arms=("clean", "dirty", "qc"), qc=dataclasses.replace(base.qc, audit=False),
                                  train=dataclasses.replace(base.train, seed=seed))
        run = Path(args.out) / f"seed{seed}"
        RunDir(run).prepare(cfg, resume=False, overwrite=True)
        run_experiment(cfg, transport, run, quiet=True)
        qc = arm_row(run, "qc", "qc")
        rows.append({"seed": seed, "clean": round(final_auroc(run, "clean"), 3),
                     "dirty": round(final_auroc(run, "dirty"), 3), "qc": qc["auroc_last3"],
                     "qc whole-site recall": float(qc["recall whole-site"]), "qc good lost": qc["good lost"],
                     "qc seconds": qc["seconds"]})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    numeric = table.drop(columns=["seed", "qc good lost"])
    summary = {"seed": "mean ± sd", "qc good lost": "",
               **{c: f"{numeric[c].mean():.3f} ± {numeric[c].std(ddof=1):.3f}" for c in numeric}}
    out = pd.concat([table.astype(object), pd.DataFrame([summary])], ignore_index=True)
    out.to_csv(Path(args.out) / "qc_seeds.csv", index=False)
    (Path(args.out) / "qc_seeds.md").write_text(markdown_table(out) + "\n")
    print(out.to_string(index=False))


if __name__ == "__main__":
    main()
