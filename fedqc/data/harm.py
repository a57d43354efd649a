"""Harmful-data injections: corruptions as small transforms that record what they did.

Each transform follows MONAI's array-transform shape: it owns its parameters and its
RNG (seeded at construction), is called on ``(image, label)`` and returns the corrupted
pair; :meth:`HarmTransform.record` gives ``kind``, parameters and seed, which the cohort
generator writes to the manifest's ground truth (``harm``, ``harm_detail``). Images are
float arrays on a 0-255 scale, as the cohort writes them.

A :class:`HarmScenario` says where harm goes: whole harmful sites (every scan of the
site, ``train`` and ``val``) and single harmful scans added to otherwise good sites.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

MAX_INTENSITY = 255.0


class HarmTransform:
    """Base class: a corruption with its own RNG and a record of its parameters."""

    kind = "none"

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, label: int) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def params(self) -> dict:
        return {}

    def record(self) -> str:
        """JSON ground truth of this corruption: kind, parameters, seed."""
        return json.dumps({"kind": self.kind, **self.params(), "seed": self.seed}, sort_keys=True)


class Invert(HarmTransform):
    """Intensity inversion with SimpleITK ``InvertIntensityImageFilter`` semantics:
    ``maximum - value``."""

    kind = "inverted"

    def __init__(self, maximum: float = MAX_INTENSITY, seed: int | None = None):
        super().__init__(seed)
        self.maximum = float(maximum)

    def __call__(self, image, label):
        inverted = sitk.InvertIntensity(sitk.GetImageFromArray(image), maximum=self.maximum)
        return sitk.GetArrayFromImage(inverted).astype(image.dtype), label

    def params(self):
        return {"maximum": self.maximum}


class PureNoise(HarmTransform):
    """Replace the brain by Gaussian noise (σ on the 0-255 scale, clipped), keeping no
    anatomy: voxels inside the head get ``N(mean, σ)``, the background stays empty."""

    kind = "noise"

    def __init__(self, sigma: float = 25.0, threshold: float = 0.1, seed: int | None = None):
        super().__init__(seed)
        self.sigma = float(sigma)
        self.threshold = float(threshold)

    def __call__(self, image, label):
        mask = image > self.threshold * image.max() if image.max() > 0 else image > 0
        mean = float(image[mask].mean()) if mask.any() else MAX_INTENSITY / 2
        noise = self.rng.normal(mean, self.sigma, size=image.shape)
        out = np.where(mask, np.clip(noise, 0.0, MAX_INTENSITY), 0.0)
        return out.astype(image.dtype), label

    def params(self):
        return {"sigma": self.sigma, "threshold": self.threshold}


class Blank(HarmTransform):
    """An all-zero image (a failed export or an empty series)."""

    kind = "blank"

    def __call__(self, image, label):
        return np.zeros_like(image), label


class Mislabel(HarmTransform):
    """Flip the binary label; the image is untouched."""

    kind = "mislabeled"

    def __call__(self, image, label):
        return image, 1 - int(label)


HARMS: dict[str, type[HarmTransform]] = {
    cls.kind: cls for cls in (Invert, PureNoise, Blank, Mislabel)
}


def make_harm(kind: str, seed: int | None = None, **params) -> HarmTransform:
    """Build the transform for ``kind`` (one of :data:`HARMS`)."""
    if kind not in HARMS:
        raise ValueError(f"unknown harm kind {kind!r}; expected one of {', '.join(HARMS)}")
    return HARMS[kind](seed=seed, **params)


@dataclass(frozen=True)
class HarmfulSite:
    """A whole site whose every scan carries ``kind``."""

    kind: str
    train: int
    val: int = 0


@dataclass(frozen=True)
class HarmfulScan:
    """One harmful training scan added to the good site ``site``."""

    kind: str
    site: str


@dataclass(frozen=True)
class HarmScenario:
    """Where harm is injected: whole sites and single scans."""

    sites: tuple[HarmfulSite, ...] = ()
    scans: tuple[HarmfulScan, ...] = ()

    @classmethod
    def from_dict(cls, spec: dict | None) -> "HarmScenario":
        spec = spec or {}
        unknown = set(spec) - {"sites", "scans"}
        if unknown:
            raise ValueError(f"harm scenario: unknown key(s) {sorted(unknown)}")
        sites = tuple(HarmfulSite(**s) for s in spec.get("sites", []))
        scans = tuple(HarmfulScan(**s) for s in spec.get("scans", []))
        for item in sites + scans:
            make_harm(item.kind)  # validates the kind
        return cls(sites, scans)

    def to_dict(self) -> dict:
        return {"sites": [asdict(s) for s in self.sites], "scans": [asdict(s) for s in self.scans]}


NO_HARM = HarmScenario()
