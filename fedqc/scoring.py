"""Per-scan scores → counts and losses: the arithmetic shared by sites, QC and the reported metrics."""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def per_scan_loss(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of each scan (scores clipped to [EPS, 1 - EPS])."""
    p = np.clip(np.asarray(scores, dtype=float), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=float)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def counts_from_scores(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Confusion counts, BCE loss sum and Brier sum with fixed keys (zeros when empty)."""
    labels = np.asarray(labels, dtype=float)
    scores = np.clip(np.asarray(scores, dtype=float), EPS, 1 - EPS)
    pred = scores >= threshold
    pos = labels == 1
    return {"n": float(len(labels)), "tp": float(np.sum(pred & pos)), "fp": float(np.sum(pred & ~pos)),
            "tn": float(np.sum(~pred & ~pos)), "fn": float(np.sum(~pred & pos)),
            "loss_sum": float(per_scan_loss(labels, scores).sum()), "brier_sum": float(((scores - labels) ** 2).sum())}


def ratio(num: float, den: float) -> float:
    """``num / den``, NaN when the denominator is 0 (an undefined rate)."""
    return num / den if den else float("nan")


def feature_distance(features: np.ndarray, center: np.ndarray, scale: np.ndarray,
                     blocks: list[int] | None = None) -> np.ndarray:
    """Each row's root-mean-square standardised distance to ``center``, every block of columns weighing the same:
    ``sqrt(mean_b mean_{j in b} ((f_j - center_j) / scale_j)²)`` (one block: all columns)."""
    z2 = ((np.asarray(features) - center) / scale) ** 2
    edges = np.cumsum([0, *(blocks or [z2.shape[1]])])
    return np.sqrt(np.mean([z2[:, a:b].mean(axis=1) for a, b in zip(edges[:-1], edges[1:])], axis=0))


def score_targets(columns) -> list[str]:
    """The targets a table of per-scan scores holds: ``label`` (columns ``label``, ``score``), then every ``<name>``
    of a multi-label model with columns ``label_<name>`` and ``score_<name>``."""
    columns = list(columns)
    return ["label"] + [c[len("score_"):] for c in columns if c.startswith("score_") and f"label_{c[6:]}" in columns]


def target_view(table, target: str):
    """``table`` (a DataFrame of per-scan scores) with ``label`` and ``score`` taken from ``target``'s columns, so
    that a check written for one target judges any of them."""
    if target == "label":
        return table
    return table.assign(label=table[f"label_{target}"], score=table[f"score_{target}"])
