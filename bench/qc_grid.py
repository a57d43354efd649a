"""Every QC criterion × granularity on one run, plus the default QC at smaller verification sets.

    python bench/qc_grid.py --config configs/demo.yaml --out runs/qc-grid

Runs clean, dirty and the six ``qc-<criterion>-<granularity>`` arms in one experiment
(in-process transport, same seed), then the configured ``qc`` arm again with
``qc.verify_fraction`` 0.5 and 0.25 from the same clean checkpoint. Writes
``OUT/qc_grid.csv``, ``OUT/qc_grid.json`` and ``OUT/qc_grid.md`` (the README table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import torch

from fedqc.config import CRITERIA, GRANULARITIES, load_config
from fedqc.data.manifest import load_manifest
from fedqc.infer import markdown_table
from fedqc.simulate import final_auroc, prepare_run_dir, run_experiment
from fedqc.transport import InProcessTransport

FRACTIONS = (0.5, 0.25)


def arm_row(run: Path, arm: str, label: str) -> dict:
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
    row |= {"recall whole-site": round(det.loc[("scope", "whole-site"), "recall"], 2),
            "recall single-scan": round(det.loc[("scope", "single-scan"), "recall"], 2),
            "precision": None if pd.isna(overall["precision"]) else round(overall["precision"], 2),
            "good lost": f"{int(overall['good_eliminated'])} ({overall['good_eliminated_rate']:.1%})",
            "verifications": summary["verifications"], "seconds": round(summary["arm_seconds"])}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--out", default="runs/qc-grid")
    args = parser.parse_args()
    out = Path(args.out)
    variants = [f"qc-{c}-{g}" for c in CRITERIA for g in GRANULARITIES]
    cfg = load_config(args.config, {"arms": ["clean", "dirty", *variants], "engine": "inprocess"})
    torch.set_num_threads(cfg.threads)
    prepare_run_dir(cfg, out, resume=False, overwrite=True)
    transport = InProcessTransport(load_manifest(cfg.manifest), cfg.model)
    run_experiment(cfg, transport, out, quiet=True)
    rows = [arm_row(out, a, a) for a in ("clean", "dirty", *variants)]
    for fraction in FRACTIONS:
        sub = out / f"verify_{fraction}"
        sub_cfg = dataclasses.replace(cfg, arms=("qc",), qc=dataclasses.replace(cfg.qc, verify_fraction=fraction))
        prepare_run_dir(sub_cfg, sub, resume=False, overwrite=True)
        shutil.copytree(out / "clean", sub / "clean")
        run_experiment(sub_cfg, transport, sub, quiet=True)
        rows.append(arm_row(sub, "qc", f"qc ({cfg.qc.criterion}, {cfg.qc.granularity}) verify_fraction={fraction}"))
    table = pd.DataFrame(rows)
    table.to_csv(out / "qc_grid.csv", index=False)
    (out / "qc_grid.json").write_text(table.to_json(orient="records", indent=2))
    (out / "qc_grid.md").write_text(markdown_table(table) + "\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
