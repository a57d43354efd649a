"""Diagnostic metrics from per-scan scores, overall and by sex and age group.

A metric that is undefined for a group (AUROC with one class, sensitivity without
positives, anything on an empty group) is NaN — written as an empty cell — and the
reason goes in ``note``; never a crash and never a fake 0.5.

For imbalanced data, beside AUROC and the threshold metrics: ``average_precision``
(the area under the precision-recall curve, scikit-learn's step form), ``macro_f1``
(the mean of both classes' F1 at the threshold) and ``sens_at_spec90`` (the highest
sensitivity of any threshold whose specificity is at least 0.90) — none of which a
majority-class predictor gets for free.

The threshold metrics are taken at the run's decision threshold (0.5, or the one its
calibration fitted on verification scans); ``best_balanced_accuracy`` is the balanced
accuracy of the best threshold *on the scored scans themselves* — an oracle bound that
says how much the chosen threshold leaves on the table, never a threshold to use.

A multi-label model's predictions (``label_<name>``/``score_<name>`` beside ``label``/``score``) get
:func:`target_metrics`: every metric per target and their macro average.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedqc.scoring import ratio, score_targets, target_view

METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "auroc", "balanced_accuracy",
           "average_precision", "macro_f1", "sens_at_spec90", "best_balanced_accuracy")
CI_METRICS = ("auroc", "accuracy", "average_precision", "macro_f1", "sens_at_spec90")  # with bootstrap intervals
DEFAULT_AGE_EDGES = (60.0, 70.0)
SPECIFICITY = 0.90  # the specificity sens_at_spec90 holds


def auroc(scores: pd.DataFrame) -> float:
    """The AUROC of a table's ``score`` against its ``label``; NaN with one class."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(scores["label"], scores["score"])) if scores["label"].nunique() == 2 else float("nan")


def binary_metrics(labels, scores, threshold: float = 0.5) -> dict:
    """Counts and metrics of scores against 0/1 labels at ``threshold``."""
    from sklearn.metrics import (  # here: keeps sklearn out of every ClientApp start
        confusion_matrix,
        roc_auc_score,
        roc_curve,
    )

    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    out = {"n": len(y), "n_pos": int(y.sum())}
    notes = []
    if len(y) == 0:
        return out | {m: float("nan") for m in METRICS} | {"note": "empty group"}
    tn, fp, fn, tp = confusion_matrix(y, s >= threshold, labels=[0, 1]).ravel()
    sens, spec = ratio(tp, tp + fn), ratio(tn, tn + fp)
    prec = ratio(tp, tp + fp)
    out |= {"accuracy": (tp + tn) / len(y), "sensitivity": sens, "specificity": spec, "precision": prec,
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "balanced_accuracy": (sens + spec) / 2,
            "macro_f1": float(np.nanmean([ratio(2 * tp, 2 * tp + fp + fn), ratio(2 * tn, 2 * tn + fn + fp)]))}
    if len(set(y)) < 2:
        notes.append(f"one class only (label {y[0]}): auroc, average_precision, sens_at_spec90, "
                     f"{'sensitivity' if y[0] == 0 else 'specificity'} and balanced_accuracy undefined")
        out |= {"auroc": float("nan"), "average_precision": float("nan"), "sens_at_spec90": float("nan"),
                "best_balanced_accuracy": float("nan")}
    else:
        ap, sens90 = ranking_metrics(y[None], s[None])
        fpr, tpr, _ = roc_curve(y, s)
        out |= {"auroc": roc_auc_score(y, s), "average_precision": float(ap[0]), "sens_at_spec90": float(sens90[0]),
                "best_balanced_accuracy": float(0.5 + (tpr - fpr).max() / 2)}
    if tp + fp == 0:
        notes.append("no positive predictions: precision undefined")
    out["note"] = "; ".join(notes)
    return out


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average precision and sensitivity at specificity >= :data:`SPECIFICITY` of each row of (rows, n) arrays,
    every row holding both classes.

    Thresholds are the distinct scores (tied scans enter together), as in scikit-learn's
    ``average_precision_score`` and ``roc_curve``: ``AP = Σ (R_k − R_{k−1}) P_k`` over
    thresholds. Vectorised over rows, so a bootstrap costs one sort.
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    s, y = np.take_along_axis(scores, order, 1), np.take_along_axis(labels, order, 1).astype(float)
    n = s.shape[1]
    tp, fp = np.cumsum(y, 1), np.cumsum(1 - y, 1)
    pos, neg = tp[:, -1:], fp[:, -1:]
    last = np.ones_like(s, dtype=bool)  # the last scan of each group of tied scores: a threshold
    last[:, :-1] = s[:, :-1] != s[:, 1:]
    end = np.minimum.accumulate(np.where(last, np.arange(n), n)[:, ::-1], axis=1)[:, ::-1]  # its group's end
    precision_at_end = np.take_along_axis(tp / (tp + fp), end, 1)
    ap = (y * precision_at_end).sum(1) / pos[:, 0]
    allowed = last & (fp <= (1 - SPECIFICITY) * neg + 1e-9)
    sens = np.where(allowed, tp / pos, 0.0).max(1)
    return ap, sens


def bootstrap_ci(labels, scores, metric: str, *, n_boot: int = 1000, seed: int = 0,
                 threshold: float = 0.5, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of a metric of :data:`CI_METRICS`; for ranking metrics, resamples with one class
    are skipped. NaN when undefined."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    ranking = metric in ("auroc", "average_precision", "sens_at_spec90")
    if len(y) == 0 or (ranking and len(set(y)) < 2):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), (n_boot, len(y)))
    yb, sb = y[idx], s[idx]
    if metric in ("average_precision", "sens_at_spec90"):
        n_pos = yb.sum(1)
        keep = (n_pos > 0) & (n_pos < len(y))
        values = ranking_metrics(yb[keep], sb[keep])[0 if metric == "average_precision" else 1]
    elif metric == "macro_f1":
        pred = sb >= threshold
        tp, tn = (pred & (yb == 1)).sum(1), (~pred & (yb == 0)).sum(1)
        fp, fn = (pred & (yb == 0)).sum(1), (~pred & (yb == 1)).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.nanmean([2 * tp / (2 * tp + fp + fn), 2 * tn / (2 * tn + fn + fp)], axis=0)
    elif metric == "auroc":  # Mann-Whitney form of AUROC, identical to roc_auc_score (ties averaged)
        from scipy.stats import rankdata

        n_pos = yb.sum(1)
        keep = (n_pos > 0) & (n_pos < len(y))
        ranks = rankdata(sb[keep], axis=1)
        n_pos = n_pos[keep]
        values = ((ranks * yb[keep]).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos))
    else:
        values = ((sb >= threshold) == yb).mean(1)
    if len(values) == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def age_labels(edges=DEFAULT_AGE_EDGES) -> list[str]:
    edges = [float(e) for e in edges]
    fmt = lambda x: f"{x:g}"  # noqa: E731
    return [f"<{fmt(edges[0])}"] + [f"{fmt(a)}-{fmt(b)}" for a, b in zip(edges, edges[1:])] + [f">={fmt(edges[-1])}"]


def age_group(ages, edges=DEFAULT_AGE_EDGES) -> pd.Series:
    """Bin ages: ``<60``, ``60-70``, ``>=70`` for the default edges (left-closed)."""
    bins = np.digitize(np.asarray(ages, dtype=float), edges, right=False)
    return pd.Series(np.asarray(age_labels(edges))[bins], index=getattr(ages, "index", None))


def group_metrics(preds: pd.DataFrame, *, age_edges=DEFAULT_AGE_EDGES, n_boot: int = 1000, seed: int = 0,
                  threshold: float = 0.5) -> pd.DataFrame:
    """One row per group (``all``, ``sex=F``, ``sex=M``, ``age=<bin>``) with CIs, threshold metrics at
    ``threshold``."""
    ages = age_group(preds["age"], age_edges)
    groups = [("all", np.ones(len(preds), bool))]
    groups += [(f"sex={s}", (preds["sex"] == s).to_numpy()) for s in ("F", "M")]
    groups += [(f"age={b}", (ages == b).to_numpy()) for b in age_labels(age_edges)]
    rows = []
    for name, mask in groups:
        y, s = preds["label"].to_numpy()[mask], preds["score"].to_numpy()[mask]
        row = {"group": name, "threshold": threshold, **binary_metrics(y, s, threshold)}
        for metric in CI_METRICS:
            row[f"{metric}_lo"], row[f"{metric}_hi"] = bootstrap_ci(y, s, metric, n_boot=n_boot, seed=seed,
                                                                    threshold=threshold)
        rows.append(row)
    return pd.DataFrame(rows)


GAPS = {"auroc": "auroc", "sensitivity": "sensitivity", "misclassification": "accuracy"}  # gap: metric it is of


def fairness_gaps(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per arm and cycle: the largest gap between subgroups (sex, age) of auroc, sensitivity and misclassification
    rate (1 − accuracy at the threshold: its gap is the accuracy's)."""
    rows = []
    for (arm, cycle), df in metrics.groupby(["arm", "cycle"], sort=True):
        row = {"arm": arm, "cycle": cycle}
        for kind in ("sex", "age"):
            sub = df[df["group"].str.startswith(kind + "=")]
            for gap, metric in GAPS.items():
                vals = sub[metric].dropna()
                row[f"{kind}_{gap}_gap"] = float(vals.max() - vals.min()) if len(vals) >= 2 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def target_metrics(preds: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """One row per target (:func:`~fedqc.scoring.score_targets`; the main ``label`` at ``threshold``, the further ones at
    0.5: calibration fits the main target's threshold only) with :func:`binary_metrics`, then a ``macro`` row: the
    unweighted mean over targets of every metric (a target where one is undefined left out of that mean)."""
    rows = []
    for name in score_targets(preds.columns):
        view, cut = target_view(preds, name), threshold if name == "label" else 0.5
        rows.append({"target": name, "threshold": cut, **binary_metrics(view["label"], view["score"], cut)})
    table = pd.DataFrame(rows)
    macro = {"target": "macro", "n": int(table["n"].iloc[0]), "n_pos": int(table["n_pos"].sum()),
             **{m: float(table[m].mean()) for m in METRICS}, "note": ""}
    return pd.concat([table, pd.DataFrame([macro])], ignore_index=True)
