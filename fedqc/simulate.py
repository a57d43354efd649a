"""Run a whole experiment (clean, dirty and QC arms) on one machine.

``python -m fedqc.simulate --config configs/demo.yaml --out runs/demo`` runs it on
Flower's simulation engine (``engine: flower``, the default) or with the in-process
transport (``engine: inprocess``); both call the same site logic and give identical
weights for the same seed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedqc.config import ExperimentConfig
from fedqc.data.manifest import ManifestError, load_manifest
from fedqc.detection import score_detection
from fedqc.io import atomic_write_csv, atomic_write_text
from fedqc.qc_arm import QCRunner
from fedqc.travel import Arm, Transport, arms_for, failing_sites, run_arm

FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0",
              "RAY_DEDUP_LOGS": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


class RunDirError(RuntimeError):
    """The output folder exists and neither resume nor overwrite was asked for."""


def prepare_run_dir(cfg: ExperimentConfig, out: Path, *, resume: bool, overwrite: bool,
                    ignore: tuple[str, ...] = ()) -> None:
    """Create ``out`` with a snapshot of the resolved config; never clobber silently.

    Entries named in ``ignore`` (a launcher's ``.flwr`` and ``logs``) do not make ``out`` a used run folder.
    """
    snapshot = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    if out.exists() and any(p.name not in ignore for p in out.iterdir()):
        if resume:
            old = (out / "config.yaml").read_text() if (out / "config.yaml").is_file() else None
            if old is not None and yaml.safe_load(old) != yaml.safe_load(snapshot):
                raise RunDirError(f"{out} was run with a different config; resume needs the same one")
        elif overwrite:
            shutil.rmtree(out)
        else:
            raise RunDirError(f"{out} already exists; pass --resume to continue it or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(snapshot, out / "config.yaml")


def _arm_hops(arm: Arm, cfg: ExperimentConfig, info: dict) -> int:
    key = "train" if arm.include_harmful else "train_good"
    return (cfg.train.cycles - arm.first_cycle) * sum(1 for c in info.values() if c[key] > 0)


def run_experiment(cfg: ExperimentConfig, transport: Transport, out: Path, *, resume: bool = False,
                   quiet: bool = False) -> dict[str, float]:
    """Run every arm of ``cfg`` in order (clean first: the others start from it).

    Returns seconds per arm.
    """
    arms = arms_for(cfg)
    info = transport.site_info()
    console = Console(quiet=quiet, stderr=True)
    seconds: dict[str, float] = {}
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=quiet) as bar:
        for arm in arms:
            task = bar.add_task(arm.name, total=_arm_hops(arm, cfg, info))

            def progress(row: dict, task=task) -> None:
                bar.update(task, advance=1, description=f"{row['arm']:5s} cycle {row['cycle']:3d} "
                                                         f"{row['site']:>16s} loss {row['loss']:.3f}")

            t0 = time.perf_counter()
            hooks = QCRunner(transport, cfg, arm, out) if arm.qc else None
            run_arm(arm, transport, cfg, out, hooks=hooks, resume=resume, progress=progress)
            seconds[arm.name] = time.perf_counter() - t0
            if hooks:
                summary = finish_qc(hooks, cfg, seconds[arm.name])
                console.print(f"[bold]{arm.name}[/] ({summary['criterion']}, {summary['granularity']}): "
                              f"{summary['verifications']} verifications in {summary['verify_seconds']:.1f} s; "
                              f"{summary['eliminated']} scans eliminated, {summary['pending']} pending revisit")
    for name, s in seconds.items():
        for site, n in failing_sites(pd.read_csv(out / name / "train_log.csv"), cfg.failing_cycles).items():
            console.print(f"[yellow]warning:[/] {name}: site {site} failed in {n} consecutive cycles (train_log.csv)")
        errors = out / name / "errors.csv"
        n_bad = pd.read_csv(errors)["subject"].dropna().nunique() if errors.is_file() else 0
        console.print(f"[bold]{name}[/]: {s:.1f} s" + (f"; {n_bad} unusable scan(s) skipped, see {errors}" if n_bad else ""))
    return seconds


def finish_qc(runner: QCRunner, cfg: ExperimentConfig, seconds: float) -> dict:
    """Write a QC arm's ``qc_summary.json`` and, when the manifest has ground truth, ``detection.csv``."""
    qc = runner.qc
    summary = {"arm": runner.arm.name, "criterion": qc.criterion, "granularity": qc.granularity,
               "verify_fraction": qc.verify_fraction, "verifications": runner.verifications,
               "verify_seconds": round(runner.verify_seconds, 3), "arm_seconds": round(seconds, 3),
               "eliminated": len(runner.policy.eliminated), "pending": len(runner.policy.flagged)}
    atomic_write_text(json.dumps(summary, indent=2), runner.dir / "qc_summary.json")
    if cfg.manifest is None:
        return summary  # a deployment server holds no ground truth
    try:
        manifest = load_manifest(cfg.manifest, check_images=False)
    except (OSError, ManifestError):
        return summary
    if "harm" in manifest.columns:
        atomic_write_csv(score_detection(manifest, runner.eliminated_table(), runner.flagged_table()),
                         runner.dir / "detection.csv")
    return summary


def run_simulation_engine(cfg: ExperimentConfig, out: Path, *, resume: bool = False, quiet: bool = False) -> None:
    """Run ``cfg`` on Flower's simulation engine, one virtual SuperNode per site."""
    os.environ.update(FLOWER_ENV)
    from flwr.simulation import run_simulation

    from fedqc.flower.client_app import make_client_app
    from fedqc.flower.server_app import make_server_app

    logging.getLogger("flwr").setLevel(logging.WARNING if quiet else logging.INFO)
    n_sites = load_manifest(cfg.manifest, check_images=False)["site"].nunique()
    backend = {"client_resources": {"num_cpus": cfg.threads, "num_gpus": 0.0},
               "init_args": {"num_cpus": cfg.threads, "include_dashboard": False, "logging_level": "ERROR",
                             "log_to_driver": not quiet}}
    run_simulation(server_app=make_server_app(cfg, out, n_sites=n_sites, resume=resume, quiet=quiet),
                   client_app=make_client_app(str(cfg.manifest)), num_supernodes=n_sites, backend_config=backend)


def simulate(cfg: ExperimentConfig, out: Path, *, resume: bool = False, overwrite: bool = False,
             quiet: bool = False) -> None:
    """Prepare ``out`` and run ``cfg`` on the configured engine."""
    if cfg.engine == "deployment":
        raise ValueError("engine deployment runs on SuperNodes: use scripts/run_local_deployment.sh "
                         "or docker-compose (README, Multi-site runs), not simulate")
    prepare_run_dir(cfg, out, resume=resume, overwrite=overwrite)
    torch.set_num_threads(cfg.threads)
    if cfg.engine == "flower":
        run_simulation_engine(cfg, out, resume=resume, quiet=quiet)
    else:
        from fedqc.transport import InProcessTransport

        manifest = load_manifest(cfg.manifest)
        run_experiment(cfg, InProcessTransport(manifest, cfg.model), out, resume=resume, quiet=quiet)


def final_auroc(out: Path, arm: str, last: int = 3) -> float:
    """Mean test AUROC of an arm's last ``last`` cycles (from its saved predictions)."""
    from sklearn.metrics import roc_auc_score

    files = sorted((out / arm / "predictions").glob("cycle_*.csv"))[-last:]
    return float(sum(roc_auc_score(p["label"], p["score"]) for p in map(pd.read_csv, files)) / len(files))


if __name__ == "__main__":
    from fedqc.cli import simulate_main

    simulate_main()
