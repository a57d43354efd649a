"""fedqc's fast deployment path: the SuperNode's shortened waits and the SuperExec that forks warm ClientApps.

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
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import subprocess_executor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResultStatus
from flwr.supernode import start_client_internal

from fedqc.transport.flower import fast_supernode, warm_superexec


@pytest.fixture
def supernode_module(monkeypatch):
    """Flower's SuperNode loop module, with whatever a test patches in it restored afterwards."""
    monkeypatch.setattr(start_client_internal, "time", start_client_internal.time)
    monkeypatch.setattr(start_client_internal, "subprocess", start_client_internal.subprocess)
    return start_client_internal


def test_the_supernode_patch_fits_flwr_1_41_and_shortens_only_flowers_waits(supernode_module, monkeypatch):
    assert flwr.__version__ == fast_supernode.FLWR_VERSION
    assert fast_supernode.patch(supernode_module)
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    for seconds in (3, 0.5, 0.2):
        supernode_module.time.sleep(seconds)
    assert slept == [fast_supernode.IDLE_POLL_S, fast_supernode.REPLY_POLL_S, 0.2]
    assert supernode_module.time.time is time.time and supernode_module.subprocess.DEVNULL is subprocess.DEVNULL

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, *a, **k: started.append(args))
    supernode_module.subprocess.Popen(["flower-superexec", "--insecure", "--runtime-api-address", "127.0.0.1:1"])
    supernode_module.subprocess.Popen(["something-else"])
    assert started == [[sys.executable, "-m", "fedqc.transport.flower.warm_superexec", "--insecure",
                        "--runtime-api-address", "127.0.0.1:1"], ["something-else"]]


def test_another_flwr_version_gets_the_stock_supernode_and_superexec(supernode_module, monkeypatch):
    monkeypatch.setattr(flwr, "__version__", "1.42.0")
    original = supernode_module.time
    assert not fast_supernode.patch(supernode_module)
    assert supernode_module.time is original
    assert warm_superexec.warm_executor_class() is None


def test_a_bad_poll_interval_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedqc.transport.flower.fast_supernode", "--insecure"],
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
        seen.write_text("\0".join(sys.argv))
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
