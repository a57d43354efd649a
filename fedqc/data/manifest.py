"""The manifest contract: one row per scan, canonical columns, every problem reported.

Canonical columns are ``subject, site, path, label, sex, age, split``; a multi-label
manifest adds further binary targets as ``label_<name>`` columns; ``harm`` is
optional ground truth of an injected corruption, read only to score QC. The reference
code's column names (``Subject, Study, Path, Group_bin, Sex, Age``) are accepted as
aliases. :func:`validate_manifest` lists *every* problem with the offending rows instead
of stopping at the first; :func:`load_manifest` raises :class:`ManifestError` carrying
that list, so no user ever sees a traceback for a bad table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from fedqc.data.corruptions import CORRUPTIONS
from fedqc.errors import ManifestError

REQUIRED = ("subject", "site", "path", "label", "sex", "age", "split")
ALIASES = {
    "Subject": "subject",
    "Study": "site",
    "Path": "path",
    "Group_bin": "label",
    "Sex": "sex",
    "Age": "age",
    "Split": "split",
    "Harm": "harm",
}
SPLITS = ("train", "val", "test")
TARGET_PREFIX = "label_"
SEXES = ("M", "F")
HARM_KINDS = ("none", *CORRUPTIONS)
_MAX_LISTED = 8


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_manifest`: hard errors and warnings, one line each."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _listed(values) -> str:
    values = [str(v) for v in values]
    more = f" (+{len(values) - _MAX_LISTED} more)" if len(values) > _MAX_LISTED else ""
    return ", ".join(values[:_MAX_LISTED]) + more


def _rows(mask: pd.Series, df: pd.DataFrame) -> str:
    """Describe offending rows by CSV line number (header = line 1) and subject."""
    bad = df[mask]
    subj = bad["subject"] if "subject" in bad else pd.Series("?", index=bad.index)
    return _listed(f"line {i + 2} ({s})" for i, s in zip(bad.index, subj))


def target_columns(df: pd.DataFrame) -> list[str]:
    """A multi-label manifest's further binary targets, ``label_<name>`` columns (0/1), in the table's order;
    ``label`` is always the first target."""
    return [c for c in df.columns if c.startswith(TARGET_PREFIX) and len(c) > len(TARGET_PREFIX)]


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV as strings with aliases renamed to canonical names."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, [f"file not found: {path}"])
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ManifestError(path, [f"not a readable CSV: {str(exc).strip().splitlines()[0]}"])
    df = df.rename(columns={c: ALIASES.get(c.strip(), c.strip()) for c in df.columns})
    return df.apply(lambda col: col.str.strip())


def validate_manifest(
    df: pd.DataFrame, *, root: str | Path = ".", check_images: bool = True
) -> ValidationReport:
    """Check a manifest table against the contract.

    Parameters
    ----------
    df
        The table as read by :func:`read_table` (string columns, canonical names).
    root
        Folder that relative ``path`` values are resolved against (the manifest's own).
    check_images
        Open every image header with SimpleITK to catch missing or unreadable files.
    """
    report = ValidationReport()
    err = report.errors.append
    if df.columns.duplicated().any():
        err(f"duplicate column(s): {_listed(df.columns[df.columns.duplicated()])}")
        return report
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        err(f"missing required column(s): {', '.join(missing)}")
    if df.empty:
        err("manifest has no rows")
        return report

    if "subject" in df:
        empty = df["subject"] == ""
        if empty.any():
            err(f"empty subject: {_rows(empty, df)}")
        dup = df["subject"].duplicated(keep=False) & ~empty
        if "split" in df:
            n_splits = df[dup].groupby("subject")["split"].nunique()
            cross = n_splits[n_splits > 1].index
            if len(cross):
                err(f"subject in more than one split: {_listed(cross)}")
            dup &= ~df["subject"].isin(cross)
        if dup.any():
            err(f"duplicate subject: {_listed(sorted(set(df.loc[dup, 'subject'])))}")
    if "site" in df and (bad := df["site"] == "").any():
        err(f"empty site: {_rows(bad, df)}")
    for column in ("label", *target_columns(df)):
        if column in df and (bad := ~df[column].isin(["0", "1"])).any():
            err(f"{column} not 0/1: {_rows(bad, df)}")
    if "sex" in df and (bad := ~df["sex"].isin(SEXES)).any():
        err(f"sex not M/F: {_rows(bad, df)}")
    if "age" in df:
        age = pd.to_numeric(df["age"], errors="coerce")
        if (bad := age.isna() | ~age.between(0, 130)).any():
            err(f"age not a number in 0..130: {_rows(bad, df)}")
    if "split" in df and (bad := ~df["split"].isin(SPLITS)).any():
        err(f"unknown split (expected train/val/test): {_rows(bad, df)}")
    if "harm" in df and (bad := ~df["harm"].isin(HARM_KINDS + ("",))).any():
        err(f"unknown harm kind (expected {'/'.join(HARM_KINDS)}): {_rows(bad, df)}")
    if "path" in df:
        _check_paths(df, Path(root), check_images, report)
    if {"site", "split"} <= set(df.columns):
        splits = df.groupby("site")["split"].agg(set)
        no_val = [s for s, sp in splits.items() if s and "train" in sp and "val" not in sp]
        if no_val:
            report.warnings.append(
                f"site(s) with training data but no verification (val) data: {_listed(no_val)}"
            )
    return report


def _check_paths(df: pd.DataFrame, root: Path, check_images: bool, report: ValidationReport):
    missing, unreadable = [], []
    for i, p in df["path"].items():
        label = f"line {i + 2} ({df.at[i, 'subject'] if 'subject' in df else '?'})"
        full = resolve_path(p, root)
        if not p or not full.is_file():
            missing.append(label)
        elif check_images:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(full))
            try:
                reader.ReadImageInformation()
            except RuntimeError:
                unreadable.append(label)
    if missing:
        report.errors.append(f"image file missing: {_listed(missing)}")
    if unreadable:
        report.errors.append(f"image file unreadable by SimpleITK: {_listed(unreadable)}")


def resolve_path(p: str, root: Path) -> Path:
    """An image path from the manifest, relative paths taken from the manifest's folder."""
    path = Path(p)
    return path if path.is_absolute() else root / path


def load_manifest(path: str | Path, *, check_images: bool = True) -> pd.DataFrame:
    """Read, validate and type a manifest; raise :class:`ManifestError` on any problem.

    Returns a table with ``label`` (and every further target ``label_<name>``) as int, ``age`` as float, ``harm`` filled with
    ``"none"`` when absent, and ``path`` resolved to absolute file paths.
    """
    path = Path(path)
    df = read_table(path)
    report = validate_manifest(df, root=path.parent, check_images=check_images)
    if not report.ok:
        raise ManifestError(path, report.errors)
    df = df.copy()
    for column in ("label", *target_columns(df)):
        df[column] = df[column].astype(int)
    df["age"] = df["age"].astype(float)
    df["harm"] = df["harm"].replace("", "none") if "harm" in df else "none"
    df["path"] = [str(resolve_path(p, path.parent).resolve()) for p in df["path"]]
    return df
