"""Every QC criterion × granularity on one run, the configured QC, and smaller verification sets.

    python -m bench.qc_grid --config configs/demo.yaml --out runs/qc-grid

1. One experiment (in-process transport, the config's seed): clean, dirty and every
   ``qc-<criterion>-<granularity>`` arm, all with the audit stage **off**, so the
   verification-based method is measured on its own.
2. From the same clean checkpoint: the config's ``qc`` arm as configured (audit
   included if the config turns it on), then with the audit off at
   ``qc.verify_fraction`` 0.5 and 0.25, for the config's criterion.

Writes ``OUT/qc_grid.csv``, ``OUT/qc_grid.json`` and ``OUT/qc_grid.md`` (the table in studies/qc-criteria/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import pandas as pd
import torch

from bench.common import arm_row
from fedqc.analysis.report import markdown_table
from fedqc.config import CRITERIA, GRANULARITIES, load_config
from fedqc.data.manifest import load_manifest
from fedqc.experiment.run_dir import RunDir
from fedqc.experiment.runner import run_experiment
from fedqc.transport.inprocess import InProcessTransport

FRACTIONS = (0.5, 0.25)


def compact(table: pd.DataFrame) -> pd.DataFrame:
    """The view of studies/qc-criteria/README.md: recall per harm kind folded into one column per scope."""
    def kinds(row: pd.Series, scope: str) -> str:
        cols = [c for c in table.columns if c.startswith(f"recall {scope} ")]
        return " · ".join(f"{c.split()[-1]} {row[c]:.2f}" for c in cols if pd.notna(row[c]))

    out = pd.DataFrame({"arm": table["arm"], "test AUROC (last 3)": table["auroc_last3"]})
    if "recall whole-site" in table:
        out["whole-site recall"] = table["recall whole-site"]
        out["by kind"] = [kinds(r, "whole-site") for _, r in table.iterrows()]
        out["whole-site out at end (eliminated + pending)"] = table["whole-site out at end"]
        out["single-scan recall"] = table["recall single-scan"]
        out["precision"] = table["precision"]
        out["good lost"] = table["good lost"].fillna("")
        for col in ("verifications", "seconds"):
            out[col] = [f"{v:.0f}" if pd.notna(v) else "" for v in table[col]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.qc_grid", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--out", default="runs/qc-grid")
    parser.add_argument("--reuse-grid", action="store_true",
                        help="keep the clean, dirty and variant arms already in OUT; rerun only step 2")
    parser.add_argument("--table-only", action="store_true", help="run nothing; rebuild the tables from OUT")
    args = parser.parse_args()
    out = Path(args.out)
    variants = [f"qc-{c}-{g}" for c in CRITERIA for g in GRANULARITIES]
    base = load_config(args.config, {"engine": "inprocess"})
    no_audit = dataclasses.replace(base.qc, audit=False)
    cfg = dataclasses.replace(base, arms=("clean", "dirty", *variants), qc=no_audit)
    torch.set_num_threads(cfg.threads)
    transport = InProcessTransport(load_manifest(cfg.manifest), cfg.model)
    if not (args.reuse_grid or args.table_only):
        RunDir(out).prepare(cfg, resume=False, overwrite=True)
        run_experiment(cfg, transport, out, quiet=True)
    rows = [arm_row(out, a, a) for a in ("clean", "dirty", *variants)]
    settings = [("default", base.qc, (f"qc as configured ({base.qc.criterion}, {base.qc.granularity}, "
                                      f"alpha={base.qc.alpha}, audit {'on' if base.qc.audit else 'off'})"))]
    for criterion in [base.qc.criterion]:
        settings += [(f"verify_{criterion}_{f}", dataclasses.replace(no_audit, criterion=criterion, verify_fraction=f),
                      f"qc ({criterion}, {base.qc.granularity}, audit off), verify_fraction={f}") for f in FRACTIONS]
    for name, qc, label in settings:
        sub = out / name
        sub_cfg = dataclasses.replace(cfg, arms=("qc",), qc=qc)
        if not args.table_only:
            RunDir(sub).prepare(sub_cfg, resume=False, overwrite=True)
            shutil.copytree(out / "clean", sub / "clean")
            run_experiment(sub_cfg, transport, sub, quiet=True)
        rows.append(arm_row(sub, "qc", label))
    table = pd.DataFrame(rows)
    table.to_csv(out / "qc_grid.csv", index=False)
    (out / "qc_grid.json").write_text(table.to_json(orient="records", indent=2))
    (out / "qc_grid.md").write_text(markdown_table(compact(table)) + "\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
