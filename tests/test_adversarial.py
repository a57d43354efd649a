"""A site that lies (docs/threat-model.md): the attacks as scenario entries, and each defence shown on a small fixture
to fail without it and hold with it."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from fedqc.config import ConfigError, TrainConfig
from fedqc.data.corruptions.scenario import Scenario
from fedqc.data.inject import ADVERSARIAL, TRIGGERED, inject
from fedqc.data.manifest import load_manifest
from fedqc.experiment.runner import simulate
from fedqc.protocol import (
    EvalReply,
    EvalRequest,
    ImageFinding,
    TrainReply,
    TrainRequest,
    change_norm,
    check_fresh,
    check_update,
    scores_table,
)
from fedqc.qc.detection import score_adversaries
from fedqc.scoring import counts_from_scores
from fedqc.site.adversary import CLASSIFIER, TARGET_LOGIT, Adversary, lying_moments, shifted
from fedqc.strategies.averaging import Aggregator, AveragingRound, flower_strategy
from fedqc.strategies.cycles import HopStatus, PlainVisitor
from fedqc.strategies.defence import UpdateNormCheck, robust_moments
from fedqc.transport.fresh import FreshTransport
from tests.conftest import tiny_config

# ----------------------------------------------------------------------------- the attacks as scenario entries


def test_adversarial_entries_are_checked_one_line_each():
    bad = {"adversarial": [{"sites": "beta", "attack": "scaled_update"},
                           {"sites": ["beta"], "attack": "trojan"},
                           {"sites": ["gamma"], "attack": "scaled_update", "params": {"factr": 2, }},
                           {"sites": ["delta"], "attack": "inflated_count", "params": {"factor": "big"}},
                           {"sites": ["gamma"], "attack": "sign_flip", "when": 3},
                           {"sites": ["epsilon"], "attack": "framing"},
                           {"sites": ["zeta"], "attack": "framing", "params": {"target": 3}},
                           {"sites": ["eta"], "attack": "backdoor", "params": {"label": 2, "share": 1.5}},
                           {"sites": ["theta"], "attack": "targeted_shift", "params": {"label": -1, "size": 0}},
                           {"sites": ["iota"], "attack": "replay", "params": {"evaluations": 2}}]}
    with pytest.raises(Exception) as err:
        Scenario.from_dict(bad)
    problems = err.value.problems
    assert any("adversarial[0]: sites must be a list" in p for p in problems)
    assert any("adversarial[1]: unknown attack 'trojan'" in p for p in problems)
    assert any("adversarial[2]: unknown param 'factr' of scaled_update (allowed: factor)" in p for p in problems)
    assert any("adversarial[3]: params.factor must be a number" in p for p in problems)
    assert any("adversarial[4]: unknown key 'when'" in p for p in problems)
    assert any("adversarial[4]: site gamma already lies in adversarial[2]" in p for p in problems)
    assert any("adversarial[5]: framing needs params.target, the good site it frames" in p for p in problems)
    assert any("adversarial[6]: params.target must be a site name, got 3" in p for p in problems)
    assert any("adversarial[7]: params.label must be 0 or 1, got 2" in p for p in problems)
    assert any("adversarial[7].params: share must be in [0, 1], got 1.5" in p for p in problems)
    assert any("adversarial[8]: params.label must be 0 or 1, got -1" in p for p in problems)
    assert any("adversarial[8]: params.size must be > 0, got 0" in p for p in problems)
    assert any("adversarial[9]: params.evaluations must be 0 or 1, got 2" in p for p in problems)
    assert all("\n" not in p for p in problems)


def test_adversarial_sites_are_recorded_as_ground_truth(tiny_cohort, tmp_path):
    scenario = Scenario.from_dict({"adversarial": [{"sites": ["beta"], "attack": "inflated_count",
                                                    "params": {"factor": 50}}]})
    inject(tiny_cohort / "manifest.csv", scenario, tmp_path / "out")
    truth = pd.read_csv(tmp_path / "out" / ADVERSARIAL)
    assert truth.to_dict("records") == [{"site": "beta", "attack": "inflated_count", "params": '{"factor": 50}'}]
    unknown = Scenario.from_dict({"adversarial": [{"sites": ["nowhere"], "attack": "sign_flip"}]})
    with pytest.raises(Exception, match="1 problem") as err:
        inject(tiny_cohort / "manifest.csv", unknown, tmp_path / "out2")
    assert err.value.problems == ["adversarial[0]: unknown site(s) ['nowhere']"]


def test_lying_sites_are_simulated_only_and_defences_are_checked(tiny_cohort):
    spec = {"adversarial": [{"sites": ["beta"], "attack": "sign_flip"}]}
    with pytest.raises(ConfigError, match="scenario.adversarial: lying sites are simulated .* not in deployment"):
        tiny_config(tiny_cohort / "manifest.csv", engine="deployment", scenario=spec)
    with pytest.raises(ConfigError, match="defence.aggregator: 'mode' is not one of"):
        tiny_config(tiny_cohort / "manifest.csv", defence={"aggregator": "mode"})
    with pytest.raises(ConfigError, match="defence.trim_beta: must be in \\[0, 0.5\\), got 0.5"):
        tiny_config(tiny_cohort / "manifest.csv", defence={"trim_beta": 0.5})
    with pytest.raises(ConfigError, match="defence.counts: 'trust' is not one of"):
        tiny_config(tiny_cohort / "manifest.csv", defence={"counts": "trust"})
    with pytest.raises(ConfigError, match="defence.update_norm: 0 \\(off\\) or a factor > 1"):
        tiny_config(tiny_cohort / "manifest.csv", defence={"update_norm": 0.5})


# ----------------------------------------------------------------------------- fake sites for the defences
class Honest:
    """A site whose one training step adds ``step`` to ``w`` over ``n`` scans."""

    def __init__(self, step: float, n: int = 10):
        self.step, self.n = step, n

    def train(self, state, request):
        return TrainReply({"w": state["w"] + self.step}, self.n, 0.5, 0.0, [f"s{i}" for i in range(self.n)],
                          answers=getattr(request, "nonce", ""))


class Sites:
    """A transport over named fake sites."""

    def __init__(self, **sites):
        self.sites = sites

    def train(self, site, state, request):
        return self.sites[site].train(state, request)

    def evaluate(self, sites, state, request):
        return {s: self.sites[s].evaluate(state, request) for s in sites}


def test_update_norm_check_rejects_a_scaled_update_and_names_the_check():
    """(c) Without the check a ×1000 update is adopted; with it the hop is rejected, the note naming the check."""
    transport = Sites(a=Honest(0.1), b=Honest(0.12), m=Adversary(Honest(0.1), "scaled_update", {"factor": 1000}))
    state = {"w": np.ones(4, dtype=np.float32)}

    def hops(check, order=("a", "b", "a", "m")):
        visitor = PlainVisitor(transport, TrainConfig(), norm_check=check)
        return [visitor.visit(site, state, 0, 1e-3) for site in order]

    undefended = hops(None)[-1]
    assert undefended.status == HopStatus.OK and np.allclose(undefended.state["w"], 101.0)
    defended = hops(UpdateNormCheck(factor=10, warmup=3))
    assert all(h.status == HopStatus.OK for h in defended[:3])
    assert defended[-1].status == HopStatus.REJECTED and "update norm check" in defended[-1].note
    assert np.array_equal(defended[-1].state["w"], state["w"])  # the model goes on as it was
    # first, before any reference: a change larger than the model itself is no training step
    first = hops(UpdateNormCheck(factor=10, warmup=3), order=("m", "a"))
    assert first[0].status == HopStatus.REJECTED and "the norm" in first[0].note and "warm-up" in first[0].note
    assert first[1].status == HopStatus.OK


def test_the_norm_check_judges_the_change_per_batch_asked():
    """An honest site of 70 scans moves the model seven times as far as sites of 10: per batch asked it is their
    size and passes, where the same change from a site asked for 10 scans is refused."""
    check = UpdateNormCheck(factor=5, warmup=2)
    state = {"w": np.full(4, 10.0)}
    for _ in range(2):
        assert check(state, {"w": state["w"] + 0.1}, batches=2) is None  # 10 scans, batches of 5
    assert check(state, {"w": state["w"] + 0.7}, batches=14) is None  # 70 scans
    assert "per batch" in check(state, {"w": state["w"] + 0.7}, batches=2)
    assert TrainRequest(lr=1e-3, seed=0, batch_size=5, epochs=2).batches(11) == 6
    assert TrainRequest(lr=1e-3, seed=0, batch_size=5, steps=4).batches(11) == 4


def test_update_norm_check_does_not_see_a_sign_flip():
    """A stated limit: a reversed update of honest size passes the norm check (QC's verification judges direction)."""
    check = UpdateNormCheck(factor=3, warmup=2)
    state = {"w": np.full(3, 10.0)}
    for _ in range(2):
        assert check(state, {"w": state["w"] + 1.0}) is None
    flipped = Adversary(Honest(1.0), "sign_flip").train(state, None)
    assert np.allclose(flipped.state["w"], 9.0) and check(state, flipped.state) is None


class Linear(Honest):
    """A site of 20 verification scans that its model scores ``sigmoid(classifier.weight · x + classifier.bias)`` (x:
    two features per scan that separate its labels, with noise; the arrays named as the real model's output layer).
    A training step adds ``step`` to each of four encoder values and a fiftieth of it to the classifier's weights:
    an honest update of norm ``2 · step`` that the scans hardly see."""

    def __init__(self, name: str, step: float, seed: int):
        super().__init__(step)
        rng = np.random.default_rng(seed)
        self.name, self.labels = name, np.tile([0, 1], 10)
        self.x = (2 * self.labels[:, None] - 1) * np.array([1.0, 0.5]) + rng.normal(0, 0.7, (20, 2))

    def train(self, state, request):
        new = {**state, "encoder.w": state["encoder.w"] + np.float32(self.step),
               "classifier.weight": state["classifier.weight"] + np.float32(0.02 * self.step)}
        return TrainReply(new, self.n, 0.5, 0.0, [], answers=request.nonce)

    def evaluate(self, state, request):
        logit = self.x @ state["classifier.weight"][0].astype(float) + float(state["classifier.bias"][0])
        scores = pd.DataFrame({"subject": [f"{self.name}{i}" for i in range(20)], "site": self.name,
                               "label": self.labels, "score": 1 / (1 + np.exp(-logit)), "sex": "F", "age": 60.0})
        return EvalReply(counts_from_scores(scores["label"], scores["score"]), scores, answers=request.nonce)


LINEAR = {"encoder.w": np.zeros(4, dtype=np.float32), "classifier.weight": np.array([[1.5, 1.0]], dtype=np.float32),
          "classifier.bias": np.zeros(1, dtype=np.float32)}


def _val_scores(transport, sites, state) -> pd.DataFrame:
    return pd.concat([r.scores for r in transport.evaluate(sites, state, EvalRequest("val")).values()])


def test_a_targeted_shift_passes_the_norm_check_and_takes_the_model_to_one_label():
    """(c) A targeted shift (size 3) adds to its honest update a step of 3 × its norm towards a model that gives
    every scan label 1: each update is at most 4 × an honest one, so a norm check at factor 4 adopts it hop after
    hop, and four hops later the other sites' scans, both labels at the start, are all scored above 0.5."""
    transport = Sites(a=Linear("a", 0.25, 0), b=Linear("b", 0.25, 1),
                      m=Adversary(Linear("m", 0.25, 2), "targeted_shift", {"size": 3}))
    visitor = PlainVisitor(transport, TrainConfig(), norm_check=UpdateNormCheck(factor=4, warmup=2))
    state = LINEAR
    for site in ("a", "b"):  # honest updates: the norm check's reference
        state = visitor.visit(site, state, 0, 1e-3).state
    assert (_val_scores(transport, ["a", "b"], state)["score"] < 0.5).sum() == 20  # the controls
    honest = change_norm(state, transport.train("a", state, TrainRequest(lr=1e-3, seed=0, batch_size=2)).state)
    for cycle in range(1, 5):
        hop = visitor.visit("m", state, cycle, 1e-3)
        assert hop.status == HopStatus.OK and change_norm(state, hop.state) <= 4 * honest + 1e-6
        state = hop.state
    assert (_val_scores(transport, ["a", "b"], state)["score"] > 0.5).all()
    assert float(state["classifier.bias"][0]) == pytest.approx(TARGET_LOGIT)


@pytest.mark.parametrize("criterion", ["loss", "reference", "calibrated"])
def test_update_verification_rejects_a_targeted_shift_and_names_the_site(criterion):
    """(c) The same shift judged by QC's update verification on the other sites' scans (leave-site-out): the honest
    update is accepted; the shifted one raises the loss (criterion ``loss``) and the false-positive rate
    (``reference``) there, so it is rejected, the QC log naming the site and the criterion. A stated limit:
    ``calibrated`` Platt-recalibrates each model's scores, and the shift maps the honest update's logits by an
    increasing affine map (the weights shrunk, the bias moved), so it judges the honest update and accepts it."""
    from fedqc.qc.criteria import UPDATE_CRITERIA
    from fedqc.qc.gate import Update, VerificationScans
    from fedqc.qc.policy import QCPolicy
    from fedqc.qc.verification import UpdateVerification

    transport = Sites(a=Linear("a", 0.25, 0), b=Linear("b", 0.25, 1),
                      m=Adversary(Linear("m", 0.25, 2), "targeted_shift", {"size": 3}))
    policy = QCPolicy()
    scans = VerificationScans(transport, ["a", "b", "m"], fraction=1.0, seed=0)
    gate = UpdateVerification(UPDATE_CRITERIA[criterion](), policy, scans)
    policy.start(scans.score(LINEAR))
    gate.screen(LINEAR, 0)
    accepted = {}
    for site in ("a", "m"):
        gate.check(site, LINEAR, 0)
        reply = transport.train(site, LINEAR, TrainRequest(lr=1e-3, seed=0, batch_size=2, nonce="n1"))
        accepted[site] = gate.judge(Update(reply, 0, site, "visit", (), time.perf_counter()))
    assert accepted["a"]
    row = policy.log[-1]
    assert row["site"] == "m" and row["criterion"] == criterion and row["accepted"] == accepted["m"]
    assert accepted["m"] == (criterion == "calibrated")


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean", "krum"])
def test_robust_aggregators_bound_a_targeted_shift(aggregator):
    """(c) FedAvg over five sites, one adding a targeted shift (size 3): the honest sites leave the classifier's bias
    as it was, the weighted mean moves it by a fifth of the liar's; the median, trimmed mean (β 0.2) and Krum (f 1)
    keep the bias and the classifier's weights among the honest updates'."""
    steps = {"a": 0.2, "b": 0.25, "c": 0.3, "d": 0.22}
    transport = Sites(**{s: Linear(s, v, i) for i, (s, v) in enumerate(steps.items())},
                      m=Adversary(Linear("m", 0.25, 9), "targeted_shift", {"size": 3}))

    def averaged(agg):
        round_ = AveragingRound(sorted(transport.sites), flower_strategy("fedavg", 0.0), seed=0, aggregator=agg)
        return round_(PlainVisitor(transport, TrainConfig()), LINEAR, 0, 1e-3, lambda *_: None)[0]

    assert averaged(None)["classifier.bias"][0] > 0.2
    robust = averaged(Aggregator(aggregator, trim_beta=0.2, krum_f=1))
    assert robust["classifier.bias"][0] == pytest.approx(0.0, abs=1e-6)
    honest = [LINEAR["classifier.weight"] + np.float32(0.02 * v) for v in steps.values()]
    assert (robust["classifier.weight"] >= np.min(honest, 0) - 1e-6).all()
    assert (robust["classifier.weight"] <= np.max(honest, 0) + 1e-6).all()


@pytest.mark.parametrize("label", [0, 1])
def test_a_targeted_shift_moves_only_the_real_models_output_layer(label):
    """On the real network's arrays: beyond the honest update, only the output layer's label row moves (weights
    towards 0, the bias towards ±TARGET_LOGIT), by ``size`` × the honest change's norm; the reply stays well-formed."""
    from fedqc.config import ModelSpec
    from fedqc.models.state import initial_state

    sent = initial_state(ModelSpec("sfcn", 0.25, (16, 16, 16)), 0)
    reply = {k: (v + np.float32(1e-3)).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
             for k, v in sent.items()}
    lied = shifted(sent, reply, label, 2.0)
    assert check_update(sent, lied) is None
    assert sorted(k for k in sent if not np.array_equal(lied[k], reply[k])) == sorted(CLASSIFIER)
    extra = np.sqrt(sum(np.sum((lied[k].astype(float) - reply[k]) ** 2) for k in CLASSIFIER))
    assert extra == pytest.approx(2.0 * change_norm(sent, reply), rel=1e-4)
    weight, bias = CLASSIFIER
    assert np.linalg.norm(lied[weight][0]) < np.linalg.norm(reply[weight][0])
    assert np.sign(lied[bias][0] - reply[bias][0]) == (1 if label == 1 else -1)


def test_the_count_check_refuses_an_inflated_count_and_names_it():
    """(d) FedAvg over three sites, one reporting 100× the scans it trained: weighted by reply counts the average
    follows the liar; with the count check (its enrolled training scans bound what it can have trained) its reply
    is refused, the hop naming the check, and the average is the honest sites'."""
    transport = Sites(a=Honest(1.0), b=Honest(2.0), m=Adversary(Honest(3.0), "inflated_count", {"factor": 100}))
    enrolled = {s: tuple(f"s{i}" for i in range(10)) for s in "abm"}
    state = {"w": np.zeros(2, dtype=np.float32)}
    round_ = AveragingRound(["a", "b", "m"], flower_strategy("fedavg", 0.0), seed=0)

    def averaged(enrolment):
        visitor = PlainVisitor(transport, TrainConfig(), enrolled=enrolment)
        return round_(visitor, state, 0, 1e-3, lambda *_: None)

    undefended, hops = averaged(None)
    assert np.allclose(undefended["w"], (10 + 20 + 3000) / 1020, atol=1e-5)  # the liar's weight: 1000 of 1020
    assert all(h.status == HopStatus.OK for _, h, _ in hops)
    defended, hops = averaged(enrolled)
    assert np.allclose(defended["w"], 1.5, atol=1e-6)  # the two honest sites, 10 scans each
    liar = {site: h for site, h, _ in hops}["m"]
    assert liar.status == HopStatus.REJECTED
    assert liar.note == "count check: the reply claims 1000 scans trained, 10 asked"


# ----------------------------------------------------------------------------- robust BatchNorm pooling
WIDTHS = [3, 2]


def _site_moments(rng, scans: int, voxels=(50, 20), mean=0.0, sd=1.0):
    """One site's BatchNorm moments of two layers (``WIDTHS`` channels), from ``scans`` × ``voxels`` values."""
    n, sums, sqs = [], [], []
    for width, v in zip(WIDTHS, voxels):
        x = rng.normal(mean + rng.normal(0, 0.1, width), sd * rng.uniform(0.9, 1.1, width), (scans * v, width))
        n.append(scans * v)
        sums.append(x.sum(0))
        sqs.append((x**2).sum(0))
    return {"bn_n": np.array(n, dtype=np.int64), "bn_sum": np.concatenate(sums), "bn_sq": np.concatenate(sqs)}


def _mean_var(m):
    n = np.repeat(m["bn_n"].astype(float), WIDTHS)
    mean = m["bn_sum"] / n
    return mean, m["bn_sq"] / n - mean**2


def test_robust_pooling_keeps_the_pooled_statistics_within_epsilon_of_the_honest_run():
    """(a) Five sites, one claiming 1000× its values with means 10 SDs off and SDs ×10. Summed, the pooled means move
    far beyond ε; robustly pooled they stay within ε = p · (clip · d_max + spread) of the honest run's (p the liar's
    enrolled share, d_max the largest honest channel SD, spread the range of the sites' honest channel means), and
    the variances within p · 2 clip² d_max² + 2 clip d_max ε; the honest run itself pools as the plain sum."""
    rng = np.random.default_rng(0)
    scans = [8, 6, 10, 7, 9]
    honest = [_site_moments(rng, k) for k in scans]
    clip, liar = 3.0, 2
    lied = [*honest[:liar], lying_moments(honest[liar], WIDTHS, 1000, 10, 10), *honest[liar + 1:]]

    def summed(ms):
        return _mean_var({k: np.sum([m[k] for m in ms], axis=0) for k in ms[0]})

    def robust(ms):
        return _mean_var(robust_moments(ms, scans, WIDTHS, clip))

    truth_mean, truth_var = summed(honest)
    for a, b in zip(robust(honest), (truth_mean, truth_var)):
        assert np.allclose(a, b, rtol=1e-10)  # no honest site is clipped: the exact pooled statistics
    per_site = [_mean_var(m) for m in honest]
    d_max = np.sqrt(np.max([v for _, v in per_site], axis=0))
    spread = np.ptp([mu for mu, _ in per_site], axis=0)
    p = scans[liar] / sum(scans)
    eps_mean = p * (clip * d_max + spread)
    eps_var = p * 2 * clip**2 * d_max**2 + 2 * clip * d_max * eps_mean

    sum_mean, sum_var = summed(lied)
    assert (np.abs(sum_mean - truth_mean) > eps_mean).all()  # undefended: every channel pushed past ε
    rob_mean, rob_var = robust(lied)
    assert (np.abs(rob_mean - truth_mean) <= eps_mean).all()
    assert (np.abs(rob_var - truth_var) <= eps_var).all()
    assert (np.abs(sum_var - truth_var) > eps_var).all()


# ----------------------------------------------------------------------------- end to end
# a ×1000 update: refused by the norm check, or first by the form check where the scaled change of a BatchNorm
# running variance makes it negative
SCALED_REFUSED = r"^update norm check|running_var: negative variances$"


def test_a_lying_site_in_a_run_is_rejected_and_named(tiny_cohort, tmp_path):
    """An in-process run whose site beta scales its updates ×1000: with the norm check its hops are rejected in
    train_log.csv, with the check's name; its ground truth lies in the run's data folder."""
    cfg = tiny_config(tiny_cohort / "manifest.csv", arms=["clean"], train={"cycles": 2, "order": "fixed"},
                      scenario={"adversarial": [{"sites": ["beta"], "attack": "scaled_update"}]},
                      defence={"update_norm": 10.0, "norm_warmup": 1})
    simulate(cfg, tmp_path / "run", quiet=True)
    log = pd.read_csv(tmp_path / "run" / "clean" / "train_log.csv")
    beta = log[log["site"] == "beta"]
    assert (beta["status"] == "rejected").all() and beta["note"].str.contains(SCALED_REFUSED).all()
    assert (log.loc[log["site"] != "beta", "status"] == "ok").all()
    truth = pd.read_csv(tmp_path / "run" / "data" / ADVERSARIAL)
    assert truth[["site", "attack"]].to_dict("records") == [{"site": "beta", "attack": "scaled_update"}]
    assert set(load_manifest(tmp_path / "run" / "data" / "manifest.csv", check_images=False)["site"]) >= {"beta"}


def test_calibration_with_robust_pooling_resists_a_site_lying_about_its_moments(tiny_cohort):
    """(a) through the calibrator: beta claims 1000× its BatchNorm values, shifted 10 SDs. Summed pooling hands it
    every layer's statistics; robust pooling (counts bounded by the val scans each site declared) keeps the first
    layer's (whose inputs no pooling changes) within ε of the honest run's, ε as in the fixture test above."""
    from fedqc.config import CalibrationConfig
    from fedqc.protocol import EvalRequest
    from fedqc.strategies.calibration import Calibrator, batchnorm_layers
    from fedqc.transport.inprocess import InProcessTransport
    from tests.test_calibration import SPEC, _shifted_state

    transport = InProcessTransport(load_manifest(tiny_cohort / "manifest.csv"), SPEC)
    info = transport.site_info()
    scans = {"alpha": (), "beta": (), "gamma": ()}
    state = _shifted_state()
    first = batchnorm_layers(state)[0] + "running_mean"
    config = CalibrationConfig(batchnorm="federated", bn_passes=1)
    honest, _ = Calibrator(transport, config)(state, scans)
    moments = {s: transport.sites[s].evaluate(state, EvalRequest("val", batchnorm=True, bn_layers=(0,))).moments
               for s in scans}
    width = state[first].shape[0]
    mean = {s: m["bn_sum"][:width] / m["bn_n"][0] for s, m in moments.items()}
    sd = {s: np.sqrt(m["bn_sq"][:width] / m["bn_n"][0] - mean[s] ** 2) for s, m in moments.items()}
    p = info["beta"].n_val / sum(info[s].n_val for s in scans)
    eps = p * (3.0 * np.max(list(sd.values()), axis=0) + np.ptp(list(mean.values()), axis=0))

    transport.sites["beta"] = Adversary(transport.sites["beta"], "bn_moments")
    summed, _ = Calibrator(transport, config)(state, scans)
    robust, _ = Calibrator(transport, config, "robust", 3.0, {s: i.n_val for s, i in info.items()})(state, scans)
    assert (np.abs(summed[first] - honest[first]) > eps).all()
    assert (np.abs(robust[first] - honest[first]) <= eps).all()


def test_counts_bounded_by_enrolment_leave_an_honest_fedavg_run_bit_identical(tiny_cohort, tmp_path):
    """The default ``counts: enrolment`` changes nothing when every site is honest (the clean arm leaves scans out,
    so the sites' counts differ from their enrolled ones)."""
    from fedqc.experiment.run_dir import ArmDir, load_checkpoint
    from tests.conftest import same

    states = []
    for counts in ("reply", "enrolment"):
        cfg = tiny_config(tiny_cohort / "manifest.csv", arms=["clean"], train={"cycles": 2},
                          strategy={"name": "fedavg"}, defence={"counts": counts})
        simulate(cfg, tmp_path / counts, quiet=True)
        states.append(load_checkpoint(ArmDir(tmp_path / counts / "clean").checkpoint(1))["state"])
    assert same(*states)


def test_an_arm_that_starts_from_another_goes_on_with_its_norm_check(tiny_cohort, tmp_path):
    """The dirty and QC arms start from the clean arm's checkpoint of cycle W and judge their first updates
    against the norms the clean arm had accepted by then, not against an empty window (whose warm-up would let a
    liar's scaled update in, as long as it is smaller than the model)."""
    from fedqc.experiment.run_dir import RunDir, load_checkpoint

    cfg = tiny_config(tiny_cohort / "manifest.csv", arms=["clean", "dirty", "qc"], train={"cycles": 3, "branch_cycle": 1},
                      defence={"update_norm": 50.0})
    simulate(cfg, tmp_path / "run", quiet=True)
    run = RunDir(tmp_path / "run")

    def norms(arm, cycle):
        return load_checkpoint(run.arm(arm).checkpoint(cycle))["qc"]["update_norms"]

    clean = norms("clean", 1)
    assert len(clean) >= 2
    for arm in ("dirty", "qc"):
        assert norms(arm, 2)[:len(clean)] == clean and len(norms(arm, 2)) > len(clean)


def test_a_qc_arm_names_a_site_whose_update_fails_the_norm_check(tiny_cohort, tmp_path):
    """(c) in a QC arm (update verification): beta's ×1000 updates are rejected before they are verified, each row of
    qc_log.csv naming beta and the check."""
    cfg = tiny_config(tiny_cohort / "manifest.csv", arms=["clean", "qc-loss-batch"], train={"cycles": 3, "branch_cycle": 1},
                      scenario={"adversarial": [{"sites": ["beta"], "attack": "scaled_update"}]},
                      defence={"update_norm": 10.0, "norm_warmup": 1})
    simulate(cfg, tmp_path / "run", quiet=True)
    log = pd.read_csv(tmp_path / "run" / "qc-loss-batch" / "qc_log.csv")
    beta = log[log["site"] == "beta"]
    assert len(beta) and (beta["criterion"] == "invalid update").all() and not beta["accepted"].any()
    assert beta["note"].str.contains(SCALED_REFUSED).all()
    assert log.loc[log["site"] != "beta", "accepted"].any()


# ----------------------------------------------------------------------------- (f) a replayed reply
def test_message_freshness_refuses_a_replayed_reply(monkeypatch):
    """(f) A site that answers every request after its first with that first reply: well-formed, so without
    freshness (requests without a nonce) the stale model is adopted and the model goes back; with a fresh nonce per
    request (the default) the replay is refused and the note names the check."""
    transport = Sites(a=Honest(0.1), m=Adversary(Honest(0.1), "replay"))
    state = {"w": np.zeros(3, dtype=np.float32)}

    def hops():
        visitor = PlainVisitor(transport, TrainConfig())
        first = visitor.visit("m", state, 0, 1e-3)
        moved = visitor.visit("a", first.state, 0, 1e-3)
        return moved, visitor.visit("m", moved.state, 1, 1e-3)

    transport.sites["m"].replayed = None
    moved, defended = hops()
    assert defended.status == HopStatus.REJECTED and defended.note.startswith("stale reply (message freshness)")
    assert np.array_equal(defended.state["w"], moved.state["w"])  # the model goes on as it was

    import fedqc.strategies.cycles

    monkeypatch.setattr(fedqc.strategies.cycles.secrets, "token_hex", lambda n: "")  # no freshness
    transport.sites["m"].replayed = None
    moved, undefended = hops()
    assert undefended.status == HopStatus.OK and np.allclose(undefended.state["w"], 0.1)  # back to the first reply
    assert not np.allclose(moved.state["w"], 0.1)
    assert check_update(state, transport.sites["m"].replayed.state) is None  # its form is fine


def test_message_freshness_refuses_a_replayed_evaluation_reply(monkeypatch):
    """(f) for evaluations: a site that answers a question asked before (same split and options) with its first
    reply — the scores of an earlier model. Every evaluation request through FreshTransport carries a fresh nonce, so
    the stale reply is refused (failed, no scores), its reason the stale-reply check's; an honest site's reply and a
    new question are answered. Without freshness (no nonce) the stale scores are believed."""
    import fedqc.transport.fresh

    liar = Adversary(Linear("m", 0.25, 2), "replay", {"evaluations": 1})
    transport = FreshTransport(Sites(a=Linear("a", 0.25, 0), m=liar))
    moved = {**LINEAR, "classifier.bias": LINEAR["classifier.bias"] + np.float32(1.0)}

    def replayed():
        liar.replayed_evaluations.clear()
        first = transport.evaluate(["a", "m"], LINEAR, EvalRequest("val"))["m"]
        return first, transport.evaluate(["a", "m"], moved, EvalRequest("val"))

    first, later = replayed()
    assert first.error is None and first.answers
    assert later["a"].error is None and later["a"].scores["score"].gt(first.scores["score"].min()).any()
    assert later["m"].error.startswith("stale reply (message freshness): it answers request ")
    assert later["m"].scores.empty and later["m"].moments is None
    assert transport.evaluate(["m"], moved, EvalRequest("test"))["m"].error is None  # a new question

    monkeypatch.setattr(fedqc.transport.fresh.secrets, "token_hex", lambda n: "")  # no freshness
    first, later = replayed()
    assert later["m"].error is None and later["m"].scores.equals(first.scores)  # the earlier model's scores
    assert not later["m"].scores.equals(Linear("m", 0.25, 2).evaluate(moved, EvalRequest("val")).scores)


def test_a_refused_verification_reply_leaves_the_other_sites_scores_numeric():
    """A refused (or failed) reply has an empty, untyped score table: left out of the verification scores, so that
    the QC baseline takes the others' (concatenated, pandas made the scores objects and refused them)."""
    from fedqc.qc.policy import QCPolicy

    good = Linear("a", 0.25, 0).evaluate(LINEAR, EvalRequest("val"))
    table = scores_table([good, EvalReply.failed("stale reply (message freshness): it answers request x, not y")])
    assert table["score"].dtype == np.float64 and len(table) == 20
    policy = QCPolicy()
    policy.start(table)
    policy.rebase(table.assign(score=table["score"] / 2))
    assert np.allclose(policy.baseline["score"], good.scores["score"].to_numpy() / 2)


def test_the_evaluation_nonce_travels_through_the_flower_codec():
    """The nonce goes out in the request's fields and comes back in the reply's ids (what a Flower message carries)."""
    from fedqc.transport.flower.codec import decode_eval_reply, encode_eval_reply

    request = EvalRequest("val", exclude=("a1",), nonce="0f1e2d3c4b5a6978")
    assert EvalRequest.from_dict(request.to_dict()) == request
    decoded = decode_eval_reply(encode_eval_reply(Linear("a", 0.25, 0).evaluate(LINEAR, request)))
    assert decoded.answers == request.nonce and check_fresh(request, decoded) is None
    assert check_fresh(dataclasses.replace(request, nonce="ffff"), decoded).startswith("stale reply")


def test_a_replaying_and_a_framing_site_in_a_qc_run(tiny_cohort, tmp_path):
    """(f) end to end: beta replays its first reply; every later one is refused in train_log.csv and qc_log.csv, and
    adversaries.csv names beta with the check it failed. It also replays its evaluation replies: each is refused and
    named in errors.csv (stages test and verification) and in calibration.csv's note; no honest site's is.
    (d) harm01-inverted claims 100× its scans: the QC arm refuses every update of it before verification,
    qc_log.csv and adversaries.csv naming the count check (the clean arm leaves that harmful site out).
    (g) gamma frames alpha: recorded with its target (adversaries.csv shows whether alpha was named: the framing's
    success; a plain arm has no check that sees it)."""
    cfg = tiny_config(tiny_cohort / "manifest.csv", arms=["clean", "qc-loss-batch"], train={"cycles": 3, "branch_cycle": 1},
                      scenario={"adversarial": [{"sites": ["beta"], "attack": "replay", "params": {"evaluations": 1}},
                                                {"sites": ["gamma"], "attack": "framing",
                                                 "params": {"target": "alpha"}},
                                                {"sites": ["harm01-inverted"], "attack": "inflated_count"}]})
    simulate(cfg, tmp_path / "run", quiet=True)
    train = pd.read_csv(tmp_path / "run" / "clean" / "train_log.csv")
    beta = train[(train["site"] == "beta")].sort_values("cycle")
    assert beta["status"].tolist() == ["ok", "rejected", "rejected"]
    assert beta["note"].iloc[1:].str.startswith("stale reply (message freshness)").all()
    qc_log = pd.read_csv(tmp_path / "run" / "qc-loss-batch" / "qc_log.csv")
    assert (qc_log.loc[qc_log["site"] == "beta", "criterion"] == "invalid update").all()
    assert not qc_log.loc[qc_log["site"] == "beta", "accepted"].any()
    inflated = qc_log[qc_log["site"] == "harm01-inverted"]
    assert len(inflated) and not inflated["accepted"].any() and inflated["note"].str.startswith("count check").all()
    table = pd.read_csv(tmp_path / "run" / "qc-loss-batch" / "adversaries.csv").set_index("site")
    assert table.loc["harm01-inverted", "named"] and table.loc["harm01-inverted", "checks"] == "count check"
    for arm in ("clean", "qc-loss-batch"):
        table = pd.read_csv(tmp_path / "run" / arm / "adversaries.csv").set_index("site")
        assert table.loc["beta", "role"] == "replay" and table.loc["beta", "named"]
        assert table.loc["beta", "checks"] == "stale reply (message freshness)"
        assert table.loc["gamma", "role"] == "framing" and table.loc["alpha", "role"] == "framed by gamma"
    clean = pd.read_csv(tmp_path / "run" / "clean" / "adversaries.csv").set_index("site")
    assert not clean.loc["gamma", "named"] and clean.loc["alpha", "refused"] == 0  # a plain arm: framing passes
    # the clean arm's test answer at cycle 0 is beta's first; the QC arm branches after cycle 1
    for arm, stages, cycles in (("clean", {"test"}, [1, 2]), ("qc-loss-batch", {"test", "verification"}, [2])):
        errors = pd.read_csv(tmp_path / "run" / arm / "errors.csv")
        stale = errors[errors["reason"].str.startswith("stale reply (message freshness)")]
        assert set(stale["stage"]) == stages
        assert ((stale["site"] == "beta") | stale["reason"].str.endswith("(site beta)")).all()
        assert stale.loc[stale["stage"] == "test", "cycle"].tolist() == cycles
        notes = pd.read_csv(tmp_path / "run" / arm / "calibration.csv")["note"].fillna("")
        assert notes.str.contains("no answer from beta (stale reply (message freshness)", regex=False).any()


# ----------------------------------------------------------------------------- (g) framing
def test_a_framing_update_reverses_the_framed_sites_update():
    """(g) The framer sends its own update minus the framed site's: on a loss that site's scans define (its step
    descends it), the framed update raises that loss where the framer's honest update lowered it."""
    target = np.array([1.0, -2.0, 0.5])

    class Descends(Honest):  # one step towards ``target``: the framed site's kind of scans
        def train(self, state, request):
            return TrainReply({"w": state["w"] + 0.5 * (target - state["w"])}, 10, 0.5, 0.0, [],
                              answers=request.nonce)

    def loss(w):
        return float(np.sum((w - target) ** 2))

    victim = Descends(0.0)
    state = {"w": np.zeros(3)}
    request = TrainRequest(lr=1e-3, seed=0, batch_size=2, subjects=("m0",), nonce="n1")
    honest = Descends(0.0).train(state, request)
    framer = Adversary(Descends(0.0), "framing", {"target": "v", "factor": 2.0}, peers={"v": victim})
    reply = framer.train(state, request)
    assert loss(honest.state["w"]) < loss(state["w"]) < loss(reply.state["w"])
    assert np.allclose(reply.state["w"], honest.state["w"] - 2.0 * (victim.train(state, request).state["w"]))
    assert reply.answers == "n1" and check_update(state, reply.state) is None
    with pytest.raises(ValueError, match="framed site 'x' is not among the peers"):
        Adversary(Honest(0.1), "framing", {"target": "x"})


def test_a_framing_update_that_makes_a_batchnorm_variance_negative_is_refused():
    """Reversing another site's BatchNorm statistics can leave a running variance below zero: finite arrays whose
    model scores every scan NaN (a framing run showed it). The form check refuses such a reply, and the site check
    fails a site whose own scores are not finite instead of crashing on them."""
    from fedqc.qc.criteria import SiteAUROCCheck
    from fedqc.qc.policy import site_decision

    state = {"enc.0.running_var": np.array([1.0, 0.2], np.float32), "enc.0.weight": np.ones(2, np.float32)}
    victim = {"enc.0.running_var": np.array([1.5, 0.9], np.float32), "enc.0.weight": np.ones(2, np.float32)}
    framed = {k: 2 * state[k] - victim[k] for k in state}  # the sent state minus the victim's change
    assert check_update(state, framed) == "enc.0.running_var: negative variances"
    assert check_update(state, victim) is None
    labels = np.tile([0, 1], 10)
    verification = pd.DataFrame({"label": labels, "score": np.linspace(0, 1, 20), "site": np.repeat(["a", "b"], 10)})
    site = pd.DataFrame({"label": labels[:8], "score": [np.nan] * 8})
    ok, stats = site_decision(SiteAUROCCheck(alpha=0.01), verification, site)
    assert not ok and stats["note"] == "8 of 8 of the site's scores are not finite"


# ----------------------------------------------------------------------------- (b) fake scores
class Scores:
    """A site whose evaluation scores are random (a model with no skill), and whose image checks find a blank scan."""

    def check_images(self):
        return [ImageFinding("s0", "train", "blank")]

    def evaluate(self, state, request):
        rng = np.random.default_rng(0)
        scores = pd.DataFrame({"subject": [f"s{i}" for i in range(20)], "site": "m", "label": np.tile([0, 1], 10),
                               "score": rng.random(20), "sex": "F", "age": 60.0})
        return EvalReply(counts_from_scores(scores["label"], scores["score"]), scores)


def test_fake_scores_rank_the_sites_own_scans_perfectly_and_leave_the_test_split():
    """(b) The liar's train and val scores rank every patient above every control, with counts that agree: what
    QC's site and label checks read of its own scans. Its test scores (the reported metrics) stay honest."""
    from sklearn.metrics import roc_auc_score

    liar = Adversary(Scores(), "fake_scores")
    for split in ("train", "val"):
        reply = liar.evaluate({}, EvalRequest(split))
        assert roc_auc_score(reply.scores["label"], reply.scores["score"]) == 1.0
        assert reply.scores["score"].between(0, 1, inclusive="neither").all() and reply.scores["score"].nunique() == 20
        assert reply.counts["tp"] == 10 and reply.counts["tn"] == 10 and reply.counts["fp"] == 0
    honest = Scores().evaluate({}, EvalRequest("test"))
    assert liar.evaluate({}, EvalRequest("test")).scores.equals(honest.scores)
    assert liar.check_images() == []  # it hides its harm from the image audit too


# ----------------------------------------------------------------------------- (e) a backdoor
def test_a_backdoor_poisons_a_share_of_its_scans_and_writes_triggered_test_scans(tiny_cohort, tmp_path):
    """(e) alpha's backdoor: half of its training scans of label 0 carry the trigger with label 1, recorded as harm
    kind backdoor (scored by detection.csv like any harm); triggered.csv holds every test scan of label 0 with
    the trigger, its label kept."""
    from fedqc.data.images import pixels
    from fedqc.qc.detection import score_detection

    scenario = Scenario.from_dict({"adversarial": [{"sites": ["alpha"], "attack": "backdoor",
                                                    "params": {"share": 0.5, "label": 1, "value": 255}}]})
    before = load_manifest(tiny_cohort / "manifest.csv", check_images=False)
    out = tmp_path / "out"
    inject(tiny_cohort / "manifest.csv", scenario, out)
    after = load_manifest(out / "manifest.csv")
    poisoned = after[after["harm"] == "backdoor"]
    pool = before[(before["site"] == "alpha") & (before["split"] == "train") & (before["label"] == 0)
                  & (before["harm"] == "none")]
    assert len(poisoned) == int(np.floor(0.5 * len(pool) + 0.5)) and set(poisoned["subject"]) <= set(pool["subject"])
    assert (poisoned["label"] == 1).all()

    def corner(path):
        image = pixels(sitk.ReadImage(str(path)))
        return image[tuple(slice(int(0.1 * n), int(0.1 * n) + max(1, round(0.15 * n))) for n in image.shape)]

    assert all((corner(p) == 255).all() for p in poisoned["path"])
    triggered = load_manifest(out / TRIGGERED)
    test0 = before[(before["split"] == "test") & (before["label"] == 0)]
    assert sorted(triggered["subject"]) == sorted(test0["subject"]) and (triggered["label"] == 0).all()
    assert all((corner(p) == 255).all() for p in triggered["path"])
    assert not all((corner(p) == 255).all() for p in test0["path"])
    kinds = score_detection(after, pd.DataFrame(columns=["subject"]), pd.DataFrame(columns=["subject"]))
    assert kinds.loc[kinds["name"] == "backdoor", "harmful"].tolist() == [len(poisoned)]


def test_a_run_measures_a_backdoors_success_on_triggered_test_scans(tiny_cohort, tmp_path):
    """(e) Every arm writes backdoor.json: the share of triggered test scans its last model gives the backdoor's
    label at the arm's threshold, beside the share of the same scans without the trigger."""
    from fedqc.analysis.infer import predict_checkpoint
    from fedqc.experiment.run_dir import ArmDir

    cfg = tiny_config(tiny_cohort / "manifest.csv", arms=["clean", "dirty"], train={"cycles": 2},
                      scenario={"adversarial": [{"sites": ["alpha"], "attack": "backdoor"}]})
    simulate(cfg, tmp_path / "run", quiet=True)
    for arm in ("clean", "dirty"):
        result = json.loads((tmp_path / "run" / arm / "backdoor.json").read_text())
        arm_dir = ArmDir(tmp_path / "run" / arm)
        scores = predict_checkpoint(arm_dir.checkpoint(1), load_manifest(tmp_path / "run" / "data" / TRIGGERED))
        assert result["triggered"] == len(scores) > 0 and result["label"] == 1 and result["cycle"] == 1
        assert result["attack_success"] == pytest.approx((scores["score"] >= arm_dir.threshold(1)).mean())
        assert 0 <= result["clean_rate"] <= 1


# ----------------------------------------------------------------------------- Flower's robust aggregators
@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean", "krum"])
def test_robust_aggregators_keep_a_scaled_update_out_of_the_average(aggregator):
    """FedAvg over five sites, one scaling its update ×1000: the weighted mean follows the liar; Flower's median,
    trimmed mean (β 0.2: one of five cut at each end) and Krum (f 1) stay among the honest updates."""
    class Counts(Honest):  # also counts its batches in an integer array, as BatchNorm does
        def train(self, state, request):
            reply = super().train(state, request)
            return dataclasses.replace(reply, state={**reply.state, "n": state["n"] + 1})

    steps = {"a": 1.0, "b": 1.1, "c": 0.9, "d": 1.05}
    transport = Sites(**{s: Counts(v) for s, v in steps.items()},
                      m=Adversary(Counts(1.0), "scaled_update", {"factor": 1000}))
    state = {"w": np.zeros(2, dtype=np.float32), "n": np.zeros(1, dtype=np.int64)}

    def averaged(agg):
        round_ = AveragingRound(sorted(transport.sites), flower_strategy("fedavg", 0.0), seed=0, aggregator=agg)
        out = round_(PlainVisitor(transport, TrainConfig()), state, 0, 1e-3, lambda *_: None)[0]
        assert out["n"].dtype == np.int64
        return out["w"]

    assert (averaged(None) > 100).all()
    robust = averaged(Aggregator(aggregator, trim_beta=0.2, krum_f=1))
    assert (robust >= min(steps.values()) - 1e-6).all() and (robust <= max(steps.values()) + 1e-6).all()


# ----------------------------------------------------------------------------- detection of lying sites
def test_adversaries_table_names_liars_with_their_checks_and_counts_honest_refusals():
    liars = {"m": ("scaled_update", {}), "f": ("framing", {"target": "v"})}
    decisions = pd.DataFrame({"site": ["m", "m", "f", "v", "v", "h", "h", "x", "x"],
                              "accepted": [False, True, True, False, True, True, False, False, False],
                              "criterion": ["invalid update", "loss", "loss", "loss", "loss", "loss", "loss", "auroc",
                                            "auroc"],
                              "note": ["update norm check: change norm 9 > 3", "", "", "", "", "", "", "", ""]})
    table = score_adversaries(liars, decisions, {"v"}, harmful_sites={"x"}).set_index("role")
    assert table.loc["scaled_update"].to_dict() == {"site": "m", "updates": 2, "refused": 1, "refused_rate": 0.5,
                                                          "named": True, "checks": "update norm check",
                                                          "eliminated": 0}
    assert not table.loc["framing", "named"]
    assert table.loc["framed by f", "checks"] == "loss" and table.loc["framed by f", "eliminated"] == 1
    assert table.loc["honest", "site"] == "1 site(s)" and table.loc["honest", "refused"] == 1
    assert table.loc["honest, harmful data", "refused"] == 2 and table.loc["honest, harmful data", "checks"] == "auroc"
    form = decisions.assign(note=["encoder.13.running_var: negative variances", *[""] * 8])
    assert score_adversaries(liars, form).set_index("role").loc["scaled_update", "checks"] == \
        "form check (negative variances)"


def test_adversaries_table_of_a_qc_log_without_notes(tmp_path):
    """A QC arm whose log has no note column (no reply refused by a check before verification: a liar that only a
    criterion judged) still gets its adversaries.csv, the liar named by the criterion."""
    from types import SimpleNamespace

    from fedqc.experiment.adversarial import write_adversaries
    from fedqc.experiment.run_dir import ArmDir

    pd.DataFrame({"cycle": [1, 1], "site": ["m", "a"], "criterion": ["loss", "loss"],
                  "accepted": [False, True]}).to_csv(tmp_path / "qc_log.csv", index=False)
    qc = SimpleNamespace(folder=tmp_path, policy=SimpleNamespace(eliminated_sites={}))
    write_adversaries(ArmDir(tmp_path), {"m": ("targeted_shift", {})}, qc, None)
    table = pd.read_csv(tmp_path / "adversaries.csv").set_index("site")
    assert table.loc["m", "named"] and table.loc["m", "checks"] == "loss" and table.loc["m", "refused"] == 1


@pytest.mark.slow
@pytest.mark.flower
def test_lying_sites_through_the_flower_simulation(tiny_cohort, tmp_path):
    """The ClientApp wraps the lying sites itself: over Flower's simulation engine beta's replayed reply (a fresh
    Flower message carrying a stale nonce) is refused and named as in-process, and so is its replayed evaluation
    reply; every honest site's evaluation reply names its request's nonce through the codec."""
    cfg = tiny_config(tiny_cohort / "manifest.csv", arms=["clean"], engine="flower", train={"cycles": 2},
                      scenario={"adversarial": [{"sites": ["beta"], "attack": "replay", "params": {"evaluations": 1}}]})
    simulate(cfg, tmp_path / "run", quiet=True)
    log = pd.read_csv(tmp_path / "run" / "clean" / "train_log.csv")
    beta = log[log["site"] == "beta"].sort_values("cycle")
    assert beta["status"].tolist() == ["ok", "rejected"] and beta["note"].iloc[1].startswith("stale reply")
    assert (log.loc[log["site"] != "beta", "status"] == "ok").all()
    table = pd.read_csv(tmp_path / "run" / "clean" / "adversaries.csv").set_index("site")
    assert table.loc["beta", "named"] and table.loc["beta", "checks"] == "stale reply (message freshness)"
    errors = pd.read_csv(tmp_path / "run" / "clean" / "errors.csv")  # its evaluation replies too, every nonce carried
    stale = errors[errors["reason"].str.startswith("stale reply (message freshness)")]
    assert stale[["site", "cycle", "stage"]].to_dict("records") == [{"site": "beta", "cycle": 1, "stage": "test"}]
