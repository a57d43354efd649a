"""The image audit of a whole manifest (``fedqc audit``): what is wrong with which scans, before any training.

One row per scan, with a score and a flag per issue type, as cleanlab's Datalab reports issues, plus counts per
site and overall. Each issue type is one registered class (:data:`AUDIT_ISSUES`, :mod:`fedqc.data.issues`) that gives
``<issue>_score`` and ``is_<issue>_issue`` (the columns fedqc 0.1 wrote, :data:`COLUMNS`, stay beside them). The
issue types:

- **unreadable**: the scan cannot be read or used (:class:`~fedqc.data.images.ImageError`: unreadable, truncated,
  non-finite voxels, not of the model's dimensionality). Recorded with its reason; no other check runs on it.
- **blank** (score: the share of voxels holding the most common value, on the stored array, before any scaling):
  every voxel one value, or at least :data:`~fedqc.data.image_checks.NEAR_CONSTANT_SHARE` of them. No other
  check is reported for a blank scan: its other findings would only follow from the blank.
- **exact duplicate** (``duplicate_of``: the other subjects): the same voxel data, shape and type
  (:func:`~fedqc.data.image_checks.voxel_hash`), under any name, at any site. Every member of a group is flagged.
- **near duplicate** (score ``near_distance``: the share of differing bits to the closest other scan that is not
  an exact copy): perceptual hashes (:func:`~fedqc.data.image_checks.perceptual_hash`, of the model input) at most
  ``near_threshold`` apart — a copy rescaled, re-saved in another type, moved by a voxel or with faint noise.
  The default, 0.08, lies between the largest distance of such copies (0.073 in the synthetic cohorts) and
  the smallest between distinct scans (0.106 among the 2,107 of the ``reference`` cohort): numbers in
  :func:`~fedqc.data.image_checks.perceptual_hash`.
  ``duplicate_across_sites`` says that an exact or near copy is at another site.
- **intensity outlier** (score ``intensity_z``): the largest robust z-score, over the manifest's usable scans, of
  the stored intensities' mean, sd, 1st and 99th percentile.
- **shape outlier** (score ``shape_z``): the same for the logarithm of each side's size and voxel spacing, read
  from the header.
- **bright background** (score ``border_mean``) and **no anatomy** (score ``smoothness``): the checks of
  :func:`~fedqc.data.image_checks.check_image` on the model input (inverted intensities? pure noise?).

Robust z-scores are (value - median) / (1.4826 · MAD), over every readable, non-blank scan of the manifest
(not per site: a site's own median would hide a site that is an outlier as a whole). The robust sd has a floor,
so that values most scans share exactly (every header the same size, every background 0) do not make every other
value infinitely far: 1 % of the manifest's typical intensity range (median 99th minus median 1st percentile) for
intensities, 0.1 (10 %) on the log scale for sizes and spacings — at the default limit of 5, a side or voxel size
then has to differ from the median by a factor of e^0.5 ≈ 1.65.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedqc.data.image_checks import (
    BACKGROUND_MAX,
    SMOOTHNESS_MIN,
    border_mean,
    check_raw,
    mode_share,
    perceptual_hash,
    smoothness,
    voxel_hash,
)
from fedqc.data.issues import Found, IssueCheck, Registry
from fedqc.errors import UserError

NEAR_THRESHOLD = 0.08  # share of the hash bits (module docstring)
OUTLIER_Z = 5.0
INTENSITY_STATS = ("mean", "sd", "p1", "p99")
INTENSITY_SCALE_MIN = 0.01  # floor of the robust sd: this share of the typical intensity range
SHAPE_SCALE_MIN = 0.1  # floor of the robust sd of log sizes and spacings
MAD_TO_SD = 1.4826
# fedqc 0.1's columns of audit.csv; every registered check's score and flag follow, before reason
COLUMNS = ["subject", "site", "split", "path", "unreadable", "blank", "is_blank", "duplicate_of",
           "is_exact_duplicate", "near_duplicate_of", "near_distance", "is_near_duplicate", "duplicate_across_sites",
           "intensity_z", "is_intensity_outlier", "shape_z", "is_shape_outlier", "border_mean",
           "is_bright_background", "smoothness", "is_no_anatomy", "reason"]
OUTPUTS = ("audit.csv", "audit_summary.csv")


@dataclass
class ScanFacts:
    """What the audit measures on one scan; everything but ``error`` is unset when it could not be read."""

    subject: str
    site: str
    split: str
    path: str
    error: str | None = None
    blank: float = np.nan
    blank_reason: str | None = None
    digest: str | None = None
    phash: np.ndarray | None = None
    intensity: dict[str, float] = field(default_factory=dict)
    size: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    border_mean: float = np.nan
    smoothness: float = np.nan


def measure(subject: str, site: str, split: str, path: str, raw: np.ndarray, model_input: np.ndarray, *,
            size: Sequence[int] | None = None, spacing: Sequence[float] | None = None,
            digest: str | None = None) -> ScanFacts:
    """The facts of one readable scan: ``raw`` is the stored grey array (SimpleITK's axis order), ``model_input``
    the (1, *shape) array scaled to [0, 1]; ``size`` and ``spacing`` as the header says (default: ``raw``'s shape
    reversed, spacing 1); ``digest`` of the stored data (default: :func:`voxel_hash` of ``raw``)."""
    raw = np.asarray(raw)
    size = tuple(int(n) for n in (size if size is not None else raw.shape[::-1]))
    facts = ScanFacts(subject, site, split, path, size=size,
                      spacing=tuple(float(s) for s in (spacing if spacing is not None else [1.0] * len(size))))
    facts.blank, _ = mode_share(raw)
    facts.blank_reason = check_raw(raw)
    if facts.blank_reason:
        return facts
    values = raw.astype(np.float64).ravel()
    p1, p99 = np.percentile(values, [1, 99])
    facts.intensity = {"mean": float(values.mean()), "sd": float(values.std()), "p1": float(p1), "p99": float(p99)}
    facts.digest = digest or voxel_hash(raw)
    facts.phash = perceptual_hash(model_input)
    facts.border_mean = border_mean(model_input)
    facts.smoothness = smoothness(model_input)
    return facts


def read_scan(subject: str, site: str, split: str, path: str, shape: tuple[int, ...]) -> ScanFacts:
    """Read one scan and :func:`measure` it; a scan that cannot be used gets only its ``error``. The file is read
    twice: as stored (header, voxels) and as the model sees it (:func:`~fedqc.data.images.decode`, uncached)."""
    import SimpleITK as sitk

    from fedqc.data.images import ImageError, decode, pixels

    try:
        model_input = decode(path, shape)
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        size, spacing = reader.GetSize(), reader.GetSpacing()
        image = reader.Execute()
    except ImageError as exc:
        return ScanFacts(subject, site, split, path, error=str(exc))
    except RuntimeError as exc:  # read by decode, not by a second reader: a file that changed meanwhile
        return ScanFacts(subject, site, split, path, error=f"unreadable image {path}: {str(exc).strip()[-200:]}")
    return measure(subject, site, split, path, pixels(image), model_input, size=size, spacing=spacing,
                   digest=voxel_hash(sitk.GetArrayViewFromImage(image)))


def robust_z(values: np.ndarray, reference: np.ndarray, scale_min: float) -> tuple[np.ndarray, float, float]:
    """(values - median) / max(1.4826 · MAD, ``scale_min``), median and MAD over ``values[reference]``; also the
    median and the scale used."""
    ref = values[reference]
    if not len(ref):
        return np.full(len(values), np.nan), np.nan, np.nan
    median = float(np.median(ref))
    scale = max(MAD_TO_SD * float(np.median(np.abs(ref - median))), scale_min, 1e-12)
    return (values - median) / scale, median, scale


def _intensity(facts: Sequence[ScanFacts], usable: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per scan the largest |robust z| of :data:`INTENSITY_STATS` and its description."""
    stats = pd.DataFrame([f.intensity for f in facts], columns=list(INTENSITY_STATS), dtype=float)
    typical = (stats.loc[usable, "p99"].median() - stats.loc[usable, "p1"].median()) if usable.any() else 0.0
    scale_min = INTENSITY_SCALE_MIN * abs(float(typical))
    z = pd.DataFrame(index=stats.index)
    reference = {}
    for stat in INTENSITY_STATS:
        z[stat], median, _ = robust_z(stats[stat].to_numpy(), usable, scale_min)
        reference[stat] = median
    worst = z.abs().fillna(-1).idxmax(axis=1)
    score = z.abs().max(axis=1).to_numpy()
    text = [f"{w} {stats.at[i, w]:.4g} against a median {reference[w]:.4g} (robust z {z.at[i, w]:+.1f})"
            if usable[i] else "" for i, w in worst.items()]
    return score, text


def _shape(facts: Sequence[ScanFacts], usable: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per scan the largest |robust z| of the log sides and log spacings; a scan of another dimensionality than
    most (axes of size 1 left out) scores infinity."""
    dims = [tuple((n, s) for n, s in zip(f.size, f.spacing) if n != 1) for f in facts]
    ndim = pd.Series([len(d) for d, ok in zip(dims, usable) if ok]).mode()
    ndim = int(ndim.iloc[0]) if len(ndim) else 0
    same = np.array([ok and len(d) == ndim for d, ok in zip(dims, usable)])
    score, text = np.full(len(facts), np.nan), [""] * len(facts)
    if not same.any():
        return score, text
    cols = {}
    for axis in range(ndim):
        for k, name in ((0, "size"), (1, "spacing")):
            v = np.array([np.log(d[axis][k]) if s and d[axis][k] > 0 else np.nan for d, s in zip(dims, same)])
            cols[f"{name}[{axis}]"] = robust_z(v, same & np.isfinite(v), SHAPE_SCALE_MIN)
    median = {name: (np.exp(m) if np.isfinite(m) else m) for name, (_, m, _) in cols.items()}
    z = pd.DataFrame({name: c[0] for name, c in cols.items()})
    for i, (d, ok) in enumerate(zip(dims, usable)):
        if not ok:
            continue
        if len(d) != ndim:
            score[i], text[i] = np.inf, f"{len(d)}-D among {ndim}-D scans"
            continue
        row = z.iloc[i].abs()
        score[i] = float(row.max())
        w = str(row.idxmax())
        axis, kind = int(w[-2]), 0 if w.startswith("size") else 1
        text[i] = f"{w} {d[axis][kind]:.4g} against a median {median[w]:.4g} (robust z {z.at[i, w]:+.1f})"
    return score, text


def _near(facts: Sequence[ScanFacts], usable: np.ndarray, threshold: float) -> tuple[np.ndarray, list[list[int]]]:
    """Per scan the Hamming share to its closest other usable scan that is not an exact copy, and the scans within
    ``threshold``, closest first. Rows are compared in chunks, so memory stays linear in the number of scans."""
    n = len(facts)
    distance, near = np.full(n, np.nan), [[] for _ in range(n)]
    idx = np.flatnonzero(usable)
    if len(idx) < 2:
        return distance, near
    hashes = np.stack([facts[i].phash for i in idx]).astype(np.float32)
    digests = np.array([facts[i].digest for i in idx])
    bits, inverse = hashes.shape[1], 1.0 - hashes
    for start in range(0, len(idx), 1024):
        rows = slice(start, start + 1024)
        d = (hashes[rows] @ inverse.T + inverse[rows] @ hashes.T) / bits
        d[digests[rows, None] == digests[None, :]] = np.inf  # itself and its exact copies
        for r, row in enumerate(d):
            i = idx[start + r]
            distance[i] = row.min() if np.isfinite(row.min()) else np.nan
            close = np.flatnonzero(row <= threshold)
            near[i] = [int(idx[j]) for j in close[np.argsort(row[close], kind="stable")]]
    return distance, near


@dataclass(frozen=True)
class AuditInput:
    """What an audit check sees: every scan's facts, which of them are ``usable`` (readable, not blank), and the
    audit's settings."""

    facts: Sequence[ScanFacts]
    usable: np.ndarray
    near_threshold: float = NEAR_THRESHOLD
    outlier_z: float = OUTLIER_Z


class AuditCheck(IssueCheck[AuditInput]):
    """One issue type of the image audit. :meth:`find`'s table holds ``<issue>_score``, ``is_<issue>_issue``, the
    check's own columns of :data:`COLUMNS`, and ``reason`` (a scan's finding in words, empty for none)."""


AUDIT_ISSUES: Registry[type[AuditCheck]] = Registry()
"""The audit's issue types by name, in the order of their columns and of a scan's reasons."""


def _found(data: AuditInput, check: type[AuditCheck], score, flag, reason, **columns) -> Found:
    return Found(pd.DataFrame({check.score_column(): np.asarray(score, dtype=float),
                               check.flag_column(): np.asarray(flag, dtype=bool), **columns, "reason": reason}))


@AUDIT_ISSUES.register
class Unreadable(AuditCheck):
    """The scan cannot be read or used (score 1, else 0); its error is its reason."""

    name = "unreadable"

    def find(self, data: AuditInput) -> Found:
        flag = np.array([f.error is not None for f in data.facts], dtype=bool)
        return _found(data, Unreadable, flag, flag, [f.error or "" for f in data.facts], unreadable=flag)


@AUDIT_ISSUES.register
class Blank(AuditCheck):
    """Blank or near-constant (score: the share of voxels holding the most common value)."""

    name = "blank"

    def find(self, data: AuditInput) -> Found:
        flag = np.array([f.blank_reason is not None for f in data.facts], dtype=bool)
        share = [f.blank for f in data.facts]
        return _found(data, Blank, share, flag, [f.blank_reason or "" for f in data.facts], blank=share, is_blank=flag)


@AUDIT_ISSUES.register
class ExactDuplicate(AuditCheck):
    """The same voxel data as another usable scan (score: how many others)."""

    name = "exact_duplicate"

    def find(self, data: AuditInput) -> Found:
        subjects = [f.subject for f in data.facts]
        groups: dict[str, list[int]] = {}
        for i in np.flatnonzero(data.usable):
            groups.setdefault(data.facts[i].digest, []).append(int(i))
        exact: list[list[int]] = [[] for _ in data.facts]
        for members in groups.values():
            for i in members:
                exact[i] = [j for j in members if j != i]
        return _found(data, ExactDuplicate, [len(e) for e in exact], [bool(e) for e in exact],
                      [f"exact duplicate of {', '.join(subjects[j] for j in e)}" if e else "" for e in exact],
                      duplicate_of=[";".join(subjects[j] for j in e) for e in exact],
                      is_exact_duplicate=[bool(e) for e in exact])


@AUDIT_ISSUES.register
class NearDuplicate(AuditCheck):
    """Perceptual hashes within ``near_threshold`` (score: the share of differing bits to the closest other scan
    that is not an exact copy)."""

    name = "near_duplicate"

    def find(self, data: AuditInput) -> Found:
        subjects = [f.subject for f in data.facts]
        distance, near = _near(data.facts, data.usable, data.near_threshold)
        return _found(data, NearDuplicate, distance, [bool(m) for m in near],
                      [f"near duplicate of {', '.join(subjects[j] for j in m)} (hash distance {d:.3f})" if m else ""
                       for m, d in zip(near, distance)],
                      near_duplicate_of=[";".join(subjects[j] for j in m) for m in near], near_distance=distance,
                      is_near_duplicate=[bool(m) for m in near])


@AUDIT_ISSUES.register
class IntensityOutlier(AuditCheck):
    """The largest robust z of the stored intensities' mean, sd, 1st and 99th percentile beyond ``outlier_z``."""

    name = "intensity_outlier"

    def find(self, data: AuditInput) -> Found:
        z, text = _intensity(data.facts, data.usable)
        flag = data.usable & (np.nan_to_num(z) > data.outlier_z)
        return _found(data, IntensityOutlier, z, flag,
                      [f"intensity outlier: {t}" if hit else "" for t, hit in zip(text, flag)],
                      intensity_z=z, is_intensity_outlier=flag)


@AUDIT_ISSUES.register
class ShapeOutlier(AuditCheck):
    """The largest robust z of the log sides and spacings beyond ``outlier_z`` (another dimensionality: infinite)."""

    name = "shape_outlier"

    def find(self, data: AuditInput) -> Found:
        z, text = _shape(data.facts, data.usable)
        flag = data.usable & (np.nan_to_num(z, posinf=np.inf) > data.outlier_z)
        return _found(data, ShapeOutlier, z, flag, [f"shape outlier: {t}" if hit else "" for t, hit in zip(text, flag)],
                      shape_z=z, is_shape_outlier=flag)


@AUDIT_ISSUES.register
class BrightBackground(AuditCheck):
    """The model input's outermost layer brighter than :data:`~fedqc.data.image_checks.BACKGROUND_MAX`."""

    name = "bright_background"

    def find(self, data: AuditInput) -> Found:
        borders = np.array([f.border_mean for f in data.facts], dtype=float)
        flag = data.usable & (np.nan_to_num(borders) > BACKGROUND_MAX)
        return _found(data, BrightBackground, borders, flag,
                      [f"bright background (border mean {b:.2f}): inverted intensities?" if hit else ""
                       for b, hit in zip(borders, flag)], border_mean=borders, is_bright_background=flag)


@AUDIT_ISSUES.register
class NoAnatomy(AuditCheck):
    """Neighbouring voxels uncorrelated: smoothness below :data:`~fedqc.data.image_checks.SMOOTHNESS_MIN`."""

    name = "no_anatomy"

    def find(self, data: AuditInput) -> Found:
        smooth = np.array([f.smoothness for f in data.facts], dtype=float)
        flag = data.usable & (np.nan_to_num(smooth, nan=1.0) < SMOOTHNESS_MIN)
        return _found(data, NoAnatomy, smooth, flag,
                      [f"no anatomy (neighbour correlation {v:.2f}): noise?" if hit else "" for v, hit in zip(smooth, flag)],
                      smoothness=smooth, is_no_anatomy=flag)


def audit_table(facts: Sequence[ScanFacts], *, near_threshold: float = NEAR_THRESHOLD,
                outlier_z: float = OUTLIER_Z) -> pd.DataFrame:
    """The per-scan table of a manifest's measured scans (:data:`COLUMNS`, then every registered check's score and
    flag before ``reason``): every registered check's columns
    (:data:`AUDIT_ISSUES`), ``duplicate_across_sites`` (an exact or near copy is at another site) and ``reason``
    (the checks' findings joined by ``; ``)."""
    usable = np.array([f.error is None and f.blank_reason is None for f in facts], dtype=bool)
    data = AuditInput(facts, usable, near_threshold, outlier_z)
    table = pd.DataFrame({"subject": [f.subject for f in facts], "site": [f.site for f in facts],
                          "split": [f.split for f in facts], "path": [f.path for f in facts]})
    reasons = [[] for _ in facts]
    for check in AUDIT_ISSUES.values():
        found = check().find(data).table
        for column in found.columns.drop("reason"):
            table[column] = found[column].to_numpy()
        for i, text in enumerate(found["reason"]):
            if text:
                reasons[i].append(text)
    site_of = dict(zip(table["subject"], table["site"]))
    table["duplicate_across_sites"] = [
        any(site_of[o] != site for o in f"{exact};{near}".split(";") if o)
        for site, exact, near in zip(table["site"], table["duplicate_of"], table["near_duplicate_of"])]
    table["reason"] = ["; ".join(r) for r in reasons]
    return table[[*COLUMNS[:-1], *AUDIT_ISSUES.columns(), "reason"]]


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per site and overall (``site`` = ``all``): scans, scans with any issue, and the count per issue type
    (every member of a duplicate group counts), plus ``duplicate_across_sites``."""
    flags = {name: check.flag_column() for name, check in AUDIT_ISSUES.items()}
    order = list(flags)
    order.insert(order.index("near_duplicate") + 1 if "near_duplicate" in order else len(order),
                 "duplicate_across_sites")
    flags["duplicate_across_sites"] = "duplicate_across_sites"
    counts = pd.DataFrame({name: table[flags[name]].astype(bool) for name in order})
    counts.insert(0, "any_issue", table["reason"] != "")
    counts.insert(0, "scans", 1)
    counts.insert(0, "site", table["site"])
    per_site = counts.groupby("site", sort=True).sum(numeric_only=True).reset_index()
    overall = counts.drop(columns="site").sum().to_frame().T
    overall.insert(0, "site", "all")
    return pd.concat([per_site, overall], ignore_index=True).astype({c: int for c in counts.columns[1:]})


def parse_sides(text: str, option: str) -> tuple[int, ...]:
    """The sides an option (``--shape``, ``fedqc cohort --size``) gives: ``32``, ``64x64`` or ``32x32x32``."""
    try:
        return tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        raise UserError(f"{option} must be an integer, AxB or AxBxC, got {text!r}") from None


def parse_shape(text: str) -> tuple[int, ...]:
    """``--shape``: one side for a cube (``32``), or every side (``32x32x32``; ``64x64`` for a 2D model), each >= 8."""
    sides = parse_sides(text, "--shape")
    sides = sides * 3 if len(sides) == 1 else sides
    if len(sides) not in (2, 3) or min(sides) < 8:
        raise UserError(f"--shape needs two sides (2D) or three (3D), each >= 8, got {text!r}")
    return sides


def default_out(manifest: Path) -> Path:
    """``runs/audit-<name>``: the manifest's stem, or its folder's name when the file is ``manifest.csv``."""
    name = manifest.resolve().parent.name if manifest.stem == "manifest" else manifest.stem
    return Path("runs") / f"audit-{name or 'manifest'}"


def check_out(out: Path, overwrite: bool, inputs: Sequence[str | Path]) -> None:
    """Refuse a non-empty ``out`` without ``overwrite``, and any output that would replace an input file."""
    targets = {(out / name).resolve() for name in OUTPUTS}
    clash = [p for p in inputs if Path(p).resolve() in targets]
    if clash:
        raise UserError(f"--out {out} would overwrite the input {clash[0]}; choose another folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty (use --overwrite to replace its audit files)")


def audit_manifest(manifest: str | Path, *, shape: tuple[int, ...] = (32, 32, 32),
                   near_threshold: float = NEAR_THRESHOLD, outlier_z: float = OUTLIER_Z,
                   out: str | Path | None = None, overwrite: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Audit every scan of ``manifest`` (all splits); return the per-scan table and the summary, and write them as
    ``out/audit.csv`` and ``out/audit_summary.csv`` when ``out`` is given (nothing else in ``out`` is touched).

    The manifest must meet the data contract, image files present (:func:`~fedqc.data.manifest.load_manifest`);
    files that exist but cannot be read are findings (``unreadable``), not errors.
    """
    from fedqc.data.manifest import load_manifest
    from fedqc.io import atomic_write_csv

    if not 0 <= near_threshold < 0.5:
        raise UserError(f"--near-threshold is a share of the hash bits in [0, 0.5), got {near_threshold}")
    if not outlier_z > 0:
        raise UserError(f"--outlier-z must be > 0, got {outlier_z}")
    manifest = Path(manifest)
    rows = load_manifest(manifest, check_images=False)
    if out is not None:
        check_out(Path(out), overwrite, [manifest, *rows["path"]])
    facts = [read_scan(r.subject, r.site, r.split, r.path, tuple(shape)) for r in rows.itertuples()]
    table = audit_table(facts, near_threshold=near_threshold, outlier_z=outlier_z)
    summary = summarize(table)
    if out is not None:
        atomic_write_csv(table, Path(out) / OUTPUTS[0])
        atomic_write_csv(summary, Path(out) / OUTPUTS[1])
    return table, summary
