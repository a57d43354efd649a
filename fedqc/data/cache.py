"""Decoded scans kept for reuse, so a site decodes each scan once per run.

Two tiers: memory, bounded in bytes (``cachetools``' LRU sized by each array's
``nbytes``: least recently used scans leave first), and optionally a folder on the
site's machine (``joblib.Memory``), which keeps decoded arrays across processes and
runs when the memory bound is smaller than the site's data. A scan is keyed by its
path, the requested shape and the file's size and modification time, so a rewritten
file is decoded again. Errors are never cached: an unreadable scan is reported every
time it is asked for.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import cachetools
import numpy as np

GB = 1024**3

# decode(path, shape, stamp) -> array; ``stamp`` (the file's size and mtime) is only part of the key
Decoder = Callable[[str, tuple, tuple | None], np.ndarray]


def machine_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_bound(cache_gb: float | None) -> int:
    """The memory tier's bound in bytes: ``cache_gb``, or a quarter of the machine's memory when None."""
    return machine_memory() // 4 if cache_gb is None else int(cache_gb * GB)


def stamp(path: str) -> tuple[int, int] | None:
    """The file's size and modification time (ns); None when it cannot be read (decoding reports why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class ScanCache:
    """Decoded scans, bounded to ``max_bytes`` in memory, persisted in ``folder`` when one is given.

    Thread-safe: a prefetching thread fills it while the training thread reads it.
    """

    def __init__(self, decode: Decoder, max_bytes: int, folder: str | Path | None = None):
        self.max_bytes = max_bytes
        self.folder = None if folder is None else str(folder)
        self.memory: cachetools.LRUCache = cachetools.LRUCache(maxsize=max_bytes, getsizeof=lambda a: a.nbytes)
        self.lock = threading.Lock()
        if self.folder is None:
            self.decode = decode
        else:
            import joblib

            self.decode = joblib.Memory(self.folder, verbose=0).cache(decode)

    def get(self, path: str, shape: tuple[int, ...]) -> np.ndarray:
        """The scan at ``path`` decoded to ``shape``: from memory, else from the folder, else decoded (then kept)."""
        key = (path, shape, stamp(path))
        with self.lock:
            hit = self.memory.get(key)
        if hit is not None:
            return hit
        value = self.decode(*key)
        value.setflags(write=False)
        with self.lock:
            if value.nbytes <= self.max_bytes:
                self.memory[key] = value
        return value

    @property
    def nbytes(self) -> int:
        """Bytes held in memory now."""
        return int(self.memory.currsize)
