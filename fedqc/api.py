"""The Python API for notebooks and scripts: run an experiment or a study and read what it wrote.

Thin on purpose: :func:`run` and :func:`study` call the functions the ``fedqc simulate`` and ``fedqc study``
commands call (:func:`fedqc.experiment.runner.simulate`, :func:`fedqc.experiment.study.plan_study`,
``plan_sweep`` and ``run_all``, :func:`fedqc.analysis.study.write_results`), and :func:`load_run` reads a run
folder into typed results, its metrics computed as ``fedqc infer`` computes them
(:func:`fedqc.analysis.infer.run_metrics`). Heavy libraries load when a function runs, not on ``import fedqc``.
See docs/api.md.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from fedqc.config import ExperimentConfig

__all__ = ["ArmResult", "RunResult", "StudyResult", "load_run", "run", "study"]

QC_TABLES = ("qc_log", "flagged", "revisits", "eliminated", "scan_issues", "audit", "detection")


def _csv(path: Path) -> pd.DataFrame | None:
    import pandas as pd

    return pd.read_csv(path) if path.is_file() else None


def _config(config, overrides: dict | None) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a YAML path, a mapping (as the YAML would hold; relative paths from the
    working folder) or a config, with ``overrides`` (dotted keys) set on top."""
    from fedqc.config import ExperimentConfig, load_config, parse_config
    from fedqc.config.load import set_dotted
    from fedqc.errors import UserError

    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    if isinstance(config, ExperimentConfig) and not overrides:
        return config
    if not isinstance(config, (dict, ExperimentConfig)):
        raise UserError(f"config: expected a YAML path, a mapping or an ExperimentConfig, got {type(config).__name__}")
    data = copy.deepcopy(config.to_dict() if isinstance(config, ExperimentConfig) else config)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return parse_config(data, source=getattr(config, "source", None) or "config")


@dataclass(frozen=True)
class ArmResult:
    """What one arm wrote: its checkpoints per cycle and its logs; a QC arm's tables are ``None`` for other arms.

    The tables are the run folder's CSV files as written (docs/outputs.md describes every column).
    """

    name: str
    path: Path
    checkpoints: dict[int, Path]
    train_log: pd.DataFrame | None
    errors: pd.DataFrame | None
    cycles: pd.DataFrame | None
    calibration: pd.DataFrame | None
    qc: dict[str, pd.DataFrame] = field(default_factory=dict)
    qc_summary: dict | None = None

    @classmethod
    def read(cls, path: Path) -> ArmResult:
        from fedqc.experiment.run_dir import ArmDir

        arm = ArmDir(path)
        summary = path / "qc_summary.json"
        return cls(name=arm.name, path=path, checkpoints={c: arm.checkpoint(c) for c in arm.cycles("checkpoints")},
                   train_log=_csv(path / "train_log.csv"), errors=_csv(path / "errors.csv"),
                   cycles=_csv(path / "cycles.csv"), calibration=_csv(path / "calibration.csv"),
                   qc={t: df for t in QC_TABLES if (df := _csv(path / f"{t}.csv")) is not None},
                   qc_summary=json.loads(summary.read_text()) if summary.is_file() else None)

    @property
    def last_checkpoint(self) -> Path | None:
        return self.checkpoints[max(self.checkpoints)] if self.checkpoints else None

    def predictions(self, cycle: int | None = None) -> pd.DataFrame:
        """The test scores of ``cycle`` (default: the last cycle with predictions)."""
        import pandas as pd

        from fedqc.errors import UserError
        from fedqc.experiment.run_dir import ArmDir

        arm = ArmDir(self.path)
        cycles = arm.cycles("predictions")
        if not cycles:
            raise UserError(f"{self.path}: no predictions")
        cycle = cycles[-1] if cycle is None else cycle
        if cycle not in cycles:
            raise UserError(f"{self.path}: no predictions for cycle {cycle} (cycles {cycles[0]}..{cycles[-1]})")
        return pd.read_csv(arm.predictions(cycle))


@dataclass
class RunResult:
    """A run folder read back: the resolved config, every arm's files, and the per-cycle metrics.

    ``metrics`` (computed on first use, as ``fedqc infer`` does: every arm, cycle and subgroup, with bootstrap
    95 % CIs) and ``fairness`` are pandas DataFrames; :meth:`qc_table` joins a QC table over the QC arms.
    """

    path: Path
    config: ExperimentConfig
    arms: dict[str, ArmResult]
    n_boot: int = 1000
    seed: int = 0
    age_edges: tuple[float, ...] = (60.0, 70.0)

    @functools.cached_property
    def metrics(self) -> pd.DataFrame:
        from fedqc.analysis.infer import run_metrics

        return run_metrics(self.path, age_edges=self.age_edges, n_boot=self.n_boot, seed=self.seed)

    @functools.cached_property
    def fairness(self) -> pd.DataFrame:
        from fedqc.analysis.metrics import fairness_gaps

        return fairness_gaps(self.metrics)

    def summary(self) -> pd.DataFrame:
        """Per arm, its last cycle's overall metrics (AUROC with its CI, accuracy, sensitivity, specificity at the
        cycle's threshold) and the mean AUROC of its last three cycles, as ``fedqc infer`` prints them."""
        overall = self.metrics[self.metrics["group"] == "all"]
        last = overall.groupby("arm", sort=False).tail(1).set_index("arm")
        last3 = overall.groupby("arm", sort=False)["auroc"].apply(lambda s: s.tail(3).mean())
        columns = ["cycle", "auroc", "auroc_lo", "auroc_hi", "accuracy", "sensitivity", "specificity", "threshold"]
        return last[columns].assign(auroc_last3=last3).reset_index()

    def qc_table(self, name: str) -> pd.DataFrame:
        """A QC table (``flagged``, ``eliminated``, ``detection``, ``revisits``, ``qc_log``, ``scan_issues``,
        ``audit``) of every QC arm that wrote it, with an ``arm`` column first; empty when none did."""
        import pandas as pd

        from fedqc.errors import UserError

        if name not in QC_TABLES:
            raise UserError(f"qc_table: expected one of {', '.join(QC_TABLES)}, got {name!r}")
        frames = [a.qc[name].assign(arm=a.name) for a in self.arms.values() if name in a.qc]
        if not frames:
            return pd.DataFrame(columns=["arm"])
        table = pd.concat(frames, ignore_index=True)
        return table[["arm", *[c for c in table.columns if c != "arm"]]]

    def infer(self) -> Path:
        """Write what ``fedqc infer --run`` writes (metrics.csv, fairness.csv, plots/, report.md, report.html) and log
        the run to the config's ``tracking`` backend, if any; return report.md."""
        from fedqc.analysis.infer import infer_run
        from fedqc.analysis.publish import publish_run

        self.metrics = infer_run(self.path, age_edges=self.age_edges, n_boot=self.n_boot, seed=self.seed)
        publish_run(self.path)
        self.__dict__.pop("fairness", None)
        return self.path / "report.md"


def load_run(path: str | Path, *, n_boot: int = 1000, seed: int = 0,
             age_edges: tuple[float, ...] = (60.0, 70.0)) -> RunResult:
    """Read the run folder ``path`` (from :func:`run` or ``fedqc simulate``; its paths made absolute): its config
    as trained and every configured arm that wrote something. ``n_boot``, ``seed`` and ``age_edges`` set the
    metrics' bootstrap and age groups, as ``fedqc infer``'s options do."""
    from fedqc.analysis.infer import run_config
    from fedqc.experiment.arms import arms_for
    from fedqc.experiment.run_dir import RunDir

    run_dir = RunDir(Path(path).resolve())  # absolute: a notebook may change its working folder later
    cfg = run_config(run_dir)
    arms = {a.name: ArmResult.read(run_dir.arm(a.name).path) for a in arms_for(cfg) if run_dir.arm(a.name).path.is_dir()}
    return RunResult(path=run_dir.root, config=cfg, arms=arms, n_boot=n_boot, seed=seed, age_edges=tuple(age_edges))


def run(config: str | Path | dict | ExperimentConfig, out: str | Path | None = None, *, overwrite: bool = False,
        resume: bool = False, quiet: bool = True, overrides: dict[str, Any] | None = None, **load) -> RunResult:
    """Run every arm of ``config`` into ``out`` (default ``runs/<name>``) as ``fedqc simulate`` does; return
    :func:`load_run` of it.

    ``config`` is a YAML path, a mapping as the YAML would hold, or an :class:`~fedqc.config.ExperimentConfig`;
    ``overrides`` sets dotted keys on top (``{"train.cycles": 2}``).
    ``load`` goes to :func:`load_run` (``n_boot``, ``seed``, ``age_edges``). An existing ``out`` needs
    ``overwrite`` or ``resume``, as on the command line.
    """
    from fedqc.experiment.runner import simulate

    cfg = _config(config, overrides)
    out = Path(out) if out is not None else Path("runs") / cfg.name
    simulate(cfg, out, resume=resume, overwrite=overwrite, quiet=quiet)
    return load_run(out, **load)


@dataclass
class StudyResult:
    """A study (one run per seed) or a sweep (one study per value of ``key``) read back.

    ``table``: ``study.csv`` (one row per seed × arm) or ``sweep.csv``; ``summary``: ``summary.csv`` (per arm and
    figure: mean, sd and the 95 % t-interval over seeds) or ``sweep_summary.csv``; ``runs``: seed → run folder
    (per value for a sweep: ``studies``).
    """

    path: Path
    seeds: list[int]
    table: pd.DataFrame
    summary: pd.DataFrame
    runs: dict[int, Path] = field(default_factory=dict)
    key: str | None = None
    studies: dict[Any, StudyResult] = field(default_factory=dict)

    def load_run(self, seed: int, **load) -> RunResult:
        """:func:`load_run` of one seed's run folder."""
        from fedqc.errors import UserError

        if seed not in self.runs:
            raise UserError(f"{self.path}: no run for seed {seed}" + (" (a sweep: use .studies[value])" if self.key
                                                                      else ""))
        return load_run(self.runs[seed], **load)


def study(config: str | Path | dict | ExperimentConfig, seeds: list[int] = (0, 1, 2), out: str | Path | None = None,
          *, sweep: str | None = None, quiet: bool = True, overrides: dict[str, Any] | None = None) -> StudyResult:
    """Run ``config`` once per training seed (``fedqc study``) into ``out`` (default ``runs/<name>-study``), or
    with ``sweep="KEY=v1,v2"`` one such study per value; write the study's tables, plot, study.md and report.html
    (and log it to the config's ``tracking`` backend, if any) and return them. An interrupted study resumes seed by seed."""
    import pandas as pd

    from fedqc.analysis.study import write_results
    from fedqc.experiment.study import Sweep, plan_study, plan_sweep, run_all

    cfg, seeds = _config(config, overrides), list(seeds)
    out = Path(out) if out is not None else Path("runs") / f"{cfg.name}-study"
    command = f"fedqc.study({str(config) if isinstance(config, (str, Path)) else cfg.name!r}, seeds={seeds}, out={str(out)!r}" \
              + (f", sweep={sweep!r})" if sweep else ")")
    swept = Sweep.parse(sweep) if sweep is not None else None
    runs = plan_sweep(cfg, swept, seeds, out) if swept else plan_study(cfg, seeds, out)
    run_all(runs, quiet=quiet)
    summary = write_results(out, runs, command, swept)
    from fedqc.analysis.publish import publish_study

    publish_study(out, {r.name: r.folder for r in runs})
    if swept is None:
        return StudyResult(out, seeds, pd.read_csv(out / "study.csv"), summary, {r.seed: r.folder for r in runs})
    parts = {}
    for value in swept.values:
        folder, study_runs = swept.folder(out, value), {r.seed: r.folder for r in runs if r.value == value}
        parts[value] = StudyResult(folder, seeds, pd.read_csv(folder / "study.csv"), pd.read_csv(folder / "summary.csv"),
                                   study_runs)
    return StudyResult(out, seeds, pd.read_csv(out / "sweep.csv"), summary, key=swept.key, studies=parts)
