"""Harmful-data injections: corruption transforms (:mod:`.transforms`) and where they go (:mod:`.scenario`).

:data:`CORRUPTIONS` is the one registry of harm kinds; the manifest's ``harm`` column
accepts these names and ``none``.
"""

from __future__ import annotations

from fedqc.data.corruptions.transforms import (
    Blank,
    Corruption,
    Invert,
    Mislabel,
    PureNoise,
)
from fedqc.errors import UserError

CORRUPTIONS: dict[str, type[Corruption]] = {cls.kind: cls for cls in (Invert, PureNoise, Blank, Mislabel)}


def make_corruption(kind: str, seed: int | None = None, **params) -> Corruption:
    """The transform for ``kind`` (one of :data:`CORRUPTIONS`)."""
    if kind not in CORRUPTIONS:
        raise UserError(f"unknown harm kind {kind!r}; expected one of {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[kind](seed=seed, **params)
