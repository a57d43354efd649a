"""Multi-site deployment: per-site folders, the compose topology, and a loopback deployment run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedqc.config import load_config, parse_config
from fedqc.data.manifest import load_manifest
from fedqc.data.synth.cohort import generate_cohort
from fedqc.errors import UserError
from fedqc.experiment.run_dir import load_checkpoint
from fedqc.experiment.runner import simulate
from fedqc.protocol import same
from fedqc.transport.flower.deployment import SITE_MOUNT, compose_file, split_sites
from tests.conftest import checkpoint_path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "deploy-smoke.yaml"


@pytest.fixture(scope="module")
def smoke_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    generate_cohort(out, preset="smoke", size=16, seed=0)
    return out


@pytest.fixture(scope="module")
def smoke_sites(smoke_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("sites") / "deploy-smoke"
    split_sites(smoke_cohort / "manifest.csv", out)
    return out


def test_split_gives_each_site_only_its_own_rows_and_scans(tiny_cohort, tmp_path):
    full = load_manifest(tiny_cohort / "manifest.csv")
    sites = split_sites(tiny_cohort / "manifest.csv", tmp_path / "s")
    assert sorted(sites["site"]) == sorted(full["site"].unique())
    for r in sites.itertuples():
        folder = tmp_path / "s" / r.folder
        own = load_manifest(folder / "manifest.csv")  # checks every image opens
        assert set(own["site"]) == {r.site}
        assert sorted(own["subject"]) == sorted(full.loc[full["site"] == r.site, "subject"])
        assert (r.train, r.val, r.test) == tuple(int((own["split"] == s).sum()) for s in ("train", "val", "test"))
        assert {p.name for p in (folder / "images").iterdir()} == {Path(p).name for p in own["path"]}
        raw = pd.read_csv(folder / "manifest.csv")
        assert all(p.startswith("images/") for p in raw["path"])  # relative: the folder can be mounted anywhere


def test_split_refuses_to_clobber_and_rejects_unsafe_site_names(tiny_cohort, tmp_path):
    split_sites(tiny_cohort / "manifest.csv", tmp_path / "s")
    with pytest.raises(UserError, match="--overwrite"):
        split_sites(tiny_cohort / "manifest.csv", tmp_path / "s")
    split_sites(tiny_cohort / "manifest.csv", tmp_path / "s", overwrite=True)
    table = pd.read_csv(tiny_cohort / "manifest.csv")
    table.loc[table["site"] == "beta", "site"] = "../beta"
    table["path"] = [str(tiny_cohort / p) for p in table["path"]]
    table.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match=r"\.\./beta"):
        split_sites(tmp_path / "bad.csv", tmp_path / "bad")


def _check_topology(compose: dict, sites: list[str], sites_dir: str) -> None:
    services = compose["services"]
    nodes = {k: v for k, v in services.items() if k.startswith("supernode-")}
    assert len(nodes) == len(sites)
    for site in sites:
        name = site.lower()
        node, execu = services[f"supernode-{name}"], services[f"superexec-{name}"]
        assert f'site="{site}"' in " ".join(node["command"])
        assert not node.get("volumes"), "a SuperNode needs no data"
        assert execu["volumes"] == [f"{sites_dir}/{site}:{SITE_MOUNT}:ro"], "only its own folder, read-only"
        assert f"supernode-{name}:9094" in execu["command"]
    assert services["superexec-serverapp"]["volumes"] == ["./runs:/runs"]
    assert "--isolation" in services["superlink"]["command"]


def test_compose_has_one_supernode_per_site_each_mounting_only_its_folder(tiny_cohort, tmp_path):
    sites = split_sites(tiny_cohort / "manifest.csv", tmp_path / "s")["site"].tolist()
    assert len(sites) == 4  # alpha, beta, gamma and the harmful site
    text = compose_file(tmp_path / "s", config="configs/demo.yaml")
    _check_topology(yaml.safe_load(text), sites, str(tmp_path / "s"))
    if shutil.which("docker-compose"):  # Debian's docker-compose validates without an engine
        (tmp_path / "docker-compose.yml").write_text(text)
        proc = subprocess.run(["docker-compose", "-f", str(tmp_path / "docker-compose.yml"), "config", "-q"],
                              capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr


def test_shipped_compose_file_is_the_generated_one(smoke_sites, tmp_path, monkeypatch):
    shipped = (ROOT / "docker-compose.yml").read_text()
    shutil.copytree(smoke_sites, tmp_path / "sites" / "deploy-smoke")
    monkeypatch.chdir(tmp_path)
    # the shipped file names ./sites/deploy-smoke, relative to the repository
    generated = compose_file(Path("sites/deploy-smoke"), config="configs/deploy-smoke.yaml")
    assert shipped == generated
    _check_topology(yaml.safe_load(shipped), ["hospitalA", "hospitalB", "hospitalC"], "./sites/deploy-smoke")


def _no_process_mentions(*paths: Path) -> None:
    for p in paths:
        running = subprocess.run(["pgrep", "-af", str(p)], capture_output=True, text=True).stdout
        assert running == "", f"left running:\n{running}"


@pytest.mark.slow
@pytest.mark.deployment
def test_loopback_deployment_matches_inprocess_and_stops_everything(smoke_cohort, smoke_sites, tmp_path):
    out = tmp_path / "dep"
    proc = subprocess.run([str(ROOT / "scripts" / "run_local_deployment.sh"), str(SMOKE), str(smoke_sites), str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "flwr run status: finished:completed" in proc.stdout
    _no_process_mentions(out, smoke_sites)

    log = pd.read_csv(out / "clean" / "train_log.csv")
    assert len(log) == 6 and set(log["status"]) == {"ok"} and (log["hop_seconds"] > log["seconds"]).all()
    assert sorted(p.name for p in (out / "clean" / "predictions").iterdir()) == ["cycle_000.csv", "cycle_001.csv"]
    assert load_config(out / "config.yaml").engine == "deployment"

    cfg = load_config(SMOKE)
    inproc = tmp_path / "inproc"
    simulate(parse_config({**cfg.to_dict(), "engine": "inprocess", "manifest": str(smoke_cohort / "manifest.csv")}),
             inproc, quiet=True)
    for cycle in (0, 1):
        assert same(load_checkpoint(checkpoint_path(out / "clean", cycle))["state"],
                    load_checkpoint(checkpoint_path(inproc / "clean", cycle))["state"])
    a = pd.read_csv(out / "clean" / "predictions" / "cycle_001.csv").sort_values("subject", ignore_index=True)
    b = pd.read_csv(inproc / "clean" / "predictions" / "cycle_001.csv").sort_values("subject", ignore_index=True)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
@pytest.mark.deployment
def test_loopback_deployment_fails_when_the_serverapp_fails(smoke_sites, tmp_path):
    config = tmp_path / "broken.yaml"
    data = yaml.safe_load(SMOKE.read_text())
    data["train"]["order"] = ["nowhere"]  # valid config, but the ServerApp raises on the first cycle
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "dep"
    proc = subprocess.run([str(ROOT / "scripts" / "run_local_deployment.sh"), str(config), str(smoke_sites), str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode != 0
    assert "flwr run status: finished:failed" in proc.stdout
    _no_process_mentions(out, smoke_sites)
