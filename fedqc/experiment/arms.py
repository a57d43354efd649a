"""The arms of an experiment and where each starts.

``clean`` trains cycles 0..C-1 on the scans the ground truth calls good — an *oracle*
only a simulation has: the runner tells each site which scans to leave out. ``dirty``
starts from the clean checkpoint of cycle W and trains all data for cycles W+1..C-1,
without QC. QC arms (``qc`` and ``qc-<criterion>-<granularity>``) start from the same
checkpoint and train all data through :class:`~fedqc.qc.arm.QCArm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from fedqc.config import ExperimentConfig


@dataclass(frozen=True)
class Arm:
    name: str
    first_cycle: int
    start_from: str | None = None  # arm whose checkpoint of first_cycle - 1 starts this one
    qc: bool = False
    oracle: bool = False  # trains only the scans the manifest's ground truth calls good


def arms_for(cfg: ExperimentConfig) -> list[Arm]:
    """The configured arms in run order: clean, dirty, then QC arms as listed."""
    w = cfg.train.warmup
    arms = [Arm("clean", 0, oracle=True)] if "clean" in cfg.arms else []
    arms += [Arm("dirty", w + 1, "clean")] if "dirty" in cfg.arms else []
    return arms + [Arm(a, w + 1, "clean", qc=True) for a in cfg.arms if a not in ("clean", "dirty")]


def harmful_training_scans(manifest: pd.DataFrame | None) -> dict[str, tuple[str, ...]]:
    """Per site, its training scans the ground truth (``harm``) marks harmful: what an oracle arm leaves out."""
    if manifest is None or "harm" not in manifest:
        return {}
    bad = manifest[(manifest["split"] == "train") & (manifest["harm"] != "none")]
    return {site: tuple(rows["subject"]) for site, rows in bad.groupby("site", sort=True)}
