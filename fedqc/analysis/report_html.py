"""``report.html``: one self-contained page per run, study or sweep (``fedqc report``; ``fedqc infer`` and
``fedqc study`` write it too).

It shows what ``report.md`` and ``study.md`` hold and what a file of text cannot: per-cycle test AUROC,
sensitivity and specificity per arm with 95 % intervals (AUROC: the bootstrap of ``metrics.csv``;
sensitivity and specificity: Wilson score intervals of the counts), the subgroup gaps, the calibration
curve, each QC arm's timeline (:mod:`fedqc.analysis.timeline`) and its per-scan table (``scan_issues.csv``
with the audit's findings) to sort and filter; for a study or a sweep its curves, summary and paired
differences. It reads only files the run or study already wrote (``metrics.csv`` and the plots of ``fedqc infer``
are made first when missing) and draws two figures of its own (intervals, calibration).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fedqc.analysis.html import Page, esc, figure, png, table
from fedqc.analysis.plots import plot_calibration, plot_intervals
from fedqc.analysis.timeline import LEGEND, STATES, qc_timeline
from fedqc.errors import UserError
from fedqc.experiment.run_dir import RunDir
from fedqc.io import atomic_write_text

REPORT = "report.html"


def wilson(k: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of ``k`` successes in ``n`` (NaN where ``n`` is 0)."""
    from scipy.stats import norm

    z = norm.ppf((1 + level) / 2)
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def with_rate_intervals(metrics: pd.DataFrame) -> pd.DataFrame:
    """``metrics`` with ``sensitivity_lo/hi`` and ``specificity_lo/hi``: Wilson intervals of the test counts."""
    m = metrics.copy()
    pos, neg = m["n_pos"].astype(float), (m["n"] - m["n_pos"]).astype(float)
    m["sensitivity_lo"], m["sensitivity_hi"] = wilson(np.round(m["sensitivity"] * pos), pos)
    m["specificity_lo"], m["specificity_hi"] = wilson(np.round(m["specificity"] * neg), neg)
    return m


def _ci(r, metric: str) -> str:
    v, lo, hi = r[metric], r.get(f"{metric}_lo"), r.get(f"{metric}_hi")
    if pd.isna(v):
        return ""
    return f"{v:.3f}" if lo is None or pd.isna(lo) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _last(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics.loc[metrics.groupby("arm", sort=False)["cycle"].transform("max") == metrics["cycle"]]


def timeline_html(timeline: pd.DataFrame, table_id: str) -> str:
    """Sites × cycles, one coloured cell per state (class ``tl-<state>``, the state in ``data-state``, the detail
    as a tooltip), with the legend."""
    cycles = sorted(timeline["cycle"].unique())
    head = "<tr><th>site</th>" + "".join(f"<th>{c}</th>" for c in cycles) + "</tr>"
    marks = {"trained": "✓", "could-not-judge": "?", "flagged": "F", "held": "h", "revisited": "R", "eliminated": "E",
             "out": "–", "absent": ""}
    rows = []
    for site, df in timeline.groupby("site", sort=True):
        cells = {int(r.cycle): r for r in df.itertuples()}
        tds = "".join(f'<td class="tl-{cells[c].state}" data-state="{cells[c].state}" title="{esc(cells[c].detail)}">'
                      f"{marks[cells[c].state]}</td>" for c in cycles)
        rows.append(f"<tr><th>{esc(site)}</th>{tds}</tr>")
    legend = "".join(f'<span class="legend tl-{s}">{marks[s] or "&nbsp;"} {esc(LEGEND[s])}</span>' for s in STATES)
    return (f"<div>{legend}</div><table class=\"timeline\" id=\"{esc(table_id)}\"><thead>{head}</thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def scan_table(arm: Path) -> pd.DataFrame:
    """A QC arm's per-scan findings: the last per-scan check of each scan (``scan_issues.csv``) and the audit's
    (``audit.csv``), with the cycle a scan was eliminated in and at which stage (``eliminated.csv``)."""
    frames = []
    if (arm / "scan_issues.csv").is_file():
        frames.append(pd.read_csv(arm / "scan_issues.csv"))
    if (arm / "audit.csv").is_file():
        audit = pd.read_csv(arm / "audit.csv")
        if not audit.empty:
            frames.append(audit.assign(stage="audit", decision="failed audit")
                          .rename(columns={"reason": "audit_reason"}))
    if not frames:
        return pd.DataFrame()
    scans = pd.concat(frames, ignore_index=True)
    if (arm / "eliminated.csv").is_file():
        gone = pd.read_csv(arm / "eliminated.csv")[["subject", "cycle_eliminated", "stage"]]
        scans = scans.merge(gone.rename(columns={"stage": "eliminated_at"}), on="subject", how="left")
    for column in ("cycle", "cycle_eliminated"):  # whole cycles, empty where a scan has none
        if column in scans:
            scans[column] = scans[column].astype("Int64")
    return scans.sort_values(["site", "subject"], kind="stable")


def _timelines(page: Page, run: Path, qc_arms: dict[str, Path]) -> None:
    for arm, arm_dir in qc_arms.items():
        timeline = qc_timeline(arm_dir)
        if timeline.empty:
            continue
        page.section(f"QC timeline: {arm}", f"timeline-{arm}")
        page.note("Each site in each cycle of the QC arm, from its logs (train_log.csv, qc_log.csv, flagged.csv, "
                  "revisits.csv, eliminated.csv). Hover a cell for its counts.")
        page.add(timeline_html(timeline, f"timeline-{arm}-table"))
        page.add(*_pictures(run / "plots", f"qc_{arm}.png"))


def _subgroups(page: Page, run: Path, last: pd.DataFrame) -> None:
    subgroups = last[(last["group"] != "all") & (last["n"] > 0)]
    if subgroups.empty:
        return
    page.section("Subgroups", "subgroups")
    page.note("Largest gap between subgroups (sex, age) per arm at the last cycle (fairness.csv: every cycle), "
              "then each subgroup's metrics. Small groups give wide intervals; 'note' says when a metric is "
              "undefined.")
    if (run / "fairness.csv").is_file():
        gaps = pd.read_csv(run / "fairness.csv")
        page.add(table(gaps.loc[gaps.groupby("arm", sort=False)["cycle"].transform("max") == gaps["cycle"]],
                       "gap-table"))
    page.add(table(pd.DataFrame([{"arm": r.arm, "group": r.group, "n": r.n, "n_pos": r.n_pos,
                                  **{m: _ci(r._asdict(), m) for m in ("auroc", "sensitivity", "specificity")},
                                  "note": r.note if isinstance(r.note, str) else ""}
                                 for r in subgroups.itertuples()]), "subgroup-table", filter_box=True))
    page.add(*_pictures(run / "plots", "subgroups_*.png"))


def _calibration(page: Page, rundir: RunDir, arms) -> None:
    predictions = {}
    for arm in arms:
        cycles = rundir.arm(arm).cycles("predictions")
        if cycles:
            predictions[arm] = pd.read_csv(rundir.arm(arm).predictions(cycles[-1]))
    if predictions:
        page.section("Calibration", "calibration")
        page.note("Share of positive test scans against the mean score, in five bins of equal count, last cycle of "
                  "each arm. On the diagonal a score reads as a probability.")
        page.add(figure(plot_calibration, predictions, alt="calibration curve"))


def _scans(page: Page, qc_arms: dict[str, Path]) -> None:
    for arm, arm_dir in qc_arms.items():
        scans = scan_table(arm_dir)
        if not scans.empty:
            page.section(f"Per-scan issues: {arm}", f"scans-{arm}")
            page.note("Each scan's last per-scan check (scan_issues.csv) and the audit's findings (audit.csv), with "
                      "the cycle and stage it was eliminated at. Click a header to sort; type in the box to filter.")
            page.add(table(scans, f"scans-{arm}-table", filter_box=True))
        if (arm_dir / "detection.csv").is_file():
            page.section(f"QC detection against the simulation's ground truth: {arm}", f"detection-{arm}")
            page.note("Simulation only: the manifest's harm column is the truth no real federation has (detection.csv).")
            page.add(table(pd.read_csv(arm_dir / "detection.csv"), f"detection-{arm}-table", filter_box=True))


def run_page(run: Path) -> str:
    """The HTML of a run's report (``metrics.csv`` must exist: ``fedqc infer`` writes it)."""
    from fedqc.analysis.infer import run_config

    rundir = RunDir(run)
    cfg = run_config(rundir)
    metrics = with_rate_intervals(pd.read_csv(run / "metrics.csv"))
    overall, last = metrics[metrics["group"] == "all"], _last(metrics)
    arms = list(overall["arm"].unique())
    qc_arms = {arm: rundir.arm(arm).path for arm in arms if (rundir.arm(arm).path / "qc_log.csv").is_file()}
    page = Page(f"fedqc run {cfg.name}")
    page.note(f"Run folder {run.resolve()}. Test split only here: it never steers training or QC. Intervals: AUROC "
              "and accuracy 95 % bootstrap intervals over test scans (metrics.csv); sensitivity and specificity 95 % "
              "Wilson score intervals of the counts. Threshold: the cycle's decision threshold (calibration.csv).")
    page.section("Final test metrics", "final")
    rows = [{"arm": r.arm, "cycle": r.cycle, "n": r.n, "n_pos": r.n_pos, "threshold": r.threshold,
             **{m: _ci(r._asdict(), m) for m in ("auroc", "sensitivity", "specificity", "accuracy")}}
            for r in last[last["group"] == "all"].itertuples()]
    page.add(table(pd.DataFrame(rows), "final-table"))
    _timelines(page, run, qc_arms)
    page.section("Metrics per cycle", "cycles")
    page.add(figure(plot_intervals, metrics, alt="test AUROC, sensitivity, specificity per cycle with intervals"))
    per_cycle = overall[["arm", "cycle", "threshold", *(f"{m}{s}" for m in ("auroc", "sensitivity", "specificity")
                                                        for s in ("", "_lo", "_hi"))]]
    page.add("<details><summary>table</summary>", table(per_cycle, "cycle-table", filter_box=True), "</details>")
    _subgroups(page, run, last)
    _calibration(page, rundir, arms)
    _scans(page, qc_arms)
    page.section("Config", "config")
    snapshot = yaml.safe_load((run / "config.yaml").read_text())
    page.add(f"<details><summary>config.yaml</summary><pre>{esc(yaml.safe_dump(snapshot, sort_keys=False))}</pre>"
             "</details>")
    return page.render()


def _study_summary(summary: pd.DataFrame, prefix: str) -> str:
    s = summary.assign(**{"mean [95 % t-interval]": [
        "" if r.n == 0 else f"{r.mean:.3f}" if r.n < 2 else f"{r.mean:.3f} [{r.ci_lo:.3f}, {r.ci_hi:.3f}]"
        for r in summary.itertuples()]})
    return table(s, f"{prefix}summary-table", filter_box=True)


def _pictures(folder: Path, pattern: str) -> list[str]:
    return [png(p.read_bytes(), p.stem) for p in sorted(folder.glob(pattern))]


def _grid(folder: Path, names: list[str]) -> str:
    """The PNGs ``names`` in ``folder`` that exist, in that order, two to a row."""
    return '<div class="grid">' + "".join(png((folder / n).read_bytes(), n[:-4]) for n in names
                                          if (folder / n).is_file()) + "</div>"


def _runs_links(folder: Path) -> str:
    links = [f'<li><a href="{esc(p.parent.relative_to(folder).as_posix())}/{REPORT}">{esc(p.parent.name)}</a></li>'
             for p in sorted(folder.glob(f"*/{REPORT}"))]
    return f"<ul>{''.join(links)}</ul>" if links else ""


def study_page(folder: Path) -> str:
    """The HTML of a study's report (``study.csv``, ``summary.csv``, ``paired.csv``, ``study_auroc.png``)."""
    from fedqc.analysis.study import PAIRED_NOTE, paired_frame, summary_tables

    rows, summary = pd.read_csv(folder / "study.csv"), pd.read_csv(folder / "summary.csv")
    arms = list(dict.fromkeys(rows["arm"]))
    qc_arms = [a for a in arms if rows.loc[rows["arm"] == a].filter(like="recall_").notna().any(axis=None)]
    main, qc = summary_tables(summary, list(rows.columns), arms, qc_arms)
    page = Page(f"fedqc study {folder.name}")
    page.note(f"Study folder {folder.resolve()}. One run per training seed ({', '.join(map(str, rows['seed'].unique()))}"
              ") on the same cohort. Cells: mean across seeds [95 % t-interval], clipped to what the figure can be; "
              "test metrics of the last cycle, AUROC also as the mean of the last three.")
    page.section("Test metrics", "summary")
    page.add(table(main.set_index("arm").T.rename_axis("figure").reset_index(), "main-table"))
    page.add(*_pictures(folder, "study_*.png"))
    paired = folder / "paired.csv"
    if paired.is_file() and paired.stat().st_size:
        differences = pd.read_csv(paired)
        page.section("Paired differences", "paired")
        page.note(PAIRED_NOTE)
        page.add(table(paired_frame(differences), "paired-table", filter_box=True))
        page.add("<details><summary>every figure (paired.csv)</summary>",
                 table(differences, "paired-all-table", filter_box=True), "</details>")
    if not qc.empty:
        page.section("QC: recall, good scans lost, cost", "qc")
        page.add(table(qc, "qc-table", filter_box=True))
    page.section("Every figure", "figures")
    page.add("<details><summary>summary.csv</summary>", _study_summary(summary, ""), "</details>",
             "<details><summary>per seed and arm (study.csv)</summary>", table(rows, "study-table", filter_box=True),
             "</details>")
    if (folder / "missing.csv").is_file():
        page.section("Missing runs", "missing")
        page.add(table(pd.read_csv(folder / "missing.csv"), "missing-table"))
    if links := _runs_links(folder):
        page.section("Runs", "runs")
        page.add(links)
    return page.render()


def sweep_page(folder: Path) -> str:
    """The HTML of a sweep's report (``sweep.csv``, ``sweep_summary.csv``, ``sweep_paired.csv``, curves)."""
    from fedqc.analysis.study import PAIRED_NOTE, SWEEP_FIGURES

    page = Page(f"fedqc sweep {folder.name}")
    page.note(f"Sweep folder {folder.resolve()}. Per swept value, one run per seed; bands and cells: 95 % "
              "t-interval across seeds. Each value's own study page is linked at the end.")
    page.section("Curves", "curves")
    page.add(_grid(folder, [f"sweep_{f}.png" for f in SWEEP_FIGURES]))
    page.section("Summary", "summary")
    page.add(_study_summary(pd.read_csv(folder / "sweep_summary.csv"), "sweep-"))
    paired = folder / "sweep_paired.csv"
    if paired.is_file() and paired.stat().st_size:
        page.section("Paired differences", "paired")
        page.note(PAIRED_NOTE.replace("`paired.csv`", "`sweep_paired.csv`"))
        page.add(_grid(folder, [f"sweep_diff_{f}.png" for f in SWEEP_FIGURES]))
        page.add(table(pd.read_csv(paired), "paired-table", filter_box=True))
    page.section("Per value, seed and arm", "rows")
    page.add(table(pd.read_csv(folder / "sweep.csv"), "sweep-table", filter_box=True))
    if links := _runs_links(folder):
        page.section("Studies", "runs")
        page.add(links)
    return page.render()


def kind_of(folder: Path) -> str:
    """``run``, ``study`` or ``sweep``: what ``folder`` holds."""
    for kind, marker in (("sweep", "sweep.csv"), ("study", "study.csv"), ("run", "config.yaml")):
        if (folder / marker).is_file():
            return kind
    raise UserError(f"{folder} is not a run (config.yaml), a study (study.csv) or a sweep (sweep.csv) folder")


def write_html(folder: Path) -> Path:
    """Write ``report.html`` into a run, study or sweep folder (a sweep's value folders get theirs first, so its
    page links them); return its path. A run without ``metrics.csv`` gets ``fedqc infer``'s files first
    (:func:`fedqc.analysis.infer.infer_run`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"not a folder: {folder}")
    kind = kind_of(folder)
    if kind == "run":
        if not (folder / "metrics.csv").is_file():
            from fedqc.analysis.infer import infer_run

            infer_run(folder)
        text = run_page(folder)
    elif kind == "study":
        text = study_page(folder)
    else:
        for sub in sorted(p.parent for p in folder.glob("*/study.csv")):
            write_html(sub)
        text = sweep_page(folder)
    atomic_write_text(text, folder / REPORT)
    return folder / REPORT
