"""Multi-site deployment: per-site folders, the compose topology, and a loopback deployment run."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml
from flwr.supercore.cli.flower_superexec import _parse_args as _parse_args_run_superexec
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

from fedqc.config import load_config, parse_config
from fedqc.data.manifest import load_manifest
from fedqc.data.synth.cohort import generate_cohort
from fedqc.errors import UserError
from fedqc.experiment.run_dir import load_checkpoint
from fedqc.experiment.runner import simulate
from fedqc.transport.flower.deploy.certificates import write_key_pair, write_site_key
from fedqc.transport.flower.deploy.sites import FAST_SUPERNODE, SITE_MOUNT, WARM_SUPEREXEC, compose_file, split_sites
from tests.conftest import checkpoint_path, same
from tests.test_bad_inputs import run as run_cli
from tests.test_privacy import check_replies

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "deploy-smoke.yaml"
SMOKE_QC = ROOT / "configs" / "deploy-smoke-qc.yaml"
# Written as sitecustomize.py on PYTHONPATH: every process of a loopback run appends "<program>\t<path>" to
# $FEDQC_TEST_OPENED for each file it opens under a path of $FEDQC_TEST_WATCH (os.pathsep-separated), through
# Python's audit hook on `open`.
OPEN_HOOK = """import os, sys
def _hook(event, args):
    if event == "open" and not isinstance(args[0], int):
        path = os.path.abspath(os.fsdecode(args[0]))
        if path.startswith(_watch):
            with open(_log, "a") as fh:
                fh.write(os.path.basename(sys.argv[0]) + "\\t" + path + "\\n")
if "FEDQC_TEST_OPENED" in os.environ:
    _log, _watch = os.environ["FEDQC_TEST_OPENED"], tuple(os.environ["FEDQC_TEST_WATCH"].split(os.pathsep))
    sys.addaudithook(_hook)
"""


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


def _flower_args(command: list[str]) -> argparse.Namespace:
    """A service's command parsed by Flower's own parser: a misspelt or removed flag fails here."""
    parsers = {"flower-superlink": _parse_args_run_superlink, "flower-supernode": _parse_args_run_supernode,
               "flower-superexec": _parse_args_run_superexec,
               # fedqc's fast path: Flower's SuperNode and SuperExec, the same arguments
               FAST_SUPERNODE[-1]: _parse_args_run_supernode, WARM_SUPEREXEC[-1]: _parse_args_run_superexec}
    program, args = (command[2], command[3:]) if command[:2] == ["python", "-m"] else (command[0], command[1:])
    return parsers[program]().parse_args(args)


def _check_topology(compose: dict, sites: list[str], sites_dir: str, *, tls: bool = False) -> None:
    services = compose["services"]
    nodes = {k: v for k, v in services.items() if k.startswith("supernode-")}
    assert len(nodes) == len(sites)
    ca = "./certificates/ca.crt:/certificates/ca.crt:ro"
    link = _flower_args(services["superlink"]["command"])
    assert link.isolation == "process"
    if tls:
        assert not link.insecure and link.enable_supernode_auth
        assert (link.ssl_ca_certfile, link.ssl_certfile, link.ssl_keyfile) == (
            "/certificates/ca.crt", "/certificates/server.crt", "/certificates/server.key")
        assert sorted(services["superlink"]["volumes"]) == [
            ca, "./certificates/server.crt:/certificates/server.crt:ro",
            "./certificates/server.key:/certificates/server.key:ro"], "never the CA's key"
    else:
        assert link.insecure and not link.enable_supernode_auth
    serverapp = services["superexec-serverapp"]
    assert serverapp["volumes"] == (["./runs:/runs", ca] if tls else ["./runs:/runs"])
    assert _flower_args(serverapp["command"]).root_certificates == ("/certificates/ca.crt" if tls else None)
    for site in sites:
        name = site.lower()
        node, execu = services[f"supernode-{name}"], services[f"superexec-{name}"]
        node_args = _flower_args(node["command"])
        assert node["command"][:3] == FAST_SUPERNODE and execu["command"][:3] == WARM_SUPEREXEC  # the fast path
        assert execu["environment"]["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.1"
        assert f'site="{site}"' in node_args.node_config
        assert _flower_args(execu["command"]).runtime_api_address == f"supernode-{name}:9094"
        folder = f"{sites_dir}/{site}"
        if tls:
            assert not node_args.insecure and node_args.root_certificates == "/certificates/ca.crt"
            assert node_args.auth_supernode_private_key == "/keys/supernode.key"
            assert node["volumes"] == [ca, f"{folder}/keys/supernode.key:/keys/supernode.key:ro"], \
                "its own key and the CA, no data"
            assert execu["volumes"] == [f"{folder}/manifest.csv:{SITE_MOUNT}/manifest.csv:ro",
                                        f"{folder}/images:{SITE_MOUNT}/images:ro"], "its data, never its key"
        else:
            assert node_args.insecure
            assert not node.get("volumes"), "a SuperNode needs no data"
            assert execu["volumes"] == [f"{folder}:{SITE_MOUNT}:ro"], "only its own folder, read-only"


def _docker_compose_accepts(text: str, folder: Path) -> None:
    """``docker-compose config`` validates the file without an engine, where Debian's docker-compose is installed."""
    if shutil.which("docker-compose"):
        (folder / "compose.yml").write_text(text)
        # Debian's docker-compose runs on the system Python: a PYTHONPATH into the venv (Ray sets one) breaks it
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        proc = subprocess.run(["docker-compose", "-f", str(folder / "compose.yml"), "config", "-q"],
                              capture_output=True, text=True, cwd=folder, env=env)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_compose_has_one_supernode_per_site_each_mounting_only_its_folder(tiny_cohort, tmp_path, tls):
    sites = split_sites(tiny_cohort / "manifest.csv", tmp_path / "s")["site"].tolist()
    assert len(sites) == 4  # alpha, beta, gamma and the harmful site
    text = compose_file(tmp_path / "s", config="configs/demo.yaml", tls=tls)
    _check_topology(yaml.safe_load(text), sites, str(tmp_path / "s"), tls=tls)
    _docker_compose_accepts(text, tmp_path)


@pytest.mark.parametrize("name,tls", [("docker-compose.yml", False), ("docker-compose.tls.yml", True)])
def test_shipped_compose_files_are_the_generated_ones(smoke_sites, tmp_path, monkeypatch, name, tls):
    shipped = (ROOT / name).read_text()
    shutil.copytree(smoke_sites, tmp_path / "sites" / "deploy-smoke")
    monkeypatch.chdir(tmp_path)
    # the shipped files name ./sites/deploy-smoke, relative to the repository
    generated = compose_file(Path("sites/deploy-smoke"), config="configs/deploy-smoke.yaml", tls=tls)
    assert shipped == generated
    _check_topology(yaml.safe_load(shipped), ["hospitalA", "hospitalB", "hospitalC"], "./sites/deploy-smoke", tls=tls)
    _docker_compose_accepts(shipped, tmp_path)


def test_compose_command_notes_sites_without_keys(smoke_sites, tmp_path):
    sites = tmp_path / "sites"
    shutil.copytree(smoke_sites, sites)
    write_site_key(sites / "hospitalB")
    args = ["sites", "compose", "--sites", str(sites), "--config", str(SMOKE), "--tls", "--out", str(tmp_path / "c.yml")]
    code, text, _ = run_cli(args)
    assert code == 0, text
    assert "no keys/supernode.key yet for hospitalA, hospitalC" in " ".join(text.split())
    assert "--enable-supernode-auth" in (tmp_path / "c.yml").read_text()


def _variant(source: Path, path: Path, changes: dict) -> Path:
    """A copy of the shipped config ``source`` at ``path``, with ``changes`` (dotted keys) set in it."""
    data = yaml.safe_load(source.read_text())
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = data
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    path.write_text(yaml.safe_dump(data))
    return path


def _no_process_mentions(*paths: Path) -> None:
    for p in paths:
        running = subprocess.run(["pgrep", "-af", str(p)], capture_output=True, text=True).stdout
        assert running == "", f"left running:\n{running}"


@pytest.fixture(scope="module")
def inprocess_smoke(smoke_cohort, tmp_path_factory) -> Path:
    """The smoke experiment in process: every loopback deployment must match it bit for bit."""
    out = tmp_path_factory.mktemp("inproc") / "run"
    cfg = load_config(SMOKE)
    simulate(parse_config({**cfg.to_dict(), "engine": "inprocess", "manifest": str(smoke_cohort / "manifest.csv")}),
             out, quiet=True)
    return out


def _assert_matches_inprocess(out: Path, reference: Path, cycles: int) -> None:
    """Same weights after every cycle and same predictions after the last as the in-process run."""
    for cycle in range(cycles):
        assert same(load_checkpoint(checkpoint_path(out / "clean", cycle))["state"],
                    load_checkpoint(checkpoint_path(reference / "clean", cycle))["state"])
    last = f"cycle_{cycles - 1:03d}.csv"
    a = pd.read_csv(out / "clean" / "predictions" / last).sort_values("subject", ignore_index=True)
    b = pd.read_csv(reference / "clean" / "predictions" / last).sort_values("subject", ignore_index=True)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
@pytest.mark.deployment
def test_loopback_deployment_fails_when_the_serverapp_fails(smoke_sites, tmp_path):
    # valid config, but the ServerApp raises on the first cycle
    config = _variant(SMOKE, tmp_path / "broken.yaml", {"train.order": ["nowhere"]})
    out = tmp_path / "dep"
    # on Flower's stock SuperNodes (FAST=0): that path, kept for comparison, still starts, runs and stops
    proc = subprocess.run([str(ROOT / "scripts" / "run_local_deployment.sh"), str(config), str(smoke_sites), str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "FAST": "0"})
    assert proc.returncode != 0
    assert "3 stock SuperNodes" in proc.stdout and "flwr run status: finished:failed" in proc.stdout
    _no_process_mentions(out, smoke_sites)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, str]:
    """Run a short-lived Flower client in its own process group; the group is killed afterwards, whatever happens.

    Output goes to ``log``, not a pipe: a SuperNode's SuperExec child would hold a pipe open after the SuperNode ends.
    """
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=60)
        return proc.returncode, log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_for(path: Path, script: subprocess.Popen, log: Path) -> None:
    """Until ``path`` exists; fails with the script's output if the script ends first."""
    deadline = time.monotonic() + 300
    while not path.exists():
        assert script.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.deployment
def test_tls_deployment_with_supernode_auth_matches_inprocess_and_refuses_strangers(smoke_sites, inprocess_smoke,
                                                                                    tmp_path):
    # one cycle: three hops and an evaluation round cross TLS, and cycle 0 is the in-process run's cycle 0
    config = _variant(SMOKE, tmp_path / "deploy-smoke.yaml", {"train.cycles": 1})
    out, log = tmp_path / "dep", tmp_path / "script.log"
    rogue = write_key_pair(tmp_path / "rogue.key", tmp_path / "rogue.pub", comment="rogue")  # never registered
    bin_dir = ROOT / ".venv" / "bin"  # SuperNodes start flower-superexec from PATH
    env = {**os.environ, "TLS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    with open(log, "w") as fh:
        script = subprocess.Popen([str(ROOT / "scripts" / "run_local_deployment.sh"), str(config), str(smoke_sites),
                                   str(out)], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                  start_new_session=True)
    try:
        _wait_for(out / "logs" / "run.log", script, log)  # the SuperNodes are started and `flwr run` has begun
        link = tomllib.loads((out / ".flwr" / "config.toml").read_text())["superlink"]["loopback"]["address"]
        ca = out / "tls" / "ca.crt"
        supernode = [str(bin_dir / "flower-supernode"), "--superlink", link, "--host", "127.0.0.1", "--max-retries", "0"]

        # a SuperNode whose key the coordinator never registered: refused at activation
        code, text = _probe([*supernode, "--port", str(_free_port()), "--root-certificates", str(ca),
                             "--auth-supernode-private-key", str(rogue.private)], env, tmp_path / "rogue.log")
        assert code != 0 and "Failed to activate SuperNode" in text and "SuperNode ID" not in text, text
        assert "No SuperNode found with the given public key" in (out / "logs" / "superlink.log").read_text()
        # plaintext clients: a SuperNode and the flwr CLI get no answer from the TLS SuperLink
        code, text = _probe([*supernode, "--port", str(_free_port()), "--insecure"], env, tmp_path / "plain.log")
        assert code != 0 and "Failed to initialize the connection to the SuperLink" in text, text
        plain_home = tmp_path / "plain-cli"
        plain_home.mkdir()
        (plain_home / "config.toml").write_text(f'[superlink.plain]\naddress = "{link}"\ninsecure = true\n')
        code, text = _probe([str(bin_dir / "flwr"), "ls", "plain", "--format", "json"],
                            {**env, "FLWR_HOME": str(plain_home)}, tmp_path / "plain-cli.log")
        assert json.loads(text[text.index("{"):])["success"] is False, text
        # over TLS the CLI gets through, and the SuperLink knows exactly the three registered SuperNodes
        code, text = _probe([str(bin_dir / "flwr"), "supernode", "list", "loopback", "--format", "json"],
                            {**env, "FLWR_HOME": str(out / ".flwr")}, tmp_path / "list.log")
        assert code == 0 and len(json.loads(text[text.index("{"):])["nodes"]) == 3, text

        script.wait(timeout=900)
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGTERM)  # the script's trap stops everything it started
            script.wait(timeout=60)
    output = log.read_text()
    assert script.returncode == 0, output[-3000:]
    assert "(TLS, SuperNode authentication)" in output and "flwr run status: finished:completed" in output
    _no_process_mentions(out, smoke_sites, tmp_path)
    assert (out / "logs" / "register.log").read_text().count("registered successfully") == 3
    assert "SuperNode authentication is disabled" not in (out / "logs" / "superlink.log").read_text()
    log_table = pd.read_csv(out / "clean" / "train_log.csv")
    assert len(log_table) == 3 and set(log_table["status"]) == {"ok"}
    _assert_matches_inprocess(out, inprocess_smoke, cycles=1)


@pytest.mark.slow
@pytest.mark.deployment
def test_a_supernode_killed_mid_run_costs_its_hop_and_trains_again_once_restarted(smoke_sites, tmp_path):
    # no calibration round: a shorter test, the same hops
    config = _variant(SMOKE, tmp_path / "deploy-smoke.yaml", {"calibration.threshold": "fixed"})
    out, log, victim = tmp_path / "dep", tmp_path / "script.log", "hospitalA"  # cycle 0 visits C, A, B
    node_log = out / "logs" / f"supernode-{victim}.log"
    bin_dir = ROOT / ".venv" / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    with open(log, "w") as fh:
        script = subprocess.Popen([str(ROOT / "scripts" / "run_local_deployment.sh"), str(config), str(smoke_sites),
                                   str(out)], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                  start_new_session=True)
    restarted = None
    try:
        deadline = time.monotonic() + 300
        while not (node_log.is_file() and "Receiving: train message" in node_log.read_text()):
            assert script.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        # the site's machine crashes while it trains: its SuperNode, SuperExec and ClientApp, at once
        pid = int((out / "logs" / f"supernode-{victim}.pid").read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        os.killpg(pid, signal.SIGKILL)
        # and comes back at once, as it was: without a key it registers anew, under a new node id
        with open(out / "logs" / f"supernode-{victim}-restarted.log", "w") as fh:
            restarted = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        script.wait(timeout=900)
    finally:
        for proc in (script, restarted):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the script's trap stops everything it started
                proc.wait(timeout=60)
    output = log.read_text()
    assert script.returncode == 0 and "flwr run status: finished:completed" in output, output[-3000:]
    _no_process_mentions(out, smoke_sites)

    hops = pd.read_csv(out / "clean" / "train_log.csv").set_index(["cycle", "site"])
    failed = hops.loc[(0, victim)]
    assert failed["status"] == "failed" and "Node Unavailable" in failed["note"], failed["note"]
    assert hops.drop(index=(0, victim))["status"].eq("ok").all(), hops
    assert hops.loc[(1, victim), "n_scans"] == 8  # trains in the next cycle, on its restarted SuperNode
    test_scans = set(load_manifest(smoke_sites / victim / "manifest.csv").query("split == 'test'")["subject"])
    for cycle in (0, 1):  # from the hop after the crash on, the restarted SuperNode also scores its site
        scored = set(pd.read_csv(out / "clean" / "predictions" / f"cycle_{cycle:03d}.csv")["subject"])
        assert test_scans <= scored


def test_loopback_script_refuses_a_bad_fast_switch_in_one_line_before_starting_anything(smoke_sites, tmp_path):
    out = tmp_path / "dep"
    proc = subprocess.run([str(ROOT / "scripts" / "run_local_deployment.sh"), str(SMOKE), str(smoke_sites), str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "FAST": "yes"})
    assert proc.returncode == 2 and proc.stderr.strip() == "error: FAST must be 0 or 1, got yes"
    assert not out.exists()


def test_loopback_script_refuses_an_oracle_qc_start_in_one_line_before_starting_anything(smoke_sites, tmp_path):
    config = _variant(SMOKE_QC, tmp_path / "oracle.yaml", {"qc": {"start": "clean"}})
    out = tmp_path / "dep"
    proc = subprocess.run([str(ROOT / "scripts" / "run_local_deployment.sh"), str(config), str(smoke_sites), str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "qc.start: clean starts QC from the clean arm, an oracle" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.deployment
def test_loopback_qc_without_ground_truth_never_reads_a_manifest_and_sends_only_allowed_replies(smoke_sites, tmp_path):
    # the shipped config for one cycle (a QC arm from scratch needs no warm-up): three QC hops with their verification
    config = _variant(SMOKE_QC, tmp_path / "deploy-smoke-qc.yaml", {"train.cycles": 1})
    cfg = load_config(config)
    assert cfg.manifest is None and cfg.arms == ("qc",) and cfg.qc.start == "scratch"
    out, messages, opened, hook = tmp_path / "dep", tmp_path / "messages.jsonl", tmp_path / "opened.tsv", tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(OPEN_HOOK)
    env = {**os.environ, "FEDQC_MESSAGE_LOG": str(messages), "FEDQC_TEST_OPENED": str(opened),
           "FEDQC_TEST_WATCH": os.pathsep.join([os.path.join(smoke_sites, ""), str(config)]),
           "PYTHONPATH": os.pathsep.join(
               [str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([str(ROOT / "scripts" / "run_local_deployment.sh"), str(config), str(smoke_sites),
                           str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "flwr run status: finished:completed" in proc.stdout
    _no_process_mentions(out, smoke_sites)

    # the ServerApp opened its config (so the hook watched it) and no site file; the ClientApps read their manifests
    readers = pd.read_csv(opened, sep="\t", names=["program", "path"])
    server = set(readers.loc[readers["program"] == "flwr-serverapp", "path"])
    assert server == {str(config)}, readers
    own = readers[readers["program"] == "flwr-clientapp"]["path"]
    assert {Path(p).name for p in own} >= {"manifest.csv"}, readers
    # the QC arm alone (no clean arm, no trusted warm-up), its outputs, and no detection.csv: no ground truth
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["config.yaml", "logs", "qc"]
    qc = out / "qc"
    for name in ("qc_log.csv", "qc_summary.json", "eliminated.csv", "scan_issues.csv", "train_log.csv", "cycles.csv"):
        assert (qc / name).is_file(), name
    assert not (qc / "detection.csv").exists()
    summary = json.loads((qc / "qc_summary.json").read_text())
    assert summary["start"] == "scratch" and summary["oracle_start"] is False and summary["verifications"] > 0
    hops = pd.read_csv(qc / "train_log.csv")
    assert len(hops) == 3 and set(hops["site"]) == {"hospitalA", "hospitalB", "hospitalC"}
    assert sorted(p.name for p in (qc / "checkpoints").iterdir()) == ["cycle_000.pt"]

    # every reply that reached the server: model arrays, counts, scores, labels and ids only
    records = [json.loads(line) for line in messages.read_text().splitlines()]
    assert {r["type"] for r in records} == {"query", "train", "evaluate"}
    largest_site = max(len(load_manifest(smoke_sites / s / "manifest.csv")) for s in ("hospitalA", "hospitalB",
                                                                                       "hospitalC"))
    check_replies(records, cfg, largest_site)
    assert any("ood" in r["metrics"] for r in records)


def _serverapp_pids(link: str) -> list[int]:
    """The ServerApp processes (``flwr-serverapp``) that talk to the SuperLink at ``link``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().decode().split("\0")
            if any(a.endswith("flwr-serverapp") for a in args) and link in args:
                pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.slow
@pytest.mark.deployment
def test_a_loopback_deployment_whose_serverapp_died_resumes_and_ends_as_the_inprocess_run(smoke_sites,
                                                                                         inprocess_smoke, tmp_path):
    # the shipped smoke config on the fast path; its ServerApp is killed once cycle 0 is committed
    out, log = tmp_path / "dep", tmp_path / "script.log"
    command = [str(ROOT / "scripts" / "run_local_deployment.sh"), str(SMOKE), str(smoke_sites), str(out)]
    first = checkpoint_path(out / "clean", 0)
    with open(log, "w") as fh:
        script = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        _wait_for(first, script, log)
        # the ServerApp dies once cycle 0 is committed, while cycle 1 trains; the operator then stops the deployment
        link = tomllib.loads((out / ".flwr" / "config.toml").read_text())["superlink"]["loopback"]["address"]
        (pid,) = _serverapp_pids(link)
        os.kill(pid, signal.SIGKILL)
        committed = first.stat().st_mtime_ns
        assert not checkpoint_path(out / "clean", 1).exists()
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGTERM)  # the script's trap stops everything it started
        script.wait(timeout=60)
    _no_process_mentions(out, smoke_sites)

    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "RESUME": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 fast SuperNodes" in proc.stdout and "flwr run status: finished:completed" in proc.stdout
    _no_process_mentions(out, smoke_sites)
    assert (out / "logs" / "previous" / "run.log").is_file()  # the killed attempt's logs are kept
    assert first.stat().st_mtime_ns == committed  # cycle 0 was not trained again
    hops = pd.read_csv(out / "clean" / "train_log.csv")
    assert hops.groupby("cycle").size().to_dict() == {0: 3, 1: 3} and set(hops["status"]) == {"ok"}
    assert (hops["hop_seconds"] > hops["seconds"]).all()
    assert sorted(p.name for p in (out / "clean" / "predictions").iterdir()) == ["cycle_000.csv", "cycle_001.csv"]
    assert load_config(out / "config.yaml").engine == "deployment"
    _assert_matches_inprocess(out, inprocess_smoke, cycles=2)  # weights and predictions of the uninterrupted run
