"""Flower's SuperNode with shorter waits and a warm SuperExec: fedqc's fast deployment path.

``flower-supernode`` in flwr 1.41.0 waits 3 s between two requests for work when the
SuperLink had none, and 0.5 s between two looks for a ClientApp's reply; with
``--isolation subprocess`` it starts ``flower-superexec``, which starts a fresh
``flwr-clientapp`` per message. This entry point runs Flower's own SuperNode
(``flower_supernode``, same arguments, same TLS and authentication, same protocol) with
three changes made before it starts:

- the idle wait is :data:`IDLE_POLL_S` and the reply wait :data:`REPLY_POLL_S` (the
  ``time`` module Flower's SuperNode loop sleeps through is replaced, for that module
  only, by one that shortens exactly those two waits);
- the SuperExec it starts is :mod:`fedqc.transport.flower.fast.superexec` (forked
  ClientApps) instead of ``flower-superexec``, with the same arguments;
- that SuperExec looks for tasks every :data:`TASK_POLL_S` (Flower's
  ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, unless already set);
- an object of a message that is not on the SuperLink yet is asked for again after
  10 ms instead of 1 s (:mod:`fedqc.transport.flower.fast.pull_backoff`);
- the SuperNode declares a heartbeat interval of :data:`HEARTBEAT_S` (Flower's minimum)
  instead of 30 s and beats accordingly: the SuperLink gives up a crashed SuperNode,
  and answers its pending messages with an error, after 20 s instead of 60 s.

These are flwr 1.41.0 internals: on another version, or where a patched name is gone,
it says so and runs the stock SuperNode.

    python -m fedqc.transport.flower.fast.supernode <flower-supernode arguments>
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import ModuleType, SimpleNamespace

from fedqc.transport.flower.fast import FLWR_VERSION, fits, pull_backoff

IDLE_POLL_S = 0.2  # Flower: 3 s; FEDQC_SUPERNODE_POLL_S overrides it
REPLY_POLL_S = 0.02  # Flower: 0.5 s; a look at the SuperNode's own memory
TASK_POLL_S = "0.1"  # Flower: 1 s; FLWR_SUPEREXEC_TASK_POLL_INTERVAL overrides it
HEARTBEAT_S = 10  # Flower: 30 s; the SuperLink accepts 10 s to 30 min and waits 2 intervals


_waits = {3: IDLE_POLL_S, 0.5: REPLY_POLL_S}  # Flower's wait -> this one


def _sleep(seconds: float) -> None:
    time.sleep(_waits.get(seconds, seconds))


def _popen(args, *rest, **kwargs) -> subprocess.Popen:
    """``subprocess.Popen``, starting the warm SuperExec where Flower's SuperNode starts ``flower-superexec``."""
    if isinstance(args, list) and args[:1] == ["flower-superexec"]:
        args = [sys.executable, "-m", "fedqc.transport.flower.fast.superexec", *args[1:]]
    return subprocess.Popen(args, *rest, **kwargs)


def patch(module: ModuleType) -> bool:
    """Shorten the waits of Flower's SuperNode loop in ``module``, its heartbeat interval, and swap its SuperExec;
    False if it does not fit (nothing changed then)."""
    import inspect

    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    beats = (heartbeat, fleet_http_connection)  # the SuperNode's heartbeat sender and what it declares
    if not fits() or getattr(module, "time", None) is not time \
            or getattr(module, "subprocess", None) is not subprocess \
            or any(getattr(m, "HEARTBEAT_DEFAULT_INTERVAL", None) != 30 for m in beats):
        return False
    source = inspect.getsource(module)
    if not all(line in source for line in ("time.sleep(3)", "time.sleep(0.5)", 'command = ["flower-superexec"]')) \
            or not pull_backoff.shorten(module, "pull_objects"):
        return False
    module.time = _proxy(time, sleep=_sleep)
    module.subprocess = _proxy(subprocess, Popen=_popen)
    for m in beats:
        m.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT_S
    return True


def _proxy(module: ModuleType, **replaced) -> SimpleNamespace:
    """``module``'s public names, with ``replaced`` in place of those named."""
    return SimpleNamespace(**{k: getattr(module, k) for k in dir(module) if not k.startswith("_")} | replaced)


def main() -> None:
    poll = os.environ.get("FEDQC_SUPERNODE_POLL_S", str(IDLE_POLL_S))
    try:
        _waits[3] = float(poll)
    except ValueError:
        sys.exit(f"error: FEDQC_SUPERNODE_POLL_S must be a number of seconds, got {poll!r}")
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli.flower_supernode import flower_supernode

    if patch(start_client_internal):
        os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", TASK_POLL_S)
    else:
        import flwr

        print(f"fast SuperNode: written for flwr {FLWR_VERSION}, found {flwr.__version__}: "
              "running Flower's stock SuperNode", file=sys.stderr)
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
