"""Where a site's network runs: the device, mixed precision on a GPU, and repeatable GPU kernels.

On a GPU the model, its optimizer state and the batches live on the device; the
travelling state still leaves as CPU arrays (:func:`fedqc.models.state.pack`). Mixed
precision is bf16 autocast on CUDA only (on CPU bf16 convolutions were measured 40-60×
slower than float32).
"""

from __future__ import annotations

import contextlib
import os

import torch

from fedqc.errors import UserError

# cuBLAS needs a fixed workspace for repeatable matrix products (read when CUDA starts: set before first use)
CUBLAS_WORKSPACE = ":4096:8"


def resolve(name: str) -> torch.device:
    """``auto`` → the first GPU when torch sees one, else the CPU; ``cuda``/``cuda:N`` checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device: {name} asked for, but torch {torch.__version__} sees no GPU "
                            f"(CUDA build: {torch.version.cuda or 'none'}); use device: auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device: {name} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


def set_deterministic(on: bool, device: torch.device) -> None:
    """Repeatable kernels (``on``) or the fastest ones (cuDNN's autotuner on a GPU).

    Torch has no deterministic CUDA backward for 3D max and average pooling (what SFCN
    uses): with ``on`` it warns there instead of stopping, so such a run is repeatable
    only where the warning is absent. On CPU every kernel fedqc uses is deterministic.
    """
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = device.type == "cuda" and not on


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_bound(device: torch.device, device_cache_gb: float | None) -> int:
    """Bytes of scans a GPU may hold: ``device_cache_gb``, or 40 % of its memory when None; 0 on CPU."""
    if device.type != "cuda":
        return 0
    if device_cache_gb is None:
        return int(0.4 * torch.cuda.get_device_properties(device).total_memory)
    return int(device_cache_gb * 1024**3)
