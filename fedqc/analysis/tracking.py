"""Experiment tracking, optional: a finished run (or study) logged to MLflow or TensorBoard from the files it wrote.

Nothing here runs during training: :func:`track_run` reads the run folder after ``fedqc infer`` (or
``fedqc study``) has written it and logs

- the resolved config as params (dotted keys: ``train.lr``, ``qc.criterion`` ...);
- per cycle and arm the test metrics (``<arm>/auroc``, ``<arm>/auroc_lo`` ..., step = cycle): ``metrics.csv``
  when the run has it, else the same figures from the saved test predictions (a study's runs);
- per cycle and QC arm the QC counts of :func:`fedqc.analysis.timeline.qc_counts` (``<arm>/qc/flagged`` ...);
- the report (``report.html``, ``report.md``), ``metrics.csv``, ``fairness.csv``, ``config.yaml`` and each arm's
  tables (``cycles.csv``, the QC logs) as artifacts (TensorBoard, which keeps no files, gets ``report.md`` as
  text and the run folder's path).

MLflow's default store is a SQLite file beside the run, ``sqlite:///<folder>/mlflow.db`` with artifacts under
``<folder>/mlartifacts`` (no server; ``mlflow ui --backend-store-uri sqlite:///...`` shows it); a study logs
every seed's run into one store in the study folder. Logging a run again replaces its earlier record (same
run folder, same experiment), so ``fedqc infer`` can be rerun. The packages come with ``pip install
'fedqc[tracking]'``; the config check says so when they are missing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import yaml

from fedqc.analysis.timeline import qc_counts, qc_timeline
from fedqc.config import ExperimentConfig
from fedqc.experiment.arms import arms_for
from fedqc.experiment.run_dir import RunDir

METRICS = ("auroc", "auroc_lo", "auroc_hi", "accuracy", "sensitivity", "specificity", "balanced_accuracy", "f1",
           "average_precision", "threshold")
RUN_FILES = ("report.html", "report.md", "metrics.csv", "fairness.csv", "metrics_targets.csv", "config.yaml")
ARM_FILES = ("cycles.csv", "calibration.csv", "qc_log.csv", "flagged.csv", "revisits.csv", "eliminated.csv",
             "scan_issues.csv", "audit.csv", "detection.csv", "qc_summary.json", "errors.csv")
STUDY_FILES = ("report.html", "study.md", "study.csv", "summary.csv", "paired.csv", "study_auroc.png", "sweep.md",
               "sweep.csv", "sweep_summary.csv", "sweep_paired.csv", "missing.csv")
TAG = "fedqc.folder"  # the run (or study) folder an MLflow run records: logging it again replaces that run


def params(cfg: ExperimentConfig) -> dict[str, str]:
    """The resolved config as flat ``{dotted key: text}``."""
    flat = pd.json_normalize(cfg.to_dict(), sep=".").iloc[0].to_dict()
    return {k: str(v) for k, v in flat.items()}


def cycle_values(run: Path, cfg: ExperimentConfig) -> pd.DataFrame:
    """Long table ``name``, ``step``, ``value``: per arm and cycle the test metrics and, for a QC arm, its counts."""
    from fedqc.analysis.study import cycle_metrics

    rundir, frames = RunDir(run), []
    if (run / "metrics.csv").is_file():
        m = pd.read_csv(run / "metrics.csv")
        m = m[m["group"] == "all"]
    else:  # a study's run: no bootstrap, the figures of the saved predictions
        m = pd.concat([cycle_metrics(rundir.arm(a.name)).assign(arm=a.name) for a in arms_for(cfg)
                       if rundir.arm(a.name).cycles("predictions")], ignore_index=True)
    for metric in (c for c in METRICS if c in m):
        frames.append(pd.DataFrame({"name": m["arm"] + "/" + metric, "step": m["cycle"], "value": m[metric]}))
    for arm in arms_for(cfg):
        counts = qc_counts(qc_timeline(rundir.arm(arm.name).path))
        for column in counts.columns.drop("cycle", errors="ignore"):
            frames.append(pd.DataFrame({"name": f"{arm.name}/qc/{column}", "step": counts["cycle"],
                                        "value": counts[column]}))
    values = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["name", "step", "value"])
    return values.dropna(subset=["value"]).astype({"step": int, "value": float})


def artifacts(run: Path, cfg: ExperimentConfig) -> list[tuple[Path, str]]:
    """(file, folder in the artifact store) of every file :func:`track_run` uploads."""
    files = [(run / f, "") for f in RUN_FILES if (run / f).is_file()]
    files += [(p, "plots") for p in sorted((run / "plots").glob("*.png"))]
    for arm in arms_for(cfg):
        folder = RunDir(run).arm(arm.name).path
        files += [(folder / f, arm.name) for f in ARM_FILES if (folder / f).is_file()]
    return files


def _mlflow(cfg: ExperimentConfig, root: Path):
    """A client on the configured store (default: SQLite in ``root``) and the experiment's id."""
    from mlflow.tracking import MlflowClient

    uri = cfg.tracking.uri or f"sqlite:///{(root / 'mlflow.db').absolute()}"
    client = MlflowClient(tracking_uri=uri)
    name = cfg.tracking.experiment or cfg.name
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return client, experiment.experiment_id
    location = (root / "mlartifacts").absolute().as_uri() if cfg.tracking.uri is None else None
    return client, client.create_experiment(name, artifact_location=location)


def _log_mlflow(cfg: ExperimentConfig, root: Path, folder: Path, run_name: str, values: pd.DataFrame,
                params_: dict[str, str], files: list[tuple[Path, str]], tags: dict[str, str]) -> str:
    from mlflow.entities import Metric, Param

    client, experiment = _mlflow(cfg, root)
    key = str(folder.absolute())
    for old in client.search_runs([experiment], filter_string=f"tags.`{TAG}` = '{key}'"):
        client.delete_run(old.info.run_id)
    run = client.create_run(experiment, run_name=run_name, tags={TAG: key, **tags})
    rid = run.info.run_id
    plist = [Param(k, v[:6000]) for k, v in params_.items()]
    for i in range(0, len(plist), 100):
        client.log_batch(rid, params=plist[i:i + 100])
    now = int(time.time() * 1000)
    metrics = [Metric(r.name, r.value, now, r.step) for r in values.itertuples()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(rid, metrics=metrics[i:i + 1000])
    for path, where in files:
        client.log_artifact(rid, str(path), where or None)
    client.set_terminated(rid)
    return f"{client.tracking_uri} (experiment {cfg.tracking.experiment or cfg.name}, run {rid})"


def _log_tensorboard(cfg: ExperimentConfig, root: Path, folder: Path, run_name: str, values: pd.DataFrame,
                     params_: dict[str, str]) -> str:
    import shutil

    from torch.utils.tensorboard import SummaryWriter

    base = Path(cfg.tracking.uri) if cfg.tracking.uri else Path("tensorboard")
    logdir = (base if base.is_absolute() else root / base) / run_name
    shutil.rmtree(logdir, ignore_errors=True)  # logging again replaces the run's events
    with SummaryWriter(log_dir=str(logdir)) as writer:
        for r in values.itertuples():
            writer.add_scalar(r.name, r.value, r.step)
        writer.add_text("config", "```yaml\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False) + "```")
        writer.add_text("params", "\n".join(f"    {k}: {v}" for k, v in params_.items()))
        writer.add_text("folder", str(folder.absolute()))
        if (folder / "report.md").is_file():
            writer.add_text("report", (folder / "report.md").read_text())
    return str(logdir)


def track_run(run: Path, *, root: Path | None = None, name: str | None = None,
              tags: dict[str, str] | None = None) -> str | None:
    """Log the run folder ``run`` to its config's ``tracking`` backend; ``root``: the folder holding the default
    store (the run's own; a study's for its runs), ``name``: the tracked run's name (default the folder's).
    Returns where it went; None when the config tracks nothing."""
    from fedqc.analysis.infer import run_config

    cfg = run_config(RunDir(run))
    if cfg.tracking.backend == "none":
        return None
    root, name = Path(root or run), name or run.name
    values = cycle_values(run, cfg)
    if cfg.tracking.backend == "mlflow":
        return _log_mlflow(cfg, root, run, name, values, params(cfg), artifacts(run, cfg), tags or {})
    return _log_tensorboard(cfg, root, run, name, values, params(cfg))


def track_study(out: Path, runs: dict[str, Path]) -> str | None:
    """Log a study's (or a sweep's) runs (``{name: run folder}``, e.g. ``seed_0``) into the study folder's store,
    then the study itself: a study's summary (``<arm>/<figure>``: the mean across seeds) and its tables and page as
    artifacts."""
    from fedqc.analysis.infer import run_config

    if not runs:
        return None
    cfg = run_config(RunDir(next(iter(runs.values()))))
    if cfg.tracking.backend == "none":
        return None
    for name, run in runs.items():
        track_run(run, root=out, name=f"{out.name}/{name}", tags={"fedqc.study": out.name})
    summary = pd.read_csv(out / "summary.csv") if (out / "summary.csv").is_file() else pd.DataFrame()
    values = pd.DataFrame({"name": summary.get("arm", pd.Series(dtype=str)) + "/" + summary.get("figure", ""),
                           "step": 0, "value": summary.get("mean")}).dropna(subset=["value"])
    files = [(out / f, "") for f in STUDY_FILES if (out / f).is_file()]
    if cfg.tracking.backend == "mlflow":
        return _log_mlflow(cfg, out, out, out.name, values, params(cfg), files, {"fedqc.study": out.name})
    return _log_tensorboard(cfg, out, out, out.name, values, params(cfg))
