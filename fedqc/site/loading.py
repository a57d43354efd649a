"""How a site's scans reach its network: decoded once (:func:`fedqc.data.images.load_image`), read ahead in a
background thread while the model trains, and on a GPU kept there as tensors while they fit.

MONAI's ``ThreadBuffer`` does the reading ahead for its loaders, but an exception in its
thread ends the iteration early without reaching the caller: a site would train on part
of its scans and say nothing. :func:`prefetch` raises a load's error where its result
is taken.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import cachetools
import numpy as np
import torch

from fedqc.data.cache import stamp
from fedqc.data.images import load_image

T = TypeVar("T")


def prefetch(loads: Iterable[Callable[[], T]], depth: int) -> Iterator[tuple[T, float]]:
    """Each load's result, in order, with the seconds the caller waited for it.

    Up to ``depth`` loads run ahead in one background thread (0: each runs when its
    result is asked for). A load that raises raises here, when its result is taken.
    """
    if depth <= 0:
        for load in loads:
            t0 = time.perf_counter()
            result = load()
            yield result, time.perf_counter() - t0
        return
    with ThreadPoolExecutor(1, thread_name_prefix="fedqc-prefetch") as pool:
        pending: collections.deque = collections.deque()
        for load in loads:
            pending.append(pool.submit(load))
            if len(pending) > depth:
                yield _take(pending.popleft())
        while pending:
            yield _take(pending.popleft())


def _take(future) -> tuple:
    t0 = time.perf_counter()
    result = future.result()
    return result, time.perf_counter() - t0


@functools.lru_cache(maxsize=None)
def _kept_on(device: torch.device, max_bytes: int) -> tuple[cachetools.LRUCache, threading.Lock]:
    """The scans kept on ``device``: one cache per process and device, shared by every site it serves."""
    return cachetools.LRUCache(maxsize=max_bytes, getsizeof=lambda t: t.element_size() * t.nelement()), \
        threading.Lock()


class DeviceScans:
    """Batches of scans on ``device``: on a GPU, each scan's tensor is kept there (up to ``max_bytes`` per
    process, least recently used leave first) so later visits copy nothing; on CPU, stacked from the decoded
    arrays."""

    def __init__(self, device: torch.device, max_bytes: int, memory_format: torch.memory_format):
        self.device = device
        self.memory_format = memory_format
        self.max_bytes = max_bytes
        self.kept, self.lock = _kept_on(device, max_bytes)

    def scan(self, path: str, shape: tuple[int, ...], augmented: np.ndarray | None = None):
        """One scan ready for :meth:`stack`: ``augmented`` when given, else the scan at ``path`` as decoded
        (raises :class:`fedqc.data.images.ImageError` when it cannot be read)."""
        if self.device.type == "cpu":
            return load_image(path, shape) if augmented is None else augmented
        if augmented is not None:
            return torch.from_numpy(augmented).to(self.device)
        key = (path, shape, stamp(path))
        with self.lock:
            hit = self.kept.get(key)
        if hit is not None:
            return hit
        tensor = torch.from_numpy(np.array(load_image(path, shape))).to(self.device)
        with self.lock:
            if tensor.element_size() * tensor.nelement() <= self.max_bytes:
                self.kept[key] = tensor
        return tensor

    def stack(self, scans: list) -> torch.Tensor:
        """The (N, 1, *shape) batch of :meth:`scan` results, on the device. On CPU no torch kernel runs here: a
        torch op called from the reading thread would start a second OpenMP team beside training's (4 busy
        threads on 2 cores); :meth:`ready` puts the batch in the network's memory format on the training thread."""
        return torch.from_numpy(np.stack(scans)) if self.device.type == "cpu" else torch.stack(scans)

    def ready(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the network's memory format (on the calling thread)."""
        return x.contiguous(memory_format=self.memory_format)
