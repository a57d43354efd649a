"""Do the threshold metrics mean something? Every calibration variant and threshold method of calibration studies.

Reads study folders made by ``fedqc study --sweep`` (each ``<key>=<value>/seed_<s>/`` a run
whose config calibrates, so its arms' ``calibration.csv`` hold the threshold of every
method, fitted on verification scans each cycle). For every variant (swept value),
threshold method and arm it scores the saved test predictions of every cycle at that
method's threshold — no retraining: the threshold never changes what is trained — and
prints, across seeds (mean [95 % t-interval]):

- ``bacc_gap``: balanced accuracy of the best threshold on test (an oracle) minus that of
  the chosen threshold, mean of the last three cycles (target <= 0.05);
- ``max_swing``: the largest change of sensitivity or specificity between consecutive
  cycles that both reach test AUROC 0.8 (target <= 0.15);
- ``auroc_last3``: test AUROC, mean of the last three cycles (no threshold);

and the per-cycle table (arm ``clean``, seed 0) of every variant and method asked for.

    python -m bench.calibration runs/demo-calibration-study runs/demo-calibration-sitebn --table clean
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from fedqc.analysis.report import markdown_table
from fedqc.analysis.study import LAST, cycle_metrics, max_swing, summarize
from fedqc.config.schema import THRESHOLDS
from fedqc.experiment.run_dir import RunDir


def per_cycle(arm_dir, method: str) -> pd.DataFrame:
    """Test metrics of every cycle of an arm at ``method``'s threshold of that cycle."""
    table = pd.read_csv(arm_dir.path / "calibration.csv")
    return cycle_metrics(arm_dir, dict(zip(table["cycle"].astype(int), table[f"threshold_{method}"].astype(float))))


def variants(folders: list[Path]) -> dict[str, list[Path]]:
    """``<key>=<value>`` → its seed folders, over every study folder given."""
    out: dict[str, list[Path]] = {}
    for folder in folders:
        for variant in sorted(p for p in folder.iterdir() if p.is_dir() and "=" in p.name):
            out[variant.name] = sorted(variant.glob("seed_*"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path)
    parser.add_argument("--table", default="clean", help="arm of the per-cycle tables (seed 0)")
    parser.add_argument("--methods", default=",".join(THRESHOLDS))
    args = parser.parse_args()
    methods = args.methods.split(",")
    rows, tables = [], {}
    for variant, seeds in variants(args.studies).items():
        for seed_dir in seeds:
            run = RunDir(seed_dir)
            for arm_dir in sorted(p for p in seed_dir.iterdir() if (p / "calibration.csv").is_file()):
                for method in methods:
                    c = per_cycle(run.arm(arm_dir.name), method)
                    last = c.tail(LAST)
                    rows.append({"arm": f"{variant} | {method} | {arm_dir.name}", "seed": int(seed_dir.name[5:]),
                                 "auroc_last3": last["auroc"].mean(),
                                 "bacc_last3": last["balanced_accuracy"].mean(),
                                 "bacc_gap": (last["best_balanced_accuracy"] - last["balanced_accuracy"]).mean(),
                                 "max_swing": max_swing(c)})
                    if arm_dir.name == args.table and seed_dir.name == "seed_0":
                        tables[f"{variant}, threshold {method}"] = c
    summary = summarize(pd.DataFrame(rows))
    cell = lambda r: f"{r['mean']:.3f} [{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]" if r["n"] > 1 else f"{r['mean']:.3f}"  # noqa: E731
    table = summary.assign(cell=summary.apply(cell, axis=1)).pivot(index="arm", columns="figure", values="cell")
    table.index = pd.MultiIndex.from_tuples([tuple(i.split(" | ")) for i in table.index],
                                            names=["variant", "threshold", "arm"])
    print("across seeds, mean [95 % t-interval]:")
    print(markdown_table(table[["auroc_last3", "bacc_last3", "bacc_gap", "max_swing"]].reset_index()))
    for name, c in tables.items():
        print(f"\nper cycle, arm {args.table}, seed 0: {name}")
        wide = c.set_index("cycle")[["auroc", "threshold", "sensitivity", "specificity", "balanced_accuracy"]].T
        print(markdown_table(wide.round(3).reset_index().rename(columns={"index": "cycle"})))


if __name__ == "__main__":
    main()
