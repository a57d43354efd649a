"""``fedqc infer``: per-cycle test metrics of every configured arm, fairness gaps, plots and a report; for a
multi-label model also every target's metrics and their macro average (``metrics_targets.csv``).

Threshold metrics use each cycle's decision threshold: the one the run's calibration
fitted on verification scans (``calibration.csv``, also in the checkpoint), else 0.5;
``metrics.csv`` states it in its ``threshold`` column.

Saved test predictions (``<arm>/predictions/cycle_NNN.csv``) are reused; a cycle whose
predictions are missing (or every cycle with ``recompute``) is scored again from its
checkpoint through the same site logic. The test split is only ever read here and in
the per-cycle scoring — never by training or QC.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedqc.analysis.metrics import (
    DEFAULT_AGE_EDGES,
    fairness_gaps,
    group_metrics,
    target_metrics,
)
from fedqc.analysis.plots import plot_by_arm, plot_qc, plot_subgroups
from fedqc.analysis.report import write_report
from fedqc.config import ExperimentConfig
from fedqc.data.manifest import load_manifest
from fedqc.errors import UserError
from fedqc.experiment.arms import arms_for
from fedqc.experiment.run_dir import FIXED_THRESHOLD, RunDir, load_checkpoint, parse_snapshot, predict_checkpoint
from fedqc.io import atomic_write_csv
from fedqc.qc.logs import DECISIONS
from fedqc.scoring import score_targets


def checkpoint_threshold(checkpoint: Path) -> tuple[float, str]:
    """The decision threshold a checkpoint was calibrated with, and how it was chosen (0.5, ``fixed``, when the
    run did not calibrate)."""
    calibration = load_checkpoint(checkpoint).get("calibration") or {}
    return float(calibration.get("threshold", FIXED_THRESHOLD)), str(calibration.get("method", "fixed"))


def run_config(run: RunDir) -> ExperimentConfig:
    if not run.config.is_file():
        raise UserError(f"{run.root} is not a run folder (no config.yaml)")
    cfg = parse_snapshot(run.config.read_text(), source=run.config)
    return run.trained_config(cfg)


def run_metrics(run: Path, *, recompute: bool = False, age_edges=DEFAULT_AGE_EDGES, n_boot: int = 1000,
                seed: int = 0) -> pd.DataFrame:
    """metrics.csv rows for every configured arm and cycle of a finished (or running) run."""
    run_dir = RunDir(run)
    cfg = run_config(run_dir)
    manifest = None
    frames = []
    for arm in arms_for(cfg):
        arm_dir = run_dir.arm(arm.name)
        thresholds = arm_dir.thresholds()
        for cycle in sorted(set(arm_dir.cycles("predictions")) | set(arm_dir.cycles("checkpoints"))):
            pred_file = arm_dir.predictions(cycle)
            if pred_file.is_file() and not recompute:
                preds = pd.read_csv(pred_file)
            else:
                if manifest is None:
                    if cfg.manifest is None or not cfg.manifest.is_file():
                        raise UserError(f"{pred_file} is missing and the run's manifest ({cfg.manifest}) is not "
                                        "there to recompute it; use --checkpoint with --manifest")
                    manifest = load_manifest(cfg.manifest)
                preds = predict_checkpoint(arm_dir.checkpoint(cycle), manifest)
                atomic_write_csv(preds, pred_file)
            m = group_metrics(preds, age_edges=age_edges, n_boot=n_boot, seed=seed,
                              threshold=thresholds.get(cycle, FIXED_THRESHOLD))
            m.insert(0, "cycle", cycle)
            m.insert(0, "arm", arm.name)
            frames.append(m)
    if not frames:
        raise UserError(f"{run}: no predictions or checkpoints found")
    return pd.concat(frames, ignore_index=True)


def run_target_metrics(run: Path) -> pd.DataFrame:
    """``metrics_targets.csv`` rows of a multi-label run: per arm, cycle and target (then ``macro``) the metrics
    of its saved test predictions; empty for a single-target run."""
    run_dir = RunDir(run)
    frames = []
    for arm in arms_for(run_config(run_dir)):
        arm_dir = run_dir.arm(arm.name)
        thresholds = arm_dir.thresholds()
        for cycle in arm_dir.cycles("predictions"):
            preds = pd.read_csv(arm_dir.predictions(cycle))
            if len(score_targets(preds.columns)) > 1:
                table = target_metrics(preds, thresholds.get(cycle, FIXED_THRESHOLD))
                frames.append(table.assign(arm=arm.name, cycle=cycle)[["arm", "cycle", *table.columns]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def infer_run(run: Path, *, recompute: bool = False, age_edges=DEFAULT_AGE_EDGES, n_boot: int = 1000,
              seed: int = 0) -> pd.DataFrame:
    """Write metrics.csv, fairness.csv, plots/ and report.md into ``run``; return the metrics."""
    metrics = run_metrics(run, recompute=recompute, age_edges=age_edges, n_boot=n_boot, seed=seed)
    atomic_write_csv(metrics, run / "metrics.csv")
    atomic_write_csv(fairness_gaps(metrics), run / "fairness.csv")
    targets = run_target_metrics(run)
    if not targets.empty:
        atomic_write_csv(targets, run / "metrics_targets.csv")
    plot_dir = run / "plots"
    plot_dir.mkdir(exist_ok=True)
    plots = [plot_dir / "metrics_by_arm.png"]
    plot_by_arm(metrics, plots[0])
    detections, decisions = {}, {}
    for arm in metrics["arm"].unique():
        arm_dir = RunDir(run).arm(arm)
        plots.append(plot_dir / f"subgroups_{arm}.png")
        plot_subgroups(metrics, arm, plots[-1])
        if (arm_dir.path / "flagged.csv").is_file():
            plots.append(plot_dir / f"qc_{arm}.png")
            plot_qc(pd.read_csv(arm_dir.path / "flagged.csv"), pd.read_csv(arm_dir.path / "eliminated.csv"),
                    arm_dir.cycles("predictions"), arm, plots[-1])
        if (arm_dir.path / "detection.csv").is_file():
            detections[arm] = pd.read_csv(arm_dir.path / "detection.csv")
        if (arm_dir.path / DECISIONS).is_file():
            decisions[arm] = pd.read_csv(arm_dir.path / DECISIONS)
    write_report(run, metrics, detections, plots, decisions)
    return metrics
