"""The experiment schema: frozen dataclasses with the defaults of the reference method.

Pure Python: reading a config never imports torch, MONAI or SimpleITK.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

ARMS = ("clean", "dirty", "qc")
# The QC vocabulary; fedqc.qc implements each name (UPDATE_CRITERIA, SITE_CHECKS, SEARCHES).
CRITERIA = ("reference", "loss", "calibrated", "auroc")
GRANULARITIES = ("batch", "hierarchical")
ENGINES = ("flower", "inprocess", "deployment")  # deployment: real SuperNodes, one per site
ORDERS = ("random", "fixed")


@dataclass(frozen=True)
class ModelSpec:
    """Which network and at which input shape."""

    name: str = "sfcn"
    width: float = 0.5
    input_shape: tuple[int, int, int] = (32, 32, 32)


@dataclass(frozen=True)
class TrainConfig:
    """Travelling schedule; ``order`` is ``random``, ``fixed`` or an explicit site list."""

    cycles: int = 30
    warmup: int = 10
    batch_size: int = 5
    lr: float = 1e-4
    lr_decay: float = 0.1  # lr × exp(-lr_decay · cycle)
    order: str | tuple[str, ...] = "random"
    seed: int = 0


@dataclass(frozen=True)
class QCConfig:
    """QC of arms ``qc`` and ``qc-<criterion>-<granularity>`` (:mod:`fedqc.qc`)."""

    criterion: str = "auroc"
    granularity: str = "hierarchical"
    tolerance: float = 0.02  # reference criterion: allowed rate rise per trained scan
    z: float = 2.0  # paired criteria: one-sided z of the mean per-scan loss increase
    alpha: float = 0.01  # auroc criterion: level of the site check (site AUROC vs verification AUROC)
    revisit_after: int = 2  # R: a flagged scan is retried at cycle c + R
    verify_fraction: float = 1.0  # share of each site's val scans in the verification set (seeded)
    leave_site_out: bool = True  # a site's own val scans never judge its own updates
    audit: bool = False  # image-level audit before training, its own stage
    untrusted_fraction: float = 0.5  # a site with this share of its training scans eliminated
    #                                  loses its val scans from the verification set


AUDIT_SUFFIXES = {"audit": True, "noaudit": False}


def qc_variant(arm: str) -> tuple[str, str, bool | None] | None:
    """``qc-<criterion>-<granularity>[-audit|-noaudit]`` → (criterion, granularity, audit or None for the
    config's ``qc.audit``); None for other names."""
    parts = arm.split("-")
    if len(parts) in (3, 4) and parts[0] == "qc" and parts[1] in CRITERIA and parts[2] in GRANULARITIES:
        if len(parts) == 3:
            return parts[1], parts[2], None
        if parts[3] in AUDIT_SUFFIXES:
            return parts[1], parts[2], AUDIT_SUFFIXES[parts[3]]
    return None


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    manifest: Path | None = None  # required except for engine deployment, where the server holds no site data
    model: ModelSpec = ModelSpec()
    train: TrainConfig = TrainConfig()
    qc: QCConfig = QCConfig()
    arms: tuple[str, ...] = ARMS
    engine: str = "flower"
    threads: int = 2
    strict: bool = False  # an unusable scan stops the run instead of being skipped and recorded
    site_timeout_s: float = 600.0  # a site that does not answer within this costs its hop (Flower engines)
    failing_cycles: int = 2  # report a site that failed in this many consecutive cycles
    source: Path | None = field(default=None, compare=False)

    def qc_for(self, arm: str) -> QCConfig:
        """The QC settings of arm ``qc`` or of a ``qc-<criterion>-<granularity>[-audit|-noaudit]`` variant."""
        variant = qc_variant(arm)
        if variant is None:
            return self.qc
        criterion, granularity, audit = variant
        return dataclasses.replace(self.qc, criterion=criterion, granularity=granularity,
                                   audit=self.qc.audit if audit is None else audit)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        if self.manifest is None:
            d.pop("manifest")
        else:
            d["manifest"] = str(self.manifest)
        return _plain(d)


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
