"""fedqc's fast path: patches of Flower internals, each applied only where :func:`fits` (the flwr it was written for).

``vce`` (the simulation engine hands a pushed message on at once, not on its next 100 ms
sweep), ``pull_backoff`` (a short first retry of Flower's object pulls), ``supernode``
(``python -m fedqc.transport.flower.fast.supernode``: Flower's SuperNode with short waits
and the warm SuperExec) and ``superexec`` (a SuperExec that forks warm ClientApps). On any
other flwr version, or where a patched name changed, Flower's own code runs, and the
patch says so.
"""

from __future__ import annotations

FLWR_VERSION = "1.41.0"  # the flwr whose internals every module of this package is written for


def fits() -> bool:
    """Whether the installed flwr is :data:`FLWR_VERSION` (each patch then checks the names it replaces)."""
    import flwr

    return flwr.__version__ == FLWR_VERSION
