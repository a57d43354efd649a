"""Travelling strategy: order, batching, optimizer travel, lr, determinism, resume, Flower parity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedqc.data.manifest import load_manifest
from fedqc.errors import BrokenScanError, RunDirError, UserError
from fedqc.experiment.arms import arms_for, harmful_scans
from fedqc.experiment.run_dir import RunDir, load_checkpoint
from fedqc.experiment.runner import failing_sites, run_arm, run_experiment, simulate
from fedqc.models.state import initial_state
from fedqc.protocol import TrainRequest, batches, check_update
from fedqc.site import Site
from fedqc.strategies.cycles import PlainVisitor, hop_seed, learning_rate
from fedqc.strategies.travelling import site_order
from fedqc.transport.inprocess import InProcessTransport
from tests.conftest import checkpoint_path, same, tiny_config


@pytest.fixture
def transport(tiny_cfg):
    return InProcessTransport(load_manifest(tiny_cfg.manifest), tiny_cfg.model)


def test_order_policies():
    sites = ["a", "b", "c", "d", "e", "f"]
    orders = [site_order("random", sites, seed=0, cycle=c) for c in range(4)]
    assert all(sorted(o) == sites for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # reshuffled every cycle
    assert orders[2] == site_order("random", sites, seed=0, cycle=2)  # seeded
    assert site_order("fixed", sites[::-1], seed=0, cycle=3) == sites
    assert site_order(("c", "a"), sites, seed=0, cycle=0) == ["c", "a"]
    with pytest.raises(UserError, match="without training data"):
        site_order(("zz",), sites, seed=0, cycle=0)


@pytest.mark.parametrize("n,sizes", [(1, [1]), (4, [4]), (5, [5]), (6, [5, 1]), (11, [5, 5, 1])])
def test_batch_size_rule_keeps_last_partial_batch(n, sizes):
    assert [len(b) for b in batches(list(range(n)), 5)] == sizes


def request(seed=1, lr=1e-3, **kw):
    return TrainRequest(lr=lr, seed=seed, batch_size=5, **kw)


def test_tiny_site_trains_every_scan(transport, tiny_cfg):
    state = initial_state(tiny_cfg.model, tiny_cfg.train.seed)
    res = transport.train("gamma", state, request())
    assert res.n_scans == 1 and len(res.subjects) == 1
    res = transport.train("alpha", state, request())
    assert res.n_scans == 13  # 12 good + 1 harmful scan, batches 5, 5, 3


def test_the_site_never_sees_ground_truth_and_trains_what_it_is_told(tiny_cfg):
    manifest = load_manifest(tiny_cfg.manifest)
    site = Site("alpha", manifest[manifest["site"] == "alpha"], model=tiny_cfg.model)
    assert "harm" not in site.table.columns and "harm_detail" not in site.table.columns
    leave_out = harmful_scans(manifest)["alpha"]  # the runner's oracle, from the manifest
    assert len(leave_out) == 1
    res = site.train(initial_state(tiny_cfg.model, 0), request(exclude=leave_out))
    assert res.n_scans == 12 and not set(leave_out) & set(res.subjects)


def test_optimizer_state_travels(transport, tiny_cfg):
    state = initial_state(tiny_cfg.model, tiny_cfg.train.seed)
    assert not any(k.startswith("optim.") for k in state)
    good = harmful_scans(load_manifest(tiny_cfg.manifest))
    a = transport.train("alpha", state, request(exclude=good["alpha"]))
    assert float(a.state["optim.0.step"]) == 3  # 12 scans -> 3 batches
    b = transport.train("beta", a.state, request(seed=2, exclude=good["beta"]))
    assert float(b.state["optim.0.step"]) == 5  # Adam continued at the next site: 3 + 2 batches
    assert not np.array_equal(a.state["optim.0.exp_avg"], b.state["optim.0.exp_avg"])


def test_learning_rate_schedule(transport, tiny_cfg):
    assert learning_rate(1e-4, 0.1, 0) == 1e-4
    assert math.isclose(learning_rate(1e-4, 0.1, 10), 1e-4 * math.exp(-1.0))
    transport.train("beta", initial_state(tiny_cfg.model, 0), request(lr=0.0123))
    assert transport.sites["beta"].optimizer.param_groups[0]["lr"] == 0.0123


def test_hop_seed_depends_on_cycle_and_site():
    assert hop_seed(0, 1, "a") == hop_seed(0, 1, "a")
    assert len({hop_seed(0, c, s) for c in range(3) for s in "ab"}) == 6


def _final(out: Path, arm: str, cycle: int):
    return load_checkpoint(checkpoint_path(out / arm, cycle))["state"]


def test_deterministic_runs(transport, tiny_cfg, tmp_path):
    for name in ("one", "two"):
        run_experiment(tiny_cfg, transport, tmp_path / name, quiet=True)
    for arm in ("clean", "dirty"):
        assert same(_final(tmp_path / "one", arm, 2), _final(tmp_path / "two", arm, 2))
    log = pd.read_csv(tmp_path / "one" / "clean" / "train_log.csv")
    assert list(log.columns) == ["cycle", "hop", "site", "n_scans", "loss", "seconds", "status", "note", "hop_seconds"]
    assert len(log) == 3 * 3
    cycles = pd.read_csv(tmp_path / "one" / "clean" / "cycles.csv")
    assert list(cycles["cycle"]) == [0, 1, 2] and (cycles["hops"] == 3).all()
    assert (cycles["seconds"] >= cycles["test_seconds"]).all()
    assert (cycles["seconds"] >= log.groupby("cycle")["hop_seconds"].sum().to_numpy()).all()
    preds = pd.read_csv(tmp_path / "one" / "clean" / "predictions" / "cycle_002.csv")
    assert list(preds.columns) == ["subject", "site", "label", "score", "sex", "age"]
    assert len(preds) == 4 + 3 + 2  # every test scan
    assert sorted(p.name for p in (tmp_path / "one" / "dirty" / "checkpoints").iterdir()) == \
        ["cycle_001.pt", "cycle_002.pt"]  # dirty starts from clean's cycle W = 0


class Interrupt(Exception):
    pass


class CutVisitor(PlainVisitor):
    """Stops the run after the cycle's logs are written, before its checkpoint."""

    def end_cycle(self, cycle):
        if cycle == 1:
            raise Interrupt


@pytest.mark.parametrize("where", ["mid_cycle", "before_checkpoint"])
def test_resume_is_bit_identical(where, transport, tiny_cfg, tmp_path):
    arm = arms_for(tiny_cfg)[0]
    leave_out = harmful_scans(load_manifest(tiny_cfg.manifest))

    def run(out, visitor_cls=PlainVisitor, **kw):
        return run_arm(arm, transport, tiny_cfg, RunDir(out), visitor=visitor_cls(transport, tiny_cfg.train, leave_out),
                       leave_out=leave_out, **kw)

    full = run(tmp_path / "full")

    def on_hop(cycle, hop, site, outcome):
        if where == "mid_cycle" and cycle == 1 and hop == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tmp_path / "cut", CutVisitor if where == "before_checkpoint" else PlainVisitor, on_hop=on_hop)
    assert not checkpoint_path(tmp_path / "cut" / "clean", 1).exists()
    resumed = run(tmp_path / "cut", resume=True)
    assert same(full, resumed)
    a = pd.read_csv(tmp_path / "full" / "clean" / "train_log.csv").drop(columns=["seconds", "hop_seconds"])
    b = pd.read_csv(tmp_path / "cut" / "clean" / "train_log.csv").drop(columns=["seconds", "hop_seconds"])
    pd.testing.assert_frame_equal(a, b)
    assert list(pd.read_csv(tmp_path / "cut" / "clean" / "cycles.csv")["cycle"]) == [0, 1, 2]


def test_existing_run_dir_is_not_overwritten(tiny_cfg, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("keep")
    with pytest.raises(RunDirError, match="--resume"):
        simulate(tiny_cfg, tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "x").read_text() == "keep"


def test_resume_refuses_another_config_but_not_an_older_snapshot_of_the_same(tiny_cfg, tmp_path):
    import dataclasses

    import yaml

    from fedqc.experiment.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    run.prepare(tiny_cfg, resume=False, overwrite=False)
    (run.root / "clean").mkdir()
    with pytest.raises(RunDirError, match="different config"):
        run.prepare(dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, lr=0.5)), resume=True,
                    overwrite=False)
    older = yaml.safe_load(run.config.read_text())  # written before `scenario` and `train.rebalance` existed
    del older["scenario"], older["train"]["rebalance"]
    run.config.write_text(yaml.safe_dump(older))
    run.prepare(tiny_cfg, resume=True, overwrite=False)  # the same settings: resumes


def test_a_run_folder_with_the_old_key_names_resumes(tiny_cfg, tmp_path, caplog):
    """A run folder whose config.yaml has fedqc 0.1's key names (train.warmup, strategy.warmup) resumes to the same
    weights, with a one-line notice per renamed key; so does a config file with them."""
    import yaml

    from fedqc.config import load_config

    run = tmp_path / "run"
    simulate(tiny_cfg, run, quiet=True)
    final = {arm: _final(run, arm, 2) for arm in ("clean", "dirty")}
    old = yaml.safe_load((run / "config.yaml").read_text())
    old["train"]["warmup"] = old["train"].pop("branch_cycle")
    old["strategy"]["warmup"] = old["strategy"].pop("averaging")
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    for arm in final:
        checkpoint_path(run / arm, 2).unlink()
    with caplog.at_level("WARNING", logger="fedqc.config.load"):
        simulate(tiny_cfg, run, resume=True, quiet=True)
    for arm, state in final.items():
        assert same(_final(run, arm, 2), state)
    assert [r.getMessage() for r in caplog.records] == [
        f"{run / 'config.yaml'}: train.warmup is deprecated, read as train.branch_cycle",
        f"{run / 'config.yaml'}: strategy.warmup is deprecated, read as strategy.averaging"]
    old["name"] = "from-an-old-config"
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    cfg = load_config(tmp_path / "old.yaml", {"strategy.warmup": "fedprox"})
    assert (cfg.train.branch_cycle, cfg.strategy.averaging) == (tiny_cfg.train.branch_cycle, "fedprox")


@pytest.mark.flower
@pytest.mark.slow
def test_flower_simulation_matches_inprocess(tiny_cohort, tmp_path):
    over = {"train.cycles": 2, "arms": ["clean", "dirty", "qc"], "qc": {"audit": True}}
    cfg = tiny_config(tiny_cohort / "manifest.csv", **over)
    simulate(cfg, tmp_path / "inproc", quiet=True)
    flower_cfg = tiny_config(tiny_cohort / "manifest.csv", **over, engine="flower")
    simulate(flower_cfg, tmp_path / "flower", quiet=True)
    for name in ("qc_log.csv", "audit.csv", "eliminated.csv"):
        a = pd.read_csv(tmp_path / "inproc" / "qc" / name).drop(columns=["seconds", "hop_seconds"], errors="ignore")
        b = pd.read_csv(tmp_path / "flower" / "qc" / name).drop(columns=["seconds", "hop_seconds"], errors="ignore")
        pd.testing.assert_frame_equal(a, b)
    for arm, cycle in (("clean", 1), ("dirty", 1), ("qc", 1)):
        assert same(_final(tmp_path / "inproc", arm, cycle), _final(tmp_path / "flower", arm, cycle))
        a = pd.read_csv(tmp_path / "inproc" / arm / "predictions" / f"cycle_{cycle:03d}.csv")
        b = pd.read_csv(tmp_path / "flower" / arm / "predictions" / f"cycle_{cycle:03d}.csv")
        pd.testing.assert_frame_equal(a.sort_values("subject").reset_index(drop=True),
                                      b.sort_values("subject").reset_index(drop=True))
    assert (tmp_path / "flower" / "config.yaml").is_file()


def test_check_update_rejects_bad_replies():
    sent = {"encoder.w": np.zeros((2, 3), np.float32), "optim.0.step": np.array(1.0, np.float32)}
    assert check_update(sent, {k: v + 1 for k, v in sent.items()}) is None
    assert "non-finite" in check_update(sent, {**sent, "encoder.w": np.full((2, 3), np.nan, np.float32)})
    assert "shape" in check_update(sent, {**sent, "encoder.w": np.zeros((3, 2), np.float32)})
    assert "dtype" in check_update(sent, {**sent, "encoder.w": np.zeros((2, 3), np.float64)})
    assert "missing" in check_update(sent, {"encoder.w": sent["encoder.w"]})
    assert "unexpected" in check_update(sent, {**sent, "encoder.extra": np.zeros(1, np.float32)})
    fresh = {"encoder.w": sent["encoder.w"]}  # no optimizer state yet: the first reply adds it
    assert check_update(fresh, sent) is None


class PoisonedTransport(InProcessTransport):
    """Site ``beta`` answers with non-finite weights."""

    def train(self, site, state, request):
        res = super().train(site, state, request)
        if site == "beta":
            res.state = {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in res.state.items()}
        return res


def test_a_poisoned_update_is_logged_and_never_adopted(tiny_cfg, tmp_path):
    transport = PoisonedTransport(load_manifest(tiny_cfg.manifest), tiny_cfg.model)
    state = run_arm(arms_for(tiny_cfg)[0], transport, tiny_cfg, RunDir(tmp_path),
                    visitor=PlainVisitor(transport, tiny_cfg.train))
    assert all(np.isfinite(v).all() for v in state.values())
    log = pd.read_csv(tmp_path / "clean" / "train_log.csv")
    beta = log[log["site"] == "beta"]
    assert len(beta) == tiny_cfg.train.cycles and (beta["status"] == "rejected").all()
    assert beta["note"].str.contains("non-finite").all()
    assert (log.loc[log["site"] != "beta", "status"] == "ok").all()


def broken_cohort(tiny_cohort, tmp_path):
    """The tiny cohort with one NaN training scan and one truncated test scan (headers intact)."""
    import shutil

    import SimpleITK as sitk

    from tests.conftest import non_finite_copy

    root = tmp_path / "broken"
    shutil.copytree(tiny_cohort, root)
    m = pd.read_csv(root / "manifest.csv")
    train = m.index[(m["split"] == "train") & (m["site"] == "alpha")][0]
    test = m.index[(m["split"] == "test") & (m["site"] == "alpha")][0]
    non_finite_copy(root / m.loc[train, "path"], root / "nan.mha", np.nan)
    sitk.WriteImage(sitk.ReadImage(str(root / m.loc[test, "path"])), str(root / "full.nii"))
    data = (root / "full.nii").read_bytes()
    (root / "truncated.nii").write_bytes(data[: len(data) // 2])
    m.loc[train, "path"], m.loc[test, "path"] = "nan.mha", "truncated.nii"
    m.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv", m.loc[train, "subject"], m.loc[test, "subject"]


def test_broken_scans_are_skipped_and_recorded(tiny_cohort, tmp_path):
    manifest, bad_train, bad_test = broken_cohort(tiny_cohort, tmp_path)
    cfg = tiny_config(manifest, **{"arms": ["clean"]})
    simulate(cfg, tmp_path / "run", quiet=True)
    assert checkpoint_path(tmp_path / "run" / "clean", cfg.train.cycles - 1).is_file()
    errors = pd.read_csv(tmp_path / "run" / "clean" / "errors.csv")
    assert set(errors["subject"]) == {bad_train, bad_test}
    assert set(errors["cycle"]) == set(range(cfg.train.cycles))
    assert errors.loc[errors["subject"] == bad_train, "reason"].str.contains("NaN").all()
    preds = pd.read_csv(tmp_path / "run" / "clean" / "predictions" / "cycle_000.csv")
    assert bad_test not in set(preds["subject"])

    strict = tiny_config(manifest, **{"arms": ["clean"], "strict": True})
    with pytest.raises(BrokenScanError, match="unusable scan"):
        simulate(strict, tmp_path / "strict", quiet=True)


class FlakyTransport(InProcessTransport):
    """Site ``beta`` raises when training in cycles 1 and 2, and when scoring the test split the second time (the
    cycle's closing message: its verification scores for the threshold fail with it)."""

    test_calls = 0

    def evaluate_cycle(self, sites, state, request):
        if request.test is not None:
            self.test_calls += 1
            if self.test_calls == 2:
                self.sites["beta"] = None
                try:
                    return super().evaluate_cycle(sites, state, request)
                finally:
                    self.sites["beta"] = self.saved
        return super().evaluate_cycle(sites, state, request)

    def train(self, site, state, request):
        if site == "beta" and request.seed in self.bad_seeds:
            self.sites[site] = None  # a crash inside the site: calling it raises
            try:
                return super().train(site, state, request)
            finally:
                self.sites[site] = self.saved
        return super().train(site, state, request)


def test_run_with_broken_scans_and_a_failing_site_completes(tiny_cohort, tmp_path, capsys):
    manifest, bad_train, bad_test = broken_cohort(tiny_cohort, tmp_path)
    cfg = tiny_config(manifest, **{"arms": ["clean"], "train.cycles": 4})
    transport = FlakyTransport(load_manifest(cfg.manifest), cfg.model)
    transport.saved = transport.sites["beta"]
    transport.bad_seeds = {hop_seed(cfg.train.seed, c, "beta") for c in (1, 2)}
    run_experiment(cfg, transport, tmp_path, quiet=False)
    log = pd.read_csv(tmp_path / "clean" / "train_log.csv")
    beta = log[log["site"] == "beta"].set_index("cycle")
    assert list(beta["status"]) == ["ok", "failed", "failed", "ok"] and beta.loc[1, "note"].startswith("site beta failed")
    assert (log.loc[log["site"] != "beta", "status"] == "ok").all()
    assert failing_sites(log, 2) == {"beta": 2} and failing_sites(log, 3) == {}
    err = capsys.readouterr().err
    assert "site beta failed in 2 consecutive cycles" in err and "2 unusable scan(s) skipped" in err
    errors = pd.read_csv(tmp_path / "clean" / "errors.csv")
    assert set(errors["subject"].dropna()) == {bad_train, bad_test}
    lost = errors[errors["subject"].isna()]
    assert list(lost["cycle"]) == [1] and lost["reason"].str.contains("site beta failed").all()
    assert "beta" not in set(pd.read_csv(tmp_path / "clean" / "predictions" / "cycle_001.csv")["site"])
    assert checkpoint_path(tmp_path / "clean", 3).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [3, 8])
def test_sigkill_then_resume_is_bit_identical(kill_at, tiny_cohort, tmp_path):
    """SIGKILL once ``kill_at`` checkpoints exist (mid clean arm, mid dirty arm), then resume."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    cfg = tiny_config(tiny_cohort / "manifest.csv", **{"train.cycles": 6, "arms": ["clean", "dirty"]})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, "-m", "fedqc.simulate", "--config", str(config), "--out", str(tmp_path / "cut"), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(list((tmp_path / "cut").glob("*/checkpoints/*.pt"))) < kill_at and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not checkpoint_path(tmp_path / "cut" / "dirty", 5).exists()  # killed before the end
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    simulate(cfg, tmp_path / "full", quiet=True)
    for arm in ("clean", "dirty"):
        assert same(_final(tmp_path / "full", arm, 5), _final(tmp_path / "cut", arm, 5))
    a = pd.read_csv(tmp_path / "full" / "dirty" / "train_log.csv").drop(columns=["seconds", "hop_seconds"])
    b = pd.read_csv(tmp_path / "cut" / "dirty" / "train_log.csv").drop(columns=["seconds", "hop_seconds"])
    pd.testing.assert_frame_equal(a, b)
