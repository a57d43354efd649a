"""The statistics QC decides with: confusion rates, Platt recalibration, AUROCs and their standard errors."""

from __future__ import annotations

import functools
import math

import numpy as np

from fedqc.scoring import EPS, counts_from_scores, ratio


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """TP/FP/TN/FN at ``threshold``, true FPR and FNR (NaN without negatives/positives), mean loss."""
    c = counts_from_scores(labels, scores, threshold)
    tp, fp, tn, fn = (int(c[k]) for k in ("tp", "fp", "tn", "fn"))
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "fpr": ratio(fp, fp + tn), "fnr": ratio(fn, fn + tp), "loss": ratio(c["loss_sum"], c["n"])}


def recalibrate(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Platt scaling fitted on these scans (slope kept positive); unchanged with one class."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, dtype=int)
    if len(np.unique(labels)) < 2:
        return np.asarray(scores, dtype=float)
    p = np.clip(np.asarray(scores, dtype=float), EPS, 1 - EPS)
    logit = np.log(p / (1 - p)).reshape(-1, 1)
    fit = LogisticRegression(C=1e4).fit(logit, labels)
    if fit.coef_[0, 0] <= 0:  # an inverted ranking is harm, not miscalibration: no skill left
        return np.full(len(labels), labels.mean())
    return fit.predict_proba(logit)[:, 1]


def auroc_se(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """AUROC (ties count one half) and its Hanley-McNeil (1982) standard error; NaN without both classes.

    The standard error is taken at an AUROC kept half a pair from 0 and 1, where the
    formula would give 0: perfect separation of a few scans is not certainty.
    """
    from sklearn.metrics import roc_auc_score

    labels, scores = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan, math.nan
    auc = float(roc_auc_score(labels, scores))
    pairs = len(pos) * len(neg)
    a = min(max(auc, 0.5 / pairs), 1 - 0.5 / pairs)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (len(pos) - 1) * (q1 - a * a) + (len(neg) - 1) * (q2 - a * a)) / pairs
    return auc, math.sqrt(max(var, 0.0))


def site_aurocs(labels: np.ndarray, scores: np.ndarray, sites: np.ndarray) -> list[tuple[int, float, float]]:
    """Per site with both classes: (patient-control pairs, AUROC, its standard error)."""
    labels, scores, sites = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float), np.asarray(sites)
    parts = []
    for site in np.unique(sites):
        mine = sites == site
        pairs = int(labels[mine].sum()) * int((labels[mine] == 0).sum())
        if pairs:
            parts.append((pairs, *_auroc_se_of(labels[mine].tobytes(), scores[mine].tobytes())))
    return parts


@functools.lru_cache(maxsize=4096)
def _auroc_se_of(labels: bytes, scores: bytes) -> tuple[float, float]:
    """:func:`auroc_se` of one site's scans, remembered: every site check of a cycle ranks the same verification
    scans (87 site checks at the reference shape: 2.7 s of per-site AUROCs without the cache, 0.9 s with it)."""
    return auroc_se(np.frombuffer(labels, dtype=int), np.frombuffer(scores, dtype=float))


def within_site_auroc_se(labels: np.ndarray, scores: np.ndarray, sites: np.ndarray) -> tuple[float, float]:
    """AUROC over patient-control pairs of the same site, and its standard error; NaN without such pairs.

    The pair-weighted mean of the per-site AUROCs, ``Σ w_k A_k`` with ``w_k ∝ n1_k · n0_k``,
    and ``se² = Σ w_k² se_k²`` (sites are independent). Shifts of whole sites' scores,
    which lower a pooled AUROC, do not enter it.
    """
    parts = site_aurocs(labels, scores, sites)
    if not parts:
        return math.nan, math.nan
    w = np.array([p for p, _, _ in parts], dtype=float) / sum(p for p, _, _ in parts)
    return float(w @ [a for _, a, _ in parts]), float(math.sqrt(w**2 @ [se**2 for _, _, se in parts]))


def site_auroc_test(verify_labels: np.ndarray, verify_scores: np.ndarray, verify_sites: np.ndarray,
                    site_labels: np.ndarray, site_scores: np.ndarray, alpha: float) -> tuple[bool, dict]:
    """Accept unless the site's AUROC is significantly below the verification scans' within-site AUROC.

    ``z = (AUROC_verify - AUROC_site) / sqrt(se_verify² + se_site²)``, one-sided at level
    ``alpha``; both sides rank scans of one site against each other, so neither
    calibration drift nor a site-wide shift of scores decides.

    A site with one class has no pair of its own to rank: no evidence, it passes. Ranked
    against other sites' scans of the other class, a good site the model sees shifted
    at its scanner and a site whose labels are all wrong look alike (measured on the
    demo: good one-class and 5 %-patient sites at AUROC 0.21–0.46 against verification
    scans at 0.55–0.87), so no such test is made.
    """
    from scipy.stats import norm

    a_verify, se_verify = within_site_auroc_se(verify_labels, verify_scores, verify_sites)
    limit = float(norm.isf(alpha))
    a_site, se_site = auroc_se(site_labels, site_scores)
    se = math.hypot(se_verify, se_site)
    if math.isnan(se) or se == 0:  # one class only, or no uncertainty to judge by: no evidence
        return True, {"stat": math.nan, "limit": limit, "p_value": math.nan,
                      "auroc_site": a_site, "auroc_verify": a_verify}
    z = (a_verify - a_site) / se
    return z <= limit, {"stat": z, "limit": limit, "p_value": float(norm.sf(z)),
                        "auroc_site": a_site, "auroc_verify": a_verify}


def excess_rate_p(k: int, n: int, k_ref: int, n_ref: int) -> float:
    """One-sided p-value of Fisher's exact test that ``k`` of ``n`` is a higher rate than ``k_ref`` of ``n_ref``;
    1 when either side has no scans (no evidence)."""
    from scipy.stats import fisher_exact

    if n == 0 or n_ref == 0:
        return 1.0
    return float(fisher_exact([[k, n - k], [k_ref, n_ref - k_ref]], alternative="greater")[1])


def skill(labels: np.ndarray, scores: np.ndarray, sites: np.ndarray) -> float:
    """The pair-weighted median of the per-site AUROCs (sites with both classes); NaN without such a site.

    A median, so that a minority of harmful sites among the verification scans (whose
    labels the model cannot or must not reproduce) does not keep a skilled model from
    counting as one, nor makes an unskilled one look skilled.
    """
    parts = sorted((auroc, pairs) for pairs, auroc, _ in site_aurocs(labels, scores, sites))
    if not parts:
        return math.nan
    weights = np.cumsum([w for _, w in parts])
    return float(parts[int(np.searchsorted(weights, weights[-1] / 2))][0])
