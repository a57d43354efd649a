"""docker compose on a real Docker engine: the smoke experiment's containers give the in-process run's results.

Marked ``docker`` and deselected by default (``addopts`` in pyproject.toml): it needs the image
(``scripts/build_image.sh``) and takes about a minute. ``make compose-smoke`` runs it; without an engine, the
image or docker-compose it skips and says which is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from fedqc.transport.flower.deploy.certificates import write_site_keys
from fedqc.transport.flower.deploy.sites import CERTS_MOUNT, KEY_MOUNT, SITE_MOUNT, read_sites
from tests import test_deployment
from tests.conftest import checkpoint_path
from tests.test_deployment import SMOKE, _assert_matches_inprocess

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("IMAGE", "fedqc:latest")
# the loopback tests' fixtures: the smoke cohort, its sites and its in-process run
smoke_cohort, smoke_sites, inprocess_smoke = (test_deployment.smoke_cohort, test_deployment.smoke_sites,
                                              test_deployment.inprocess_smoke)


def _missing() -> str | None:
    """Why the compose run cannot happen here, or None."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    if shutil.which("docker-compose") is None:
        return "no docker-compose (apt-get install docker-compose)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return "no Docker engine answers (`docker info` fails)"
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, timeout=30).returncode != 0:
        return f"image {IMAGE} not built (scripts/build_image.sh)"
    return None


pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def engine() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)


def _project_containers(project: str) -> list[dict]:
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                         capture_output=True, text=True, check=True).stdout.split()
    if not ids:
        return []
    return json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout)


def _expected_mounts(service: str, site: str | None, sites: Path, out: Path, tls: bool) -> set[tuple]:
    """(host path, container path, writable) of each mount a service may have: a site's data only in its SuperExec."""
    ca = {(str(out / "tls" / "ca.crt"), f"{CERTS_MOUNT}/ca.crt", False)} if tls else set()
    if service == "superlink":
        return ca | ({(str(out / "tls" / f), f"{CERTS_MOUNT}/{f}", False) for f in ("server.crt", "server.key")}
                     if tls else set())
    if service == "superexec-serverapp":
        return ca | {(str(out), "/runs/deploy-smoke", True),
                     (str(SMOKE), "/app/configs/deploy-smoke.yaml", False)}
    if service.startswith("supernode-"):
        return ca | ({(str(sites / site / "keys" / "supernode.key"), KEY_MOUNT, False)} if tls else set())
    if tls:  # the ClientApps' container never sees the key
        return {(str(sites / site / p), f"{SITE_MOUNT}/{p}", False) for p in ("manifest.csv", "images")}
    return {(str(sites / site), SITE_MOUNT, False)}


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_compose_run_on_docker_matches_inprocess_with_each_site_mounting_only_its_folder(
        engine, smoke_sites, inprocess_smoke, tmp_path, tls):
    out = tmp_path / "run"
    if tls:  # the sites' own key pairs, readable by the containers' user
        smoke_sites = shutil.copytree(smoke_sites, tmp_path / "sites")
        for key in write_site_keys(smoke_sites).values():
            os.chown(key.private, 1000, -1)
    env = {**os.environ, "KEEP": "1", "IMAGE": IMAGE, "TLS": str(int(tls))}
    result = subprocess.run([str(ROOT / "scripts" / "run_compose.sh"), str(SMOKE), str(smoke_sites), str(out)],
                            capture_output=True, text=True, env=env, timeout=900)
    project = (out / "logs" / "project").read_text().strip()
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "flwr run status: finished:completed" in result.stdout
        containers = {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in _project_containers(project)}
        sites = read_sites(smoke_sites)
        services = {"superlink", "superexec-serverapp"} | {f"{k}-{s.lower()}" for s in sites
                                                            for k in ("supernode", "superexec")}
        assert set(containers) == services
        for service, c in containers.items():
            site = next((s for s in sites if service.endswith(f"-{s.lower()}")), None)
            mounts = {(m["Source"], m["Destination"], m["RW"]) for m in c["Mounts"]}
            assert mounts == _expected_mounts(service, site, smoke_sites, out, tls), service
    finally:
        subprocess.run(["docker-compose", "-p", project, "-f", str(out / ".flwr" / "docker-compose.yml"),
                        "down", "--timeout", "5"], capture_output=True, timeout=120)
    assert _project_containers(project) == []
    _assert_matches_inprocess(out, inprocess_smoke, cycles=2)


def _container(project: str, service: str) -> str:
    return f"{project}_{service}_1"  # docker-compose 1.x names


def _start_script(out: Path, sites: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen([str(ROOT / "scripts" / "run_compose.sh"), str(SMOKE), str(sites), str(out)],
                                stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "IMAGE": IMAGE, **(env or {})},
                                start_new_session=True)


def _wait(condition, script: subprocess.Popen, log: Path, timeout: float = 600, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert script.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(every)


def _stop(script: subprocess.Popen) -> None:
    if script.poll() is None:
        os.killpg(script.pid, signal.SIGTERM)  # the script's trap removes the project's containers
    script.wait(timeout=120)


def test_a_site_container_killed_mid_run_costs_its_hop_and_trains_again_once_restarted(engine, smoke_sites,
                                                                                       tmp_path):
    out, log, victim = tmp_path / "run", tmp_path / "script.log", "hospitalA"  # cycle 0 visits C, A, B
    script = _start_script(out, smoke_sites, log)
    project = None
    try:
        _wait(lambda: (out / "logs" / "project").is_file(), script, log)
        project = (out / "logs" / "project").read_text().strip()
        node = _container(project, f"supernode-{victim.lower()}")
        site = [node, _container(project, f"superexec-{victim.lower()}")]

        def training() -> bool:
            logs = subprocess.run(["docker", "logs", node], capture_output=True, text=True)
            return "Receiving: train message" in logs.stdout + logs.stderr
        _wait(training, script, log, every=0.05)
        # the site's machine crashes while it trains (its SuperNode and SuperExec containers) and comes back as it was
        subprocess.run(["docker", "kill", *site], check=True, capture_output=True)
        subprocess.run(["docker", "start", *site], check=True, capture_output=True)
        script.wait(timeout=900)
    finally:
        _stop(script)
    output = log.read_text()
    assert script.returncode == 0 and "flwr run status: finished:completed" in output, output[-3000:]
    assert project is not None and _project_containers(project) == []
    hops = pd.read_csv(out / "clean" / "train_log.csv").set_index(["cycle", "site"])
    failed = hops.loc[(0, victim)]
    assert failed["status"] == "failed" and "Node Unavailable" in failed["note"], failed["note"]
    assert hops.drop(index=(0, victim))["status"].eq("ok").all(), hops
    assert hops.loc[(1, victim), "n_scans"] == 8  # trains in the next cycle, on its restarted SuperNode


def test_a_serverapp_container_killed_resumes_and_ends_as_the_inprocess_run(engine, smoke_sites, inprocess_smoke,
                                                                            tmp_path):
    out, log = tmp_path / "run", tmp_path / "script.log"
    first = checkpoint_path(out / "clean", 0)
    script = _start_script(out, smoke_sites, log)
    try:
        _wait(first.is_file, script, log)
        # the server's ServerApp container dies once cycle 0 is committed; the operator then stops the deployment
        project = (out / "logs" / "project").read_text().strip()
        subprocess.run(["docker", "kill", _container(project, "superexec-serverapp")], check=True, capture_output=True)
        committed = first.stat().st_mtime_ns
        assert not checkpoint_path(out / "clean", 1).exists()
    finally:
        _stop(script)
    assert _project_containers(project) == []
    resumed = _start_script(out, smoke_sites, tmp_path / "resumed.log", {"RESUME": "1"})
    try:
        resumed.wait(timeout=900)
    finally:
        _stop(resumed)
    output = (tmp_path / "resumed.log").read_text()
    assert resumed.returncode == 0 and "flwr run status: finished:completed" in output, output[-3000:]
    assert (out / "logs" / "previous" / "compose.log").is_file()  # the killed attempt's logs are kept
    assert first.stat().st_mtime_ns == committed  # cycle 0 was not trained again
    hops = pd.read_csv(out / "clean" / "train_log.csv")
    assert hops.groupby("cycle").size().to_dict() == {0: 3, 1: 3} and set(hops["status"]) == {"ok"}
    _assert_matches_inprocess(out, inprocess_smoke, cycles=2)
