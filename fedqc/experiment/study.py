"""A study: one experiment run once per training seed, on the same cohort, each seed in its own run folder;
a sweep: one study per value of a config or scenario key.

``OUT/seed_<s>/`` is a complete run folder. An interrupted study resumes seed by seed:
a finished seed is kept as it is, a partial one continues from its last checkpoint. A
sweep writes each value's study to ``OUT/<key>=<value>/``.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import yaml

from fedqc.config import ExperimentConfig, parse_config
from fedqc.data.corruptions.scenario import Scenario
from fedqc.data.manifest import load_manifest
from fedqc.errors import ConfigError, UserError
from fedqc.experiment.arms import arms_for
from fedqc.experiment.run_dir import RunDir
from fedqc.experiment.runner import simulate


def seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed_{seed}"


def seeded(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))


def finished(cfg: ExperimentConfig, run: RunDir) -> bool:
    """Whether every arm of ``cfg`` has its last cycle's checkpoint in ``run``."""
    return all(run.arm(a.name).last_checkpoint() == a.end(cfg.train.cycles) for a in arms_for(cfg))


def run_study(cfg: ExperimentConfig, seeds: list[int], out: Path, *, quiet: bool = False,
              on_seed=lambda seed, state: None) -> list[Path]:
    """Run ``cfg`` for every training seed (the cohort stays the same); return the seeds' run folders.

    ``on_seed(seed, state)`` reports ``done`` (kept), ``resumed`` or ``started``.
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds: give distinct seeds, got {seeds}")
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in seeds:
        cfg_s, run = seeded(cfg, seed), seed_dir(out, seed)
        runs.append(run)
        if finished(cfg_s, RunDir(run)):
            on_seed(seed, "done")
            continue
        partial = run.exists() and any(run.iterdir())
        on_seed(seed, "resumed" if partial else "started")
        simulate(cfg_s, run, resume=partial, quiet=quiet)
    return runs


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
        return cls(key.strip(), parsed)

    def folder(self, out: Path, value) -> Path:
        return out / f"{self.key}={value}"

    def config(self, cfg: ExperimentConfig, value) -> ExperimentConfig:
        """``cfg`` with the swept key set to ``value``, validated as any config."""
        data = copy.deepcopy(cfg.to_dict())
        *parents, leaf = self.key.split(".")
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


def run_sweep(cfg: ExperimentConfig, sweep: Sweep, seeds: list[int], out: Path, *, quiet: bool = False,
              on_seed=lambda value, seed, state: None) -> dict:
    """One study per swept value (:func:`run_study`); every value's config and scenario is checked against the
    manifest before anything trains. Returns ``{value: [run folders]}``."""
    configs = {value: sweep.config(cfg, value) for value in sweep.values}
    for value, c in configs.items():
        if c.scenario is not None:
            table = load_manifest(c.manifest, check_images=False)
            for seed in seeds:
                try:
                    Scenario.from_dict(c.scenario).plan(table, seed)
                except UserError as exc:
                    raise UserError(f"--sweep {sweep.key}={value} (seed {seed}): {exc}", exc.problems) from None
    return {value: run_study(c, seeds, sweep.folder(out, value), quiet=quiet,
                             on_seed=lambda seed, state, value=value: on_seed(value, seed, state))
            for value, c in configs.items()}
