"""Crash-safe file output: every file is written to a temporary name, synced, then renamed into place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pandas as pd


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` and move ``tmp`` onto ``path``: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def append_csv(rows: pd.DataFrame, path: Path) -> None:
    """Append rows to a CSV (atomically rewritten, so a crash never leaves half a row)."""
    if path.is_file() and path.stat().st_size:
        rows = pd.concat([pd.read_csv(path), rows], ignore_index=True)
    atomic_write_csv(rows, path)


def truncate_csv(path: Path, keep: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """Keep only the rows ``keep`` selects (used when resuming); no-op if absent."""
    if path.is_file() and path.stat().st_size:
        atomic_write_csv(keep(pd.read_csv(path)), path)
