"""``fedqc infer``: per-cycle test metrics of every arm, fairness gaps, plots and a report.

Saved test predictions (``<arm>/predictions/cycle_NNN.csv``) are reused; a cycle whose
predictions are missing (or every cycle with ``recompute``) is scored again from its
checkpoint through the same site logic. The test split is only ever read here and in
the per-cycle scoring — never by training or QC.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from fedqc.config import parse_config  # noqa: E402
from fedqc.data.manifest import load_manifest  # noqa: E402
from fedqc.io import atomic_write_csv, atomic_write_text  # noqa: E402
from fedqc.metrics import DEFAULT_AGE_EDGES, fairness_gaps, group_metrics  # noqa: E402
from fedqc.site import ModelSpec  # noqa: E402
from fedqc.transport import InProcessTransport  # noqa: E402
from fedqc.travel import load_checkpoint  # noqa: E402

ARM_ORDER = ("clean", "dirty", "qc")
PLOT_METRICS = ("auroc", "accuracy", "sensitivity", "specificity")


def predict_checkpoint(checkpoint: Path, manifest: pd.DataFrame, *, split: str = "test") -> pd.DataFrame:
    """Per-scan test scores of one checkpoint on a manifest, through the site logic."""
    ckpt = load_checkpoint(checkpoint)
    spec = ModelSpec(**{**ckpt["model"], "input_shape": tuple(ckpt["model"]["input_shape"])})
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"manifest has no {split!r} rows to score")
    transport = InProcessTransport(rows, spec)
    results = transport.evaluate(sorted(transport.sites), ckpt["state"], {"split": split})
    return pd.concat([r.scores for r in results.values()], ignore_index=True)


def _cycles(arm_dir: Path) -> list[int]:
    found = {int(p.stem.split("_")[1]) for sub in ("predictions", "checkpoints")
             for p in (arm_dir / sub).glob("cycle_*.*") if p.suffix in (".csv", ".pt")}
    return sorted(found)


def run_metrics(run: Path, *, recompute: bool = False, age_edges=DEFAULT_AGE_EDGES, n_boot: int = 1000,
                seed: int = 0) -> pd.DataFrame:
    """metrics.csv rows for every arm and cycle of a finished (or running) run."""
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.yaml)")
    manifest = None
    frames = []
    for arm in ARM_ORDER:
        arm_dir = run / arm
        for cycle in _cycles(arm_dir):
            pred_file = arm_dir / "predictions" / f"cycle_{cycle:03d}.csv"
            if pred_file.is_file() and not recompute:
                preds = pd.read_csv(pred_file)
            else:
                if manifest is None:
                    cfg = parse_config(yaml.safe_load(cfg_path.read_text()), source=cfg_path)
                    if cfg.manifest is None:
                        raise ValueError(f"{pred_file} is missing and the run's config names no manifest to "
                                         "recompute it; use --checkpoint with --manifest")
                    manifest = load_manifest(cfg.manifest)
                preds = predict_checkpoint(arm_dir / "checkpoints" / f"cycle_{cycle:03d}.pt", manifest)
                atomic_write_csv(preds, pred_file)
            m = group_metrics(preds, age_edges=age_edges, n_boot=n_boot, seed=seed)
            m.insert(0, "cycle", cycle)
            m.insert(0, "arm", arm)
            frames.append(m)
    if not frames:
        raise FileNotFoundError(f"{run}: no predictions or checkpoints found")
    return pd.concat(frames, ignore_index=True)


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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_qc(arm_dir: Path, path: Path) -> None:
    """Scans flagged and eliminated per cycle by one QC arm."""
    flagged = pd.read_csv(arm_dir / "flagged.csv")
    eliminated = pd.read_csv(arm_dir / "eliminated.csv")
    cycles = sorted(int(p.stem.split("_")[1]) for p in (arm_dir / "predictions").glob("cycle_*.csv"))
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
    ax.set_title(f"{arm_dir.name}: scans flagged and eliminated per cycle")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    ax.set_ylim(0, max(f.max(), bottom.max(), 1) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(x, digits: int = 3) -> str:
    return "" if pd.isna(x) else f"{x:.{digits}f}"


def markdown_table(df: pd.DataFrame) -> str:
    """A plain markdown table (floats to 3 decimals, NaN empty)."""
    cell = lambda v: _fmt(v) if isinstance(v, float) else str(v)  # noqa: E731
    rows = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    rows += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)


def write_report(run: Path, metrics: pd.DataFrame, plots: list[Path]) -> None:
    """A one-page markdown summary of the run."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    lines = [f"# fedqc run `{cfg.get('name', run.name)}`", "", "## Config", "", "```yaml",
             yaml.safe_dump(cfg, sort_keys=False).strip(), "```", "", "## Final test metrics (last cycle of each arm)", "",
             "| arm | cycle | n | AUROC [95% CI] | accuracy [95% CI] | sensitivity | specificity | F1 |",
             "|---|---|---|---|---|---|---|---|"]
    last = metrics.loc[metrics.groupby("arm", sort=False)["cycle"].transform("max") == metrics["cycle"]]
    for _, r in last[last["group"] == "all"].iterrows():
        lines.append(f"| {r.arm} | {r.cycle} | {r.n} | {_fmt(r.auroc)} [{_fmt(r.auroc_lo)}, {_fmt(r.auroc_hi)}] | "
                     f"{_fmt(r.accuracy)} [{_fmt(r.accuracy_lo)}, {_fmt(r.accuracy_hi)}] | {_fmt(r.sensitivity)} | "
                     f"{_fmt(r.specificity)} | {_fmt(r.f1)} |")
    lines += ["", "## Subgroups (last cycle)", "", "| arm | group | n | n_pos | AUROC | sensitivity | specificity | note |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in last[last["group"] != "all"].iterrows():
        lines.append(f"| {r.arm} | {r.group} | {r.n} | {r.n_pos} | {_fmt(r.auroc)} | {_fmt(r.sensitivity)} | "
                     f"{_fmt(r.specificity)} | {r.note if isinstance(r.note, str) else ''} |")
    for detection in sorted(run.glob("*/detection.csv")):
        lines += ["", f"## QC detection: `{detection.parent.name}`", "", markdown_table(pd.read_csv(detection))]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.relative_to(run).as_posix()})" for p in plots]
    atomic_write_text("\n".join(lines) + "\n", run / "report.md")


def infer_run(run: Path, *, recompute: bool = False, age_edges=DEFAULT_AGE_EDGES, n_boot: int = 1000,
              seed: int = 0) -> pd.DataFrame:
    """Write metrics.csv, fairness.csv, plots/ and report.md into ``run``."""
    metrics = run_metrics(run, recompute=recompute, age_edges=age_edges, n_boot=n_boot, seed=seed)
    atomic_write_csv(metrics, run / "metrics.csv")
    atomic_write_csv(fairness_gaps(metrics), run / "fairness.csv")
    plot_dir = run / "plots"
    plot_dir.mkdir(exist_ok=True)
    plots = [plot_dir / "metrics_by_arm.png"]
    plot_by_arm(metrics, plots[0])
    for arm in metrics["arm"].unique():
        plots.append(plot_dir / f"subgroups_{arm}.png")
        plot_subgroups(metrics, arm, plots[-1])
        if (run / arm / "flagged.csv").is_file():
            plots.append(plot_dir / f"qc_{arm}.png")
            plot_qc(run / arm, plots[-1])
    write_report(run, metrics, plots)
    return metrics
