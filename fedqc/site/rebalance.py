"""Class rebalancing of a visit's training scans, at the site, on its training split only.

``weights``
    Each scan's loss weighted by ``n / (k · n_c)`` for its class ``c`` (``k`` the classes
    present), so both classes weigh the same in the epoch; counts from the scans trained
    (``site``) or from the federation's training counts, which the server sums from the
    sites' counts (``federation``). A one-class site keeps weight 1 with its own counts.
``oversample``
    Minority scans drawn again (with replacement, seeded) until both classes are as many,
    and every scan of the epoch — originals of both classes and copies — randomly
    augmented with MONAI (flip, small affine, intensity), so that no image is seen twice
    unchanged. Augmenting the copies alone made augmentation a marker of the minority
    class: on the imbalance study the model learned it and called every unaugmented test
    scan a control (docs/decisions.md).
``undersample``
    A seeded subset of the majority class as large as the minority.

A one-class set is left as it is by every option. Verification and test scans never pass
through here: evaluation scores exactly the manifest's scans. SMOTE is not offered: on
voxels it interpolates between two brains, on features it would train the classifier
apart from the encoder the travelling model trains end to end (docs/decisions.md).
"""

from __future__ import annotations

import numpy as np


def epoch(option: str, subjects: list[str], labels: np.ndarray, seed: int) -> list[tuple[str, bool]]:
    """The epoch's scans in order, each with whether it is randomly augmented."""
    labels = np.asarray(labels, dtype=int)
    counts = np.bincount(labels, minlength=2)
    if option not in ("oversample", "undersample") or counts.min() == 0:
        return [(s, False) for s in subjects]
    rng = np.random.default_rng([seed, 7])
    minority = int(np.argmin(counts))
    idx = np.arange(len(subjects))
    if option == "undersample":
        majority = rng.choice(idx[labels != minority], size=counts[minority], replace=False)
        keep = np.sort(np.concatenate([idx[labels == minority], majority]))
        return [(subjects[i], False) for i in keep]
    extra = rng.choice(idx[labels == minority], size=counts.max() - counts.min(), replace=True)
    order = rng.permutation(len(subjects) + len(extra))
    entries = [(s, True) for s in subjects] + [(subjects[i], True) for i in extra]
    return [entries[i] for i in order]


def class_weights(labels: np.ndarray, counts: tuple[int, ...] = ()) -> np.ndarray:
    """Per-scan loss weights ``n / (k · n_c)`` from ``counts`` (n_0, n_1), or from ``labels`` themselves."""
    labels = np.asarray(labels, dtype=int)
    c = np.asarray(counts if counts else np.bincount(labels, minlength=2), dtype=float)
    present = c > 0
    w = np.where(present, c.sum() / (present.sum() * np.maximum(c, 1)), 0.0)
    return w[labels].astype(np.float32)


def augmenter(dims: int, seed: int):
    """MONAI's random flip, affine (±0.1 rad, ±5 % scale, ±2 voxels) and intensity shift, seeded."""
    from monai.transforms import Compose, RandAffine, RandFlip, RandShiftIntensity

    transform = Compose([RandFlip(prob=0.5, spatial_axis=0),
                         RandAffine(prob=1.0, rotate_range=(0.1,) * (1 if dims == 2 else 3), scale_range=0.05,
                                    translate_range=2, padding_mode="zeros"),
                         RandShiftIntensity(offsets=0.05, prob=0.5)])
    transform.set_random_state(seed=seed % 2**32)
    return transform
