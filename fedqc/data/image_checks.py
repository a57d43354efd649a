"""Cheap image-level checks a site runs on its own scans: no model, no template, no other site's data.

Each check looks at the model's input array (a scan min-max scaled to [0, 1], with a leading
channel axis: (1, X, Y, Z), or (1, X, Y) for a 2D image):

- **blank**: no intensity range at all (a failed export, an empty series);
- **bright background**: the outermost voxel layer (a 2D image's outermost pixels) is
  brighter than the middle of the range — an MR scan's corners are air, an
  intensity-inverted scan's are bright;
- **no anatomy**: neighbouring voxels inside the head are uncorrelated — anatomy is
  smooth at any resolution a CNN sees, pure noise is not.
"""

from __future__ import annotations

import numpy as np

BACKGROUND_MAX = 0.5
SMOOTHNESS_MIN = 0.1  # good synthetic scans: 0.46-0.59 at 32³, 0.23-0.34 at 16³; pure noise: 0 ± 0.01


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
