"""A study: one experiment run once per training seed, on the same cohort, each seed in its own run folder.

``OUT/seed_<s>/`` is a complete run folder. An interrupted study resumes seed by seed:
a finished seed is kept as it is, a partial one continues from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fedqc.config import ExperimentConfig
from fedqc.errors import UserError
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
