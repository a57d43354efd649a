"""A manifest from a BIDS dataset: ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` found with pybids, one row per scan.

Sex, age and the label come from ``participants.tsv``; the site from one of its columns, the session, or a
key of the scan's JSON sidecar (pybids applies BIDS inheritance, so a top-level ``T1w.json`` counts). Splits
are drawn by participant, so every session of a participant lands in one split, stratified by site and label
with scikit-learn's :class:`~sklearn.model_selection.StratifiedGroupKFold`, seeded. A scan that cannot become a
valid row (participant missing from ``participants.tsv``, a value that cannot be mapped, a missing sidecar key)
is skipped with a one-line reason and returned, never dropped silently. The dataset is only read: pybids is
asked for an in-memory index and nothing is written under the dataset.

pybids is an optional extra (``pip install 'fedqc[bids]'``).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import pandas as pd

from fedqc.errors import UserError

SPLITS = ("train", "val", "test")
MISSING = {"", "n/a", "na", "nan"}
SEX_SPELLINGS = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}
DEFAULT_LABELS = {"0": 0, "1": 1, "false": 0, "true": 1, "no": 0, "yes": 1}
SKIPPED_COLUMNS = ["path", "participant", "session", "reason"]
MAX_FOLDS = 20  # --split fractions must be multiples of 1/20


@dataclass(frozen=True)
class SiteSource:
    """Where a scan's site comes from: ``participants`` (a participants.tsv column), ``session`` or ``sidecar``."""

    kind: str
    key: str = ""

    @classmethod
    def parse(cls, spec: str) -> SiteSource:
        """``participants`` (column ``site``), ``participants:<column>``, ``session`` or ``sidecar:<key>``."""
        kind, _, key = spec.partition(":")
        if kind == "participants":
            return cls(kind, key or "site")
        if kind == "session" and not key:
            return cls(kind)
        if kind == "sidecar" and key:
            return cls(kind, key)
        raise UserError(f"--site-from: expected participants[:COLUMN], session or sidecar:KEY, got {spec!r}")


def parse_split(text: str) -> tuple[float, float, float]:
    """``--split TRAIN,VAL,TEST``: three shares summing to 1, each a multiple of 1/20."""
    try:
        shares = tuple(Fraction(s.strip()).limit_denominator(1000) for s in text.split(","))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--split: expected three shares TRAIN,VAL,TEST such as 0.6,0.2,0.2, got {text!r}") from None
    if len(shares) != 3 or any(s < 0 for s in shares) or sum(shares) != 1:
        raise UserError(f"--split: expected three shares >= 0 that sum to 1 (TRAIN,VAL,TEST), got {text!r}")
    if any((s * MAX_FOLDS).denominator != 1 for s in shares):
        raise UserError(f"--split: each share must be a multiple of 0.05, got {text!r}")
    return tuple(float(s) for s in shares)


def _norm(value) -> str:
    return "" if pd.isna(value) else str(value).strip()


def _levels(sidecar: dict, column: str) -> dict[str, str]:
    """``participants.json``'s ``Levels`` of ``column`` (value → description), when documented."""
    levels = sidecar.get(column, {}).get("Levels", {}) if isinstance(sidecar.get(column), dict) else {}
    return {str(k): str(v) for k, v in levels.items()} if isinstance(levels, dict) else {}


def map_sex(value: str, levels: dict[str, str]) -> str | None:
    """``M``/``F`` from the usual spellings (M/F, male/female, any case); a code such as 1/2 only through the
    ``Levels`` participants.json documents for it. None when it cannot be mapped."""
    return SEX_SPELLINGS.get(value.lower()) or SEX_SPELLINGS.get(levels.get(value, "").strip().lower())


def label_mapping(positive: list[str], negative: list[str]) -> dict[str, int]:
    """The label values → 0/1: 0/1, false/true, no/yes (any case) by default; ``--positive``/``--negative``
    values (exact, case-insensitive) instead when given."""
    if bool(positive) != bool(negative):
        raise UserError("give both --positive and --negative (the values meaning label 1 and label 0)")
    if not positive:
        return DEFAULT_LABELS
    both = {v.lower() for v in positive} & {v.lower() for v in negative}
    if both:
        raise UserError(f"--positive and --negative both list {sorted(both)}")
    return {v.lower(): 1 for v in positive} | {v.lower(): 0 for v in negative}


def read_participants(root: Path) -> tuple[pd.DataFrame, dict]:
    """``participants.tsv`` indexed by participant label (``sub-`` dropped), and ``participants.json`` ({} when
    absent)."""
    path = root / "participants.tsv"
    if not path.is_file():
        raise UserError(f"{root}: no participants.tsv; fedqc takes sex, age and the label from it")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if "participant_id" not in table:
        raise UserError(f"{path}: no participant_id column (columns: {', '.join(table.columns)})")
    table.index = table.pop("participant_id").str.strip().str.removeprefix("sub-")
    if table.index.duplicated().any():
        raise UserError(f"{path}: participant(s) listed twice: {sorted(set(table.index[table.index.duplicated()]))}")
    sidecar = root / "participants.json"
    try:
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except json.JSONDecodeError as exc:
        raise UserError(f"{sidecar}: not valid JSON: {exc}") from None
    return table, meta if isinstance(meta, dict) else {}


def _column(table: pd.DataFrame, names: tuple[str, ...], what: str, path: Path) -> str:
    found = next((c for c in table.columns if c.lower() in names), None)
    if found is None:
        raise UserError(f"{path}: no {what} column ({' or '.join(names)}); columns: {', '.join(table.columns)}")
    return found


def find_t1w(root: Path) -> list:
    """Every T1w NIfTI of the raw dataset (derivatives are not indexed), as pybids files."""
    try:
        from bids import BIDSLayout
    except ImportError:
        raise UserError("fedqc manifest from-bids needs pybids: pip install 'fedqc[bids]'") from None
    if not root.is_dir():
        raise UserError(f"BIDS dataset not found: {root}")
    layout = BIDSLayout(root, validate=False)  # in memory: nothing is written under the dataset
    files = layout.get(suffix="T1w", extension=[".nii", ".nii.gz"], datatype="anat")
    if not files:
        raise UserError(f"{root}: no sub-*/[ses-*/]anat/*_T1w.nii[.gz] files")
    return files


def scan_rows(root: Path, site_from: SiteSource, label: str, labels: dict[str, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per usable T1w scan (``subject`` the scan's id, ``participant``, ``session``, ``site``, ``path``
    absolute, ``label``, ``sex``, ``age``) and one per unusable scan or participant with its reason."""
    root = Path(root).resolve()
    people, meta = read_participants(root)
    tsv = root / "participants.tsv"
    if label not in people:
        raise UserError(f"{tsv}: no label column {label!r}; name it with --label (columns: {', '.join(people.columns)})")
    if site_from.kind == "participants" and site_from.key not in people:
        raise UserError(f"{tsv}: no site column {site_from.key!r} for --site-from participants; "
                        f"name it with --site-from participants:COLUMN (columns: {', '.join(people.columns)})")
    sex_col = _column(people, ("sex", "gender"), "sex", tsv)
    age_col = _column(people, ("age",), "age", tsv)
    sex_levels, label_levels = _levels(meta, sex_col), _levels(meta, label)
    rows, skipped = [], []
    for f in find_t1w(root):
        ent = f.get_entities()
        participant, session = str(ent["subject"]), str(ent.get("session", ""))
        scan = Path(f.path).name.split(".nii")[0].removesuffix("_T1w")

        def skip(reason: str):
            skipped.append({"path": f.path, "participant": participant, "session": session,
                            "reason": f"{scan}: {reason}"})

        if participant not in people.index:
            skip(f"sub-{participant} is not in participants.tsv")
            continue
        person = people.loc[participant]
        sex_raw, age_raw, label_raw = (_norm(person[c]) for c in (sex_col, age_col, label))
        sex = map_sex(sex_raw, sex_levels)
        age = pd.to_numeric(age_raw, errors="coerce")
        y = labels.get(label_raw.lower())
        if sex is None:
            skip(f"{sex_col} {sex_raw!r} is neither male nor female (M/F, male/female; codes only with Levels in "
                 "participants.json)")
        elif pd.isna(age) or not 0 <= age <= 130:
            skip(f"{age_col} {age_raw!r} is not a number in 0..130")
        elif y is None:
            meaning = f" ({label_levels[label_raw]})" if label_raw in label_levels else ""
            skip(f"{label} {label_raw!r}{meaning} cannot be mapped to 0/1: name the values with --positive/--negative")
        else:
            site = _site(site_from, person, session, f)
            if site.startswith("!"):
                skip(site[1:])
            else:
                rows.append({"subject": scan, "site": site, "path": f.path, "label": y, "sex": sex,
                             "age": float(age), "participant": participant, "session": session})
    scanned = {r["participant"] for r in rows} | {s["participant"] for s in skipped}
    for participant in sorted(set(people.index) - scanned):
        skipped.append({"path": "", "participant": participant, "session": "",
                        "reason": f"sub-{participant}: listed in participants.tsv but has no T1w image"})
    return pd.DataFrame(rows), pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)


def _site(source: SiteSource, person: pd.Series, session: str, bids_file) -> str:
    """The scan's site, or ``!reason`` when it has none."""
    if source.kind == "participants":
        value = _norm(person[source.key])
        return value if value.lower() not in MISSING else f"!{source.key} is empty in participants.tsv"
    if source.kind == "session":
        return session or "!no session (ses-*) to take the site from"
    value = bids_file.get_metadata().get(source.key)
    if value is None or _norm(value).lower() in MISSING:
        return f"!its JSON sidecar has no {source.key}"
    return _norm(value)


def assign_splits(rows: pd.DataFrame, shares: tuple[float, float, float], seed: int) -> pd.Series:
    """A split per row, drawn by participant (all their scans in one split) and stratified by site and label:
    ``StratifiedGroupKFold`` into as many folds as the shares need (at most 20), whole folds per split. When every
    site × label stratum is smaller than the number of folds, ``GroupKFold`` (by participant only)."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    n_folds = math.lcm(*(Fraction(s).limit_denominator(MAX_FOLDS).denominator for s in shares))
    groups = rows["participant"]
    if groups.nunique() < n_folds:
        raise UserError(f"--split {','.join(f'{s:g}' for s in shares)} draws {n_folds} groups of participants; "
                        f"the dataset has {groups.nunique()} usable participants: use coarser shares (e.g. 0.6,0.2,0.2)")
    strata = rows["site"].astype(str) + "|" + rows["label"].astype(str)
    if strata.value_counts().max() >= n_folds:
        with warnings.catch_warnings():  # strata smaller than the folds are expected at small sites: best effort
            warnings.simplefilter("ignore", UserWarning)
            folds = list(StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
                         .split(rows, strata, groups))
    else:  # every site × label stratum is smaller than the folds: nothing to stratify
        folds = list(GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(rows, groups=groups))
    counts = [round(s * n_folds) for s in shares]
    names = [name for name, n in zip(SPLITS, counts) for _ in range(n)]
    split = pd.Series("", index=rows.index)
    for name, (_, test_idx) in zip(names, folds):
        split.iloc[test_idx] = name
    return split


def manifest_from_bids(dataset: str | Path, *, site_from: str = "participants", label: str = "label",
                       positive: list[str] = (), negative: list[str] = (), split: str = "0.6,0.2,0.2",
                       seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The manifest of a BIDS dataset and the table of what was skipped (see the module's docstring)."""
    source, shares = SiteSource.parse(site_from), parse_split(split)
    labels = label_mapping(list(positive), list(negative))
    rows, skipped = scan_rows(Path(dataset), source, label, labels)
    if rows.empty:
        first = skipped["reason"].iloc[0] if len(skipped) else "no scans"
        raise UserError(f"{dataset}: no usable scan ({len(skipped)} skipped, e.g. {first})")
    rows = rows.sort_values(["site", "participant", "subject"], ignore_index=True)
    rows["split"] = assign_splits(rows, shares, seed)
    return rows[["subject", "site", "path", "label", "sex", "age", "split", "participant", "session"]], skipped


def skipped_path(out: Path) -> Path:
    """Where the skipped rows of the manifest ``out`` are written: ``<stem>_skipped.csv`` beside it."""
    return out.with_name(f"{out.stem}_skipped.csv")
