"""End-of-cycle calibration: federated BatchNorm statistics, thresholds fitted on verification scans only,
and the normalisation options."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_curve
from torch import nn

from fedqc.config import CalibrationConfig, ModelSpec
from fedqc.data.images import load_image
from fedqc.data.manifest import load_manifest
from fedqc.experiment.run_dir import ArmDir, RunDir, load_checkpoint
from fedqc.experiment.runner import simulate
from fedqc.models import network
from fedqc.models.state import initial_state, pack, unpack
from fedqc.protocol import EvalRequest
from fedqc.site import Site, activations
from fedqc.strategies.calibration import Calibrator, batchnorm_layers, fit_thresholds, pool_batchnorm
from fedqc.transport.inprocess import InProcessTransport
from tests.conftest import tiny_config

SPEC = ModelSpec("sfcn", 0.25, (16, 16, 16))


def _shifted_state(seed: int = 0):
    """A random model whose BatchNorm statistics are far from any site's (as after training elsewhere)."""
    state = initial_state(SPEC, seed)
    rng = np.random.default_rng(seed)
    for prefix in batchnorm_layers(state):
        c = state[prefix + "running_mean"].shape
        state[prefix + "running_mean"] = rng.normal(3, 1, c).astype(np.float32)
        state[prefix + "running_var"] = rng.uniform(5, 9, c).astype(np.float32)
    return state


def test_federated_batchnorm_equals_one_centralised_batchnorm_pass(tiny_cohort):
    """Sites return moments; the pooled statistics are those of PyTorch's update_bn over all the scans at once."""
    manifest = load_manifest(tiny_cohort / "manifest.csv")
    transport = InProcessTransport(manifest, SPEC)
    state = _shifted_state()
    scans = {"alpha": (), "beta": (), "harm01-inverted": ()}
    fed, record = Calibrator(transport, CalibrationConfig(batchnorm="federated"))(state, scans)
    layers = batchnorm_layers(state)
    assert record["bn_passes"] == len(layers) >= 4

    val = manifest[(manifest["split"] == "val") & manifest["site"].isin(scans)]
    x = torch.from_numpy(np.stack([load_image(p, SPEC.input_shape) for p in val["path"]]))
    encoder, classifier = network(SPEC)
    unpack(state, encoder, classifier, None)
    model = nn.Sequential(encoder, classifier)
    torch.optim.swa_utils.update_bn([x], model)  # one batch of every verification scan, in training mode
    central = pack(encoder, classifier, None)
    for prefix in layers:
        for stat in ("running_mean", "running_var"):
            np.testing.assert_allclose(fed[prefix + stat], central[prefix + stat], rtol=2e-4, atol=1e-5)
            assert not np.allclose(state[prefix + stat], central[prefix + stat])  # it did change something
    assert all(np.array_equal(fed[k], state[k]) for k in state if not k.endswith(("running_mean", "running_var")))


def _per_layer_passes_from_images(transport, state, scans):
    """The pooling as sites answered it before they kept activations: every pass forwards every scan from its image
    and returns the moments of every layer; the server sets them all."""
    layers = batchnorm_layers(state)
    for p in range(len(layers)):
        replies = transport.evaluate(sorted(scans), state, EvalRequest("val", batchnorm=True))
        state = pool_batchnorm(state, [r.moments for r in replies.values()], unbiased=p == len(layers) - 1)
    return state


def test_kept_activations_give_the_per_layer_passes_from_the_images(tiny_cohort, monkeypatch):
    """Each verification scan is read (and forwarded) once for all the BatchNorm passes and once for the threshold,
    and the statistics are those of the per-layer passes from the images; a new model, or no room to keep
    activations, forwards from the images."""
    manifest = load_manifest(tiny_cohort / "manifest.csv")
    transport = InProcessTransport(manifest, SPEC)
    scans = {"alpha": (), "beta": (), "harm01-inverted": ()}
    n_val = manifest[manifest["split"] == "val"].groupby("site").size()[sorted(scans)].to_dict()
    loads, images = Counter(), Site._images

    def counted(self, subjects, **kw):
        loads[self.name] += len(subjects)
        return images(self, subjects, **kw)

    monkeypatch.setattr(Site, "_images", counted)
    calibrate = Calibrator(transport, CalibrationConfig(batchnorm="federated"))
    n_layers = len(batchnorm_layers(_shifted_state()))
    for seed, room in [(0, True), (1, True), (1, False)]:  # a second model cannot use what the first left
        if not room:
            monkeypatch.setattr(activations, "KEPT_BYTES", 0)
        state = _shifted_state(seed)
        loads.clear()
        fed, record = calibrate(state, scans)
        assert dict(loads) == {s: (2 if room else n_layers + 1) * n for s, n in n_val.items()}
        expected = _per_layer_passes_from_images(transport, state, scans)
        for k in state:
            np.testing.assert_allclose(fed[k], expected[k], rtol=1e-6, atol=1e-7)
        assert not np.allclose(fed[batchnorm_layers(state)[-1] + "running_mean"],
                               state[batchnorm_layers(state)[-1] + "running_mean"])


def test_a_site_forwards_from_kept_activations_only_while_the_layers_before_are_unchanged(tiny_cohort, monkeypatch):
    manifest = load_manifest(tiny_cohort / "manifest.csv")
    rows = manifest[manifest["site"] == "alpha"]
    site, fresh = Site("alpha", rows, model=SPEC), Site("alpha", rows, model=SPEC)
    loads, images = Counter(), Site._images

    def counted(self, subjects, **kw):
        loads[id(self)] += len(subjects)
        return images(self, subjects, **kw)

    monkeypatch.setattr(Site, "_images", counted)
    first, second = batchnorm_layers(_shifted_state())[:2]
    a = _shifted_state(0)
    pooled = {**a, first + "running_mean": a[first + "running_mean"] + 1}  # what the server sets after a pass
    other = {**pooled, "encoder.0.weight": pooled["encoder.0.weight"] * 1.1}  # another model
    n = int((rows["split"] == "val").sum())
    for state, layer, reads in [(a, 0, n), (pooled, 1, 0), (other, 1, n), (other, 1, 0)]:
        loads.clear()
        request = EvalRequest("val", batchnorm=True, bn_layers=(layer,))
        got = site.evaluate(state, request)
        assert loads[id(site)] == reads and got.scores.empty
        want = fresh.evaluate(state, EvalRequest("val", batchnorm=True)).moments  # every layer, from the images
        assert got.moments["bn_n"][layer] == want["bn_n"][layer] > 0 and got.moments["bn_n"].sum() == want["bn_n"][layer]
        lo = 0 if layer == 0 else len(a[first + "running_mean"])
        hi = lo + len(a[(first, second)[layer] + "running_mean"])
        for k in ("bn_sum", "bn_sq"):  # this layer's channels as from the images, nothing for the others
            np.testing.assert_allclose(got.moments[k][lo:hi], want[k][lo:hi], rtol=1e-6)
            assert not got.moments[k][:lo].any() and not got.moments[k][hi:].any()


def test_activations_are_kept_for_sequences_of_layers_only():
    encoder, classifier = network(SPEC)
    positions = activations.batchnorm_positions(encoder, classifier)
    assert positions == [i for i, m in enumerate(encoder) if isinstance(m, nn.BatchNorm3d)] and len(positions) >= 4
    assert activations.batchnorm_positions(nn.Sequential(encoder), classifier) is None  # BatchNorm layers nested
    assert activations.batchnorm_positions(encoder, nn.Sequential(nn.BatchNorm1d(4), classifier)) is None
    assert activations.batchnorm_positions(network(ModelSpec("sfcn", 0.25, (16, 16, 16), norm="group"))[0],
                                           classifier) is None  # no BatchNorm layer


def test_one_pass_fixes_the_first_layer_only(tiny_cohort):
    transport = InProcessTransport(load_manifest(tiny_cohort / "manifest.csv"), SPEC)
    state = _shifted_state(1)
    scans = {"alpha": (), "beta": ()}
    exact, _ = Calibrator(transport, CalibrationConfig(batchnorm="federated"))(state, scans)
    one, record = Calibrator(transport, CalibrationConfig(batchnorm="federated", bn_passes=1))(state, scans)
    first, last = batchnorm_layers(state)[0], batchnorm_layers(state)[-1]
    assert record["bn_passes"] == 1
    np.testing.assert_allclose(one[first + "running_mean"], exact[first + "running_mean"], rtol=1e-5)
    assert not np.allclose(one[last + "running_mean"], exact[last + "running_mean"], rtol=1e-3)


def test_thresholds_against_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.5, 200) - 1.2)))  # skilled, but shifted low
    t, note = fit_thresholds(y, s)
    fpr, tpr, thr = roc_curve(y, s)
    assert t["fixed"] == 0.5 and note == ""
    assert t["youden"] == pytest.approx(thr[np.argmax(tpr - fpr)])
    pred = s >= t["youden"]
    best = max(((s >= c) & (y == 1)).sum() / y.sum() - ((s >= c) & (y == 0)).sum() / (1 - y).sum() for c in s)
    assert pred[y == 1].mean() - pred[y == 0].mean() == pytest.approx(best)
    assert (s >= t["prevalence"]).sum() == y.sum()  # as many called positive as are
    assert t["platt"] < 0.5  # scores shifted low: the calibrated 0.5 point is lower
    from sklearn.linear_model import LogisticRegression

    logit = np.log(s / (1 - s))[:, None]
    fit = LogisticRegression(C=np.inf).fit(logit, y)
    assert fit.predict_proba(np.log([[t["platt"] / (1 - t["platt"])]]))[0, 1] == pytest.approx(0.5, abs=1e-6)


def test_thresholds_fall_back_to_one_half_with_one_class():
    t, note = fit_thresholds(np.zeros(5, int), np.linspace(0.1, 0.9, 5))
    assert set(t.values()) == {0.5} and "one class" in note


def test_threshold_is_fitted_on_verification_scans_only(tiny_cohort, tmp_path):
    """The threshold comes from val scans, and changing every test label and image leaves it unchanged."""
    manifest = load_manifest(tiny_cohort / "manifest.csv")
    kw = {"train.cycles": 2, "arms": ["clean"], "calibration": {"threshold": "youden"}}
    cfg = tiny_config(tiny_cohort / "manifest.csv", **kw)
    simulate(cfg, tmp_path / "a", quiet=True)
    flipped = manifest.copy()
    test = flipped["split"] == "test"
    flipped.loc[test, "label"] = 1 - flipped.loc[test, "label"]
    flipped.loc[test, "path"] = flipped.loc[test, "path"].iloc[::-1].to_numpy()
    flipped.to_csv(tmp_path / "flipped.csv", index=False)
    simulate(tiny_config(tmp_path / "flipped.csv", **kw), tmp_path / "b", quiet=True)
    a, b = (pd.read_csv(tmp_path / r / "clean" / "calibration.csv") for r in "ab")
    pd.testing.assert_series_equal(a["threshold"], b["threshold"])
    assert (a["method"] == "youden").all() and (a["n_val"] == (manifest["split"] == "val").sum() - 1).all()  # oracle
    # ...the harmful site's val scan is not trusted by the clean arm; the checkpoint stores what the metrics use
    arm = ArmDir(tmp_path / "a" / "clean")
    assert load_checkpoint(arm.checkpoint(1))["calibration"]["threshold"] == arm.threshold(1) == a["threshold"].iloc[1]
    # infer's threshold metrics use it, and say so
    from fedqc.analysis.infer import run_metrics

    metrics = run_metrics(tmp_path / "a", n_boot=10)
    overall = metrics[metrics["group"] == "all"].set_index("cycle")
    np.testing.assert_allclose(overall["threshold"], a["threshold"])
    preds = pd.read_csv(arm.predictions(1))
    assert overall.loc[1, "sensitivity"] == (preds.loc[preds["label"] == 1, "score"] >= a["threshold"].iloc[1]).mean()
    # resuming rewrites nothing and keeps the rows of finished cycles
    simulate(cfg, tmp_path / "a", resume=True, quiet=True)
    assert len(pd.read_csv(tmp_path / "a" / "clean" / "calibration.csv")) == 2


def test_reference_calibration_writes_nothing(tiny_cfg, tmp_path):
    reference = {"batchnorm": "site", "threshold": "fixed"}
    simulate(tiny_config(tiny_cfg.manifest, **{"train.cycles": 1, "arms": ["clean"], "calibration": reference}),
             tmp_path / "r", quiet=True)
    arm = RunDir(tmp_path / "r").arm("clean")
    assert not (arm.path / "calibration.csv").exists() and arm.threshold(0) == 0.5


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_each_normalisation_trains_a_batch_of_one(norm, dims):
    spec = ModelSpec("sfcn", 0.25, (16,) * dims, norm)
    encoder, classifier = network(spec)
    norms = {type(m).__name__ for m in encoder.modules() if "Norm" in type(m).__name__}
    assert norms == {{"batch": f"BatchNorm{dims}d", "group": "GroupNorm", "instance": f"InstanceNorm{dims}d"}[norm]}
    opt = torch.optim.Adam([*encoder.parameters(), *classifier.parameters()])
    before = [p.detach().clone() for p in encoder.parameters()]
    loss = nn.functional.binary_cross_entropy_with_logits(classifier(encoder(torch.randn(1, 1, *spec.input_shape))),
                                                          torch.ones(1, 1))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
    if norm != "batch":
        assert not batchnorm_layers(pack(encoder, classifier, None))  # nothing that follows a site


def test_densenet_takes_the_normalisation():
    encoder, _ = network(ModelSpec("densenet121", 0.25, (64, 64), "group"))
    assert any(isinstance(m, nn.GroupNorm) for m in encoder.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())


def test_config_rejects_what_cannot_be_calibrated(tiny_cohort):
    from fedqc.errors import ConfigError

    with pytest.raises(ConfigError, match="first layer only"):  # MONAI's ResNet would keep BatchNorm in its blocks
        tiny_config(tiny_cohort / "manifest.csv", model={"name": "resnet18", "input_shape": [32, 32], "norm": "group"})
    with pytest.raises(ConfigError, match="calibration.threshold"):
        tiny_config(tiny_cohort / "manifest.csv", calibration={"threshold": "best"})
    with pytest.raises(ConfigError, match="model.norm"):
        tiny_config(tiny_cohort / "manifest.csv", model={"norm": "layer"})


def test_federated_batchnorm_without_batchnorm_layers_only_fits_the_threshold(tiny_cohort):
    spec = ModelSpec("sfcn", 0.25, (16, 16, 16), "group")
    manifest = load_manifest(tiny_cohort / "manifest.csv")
    transport = InProcessTransport(manifest, spec)
    state = initial_state(spec, 0)
    out, record = Calibrator(transport, CalibrationConfig(batchnorm="federated", threshold="youden"))(
        state, {"alpha": (), "beta": ()})
    assert record["bn_passes"] == 0 and all(np.array_equal(out[k], state[k]) for k in state)
    val = manifest[(manifest["split"] == "val") & manifest["site"].isin(["alpha", "beta"])]
    assert record["n_val"] == len(val) == 6 and 0 <= record["threshold"] <= 1


def test_a_run_from_before_calibration_resumes_only_with_the_reference_behaviour(tiny_cfg, tmp_path):
    """A snapshot without ``calibration`` was run without it: resuming it with the new defaults would change it."""
    import dataclasses

    import yaml

    from fedqc.config.schema import REFERENCE_CALIBRATION
    from fedqc.errors import RunDirError

    old = tiny_cfg.to_dict()
    del old["calibration"]
    run = RunDir(tmp_path / "old")
    run.root.mkdir()
    run.config.write_text(yaml.safe_dump(old))
    with pytest.raises(RunDirError, match="different config"):
        run.prepare(tiny_cfg, resume=True, overwrite=False)
    run.prepare(dataclasses.replace(tiny_cfg, calibration=REFERENCE_CALIBRATION), resume=True, overwrite=False)


def test_a_site_that_fails_during_calibration_is_left_out_and_recorded(tiny_cohort):
    from fedqc.protocol import EvalReply

    manifest = load_manifest(tiny_cohort / "manifest.csv")
    inner = InProcessTransport(manifest, SPEC)

    class OneFails:
        def evaluate(self, sites, state, request):
            replies = inner.evaluate([s for s in sites if s != "beta"], state, request)
            return replies | ({"beta": EvalReply.failed("site beta failed: timeout")} if "beta" in sites else {})

    state = _shifted_state(2)
    both, _ = Calibrator(OneFails(), CalibrationConfig())(state, {"alpha": (), "beta": ()})
    alone, record = Calibrator(inner, CalibrationConfig())(state, {"alpha": ()})
    assert all(np.array_equal(both[k], alone[k]) for k in state)  # beta's (absent) moments changed nothing
    assert "no answer from beta" in Calibrator(OneFails(), CalibrationConfig())(state, {"alpha": (), "beta": ()})[1]["note"]
    assert record["n_val"] == (manifest[(manifest["split"] == "val") & (manifest["site"] == "alpha")]).shape[0]
