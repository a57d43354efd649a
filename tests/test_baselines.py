"""FedAvg as its users run it: Flower's server optimisers on arrays, FedBN's local BatchNorm, their config keys, and a
resume that carries the server optimiser's state."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedqc.config import ConfigError, StrategyConfig, TrainConfig
from fedqc.experiment.run_dir import load_checkpoint
from fedqc.experiment.runner import simulate
from fedqc.protocol import SiteInfo
from fedqc.strategies.averaging import AveragingRound, batchnorm_keys, flower_strategy
from fedqc.strategies.cycles import Hop, HopStatus, Local
from fedqc.strategies.schedule import rounds_for
from fedqc.strategies.server import ServerOptimiser, flower_optimiser
from tests.conftest import checkpoint_path, same, tiny_config

SITES = ("s1", "s2", "s3")
BN = "encoder.bn."


def model() -> dict[str, np.ndarray]:
    """A model with a convolution, a BatchNorm layer (weight, bias, statistics, counter) and a classifier."""
    return {"encoder.conv.weight": np.zeros((2, 3), np.float32), BN + "weight": np.ones(2, np.float32),
            BN + "bias": np.zeros(2, np.float32), BN + "running_mean": np.zeros(2, np.float32),
            BN + "running_var": np.ones(2, np.float32), BN + "num_batches_tracked": np.array(0),
            "classifier.weight": np.zeros(2, np.float32)}


class HandMade:
    """A visitor whose site k replies to cycle c with every float array moved by ``(k + c) · 0.1 · (1 + index)`` (a
    different step per site, cycle and entry), the counter by k; records what each visit received."""

    def __init__(self, failing: tuple[str, ...] = ()):
        self.failing = failing
        self.seen: list[tuple[int, str, dict]] = []

    def reply(self, site: str, state: dict, cycle: int) -> dict:
        k = int(site[1:])
        return {key: (v + (k + cycle) * 0.1 * (1 + np.arange(v.size, dtype=v.dtype).reshape(v.shape))
                      if v.dtype.kind == "f" else v + k) for key, v in state.items()}

    def visit(self, site, state, cycle, lr, local=Local()):
        self.seen.append((cycle, site, state))
        if site in self.failing:
            return Hop(state, status=HopStatus.FAILED)
        return Hop(self.reply(site, state, cycle), n_scans=int(site[1:]) + 1)


# ----------------------------------------------------------------------------- server optimisers are Flower's
class Grid:
    """What Flower's ``configure_train`` asks of a grid: the connected nodes (one per site)."""

    def get_node_ids(self):
        return [1, 2, 3]


SERVERS = [{"server": "fedavgm", "server_momentum": 0.9}, {"server": "fedavgm", "server_lr": 0.5},
           {"server": "fedadam"}, {"server": "fedadam", "server_lr": 0.01, "server_beta_1": 0.5, "server_tau": 1e-4},
           {"server": "fedyogi"}, {"server": "fedadagrad", "server_lr": 0.05}]


@pytest.mark.parametrize("knobs", SERVERS, ids=lambda k: "-".join(f"{v}" for v in k.values()))
def test_a_server_optimiser_steps_as_flowers_own_strategy_on_the_same_replies(knobs, monkeypatch):
    """Flower's genuine strategy, driven as a ServerApp drives it (configure_train, then aggregate_train on reply
    Messages), against an averaging round with the same replies: the same model, round after round."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import strategy as flower
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_task_id", "_node_id"):  # Messages are built inside a Flower run only
        monkeypatch.setattr(TaskIdentity, name, 1)
    cfg = StrategyConfig(name="fedavg", **knobs)
    ours = AveragingRound(list(SITES), flower_strategy("fedavg", 0), seed=0,
                          server=ServerOptimiser(flower_optimiser(cfg)))
    args = {"fedavgm": {"server_lr": "server_learning_rate", "server_momentum": "server_momentum"}}.get(
        cfg.server, {"server_lr": "eta", "server_beta_1": "beta_1", "server_tau": "tau"})
    theirs = {"fedavgm": flower.FedAvgM, "fedadam": flower.FedAdam, "fedyogi": flower.FedYogi,
              "fedadagrad": flower.FedAdagrad}[cfg.server](
        min_available_nodes=3, **{args[k]: v for k, v in knobs.items() if k != "server"})
    visitor, state, stepped = HandMade(), model(), ["encoder.conv.weight", BN + "weight", BN + "bias",
                                                    "classifier.weight"]
    for cycle in range(3):
        new, _ = ours(visitor, state, cycle, 1e-3, lambda *_: None)
        sent = ArrayRecord({k: Array(state[k]) for k in stepped})
        messages = sorted(theirs.configure_train(cycle + 1, sent, ConfigRecord(), Grid()),
                          key=lambda m: m.metadata.dst_node_id)
        replies = [Message(RecordDict({"arrays": ArrayRecord({k: Array(visitor.reply(s, state, cycle)[k])
                                                              for k in stepped}),
                                       "metrics": MetricRecord({"num-examples": float(int(s[1:]) + 1)})}),
                           reply_to=m) for s, m in zip(SITES, messages)]
        flowers, _ = theirs.aggregate_train(cycle + 1, replies)
        for k in stepped:
            assert np.array_equal(new[k], flowers[k].numpy().astype(np.float32)), (cycle, k)
        average = sum((int(s[1:]) + 1) * visitor.reply(s, state, cycle)[BN + "running_mean"] for s in SITES) / 9
        assert np.allclose(new[BN + "running_mean"], average)  # statistics are averaged, not stepped
        assert new[BN + "num_batches_tracked"].dtype == np.int64
        state = new
    if cfg.server != "fedavgm":  # the moments the step kept are Flower's
        snapshot = ours.snapshot()["server"]
        assert all(np.array_equal(snapshot["m_t"][k], theirs.m_t[k]) and np.array_equal(snapshot["v_t"][k],
                                                                                        theirs.v_t[k]) for k in stepped)


def test_a_round_restored_from_its_snapshot_steps_as_one_never_stopped():
    def round_():
        cfg = StrategyConfig(name="fedavg", server="fedadam", batchnorm="local")
        return AveragingRound(list(SITES), flower_strategy("fedavg", 0), seed=0,
                              server=ServerOptimiser(flower_optimiser(cfg)), local_bn=True)

    whole, cut = round_(), round_()
    a = b = model()
    for cycle in range(3):
        a, _ = whole(HandMade(), a, cycle, 1e-3, lambda *_: None)
    for cycle in range(2):
        b, _ = cut(HandMade(), b, cycle, 1e-3, lambda *_: None)
    resumed = round_()
    resumed.restore(cut.snapshot())
    assert same(resumed(HandMade(), b, 2, 1e-3, lambda *_: None)[0], a) and set(cut.snapshot()) == {"server", "site_bn"}
    assert not same(round_()(HandMade(), b, 2, 1e-3, lambda *_: None)[0], a)  # without the moments: another step


# ----------------------------------------------------------------------------- FedBN
def test_fedbn_keeps_every_sites_batchnorm_and_averages_everything_else():
    visitor = HandMade(failing=("s3",))
    round_ = AveragingRound(list(SITES), flower_strategy("fedavg", 0), seed=0, local_bn=True)
    state = model()
    bn = sorted(batchnorm_keys(state))
    assert bn == sorted(BN + k for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))
    first, _ = round_(visitor, state, 0, 1e-3, lambda *_: None)
    assert all(same(received, state) for _, _, received in visitor.seen)  # nobody has trained yet: the round's model
    replies = {s: visitor.reply(s, state, 0) for s in ("s1", "s2")}
    for k in state:  # everything, BatchNorm included, is the weighted average of the sites that trained
        expected = (2 * replies["s1"][k] + 3 * replies["s2"][k]) / 5
        assert np.allclose(first[k], np.rint(expected) if state[k].dtype.kind == "i" else expected), k
    assert set(round_.site_bn) == {"s1", "s2"}  # s3 failed: nothing of it is kept
    visitor.seen.clear()
    second, _ = round_(visitor, first, 1, 1e-3, lambda *_: None)
    received = {site: got for _, site, got in visitor.seen}
    for site in ("s1", "s2"):  # its own BatchNorm layers, the round's model for every other array
        assert all(np.array_equal(received[site][k], replies[site][k]) for k in bn)
        assert all(np.array_equal(received[site][k], first[k]) for k in first if k not in bn)
    assert same(received["s3"], first)  # never trained: it starts from the round's model
    assert not np.array_equal(received["s1"][BN + "weight"], received["s2"][BN + "weight"])
    averaged = AveragingRound(list(SITES), flower_strategy("fedavg", 0), seed=0)
    plain = HandMade(failing=("s3",))
    averaged(plain, state, 0, 1e-3, lambda *_: None)
    averaged(plain, first, 1, 1e-3, lambda *_: None)
    assert all(same(got, first) for c, _, got in plain.seen if c == 1)  # averaged BatchNorm: one model for all


def test_a_server_optimiser_leaves_fedbns_batchnorm_to_the_average():
    cfg = StrategyConfig(name="fedavg", server="fedadam", batchnorm="local")
    round_ = AveragingRound(list(SITES), flower_strategy("fedavg", 0), seed=0,
                            server=ServerOptimiser(flower_optimiser(cfg)), local_bn=True)
    plain = AveragingRound(list(SITES), flower_strategy("fedavg", 0), seed=0, local_bn=True)
    state = model()
    new, _ = round_(HandMade(), state, 0, 1e-3, lambda *_: None)
    mean, _ = plain(HandMade(), state, 0, 1e-3, lambda *_: None)
    assert all(np.array_equal(new[k], mean[k]) for k in batchnorm_keys(state))
    assert not np.array_equal(new["encoder.conv.weight"], mean["encoder.conv.weight"])
    assert set(round_.snapshot()["server"]["m_t"]) == {"encoder.conv.weight", "classifier.weight"}


def test_the_schedule_builds_the_configured_rounds():
    info = {s: SiteInfo(s, tuple(f"{s}{i}" for i in range(25)), 0, 0, 10) for s in SITES}
    fedtm = rounds_for(StrategyConfig(name="fedtm", rounds=2, server="fedyogi", batchnorm="local"), TrainConfig(),
                       list(SITES), info)
    warm = fedtm(0)
    assert warm.local_bn and type(warm.server.flower).__mro__[1].__name__ == "FedYogi" and fedtm(2) is not warm
    assert fedtm.snapshot() == {} and rounds_for(StrategyConfig(), TrainConfig(), list(SITES), info).snapshot() == {}


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("strategy, key", [
    ({"name": "fedavg", "server": "adam"}, "strategy.server"),
    ({"name": "travelling", "server": "fedadam"}, "strategy.server"),
    ({"name": "fedavg", "server": "fedadam", "server_lr": 0}, "strategy.server_lr"),
    ({"name": "fedavg", "server": "fedavgm", "server_momentum": 1.0}, "strategy.server_momentum"),
    ({"name": "fedavg", "server": "fedavgm"}, "strategy.server_momentum"),
    ({"name": "fedavg", "server": "fedavgm", "server_momentum": 0.9, "server_beta_1": 0.5}, "strategy.server_beta_1"),
    ({"name": "fedavg", "server": "fedadam", "server_beta_2": 1.5}, "strategy.server_beta_2"),
    ({"name": "fedavg", "server": "fedadagrad", "server_tau": -1}, "strategy.server_tau"),
    ({"name": "fedavg", "server_lr": 0.1}, "strategy.server_lr"),
    ({"name": "fedavg", "server": "fedadam", "server_lr": "high"}, "strategy.server_lr"),
    ({"name": "fedavg", "batchnorm": "fedbn"}, "strategy.batchnorm"),
    ({"name": "travelling", "batchnorm": "local"}, "strategy.batchnorm"),
])
def test_bad_averaging_keys_are_rejected_in_one_line(strategy, key, tiny_cohort):
    with pytest.raises(ConfigError) as err:
        tiny_config(tiny_cohort / "manifest.csv", strategy=strategy,
                    calibration={"batchnorm": "federated", "threshold": "prevalence"})
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(key + ":"), err.value.problems


def test_fedbn_needs_batchnorm_layers_and_pooled_statistics(tiny_cohort):
    with pytest.raises(ConfigError) as err:
        tiny_config(tiny_cohort / "manifest.csv", strategy={"name": "fedavg", "batchnorm": "local"},
                    **{"model.norm": "group"})
    assert [p.split(":")[0] for p in err.value.problems] == ["strategy.batchnorm"] * 2  # norm, calibration
    good = tiny_config(tiny_cohort / "manifest.csv", strategy={"name": "fedprox", "batchnorm": "local",
                                                               "server": "fedadam", "server_tau": 1e-2},
                       calibration={"batchnorm": "federated", "threshold": "prevalence"})
    assert good.strategy.server_tau == 1e-2 and good.strategy.server_lr is None


# ----------------------------------------------------------------------------- end to end: resume
@pytest.mark.slow
def test_fedadam_with_fedbn_and_local_steps_resumes_bit_identically(tiny_cohort, tmp_path):
    cfg = tiny_config(tiny_cohort / "manifest.csv", **{
        "train.cycles": 4, "train.branch_cycle": 1, "arms": ["clean", "dirty"],
        "strategy": {"name": "fedavg", "server": "fedadam", "server_lr": 0.01, "batchnorm": "local", "local_steps": 2},
        "calibration": {"batchnorm": "federated", "threshold": "prevalence"}})
    simulate(cfg, tmp_path / "full", quiet=True)
    kept = load_checkpoint(checkpoint_path(tmp_path / "full" / "clean", 1))["strategy"]
    assert set(kept) == {"server", "site_bn"} and kept["server"]["m_t"] and len(kept["site_bn"]) >= 2
    simulate(cfg, tmp_path / "cut", quiet=True)
    for arm in ("clean", "dirty"):  # kill after cycle 2: the last checkpoint (and its moments) is gone
        checkpoint_path(tmp_path / "cut" / arm, 3).unlink()
    simulate(cfg, tmp_path / "cut", resume=True, quiet=True)
    for arm in ("clean", "dirty"):
        final = [load_checkpoint(checkpoint_path(tmp_path / run / arm, 3)) for run in ("full", "cut")]
        assert same(final[0]["state"], final[1]["state"])
        assert all(same(final[0]["strategy"]["server"][m], final[1]["strategy"]["server"][m]) for m in ("m_t", "v_t"))
    log = pd.read_csv(tmp_path / "full" / "dirty" / "train_log.csv")
    assert list(log["cycle"].unique()) == [2, 3]


# ----------------------------------------------------------------------------- local steps
def test_a_site_trains_the_first_steps_batches_of_its_epoch(tiny_cfg):
    from fedqc.data.manifest import load_manifest
    from fedqc.models.state import initial_state
    from fedqc.protocol import TrainRequest
    from fedqc.site import Site
    from fedqc.transport.flower.codec import decode_train_reply, encode_train_reply

    manifest = load_manifest(tiny_cfg.manifest)
    site = Site("alpha", manifest[manifest["site"] == "alpha"], model=tiny_cfg.model)
    state = initial_state(tiny_cfg.model, 0)
    whole = site.train(state, TrainRequest(lr=1e-3, seed=1, batch_size=3))
    two = site.train(state, TrainRequest(lr=1e-3, seed=1, batch_size=3, steps=2))
    assert whole.steps == -(-whole.n_scans // 3) > 2 and two.steps == 2 and two.n_scans == 6
    assert set(two.subjects) < set(whole.subjects) and not same(two.state, whole.state)
    assert decode_train_reply(encode_train_reply(two)).steps == 2  # over Flower too
    assert TrainRequest.from_dict(TrainRequest(lr=1e-3, seed=1, batch_size=3, steps=2).to_dict()).steps == 2


def test_local_steps_and_epochs_are_one_request():
    """The visit asks for its steps or epochs in one message; the site runs into as many epochs as the steps take
    (tests/test_strategies.py trains a real site so)."""
    from fedqc.protocol import TrainReply
    from fedqc.strategies.cycles import PlainVisitor

    class Epochs:
        def __init__(self):
            self.requests = []

        def train(self, site, state, request):
            self.requests.append(request)
            taken = request.steps or 3 * request.epochs
            return TrainReply({"w": state["w"] + taken}, 5 * taken, 0.5, 0.0, ["x"], steps=taken, answers=request.nonce)

    transport = Epochs()
    hop = PlainVisitor(transport, TrainConfig()).visit("a", {"w": np.zeros(1)}, 0, 1e-3, Local(steps=7))
    assert [r.steps for r in transport.requests] == [7] and hop.state["w"][0] == 7 and hop.n_scans == 35
    whole = Epochs()  # local epochs: whole epochs
    hop = PlainVisitor(whole, TrainConfig(), epochs=2).visit("a", {"w": np.zeros(1)}, 0, 1e-3, Local(epochs=2))
    assert [(r.steps, r.epochs) for r in whole.requests] == [(0, 4)] and hop.state["w"][0] == 12
    round_ = AveragingRound(list(SITES), flower_strategy("fedavg", 0), seed=0, steps=4)
    visitor = HandMade()
    seen = []
    visitor.visit = lambda site, state, cycle, lr, local=Local(): seen.append(local) or Hop(state, n_scans=1)
    round_(visitor, model(), 0, 1e-3, lambda *_: None)
    assert {local.steps for local in seen} == {4}


@pytest.mark.parametrize("strategy", [{"name": "fedavg", "local_steps": -1},
                                      {"name": "fedavg", "local_steps": 5, "local_epochs": 2},
                                      {"name": "travelling", "local_steps": 5}])
def test_bad_local_steps_are_rejected_in_one_line(strategy, tiny_cohort):
    with pytest.raises(ConfigError) as err:
        tiny_config(tiny_cohort / "manifest.csv", strategy=strategy)
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith("strategy.local_steps:")
