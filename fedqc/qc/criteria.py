"""How QC judges: update criteria (after a visit trains) and site checks (before it trains).

An **update criterion** compares the candidate model's scores on the verification scans
with those of the last accepted model (same scans, paired): ``decide(labels, base,
cand, n_trained) -> (accepted, stats)``. A **site check** compares how well the last
accepted model separates a site's training labels with how well it separates the
verification scans' labels: ``decide(verify labels, scores, sites, site labels, scores)``.
:data:`UPDATE_CRITERIA` and :data:`SITE_CHECKS` implement the names a config may use
(:data:`fedqc.config.schema.CRITERIA`); each class builds itself from the QC config's
knobs (``from_config``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from fedqc.qc.stats import confusion, recalibrate, site_auroc_test
from fedqc.scoring import per_scan_loss


class UpdateCriterion(Protocol):
    name: ClassVar[str]

    def decide(self, labels: np.ndarray, base: np.ndarray, cand: np.ndarray, n_trained: int) -> tuple[bool, dict]:
        """Accept (True) or reject the candidate; the dict holds ``stat`` and ``limit``."""


@dataclass(frozen=True)
class ReferenceCriterion:
    """The published method: reject when FPR or FNR rose by more than ``tolerance × n_trained``.

    Rates are the true ones, FP/(FP+TN) and FN/(FN+TP), at threshold 0.5.
    """

    tolerance: float = 0.02
    name: ClassVar[str] = "reference"

    @classmethod
    def from_config(cls, qc) -> ReferenceCriterion:
        return cls(qc.tolerance)

    def decide(self, labels, base, cand, n_trained):
        b, c = confusion(labels, base), confusion(labels, cand)
        rise = max(np.nan_to_num(c["fpr"] - b["fpr"]), np.nan_to_num(c["fnr"] - b["fnr"]))
        limit = self.tolerance * n_trained
        return bool(rise <= limit), {"stat": float(rise), "limit": limit}


@dataclass(frozen=True)
class LossCriterion:
    """Reject when the mean per-scan loss increase exceeds ``z`` standard errors (a one-sided paired z-test).

    The tolerance shrinks with more verification scans and grows with their spread,
    instead of being a fixed number of scans.
    """

    z: float = 2.0
    name: ClassVar[str] = "loss"

    @classmethod
    def from_config(cls, qc):
        return cls(qc.z)

    def prepare(self, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return scores

    def decide(self, labels, base, cand, n_trained):
        d = per_scan_loss(labels, self.prepare(labels, cand)) - per_scan_loss(labels, self.prepare(labels, base))
        mean = float(d.mean())
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
        limit = self.z * se
        return bool(mean <= limit), {"stat": mean, "limit": limit}


@dataclass(frozen=True)
class CalibratedLossCriterion(LossCriterion):
    """As ``loss``, after Platt-recalibrating each model's scores on the verification scans.

    The travelling model's calibration drifts between visits; recalibration removes a
    shift and a monotone rescaling of the logits, so the test measures lost
    *discrimination*, which wrong labels and inverted contrast destroy.
    """

    name: ClassVar[str] = "calibrated"

    def prepare(self, labels, scores):
        return recalibrate(labels, scores)


@dataclass(frozen=True)
class SiteAUROCCheck:
    """Fail a site whose AUROC under the accepted model is significantly below the verification scans'
    within-site AUROC (one-sided z, Hanley-McNeil errors, level ``alpha``)."""

    alpha: float = 0.01
    name: ClassVar[str] = "auroc"

    @classmethod
    def from_config(cls, qc) -> SiteAUROCCheck:
        return cls(qc.alpha)

    def decide(self, verify_labels, verify_scores, verify_sites, site_labels, site_scores) -> tuple[bool, dict]:
        return site_auroc_test(verify_labels, verify_scores, verify_sites, site_labels, site_scores, self.alpha)


UPDATE_CRITERIA = {c.name: c for c in (ReferenceCriterion, LossCriterion, CalibratedLossCriterion)}
SITE_CHECKS = {c.name: c for c in (SiteAUROCCheck,)}
