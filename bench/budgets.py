"""Strategies at equal budgets: test AUROC against training work, communication and wall time (issue 38, item 3).

Reads strategy sweeps (``strategy.name=<s>/seed_<k>/<arm>/``, as :mod:`bench.strategies`) and, per strategy,
seed and cycle of ``--arm``, what the run had spent by the end of the cycle and the cycle's test AUROC:

- ``scan_steps``: scans trained (``train_log.csv``'s ``n_scans`` summed over hops: a scan trained in two local
  epochs counts twice) — the training work;
- ``messages`` and ``megabytes``: messages to sites and the model state they and the training replies moved
  (``cycles.csv``: training, calibration and the cycle's closing scoring alike) — the communication;
- ``seconds``: the cycles' wall seconds (``cycles.csv``) — the wall time, meaningful when the runs had the
  machine to themselves.

**Equal budgets.** For each budget the common level is the smallest of the strategies' totals (each the median over
its seeds); each strategy and seed is scored by its model at that level: the mean test AUROC of its last three
cycles that end within it (what the run would have given, had it stopped there). The difference from the travelling
model is paired by seed (mean and 95 % t-interval, :func:`fedqc.analysis.paired.paired_difference`).

Writes ``OUT/budgets.csv`` (per strategy, seed and cycle), ``OUT/equal_budgets.csv`` and ``OUT/budgets.png`` (test
AUROC against each budget, mean over seeds, the common level dashed) and prints the markdown table.

    python -m bench.budgets runs/demo-budgets-study --out studies/strategies
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fedqc.analysis.paired import paired_difference  # noqa: E402
from fedqc.analysis.report import markdown_table  # noqa: E402
from fedqc.analysis.study import cycle_metrics  # noqa: E402
from fedqc.experiment.run_dir import RunDir  # noqa: E402

BUDGETS = {"scan_steps": "scans trained", "megabytes": "model state moved (MB)", "messages": "messages to sites",
           "seconds": "wall seconds"}
REFERENCE = "travelling"
LAST = 3  # cycles averaged, as the studies' auroc_last3


def arm_curve(arm_dir: Path) -> pd.DataFrame:
    """Per cycle of one arm: its test AUROC and the budgets spent by the end of the cycle."""
    log = pd.read_csv(arm_dir / "train_log.csv")
    cycles = pd.read_csv(arm_dir / "cycles.csv").set_index("cycle")
    work = log.groupby("cycle")["n_scans"].sum().reindex(cycles.index, fill_value=0)
    auroc = cycle_metrics(RunDir(arm_dir.parent).arm(arm_dir.name)).set_index("cycle")["auroc"]
    return pd.DataFrame({"cycle": cycles.index, "auroc": auroc.reindex(cycles.index).to_numpy(),
                         "scan_steps": work.cumsum().to_numpy(),
                         "megabytes": (cycles["state_bytes"].cumsum() / 1e6).to_numpy(),
                         "messages": cycles["messages"].cumsum().to_numpy(),
                         "seconds": cycles["seconds"].cumsum().to_numpy()})


def curves(studies: list[Path], arm: str) -> pd.DataFrame:
    """Every strategy's and seed's :func:`arm_curve` of ``arm`` in strategy sweeps (one study may hold each
    strategy's settings: e.g. its own learning rate)."""
    frames = [arm_curve(run / arm).assign(strategy=folder.name.split("=", 1)[1], seed=int(run.name.split("_")[1]))
              for study in studies for folder in sorted(study.glob("strategy.name=*"))
              for run in sorted(folder.glob("seed_*")) if (run / arm / "cycles.csv").is_file()]
    if not frames:
        raise SystemExit(f"{' '.join(map(str, studies))}: no strategy.name=*/seed_*/{arm}/cycles.csv")
    return pd.concat(frames, ignore_index=True)


def within(curves: pd.DataFrame, budget: str, level: float) -> pd.DataFrame:
    """The cycles that end within ``level`` of ``budget`` (up to float rounding)."""
    return curves[curves[budget] <= level * (1 + 1e-9)]


def at_budget(curve: pd.DataFrame, budget: str, level: float) -> float:
    """The mean test AUROC of the last :data:`LAST` cycles of one run that end within ``level`` of ``budget``."""
    spent = within(curve, budget, level)
    return float(spent["auroc"].tail(LAST).mean()) if len(spent) else float("nan")


def equal_budgets(table: pd.DataFrame) -> pd.DataFrame:
    """Per budget and strategy: the common level, the mean AUROC there and the paired difference from the
    travelling model."""
    rows = []
    for budget in BUDGETS:
        totals = table.groupby(["strategy", "seed"])[budget].max().groupby("strategy").median()
        level = float(totals.min())
        scores = {s: pd.Series({seed: at_budget(c.sort_values("cycle"), budget, level)
                                for seed, c in table[table["strategy"] == s].groupby("seed")})
                  for s in totals.index}
        for s, auroc in scores.items():
            d = paired_difference(auroc, scores[REFERENCE], names=(s, REFERENCE)) if REFERENCE in scores \
                and s != REFERENCE else None
            rows.append({"budget": budget, "level": level, "strategy": s, "seeds": int(auroc.notna().sum()),
                         "auroc": float(auroc.mean()), "cycles_within": float(
                             within(table[table["strategy"] == s], budget, level).groupby("seed").size().median()),
                         "vs_travelling": d["mean"] if d else float("nan"), "ci_lo": d["ci_lo"] if d else float("nan"),
                         "ci_hi": d["ci_hi"] if d else float("nan")})
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, levels: pd.DataFrame, path: Path) -> None:
    """Test AUROC against each budget: per strategy the mean over seeds of each cycle's AUROC and budget."""
    budgets = [b for b in BUDGETS if b != "messages"]
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.6), sharey=True)
    mean = table.groupby(["strategy", "cycle"]).mean(numeric_only=True).reset_index()
    for ax, budget in zip(axes, budgets):
        for strategy, c in mean.groupby("strategy"):
            ax.plot(c[budget], c["auroc"], marker="o", markersize=3, label=strategy)
        ax.axvline(float(levels.loc[levels["budget"] == budget, "level"].iloc[0]), color="grey", linestyle="--",
                   linewidth=1)
        ax.set_xlabel(BUDGETS[budget])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test AUROC (mean over seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path, nargs="+", help="strategy sweeps (several: one strategy each)")
    parser.add_argument("--arm", default="clean")
    parser.add_argument("--out", type=Path, default=None, help="folder of the outputs (default: the first study's)")
    args = parser.parse_args(argv)
    out = args.out or args.study[0]
    out.mkdir(parents=True, exist_ok=True)
    table = curves(args.study, args.arm)
    levels = equal_budgets(table)
    table.to_csv(out / "budgets.csv", index=False)
    levels.to_csv(out / "equal_budgets.csv", index=False)
    plot(table, levels, out / "budgets.png")
    shown = levels.assign(level=levels["level"].map(lambda v: f"{v:.4g}"),
                          difference=[(f"{r.vs_travelling:+.3f}" + (f" [{r.ci_lo:+.3f}, {r.ci_hi:+.3f}]"
                                                                     if pd.notna(r.ci_lo) else ""))
                                      if pd.notna(r.vs_travelling) else "" for r in levels.itertuples()])
    print(markdown_table(shown[["budget", "level", "strategy", "seeds", "cycles_within", "auroc", "difference"]]))


if __name__ == "__main__":
    main()
