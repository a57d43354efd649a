"""Harmful-data injections: corruption transforms (:mod:`.transforms`) and where they go (:mod:`.scenario`).

:data:`CORRUPTIONS` is the one registry of harm kinds; the manifest's ``harm`` column
accepts these names and ``none``.
"""

from __future__ import annotations

from fedqc.data.corruptions.transforms import (
    AdditiveNoise,
    Backdoor,
    Blank,
    Corruption,
    Gain,
    Invert,
    Mislabel,
    Patch,
    PureNoise,
)
from fedqc.errors import UserError

CORRUPTIONS: dict[str, type[Corruption]] = {
    cls.kind: cls for cls in (Invert, AdditiveNoise, PureNoise, Blank, Mislabel, Backdoor)}
# Spurious markers of a bias scenario: ground truth in the manifest's ``marker`` column, never ``harm``.
MARKERS: dict[str, type[Corruption]] = {cls.kind: cls for cls in (Patch, Gain)}


def make_corruption(kind: str, seed: int | None = None, **params) -> Corruption:
    """The transform for ``kind`` (one of :data:`CORRUPTIONS` or :data:`MARKERS`) with its parameters."""
    registry = CORRUPTIONS | MARKERS
    if kind not in registry:
        raise UserError(f"unknown harm kind {kind!r}; expected one of {', '.join(CORRUPTIONS)}")
    try:
        return registry[kind](seed=seed, **params)
    except TypeError:
        raise UserError(f"harm kind {kind!r}: unknown parameter(s) {sorted(params)}") from None
