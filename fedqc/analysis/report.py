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


def decisions_section(arm: str, decisions: pd.DataFrame) -> list[str]:
    """What a QC arm could decide, cycle by cycle (its ``qc_decisions.csv``), under one line that sums it up."""
    deciding = decisions.loc[decisions["deciding"].astype(bool), "cycle"]
    unjudged = sorted({s for v in decisions["sites_without_evidence"].dropna() for s in str(v).split(";") if s})
    start = f"from cycle {deciding.min()}" if len(deciding) else "in no cycle (the model never showed skill)"
    line = (f"QC decided {start}; {int(decisions['scans_judged'].sum())} per-scan checks, every one out of sample "
            f"(a revisit judges a scan again), {int(decisions['scans_trained_unjudged'].sum())} trained before any "
            "per-scan check could judge them; "
            f"sites checked without evidence (passed, not judged) at least once: {', '.join(unjudged) or 'none'}.")
    return ["", f"## What QC could decide: `{arm}`", "", line, "", markdown_table(decisions)]


def write_report(run: Path, metrics: pd.DataFrame, detections: dict[str, pd.DataFrame], plots: list[Path],
                 decisions: dict[str, pd.DataFrame] | None = None) -> None:
    """``report.md`` of ``run``: config, final metrics, subgroups, each QC arm's detection and ``decisions`` (its
    ``qc_decisions.csv``), plots."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    lines = [f"# fedqc run `{cfg.get('name', run.name)}`", "", "## Config", "", "```yaml",
             yaml.safe_dump(cfg, sort_keys=False).strip(), "```", "", "## Final test metrics (last cycle of each arm)", "",
             "| arm | cycle | n | AUROC [95% CI] | threshold | accuracy [95% CI] | sensitivity | specificity | "
             "balanced accuracy (at the best threshold) | F1 |", "|---|---|---|---|---|---|---|---|---|---|"]
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
    for arm, table in (decisions or {}).items():
        lines += decisions_section(arm, table)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.relative_to(run).as_posix()})" for p in plots]
    atomic_write_text("\n".join(lines) + "\n", run / "report.md")
