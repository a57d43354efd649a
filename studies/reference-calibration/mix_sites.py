"""Reassign a cohort's training scans to its sites at random, to tell what about the sites slows the travelling model.

Writes two copies of ``MANIFEST`` into ``OUT`` (image paths made absolute; val and test scans stay where they are,
every site keeps its number of training scans):

- ``iid-sites.csv``: the training scans shuffled over the sites — each site holds scans of about six scanners and
  both classes, as if the sites were random samples of one pool;
- ``label-kept-sites.csv``: the patients' training scans shuffled over the patients' places and the controls'
  over the controls' — each site keeps its labels (54 of the `reference` preset's 83 sites stay one-class) but
  its scans come from many scanners.

Usage, from the repository root: ``python studies/reference-calibration/mix_sites.py MANIFEST OUT [--seed 0]``;
then ``python -m bench.stall --manifest OUT/iid-sites.csv ...`` as in the README.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def mixed(table: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    train = table["split"] == "train"
    iid = table.copy()
    iid.loc[train, "site"] = rng.permutation(iid.loc[train, "site"].to_numpy())
    kept = table.copy()
    for label in (0, 1):
        rows = train & (kept["label"] == label)
        kept.loc[rows, "site"] = rng.permutation(kept.loc[rows, "site"].to_numpy())
    return {"iid-sites": iid, "label-kept-sites": kept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    table = pd.read_csv(args.manifest)
    table["path"] = [str((args.manifest.parent / p).resolve()) for p in table["path"]]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in mixed(table, args.seed).items():
        frame.to_csv(args.out / f"{name}.csv", index=False)
        sites = frame[frame["split"] == "train"].groupby("site")
        one_class = int(sites["label"].nunique().eq(1).sum())
        print(f"{name}: {one_class} of {sites.ngroups} sites one-class, "
              f"{sites['scanner'].nunique().mean():.1f} scanners a site")


if __name__ == "__main__":
    main()
