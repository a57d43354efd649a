"""Strategies beside the travelling model: FedAvg and FedProx rounds (Flower's arithmetic), FedTM's schedule, QC in
averaging rounds, end to end with resume and Flower parity."""

from __future__ import annotations

from enum import Enum

import numpy as np
import pandas as pd
import pytest

from fedqc.config import ConfigError, StrategyConfig, TrainConfig
from fedqc.data.manifest import load_manifest
from fedqc.experiment.run_dir import load_checkpoint
from fedqc.experiment.runner import simulate
from fedqc.models.state import initial_state
from fedqc.protocol import EvalReply, SiteInfo, TrainReply, TrainRequest, epoch_seed
from fedqc.qc.arm import QCArm
from fedqc.qc.gate import QCStatus
from fedqc.site import Site
from fedqc.strategies.averaging import AveragingRound, average, flower_strategy
from fedqc.strategies.cycles import Hop, HopStatus, Local, PlainVisitor
from fedqc.strategies.schedule import rounds_for, warmup_sites
from fedqc.strategies.travelling import TravellingRound
from fedqc.transport.inprocess import InProcessTransport
from tests.conftest import checkpoint_path, same, tiny_config


# ----------------------------------------------------------------------------- the average
def test_average_is_flowers_weighted_mean_in_site_order_keeping_dtypes():
    updates = [("b", {"w": np.array([3.0, 1.0], np.float32), "n": np.array(4)}, 3.0),
               ("a", {"w": np.array([1.0, 0.1], np.float32), "n": np.array(2)}, 1.0)]
    out = average(flower_strategy("fedavg", 0.0), updates)
    assert out["w"].dtype == np.float32 and np.allclose(out["w"], [(1 + 9) / 4, (0.1 + 3) / 4])
    assert out["n"].dtype == np.array(4).dtype and out["n"] == 4  # (2 + 12) / 4 = 3.5, rounded back to an integer
    again = average(flower_strategy("fedprox", 0.1), updates[::-1])  # the replies' order does not matter
    assert all(np.array_equal(out[k], again[k]) for k in out)


class Recorder:
    """A visitor that records what each visit received and trains by adding the site's number to every weight."""

    def __init__(self, outcomes: dict[str, Enum] | None = None):
        self.outcomes = outcomes or {}
        self.seen: list[tuple[str, dict, Local]] = []

    def visit(self, site, state, cycle, lr, local=Local()):
        self.seen.append((site, state, local))
        status = self.outcomes.get(site, HopStatus.OK)
        if status != HopStatus.OK:
            return Hop(state, status=status)
        k = float(site[1:])
        return Hop({"w": state["w"] + k, "optim.0.exp_avg": np.full(1, k)}, n_scans=int(k))


def test_every_site_of_a_round_starts_from_the_same_model_without_optimizer_state():
    state = {"w": np.zeros(2, np.float32), "optim.0.exp_avg": np.ones(1)}
    visitor = Recorder()
    round_ = AveragingRound(["s3", "s1", "s2"], flower_strategy("fedprox", 0.01), seed=0, epochs=2)
    new, hops = round_(visitor, state, 0, 1e-3, lambda *_: None)
    assert [s for s, _, _ in visitor.seen] == ["s1", "s2", "s3"]  # sorted
    assert all(received is visitor.seen[0][1] and set(received) == {"w"} for _, received, _ in visitor.seen)
    # FedProx's mu, from Flower's strategy object; the replies need no optimizer state
    assert visitor.seen[0][2] == Local(epochs=2, prox_mu=0.01, optimizer_state=False)
    assert set(new) == {"w"} and np.allclose(new["w"], (1 * 1 + 2 * 2 + 3 * 3) / 6)  # weighted by scans trained
    equal = AveragingRound(["s1", "s2", "s3"], flower_strategy("fedavg", 0), seed=0, weighting="equal")
    assert np.allclose(equal(Recorder(), state, 0, 1e-3, lambda *_: None)[0]["w"], 2.0)
    assert [site for site, _, _ in hops] == ["s1", "s2", "s3"]


@pytest.mark.parametrize("status", [QCStatus.SITE_CHECK_FAILED, QCStatus.SITE_FLAGGED, HopStatus.REJECTED,
                                    HopStatus.FAILED])
def test_a_site_kept_out_or_failing_is_absent_from_the_average(status):
    state = {"w": np.zeros(1, np.float32)}
    new, hops = AveragingRound(["s1", "s3"], flower_strategy("fedavg", 0), seed=0)(
        Recorder({"s3": status}), state, 0, 1e-3, lambda *_: None)
    assert new["w"][0] == 1.0 and [h.status for _, h, _ in hops] == [HopStatus.OK, status]
    none, _ = AveragingRound(["s3"], flower_strategy("fedavg", 0), seed=0)(
        Recorder({"s3": status}), state, 0, 1e-3, lambda *_: None)
    assert none["w"][0] == 0.0  # no update: the model stays as it was


def test_a_fraction_of_sites_is_drawn_per_round_with_a_seed():
    sites = [f"s{i}" for i in range(1, 11)]
    round_ = AveragingRound(sites, flower_strategy("fedavg", 0), seed=3, fraction=0.3)
    draws = [round_.select(c) for c in range(5)]
    assert all(len(d) == 3 and d == sorted(d) for d in draws) and len({tuple(d) for d in draws}) > 1
    assert draws == [AveragingRound(sites, flower_strategy("fedavg", 0), seed=3, fraction=0.3).select(c)
                     for c in range(5)]
    assert AveragingRound(sites[:2], flower_strategy("fedavg", 0), seed=3, fraction=0.1).select(0) != []


# ----------------------------------------------------------------------------- FedTM's schedule
def test_fedtm_warms_up_by_averaging_over_large_two_class_sites_then_travels():
    info = {"big": SiteInfo("big", tuple(f"b{i}" for i in range(25)), 0, 0, 10),
            "one": SiteInfo("one", tuple(f"o{i}" for i in range(30)), 0, 0, 0),  # one class
            "small": SiteInfo("small", tuple(f"s{i}" for i in range(5)), 0, 0, 2)}
    sites = sorted(info)
    cfg = StrategyConfig(name="fedtm", rounds=2, min_scans=20)
    assert warmup_sites(cfg, sites, info) == ["big"]
    assert warmup_sites(StrategyConfig(name="fedtm", min_scans=20, single_class=True), sites, info) == ["big", "one"]
    rounds = rounds_for(cfg, TrainConfig(), sites, info)
    assert isinstance(rounds(0), AveragingRound) and rounds(1).sites == ["big"] and rounds(0) is rounds(1)
    assert isinstance(rounds(2), TravellingRound) and rounds(5).sites == sites
    assert isinstance(rounds_for(StrategyConfig(), TrainConfig(), sites, info)(0), TravellingRound)
    prox = rounds_for(StrategyConfig(name="fedprox", mu=0.5), TrainConfig(), sites, info)(7)
    assert prox.strategy.proximal_mu == 0.5 and prox.sites == sites
    nobody = rounds_for(StrategyConfig(name="fedtm", min_scans=99), TrainConfig(), sites, info)
    assert isinstance(nobody(0), TravellingRound)  # no site qualifies for the warm-up: travel from the start


def test_strategy_config_is_validated(tiny_cohort):
    with pytest.raises(ConfigError) as err:
        tiny_config(tiny_cohort / "manifest.csv", strategy={"name": "fedsgd", "mu": -1, "local_epochs": 0,
                                                            "fraction": 0, "weighting": "votes", "averaging": "x"})
    for key in ("strategy.name", "strategy.mu", "strategy.local_epochs", "strategy.fraction", "strategy.weighting",
                "strategy.averaging"):
        assert key in str(err.value)


# ----------------------------------------------------------------------------- FedProx at the site
def test_the_proximal_term_keeps_a_site_near_the_model_it_was_sent(tiny_cfg):
    manifest = load_manifest(tiny_cfg.manifest)
    site = Site("alpha", manifest[manifest["site"] == "alpha"], model=tiny_cfg.model)
    state = initial_state(tiny_cfg.model, 0)
    moved = {}
    for mu in (0.0, 100.0):
        reply = site.train(state, TrainRequest(lr=1e-2, seed=1, batch_size=5, prox_mu=mu))
        moved[mu] = sum(float(((reply.state[k] - state[k]) ** 2).sum()) for k in state
                        if k.endswith("weight") and state[k].dtype.kind == "f")
    assert moved[100.0] < 0.5 * moved[0.0]
    request = TrainRequest(lr=1e-3, seed=1, batch_size=5, prox_mu=0.25)
    assert TrainRequest.from_dict(request.to_dict()) == request


def test_plain_visits_ask_for_the_rounds_epochs_and_proximal_term():
    class Capture:
        def __init__(self):
            self.requests = []

        def train(self, site, state, request):
            self.requests.append(request)
            return TrainReply({"w": state["w"] + 1}, 1, 0.5, 0.0, ["x"], answers=request.nonce)

    transport = Capture()
    hop = PlainVisitor(transport, TrainConfig(), epochs=2).visit("a", {"w": np.zeros(1)}, 0, 1e-3,
                                                                 Local(epochs=3, prox_mu=0.1))
    (request,) = transport.requests  # one message, however many epochs
    assert request.epochs == 6 and request.prox_mu == 0.1 and request.steps == 0
    assert hop.n_scans == 1 and hop.state["w"][0] == 1
    PlainVisitor(transport, TrainConfig()).visit("a", {"w": np.zeros(1)}, 0, 1e-3, Local(steps=4))
    assert transport.requests[-1].steps == 4


def test_epochs_in_one_request_train_as_chained_requests_would(tiny_cfg):
    """A request of two epochs gives what two one-epoch requests give, the second seeded with ``epoch_seed`` and
    sent the first's state (optimizer included): the same arrays bit for bit, the scans counted once per epoch;
    with FedProx the anchor stays the weights sent, so the second epoch is pulled back to them, not to the first's."""
    manifest = load_manifest(tiny_cfg.manifest)
    site = Site("alpha", manifest[manifest["site"] == "alpha"], model=tiny_cfg.model)
    state = initial_state(tiny_cfg.model, 0)
    both = site.train(state, TrainRequest(lr=1e-2, seed=1, batch_size=5, epochs=2))
    first = site.train(state, TrainRequest(lr=1e-2, seed=1, batch_size=5))
    second = site.train(first.state, TrainRequest(lr=1e-2, seed=epoch_seed(1, 1), batch_size=5))
    assert both.state.keys() == second.state.keys()
    assert all(np.array_equal(both.state[k], second.state[k]) for k in both.state)
    assert both.n_scans == first.n_scans + second.n_scans == 2 * len(both.subjects) and both.loss == second.loss
    assert both.steps == first.steps + second.steps
    prox = site.train(state, TrainRequest(lr=1e-2, seed=1, batch_size=5, epochs=2, prox_mu=100.0))
    first = site.train(state, TrainRequest(lr=1e-2, seed=1, batch_size=5, prox_mu=100.0))
    chained = site.train(first.state, TrainRequest(lr=1e-2, seed=epoch_seed(1, 1), batch_size=5, prox_mu=100.0))

    def moved(s):
        return sum(float(((s[k] - state[k]) ** 2).sum()) for k in state if k.endswith("weight") and
                   state[k].dtype.kind == "f")

    assert moved(prox.state) < moved(chained.state)
    steps = site.train(state, TrainRequest(lr=1e-2, seed=1, batch_size=5, steps=first.steps + 1))
    assert steps.steps == first.steps + 1  # over two epochs
    bare = site.train(state, TrainRequest(lr=1e-2, seed=1, batch_size=5, epochs=2, optimizer_state=False))
    assert set(bare.state) == {k for k in both.state if not k.startswith("optim.")}
    assert all(np.array_equal(bare.state[k], both.state[k]) for k in bare.state)  # Adam went on across the epochs


# ----------------------------------------------------------------------------- QC in averaging rounds
class QCFederation:
    """Training sites "a" (good) and "b" (every label the model disagrees with), val scans at "v". Training adds
    the site's scans to ``w`` ("a") or to ``harm`` ("b"); a model with harm scores at chance."""

    labels = np.tile([1, 0], 10)

    def __init__(self):
        self.trained: list[str] = []

    def site_info(self):
        return {s: SiteInfo(s, tuple(f"{s}{i:02d}" for i in range(20)) if s != "v" else (), 20 if s == "v" else 0, 0)
                for s in ("a", "b", "v")}

    def train(self, site, state, request):
        self.trained.append(site)
        n = len(request.subjects)
        key = "w" if site == "a" else "harm"
        return TrainReply({**state, key: state[key] + n}, n, 0.5, 0.0, list(request.subjects), answers=request.nonce)

    def evaluate(self, sites, state, request):
        right = np.where(self.labels == 1, 0.8, 0.2) + np.linspace(0, 0.05, 20)
        out = {}
        for s in sites:
            if (request.split == "train") == (s == "v"):
                out[s] = EvalReply({}, pd.DataFrame(columns=["subject", "site", "label", "score"]))
                continue
            ids = [f"{s}{i:02d}" for i in range(20) if f"{s}{i:02d}" not in request.exclude]
            score = (1 - right if s == "b" else right)[:len(ids)]
            if state["harm"][0] > 0:
                score = np.full(len(ids), 0.5)
            out[s] = EvalReply({}, pd.DataFrame({"subject": ids, "site": s, "label": self.labels[:len(ids)],
                                                 "score": score}))
        return out


@pytest.mark.parametrize("criterion", ["auroc", "loss"])
def test_qc_keeps_a_harmful_sites_update_out_of_a_fedavg_round(criterion, tmp_path):
    cfg = tiny_config("unused.csv", check_files=False, **{
        "arms": ["clean", "qc"], "strategy": {"name": "fedavg"},
        "qc": {"criterion": criterion, "granularity": "batch", "scans": [], "skill": 0}})
    fed = QCFederation()
    arm = QCArm(fed, cfg, "qc", tmp_path)
    state = {"w": np.zeros(1), "harm": np.zeros(1)}
    arm.begin(state, 1, None)
    round_ = rounds_for(cfg.strategy, cfg.train, ["a", "b"], fed.site_info())(1)
    new, hops = round_(arm, state, 1, 1e-3, lambda *_: None)
    assert {s: h.n_scans for s, h, _ in hops}["b"] == 0 and new["harm"][0] == 0 and new["w"][0] == 20
    if criterion == "auroc":  # kept out before training: site b never trains
        assert set(fed.trained) == {"a"} and "b" in arm.policy.flagged_sites
    else:  # trained, and every update rejected
        assert "b" in fed.trained and len(arm.policy.flagged) == 20


# ----------------------------------------------------------------------------- end to end
def _final(out, arm, cycle):
    return load_checkpoint(checkpoint_path(out / arm, cycle))["state"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [{"name": "fedavg", "local_epochs": 2}, {"name": "fedprox", "mu": 0.01},
                                      {"name": "fedtm", "rounds": 2, "min_scans": 5}], ids=lambda s: s["name"])
def test_each_strategy_runs_every_arm_and_resumes_bit_identically(strategy, tiny_cohort, tmp_path):
    cfg = tiny_config(tiny_cohort / "manifest.csv", **{"train.cycles": 4, "train.branch_cycle": 1,
                                                       "arms": ["clean", "dirty", "qc"], "strategy": strategy})
    simulate(cfg, tmp_path / "full", quiet=True)
    log = pd.read_csv(tmp_path / "full" / "clean" / "train_log.csv")
    assert list(log["cycle"].unique()) == [0, 1, 2, 3] and not any(k.startswith("optim.") for k in
                                                                  _final(tmp_path / "full", "clean", 1))
    if strategy["name"] == "fedavg":  # per cycle: one message of 2 epochs per training site, then the closing
        # message (the threshold's verification scores and the test scores) to every site with val or test scans
        info = InProcessTransport(load_manifest(cfg.manifest), cfg.model).site_info()
        cycles = pd.read_csv(tmp_path / "full" / "clean" / "cycles.csv")
        expected = cycles["hops"] + sum(bool(i.n_val or i.n_test) for i in info.values())
        assert (cycles["messages"] == expected).all() and (cycles["hops"] >= 2).all()
    simulate(cfg, tmp_path / "cut", quiet=True)
    for arm in ("dirty", "qc"):  # kill after cycle 2: drop the last checkpoint and everything after it
        checkpoint_path(tmp_path / "cut" / arm, 3).unlink()
    simulate(cfg, tmp_path / "cut", resume=True, quiet=True)
    for arm in ("clean", "dirty", "qc"):
        assert same(_final(tmp_path / "full", arm, 3), _final(tmp_path / "cut", arm, 3))
    if strategy["name"] == "fedtm":  # travelling from round 2 on: Adam's state travels again
        assert any(k.startswith("optim.") for k in _final(tmp_path / "full", "clean", 3))


@pytest.mark.flower
@pytest.mark.slow
def test_fedavg_on_flower_simulation_matches_inprocess(tiny_cohort, tmp_path):
    over = {"train.cycles": 2, "arms": ["clean", "qc"],  # with a server optimiser and local steps, through Flower
            "strategy": {"name": "fedprox", "mu": 0.01, "server": "fedadam", "server_lr": 0.01, "local_steps": 2}}
    simulate(tiny_config(tiny_cohort / "manifest.csv", **over), tmp_path / "inproc", quiet=True)
    simulate(tiny_config(tiny_cohort / "manifest.csv", **over, engine="flower"), tmp_path / "flower", quiet=True)
    for arm in ("clean", "qc"):
        assert same(_final(tmp_path / "inproc", arm, 1), _final(tmp_path / "flower", arm, 1))
        a, b = (pd.read_csv(tmp_path / e / arm / "train_log.csv")[["cycle", "site", "n_scans", "status"]]
                for e in ("inproc", "flower"))
        pd.testing.assert_frame_equal(a, b)
