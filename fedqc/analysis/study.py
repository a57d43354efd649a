"""A study's tables, plot and report: one row per seed × arm, and per arm the mean, sd and a 95 % t-interval.

``study.csv``: test AUROC of the last cycle and the mean of the last three, accuracy, sensitivity,
specificity, ``ppv`` (the test predictions' precision), F1, average precision, macro-F1 and sensitivity at 90
% specificity of the last cycle, at the arm's decision threshold of that cycle; the balanced accuracy of the
last three cycles beside the oracle's (the best threshold on test: ``bacc_gap_last3`` is what the chosen
threshold leaves), and ``max_swing``, the largest change of sensitivity or specificity between consecutive
cycles both at AUROC >= 0.8 (does the threshold hold from cycle to cycle?); for a bias study the AUROC on the
bias-flipped test split and the bias probe's balanced accuracy (:mod:`fedqc.analysis.bias`); for a multi-label
model ``f1_<target>``, ``auroc_<target>``, ``ap_<target>`` of the last cycle for every target (``label`` the main
one) and ``f1_targets_macro``, ``auroc_targets_macro``, ``ap_targets_macro``, their macro averages; for QC arms also the recall of
whole harmful sites and of single scans, of every harm kind in each, and of every whole harmful site, the good
scans lost, precision, verifications and seconds. ``summary.csv``: per arm and figure, ``n`` (seeds with a
value), mean, sd and the t-interval (NaN with fewer than two seeds), clipped to the figure's range:
a share (AUROC, accuracy, sensitivity, specificity, recall, precision) to [0, 1], a count or a time to
[0, ∞). With three seeds the interval is wide; unclipped it would run past what the figure can be.
``paired.csv``: the arms compared seed by seed (QC − dirty, QC − clean, dirty − clean and any ``--pair``):
:mod:`fedqc.analysis.paired` says why and how.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fedqc.analysis.bias import bias_row
from fedqc.analysis.metrics import auroc, binary_metrics, target_metrics
from fedqc.analysis.paired import paired_table, pairs_for
from fedqc.analysis.report import markdown_table
from fedqc.experiment.arms import arms_for
from fedqc.experiment.run_dir import FIXED_THRESHOLD, ArmDir, RunDir
from fedqc.io import atomic_write_csv, atomic_write_text
from fedqc.scoring import score_targets

LAST = 3  # cycles averaged for the "last-3" AUROC
SKILLED = 0.8  # max_swing compares consecutive cycles at this test AUROC or more
SHARES = ("auroc", "auroc_last3", "accuracy", "sensitivity", "specificity", "precision", "good_lost_rate", "ppv", "f1",
          "average_precision", "macro_f1", "sens_at_spec90", "bacc_last3", "best_bacc_last3", "bacc_gap_last3",
          "max_swing", "auroc_flipped_last3", "probe_bacc", "probe_chance")  # and recall_*


def figure_range(figure: str) -> tuple[float, float]:
    """The values ``figure`` can take: [0, 1] for a share, [0, ∞) for a count or a time."""
    shares = figure in SHARES or figure.startswith(("recall_", "targets_", "auroc_", "f1_", "ap_"))
    return (0.0, 1.0) if shares else (0.0, float("inf"))


def cycle_metrics(arm_dir: ArmDir, thresholds: dict[int, float] | None = None) -> pd.DataFrame:
    """Per cycle of an arm: the test metrics of all its scans at the cycle's decision threshold (the arm's own, or
    the one ``thresholds`` gives, e.g. another method's from ``calibration.csv``)."""
    thresholds = arm_dir.thresholds() if thresholds is None else thresholds
    rows = []
    for c in arm_dir.cycles("predictions"):
        preds, threshold = pd.read_csv(arm_dir.predictions(c)), thresholds.get(c, FIXED_THRESHOLD)
        rows.append({"cycle": c, "threshold": threshold, **binary_metrics(preds["label"], preds["score"], threshold)})
    return pd.DataFrame(rows)


def max_swing(cycles: pd.DataFrame, skilled: float = SKILLED) -> float:
    """The largest change of sensitivity or specificity between consecutive cycles that both reach AUROC
    ``skilled`` (NaN when no two do)."""
    c = cycles.sort_values("cycle")
    both = (c["auroc"] >= skilled) & (c["auroc"].shift() >= skilled)
    steps = c[["sensitivity", "specificity"]].diff().abs()[both]
    return float(steps.max().max()) if len(steps) else float("nan")


def arm_row(run: RunDir, arm: str) -> dict | None:
    """The study figures of one arm of one run; None when the arm has no predictions."""
    arm_dir = run.arm(arm)
    cycles = arm_dir.cycles("predictions")
    if not cycles:
        return None
    per_cycle = cycle_metrics(arm_dir)
    m, last = per_cycle.iloc[-1], per_cycle.tail(LAST)
    row = {"arm": arm, "cycle": cycles[-1], "threshold": m["threshold"], "auroc": m["auroc"],
           "auroc_last3": float(last["auroc"].mean()), "bacc_last3": float(last["balanced_accuracy"].mean()),
           "best_bacc_last3": float(last["best_balanced_accuracy"].mean()),
           "bacc_gap_last3": float((last["best_balanced_accuracy"] - last["balanced_accuracy"]).mean()),
           "max_swing": max_swing(per_cycle),
           "accuracy": m["accuracy"], "sensitivity": m["sensitivity"], "specificity": m["specificity"],
           "ppv": m["precision"], "f1": m["f1"], "average_precision": m["average_precision"],
           "macro_f1": m["macro_f1"], "sens_at_spec90": m["sens_at_spec90"],
           "seconds": float(pd.read_csv(arm_dir.path / "cycles.csv")["seconds"].sum()),
           "cycle_seconds": float(pd.read_csv(arm_dir.path / "cycles.csv")["seconds"].median())}
    detection = arm_dir.path / "detection.csv"
    if detection.is_file():
        d = pd.read_csv(detection)
        for r in d[d["level"] == "scope"].itertuples():
            row[f"recall_{r.name}"] = r.recall
        for r in d[d["level"] == "kind"].itertuples():
            row[f"recall_{r.scope}_{r.name}"] = r.recall
        for r in d[(d["level"] == "site") & (d["scope"] == "whole-site")].itertuples():
            row[f"recall_site_{r.name}"] = r.recall
        overall = d[d["level"] == "overall"].iloc[0]
        row |= {"good_lost": overall["good_eliminated"], "good_lost_rate": overall["good_eliminated_rate"],
                "good_pending": overall["good_pending"], "good": overall["good"], "precision": overall["precision"]}
        log = arm_dir.path / "qc_log.csv"
        if log.is_file():  # sites that failed a site check at least once: with no harmful scan, and with some
            q = pd.read_csv(log)
            failed = set(q.loc[(q["scope"] == "site") & ~q["accepted"].astype(bool), "site"])
            sites = d[d["level"] == "site"]
            row |= {"good_sites_flagged": len(failed & set(sites.loc[sites["harmful"] == 0, "name"])),
                    "harm_sites_flagged": len(failed & set(sites.loc[sites["harmful"] > 0, "name"]))}
    row |= bias_row(run, arm)
    preds = pd.read_csv(arm_dir.predictions(cycles[-1]))
    if len(score_targets(preds.columns)) > 1:  # a multi-label model: every target, and their macro average
        for r in target_metrics(preds, m["threshold"]).itertuples():
            name = "targets_macro" if r.target == "macro" else r.target
            row |= {f"f1_{name}": r.f1, f"auroc_{name}": r.auroc, f"ap_{name}": r.average_precision}
    summary = arm_dir.path / "qc_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        row |= {"verifications": s["verifications"], "seconds": s["arm_seconds"]}
        row |= {k: s[k] for k in ("skill_cycle", "scans_judged", "scans_trained_unjudged") if s.get(k) is not None}
    return row


def study_rows(runs: dict[int, Path], arms: list[str]) -> pd.DataFrame:
    """One row per seed and arm; ``cost_vs_dirty``: an arm's median cycle time over the dirty arm's, same seed."""
    rows = pd.DataFrame([{"seed": seed, **row} for seed, path in runs.items() for arm in arms
                         if (row := arm_row(RunDir(path), arm)) is not None])
    if "dirty" in arms and not rows.empty:
        dirty = rows[rows["arm"] == "dirty"].set_index("seed")["cycle_seconds"]
        rows["cost_vs_dirty"] = rows["cycle_seconds"] / rows["seed"].map(dirty)
    return rows


def summarize(rows: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per arm and numeric figure: seeds with a value, mean, sd and the ``level`` t-interval of the mean."""
    from scipy.stats import t

    figures = [c for c in rows.columns if c not in ("seed", "arm", "cycle") and pd.api.types.is_numeric_dtype(rows[c])]
    out = []
    for arm, df in rows.groupby("arm", sort=False):
        for figure in figures:
            values = df[figure].dropna().to_numpy(dtype=float)
            n = len(values)
            mean = float(values.mean()) if n else float("nan")
            sd = float(values.std(ddof=1)) if n > 1 else float("nan")
            half = float(t.ppf((1 + level) / 2, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
            low, high = figure_range(figure)
            out.append({"arm": arm, "figure": figure, "n": n, "mean": mean, "sd": sd,
                        "ci_lo": max(mean - half, low), "ci_hi": min(mean + half, high)})
    return pd.DataFrame(out, columns=["arm", "figure", "n", "mean", "sd", "ci_lo", "ci_hi"])


def difference_span(figure: str) -> tuple[float, float]:
    """The values a difference of ``figure`` between two arms can take: [-1, 1] for a share."""
    low, high = figure_range(figure)
    return low - high, high - low


def paired(rows: pd.DataFrame, cfg, named: tuple[str, ...] = ()) -> pd.DataFrame:
    """The paired differences (:func:`fedqc.analysis.paired.paired_table`) of a study's ``rows``: the default pairs
    of ``cfg``'s arms and the ``named`` ones (``--pair A-B``)."""
    arms = arms_for(cfg)
    pairs = pairs_for([a.name for a in arms], [a.name for a in arms if a.qc], named)
    return paired_table(rows, pairs, span=difference_span)


def plot_study(runs: dict[int, Path], arms: list[str], path: Path) -> None:
    """Test AUROC per cycle: per arm the mean across seeds and a band from the lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for arm in arms:
        curves = {}
        for seed, run in runs.items():
            arm_dir = RunDir(run).arm(arm)
            curves[seed] = pd.Series({c: auroc(pd.read_csv(arm_dir.predictions(c)))
                                      for c in arm_dir.cycles("predictions")})
        table = pd.DataFrame(curves)
        if table.empty:
            continue
        line, = ax.plot(table.index, table.mean(axis=1), marker="o", label=f"{arm} (mean of {table.shape[1]} seeds)")
        ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("cycle")
    ax.set_ylabel("test AUROC")
    ax.set_ylim(0.3, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Test AUROC per cycle across seeds (band: lowest to highest seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cell(summary: pd.DataFrame, arm: str, figure: str) -> str:
    r = summary[(summary["arm"] == arm) & (summary["figure"] == figure)]
    if r.empty or r["n"].iloc[0] == 0:
        return ""
    r = r.iloc[0]
    if r["n"] < 2:
        return f"{r['mean']:.3f}"
    return f"{r['mean']:.3f} [{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]"


def missing_runs(out: Path, missing: dict[str, str] | None) -> list[str]:
    """``missing.csv`` (``run``, ``error``) for runs that failed, a stale one removed when none did; the lines that
    list them under the tables."""
    path = out / "missing.csv"
    if not missing:
        path.unlink(missing_ok=True)
        return []
    atomic_write_csv(pd.DataFrame({"run": list(missing), "error": list(missing.values())}), path)
    return ["## Missing runs", "", "These runs failed; the tables leave them out. Run the same command again to retry "
            "them (finished runs are kept).", ""] + [f"- {run}: `{error}`" for run, error in missing.items()] + [""]


PAIRED_FIGURES = ("auroc_last3", "auroc", "bacc_last3", "accuracy", "average_precision")


def _difference(r) -> str:
    if r.n == 0:
        return ""
    return f"{r.mean:+.3f}" if r.n < 2 else f"{r.mean:+.3f} [{r.ci_lo:+.3f}, {r.ci_hi:+.3f}]"


def paired_md(table: pd.DataFrame) -> str:
    """The paired differences of :data:`PAIRED_FIGURES` as a markdown table."""
    return markdown_table(paired_frame(table))


def paired_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The paired differences of :data:`PAIRED_FIGURES` (``paired.csv``'s rows) as the table a reader gets."""
    t = table[table["figure"].isin(PAIRED_FIGURES)]
    return pd.DataFrame({"pair (A-B)": t["pair"], "figure": t["figure"], "seeds": t["n"],
                         "A − B: mean [95 % t-interval]": [_difference(r) for r in t.itertuples()],
                         "sign-flip p": [f"{p:.3g}" for p in t["p"]],
                         "smallest p possible": [f"{p:.3g}" for p in t["p_min"]], "note": t["note"]})


PAIRED_NOTE = ("Arms of one seed share the cohort, the clean checkpoint and the visiting order, so they are "
               "compared seed by seed: A − B per seed, its mean, 95 % t-interval over seeds and exact two-sided "
               "sign-flip p-value (all 2^n sign assignments). With n seeds p cannot go below 2/2^n (0.0625 with "
               "5): headline claims use 5 seeds or more. All figures: `paired.csv`.")


MAIN_FIGURES = ("auroc", "auroc_last3", "accuracy", "sensitivity", "specificity", "bacc_last3", "bacc_gap_last3",
                "max_swing", "f1", "average_precision", "seconds")


def summary_tables(summary: pd.DataFrame, columns: list[str], arms: list[str],
                   qc_arms: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``study.md``'s two tables from ``summary`` (cells: mean [95 % t-interval]): per arm the test metrics of
    :data:`MAIN_FIGURES`, and per QC figure (recalls, good scans lost, cost) a column per QC arm; ``columns``: those
    of ``study.csv``, which say which figures the study has."""
    main = pd.DataFrame([{"arm": arm, **{f: _cell(summary, arm, f) for f in MAIN_FIGURES if f in columns}}
                         for arm in arms])
    qc = [c for c in columns if c.startswith("recall_")]
    qc += [c for c in ("good_lost", "good_lost_rate", "good_pending", "good_sites_flagged", "harm_sites_flagged",
                       "precision", "skill_cycle", "scans_judged", "scans_trained_unjudged", "verifications",
                       "cost_vs_dirty") if c in columns]
    return main, pd.DataFrame([{"figure": f, **{a: _cell(summary, a, f) for a in qc_arms}} for f in qc])


def write_study(out: Path, runs: dict[int, Path], command: str, missing: dict[str, str] | None = None,
                pairs: tuple[str, ...] = ()) -> pd.DataFrame:
    """``study.csv``, ``summary.csv``, ``paired.csv`` (the default pairs and ``pairs``, ``A-B`` each),
    ``study_auroc.png`` and ``study.md`` in ``out`` from the finished ``runs``; ``missing`` (run → error) names the
    runs that failed. Returns the summary."""
    from fedqc.analysis.infer import run_config

    cfg = run_config(RunDir(next(iter(runs.values()))))
    arms = [a.name for a in arms_for(cfg)]
    qc_arms = [a.name for a in arms_for(cfg) if a.qc]
    rows = study_rows(runs, arms)
    summary = summarize(rows)
    atomic_write_csv(rows, out / "study.csv")
    atomic_write_csv(summary, out / "summary.csv")
    differences = paired(rows, cfg, pairs)
    atomic_write_csv(differences, out / "paired.csv")
    plot_study(runs, arms, out / "study_auroc.png")
    main, qc_table = summary_tables(summary, list(rows.columns), arms, qc_arms)
    lines = [f"# Study `{cfg.name}`", "", f"Made by `{command}`. Seeds: {', '.join(map(str, runs))} "
             f"(training seed; the cohort is the same). Cells: mean [95 % t-interval] across seeds, "
             "clipped to what the figure can be.", "",
             "## Test metrics (last cycle; AUROC also as the mean of the last three cycles) and the arm's seconds", "",
             markdown_table(main), ""]
    if not differences.empty:
        lines += ["## Paired differences between arms, seed by seed", "", PAIRED_NOTE, "", paired_md(differences), ""]
    if qc_arms:
        lines += ["## QC: recall by scope and harm kind, good scans lost, cost", "",
                  "`recall_<scope>` and `recall_<scope>_<kind>`: whole harmful sites (every training scan of the site "
                  "harmful) or single scans in sites that keep good ones; `recall_site_<site>`: each whole harmful "
                  "site.", "", markdown_table(qc_table), ""]
    lines += ["![AUROC across seeds](study_auroc.png)", ""] + missing_runs(out, missing)
    atomic_write_text("\n".join(lines), out / "study.md")
    return summary


QC_FIGURES = ("recall_single-scan", "recall_whole-site", "good_lost", "good_sites_flagged", "harm_sites_flagged")
SWEEP_FIGURES = ("auroc_last3", "auroc_flipped_last3", "probe_bacc", "accuracy", "sensitivity", "ppv", "f1",
                 "average_precision") + QC_FIGURES


def write_sweep(out: Path, key: str, studies: dict, command: str, missing: dict[str, str] | None = None,
                pairs: tuple[str, ...] = ()) -> pd.DataFrame:
    """A sweep's tables and curves in ``out`` from ``studies`` (``{value: {seed: finished run folder}}``; ``missing``:
    run → error for the runs that failed, listed in ``missing.csv`` and ``sweep.md``): ``sweep.csv`` (one
    row per value × seed × arm, the figures of ``study.csv``), ``sweep_summary.csv`` (per value, arm and figure:
    n, mean, sd, 95 % t-interval), ``sweep_paired.csv`` (per value, the paired differences of ``paired.csv``),
    ``sweep_<figure>.png`` (the figure against the swept value, one line per arm, a band for the t-interval across
    seeds), ``sweep_diff_<figure>.png`` (the same for each pair's paired difference) and ``sweep.md``. Returns the
    summary."""
    from fedqc.analysis.infer import run_config

    frames, summaries, differences, arms = [], [], [], []
    for value, runs in studies.items():
        cfg = run_config(RunDir(next(iter(runs.values()))))
        arms += [a.name for a in arms_for(cfg) if a.name not in arms]
        rows = study_rows(runs, [a.name for a in arms_for(cfg)])
        frames.append(rows.assign(value=value))
        summaries.append(summarize(rows).assign(value=value))
        differences.append(paired(rows, cfg, pairs).assign(value=value))
    rows, summary, diff = (pd.concat(f, ignore_index=True) for f in (frames, summaries, differences))
    rows, summary, diff = (df[["value"] + [c for c in df.columns if c != "value"]] for df in (rows, summary, diff))
    atomic_write_csv(rows, out / "sweep.csv")
    atomic_write_csv(summary, out / "sweep_summary.csv")
    atomic_write_csv(diff, out / "sweep_paired.csv")
    figures = [f for f in SWEEP_FIGURES if f in set(summary["figure"])]
    for figure in figures:
        plot_sweep(summary, key, figure, arms, out / f"sweep_{figure}.png")
    test = [f for f in figures if f not in QC_FIGURES]
    diff_figures = [f for f in test if f in set(diff["figure"])]
    pair_names = list(dict.fromkeys(diff["pair"]))
    for figure in diff_figures:
        plot_sweep(diff.rename(columns={"pair": "arm"}), key, figure, pair_names, out / f"sweep_diff_{figure}.png",
                   difference=True)
    table = pd.DataFrame([{"arm": arm, **{f"{key}={v}": _cell(summary[summary["value"] == v], arm, figure)
                                          for v in studies}} for figure in test for arm in arms])
    table.insert(0, "figure", [f for f in test for _ in arms])
    lines = [f"# Sweep of `{key}`", "", f"Made by `{command}`. Seeds: {', '.join(map(str, next(iter(studies.values()))))}"
             " per value. Cells: mean [95 % t-interval] across seeds, clipped to what the figure can be; each "
             f"value's own study (QC detection included) is in `{key}=<value>/study.md`. Test metrics of the last "
             "cycle (AUROC: mean of the last three) at each arm's decision threshold (0.5 unless `calibration:` fits "
             "one on verification scans); `ppv` is the test predictions' precision.", "",
             markdown_table(table), ""]
    if pair_names:
        d = diff[diff["figure"] == "auroc_last3"]
        cells = {(r.pair, r.value): f"{_difference(r)} (p {r.p:.3g})" for r in d.itertuples()}
        paired_rows = pd.DataFrame([{"pair (A-B)": pair, **{f"{key}={v}": cells.get((pair, v), "") for v in studies}}
                                    for pair in pair_names])
        lines += ["## Paired differences: AUROC of the last three cycles, A − B", "", PAIRED_NOTE.replace(
                  "`paired.csv`", "`sweep_paired.csv`"), "", markdown_table(paired_rows), ""]
        lines += [f"![{f} difference](sweep_diff_{f}.png)" for f in diff_figures] + [""]
    lines += [f"![{f}](sweep_{f}.png)" for f in figures] + [""] + missing_runs(out, missing)
    atomic_write_text("\n".join(lines), out / "sweep.md")
    return summary


def write_results(out: Path, runs: list, command: str, sweep=None, failed: dict | None = None,
                  pairs: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """The tables of a study from its planned ``runs`` (:class:`~fedqc.experiment.study.StudyRun`): with ``sweep``
    (:class:`~fedqc.experiment.study.Sweep`) each value's study and the sweep's, else the study's. ``failed`` (run →
    error) are left out and listed as missing. Returns the study's or the sweep's summary; ``None`` when no run
    finished."""
    failed = failed or {}
    done = [r for r in runs if r not in failed]
    if sweep is None:
        return write_study(out, {r.seed: r.folder for r in done}, command,
                           {r.name: e for r, e in failed.items()}, pairs) if done else None
    studies = {v: {r.seed: r.folder for r in done if r.value == v} for v in sweep.values}
    studies = {v: s for v, s in studies.items() if s}
    for value, study_runs in studies.items():
        write_study(sweep.folder(out, value), study_runs, command,
                    {r.name: e for r, e in failed.items() if r.value == value}, pairs)
    return write_sweep(out, sweep.key, studies, command, {r.name: e for r, e in failed.items()}, pairs) \
        if studies else None


def plot_sweep(summary: pd.DataFrame, key: str, figure: str, arms: list[str], path: Path,
               difference: bool = False) -> None:
    """``figure`` against the swept value: per arm the mean across seeds and its 95 % t-interval as a band; with
    ``difference``, the ``arm`` column names pairs and the lines are paired differences, with a line at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = list(dict.fromkeys(summary["value"]))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm in arms:
        s = summary[(summary["arm"] == arm) & (summary["figure"] == figure) & (summary["n"] > 0)]
        if s.empty:
            continue
        xs = [x[v] for v in s["value"]]
        line, = ax.plot(xs, s["mean"], marker="o", label=arm)
        ax.fill_between(xs, s["ci_lo"].fillna(s["mean"]), s["ci_hi"].fillna(s["mean"]), color=line.get_color(),
                        alpha=0.2)
    if not numeric:
        ax.set_xticks(range(len(values)), [str(v) for v in values])
    if difference:
        ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel(key)
    ax.set_ylabel(f"{figure}, A − B paired by seed" if difference else figure)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{figure}{' difference' if difference else ''} against {key} (band: 95 % t-interval across seeds)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
