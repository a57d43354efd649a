"""Are two run folders the same run? Checkpoints (weights, optimizer and QC state), predictions, logs and QC
tables compared value by value, timing fields left out (they differ between any two runs).

    python -m bench.compare_runs runs/demo-before runs/demo-after

Exit 0 when every file matches, 1 otherwise (each difference printed). Used to show that a change which must
not change behaviour (a refactor, a new layout) keeps the demo bit-identical.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

TIMING = ("seconds", "time", "elapsed", "started", "wall")
"""A key or column naming one of these is a timing field, e.g. every ``*_seconds`` column of ``cycles.csv``'s time
split; a table's timing columns may differ between the runs (a run of an older fedqc has fewer)."""


def _timing(key) -> bool:
    return any(t in str(key) for t in TIMING)


def same(x, y, where: str, out: list[str]) -> bool:
    """Whether ``x`` and ``y`` are equal, recursively, timing keys left out; differences appended to ``out``."""
    if isinstance(x, dict) and isinstance(y, dict):
        keys = sorted({k for k in set(x) | set(y) if not _timing(k)}, key=str)
        return all([same(x.get(k), y.get(k), f"{where}.{k}", out) for k in keys])
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        if len(x) != len(y):
            out.append(f"{where}: length {len(x)} vs {len(y)}")
            return False
        return all([same(i, j, f"{where}[{n}]", out) for n, (i, j) in enumerate(zip(x, y))])
    if torch.is_tensor(x) and torch.is_tensor(y):
        ok = x.dtype == y.dtype and torch.equal(x, y)
    elif isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
        ok = np.array_equal(x, y)
    else:
        ok = type(x) is type(y) and (x == y or (isinstance(x, float) and np.isnan(x) and np.isnan(y)))
    if not ok:
        out.append(where)
    return bool(ok)


def compare(a: Path, b: Path) -> tuple[int, list[str]]:
    """Files compared and the differences between run folders ``a`` and ``b``."""
    diffs: list[str] = []
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.suffix in (".pt", ".csv", ".json") and p.is_file())
    missing = sorted(p.relative_to(b) for p in b.rglob("*") if p.suffix in (".pt", ".csv", ".json")
                     and p.is_file() and not (a / p.relative_to(b)).exists())
    diffs += [f"{p}: only in {b}" for p in missing]
    for rel in files:
        if not (b / rel).is_file():
            diffs.append(f"{rel}: only in {a}")
        elif rel.suffix == ".pt":
            same(torch.load(a / rel, weights_only=False), torch.load(b / rel, weights_only=False), str(rel), diffs)
        elif rel.suffix == ".json":
            same(json.loads((a / rel).read_text()), json.loads((b / rel).read_text()), str(rel), diffs)
        else:
            x, y = pd.read_csv(a / rel), pd.read_csv(b / rel)
            cols = [c for c in x.columns if not _timing(c)]
            if cols != [c for c in y.columns if not _timing(c)] or not x[cols].equals(y[cols]):
                diffs.append(str(rel))
    return len(files), diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    n, diffs = compare(args.a, args.b)
    for d in diffs:
        print("differs:", d)
    print(f"{n} files compared (timing fields left out): {'identical' if not diffs else f'{len(diffs)} differences'}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
