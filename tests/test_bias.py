"""Spurious bias: planted markers and the bias-flipped test split, the unlearning heads (gradient reversal,
Kim et al.'s and HarmonyTM's updates), their travelling state, and the bias probe."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from fedqc.analysis import bias
from fedqc.analysis.bias import FLIPPED, bias_row, probe_accuracy
from fedqc.analysis.infer import predict_checkpoint
from fedqc.config.schema import ModelSpec, model_dict, model_spec
from fedqc.data.corruptions.scenario import Scenario
from fedqc.data.inject import inject
from fedqc.data.manifest import load_manifest
from fedqc.errors import ConfigError, UserError
from fedqc.experiment.run_dir import ArmDir, RunDir, load_checkpoint
from fedqc.experiment.runner import simulate
from fedqc.models.state import initial_state
from fedqc.site.site import Site
from fedqc.site.unlearning import confusion_loss, negative_entropy, reverse_gradient, unlearning_step
from fedqc.transport.flower.codec import model_from_config, site_config, to_config
from tests.conftest import checkpoint_path, same, tiny_config


# ----------------------------------------------------------------------------- losses and the reversal layer
def test_gradient_reversal_flips_the_sign_and_scales_the_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    (reverse_gradient(x, 0.25) * w).sum().backward()
    assert torch.equal(x.grad, -0.25 * w)
    y = torch.randn(4, 3)
    assert torch.equal(reverse_gradient(y, 3.0), y)  # identity forward


def test_entropy_and_confusion_losses_are_lowest_at_chance():
    uniform, sure = torch.zeros(5, 4), torch.tensor([[20.0, 0, 0, 0]] * 5)
    assert negative_entropy(uniform).item() == pytest.approx(-np.log(4))
    assert negative_entropy(sure).item() == pytest.approx(0.0, abs=1e-6)
    assert confusion_loss(uniform).item() == pytest.approx(np.log(4))
    assert confusion_loss(sure).item() > 4  # far from the uniform distribution


# ----------------------------------------------------------------------------- the heads' updates
def _nets(seed: int = 0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU()), nn.Linear(5, 1), nn.Linear(5, 3)


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 6, generator=g), torch.randint(0, 2, (4,), generator=g).float(),
             torch.randint(0, 3, (4,), generator=g)) for _ in range(3)]


def _ours(kind: str, alpha: float, beta: float):
    encoder, classifier, head = _nets()
    opt = torch.optim.Adam([p for m in (encoder, classifier, head) for p in m.parameters()], lr=0.01)
    for x, y, b in _batches():
        def task(f, y=y):
            loss = nn.functional.binary_cross_entropy_with_logits(classifier(f).squeeze(1), y)
            return loss, loss
        unlearning_step(kind, encoder=encoder, classifier=classifier, head=head, optimizer=opt, x=x, bias=b,
                        task=task, bias_weight=alpha, unlearn_weight=beta, autocast=contextlib.nullcontext)
    return encoder, classifier, head


def _params(*modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


def test_lntl_step_is_kims_two_optimizers():
    """Kim et al.: (f, g) step on task + λ·negative entropy of h(f(x)); then (f, h) step on h's cross-entropy
    through a reversal layer scaled by μ — with one optimizer for f and g and another for h."""
    encoder, classifier, head = _nets()
    opt_fg = torch.optim.Adam(list(encoder.parameters()) + list(classifier.parameters()), lr=0.01)
    opt_h = torch.optim.Adam(head.parameters(), lr=0.01)
    lam, mu = 0.3, 0.7
    for x, y, b in _batches():
        opt_fg.zero_grad()
        opt_h.zero_grad()
        f = encoder(x)
        p = torch.softmax(head(f), 1)
        loss = nn.functional.binary_cross_entropy_with_logits(classifier(f).squeeze(1), y) + \
            lam * (p * torch.log(p)).sum(1).mean()
        loss.backward()
        opt_fg.step()
        opt_fg.zero_grad()
        opt_h.zero_grad()
        nn.functional.cross_entropy(head(reverse_gradient(encoder(x), mu)), b).backward()
        opt_fg.step()
        opt_h.step()
    ours = _ours("lntl", mu, lam)
    for a, b in zip(_params(*ours), _params(encoder, classifier, head)):
        assert torch.allclose(a, b, atol=1e-6)


def test_confusion_step_is_harmonytms_three_updates():
    """HarmonyTM: encoder + task head on the task; the scanner head alone on α·its cross-entropy from the same
    features; the encoder alone on β·(−mean log softmax) — each module with its own Adam, the encoder's used twice."""
    encoder, classifier, head = _nets()
    opt_e, opt_c, opt_h = (torch.optim.Adam(m.parameters(), lr=0.01) for m in (encoder, classifier, head))
    alpha, beta = 0.5, 2.0
    for x, y, b in _batches():
        for o in (opt_e, opt_c, opt_h):
            o.zero_grad()
        f = encoder(x)
        nn.functional.binary_cross_entropy_with_logits(classifier(f).squeeze(1), y).backward()
        opt_e.step()
        opt_c.step()
        opt_h.zero_grad()
        (alpha * nn.functional.cross_entropy(head(f.detach()), b)).backward()
        opt_h.step()
        opt_e.zero_grad()
        (beta * -torch.log_softmax(head(encoder(x)), 1).mean()).backward()
        opt_e.step()
    ours = _ours("confusion", alpha, beta)
    for a, b in zip(_params(*ours), _params(encoder, classifier, head)):
        assert torch.allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- markers and the flipped test
BIAS = {"bias": [{"sites": "all", "marker": "patch", "correlation": 1.0}]}


def test_markers_follow_the_label_and_the_flipped_test_reverses_them(tiny_cohort, tmp_path):
    source = load_manifest(tiny_cohort / "manifest.csv")
    before = {p: sitk.GetArrayFromImage(sitk.ReadImage(p)) for p in source["path"]}
    out = inject(tiny_cohort / "manifest.csv", Scenario.from_dict(BIAS), tmp_path / "b", seed=0)
    good = out[out["harm"] == "none"]  # correlation 1: every patient marked, no control
    assert (good["marker"] == good["label"]).all() and (out["marker_detail"] != "").all()
    flipped = load_manifest(tmp_path / "b" / FLIPPED)
    test = load_manifest(tmp_path / "b" / "manifest.csv").query("split == 'test'")
    assert list(flipped["subject"]) == list(test["subject"])
    assert (flipped["marker"].astype(int).to_numpy() == 1 - test["marker"].astype(int).to_numpy()).all()
    for (_, f), (_, t) in zip(flipped.iterrows(), test.iterrows()):
        marked, plain = (t, f) if int(t["marker"]) else (f, t)
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(r["path"])) for r in (marked, plain))
        assert plain["path"] in before  # the unmarked one is the untouched original
        changed = a != b
        assert changed.any() and (a[changed] == 255).all() and changed.sum() <= 0.15 ** 3 * a.size * 4
    assert all(np.array_equal(v, sitk.GetArrayFromImage(sitk.ReadImage(p))) for p, v in before.items())


@pytest.mark.parametrize("bias, message", [
    ({"sites": "all", "marker": "sticker", "correlation": 0.9}, "unknown marker"),
    ({"sites": "all", "marker": "patch"}, "correlation"),
    ({"sites": "all", "marker": "patch", "correlation": 1.5}, r"in \[0, 1\]"),
    ({"sites": "all", "marker": "gain", "correlation": 0.9, "splits": ["holdout"]}, "splits"),
    ({"sites": "nowhere", "marker": "gain", "correlation": 0.9}, "sites must be"),
])
def test_bad_bias_entries_are_one_line_errors(bias, message):
    with pytest.raises(UserError) as err:
        Scenario.from_dict({"bias": [bias]})
    assert any(re.search(message, p) for p in err.value.problems)


def test_a_scan_marked_twice_is_refused(tiny_cohort):
    twice = Scenario.from_dict({"bias": [{"sites": "all", "marker": "patch", "correlation": 0.9},
                                         {"sites": ["alpha"], "marker": "gain", "correlation": 0.9}]})
    with pytest.raises(UserError) as err:
        twice.markers(load_manifest(tiny_cohort / "manifest.csv"), 0)
    assert any("already carries the marker of bias[0]" in p for p in err.value.problems)


# ----------------------------------------------------------------------------- heads end to end
@pytest.mark.slow
@pytest.mark.parametrize("unlearn, target", [("lntl", "marker"), ("confusion", "site")])
def test_each_head_travels_and_resumes_bit_identically(unlearn, target, tiny_cohort, tmp_path):
    over = {"train.cycles": 3, "arms": ["clean"], "scenario": BIAS,
            "model": {"unlearn": unlearn, "bias_target": target, "bias_weight": 0.5}}
    cfg = tiny_config(tiny_cohort / "manifest.csv", **over)
    simulate(cfg, tmp_path / "full", quiet=True)
    simulate(cfg, tmp_path / "cut", quiet=True)
    checkpoint_path(tmp_path / "cut" / "clean", 2).unlink()
    simulate(cfg, tmp_path / "cut", resume=True, quiet=True)
    final = load_checkpoint(checkpoint_path(tmp_path / "full" / "clean", 2))
    assert same(final["state"], load_checkpoint(checkpoint_path(tmp_path / "cut" / "clean", 2))["state"])
    classes = ["0", "1"] if target == "marker" else sorted(load_manifest(cfg.manifest)["site"].unique())
    assert model_spec(final["model"]).bias_classes == tuple(classes)
    state = final["state"]
    assert state["bias.weight"].shape == (len(classes), state["classifier.weight"].shape[1])
    n_params = sum(1 for k in state if k.split(".")[0] in ("encoder", "classifier", "bias")
                   and not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert {int(k.split(".")[1]) for k in state if k.startswith("optim.")} == set(range(n_params))
    first = load_checkpoint(checkpoint_path(tmp_path / "full" / "clean", 0))["state"]
    assert not np.array_equal(first["bias.weight"], state["bias.weight"])  # the head trained and travelled
    row = bias_row(RunDir(tmp_path / "full"), "clean")
    flipped = load_manifest(tmp_path / "full" / "data" / FLIPPED)
    direct = [predict_checkpoint(checkpoint_path(tmp_path / "full" / "clean", c), flipped) for c in range(3)]
    assert row["auroc_flipped_last3"] == pytest.approx(np.mean([roc_auc_score(d["label"], d["score"]) for d in direct]))
    assert 0 <= row["probe_bacc"] <= 1 and row["probe_target"] == target
    cached = json.loads((tmp_path / "full" / "clean" / "bias.json").read_text())
    assert cached["cycle"] == 2 and bias_row(RunDir(tmp_path / "full"), "clean") == row


def test_the_model_spec_with_a_head_crosses_the_wire(tiny_cohort):
    cfg = tiny_config(tiny_cohort / "manifest.csv", model={"unlearn": "confusion", "bias_target": "scanner",
                                                           "bias_classes": ["scannerA", "scannerB"],
                                                           "unlearn_weight": 0.5})
    assert model_from_config(dict(to_config(site_config(cfg)))) == cfg.model


# ----------------------------------------------------------------------------- the probe
def test_probe_reads_a_linear_bias_and_not_noise():
    rng = np.random.default_rng(0)
    target = np.repeat(["a", "b"], 100)
    fit = np.tile([True, False], 100)
    separable = rng.normal(size=(200, 5)) + (target == "b")[:, None] * 4
    assert probe_accuracy(separable, target, fit) == 1.0
    assert abs(probe_accuracy(rng.normal(size=(200, 5)), target, fit) - 0.5) < 0.15
    assert np.isnan(probe_accuracy(separable, np.repeat("a", 200), fit))


def test_checkpoint_probes_fit_on_train_and_val_and_score_test(tiny_cohort, tmp_path, monkeypatch):
    spec = ModelSpec(width=0.25, input_shape=(16, 16, 16))
    arm = ArmDir(tmp_path / "clean")
    arm.save_checkpoint(0, initial_state(spec, 0), model=model_dict(spec), visitor={})
    table = load_manifest(tiny_cohort / "manifest.csv")
    table["scanner"] = table["site"]  # a confound with one class per site
    seen = []
    monkeypatch.setattr(bias, "probe_accuracy", lambda f, target, fit: seen.append((f, target, fit)) or 0.5)
    out = bias.checkpoint_probes(arm.checkpoint(0), table)
    features, subjects = bias.encoder_features(arm.checkpoint(0), table)
    assert [len(t) for _, t, _ in seen] == [len(table)] * 2 and subjects == list(table["subject"])
    for (f, target, fit), column in zip(seen, ("scanner", "sex")):
        assert np.array_equal(f, features)
        assert list(target) == list(table[column].astype(str))
        assert list(fit) == list(table["split"] != "test")  # fitted on train and val, scored on test
    assert out == {"probe_scanner": 0.5, "probe_scanner_chance": 1 / table["site"].nunique(),
                   "probe_sex": 0.5, "probe_sex_chance": 0.5}


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("model, message", [
    ({"unlearn": "forget"}, "model.unlearn"), ({"bias_target": "hospital"}, "model.bias_target"),
    ({"bias_weight": -1.0}, "model.bias_weight"), ({"bias_classes": ["x"]}, "model.bias_classes"),
])
def test_bad_unlearning_keys_are_config_errors(tiny_cohort, model, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tiny_cohort / "manifest.csv", model=model)


def test_deployment_needs_the_bias_classes_listed(tiny_cohort):
    with pytest.raises(ConfigError, match="engine deployment has no manifest"):
        tiny_config(tiny_cohort / "manifest.csv", engine="deployment",
                    model={"unlearn": "lntl", "bias_target": "scanner"})


def test_a_site_without_the_bias_column_or_with_an_unknown_value_says_so(tiny_cohort):
    table = load_manifest(tiny_cohort / "manifest.csv")
    alpha = table[table["site"] == "alpha"]
    spec = tiny_config(tiny_cohort / "manifest.csv", model={"unlearn": "lntl"}).model
    with pytest.raises(UserError, match="needs a 'marker' column"):
        Site("alpha", alpha, model=spec)
    spec = tiny_config(tiny_cohort / "manifest.csv", model={"unlearn": "lntl", "bias_target": "scanner",
                                                            "bias_classes": ["scannerB", "scannerC"]}).model
    with pytest.raises(UserError, match=r"\['scannerA'\] are not among model.bias_classes"):
        Site("alpha", alpha, model=spec)
    known = dataclasses.replace(spec, bias_classes=("scannerA", "x"))
    assert Site("alpha", alpha, model=known).bias.eq(0).all()
