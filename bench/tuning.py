"""Tune each strategy's learning rate and local epochs on the verification scans, never on test.

For every strategy, every point of a small grid (learning rate × local epochs; the
travelling model has no local epochs, so its grid is the learning rates) trains the
config's clean arm with one seed, one run after another. A point's score is the AUROC on
the pooled verification (``val``) scans of its last ``--last`` checkpoints, averaged: the
scans the clean arm's calibration reads (the ground truth's harmful ones left out, as the
oracle arm leaves them out of training and calibration). The choice is the best score,
ties to the earlier grid point; ``minutes`` is the run's training time (its
``cycles.csv``). The scoring reads the manifest's ``val`` rows only
(:func:`fedqc.analysis.infer.predict_checkpoint` builds sites from those rows alone), so
the test split cannot steer it. The runs' own per-cycle test scores are reported beside,
after the choice, in ``test_auroc_last`` (never read by the choice).

At most 6 points per strategy, and the learning rates must include the config's
``train.lr`` (the travelling model's, already tuned): the budget the issue sets, so a
baseline is not tuned harder than the method it is compared with. A point whose last
checkpoint exists is not run again; one cut short resumes.

    python -m bench.tuning studies/strategies/demo-tuning.yaml --out runs/tuning \\
        --strategies travelling fedavg fedprox --lr 1e-3 3e-3 1e-2 --epochs 1 2 --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from fedqc.analysis.infer import predict_checkpoint, run_config
from fedqc.analysis.metrics import auroc
from fedqc.analysis.report import markdown_table
from fedqc.config import load_config
from fedqc.data.manifest import load_manifest
from fedqc.errors import UserError
from fedqc.experiment.arms import harmful_scans
from fedqc.experiment.run_dir import RunDir
from fedqc.experiment.runner import simulate

MAX_POINTS = 6
ARM = "clean"


def grid(strategy: str, lrs: list[float], epochs: list[int]) -> list[tuple[float, int]]:
    """The strategy's (lr, local epochs) points: learning rates only for the travelling model."""
    points = [(lr, 1) for lr in lrs] if strategy == "travelling" else [(lr, e) for e in epochs for lr in lrs]
    if len(points) > MAX_POINTS:
        raise UserError(f"{strategy}: {len(points)} grid points; at most {MAX_POINTS} per strategy")
    return points


def val_auroc(run: Path, cycles: list[int]) -> float:
    """Mean AUROC of the clean arm's checkpoints of ``cycles`` on the pooled verification scans it trusts."""
    cfg = run_config(RunDir(run))
    manifest = load_manifest(cfg.manifest, check_images=False)
    bad = {s for subjects in harmful_scans(manifest, "val").values() for s in subjects}
    val = manifest[(manifest["split"] == "val") & ~manifest["subject"].isin(bad)]
    arm = RunDir(run).arm(ARM)
    return float(pd.Series([auroc(predict_checkpoint(arm.checkpoint(c), val, split="val")) for c in cycles]).mean())


def reported_test_auroc(run: Path, cycles: list[int]) -> float:
    """Mean test AUROC of ``cycles`` from the run's saved predictions: reported, never read by the choice."""
    arm = RunDir(run).arm(ARM)
    return float(pd.Series([auroc(pd.read_csv(arm.predictions(c))) for c in cycles]).mean())


def tune(config: Path, out: Path, strategies: list[str], lrs: list[float], epochs: list[int], *, seed: int = 0,
         last: int = 3, overrides: dict | None = None) -> pd.DataFrame:
    """Run every strategy's grid into ``out/<strategy>-lr<lr>-e<epochs>/`` and score it; one row per point with
    ``chosen`` marking each strategy's choice (``tuning.csv`` in ``out``)."""
    base = load_config(config, overrides)
    if base.train.lr not in lrs:
        raise UserError(f"--lr must include the config's train.lr ({base.train.lr}), the travelling model's")
    plans = {s: grid(s, lrs, epochs) for s in strategies}
    rows = []
    for strategy, points in plans.items():
        for lr, e in points:
            cfg = load_config(config, {**(overrides or {}), "arms": [ARM], "train.seed": seed, "train.lr": lr,
                                       "strategy.name": strategy, "strategy.local_epochs": e})
            run = out / f"{strategy}-lr{lr:g}-e{e}"
            cycles = list(range(max(0, cfg.train.cycles - last), cfg.train.cycles))
            if not RunDir(run).arm(ARM).checkpoint(cycles[-1]).is_file():
                simulate(cfg, run, resume=run.exists(), quiet=True)
            rows.append({"strategy": strategy, "lr": lr, "local_epochs": e, "val_auroc": val_auroc(run, cycles),
                         "minutes": pd.read_csv(RunDir(run).arm(ARM).path / "cycles.csv")["seconds"].sum() / 60})
    table = pd.DataFrame(rows)
    best = table.groupby("strategy", sort=False)["val_auroc"].idxmax()  # the first of equal maxima
    table["chosen"] = table.index.isin(best.to_numpy())
    table["test_auroc_last"] = [reported_test_auroc(out / f"{r.strategy}-lr{r.lr:g}-e{r.local_epochs}",
                                           list(range(max(0, base.train.cycles - last), base.train.cycles)))
                                for r in table.itertuples()]
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "tuning.csv", index=False)
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--strategies", nargs="+", default=["travelling", "fedavg", "fedprox"])
    p.add_argument("--lr", type=float, nargs="+", required=True)
    p.add_argument("--epochs", type=int, nargs="+", default=[1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--last", type=int, default=3, help="checkpoints (the last ones) a point's score averages")
    a = p.parse_args()
    try:
        table = tune(a.config, a.out, a.strategies, a.lr, a.epochs, seed=a.seed, last=a.last)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(markdown_table(table.round(3)))


if __name__ == "__main__":
    main()
