"""fedqc's fast deployment path: the SuperNode's shortened waits, the SuperExec that forks warm ClientApps and the
short first retry of an object pull.

Both patch internals of flwr 1.41.0; these tests check that the patches still fit the installed Flower and
that another version gets Flower's stock path. The loopback tests in test_deployment.py run the whole path.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time

import flwr
import pytest
from flwr.common.constant import HEARTBEAT_MIN_INTERVAL
from flwr.supercore import heartbeat
from flwr.supercore.constant import TaskType
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.superexec.executor import subprocess_executor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResultStatus
from flwr.superlink.grid import http_grid
from flwr.supernode import fleet_http_connection, start_client_internal
from flwr.supernode.runtime import run_clientapp

from fedqc.transport.flower.fast import FLWR_VERSION, pull_backoff
from fedqc.transport.flower.fast import superexec as warm_superexec
from fedqc.transport.flower.fast import supernode as fast_supernode


@pytest.fixture(autouse=True)
def flower_restored(monkeypatch):
    """Whatever a test patches in Flower's modules is restored afterwards."""
    for module, name in ((start_client_internal, "time"), (start_client_internal, "subprocess"),
                         (start_client_internal, "pull_objects"), (http_grid, "pull_objects"),
                         (run_clientapp, "pull_and_inflate_object_from_tree"),
                         (heartbeat, "HEARTBEAT_DEFAULT_INTERVAL"), (fleet_http_connection, "HEARTBEAT_DEFAULT_INTERVAL")):
        monkeypatch.setattr(module, name, getattr(module, name))


@pytest.fixture
def supernode_module():
    """Flower's SuperNode loop module."""
    return start_client_internal


def test_the_supernode_patch_fits_flwr_1_41_and_shortens_only_flowers_waits(supernode_module, monkeypatch):
    assert flwr.__version__ == FLWR_VERSION
    assert fast_supernode.patch(supernode_module)
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    for seconds in (3, 0.5, 0.2):
        supernode_module.time.sleep(seconds)
    assert slept == [fast_supernode.IDLE_POLL_S, fast_supernode.REPLY_POLL_S, 0.2]
    assert supernode_module.time.time is time.time and supernode_module.subprocess.DEVNULL is subprocess.DEVNULL
    assert supernode_module.pull_objects.keywords == {"initial_backoff": pull_backoff.FIRST_RETRY_S}
    # the heartbeat it declares and keeps: Flower's minimum, so a crashed SuperNode is given up after 20 s, not 60 s
    assert heartbeat.HEARTBEAT_DEFAULT_INTERVAL == fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == 10
    assert fast_supernode.HEARTBEAT_S == HEARTBEAT_MIN_INTERVAL  # the lowest interval the SuperLink accepts

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, *a, **k: started.append(args))
    supernode_module.subprocess.Popen(["flower-superexec", "--insecure", "--runtime-api-address", "127.0.0.1:1"])
    supernode_module.subprocess.Popen(["something-else"])
    assert started == [[sys.executable, "-m", "fedqc.transport.flower.fast.superexec", "--insecure",
                        "--runtime-api-address", "127.0.0.1:1"], ["something-else"]]


def test_another_flwr_version_gets_the_stock_supernode_and_superexec(supernode_module, monkeypatch):
    monkeypatch.setattr(flwr, "__version__", "1.42.0")
    original = supernode_module.time
    pull = supernode_module.pull_objects
    assert not fast_supernode.patch(supernode_module)
    assert supernode_module.time is original and supernode_module.pull_objects is pull
    assert heartbeat.HEARTBEAT_DEFAULT_INTERVAL == fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == 30
    assert warm_superexec.warm_executor_class() is None
    assert not pull_backoff.shorten(http_grid, "pull_objects") and http_grid.pull_objects is inflatable_utils.pull_objects


def test_a_bad_poll_interval_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedqc.transport.flower.fast.supernode", "--insecure"],
                          capture_output=True, text=True, env={**os.environ, "FEDQC_SUPERNODE_POLL_S": "soon"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: FEDQC_SUPERNODE_POLL_S must be a number of seconds, got 'soon'"


def _spec(task_type: TaskType, **kw) -> ExecutionSpec:
    return ExecutionSpec(task_type=task_type, runtime_api_address="127.0.0.1:9094", token="t0k3n", insecure=True,
                         root_certificates_path=None, runtime_dependency_install=False, parent_pid=4242,
                         suppress_output=False, task_id=7, **kw)


def test_a_clientapp_task_runs_flowers_entry_point_in_a_forked_child(tmp_path, monkeypatch):
    seen = tmp_path / "argv"

    def entry_point() -> None:  # stands in for flwr-clientapp in the child; exits as Flower's does
        partial = tmp_path / "argv.part"  # renamed when whole: the parent polls for the file and must not read it half
        partial.write_text("\0".join(sys.argv))
        os.replace(partial, seen)
        sys.exit(3)

    monkeypatch.setattr(importlib.import_module("flwr.supernode.cli.flwr_clientapp"), "flwr_clientapp", entry_point)
    executor = warm_superexec.warm_executor_class()()
    assert executor.launch(_spec(TaskType.CLIENT_APP)).status == LaunchResultStatus.ACCEPTED
    deadline = time.monotonic() + 30
    while not seen.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert seen.read_text().split("\0") == ["flwr-clientapp", "--runtime-api-address", "127.0.0.1:9094",
                                            "--token", "t0k3n", "--insecure", "--parent-pid", "4242"]
    pid, status = os.wait()  # the child's own exit code; reconcile() reaps the same way without blocking
    assert os.waitstatus_to_exitcode(status) == 3
    executor.reconcile()


def test_other_task_types_start_as_flower_starts_them(monkeypatch):
    launched = []
    monkeypatch.setattr(subprocess_executor.SubprocessExecutor, "launch", lambda self, spec: launched.append(spec))
    executor = warm_superexec.warm_executor_class()()
    spec = _spec(TaskType.SERVER_APP)
    executor.launch(spec)
    assert launched == [spec]


def _pulls_after(unavailable: int) -> tuple[dict, float]:
    """Flower's ``pull_objects`` as the ServerApp's grid calls it, for an object the sender is still pushing: it is
    unavailable for the first ``unavailable`` asks. The contents pulled and the seconds it took."""
    asks = []

    def pull_object(object_id: str) -> bytes:
        asks.append(object_id)
        if len(asks) <= unavailable:
            raise inflatable_utils.ObjectUnavailableError(object_id)
        return b"state"

    t0 = time.perf_counter()
    return http_grid.pull_objects(["obj"], pull_object), time.perf_counter() - t0


def test_an_object_still_being_pushed_is_asked_for_again_after_10_ms_not_a_second():
    assert _pulls_after(1)[1] >= 0.75  # Flower's first retry: 1 s ± 20 %
    assert pull_backoff.shorten(http_grid, "pull_objects")
    assert pull_backoff.shorten(http_grid, "pull_objects")  # twice: still one binding
    assert http_grid.pull_objects.func is inflatable_utils.pull_objects
    contents, seconds = _pulls_after(3)  # 10 + 20 + 40 ms (± 20 %): Flower's doubling from the shorter start
    assert contents == {"obj": b"state"} and 0.05 < seconds < 0.5


def test_the_warm_superexec_shortens_the_forked_clientapps_pulls():
    assert warm_superexec.warm_executor_class() is not None
    assert run_clientapp.pull_and_inflate_object_from_tree.keywords == {"initial_backoff": pull_backoff.FIRST_RETRY_S}
