"""``report.md``: a one-page markdown summary of a run (config, final metrics, subgroups, QC detection, plots)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from fedqc.io import atomic_write_text


def _fmt(x, digits: int = 3) -> str:
    return "" if pd.isna(x) else f"{x:.{digits}f}"


def markdown_table(df: pd.DataFrame) -> str:
    """A plain markdown table (floats to 3 decimals, NaN empty)."""
    def cell(v) -> str:
        return _fmt(v) if isinstance(v, float) else str(v)

    rows = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    rows += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)


def write_report(run: Path, metrics: pd.DataFrame, detections: dict[str, pd.DataFrame], plots: list[Path]) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    lines = [f"# fedqc run `{cfg.get('name', run.name)}`", "", "## Config", "", "```yaml",
             yaml.safe_dump(cfg, sort_keys=False).strip(), "```", "", "## Final test metrics (last cycle of each arm)", "",
             "| arm | cycle | n | AUROC [95% CI] | accuracy [95% CI] | sensitivity | specificity | F1 |",
             "|---|---|---|---|---|---|---|---|"]
    last = metrics.loc[metrics.groupby("arm", sort=False)["cycle"].transform("max") == metrics["cycle"]]
    for _, r in last[last["group"] == "all"].iterrows():
        lines.append(f"| {r.arm} | {r.cycle} | {r.n} | {_fmt(r.auroc)} [{_fmt(r.auroc_lo)}, {_fmt(r.auroc_hi)}] | "
                     f"{_fmt(r.threshold)} | {_fmt(r.accuracy)} [{_fmt(r.accuracy_lo)}, {_fmt(r.accuracy_hi)}] | "
                     f"{_fmt(r.sensitivity)} | {_fmt(r.specificity)} | {_fmt(r.balanced_accuracy)} "
                     f"({_fmt(r.best_balanced_accuracy)}) | {_fmt(r.f1)} |")
    lines += ["", "## Subgroups (last cycle)", "", "| arm | group | n | n_pos | AUROC | sensitivity | specificity | note |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in last[last["group"] != "all"].iterrows():
        lines.append(f"| {r.arm} | {r.group} | {r.n} | {r.n_pos} | {_fmt(r.auroc)} | {_fmt(r.sensitivity)} | "
                     f"{_fmt(r.specificity)} | {r.note if isinstance(r.note, str) else ''} |")
    for arm, detection in detections.items():
        lines += ["", f"## QC detection: `{arm}`", "", markdown_table(detection)]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.relative_to(run).as_posix()})" for p in plots]
    atomic_write_text("\n".join(lines) + "\n", run / "report.md")
