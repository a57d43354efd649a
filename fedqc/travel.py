"""The travelling model: one loop over cycles, one over sites, against a small transport.

The model and its Adam state go from site to site (:mod:`fedqc.state`); every cycle the
site order is drawn from a seeded RNG (``random``, the reference), kept (``fixed``), or
given explicitly; the learning rate is ``lr × exp(-lr_decay · cycle)``. After each cycle
the test split is scored through the sites, then the cycle is committed: predictions,
log rows, and last the checkpoint (encoder, classifier, optimizer, RNG state, cycle,
site order). Every random choice inside a cycle is derived from ``(seed, cycle, site)``,
so ``resume`` from the last checkpoint ends bit-identical to an uninterrupted run.

Arms: ``clean`` trains good data for cycles 0..C-1; ``dirty`` starts from the clean
checkpoint of cycle W and trains all data for cycles W+1..C-1; QC arms start from the
same checkpoint and train all data through :class:`ArmHooks` (:mod:`fedqc.qc_arm`),
which decide how a visit trains and add their own state to each checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import torch

from fedqc.config import ExperimentConfig
from fedqc.io import append_csv, atomic_torch_save, atomic_write_csv, truncate_csv
from fedqc.models import build_model
from fedqc.site import EvalResult, TrainResult
from fedqc.state import State, check_update, join_parts, pack, split_parts


class Transport(Protocol):
    """How the strategy reaches sites: in-process calls or Flower messages."""

    def site_info(self) -> dict[str, dict[str, int]]:
        """Per site: scan counts per split (``train``, ``train_good``, ``val``, ``test``)."""

    def train_subjects(self, site: str) -> list[str]:
        """Identifiers of a site's training scans (ids only; QC trains exact subsets)."""

    def audit(self, site: str) -> list[tuple[str, str, str]]:
        """Image-level audit at ``site``: (subject, split, reason) of the scans that fail."""

    def train(self, site: str, state: State, request: dict) -> TrainResult:
        """Train ``state`` at ``site``; ``request`` holds lr, seed, batch_size, subjects..."""

    def evaluate(self, sites: list[str], state: State, request: dict) -> dict[str, EvalResult]:
        """Evaluate ``state`` at each site on ``request['split']``."""


ERROR_COLUMNS = ["subject", "site", "cycle", "stage", "reason"]


class SiteError(RuntimeError):
    """A site raised, replied with an error, or did not answer in time: the hop is lost."""


class BrokenScanError(RuntimeError):
    """An unusable scan met with ``strict`` on."""


def failing_sites(log: pd.DataFrame, cycles: int) -> dict[str, int]:
    """Sites whose hops failed in at least ``cycles`` consecutive cycles → longest run."""
    worst: dict[str, int] = {}
    for site, rows in log.assign(failed=log["status"].astype(str).str.startswith("failed")).groupby("site"):
        run = best = 0
        for failed in rows.sort_values("cycle")["failed"]:
            run = run + 1 if failed else 0
            best = max(best, run)
        if best >= cycles:
            worst[site] = best
    return worst


def hop_seed(seed: int, cycle: int, site: str) -> int:
    """The seed of one visit, derived from the run seed, cycle and site name."""
    return int(np.random.SeedSequence([seed, cycle, zlib.crc32(site.encode())]).generate_state(1)[0])


def site_order(policy: str | tuple[str, ...], sites: list[str], *, seed: int, cycle: int) -> list[str]:
    """Visiting order for ``cycle``: reshuffled from a seeded RNG, fixed, or explicit."""
    if policy == "random":
        rng = np.random.default_rng([seed, cycle])
        return [sites[i] for i in rng.permutation(len(sites))]
    if policy == "fixed":
        return sorted(sites)
    missing = sorted(set(policy) - set(sites))
    if missing:
        raise ValueError(f"train.order names site(s) without training data: {missing}")
    return list(policy)


def learning_rate(lr: float, decay: float, cycle: int) -> float:
    return lr * math.exp(-decay * cycle)


def initial_state(cfg: ExperimentConfig) -> State:
    """Freshly initialised weights (seeded), no optimizer state yet."""
    torch.manual_seed(cfg.train.seed)
    encoder, classifier = build_model(cfg.model.name, input_shape=cfg.model.input_shape, width=cfg.model.width)
    return pack(encoder, classifier, None)


@dataclass
class Arm:
    """One arm of an experiment: which data, which cycles, where it starts from."""

    name: str
    include_harmful: bool
    first_cycle: int
    start_from: str | None = None  # arm whose checkpoint of first_cycle - 1 starts this one
    qc: bool = False


def arms_for(cfg: ExperimentConfig) -> list[Arm]:
    """The configured arms in run order: clean, dirty, then QC arms as listed."""
    w = cfg.train.warmup
    arms = [Arm("clean", False, 0)] if "clean" in cfg.arms else []
    arms += [Arm("dirty", True, w + 1, "clean")] if "dirty" in cfg.arms else []
    return arms + [Arm(a, True, w + 1, "clean", qc=True) for a in cfg.arms if a not in ("clean", "dirty")]


def checkpoint_path(arm_dir: Path, cycle: int) -> Path:
    return arm_dir / "checkpoints" / f"cycle_{cycle:03d}.pt"


def last_checkpoint(arm_dir: Path) -> int | None:
    cycles = sorted(int(p.stem.split("_")[1]) for p in (arm_dir / "checkpoints").glob("cycle_*.pt"))
    return cycles[-1] if cycles else None


def load_checkpoint(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=False)
    ckpt["state"] = join_parts(ckpt)
    return ckpt


# A visit function trains one hop and returns the new state and a log row's fields.
Visit = Callable[[str, State, int, int, float], tuple[State, dict]]


class ArmHooks(Protocol):
    """How a QC arm trains a visit and what it adds to a checkpoint."""

    def begin(self, state: State, first_cycle: int, checkpoint: dict | None) -> None:
        """Called once before the first cycle; ``checkpoint`` is the resumed one, if any."""

    def visit(self, site: str, state: State, cycle: int, hop: int, lr: float) -> tuple[State, dict]: ...

    def end_cycle(self, cycle: int) -> None:
        """Write the cycle's logs (before its checkpoint is committed)."""

    def snapshot(self) -> dict:
        """Plain data saved in the checkpoint under ``"qc"``."""


def plain_visit(transport: Transport, cfg: ExperimentConfig, arm: Arm) -> Visit:
    def visit(site: str, state: State, cycle: int, hop: int, lr: float) -> tuple[State, dict]:
        res = transport.train(site, state, {"lr": lr, "seed": hop_seed(cfg.train.seed, cycle, site),
                                            "batch_size": cfg.train.batch_size, "include_harmful": arm.include_harmful})
        row = {"n_scans": res.n_scans, "loss": res.loss, "seconds": res.seconds, "status": "ok", "skipped": res.skipped}
        if reason := check_update(state, res.state):
            return state, {**row, "n_scans": 0, "loss": float("nan"), "status": f"rejected: {reason}"}
        return res.state, row
    return visit


def run_arm(
    arm: Arm,
    transport: Transport,
    cfg: ExperimentConfig,
    out: Path,
    *,
    hooks: ArmHooks | None = None,
    resume: bool = False,
    progress: Callable[[dict], None] | None = None,
    on_cycle_end: Callable[[int], None] | None = None,
) -> State:
    """Train one arm to cycle C-1, committing a checkpoint per cycle; return the final state.

    With ``resume`` the arm continues after its last complete checkpoint; anything a
    killed run wrote beyond it (log rows, predictions) is discarded first.
    """
    arm_dir = out / arm.name
    info = transport.site_info()
    key = "train" if arm.include_harmful else "train_good"
    sites = sorted(s for s, c in info.items() if c[key] > 0)
    test_sites = sorted(s for s, c in info.items() if c["test"] > 0)
    visit = hooks.visit if hooks else plain_visit(transport, cfg, arm)

    done = last_checkpoint(arm_dir) if resume else None
    resumed = None
    if done is not None:
        resumed = load_checkpoint(checkpoint_path(arm_dir, done))
        state, first = resumed["state"], done + 1
    elif arm.start_from:
        src = checkpoint_path(out / arm.start_from, arm.first_cycle - 1)
        if not src.is_file():
            raise FileNotFoundError(f"arm {arm.name} starts from {src}, which does not exist")
        state, first = load_checkpoint(src)["state"], arm.first_cycle
    else:
        state, first = initial_state(cfg), arm.first_cycle
    for name in ("train_log.csv", "errors.csv", "cycles.csv"):
        truncate_csv(arm_dir / name, lambda df: df[df["cycle"] < first])
    for stale in (arm_dir / "predictions").glob("cycle_*.csv"):
        if int(stale.stem.split("_")[1]) >= first:
            stale.unlink()
    if hooks:
        hooks.begin(state, first, resumed)

    for cycle in range(first, cfg.train.cycles):
        t_cycle = time.perf_counter()
        order = site_order(cfg.train.order, sites, seed=cfg.train.seed, cycle=cycle)
        lr = learning_rate(cfg.train.lr, cfg.train.lr_decay, cycle)
        rows, errors = [], []
        for hop, site in enumerate(order):
            t0 = time.perf_counter()
            try:
                state, row = visit(site, state, cycle, hop, lr)
            except SiteError as exc:  # the model travels on unchanged
                row = {"n_scans": 0, "loss": float("nan"), "seconds": float("nan"), "status": f"failed: {exc}"}
            row["hop_seconds"] = time.perf_counter() - t0  # the server's wall time: site work + transport
            errors += [{"subject": s, "site": site, "cycle": cycle, "stage": (rest or ["train"])[0], "reason": r}
                       for s, r, *rest in row.pop("skipped", [])]
            rows.append({"cycle": cycle, "hop": hop, "site": site, **row})
            if progress:
                progress({"arm": arm.name, "cycle": cycle, "hop": hop, "site": site, **row})
        t_eval = time.perf_counter()
        results = transport.evaluate(test_sites, state, {"split": "test"})
        eval_seconds = time.perf_counter() - t_eval
        errors += [{"subject": s, "site": site, "cycle": cycle, "stage": "test", "reason": r}
                   for site, res in results.items() for s, r in res.skipped]
        errors += [{"subject": "", "site": site, "cycle": cycle, "stage": "test", "reason": res.error}
                   for site, res in results.items() if res.error]
        if cfg.strict and any(e["subject"] for e in errors):
            raise BrokenScanError(f"{len(errors)} unusable scan(s) in cycle {cycle}, e.g. {errors[0]['subject']}: "
                                  f"{errors[0]['reason']} (drop --strict / strict: false to skip and record them)")
        preds = pd.concat([r.scores for r in results.values()], ignore_index=True)
        atomic_write_csv(preds, arm_dir / "predictions" / f"cycle_{cycle:03d}.csv")
        append_csv(pd.DataFrame(rows), arm_dir / "train_log.csv")
        append_csv(pd.DataFrame(errors, columns=ERROR_COLUMNS), arm_dir / "errors.csv")
        append_csv(pd.DataFrame([{"cycle": cycle, "hops": len(rows), "seconds": time.perf_counter() - t_cycle,
                                  "test_seconds": eval_seconds}]), arm_dir / "cycles.csv")
        if hooks:
            hooks.end_cycle(cycle)
        if on_cycle_end:
            on_cycle_end(cycle)
        extra = {"qc": hooks.snapshot()} if hooks else {}
        atomic_torch_save({**split_parts(state), "cycle": cycle, "order": order, "arm": arm.name,
                           "model": dataclasses.asdict(cfg.model),
                           "seed": cfg.train.seed, "rng": {"order": [cfg.train.seed, cycle],
                                                           "torch": torch.get_rng_state()}, **extra},
                          checkpoint_path(arm_dir, cycle))
    return state
