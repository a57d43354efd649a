"""Which strategy wins where? Travelling, FedAvg, FedProx and FedTM from a strategy sweep, per arm across seeds.

Reads a study folder made by ``fedqc study --sweep strategy.name=travelling,fedavg,fedprox,fedtm``
(``strategy.name=<s>/seed_<k>/<arm>/``) and prints, per strategy and arm, mean [95 % t-interval]
across seeds of:

- ``auroc_last3``: test AUROC, mean of the last three cycles; ``sensitivity``, ``specificity``
  at the last cycle's threshold;
- ``sex_auroc_gap``, ``age_auroc_gap``, ``sex_sens_gap``, ``age_sens_gap``, ``sex_miscls_gap``,
  ``age_miscls_gap``: the largest difference of test AUROC / sensitivity / misclassification rate between sexes
  and between age groups, last cycle (the FedTM repository has no disparity metric of its own);
- ``small_sites``: the share of (center with < 5 training scans, cycle) pairs in which
  the center contributed an update (trained at least one scan and was adopted);
- ``cycle_s``: median seconds per cycle; ``messages``: median messages to sites per cycle
  (``cycles.csv``; the first cycle, with a QC arm's set-up, left out);
- QC arms: ``recall_whole-site``, ``recall_single-scan`` (harmful scans eliminated),
  ``good_lost`` (good training scans eliminated), ``skill_cycle`` (the cycle QC began deciding; a run that never
  did is left out of the mean) and ``scans_judged`` (per-scan checks, all out of sample: ``qc_summary.json``);
- ``vs_travelling``: ``auroc_last3`` minus the travelling model's, paired by seed within the arm (mean [95 %
  t-interval], :func:`fedqc.analysis.paired.paired_difference`).

    python -m bench.strategies runs/demo-strategies-study
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from fedqc.analysis.metrics import fairness_gaps, group_metrics
from fedqc.analysis.paired import paired_difference
from fedqc.analysis.report import markdown_table
from fedqc.analysis.study import arm_row, summarize
from fedqc.experiment.run_dir import RunDir, parse_snapshot

SMALL = 5  # training scans under which a center is small
FIGURES = ("auroc_last3", "sensitivity", "specificity", "sex_auroc_gap", "age_auroc_gap", "sex_sens_gap",
           "age_sens_gap", "sex_miscls_gap", "age_miscls_gap", "small_sites", "cycle_s", "messages",
           "recall_whole-site", "recall_single-scan", "good_lost", "skill_cycle", "scans_judged")


def manifest(run: Path) -> pd.DataFrame:
    """The manifest the run trained on: its injected copy, or its config's."""
    injected = run / "data" / "manifest.csv"
    return pd.read_csv(injected if injected.is_file() else parse_snapshot((run / "config.yaml").read_text()).manifest)


def small_site_share(arm_dir: Path, small: set[str]) -> float:
    """Share of (small center, cycle) pairs with an adopted update of at least one scan."""
    log = pd.read_csv(arm_dir / "train_log.csv")
    cycles = log["cycle"].nunique()
    contributed = log[log["site"].isin(small) & (log["status"] == "ok") & (log["n_scans"] > 0)]
    return contributed.groupby("cycle")["site"].nunique().sum() / (len(small) * cycles) if small else float("nan")


def row(run: Path, arm: str) -> dict | None:
    figures = arm_row(RunDir(run), arm)
    if figures is None:
        return None
    arm_dir = RunDir(run).arm(arm)
    last = figures["cycle"]
    preds = pd.read_csv(arm_dir.predictions(last))
    gaps = fairness_gaps(group_metrics(preds, n_boot=0, threshold=figures["threshold"]).assign(arm=arm, cycle=last))
    g = gaps.iloc[0]
    table = manifest(run)
    counts = table[table["split"] == "train"].groupby("site").size()
    cycles = pd.read_csv(arm_dir.path / "cycles.csv")
    return {**figures, "sex_auroc_gap": g["sex_auroc_gap"], "age_auroc_gap": g["age_auroc_gap"],
            "sex_sens_gap": g["sex_sensitivity_gap"], "age_sens_gap": g["age_sensitivity_gap"],
            "sex_miscls_gap": g["sex_misclassification_gap"], "age_miscls_gap": g["age_misclassification_gap"],
            "small_sites": small_site_share(arm_dir.path, set(counts[counts < SMALL].index)),
            "cycle_s": float(cycles["seconds"].median()),
            "messages": float(cycles["messages"].iloc[1:].median()) if "messages" in cycles else float("nan")}


def table(studies: list[Path]) -> pd.DataFrame:
    rows = []
    for folder in sorted(f for study in studies for f in study.glob("strategy.name=*")):
        strategy = folder.name.split("=", 1)[1]
        for run in sorted(folder.glob("seed_*")):
            arms = sorted(p.name for p in run.iterdir() if (p / "cycles.csv").is_file())
            rows += [{"strategy": strategy, "seed": int(run.name.split("_")[1]), **r}
                     for arm in arms if (r := row(run, arm)) is not None]
    return pd.DataFrame(rows)


def cell(s: pd.DataFrame, figure: str) -> str:
    r = s[s["figure"] == figure]
    if r.empty or pd.isna(r["mean"].iloc[0]):
        return ""
    r = r.iloc[0]
    digits = 1 if figure in ("cycle_s", "messages", "good_lost", "skill_cycle", "scans_judged") else 3
    return f"{r['mean']:.{digits}f}" + (f" [{r['ci_lo']:.{digits}f}, {r['ci_hi']:.{digits}f}]" if r["n"] > 1 else "")


def versus_travelling(rows: pd.DataFrame, strategy: str, arm: str) -> str:
    """``auroc_last3`` of ``strategy`` minus the travelling model's in ``arm``, paired by seed: mean [95 % t-interval]."""
    def last3(s: str) -> pd.Series:
        return rows[(rows["strategy"] == s) & (rows["arm"] == arm)].set_index("seed")["auroc_last3"]

    if strategy == "travelling" or last3("travelling").empty:
        return ""
    d = paired_difference(last3(strategy), last3("travelling"), names=(strategy, "travelling"))
    return f"{d['mean']:+.3f}" + (f" [{d['ci_lo']:+.3f}, {d['ci_hi']:+.3f}]" if d["n"] > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path, nargs="+", help="strategy sweeps (several: one strategy each)")
    parser.add_argument("--per-seed", action="store_true", help="also print every seed's row")
    args = parser.parse_args()
    rows = table(args.study)
    out = []
    for (strategy, arm), df in rows.groupby(["strategy", "arm"], sort=False):
        s = summarize(df.drop(columns=["strategy"]))
        out.append({"strategy": strategy, "arm": arm, "seeds": len(df),
                    **{f: cell(s, f) for f in FIGURES if f in df and df[f].notna().any()},
                    "vs_travelling": versus_travelling(rows, strategy, arm)})
    order = {"travelling": 0, "fedavg": 1, "fedprox": 2, "fedtm": 3}
    print(markdown_table(pd.DataFrame(out).sort_values(["arm", "strategy"], key=lambda c: c.map(order).fillna(c)
                                                       if c.name == "strategy" else c).fillna("")))
    if args.per_seed:
        print(markdown_table(rows[["strategy", "seed", "arm", *[f for f in FIGURES if f in rows]]]))


if __name__ == "__main__":
    main()
