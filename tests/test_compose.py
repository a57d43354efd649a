"""docker compose on a real Docker engine: the smoke experiment's containers give the in-process run's results.

Marked ``docker`` and deselected by default (``addopts`` in pyproject.toml): it needs the image
(``scripts/build_image.sh``) and takes about a minute. ``make compose-smoke`` runs it; without an engine, the
image or docker-compose it skips and says which is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fedqc.transport.flower.deploy.sites import SITE_MOUNT, read_sites
from tests.test_deployment import (  # noqa: F401  (fixtures)
    SMOKE,
    _assert_matches_inprocess,
    inprocess_smoke,
    smoke_cohort,
    smoke_sites,
)

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("IMAGE", "fedqc:latest")


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


def test_compose_run_on_docker_matches_inprocess_with_each_site_mounting_only_its_folder(
        engine, smoke_sites, inprocess_smoke, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "KEEP": "1", "IMAGE": IMAGE}
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
            mounts = {(m["Source"], m["Destination"], m["RW"]) for m in c["Mounts"]}
            if service.startswith("superexec-") and service != "superexec-serverapp":
                site = next(s for s in sites if s.lower() == service.removeprefix("superexec-"))
                assert mounts == {(str(smoke_sites / site), SITE_MOUNT, False)}, service
            elif service == "superexec-serverapp":
                assert (str(out), "/runs/deploy-smoke", True) in mounts
                assert all(not src.startswith(str(smoke_sites)) for src, _, _ in mounts)
            else:  # the SuperLink and the SuperNodes see no data
                assert mounts == set(), service
    finally:
        subprocess.run(["docker-compose", "-p", project, "-f", str(out / ".flwr" / "docker-compose.yml"),
                        "down", "--timeout", "5"], capture_output=True, timeout=120)
    assert _project_containers(project) == []
    _assert_matches_inprocess(out, inprocess_smoke, cycles=2)
