"""Multi-label targets: label_<name> columns, one output per target, per-target QC checks, per-target and macro
metrics against scikit-learn, and the findings scenario that makes a multi-label cohort."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from fedqc.analysis.metrics import target_metrics
from fedqc.config.schema import model_spec
from fedqc.data.corruptions.scenario import Scenario
from fedqc.data.manifest import load_manifest, validate_manifest
from fedqc.errors import ConfigError, UserError
from fedqc.experiment.run_dir import load_checkpoint
from fedqc.experiment.runner import simulate
from fedqc.protocol import EvalRequest
from fedqc.qc.criteria import SiteAUROCCheck
from fedqc.qc.policy import site_decision
from fedqc.qc.scans import label_issues_of
from fedqc.scoring import score_targets, target_view
from fedqc.site.site import Site, target_loss
from fedqc.transport.flower.codec import decode_eval_reply, encode_eval_reply
from fedqc.transport.inprocess import InProcessTransport
from tests.conftest import checkpoint_path, tiny_config

FINDINGS = {"findings": [{"name": "lesion", "marker": "patch", "prevalence": 0.5, "params": {"at": 0.4}},
                         {"name": "bright", "marker": "gain", "prevalence": 0.5}]}


def _scores(n: int, rng, *, site: str, flip_x: bool = False) -> pd.DataFrame:
    y, x = rng.integers(0, 2, n), rng.integers(0, 2, n)
    score, score_x = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.15, n), 0.01, 0.99), \
        np.clip(0.5 + (x - 0.5) * 0.6 + rng.normal(0, 0.15, n), 0.01, 0.99)
    return pd.DataFrame({"subject": [f"{site}-{i}" for i in range(n)], "site": site, "label": y, "score": score,
                         "label_x": 1 - x if flip_x else x, "score_x": score_x})


def test_score_targets_and_views():
    table = pd.DataFrame({"label": [0], "score": [0.1], "label_x": [1], "score_x": [0.9], "label_y": [0]})
    assert score_targets(table.columns) == ["label", "x"]  # label_y has no score_y: not a scored target
    view = target_view(table, "x")
    assert (view["label"].iloc[0], view["score"].iloc[0]) == (1, 0.9) and target_view(table, "label") is table


def test_the_site_check_judges_every_target():
    rng = np.random.default_rng(0)
    verification = pd.concat([_scores(40, rng, site=f"v{i}") for i in range(3)], ignore_index=True)
    good, flipped = _scores(40, rng, site="s"), _scores(40, rng, site="s", flip_x=True)
    check = SiteAUROCCheck(0.01)
    assert site_decision(check, verification, good)[0]
    ok, stats = site_decision(check, verification, flipped)
    assert not ok and stats["note"] == "target x"  # the main labels are fine: only the further target fails
    assert site_decision(check, verification, flipped.drop(columns=["label_x", "score_x"]))[0]


def test_label_issues_are_found_per_target():
    rng = np.random.default_rng(1)
    verification = pd.concat([_scores(60, rng, site=f"v{i}") for i in range(3)], ignore_index=True)
    site = _scores(60, rng, site="s")
    wrong = site.index[:6]
    site.loc[wrong, "label_x"] = 1 - site.loc[wrong, "label_x"]  # six wrong labels of target x only
    main = label_issues_of(target_view(verification, "label"), site, target_view(site, "label"))
    x = label_issues_of(target_view(verification, "x"), target_view(site, "x"), target_view(site, "x"))
    assert x[0].all() and x[1][wrong].sum() >= 5 and x[1].sum() <= 9
    assert main[1][wrong].sum() <= 1  # target label never saw the flips


def test_target_metrics_match_scikit_learn():
    rng = np.random.default_rng(2)
    preds = _scores(80, rng, site="s").assign(label_z=lambda d: rng.integers(0, 2, len(d)),
                                              score_z=lambda d: rng.random(len(d)))
    table = target_metrics(preds, threshold=0.4).set_index("target")
    assert list(table.index) == ["label", "x", "z", "macro"]
    for name, y, s, cut in (("label", preds["label"], preds["score"], 0.4), ("x", preds["label_x"], preds["score_x"], 0.5),
                            ("z", preds["label_z"], preds["score_z"], 0.5)):
        assert table.at[name, "auroc"] == pytest.approx(roc_auc_score(y, s))
        assert table.at[name, "average_precision"] == pytest.approx(average_precision_score(y, s))
        assert table.at[name, "f1"] == pytest.approx(f1_score(y, s >= cut))
    for metric in ("auroc", "average_precision", "f1"):
        assert table.at["macro", metric] == pytest.approx(table.loc[["label", "x", "z"], metric].mean())


def test_further_targets_must_be_binary(tmp_path):
    table = pd.DataFrame({"subject": ["a", "b"], "site": "s", "path": "x.nii.gz", "label": ["0", "1"], "sex": "F",
                          "age": "60", "split": "train", "label_lesion": ["1", "maybe"]})
    errors = validate_manifest(table, check_images=False).errors
    assert any(e.startswith("label_lesion not 0/1") for e in errors)


def test_bad_findings_and_targets_are_one_line_errors(tiny_cohort):
    with pytest.raises(UserError) as err:
        Scenario.from_dict({"findings": [{"name": "a b", "marker": "patch", "prevalence": 0.2},
                                         {"name": "c", "marker": "patch"}]})
    assert any("distinct word" in p for p in err.value.problems) and any("prevalence" in p for p in err.value.problems)
    with pytest.raises(ConfigError, match="model.targets"):
        tiny_config(tiny_cohort / "manifest.csv", model={"targets": ["lesion"]})


def test_target_weights_make_the_loss_a_weighted_mean_over_targets():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(6, 3, generator=gen), (torch.rand(6, 3, generator=gen) > 0.5).float()
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (scan, target)
    scan = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0, 3.0])
    assert torch.allclose(target_loss(logits, target), per.mean())
    assert torch.allclose(target_loss(logits, target, shares=(8, 1, 1)), (per @ torch.tensor([0.8, 0.1, 0.1])).mean())
    assert torch.allclose(target_loss(logits, target, scan, (2, 1, 1)),
                          (scan * (per @ torch.tensor([0.5, 0.25, 0.25]))).mean())
    assert torch.allclose(target_loss(logits, target, shares=(1, 1, 1)), per.mean())  # equal shares: the plain mean


def test_bad_target_weights_are_one_line_errors(tiny_cohort):
    manifest = tiny_cohort / "manifest.csv"
    for weights, match in (([1, -1], "weights >= 0"), ([0, 0], "not all 0"), ([1, 1, 1], "one per target")):
        with pytest.raises(ConfigError, match=match):
            tiny_config(manifest, model={"targets": ["label_lesion"], "target_weights": weights})
    table = load_manifest(manifest).assign(label_lesion=0)  # targets from the manifest: the site counts them
    spec = model_spec({"input_shape": [16, 16, 16], "width": 0.25, "targets": ["label_lesion"],
                       "target_weights": [1, 1, 1]})
    with pytest.raises(UserError, match="3 weights for 2 targets"):
        Site("alpha", table[table["site"] == "alpha"], model=spec)


@pytest.mark.slow
def test_a_multilabel_run_trains_every_target_and_qc_judges_them(tiny_cohort, tmp_path):
    cfg = tiny_config(tiny_cohort / "manifest.csv", scenario=FINDINGS,
                      **{"arms": ["clean", "qc"], "train.cycles": 3, "qc": {"start": "scratch", "skill": 0.0}})
    simulate(cfg, tmp_path / "run", quiet=True)
    manifest = load_manifest(tmp_path / "run" / "data" / "manifest.csv")
    assert {"label_lesion", "label_bright"} <= set(manifest.columns)
    ckpt = load_checkpoint(checkpoint_path(tmp_path / "run" / "clean", 2))
    spec = model_spec(ckpt["model"])
    assert spec.targets == ("label_lesion", "label_bright") and ckpt["state"]["classifier.weight"].shape[0] == 3
    preds = pd.read_csv(tmp_path / "run" / "clean" / "predictions" / "cycle_002.csv")
    assert score_targets(preds.columns) == ["label", "lesion", "bright"]
    truth = manifest.set_index("subject").loc[preds["subject"]]
    assert (preds["label_lesion"].to_numpy() == truth["label_lesion"].to_numpy()).all()
    qc_log = pd.read_csv(tmp_path / "run" / "qc" / "qc_log.csv")
    assert (qc_log["scope"] == "site").any()  # the site check ran, on every target (site_decision)
    transport = InProcessTransport(manifest, spec)  # the further targets cross the wire intact
    reply = transport.evaluate(["alpha"], ckpt["state"], EvalRequest("test"))["alpha"]
    back = decode_eval_reply(encode_eval_reply(reply)).scores
    pd.testing.assert_frame_equal(back[reply.scores.columns], reply.scores, check_dtype=False)
