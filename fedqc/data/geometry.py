"""Image geometry against the model's input: orientation, spacing, shape and intensity range per site, and what
fedqc will do to each scan when it loads it.

What fedqc does at load (:func:`fedqc.data.images.decode`): the voxel array is taken in the order it is stored
(no reorientation: direction cosines and spacing are ignored), resized to ``model.input_shape`` with MONAI's
trilinear ``Resize`` (no anti-aliasing) when its shape differs, and min-max scaled to [0, 1] per scan. So
scans stored in different orientations reach the network flipped or transposed against each other, and a scan
whose field of view is not the shape's proportions is stretched. :func:`resample_manifest` writes copies in one
orientation (RAS) at the model's shape, smoothed before downsampling, so what the network sees is decided by
the user. Neither does skull stripping or registration to a template (docs/data.md names the tools).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from fedqc.data.manifest import load_manifest
from fedqc.errors import UserError
from fedqc.io import atomic_write_csv

ORIENTATION = "RAS"  # what resample_manifest writes (nibabel's convention: +x to the Right, +y Anterior, +z Superior)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def axis_codes(img: sitk.Image) -> str:
    """The image's voxel axes in nibabel's convention (``RAS``: the first axis runs to the Right ...), from its
    direction cosines (ITK's physical space is LPS); ``n/a`` for a 2D image."""
    import nibabel as nib

    if img.GetDimension() != 3:
        return "n/a"  # a 2D image (slice, photograph) has no anatomical orientation fedqc can use
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction
    return "".join(nib.orientations.aff2axcodes(affine))


def _spacing(spacing: tuple[float, ...]) -> str:
    """``1`` for isotropic 1 mm voxels, else every side: ``1x1x1.2``."""
    sides = [f"{s:.3g}" for s in spacing]
    return sides[0] if len(set(sides)) == 1 else "x".join(sides)


def scan_geometry(path: str) -> dict:
    """Shape (voxels, in stored order), spacing (mm), orientation, pixel type and intensity range of one scan."""
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as exc:
        return {"error": f"unreadable: {str(exc).strip().splitlines()[-1]}"}
    arr = sitk.GetArrayViewFromImage(img)
    return {"shape": "x".join(map(str, img.GetSize())), "spacing": _spacing(img.GetSpacing()),
            "orientation": axis_codes(img), "pixel_type": img.GetPixelIDTypeAsString(),
            "fov_mm": "x".join(f"{n * s:.0f}" for n, s in zip(img.GetSize(), img.GetSpacing())),
            "min": float(np.min(arr)), "max": float(np.max(arr)), "error": ""}


def geometry_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """:func:`scan_geometry` of every scan of a loaded manifest, with its subject and site."""
    rows = [{"subject": r.subject, "site": r.site, **scan_geometry(r.path)} for r in manifest.itertuples()]
    return pd.DataFrame(rows)


def _counts(values: pd.Series) -> str:
    counts = values.value_counts()
    return ", ".join(f"{v} ({n})" if len(counts) > 1 else str(v) for v, n in counts.items())


def site_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per site: scans, unreadable ones, and every shape, spacing, orientation and field of view met (with its
    count when there are several), and the intensity range."""
    ok = table[table["error"] == ""]
    rows = []
    for site, t in table.groupby("site", sort=True):
        g = ok[ok["site"] == site]
        rows.append({"site": site, "scans": len(t), "unreadable": len(t) - len(g),
                     **{c: _counts(g[c]) if len(g) else "" for c in ("shape", "spacing", "orientation", "fov_mm")},
                     "min": g["min"].min() if len(g) else np.nan, "max": g["max"].max() if len(g) else np.nan})
    return pd.DataFrame(rows)


def advice(table: pd.DataFrame, shape: tuple[int, ...]) -> list[str]:
    """One line per site saying what its scans are and what fedqc does to them, then one line per problem across
    sites (orientations or fields of view that differ, unreadable scans)."""
    target = "x".join(map(str, shape))
    lines = []
    ok = table[table["error"] == ""]
    for s in site_summary(table).itertuples():
        g = ok[ok["site"] == s.site]
        if not len(g):
            lines.append(f"site {s.site}: none of its {s.scans} scans can be read")
            continue
        resized = int((g["shape"] != target).sum())
        fate = (f"{resized} will be resized to {target} by fedqc at load (trilinear, in stored voxel order)"
                if resized else f"all already {target}")
        lines.append(f"site {s.site}: {len(g)} scans, {s.shape} voxels, {s.spacing} mm, {s.orientation}, "
                     f"intensities {s.min:.4g}..{s.max:.4g}: {fate}")
        if s.unreadable:
            bad = table[(table["site"] == s.site) & (table["error"] != "")]
            lines.append(f"site {s.site}: {s.unreadable} scan(s) unreadable: {', '.join(bad['subject'].head(5))}")
    orientations = ok["orientation"].unique()
    if len(orientations) > 1:
        lines.append(f"orientations differ ({', '.join(sorted(orientations))}): fedqc does not reorient, so the network "
                     f"sees these scans flipped or transposed against each other; `fedqc manifest resample` writes "
                     f"copies in {ORIENTATION}")
    if ok["fov_mm"].nunique() > 1:
        fovs = sorted(ok["fov_mm"].unique())
        lines.append(f"fields of view differ ({len(fovs)} kinds, in mm: {', '.join(fovs[:4])}): "
                     f"at {target} voxels the anatomy has a different scale in each; registration to a template "
                     "(e.g. MNI, see docs/data.md) makes them alike")
    lines.append("fedqc scales each scan to [0, 1] (min-max) at load; it does no skull stripping, bias-field correction "
                 "or registration: run those before (docs/data.md, \"Your own scans\")")
    return lines


def resample_image(img: sitk.Image, shape: tuple[int, ...]) -> sitk.Image:
    """``img`` reoriented to RAS and resampled to ``shape`` voxels over its own field of view (linear), smoothed
    first where it is downsampled (Gaussian, sigma half the new spacing) so small structures do not alias."""
    if img.GetNumberOfComponentsPerPixel() > 1:
        img = sitk.VectorMagnitude(img)
    img = sitk.Cast(img, sitk.sitkFloat32)
    if img.GetDimension() != len(shape):
        raise UserError(f"a {img.GetDimension()}-D image cannot be resampled to {len(shape)}-D {list(shape)}")
    if img.GetDimension() == 3:
        img = sitk.DICOMOrient(img, "RAS")
    size, spacing = np.array(img.GetSize()), np.array(img.GetSpacing())
    new_spacing = size * spacing / np.array(shape)
    sigma = np.where(new_spacing > spacing, new_spacing / 2, 0.0)
    if sigma.any():
        img = sitk.SmoothingRecursiveGaussian(img, [float(max(s, 1e-3)) for s in sigma])
    # the new grid covers the same extent: its first voxel centre is half a new voxel in from the old edge
    origin_index = (new_spacing / spacing - 1) / 2
    origin = img.TransformContinuousIndexToPhysicalPoint([float(i) for i in origin_index])
    return sitk.Resample(img, [int(n) for n in shape], sitk.Transform(), sitk.sitkLinear, origin,
                         [float(s) for s in new_spacing], img.GetDirection(), 0.0, sitk.sitkFloat32)


def resample_manifest(manifest: str | Path, shape: tuple[int, ...], out: str | Path, *,
                      overwrite: bool = False) -> pd.DataFrame:
    """Copies of every scan of ``manifest`` at ``shape`` in RAS (:func:`resample_image`) under ``out/images/<site>/``
    and ``out/manifest.csv`` pointing at them (relative paths); the input is only read. Returns the new table."""
    manifest, out = Path(manifest), Path(out)
    table = load_manifest(manifest)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty; pass --overwrite to write into it")
    if out.resolve() == manifest.resolve().parent:
        raise UserError("--out must not be the input manifest's folder: the input stays untouched")
    original = table["path"]
    new_paths = []
    for r in table.itertuples():
        target = out / "images" / str(r.site) / f"{r.subject}.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            sitk.WriteImage(resample_image(sitk.ReadImage(r.path), shape), str(target), useCompression=True)
        except RuntimeError as exc:
            raise UserError(f"{r.subject}: cannot resample {r.path}: {str(exc).strip().splitlines()[-1]}") from None
        new_paths.append(str(target.relative_to(out)))
    written = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    path_col = next(c for c in written.columns if c.strip() in ("path", "Path"))
    written[path_col] = new_paths
    written["source_path"] = original.to_numpy()
    atomic_write_csv(written, out / "manifest.csv")
    return written
