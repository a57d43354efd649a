"""Metrics against scikit-learn, edge cases, bootstrap determinism, `fedqc infer` outputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from fedqc.analysis.metrics import age_group, binary_metrics, bootstrap_ci, fairness_gaps, group_metrics


def test_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.clip(y * 0.3 + rng.uniform(0, 0.7, 60), 0, 1)
    m = binary_metrics(y, s)
    pred = s >= 0.5
    assert math.isclose(m["accuracy"], accuracy_score(y, pred))
    assert math.isclose(m["sensitivity"], recall_score(y, pred))
    assert math.isclose(m["specificity"], recall_score(1 - y, ~pred))
    assert math.isclose(m["precision"], precision_score(y, pred))
    assert math.isclose(m["f1"], f1_score(y, pred))
    assert math.isclose(m["auroc"], roc_auc_score(y, s))
    assert m["n"] == 60 and m["n_pos"] == y.sum() and m["note"] == ""


def _sens_at_spec90(y, s) -> float:
    fpr, tpr, _ = roc_curve(y, s)
    return float(tpr[fpr <= 0.1 + 1e-12].max())


@pytest.mark.parametrize("decimals", [None, 1])  # continuous scores, and many ties
def test_imbalance_metrics_match_sklearn(decimals):
    rng = np.random.default_rng(5)
    y = (rng.uniform(size=90) < 0.18).astype(int)  # 18 % positives
    s = np.clip(y * 0.35 + rng.uniform(0, 0.65, 90), 0, 1)
    s = s if decimals is None else np.round(s, decimals)
    m = binary_metrics(y, s)
    assert math.isclose(m["average_precision"], average_precision_score(y, s))
    assert math.isclose(m["macro_f1"], f1_score(y, s >= 0.5, average="macro"))
    assert math.isclose(m["sens_at_spec90"], _sens_at_spec90(y, s))
    # the bootstrap's vectorised forms equal scikit-learn on a resample (duplicated scans are ties)
    idx = np.random.default_rng(0).integers(0, 90, (1, 90))[0]
    for metric, reference in [("average_precision", average_precision_score(y[idx], s[idx])),
                              ("sens_at_spec90", _sens_at_spec90(y[idx], s[idx])),
                              ("macro_f1", f1_score(y[idx], s[idx] >= 0.5, average="macro"))]:
        lo, hi = bootstrap_ci(y, s, metric, n_boot=1, seed=0, level=0.0)
        assert math.isclose(lo, reference) and lo == hi, metric
    lo, hi = bootstrap_ci(y, s, "average_precision", seed=2)
    assert lo < m["average_precision"] < hi
    # a majority-class predictor: accuracy 0.82, but nothing for the imbalance metrics to reward
    majority = binary_metrics(y, np.zeros(90))
    assert majority["accuracy"] > 0.8 and majority["average_precision"] == pytest.approx(y.mean())
    assert majority["sens_at_spec90"] == 0 and majority["macro_f1"] < 0.5
    one = binary_metrics([0, 0, 0], [0.1, 0.6, 0.2])
    assert math.isnan(one["average_precision"]) and math.isnan(one["sens_at_spec90"])
    assert all(math.isnan(v) for v in bootstrap_ci([0, 0], [0.1, 0.2], "sens_at_spec90"))


def test_edge_cases():
    one_class = binary_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert math.isnan(one_class["auroc"]) and math.isnan(one_class["specificity"])
    assert "one class" in one_class["note"] and math.isclose(one_class["sensitivity"], 2 / 3)
    empty = binary_metrics([], [])
    assert empty["n"] == 0 and math.isnan(empty["auroc"]) and empty["note"] == "empty group"
    right = binary_metrics([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8])
    assert right["accuracy"] == 1 and right["auroc"] == 1 and right["f1"] == 1
    wrong = binary_metrics([0, 1, 0, 1], [0.9, 0.1, 0.8, 0.2])
    assert wrong["accuracy"] == 0 and wrong["auroc"] == 0 and wrong["f1"] == 0
    none_pos = binary_metrics([0, 1], [0.1, 0.2])
    assert math.isnan(none_pos["precision"]) and "no positive predictions" in none_pos["note"]


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    s = np.clip(y * 0.4 + rng.uniform(0, 0.6, 80), 0, 1)
    a = bootstrap_ci(y, s, "auroc", seed=3)
    assert a == bootstrap_ci(y, s, "auroc", seed=3) and a != bootstrap_ci(y, s, "auroc", seed=4)
    assert a[0] < roc_auc_score(y, s) < a[1]
    # the vectorised AUROC equals scikit-learn's on each resample, ties included
    ties = np.round(s, 1)
    lo, hi = bootstrap_ci(y, ties, "auroc", n_boot=1, seed=0, level=0.0)
    idx = np.random.default_rng(0).integers(0, 80, (1, 80))[0]
    assert math.isclose(lo, roc_auc_score(y[idx], ties[idx]))
    assert all(math.isnan(v) for v in bootstrap_ci([1, 1], [0.2, 0.3], "auroc"))


def test_groups_and_age_bins():
    assert list(age_group(pd.Series([59.9, 60, 69.9, 70, 85]))) == ["<60", "60-70", "60-70", ">=70", ">=70"]
    preds = pd.DataFrame({"label": [0, 1, 0, 1, 1], "score": [0.2, 0.8, 0.6, 0.4, 0.9],
                          "sex": ["F", "F", "M", "M", "M"], "age": [55, 65, 75, 58, 80]})
    g = group_metrics(preds, n_boot=50).set_index("group")
    assert list(g.index) == ["all", "sex=F", "sex=M", "age=<60", "age=60-70", "age=>=70"]
    assert g.loc["age=60-70", "n"] == 1 and math.isnan(g.loc["age=60-70", "auroc"])
    assert g.loc["all", "n"] == 5


def test_fairness_gaps_include_the_misclassification_rate_by_hand():
    # women: 4 scans, 1 wrong at 0.5 (rate 0.25); men: 4 scans, 3 wrong (0.75) -> sex gap 0.5
    preds = pd.DataFrame({"label": [1, 1, 0, 0, 1, 1, 0, 0], "score": [0.9, 0.8, 0.2, 0.7, 0.1, 0.2, 0.9, 0.3],
                          "sex": ["F"] * 4 + ["M"] * 4, "age": [60] * 8})
    gaps = fairness_gaps(group_metrics(preds, n_boot=0).assign(arm="clean", cycle=0)).iloc[0]
    assert gaps["sex_misclassification_gap"] == pytest.approx(0.5)
    assert math.isnan(gaps["age_misclassification_gap"])  # one age group: no gap


@pytest.mark.slow
def test_infer_on_finished_run(tiny_cfg, tmp_path):
    from fedqc.analysis.infer import infer_run, predict_checkpoint
    from fedqc.experiment.runner import simulate

    run = tmp_path / "run"
    simulate(tiny_cfg, run, quiet=True)
    metrics = infer_run(run, n_boot=50)
    for name in ("metrics.csv", "fairness.csv", "report.md", "plots/metrics_by_arm.png", "plots/subgroups_clean.png"):
        assert (run / name).is_file(), name
    assert set(metrics["arm"]) == {"clean", "dirty"}
    assert {"auroc_lo", "auroc_hi", "accuracy_lo", "accuracy_hi", "note", "balanced_accuracy"} <= set(metrics.columns)
    # recomputing from the checkpoint reproduces the saved predictions
    from fedqc.data.manifest import load_manifest

    saved = pd.read_csv(run / "clean" / "predictions" / "cycle_002.csv").sort_values("subject", ignore_index=True)
    again = predict_checkpoint(run / "clean" / "checkpoints" / "cycle_002.pt", load_manifest(tiny_cfg.manifest))
    again = again.sort_values("subject", ignore_index=True)
    np.testing.assert_allclose(saved["score"], again["score"], rtol=1e-6)
    (run / "clean" / "predictions" / "cycle_001.csv").unlink()
    recomputed = infer_run(run, n_boot=50)
    pd.testing.assert_frame_equal(metrics, recomputed)
