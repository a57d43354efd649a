"""Per-scan checks by the model: label issues and out-of-distribution scans, arrays in, masks out.

**Label issues** (``labels``): confident learning — cleanlab's ``find_label_issues`` — on
*out-of-sample* predicted probabilities: scans the model has never trained on, pooled
with the verification scans (which no model ever trains on), so cleanlab's per-class
thresholds come from scans with trustworthy probabilities even when one small site is
checked. A scan the model has already fitted would look clean whatever its label, so
only scans not yet trained are judged. Before cleanlab, each site's scores are shifted in
logit so that their mean equals the site's share of patients (:func:`site_offsets`): a
model is often shifted as a whole at one scanner, or a site holds 5 % patients, and
unshifted, cleanlab's per-class thresholds (from the pooled scans) then call a whole
class of such a site label issues although its scans rank perfectly. A shift is only
identifiable from both classes, so the scans of a site with one class are left out of
this check (a single flipped label gives it a second class, and is judged). cleanlab is AGPL-3.0
and an optional extra: it is imported only here, only when the check runs.

**Feature distance** (``ood``): each scan's root-mean-square standardised distance to the
verification scans' mean of the encoder's activations — the spatial mean of every ReLU
output along the encoder, each block weighing the same (:func:`fedqc.models.encode`,
:func:`fedqc.scoring.feature_distance`). Early blocks see texture and contrast, which
the classifier's last features learn to ignore: at the demo's clean checkpoint the last
features alone put additively noisy scans at ~2 robust SDs, the early blocks at > 4. The
site computes the distance from per-feature means and scales the server pooled from
sites' sums — no per-scan feature leaves a site. A scan is out of distribution when its
log distance lies more than ``limit`` robust standard deviations (1.4826 × MAD) above
the median log distance of the verification scans: a rule on what the model sees, not
on hand-written image properties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from fedqc.data.issues import Found, IssueCheck, Registry
from fedqc.protocol import MOMENT_KEYS
from fedqc.scoring import score_targets, target_view

MAD_SD = 1.4826  # MAD → SD of a normal distribution


@dataclass(frozen=True)
class FeatureReference:
    """Per-feature center and scale of the verification scans' encoder features."""

    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_moments(cls, moments: list[dict[str, np.ndarray]]) -> FeatureReference:
        """Pool sites' ``feat_n``/``feat_sum``/``feat_sq``; a scale floor keeps dead features from dominating."""
        moments = [m for m in moments if float(np.atleast_1d(m["feat_n"])[0]) > 0]
        n, total, sq = (sum(np.asarray(m[k], dtype=float) for m in moments) for k in MOMENT_KEYS)
        n = float(np.atleast_1d(n)[0]) if moments else 0.0
        if n < 2:
            raise ValueError("a feature reference needs at least two verification scans")
        center = total / n
        var = np.maximum(sq / n - center**2, 0.0)
        return cls(center, np.sqrt(var + 1e-6 + 0.01 * var.mean()))

    def request(self) -> dict:
        """The :class:`~fedqc.protocol.EvalRequest` fields that make a site return ``ood`` distances."""
        return {"ood_center": tuple(float(x) for x in self.center), "ood_scale": tuple(float(x) for x in self.scale)}


@dataclass(frozen=True)
class OODLimit:
    """Where an ``ood`` distance becomes an issue: the verification scans' median log distance + ``limit`` robust SDs."""

    median: float
    spread: float
    limit: float

    @classmethod
    def from_null(cls, distances: np.ndarray, limit: float) -> OODLimit:
        logd = np.log(np.maximum(np.asarray(distances, dtype=float), 1e-12))
        median = float(np.median(logd))
        spread = MAD_SD * float(np.median(np.abs(logd - median)))
        return cls(median, max(spread, 1e-6), limit)

    def score(self, distances: np.ndarray) -> np.ndarray:
        """Robust z of each log distance (higher: further out)."""
        return (np.log(np.maximum(np.asarray(distances, dtype=float), 1e-12)) - self.median) / self.spread

    def issues(self, distances: np.ndarray) -> np.ndarray:
        return self.score(distances) > self.limit


def label_quality(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The probability the model gives each scan's own label (cleanlab's self-confidence)."""
    labels, scores = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    return np.where(labels == 1, scores, 1 - scores)


def site_offsets(labels: np.ndarray, scores: np.ndarray, sites: np.ndarray) -> dict[str, float]:
    """Per site with both classes: the logit shift ``b`` that makes the mean of ``sigmoid(logit(score) + b)`` over
    the site's scans equal its share of patients.

    This is the maximum-likelihood intercept of a logistic fit with the model's logit as a
    fixed offset: it removes a site-wide shift of the scores (a scanner the model sees as
    a whole differently, a prevalence far from the federation's) and keeps the ranking
    within the site, which is what wrong labels break. Labels flipped symmetrically leave
    the share, and so the shift, almost unchanged; labels flipped one way move the share
    and hide part of that harm (a limit, stated in the docs). One scan of a class is
    enough: a one-class site with one flipped label gets a shift that keeps its other
    scans where they are and the flipped one on the wrong side.
    """
    from scipy.optimize import brentq

    labels, sites = np.asarray(labels, dtype=int), np.asarray(sites)
    p = np.clip(np.asarray(scores, dtype=float), 1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p))
    out = {}
    for site in np.unique(sites):
        mine = sites == site
        n1 = int(labels[mine].sum())
        if not 0 < n1 < int(mine.sum()):
            continue
        share, z = n1 / int(mine.sum()), logit[mine]
        out[str(site)] = float(brentq(lambda b: float(np.mean(1 / (1 + np.exp(-(z + b))))) - share, -40.0, 40.0))
    return out


def shift_scores(scores: np.ndarray, sites: np.ndarray, offsets: dict[str, float]) -> np.ndarray:
    """Scores shifted in logit by their site's offset; NaN for a site without one."""
    p = np.clip(np.asarray(scores, dtype=float), 1e-6, 1 - 1e-6)
    b = np.array([offsets.get(str(s), np.nan) for s in np.asarray(sites)], dtype=float)
    return 1 / (1 + np.exp(-(np.log(p / (1 - p)) + b)))


def label_issues(labels: np.ndarray, scores: np.ndarray, judged: np.ndarray) -> np.ndarray:
    """Mask over ``judged`` rows that cleanlab calls label issues, from all rows' out-of-sample probabilities.

    ``labels``/``scores`` cover the reference scans and the judged ones together; with
    fewer than two scans of either class there is nothing to learn the thresholds from,
    and nothing is called an issue.
    """
    from cleanlab.filter import find_label_issues

    labels, scores = np.asarray(labels, dtype=int), np.clip(np.asarray(scores, dtype=float), 1e-6, 1 - 1e-6)
    judged = np.asarray(judged, dtype=bool)
    if min(int((labels == 0).sum()), int((labels == 1).sum())) < 2 or not judged.any():
        return np.zeros(int(judged.sum()), dtype=bool)
    issues = find_label_issues(labels, np.column_stack([1 - scores, scores]), n_jobs=1)
    return issues[judged]


def label_issues_of(verification: pd.DataFrame, every: pd.DataFrame, scored: pd.DataFrame
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.Series]:
    """Label issues of one target (``label``/``score`` columns): each site's score shift is estimated from the
    verification scans and all of ``every`` scored scan, then cleanlab judges the verification scans and ``scored``
    together. Returns over ``scored``: judged (its site's shift could be estimated), issue, label quality (of the
    shifted score where judged); and the verification scans' issues by subject."""
    columns = ["site", "label", "score"]
    both = pd.concat([verification[columns], every[columns]], ignore_index=True)
    offsets = site_offsets(both["label"].to_numpy(), both["score"].to_numpy(), both["site"].to_numpy())
    ref, judged = verification[verification["site"].isin(offsets)], scored["site"].isin(offsets).to_numpy()
    rows = pd.concat([ref[columns], scored.loc[judged, columns]])
    probs = shift_scores(rows["score"].to_numpy(), rows["site"].to_numpy(), offsets)
    found = label_issues(rows["label"].to_numpy(), probs, np.ones(len(rows), bool))
    issues, quality = np.zeros(len(scored), bool), label_quality(scored["label"].to_numpy(), scored["score"].to_numpy())
    issues[judged] = found[len(ref):]
    quality[judged] = label_quality(rows["label"].to_numpy()[len(ref):], probs[len(ref):])
    return judged, issues, quality, pd.Series(found[:len(ref)], index=ref.index)


# ----------------------------------------------------------------------------- the checks, one class each
@dataclass(frozen=True)
class ScanInput:
    """What a per-scan check sees: ``judged`` (the scans to judge: subject, site, label, score, per target
    ``label_<t>``/``score_<t>``, and ``ood`` where the sites measured feature distances), ``scored`` (every scan
    those sites scored, the judged ones among them), ``verification`` (the verification set's baseline rows, the
    current model's when a check :attr:`~ScanCheck.needs_baseline`) and ``ood_limit`` (None: no feature reference)."""

    judged: pd.DataFrame
    scored: pd.DataFrame
    verification: pd.DataFrame
    ood_limit: OODLimit | None = None


class ScanCheck(IssueCheck[ScanInput]):
    """A per-scan check of the site-check gate (``qc.scans`` names the ones that run). A check that does not run
    still gives its columns (:meth:`unchecked`): its issues are False."""

    needs_baseline: ClassVar[bool] = False  # judged against the current model's verification scores

    def unchecked(self, data: ScanInput) -> pd.DataFrame:
        return pd.DataFrame({self.score_column(): np.nan, self.flag_column(): False}, index=data.judged.index)


SCAN_ISSUES: Registry[type[ScanCheck]] = Registry()
"""The per-scan checks by name (``qc.scans``), in the order their columns appear in ``scan_issues.csv``."""


@SCAN_ISSUES.register
class LabelIssues(ScanCheck):
    """``labels``: cleanlab's label issues of the judged scans, each target judged, issues joined (module docstring).

    Score: the probability the model gives the scan's label (of its site-shifted score where the shift could be
    estimated; the lowest over targets). ``label_judged``: the shift could be estimated (the site check's share of
    label issues counts only those). Summary: ``reference_issues``, the verification scans' label issues and how
    many were judged.
    """

    name, issue, needs_baseline = "labels", "label", True

    def find(self, data: ScanInput) -> Found:
        b, targets = data.verification, score_targets(data.judged.columns)
        judged, found = np.ones(len(data.judged), bool), np.zeros(len(data.judged), bool)
        qualities, reference = [], pd.Series(dtype=bool)
        for target in (t for t in targets if t in score_targets(b.columns)):
            mine, issues, quality, ref = label_issues_of(target_view(b, target), target_view(data.scored, target),
                                                         target_view(data.judged, target))
            judged &= mine
            found |= issues
            qualities.append(quality)
            reference = ref.combine(reference, lambda x, y: bool(x) or bool(y), fill_value=False)
        table = pd.DataFrame({self.score_column(): np.min(qualities, axis=0), self.flag_column(): found,
                              "label_judged": judged}, index=data.judged.index)
        return Found(table, {"reference_issues": (int(reference.sum()), len(reference))})

    def unchecked(self, data: ScanInput) -> pd.DataFrame:
        quality = np.min([label_quality(v["label"], v["score"]) for v in
                          (target_view(data.judged, t) for t in score_targets(data.judged.columns))], axis=0)
        return pd.DataFrame({self.score_column(): quality, self.flag_column(): False, "label_judged": False},
                            index=data.judged.index)


@SCAN_ISSUES.register
class OutOfDistribution(ScanCheck):
    """``ood``: the feature distance's robust z against the verification scans' (:class:`OODLimit`); unchecked
    where there is no feature reference or the sites measured no distances."""

    name = "ood"

    def find(self, data: ScanInput) -> Found:
        if data.ood_limit is None or "ood" not in data.judged:
            return Found(self.unchecked(data))
        return Found(pd.DataFrame({self.score_column(): data.ood_limit.score(data.judged["ood"]),
                                   self.flag_column(): data.ood_limit.issues(data.judged["ood"])},
                                  index=data.judged.index))


def find_scan_issues(data: ScanInput, checks: set[str]) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Every registered check's columns over ``data.judged`` (those in ``checks`` run, the others are
    :meth:`~ScanCheck.unchecked`), and ``issue``: the names of the checks that found one, joined by ``+`` (empty:
    none); and the summaries of the checks that ran, by name."""
    table, summaries = data.judged.copy(), {}
    for name, check in SCAN_ISSUES.items():
        if name in checks:
            found = check().find(data)
            columns, summaries[name] = found.table, found.summary
        else:
            columns = check().unchecked(data)
        for column in columns:
            table[column] = columns[column].to_numpy()
    flags = [(name, table[check.flag_column()].to_numpy()) for name, check in SCAN_ISSUES.items()]
    table["issue"] = ["+".join(name for name, hit in flags if hit[i]) for i in range(len(table))]
    return table, summaries
