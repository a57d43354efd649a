"""Hand a pushed message to the simulation engine at once instead of on Flower's next 100 ms sweep.

Flower 1.41's simulation engine (``flwr.server.superlink.fleet.vce.vce_api``) moves messages
from the link state to its workers in ``add_messages_to_queue``: every 100 ms it asks the
state for one message per node, each ask scanning every stored message. A travelling
model's hop then waits 50 ms on average for the sweep (a message sent right after a reply,
nearly the whole 100 ms), and while a fan-out's 83 messages are stored the sweeps cost
83 × 83 scans, ten times a second, of the CPUs the sites compute on.

:func:`install` replaces that function with one that wakes when the server stores a message
and asks only for the nodes that were sent one (still through ``LinkState.get_message_ins``,
so delivery marks and expiry checks are Flower's). A full sweep runs at start and every
``FULL_SWEEP_S`` as a safety net. Pinned to the engine of flwr :data:`~fedqc.transport.flower.fast.FLWR_VERSION`: on any other
version, or if the function's signature changed, Flower's own loop is left in place.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time

from fedqc.transport.flower.fast import FLWR_VERSION, fits

FULL_SWEEP_S = 5.0
_PARAMS = ["state", "queue", "nodes_mapping", "f_stop"]
log = logging.getLogger(__name__)


def add_messages_to_queue(state, queue, nodes_mapping, f_stop: threading.Event) -> None:
    """Put messages for the nodes of ``nodes_mapping`` from ``state`` into ``queue`` as they are stored."""
    wake, lock, sent_to = threading.Event(), threading.Lock(), set()
    store = state.store_message_ins

    def store_message_ins(message):  # this state instance only: the server's pushes go through it
        out = store(message)
        if out:
            with lock:
                sent_to.add(message.metadata.dst_node_id)
            wake.set()
        return out

    state.store_message_ins = store_message_ins
    try:
        last_full = float("-inf")
        while not f_stop.is_set():
            if time.monotonic() - last_full >= FULL_SWEEP_S:  # at start (messages stored before the hook) and now and then
                last_full = time.monotonic()
                with lock:
                    sent_to.clear()
                nodes = list(nodes_mapping)
            else:
                wake.wait(0.1)  # the timeout only lets f_stop be seen
                wake.clear()
                with lock:
                    nodes = [n for n in sent_to if n in nodes_mapping]
                    sent_to.clear()
            more = []
            for node_id in nodes:
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
                    more.append(node_id)  # it may hold another message
            if more:
                with lock:
                    sent_to.update(more)
                wake.set()
    finally:
        state.__dict__.pop("store_message_ins", None)


def install() -> bool:
    """Swap in :func:`add_messages_to_queue` if this is the engine it was written for; True if it was."""
    import flwr
    from flwr.server.superlink.fleet.vce import vce_api

    current = vce_api.add_messages_to_queue
    if current is add_messages_to_queue:
        return True
    if not fits() or list(inspect.signature(current).parameters) != _PARAMS:
        log.warning("flwr %s: keeping Flower's 100 ms message sweep (fedqc's is written for %s)", flwr.__version__,
                    FLWR_VERSION)
        return False
    vce_api.add_messages_to_queue = add_messages_to_queue
    return True
