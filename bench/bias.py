"""Does unlearning stop a model from reading a spurious marker, and what does it cost?

Reads study folders made by ``fedqc study --sweep model.unlearn=none,lntl,confusion`` (their
``sweep_summary.csv``) and prints, per study and head, mean [95 % t-interval] across seeds of:

- ``auroc_last3``: test AUROC (mean of the last three cycles), the marker as correlated as in training;
- ``auroc_flipped_last3``: the same scans with every marker reversed (``bias_flipped.csv``);
- ``probe_bacc``: balanced accuracy of a linear probe reading the bias target from the last
  checkpoint's frozen encoder features (fitted on train + val scans, scored on test); chance
  is ``probe_chance``.

    python -m bench.bias runs/demo-bias-study runs/demo2d-bias-study
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from fedqc.analysis.report import markdown_table

FIGURES = ("auroc_last3", "auroc_flipped_last3", "probe_bacc", "probe_chance")


def cell(rows: pd.DataFrame, figure: str) -> str:
    r = rows[rows["figure"] == figure]
    if r.empty:
        return ""
    r = r.iloc[0]
    interval = f" [{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]" if r["n"] > 1 else ""
    return f"{r['mean']:.3f}{interval} (n={int(r['n'])})"


def table(studies: list[Path]) -> pd.DataFrame:
    rows = []
    for study in studies:
        summary = pd.read_csv(study / "sweep_summary.csv")
        for (value, arm), part in summary.groupby(["value", "arm"], sort=False):
            rows.append({"study": study.name, "unlearn": value, "arm": arm, **{f: cell(part, f) for f in FIGURES}})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", type=Path, nargs="+", help="study folders of a model.unlearn sweep")
    print(markdown_table(table(parser.parse_args().studies)))


if __name__ == "__main__":
    main()
