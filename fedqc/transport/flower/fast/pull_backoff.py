"""Flower's object pulls with a short first retry: part of fedqc's fast deployment path.

flwr 1.41.0 moves a message in two steps: the message itself, then its objects (the
packed state, the metrics), each pulled on its own. A receiver can see the message before
its sender has finished pushing the objects; an object not there yet is asked for again
after 1 s, then 2 s, 4 s, up to 10 s (``PULL_INITIAL_BACKOFF``, ``PULL_BACKOFF_CAP``). On
loopback the object arrives milliseconds later, so a hop that races its own upload idles
about a second (one hop in three of the smoke deployment, measured). :func:`shorten`
makes the first retry :data:`FIRST_RETRY_S`; the doubling, the cap, the retry limit and
the errors stay Flower's. Three receivers race: the SuperNode pulling a message from the
SuperLink, the ClientApp pulling it from its SuperNode, the ServerApp pulling a reply.
"""

from __future__ import annotations

import functools
import inspect
from types import ModuleType

from fedqc.transport.flower.fast import fits

FIRST_RETRY_S = 0.01  # Flower: 1 s


def shorten(module: ModuleType, name: str) -> bool:
    """Bind ``initial_backoff`` of Flower's pull function ``module.name`` to :data:`FIRST_RETRY_S`.

    ``name`` is ``pull_objects`` or ``pull_and_inflate_object_from_tree`` as ``module``
    imported it. False (nothing changed) on another flwr version or where the function
    has no such parameter; calling it twice changes nothing more.
    """
    fn = getattr(module, name, None)
    if isinstance(fn, functools.partial) and fn.keywords.get("initial_backoff") == FIRST_RETRY_S:
        return True
    if not fits() or not callable(fn) \
            or "initial_backoff" not in inspect.signature(fn).parameters:
        return False
    setattr(module, name, functools.partial(fn, initial_backoff=FIRST_RETRY_S))
    return True
