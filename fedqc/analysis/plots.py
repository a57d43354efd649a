"""Plots of a run: test metrics per cycle by arm, by subgroup, and a QC arm's flags and eliminations."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PLOT_METRICS = ("auroc", "accuracy", "sensitivity", "specificity")


def _save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_by_arm(metrics: pd.DataFrame, path: Path) -> None:
    """AUROC, accuracy, sensitivity, specificity vs cycle; one line per arm."""
    overall = metrics[metrics["group"] == "all"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, metric in zip(axes.ravel(), PLOT_METRICS):
        for arm, df in overall.groupby("arm", sort=False):
            ax.plot(df["cycle"], df[metric], marker="o", label=arm)
        ax.set_title(f"Test {metric}")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_ylabel(metric)
    for ax in axes[1]:
        ax.set_xlabel("cycle")
    axes[0, 0].legend(title="arm")
    fig.suptitle("Test metrics per cycle, by arm")
    _save(fig, path)


def plot_subgroups(metrics: pd.DataFrame, arm: str, path: Path) -> None:
    """AUROC and sensitivity vs cycle by sex and age group for one arm."""
    df = metrics[(metrics["arm"] == arm) & (metrics["group"] != "all")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("auroc", "sensitivity")):
        for group, g in df.groupby("group", sort=False):
            ax.plot(g["cycle"], g[metric], marker=".", label=f"{group} (n={int(g['n'].iloc[-1])})")
        ax.set_title(f"{arm}: test {metric} by subgroup")
        ax.set_xlabel("cycle")
        ax.set_ylabel(metric)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    _save(fig, path)


def plot_qc(flagged: pd.DataFrame, eliminated: pd.DataFrame, cycles: list[int], arm: str, path: Path) -> None:
    """Scans flagged and eliminated per cycle by one QC arm."""
    f = flagged["cycle_flagged"].value_counts().reindex(cycles, fill_value=0)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(cycles))
    ax.bar(x - 0.2, f.to_numpy(), width=0.4, label="flagged (kept out until revisit)")
    bottom = np.zeros(len(cycles))
    for stage, label in (("audit", "eliminated by the audit"), ("verification", "eliminated (failed the revisit)"),
                         ("site", "eliminated with its site")):
        e = eliminated.loc[eliminated["stage"] == stage, "cycle_eliminated"].value_counts()
        e = e.reindex(cycles, fill_value=0).to_numpy()
        if e.any():
            ax.bar(x + 0.2, e, width=0.4, bottom=bottom, label=label)
            bottom += e
    ax.set_xticks(x, [str(c) for c in cycles])
    ax.set_xlabel("cycle")
    ax.set_ylabel("training scans")
    ax.set_title(f"{arm}: scans flagged and eliminated per cycle")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    ax.set_ylim(0, max(f.max(), bottom.max(), 1) * 1.35)
    _save(fig, path)


def plot_intervals(metrics: pd.DataFrame, path) -> None:
    """Test AUROC, sensitivity and specificity per cycle and arm, each with its 95 % interval as a band (columns
    ``<metric>_lo`` and ``<metric>_hi``)."""
    overall = metrics[metrics["group"] == "all"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    for ax, metric in zip(axes, ("auroc", "sensitivity", "specificity")):
        for arm, df in overall.groupby("arm", sort=False):
            line, = ax.plot(df["cycle"], df[metric], marker="o", markersize=3, label=arm)
            ax.fill_between(df["cycle"], df[f"{metric}_lo"], df[f"{metric}_hi"], color=line.get_color(), alpha=0.15)
        ax.set_title(f"Test {metric} (band: 95 % interval)", fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("cycle")
        ax.grid(alpha=0.3)
    axes[0].legend(title="arm", fontsize=8)
    _save(fig, path)


def plot_calibration(predictions: dict[str, pd.DataFrame], path, bins: int = 5) -> None:
    """Reliability diagram: per arm, the share of positives against the mean score in ``bins`` bins of equal count
    (scikit-learn's ``calibration_curve``, quantile bins: a small test split fills every bin)."""
    from sklearn.calibration import calibration_curve

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle="--", label="perfectly calibrated")
    for arm, preds in predictions.items():
        if preds["label"].nunique() < 2:
            continue
        positives, mean_score = calibration_curve(preds["label"], preds["score"], n_bins=bins, strategy="quantile")
        ax.plot(mean_score, positives, marker="o", label=f"{arm} (n={len(preds)})")
    ax.set_xlabel("mean score in bin")
    ax.set_ylabel("share of positives in bin")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Calibration on test, last cycle", fontsize=10)
    _save(fig, path)
