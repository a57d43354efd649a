"""The arms of an experiment and where each starts.

``clean`` trains cycles 0..C-1 on the scans the ground truth calls good — an *oracle*
only a simulation has: the runner tells each site which scans to leave out. ``dirty``
starts from the clean checkpoint of cycle W and trains all data for cycles W+1..C-1,
without QC. A QC arm (``qc`` and its variants) trains all data through
:class:`~fedqc.qc.arm.QCArm` from where its ``qc.start`` says:

- ``clean``: the clean checkpoint of cycle W (the reference protocol; an oracle start);
- ``trusted``: the checkpoint of cycle W of the ``trusted`` arm, which trains cycles
  0..W on the sites of ``qc.trusted_sites`` only, ``qc.trusted_epochs`` local epochs per
  visit — no ground truth involved;
- ``scratch``: a fresh model at cycle 0 (QC decides once the model shows skill).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from fedqc.config import ExperimentConfig

TRUSTED = "trusted"  # the warm-up arm of trusted-start QC arms


@dataclass(frozen=True)
class Arm:
    name: str
    first_cycle: int
    start_from: str | None = None  # arm whose checkpoint of first_cycle - 1 starts this one
    qc: bool = False
    oracle: bool = False  # trains only the scans the manifest's ground truth calls good
    last_cycle: int = -1  # the arm's last cycle (-1: the experiment's last)
    sites: tuple[str, ...] | None = None  # only these sites train (None: all)
    epochs: int = 1  # local epochs per visit

    def end(self, cycles: int) -> int:
        """The last cycle this arm trains in an experiment of ``cycles`` cycles."""
        return cycles - 1 if self.last_cycle < 0 else self.last_cycle


def arms_for(cfg: ExperimentConfig) -> list[Arm]:
    """The configured arms in run order: clean, the trusted warm-up (when a QC arm needs it), dirty, QC arms."""
    w = cfg.train.branch_cycle
    qc_arms = [a for a in cfg.arms if a not in ("clean", "dirty")]
    starts = {a: cfg.qc_for(a).start for a in qc_arms}
    arms = [Arm("clean", 0, oracle=True)] if "clean" in cfg.arms else []
    if "trusted" in starts.values():
        arms.append(Arm(TRUSTED, 0, last_cycle=w, sites=cfg.qc.trusted_sites, epochs=cfg.qc.trusted_epochs))
    arms += [Arm("dirty", w + 1, "clean")] if "dirty" in cfg.arms else []
    for a in qc_arms:
        arms.append(Arm(a, 0, qc=True) if starts[a] == "scratch" else
                    Arm(a, w + 1, "clean" if starts[a] == "clean" else TRUSTED, qc=True))
    return arms


def harmful_scans(manifest: pd.DataFrame | None, split: str = "train") -> dict[str, tuple[str, ...]]:
    """Per site, its scans of ``split`` the ground truth (``harm``) marks harmful: what an oracle arm leaves out of
    training (and of calibration)."""
    if manifest is None or "harm" not in manifest:
        return {}
    bad = manifest[(manifest["split"] == split) & (manifest["harm"] != "none")]
    return {site: tuple(rows["subject"]) for site, rows in bad.groupby("site", sort=True)}
