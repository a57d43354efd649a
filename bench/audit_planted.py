"""Plant known problems into a clean cohort and check that the image audit (``fedqc audit``) finds every one and
flags nothing else.

    python -m bench.audit_planted --out runs/audit-planted [--cohort data/demo-clean] [--seed 0] [--overwrite]

Without ``--cohort`` it first generates ``fedqc cohort --preset demo --no-harm --seed 0`` under ``OUT/cohort``.
The input cohort is never written to: ``OUT/manifest.csv`` lists its scans by absolute path, plus the planted
scans, whose images are under ``OUT/planted/``. What is planted (:func:`plant`), each from a different good
training scan chosen by ``--seed``:

- blank: an all-zero image, a constant one (100, stored as 16-bit integers) and a near-constant one (0 but for a
  cube of 3 voxels a side);
- exact duplicates: a file copied under a new subject at the same site, and another at a different site;
- near duplicates: a copy with Gaussian noise (sd 5 on the 0-255 scale, clipped at 0) at the same site, and a copy
  moved by one voxel at a different site;
- an unreadable file: random bytes named ``.nii.gz``;
- an intensity outlier: a scan's image replaced by itself times 10;
- a shape outlier: a scan's image replaced by every other slice, at twice the slice spacing.

A duplicate's original scan is flagged too (every member of a group is). Writes ``OUT/audit/audit.csv`` and
``OUT/audit/audit_summary.csv`` and prints, per kind, planted and found, then every false positive; exits 1 when a
planted problem is missed or anything else is flagged.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from fedqc.data.audit import audit_manifest, parse_shape
from fedqc.data.manifest import load_manifest

FLAGS = {"unreadable": "unreadable", "blank": "is_blank", "exact_duplicate": "is_exact_duplicate",
         "near_duplicate": "is_near_duplicate", "across_sites": "duplicate_across_sites",
         "intensity_outlier": "is_intensity_outlier", "shape_outlier": "is_shape_outlier",
         "bright_background": "is_bright_background", "no_anatomy": "is_no_anatomy"}


def _write(arr: np.ndarray, like: sitk.Image, path: Path, spacing: tuple[float, ...] | None = None) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(like.GetOrigin())
    img.SetDirection(like.GetDirection())
    img.SetSpacing(spacing or like.GetSpacing())
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def plant(manifest: str | Path, out: str | Path, seed: int = 0) -> tuple[Path, dict[str, set[str]]]:
    """Write ``out/manifest.csv``: ``manifest``'s rows (absolute paths) with the problems above planted; return its
    path and, for every subject the audit must flag, the kinds of :data:`FLAGS` it must raise (no others)."""
    out = Path(out)
    table = load_manifest(manifest, check_images=False)
    rng = np.random.default_rng(seed)
    train = table[table["split"] == "train"]
    sites = list(train["site"].value_counts().index[:2])  # the two largest sites: a copy has somewhere to go
    picks = list(rng.choice(train.index[train["site"].isin(sites)], size=8, replace=False))
    rows, expected = [], {}

    def new_row(base: pd.Series, kind: str, site: str, path: Path) -> str:
        subject = f"planted-{kind}-{len(rows):02d}"
        rows.append({**base.to_dict(), "subject": subject, "site": site, "path": str(path.resolve())})
        return subject

    def other(site: str) -> str:
        return sites[1] if site == sites[0] else sites[0]

    def image(i) -> tuple[sitk.Image, np.ndarray]:
        img = sitk.ReadImage(table.at[i, "path"])
        return img, sitk.GetArrayFromImage(img)

    folder = out / "planted"
    base = table.loc[picks[0]]
    like, arr = image(picks[0])
    for name, values in (("blank-zero", np.zeros_like(arr)), ("blank-constant", np.full(arr.shape, 100, np.int16))):
        _write(values, like, folder / f"{name}.nii.gz")
        expected[new_row(base, "blank", base["site"], folder / f"{name}.nii.gz")] = {"blank"}
    cube = np.zeros_like(arr)  # a 2D image gets a 3 × 3 square
    cube[tuple(slice(n // 2 - 1, n // 2 + 2) for n in arr.shape)] = 200
    _write(cube, like, folder / "near-constant.nii.gz")
    expected[new_row(base, "blank", base["site"], folder / "near-constant.nii.gz")] = {"blank"}

    for i, across in ((picks[1], False), (picks[2], True)):  # exact copies: the same file under another name
        src = table.loc[i]
        site = other(src["site"]) if across else src["site"]
        dst = folder / f"copy-of-{src['subject']}.nii.gz"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src["path"], dst)
        kinds = {"exact_duplicate"} | ({"across_sites"} if across else set())
        expected[new_row(src, "exact", site, dst)] = kinds
        expected[src["subject"]] = set(kinds)

    noise_rng = np.random.default_rng(seed + 1)
    for i, across in ((picks[3], False), (picks[4], True)):
        src = table.loc[i]
        like, arr = image(i)
        if across:  # moved by one voxel
            changed, name = np.roll(arr, 1, axis=arr.ndim - 1), f"moved-{src['subject']}.nii.gz"
        else:
            changed = np.clip(arr + noise_rng.normal(0, 5, arr.shape), 0, None).astype(arr.dtype)
            name = f"noisy-{src['subject']}.nii.gz"
        _write(changed, like, folder / name)
        kinds = {"near_duplicate"} | ({"across_sites"} if across else set())
        expected[new_row(src, "near", other(src["site"]) if across else src["site"], folder / name)] = kinds
        expected[src["subject"]] = set(kinds)

    garbage = folder / "unreadable.nii.gz"
    garbage.write_bytes(np.random.default_rng(seed + 2).bytes(4096))
    expected[new_row(table.loc[picks[5]], "unreadable", sites[0], garbage)] = {"unreadable"}

    table = table.copy()
    like, arr = image(picks[6])
    _write(arr * 10, like, folder / "scaled.nii.gz")
    table.at[picks[6], "path"] = str((folder / "scaled.nii.gz").resolve())
    expected[table.at[picks[6], "subject"]] = {"intensity_outlier"}
    like, arr = image(picks[7])
    spacing = list(like.GetSpacing())
    spacing[-1] *= 2
    _write(arr[::2], like, folder / "thick-slices.nii.gz", tuple(spacing))
    table.at[picks[7], "path"] = str((folder / "thick-slices.nii.gz").resolve())
    expected[table.at[picks[7], "subject"]] = {"shape_outlier"}

    planted = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    path = out / "manifest.csv"
    planted.to_csv(path, index=False)
    return path, expected


def score(table: pd.DataFrame, expected: dict[str, set[str]]) -> tuple[pd.DataFrame, list[str]]:
    """Per kind: scans planted (expected to carry it) and found; and every flag raised that was not expected."""
    flagged = {r.subject: {k for k, col in FLAGS.items() if getattr(r, col)} for r in table.itertuples()}
    per_kind = pd.DataFrame([{"kind": k, "planted": sum(k in e for e in expected.values()),
                              "found": sum(k in e and k in flagged.get(s, set()) for s, e in expected.items())}
                             for k in FLAGS])
    false = [f"{s}: {', '.join(sorted(kinds - expected.get(s, set())))}"
             for s, kinds in flagged.items() if kinds - expected.get(s, set())]
    return per_kind[per_kind["planted"] > 0].reset_index(drop=True), false


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Output folder.")
    parser.add_argument("--cohort", type=Path, help="A clean cohort folder (manifest.csv); default: generate "
                                                     "the demo preset without harm under OUT/cohort.")
    parser.add_argument("--seed", type=int, default=0, help="Chooses the scans to plant from, and the noise.")
    parser.add_argument("--shape", default="32x32x32", help="The audit's model input shape.")
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --out.")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        if not args.overwrite:
            parser.error(f"{args.out} exists and is not empty (use --overwrite to replace it)")
        if args.cohort is not None and args.cohort.resolve().is_relative_to(args.out.resolve()):
            parser.error(f"--cohort {args.cohort} is inside --out {args.out}, which --overwrite would delete")
        shutil.rmtree(args.out)
    cohort = args.cohort
    if cohort is None:
        from fedqc.data.synth.cohort import generate_cohort

        cohort = args.out / "cohort"
        t0 = time.perf_counter()
        generate_cohort(cohort, preset="demo", size=32, seed=0, harm={})
        print(f"generated {cohort} in {time.perf_counter() - t0:.0f} s")
    manifest, expected = plant(cohort / "manifest.csv", args.out, args.seed)
    t0 = time.perf_counter()
    table, summary = audit_manifest(manifest, shape=parse_shape(args.shape), out=args.out / "audit")
    seconds = time.perf_counter() - t0
    per_kind, false = score(table, expected)
    print(f"fedqc audit {manifest} --shape {args.shape}: {len(table)} scans in {seconds:.1f} s "
          f"({1000 * seconds / len(table):.0f} ms a scan)")
    print(per_kind.to_string(index=False))
    print(f"false positives: {len(false)}" + "".join(f"\n  {f}" for f in false))
    print(f"wrote {args.out / 'audit' / 'audit.csv'} and {args.out / 'audit' / 'audit_summary.csv'}")
    return 0 if (per_kind["found"] == per_kind["planted"]).all() and not false else 1


if __name__ == "__main__":
    sys.exit(main())
