"""A study: one experiment run once per training seed, on the same cohort, each seed in its own run folder;
a sweep: one study per value of a config or scenario key.

``OUT/seed_<s>/`` is a complete run folder. An interrupted study resumes seed by seed:
a finished seed is kept as it is, a partial one continues from its last checkpoint. A
sweep writes each value's study to ``OUT/<key>=<value>/``. Every (value, seed) is a
:class:`StudyRun`: run here one after another (:func:`run_all`), or as Ray tasks
(:mod:`fedqc.experiment.parallel`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import yaml

from fedqc.config import ExperimentConfig, parse_config
from fedqc.config.schema import RENAMED_KEYS
from fedqc.data.corruptions.scenario import Scenario
from fedqc.data.manifest import load_manifest
from fedqc.errors import ConfigError, UserError
from fedqc.experiment.arms import arms_for
from fedqc.experiment.run_dir import RunDir, config_differences, parse_snapshot
from fedqc.experiment.runner import simulate


def seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed_{seed}"


def seeded(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))


def finished(cfg: ExperimentConfig, run: RunDir) -> bool:
    """Whether every arm of ``cfg`` has its last cycle's checkpoint in ``run``."""
    return all(run.arm(a.name).last_checkpoint() == a.end(cfg.train.cycles) for a in arms_for(cfg))


@dataclasses.dataclass(frozen=True, eq=False)
class StudyRun:
    """One run of a study: ``cfg`` (its training seed set) into its own ``folder``; ``value``: the swept value
    (``None`` outside a sweep), ``name``: how messages name it."""

    seed: int
    cfg: ExperimentConfig
    folder: Path
    value: object = None
    name: str = ""

    def started(self) -> bool:
        """Whether its folder already holds something (a partial or finished run)."""
        return self.folder.exists() and any(self.folder.iterdir())

    def state(self) -> str:
        """``done`` (every arm finished: kept), ``resumed`` (a partial folder) or ``started``."""
        if finished(self.cfg, RunDir(self.folder)):
            return "done"
        return "resumed" if self.started() else "started"

    def run(self, quiet: bool = True) -> None:
        """Run it, or resume it mid-arm from its last checkpoint. Whether to resume is read from the folder here,
        so a run that is retried (a Ray task on a lost node) resumes what its first try left."""
        simulate(self.cfg, self.folder, resume=self.started(), quiet=quiet)


def check_recorded(runs: list[StudyRun]) -> None:
    """Refuse, before anything trains, a run folder made with another config (finished ones included: the study
    would mix them): a different thread count by name, since it changes the weights."""
    if len({r.folder.resolve() for r in runs}) != len(runs):
        raise UserError("two runs of the study would write the same folder")
    for r in runs:
        snapshot = RunDir(r.folder).config
        if not snapshot.is_file():
            continue
        differ = config_differences(snapshot.read_text(), r.cfg, source=snapshot)
        if differ == ["threads"]:
            old = parse_snapshot(snapshot.read_text(), source=snapshot).threads
            raise UserError(f"{r.folder} was run with {old} thread(s), this study asks {r.cfg.threads}: the weights "
                            f"depend on the thread count, so resume with --threads-per-run {old} (or use a new --out)")
        if differ:
            hint = " (--parallel and --ray-address run every run on engine inprocess)" if "engine" in differ else ""
            raise UserError(f"{r.folder} was run with a different config ({', '.join(differ[:6])}){hint}; resume "
                            "with the same config or use a new --out")


def plan_study(cfg: ExperimentConfig, seeds: list[int], out: Path, *, value=None, label: str = "") -> list[StudyRun]:
    """A study's runs: ``cfg`` once per training seed (the cohort stays the same), each in ``out/seed_<s>``."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds: give distinct seeds, got {seeds}")
    return [StudyRun(seed, seeded(cfg, seed), seed_dir(out, seed), value, f"{label}seed {seed}") for seed in seeds]


def run_all(runs: list[StudyRun], *, quiet: bool = False, on_run=lambda run, state: None) -> None:
    """Run ``runs`` one after another in this process (a failing run stops the study);
    ``on_run(run, state)`` reports :meth:`StudyRun.state` before each."""
    check_recorded(runs)
    for r in runs:
        state = r.state()
        on_run(r, state)
        if state != "done":
            r.run(quiet=quiet)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """``key`` (dotted; list items by index, e.g. ``scenario.label_noise.0.rate``) and the values it takes."""

    key: str
    values: tuple

    @classmethod
    def parse(cls, spec: str) -> Sweep:
        """``KEY=v1,v2,...``; each value read as YAML (numbers, booleans, strings)."""
        key, sep, values = spec.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UserError(f"--sweep: expected KEY=v1,v2,... (e.g. scenario.label_noise.0.rate=0,0.1,0.2), got {spec!r}")
        parsed = tuple(yaml.safe_load(v) for v in values.split(","))
        if len(set(map(str, parsed))) != len(parsed):
            raise UserError(f"--sweep: a value is listed twice in {spec!r}")
        if key.strip() in RENAMED_KEYS:
            logging.getLogger(__name__).warning("--sweep: %s is deprecated, read as %s", key.strip(),
                                                RENAMED_KEYS[key.strip()])
        return cls(key.strip(), parsed)

    def folder(self, out: Path, value) -> Path:
        return out / f"{self.key}={value}"

    def config(self, cfg: ExperimentConfig, value) -> ExperimentConfig:
        """``cfg`` with the swept key set to ``value``, validated as any config."""
        data = copy.deepcopy(cfg.to_dict())
        *parents, leaf = RENAMED_KEYS.get(self.key, self.key).split(".")  # an old name keeps its folders
        node = data
        for i, part in enumerate(parents):
            node = _child(node, part, ".".join(parents[: i + 1]))
        if isinstance(node, list):
            _child(node, leaf, self.key)
            node[int(leaf)] = value
        elif isinstance(node, dict):
            node[leaf] = value
        else:
            raise UserError(f"--sweep: {'.'.join(parents)} is not a mapping or a list")
        try:
            return parse_config(data, source=cfg.source or "config")
        except ConfigError as exc:
            raise ConfigError(f"--sweep {self.key}={value}", exc.problems) from None


def _child(node, part: str, where: str):
    if isinstance(node, dict) and part in node and node[part] is not None:
        return node[part]
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    raise UserError(f"--sweep: the config has no {where} to sweep"
                    + (" (set a scenario in the config first)" if where == "scenario" else ""))


def plan_sweep(cfg: ExperimentConfig, sweep: Sweep, seeds: list[int], out: Path) -> list[StudyRun]:
    """A sweep's runs: one study (:func:`plan_study`) per swept value; every value's config and scenario is checked
    against the manifest before anything trains."""
    configs = {value: sweep.config(cfg, value) for value in sweep.values}
    for value, c in configs.items():
        if c.scenario is not None:
            table = load_manifest(c.manifest, check_images=False)
            for seed in seeds:
                try:
                    Scenario.from_dict(c.scenario).plan(table, seed)
                except UserError as exc:
                    raise UserError(f"--sweep {sweep.key}={value} (seed {seed}): {exc}", exc.problems) from None
    return [r for value, c in configs.items()
            for r in plan_study(c, seeds, sweep.folder(out, value), value=value, label=f"{sweep.key}={value}, ")]

