"""Image I/O with SimpleITK: one scan → a normalised (1, X, Y, Z) or, for 2D models, (1, X, Y) float32 array.

Any format SimpleITK reads: NIfTI volumes and slices, PNG, JPEG. A colour image becomes
grey as the mean of its channels; a 2D model also takes a volume with one slice. Images
are resized to the model's input shape with MONAI when they differ and min-max scaled
to [0, 1] per scan (a blank scan stays all zero). Decoded arrays are cached per process
(:mod:`fedqc.data.cache`; :func:`configure_cache` sets the bounds), so a site decodes
each of its scans once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fedqc.data.cache import ScanCache, memory_bound


class ImageError(ValueError):
    """A scan that cannot be used (unreadable, non-finite voxels, wrong dimensionality): skipped and recorded."""


def _check_complete(path: str) -> None:
    """ITK's NIfTI reader zero-fills a truncated file; nibabel notices the missing bytes."""
    import nibabel as nib

    try:
        np.asarray(nib.load(path).dataobj)
    except (OSError, EOFError, ValueError) as exc:
        raise ImageError(f"truncated or corrupt image {path}: {str(exc).strip().splitlines()[-1]}") from None


def pixels(img: sitk.Image) -> np.ndarray:
    """The image's array in SimpleITK's axis order ((z,) y, x), grey: a colour image's channels averaged."""
    arr = sitk.GetArrayFromImage(img)
    return arr.mean(-1) if img.GetNumberOfComponentsPerPixel() > 1 else arr


def _read(path: str) -> np.ndarray:
    """The image at ``path`` as a grey float32 array (:func:`pixels`)."""
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as exc:
        raise ImageError(f"unreadable image {path}: {str(exc).strip().splitlines()[-1]}") from None
    if path.endswith((".nii", ".nii.gz")):
        _check_complete(path)
    return pixels(img).astype(np.float32)


def decode(path: str, shape: tuple[int, ...], stamp: tuple | None = None) -> np.ndarray:
    """Read ``path`` and return a (1, *shape) float32 array scaled to [0, 1]; ``shape`` has two sides for a 2D
    model, three for a 3D one. ``stamp`` (the file's size and mtime) only keys the cache."""
    from monai.transforms import Resize, ScaleIntensity  # here: `fedqc harm` reads images without MONAI or torch

    arr = _read(path)
    if len(shape) == 2 and arr.ndim == 3 and 1 in arr.shape:  # a slice stored as a one-slice volume
        arr = arr.reshape([n for n in arr.shape if n != 1] or [1, 1])
    if arr.ndim != len(shape):
        raise ImageError(f"{path}: expected a {len(shape)}-D image for model.input_shape {list(shape)}, "
                         f"got {arr.ndim}-D")
    if not np.isfinite(arr).all():
        raise ImageError(f"{path}: image has NaN or infinite voxels")
    arr = arr.T[None]  # SimpleITK ((z,) y, x) -> (1, x, y(, z))
    if arr.shape[1:] != tuple(shape):
        arr = np.asarray(Resize(spatial_size=shape, mode="trilinear" if len(shape) == 3 else "bilinear")(arr))
    return np.asarray(ScaleIntensity(minv=0.0, maxv=1.0)(arr), dtype=np.float32)


_cache = ScanCache(decode, memory_bound(None))


def configure_cache(cache_gb: float | None = None, folder: str | Path | None = None) -> ScanCache:
    """Set this process's cache bounds (``cache_gb`` None: a quarter of the machine's memory; ``folder``: keep
    decoded scans there too). The cache is kept when they are unchanged, else started empty."""
    global _cache
    bound, folder = memory_bound(cache_gb), None if folder is None else str(folder)
    if (bound, folder) != (_cache.max_bytes, _cache.folder):
        _cache = ScanCache(decode, bound, folder)
    return _cache


def load_image(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """The read-only (1, *shape) float32 array of ``path`` (:func:`decode`), decoded once while it stays cached."""
    return _cache.get(path, tuple(shape))
