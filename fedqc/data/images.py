"""Image I/O with SimpleITK: one scan → a normalised (1, X, Y, Z) or, for 2D models, (1, X, Y) float32 array.

Any format SimpleITK reads: NIfTI volumes and slices, PNG, JPEG. A colour image becomes
grey as the mean of its channels; a 2D model also takes a volume with one slice. Images
are resized to the model's input shape with MONAI when they differ and min-max scaled
to [0, 1] per scan (a blank scan stays all zero). Arrays are cached per process, keyed
by path and shape, so a site reads each of its scans once.
"""

from __future__ import annotations

import functools

import numpy as np
import SimpleITK as sitk


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


@functools.lru_cache(maxsize=4096)
def load_image(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """Read ``path`` and return a read-only (1, *shape) float32 array scaled to [0, 1]; ``shape`` has two sides
    for a 2D model, three for a 3D one."""
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
    out = np.asarray(ScaleIntensity(minv=0.0, maxv=1.0)(arr), dtype=np.float32)
    out.setflags(write=False)
    return out
