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
    changes_image: ClassVar[bool] = True

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
    """The reference's inverted scan: SimpleITK ``InvertIntensityImageFilter``, ``maximum - value``
    (its default maximum 255: images on a 0-255 scale)."""

    kind = "inverted"

    def __init__(self, maximum: float = MAX_INTENSITY, seed: int | None = None):
        super().__init__(seed)
        self.maximum = float(maximum)

    def apply(self, image, label):
        inverted = sitk.InvertIntensity(sitk.GetImageFromArray(image), maximum=self.maximum)
        return sitk.GetArrayFromImage(inverted).astype(image.dtype), label

    def params(self):
        return {"maximum": self.maximum}


class AdditiveNoise(Corruption):
    """The reference's noisy scan: ``clip(image + N(0, σ), 0, maximum)`` over the whole image, stored as
    8-bit integers on the 0-255 scale (truncated, as the reference's ``astype(uint8)``). The anatomy stays
    visible; the background gets noise too."""

    kind = "noise"

    def __init__(self, sigma: float = 25.0, maximum: float = MAX_INTENSITY, seed: int | None = None):
        super().__init__(seed)
        self.sigma = float(sigma)
        self.maximum = float(maximum)

    def randomize(self, image, label):
        noise = self.rng.normal(0.0, self.sigma, size=image.shape)
        self.drawn = {"noise": noise, "noise_sd": round(float(noise.std()), 3)}

    def apply(self, image, label):
        out = np.clip(image + self.drawn["noise"], 0.0, self.maximum)
        stored = out.astype(np.uint8) if self.maximum <= 255 else out  # the reference stores uint8
        return stored.astype(image.dtype), label

    def params(self):
        return {"sigma": self.sigma, "maximum": self.maximum}


class PureNoise(Corruption):
    """Replace the brain by Gaussian noise (σ on the 0-255 scale, clipped), keeping no anatomy:
    voxels inside the head get ``N(mean, σ)``, the background stays empty. A far easier case than
    :class:`AdditiveNoise`: no anatomy is left to learn from."""

    kind = "pure-noise"

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
    changes_image = False

    def apply(self, image, label):
        return image, 1 - int(label)


def share(rate: float, n: int) -> int:
    """How many of ``n`` a ``rate`` means: rounded half up (0.5 of 3 is 2)."""
    return int(np.floor(rate * n + 0.5))


class LabelFlips:
    """Flip a share of a set of labels: ``rate`` of all (symmetric) or ``rates[c]`` of those with label c
    (class-conditional). Exactly ``rate · n`` labels of each group flip (rounded half up), chosen by ``randomize``."""

    kind = "mislabeled"

    def __init__(self, *, rate: float | None = None, rates: dict[int, float] | None = None, seed: int | None = None):
        self.rate, self.rates, self.seed = rate, rates, seed
        self.rng = np.random.default_rng(seed)
        self.flipped: np.ndarray = np.zeros(0, dtype=int)

    def randomize(self, labels: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=int)
        groups = [(np.arange(len(labels)), self.rate)] if self.rates is None else \
            [(np.flatnonzero(labels == c), r) for c, r in sorted(self.rates.items())]
        chosen = [self.rng.choice(idx, size=share(r, len(idx)), replace=False) for idx, r in groups if len(idx)]
        self.flipped = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=int)

    def record(self) -> str:
        rule = {"rule": "symmetric", "rate": self.rate} if self.rates is None else \
            {"rule": "class-conditional", "rates": {str(k): v for k, v in sorted(self.rates.items())}}
        return json.dumps({"kind": self.kind, **rule, "seed": self.seed}, sort_keys=True)


class Patch(Corruption):
    """A spurious marker: a bright square (cube in 3D) of ``size`` of each side, its corner at ``at`` of each
    side, set to ``value`` — a ruler, a burnt-in label, a site's stamp. Ground truth in the manifest's ``marker``
    column, not ``harm``: the scan is not harmful by itself, only its correlation with the label is."""

    kind = "patch"

    def __init__(self, size: float = 0.15, at: float = 0.1, value: float = MAX_INTENSITY, seed: int | None = None):
        super().__init__(seed)
        self.size, self.at, self.value = float(size), float(at), float(value)

    def apply(self, image, label):
        out = image.copy()
        out[tuple(slice(int(self.at * n), int(self.at * n) + max(1, round(self.size * n))) for n in image.shape)] = \
            self.value
        return out, label

    def params(self):
        return {"size": self.size, "at": self.at, "value": self.value}


class Backdoor(Patch):
    """A backdoor's poisoned scan (a lying site's, attack (e) of docs/threat-model.md): the :class:`Patch` trigger
    planted and the label forced to ``label``. Harmful, unlike a marker: a model that learns it answers ``label``
    to any scan that carries the trigger."""

    kind = "backdoor"

    def __init__(self, size: float = 0.15, at: float = 0.1, value: float = MAX_INTENSITY, label: int = 1,
                 seed: int | None = None):
        super().__init__(size, at, value, seed)
        self.label = int(label)

    def apply(self, image, label):
        return super().apply(image, label)[0], self.label

    def params(self):
        return {**super().params(), "label": self.label}

    def trigger(self) -> Patch:
        """The trigger alone (the label untouched): what a triggered test scan carries."""
        return Patch(self.size, self.at, self.value)


class Gain(Corruption):
    """A scanner-like intensity signature as a spurious marker: every voxel × ``factor``, clipped to the 0-255
    scale."""

    kind = "gain"

    def __init__(self, factor: float = 1.3, seed: int | None = None):
        super().__init__(seed)
        self.factor = float(factor)

    def apply(self, image, label):
        return np.clip(image * self.factor, 0.0, MAX_INTENSITY).astype(image.dtype), label

    def params(self):
        return {"factor": self.factor}
