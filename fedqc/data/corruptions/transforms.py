"""Corruptions as transforms that own their RNG and record what they drew (MONAI's randomize/apply split).

``randomize(image, label)`` draws everything random for one call and keeps it;
``apply(image, label)`` uses only what was drawn; ``__call__`` does both. :meth:`record`
is the ground truth written to the manifest (``harm_detail``): kind, parameters, seed
and a summary of the draw. Images are float arrays on a 0-255 scale.
"""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import SimpleITK as sitk

MAX_INTENSITY = 255.0


class Corruption:
    """Base class: a corruption with its own RNG, its parameters and the record of its last draw."""

    kind: ClassVar[str]

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.drawn: dict = {}

    def randomize(self, image: np.ndarray, label: int) -> None:
        """Draw this call's randomness (nothing for a deterministic corruption)."""

    def apply(self, image: np.ndarray, label: int) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def __call__(self, image: np.ndarray, label: int) -> tuple[np.ndarray, int]:
        self.randomize(image, label)
        return self.apply(image, label)

    def params(self) -> dict:
        return {}

    def record(self) -> str:
        """JSON ground truth: kind, parameters, seed, and what the last call drew."""
        summary = {k: v for k, v in self.drawn.items() if not isinstance(v, np.ndarray)}
        return json.dumps({"kind": self.kind, **self.params(), "seed": self.seed, **summary}, sort_keys=True)


class Invert(Corruption):
    """Intensity inversion with SimpleITK ``InvertIntensityImageFilter`` semantics: ``maximum - value``."""

    kind = "inverted"

    def __init__(self, maximum: float = MAX_INTENSITY, seed: int | None = None):
        super().__init__(seed)
        self.maximum = float(maximum)

    def apply(self, image, label):
        inverted = sitk.InvertIntensity(sitk.GetImageFromArray(image), maximum=self.maximum)
        return sitk.GetArrayFromImage(inverted).astype(image.dtype), label

    def params(self):
        return {"maximum": self.maximum}


class PureNoise(Corruption):
    """Replace the brain by Gaussian noise (σ on the 0-255 scale, clipped), keeping no anatomy:
    voxels inside the head get ``N(mean, σ)``, the background stays empty."""

    kind = "noise"

    def __init__(self, sigma: float = 25.0, threshold: float = 0.1, seed: int | None = None):
        super().__init__(seed)
        self.sigma = float(sigma)
        self.threshold = float(threshold)

    def _mask(self, image: np.ndarray) -> np.ndarray:
        return image > self.threshold * image.max() if image.max() > 0 else image > 0

    def randomize(self, image, label):
        mask = self._mask(image)
        mean = float(image[mask].mean()) if mask.any() else MAX_INTENSITY / 2
        self.drawn = {"noise": self.rng.normal(mean, self.sigma, size=image.shape), "noise_mean": round(mean, 3)}

    def apply(self, image, label):
        out = np.where(self._mask(image), np.clip(self.drawn["noise"], 0.0, MAX_INTENSITY), 0.0)
        return out.astype(image.dtype), label

    def params(self):
        return {"sigma": self.sigma, "threshold": self.threshold}


class Blank(Corruption):
    """An all-zero image (a failed export or an empty series)."""

    kind = "blank"

    def apply(self, image, label):
        return np.zeros_like(image), label


class Mislabel(Corruption):
    """Flip the binary label; the image is untouched."""

    kind = "mislabeled"

    def apply(self, image, label):
        return image, 1 - int(label)
