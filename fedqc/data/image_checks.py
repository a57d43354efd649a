"""Cheap image-level checks a site runs on its own scans: no model, no template, no other site's data.

Each check looks at the model's input array (a scan min-max scaled to [0, 1], with a leading
channel axis: (1, X, Y, Z), or (1, X, Y) for a 2D image):

- **blank**: no intensity range at all (a failed export, an empty series);
- **bright background**: the outermost voxel layer (a 2D image's outermost pixels) is
  brighter than the middle of the range — an MR scan's corners are air, an
  intensity-inverted scan's are bright;
- **no anatomy**: neighbouring voxels inside the head are uncorrelated — anatomy is
  smooth at any resolution a CNN sees, pure noise is not.

Three more look at the scan as stored, before any resizing or scaling (the *raw* array), and one at the model
input again; :mod:`fedqc.data.audit` and the QC audit stage (:meth:`fedqc.site.Site.check_images`) share them:

- **blank or near-constant** (:func:`check_raw`): at least :data:`NEAR_CONSTANT_SHARE` of the voxels hold one
  value (:func:`mode_share`);
- **exact duplicate**: two scans with the same :func:`voxel_hash` (voxel bytes, shape and type);
- **near duplicate**: two scans whose :func:`perceptual_hash` differ in few bits (:func:`hamming`).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

BACKGROUND_MAX = 0.5
SMOOTHNESS_MIN = 0.1  # good synthetic scans: 0.46-0.59 at 32³, 0.23-0.34 at 16³; pure noise: 0 ± 0.01
# A scan is near-constant when at least this share of its voxels hold one value. The demo cohort (data/demo, 32³):
# good scans at most 0.0077 (their background is resampled, not exactly 0), the additive-noise harm (clipped to 0)
# at most 0.34; a skull-stripped 1 mm MNI-space volume has about 0.8 zeros. 0.99 leaves 1 % of the voxels, 327 of
# 32³, for anything else: such a scan carries next to nothing.
NEAR_CONSTANT_SHARE = 0.99
# Perceptual hash, by number of dimensions: the model input is averaged to HASH_GRID voxels a side, and the lowest
# HASH_KEEP DCT frequencies a side, less the mean, make the bits: 8³ - 1 = 511 for a volume, 24² - 1 = 575 for a 2D
# image (8² - 1 = 63 bits put distinct slices of the demo2d cohort 4 bits apart)
HASH_GRID = {2: 64, 3: 16}
HASH_KEEP = {2: 24, 3: 8}


def border_mean(arr: np.ndarray) -> float:
    """Mean intensity of the outermost voxel layer of a (1, X, Y, Z) or (1, X, Y) array: the mean of its faces
    (a 2D image's edges)."""
    a = arr[0]
    faces = [f for axis in range(a.ndim) for f in (np.take(a, 0, axis), np.take(a, -1, axis))]
    return float(np.mean([f.mean() for f in faces]))


def smoothness(arr: np.ndarray, threshold: float = 0.05) -> float:
    """Correlation of neighbouring voxels (along each axis) where both are in the head; ``arr`` as
    :func:`border_mean`'s."""
    a = arr[0]
    pairs = []
    for axis in range(a.ndim):
        x, y = np.moveaxis(a, axis, 0)[:-1].ravel(), np.moveaxis(a, axis, 0)[1:].ravel()
        inside = (x > threshold) & (y > threshold)
        if inside.sum() > 10:
            pairs.append(np.corrcoef(x[inside], y[inside])[0, 1])
    return float(np.nanmean(pairs)) if pairs else 0.0


def check_image(arr: np.ndarray) -> str | None:
    """The reason a scan fails the checks, or None when it passes."""
    if float(arr.max() - arr.min()) < 1e-6:
        return "blank: no intensity range"
    if (b := border_mean(arr)) > BACKGROUND_MAX:
        return f"bright background (border mean {b:.2f}): inverted intensities?"
    if (s := smoothness(arr)) < SMOOTHNESS_MIN:
        return f"no anatomy (neighbour correlation {s:.2f}): noise?"
    return None


def mode_share(raw: np.ndarray) -> tuple[float, float]:
    """The share of ``raw``'s voxels that hold its most common value, and that value."""
    values, counts = np.unique(raw, return_counts=True)
    top = int(np.argmax(counts))
    return float(counts[top] / raw.size), float(values[top])


def check_raw(raw: np.ndarray) -> str | None:
    """Why a raw (stored, unscaled) scan is blank or near-constant, or None: every voxel one value, or at least
    :data:`NEAR_CONSTANT_SHARE` of them. A constant image plus faint noise escapes this rule; its model input is
    then pure noise, which :func:`check_image` calls "no anatomy"."""
    share, value = mode_share(raw)
    if share >= 1.0:
        return f"blank: every voxel is {value:g}"
    if share >= NEAR_CONSTANT_SHARE:
        return f"near-constant: {share:.1%} of the voxels are {value:g}"
    return None


def voxel_hash(raw: np.ndarray) -> str:
    """A 128-bit BLAKE2b digest of the voxel data with its shape and type: equal for the same scan saved twice,
    under any name or header (the header's spacing and origin are not hashed)."""
    raw = np.ascontiguousarray(raw)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{raw.dtype.str}{raw.shape}".encode())
    h.update(raw.tobytes())
    return h.hexdigest()


@lru_cache(maxsize=32)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights that average ``n_in`` samples down (or spread them up) to ``n_out`` by overlap."""
    edges = np.linspace(0, n_in, n_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in)[None]
    w = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
    return w / w.sum(1, keepdims=True)


def perceptual_hash(arr: np.ndarray) -> np.ndarray:
    """A perceptual hash of a model-input array (:func:`border_mean`'s layout): 511 bits for a volume, 575 for a
    2D image.

    The image is shifted so that its intensity centroid is at the centre (a copy moved by a voxel hashes alike),
    averaged down to :data:`HASH_GRID` voxels a side, and transformed with a DCT; the bits say which of the lowest
    :data:`HASH_KEEP` frequencies a side, less the mean, are above their median: the DCT "pHash" of photographs,
    in 3D. A plain "average hash", the sign of an 8³ downsample less its mean, is a head mask at that size:
    distinct subjects of the demo cohort had identical ones.

    Measured (:func:`hamming`, the model input at 32³ and 64²), between distinct scans without image harm, at the
    smallest: 0.106 among the 2,107 of the ``reference`` cohort (2.2 million pairs; 1 pair in 10,000 below 0.149),
    0.125 among the 434 of ``demo``, 0.143 among the 361 of ``demo2d``. Between 30 of them and a copy, at the
    largest (reference / demo / demo2d): noise of sd 5 on the 0-255 scale 0.043 / 0.039 / 0.049, of sd 10
    0.055 / 0.067 / 0.097, of sd 25 0.121 / 0.141 / 0.167; moved by one voxel 0.055 / 0.070 / 0.073, by two
    0.121 / 0.125 / 0.122; rescaled 0.
    """
    from scipy import ndimage
    from scipy.fft import dctn

    a = np.asarray(arr[0], dtype=np.float64)
    grid, keep = HASH_GRID[a.ndim], HASH_KEEP[a.ndim]
    if a.sum() > 0:
        centroid = np.array(ndimage.center_of_mass(a))
        a = ndimage.shift(a, (np.array(a.shape) - 1) / 2 - centroid, order=1, mode="constant")
    for axis, n in enumerate(a.shape):
        a = np.moveaxis(np.tensordot(_area_matrix(n, grid), np.moveaxis(a, axis, 0), axes=1), 0, axis)
    coeffs = dctn(a, norm="ortho")[(slice(0, keep),) * a.ndim].ravel()[1:]
    return coeffs > np.median(coeffs)


def hamming(a: np.ndarray, b: np.ndarray) -> float:
    """The share of bits in which two :func:`perceptual_hash` values differ: 0 same, about 0.5 unrelated."""
    return float(np.mean(a != b))
