"""Quality control of travelling updates: criteria, and the verify → revisit → eliminate policy.

Pure Python (numpy, pandas, scikit-learn, :mod:`fedqc.metrics`): no torch and no Flower, so every decision can
be unit-tested on hand-made scores. The granularity modes that call it live in
:mod:`fedqc.qc_arm`.

**Verification.** After an update the candidate model scores the verification scans (the
sites' ``val`` splits, never ``test``). The policy keeps the per-scan scores of the last
*accepted* model as the baseline, so every comparison is paired: same scans, the model
before the update against the model after it (the no-update baseline).

**Criteria.**

``reference`` (the published method, DESIGN §4)
    Confusion counts at threshold 0.5; reject if FPR = FP/(FP+TN) or FNR = FN/(FN+TP)
    rose by more than ``tolerance × n_trained``. Rates are the true ones (the reference
    code divides by the wrong class totals). With a few dozen verification scans one
    changed prediction moves a rate by more than the single-scan tolerance, and the
    travelling model's calibration drift moves the threshold far more than harm does,
    so this criterion is mostly noise at small verification sets (DESIGN §7).

``loss``
    Threshold-free: the per-scan binary cross-entropy of candidate minus baseline,
    ``d_i``. Reject when the mean increase is significant for the verification set's
    size: ``mean(d) > z · sd(d) / sqrt(n)`` (a one-sided paired z-test). The tolerance
    therefore shrinks with more verification scans and grows with their spread, instead
    of being a fixed number of scans.

``calibrated``
    As ``loss``, but each model's scores are first recalibrated on the verification
    scans (Platt scaling: a logistic fit of the label on the logit). Between visits the
    travelling model swings between predicting all-patient and all-control — the
    calibration drift that swamps thresholded rates — and from saturated logits any
    update changes the raw loss a lot. Recalibration removes a shift and a monotone
    rescaling of the logits, so the test measures the loss of *discrimination*, which
    wrong labels and inverted contrast destroy. (An intercept-only recalibration was
    tried and measured worse on the demo: from saturated logits every single-scan
    update looked harmful.)

``auroc`` (the default)
    Judges the *data* an update would learn from, not the update: every visit starts
    with a **site check**, and a QC arm first screens every site. The site scores its
    training scans with the last accepted model; the check compares how well that
    model separates the site's labels (its AUROC) with how well it separates the
    verification scans' labels within their sites (patient-control pairs of one site):
    ``z = (AUROC_verify - AUROC_site) / sqrt(se_verify² + se_site²)`` with Hanley-McNeil
    standard errors, failing when ``P(Z ≥ z) < alpha``.

    - A site whose labels the verified model cannot reproduce fails: inverted or noise
      images it scores alike whatever the label (AUROC ≈ 0.5), flipped labels (< 0.5).
    - Only ranks within a site count, on both sides, so neither calibration drift nor
      a site-wide shift of scores (another scanner) fails a good site or hides a
      harmful one. Two first versions failed on the demo: per-scan conformal p-values
      against the verification scans of the same label flagged good sites shifted as a
      whole, and a pooled verification AUROC, lowered by such shifts, let a noise site
      through in two of three seeds.
    - One odd scan moves a site's AUROC by about ``1/n``, far inside the standard
      errors: single scans are left to the other criteria or the audit.
    - A site that passes trains its visit, adopted without a paired val test: on the
      demo the paired tests have no power against harmful sites, and once the model
      separates the verification scans almost perfectly they reject good updates and
      eliminate good scans by the hundred. The verification scans are rescored after
      every adopted update, so both AUROCs are the same model's.

**Policy.** A site that fails its check is *flagged* and sits out until cycle ``c + R``;
it is then checked again — passing, it trains again; failing, it is *eliminated*: all its
remaining training scans (stage ``site``) and its ``val`` scans leave QC for good.
While a site is flagged its ``val`` scans stay out of the verification set too.
A rejected update is rolled back by the caller. A single scan that fails is
*flagged*: kept out of training until cycle ``c + R``, then retrained alone and verified
again — accepted, it returns to the pool; rejected, it is *eliminated* for the rest of
training. With ``leave_site_out`` the verification set of an update excludes the
training site's own ``val`` scans, so a harmful site cannot vouch for its own updates;
once a share ``untrusted_fraction`` of a site's training scans is eliminated, its ``val``
scans leave the verification set for good.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fedqc.metrics import EPS, counts_from_scores, per_scan_loss, ratio


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """TP/FP/TN/FN at ``threshold``, true FPR and FNR (NaN without negatives/positives), mean loss."""
    c = counts_from_scores(labels, scores, threshold)
    tp, fp, tn, fn = (int(c[k]) for k in ("tp", "fp", "tn", "fn"))
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "fpr": ratio(fp, fp + tn), "fnr": ratio(fn, fn + tp), "loss": ratio(c["loss_sum"], c["n"])}


def recalibrate(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Platt scaling fitted on these scans (slope kept positive); unchanged with one class."""
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
    formula would give 0.
    """
    labels, scores = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan, math.nan
    auc = float(roc_auc_score(labels, scores))
    pairs = len(pos) * len(neg)
    a = min(max(auc, 0.5 / pairs), 1 - 0.5 / pairs)  # half a pair from 0 and 1: perfect separation is not certainty
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (len(pos) - 1) * (q1 - a * a) + (len(neg) - 1) * (q2 - a * a)) / pairs
    return auc, math.sqrt(max(var, 0.0))


def within_site_auroc_se(labels: np.ndarray, scores: np.ndarray, sites: np.ndarray) -> tuple[float, float]:
    """AUROC over patient-control pairs of the same site, and its standard error; NaN without such pairs.

    The pair-weighted mean of the per-site AUROCs, ``Σ w_k A_k`` with ``w_k ∝ n1_k · n0_k``,
    and ``se² = Σ w_k² se_k²`` (sites are independent). Shifts of whole sites' scores,
    which lower a pooled AUROC, do not enter it.
    """
    labels, scores, sites = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float), np.asarray(sites)
    parts = []
    for site in np.unique(sites):
        mine = sites == site
        pairs = int(labels[mine].sum()) * int((labels[mine] == 0).sum())
        if pairs:
            parts.append((pairs, *auroc_se(labels[mine], scores[mine])))
    if not parts:
        return math.nan, math.nan
    w = np.array([p for p, _, _ in parts], dtype=float) / sum(p for p, _, _ in parts)
    return float(w @ [a for _, a, _ in parts]), float(math.sqrt(w**2 @ [se**2 for _, _, se in parts]))


def site_auroc_test(verify_labels: np.ndarray, verify_scores: np.ndarray, verify_sites: np.ndarray,
                    site_labels: np.ndarray, site_scores: np.ndarray, alpha: float) -> tuple[bool, dict]:
    """Accept unless the site's AUROC is significantly below the verification scans' within-site AUROC.

    One-sided z at level ``alpha``; the verification side is :func:`within_site_auroc_se`,
    so both sides rank scans of one site against each other.
    """
    from scipy.stats import norm

    a_verify, se_verify = within_site_auroc_se(verify_labels, verify_scores, verify_sites)
    a_site, se_site = auroc_se(site_labels, site_scores)
    limit = float(norm.isf(alpha))
    se = math.hypot(se_verify, se_site)
    if math.isnan(se) or se == 0:  # one class only, or no uncertainty to judge by: no evidence
        return True, {"stat": math.nan, "limit": limit, "p_value": math.nan,
                      "auroc_site": a_site, "auroc_verify": a_verify}
    z = (a_verify - a_site) / se
    return z <= limit, {"stat": z, "limit": limit, "p_value": float(norm.sf(z)),
                        "auroc_site": a_site, "auroc_verify": a_verify}


class Criterion(Protocol):
    name: str
    site_alpha: float | None  # level of the site check; set: sites are checked and updates adopted unverified

    def decide(self, labels: np.ndarray, base: np.ndarray, cand: np.ndarray, n_trained: int) -> tuple[bool, dict]:
        """Accept (True) or reject the candidate; the dict holds ``stat`` and ``limit``."""


@dataclass(frozen=True)
class ReferenceCriterion:
    """Reject when FPR or FNR rose by more than ``tolerance × n_trained``."""

    tolerance: float = 0.02
    name: str = "reference"
    site_alpha: None = None

    def decide(self, labels, base, cand, n_trained):
        b, c = confusion(labels, base), confusion(labels, cand)
        rise = max(np.nan_to_num(c["fpr"] - b["fpr"]), np.nan_to_num(c["fnr"] - b["fnr"]))
        limit = self.tolerance * n_trained
        return bool(rise <= limit), {"stat": float(rise), "limit": limit}


@dataclass(frozen=True)
class PairedLossCriterion:
    """Reject when the mean per-scan loss increase exceeds ``z`` standard errors."""

    z: float = 2.0
    recalibrated: bool = True
    site_alpha: None = None

    @property
    def name(self) -> str:
        return "calibrated" if self.recalibrated else "loss"

    def decide(self, labels, base, cand, n_trained):
        if self.recalibrated:
            base, cand = recalibrate(labels, base), recalibrate(labels, cand)
        d = per_scan_loss(labels, cand) - per_scan_loss(labels, base)
        mean = float(d.mean())
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
        limit = self.z * se
        return bool(mean <= limit), {"stat": mean, "limit": limit}


@dataclass(frozen=True)
class SiteAUROCCriterion:
    """Check each site's data before it trains (:meth:`QCPolicy.check_site`); adopt its updates unverified."""

    site_alpha: float = 0.01
    name: str = "auroc"

    def decide(self, labels, base, cand, n_trained):  # not asked by QCRunner: updates are adopted unverified
        return True, {"stat": math.nan, "limit": math.nan}


def make_criterion(name: str, *, tolerance: float = 0.02, z: float = 2.0, alpha: float = 0.01) -> Criterion:
    if name == "reference":
        return ReferenceCriterion(tolerance)
    if name in ("loss", "calibrated"):
        return PairedLossCriterion(z, recalibrated=name == "calibrated")
    if name == "auroc":
        return SiteAUROCCriterion(alpha)
    raise ValueError(f"unknown QC criterion {name!r}")


@dataclass
class QCPolicy:
    """The QC state machine: baseline scores, flagged and eliminated scans, the decision log.

    Parameters
    ----------
    criterion
        Decides each verification (:func:`make_criterion`).
    train_counts
        Training scans per site, for the ``untrusted_fraction`` rule.
    revisit_after
        ``R``: a scan flagged at cycle ``c`` is retried at cycle ``c + R``.
    """

    criterion: Criterion
    train_counts: dict[str, int] = field(default_factory=dict)
    revisit_after: int = 2
    leave_site_out: bool = True
    untrusted_fraction: float = 0.5
    baseline: pd.DataFrame | None = None  # index subject; columns site, label, score
    flagged: dict[str, dict] = field(default_factory=dict)
    eliminated: dict[str, dict] = field(default_factory=dict)
    flagged_sites: dict[str, dict] = field(default_factory=dict)
    eliminated_sites: dict[str, int] = field(default_factory=dict)  # site → cycle eliminated
    untrusted: set[str] = field(default_factory=set)
    log: list[dict] = field(default_factory=list)
    flags: list[dict] = field(default_factory=list)
    revisits: list[dict] = field(default_factory=list)

    def start(self, scores: pd.DataFrame) -> None:
        """Set the baseline: the current model's scores on the verification scans."""
        if scores.empty:
            raise ValueError("QC needs verification scans: no site has a non-empty val split")
        self.baseline = scores.set_index("subject")[["site", "label", "score"]].copy()

    def verification_set(self, site: str) -> np.ndarray:
        """Mask over the baseline rows that judge an update trained at ``site``."""
        sites = self.baseline["site"]
        mask = ~sites.isin(self.untrusted | set(self.flagged_sites)).to_numpy()
        if self.leave_site_out:
            mask &= (sites != site).to_numpy()
        return mask

    def verify(self, scores: pd.DataFrame, *, cycle: int, site: str, scope: str, subjects: list[str],
               n_trained: int, seconds: float = 0.0) -> bool:
        """Judge a candidate from its ``scores`` (subject, score) on the verification scans."""
        cand = scores.set_index("subject")["score"].reindex(self.baseline.index)
        mask = self.verification_set(site) & cand.notna().to_numpy()
        labels = self.baseline["label"].to_numpy()[mask]
        base, new = self.baseline["score"].to_numpy()[mask], cand.to_numpy()[mask]
        if mask.any():
            accepted, stats = self.criterion.decide(labels, base, new, n_trained)
        else:
            accepted, stats = True, {"stat": math.nan, "limit": math.nan}
        self.log.append({"cycle": cycle, "site": site, "scope": scope,
                         "subject": subjects[0] if len(subjects) == 1 else "", "n_trained": n_trained,
                         "criterion": self.criterion.name, **stats, "accepted": accepted,
                         **confusion(labels, new), "base_loss": float(per_scan_loss(labels, base).mean()),
                         "n_verify": int(mask.sum()), "seconds": seconds})
        if accepted:
            self.rebase(scores)
        return accepted

    def rebase(self, scores: pd.DataFrame) -> None:
        """Make ``scores`` (subject, score), the adopted model's, the baseline of the scans they cover."""
        cand = scores.set_index("subject")["score"].reindex(self.baseline.index)
        seen = cand.notna()
        self.baseline.loc[seen, "score"] = cand[seen]

    def site_due(self, site: str, cycle: int) -> bool:
        """Whether ``site`` trains at ``cycle``: not eliminated, and not flagged unless its revisit is due."""
        if site in self.eliminated_sites:
            return False
        return site not in self.flagged_sites or self.flagged_sites[site]["due"] <= cycle

    def check_site(self, scores: pd.DataFrame, *, cycle: int, site: str, subjects: list[str],
                   seconds: float = 0.0) -> bool:
        """The site check: ``scores`` (subject, label, score) of the site's training scans under the baseline model.

        The baseline must hold the same model's verification scores (:meth:`rebase`).
        Fails when the site's AUROC is significantly below the verification scans'
        (:func:`site_auroc_test` at ``criterion.site_alpha``). A first failure flags the
        site until ``c + R``; a failure at that revisit eliminates it with all of
        ``subjects`` (its training scans).
        """
        mask = self.verification_set(site)
        accepted, stats = site_auroc_test(self.baseline["label"].to_numpy()[mask],
                                          self.baseline["score"].to_numpy()[mask],
                                          self.baseline["site"].to_numpy()[mask],
                                          scores["label"].to_numpy(), scores["score"].to_numpy(),
                                          self.criterion.site_alpha)
        self.log.append({"cycle": cycle, "site": site, "scope": "site", "subject": "", "n_trained": len(scores),
                         "criterion": self.criterion.name, **stats, "accepted": accepted,
                         **confusion(scores["label"].to_numpy(), scores["score"].to_numpy()),
                         "n_verify": int(mask.sum()), "seconds": seconds})
        flag = self.flagged_sites.pop(site, None)
        if flag is not None:
            self.revisits.append({**flag, "cycle_revisited": cycle, "accepted": accepted})
            if not accepted:
                self.eliminate_site(site, cycle, subjects, cycle_flagged=flag["cycle_flagged"])
        elif not accepted:
            self.flagged_sites[site] = {"subject": "", "site": site, "cycle_flagged": cycle,
                                        "due": cycle + self.revisit_after}
            self.flags += [{**self.flagged_sites[site], "subject": s} for s in scores["subject"]]
        return accepted

    def eliminate_site(self, site: str, cycle: int, subjects: list[str], *, cycle_flagged: int) -> None:
        """Eliminate a site: its training scans (stage ``site``) and its val scans leave QC for good."""
        self.eliminated_sites[site] = cycle
        self.untrusted.add(site)
        for s in subjects:
            if s not in self.eliminated:
                flag = self.flagged.pop(s, None)
                self.eliminate(s, site, cycle, "site", cycle_flagged=flag["cycle_flagged"] if flag else cycle_flagged)

    def reject(self, *, cycle: int, site: str, scope: str, subjects: list[str], reason: str) -> None:
        """Log an update rejected before verification (an invalid reply)."""
        self.log.append({"cycle": cycle, "site": site, "scope": scope,
                         "subject": subjects[0] if len(subjects) == 1 else "", "n_trained": 0,
                         "criterion": "invalid update", "accepted": False, "note": reason})

    def flag(self, subject: str, site: str, cycle: int) -> None:
        self.flagged[subject] = {"subject": subject, "site": site, "cycle_flagged": cycle,
                                 "due": cycle + self.revisit_after}
        self.flags.append(dict(self.flagged[subject]))

    def due(self, site: str, cycle: int) -> list[str]:
        """Flagged scans of ``site`` whose revisit is due at ``cycle``."""
        return sorted(s for s, f in self.flagged.items() if f["site"] == site and f["due"] <= cycle)

    def revisit(self, subject: str, cycle: int, accepted: bool) -> None:
        """Record a revisit: accepted → back in the pool; rejected → eliminated."""
        flag = self.flagged.pop(subject)
        self.revisits.append({**flag, "cycle_revisited": cycle, "accepted": accepted})
        if accepted:
            return
        self.eliminate(subject, flag["site"], cycle, "verification", cycle_flagged=flag["cycle_flagged"])

    def eliminate(self, subject: str, site: str, cycle: int, stage: str, *, cycle_flagged: int | None = None) -> None:
        """Eliminate a scan for the rest of training; a site losing enough scans becomes untrusted."""
        self.eliminated[subject] = {"subject": subject, "site": site,
                                    "cycle_flagged": cycle if cycle_flagged is None else cycle_flagged,
                                    "cycle_eliminated": cycle, "stage": stage}
        n_out = sum(1 for e in self.eliminated.values() if e["site"] == site)
        if site not in self.untrusted and n_out >= self.untrusted_fraction * self.train_counts.get(site, math.inf):
            self.untrusted.add(site)

    def drop_verification(self, subjects: list[str]) -> None:
        """Remove scans from the verification set (e.g. val scans that failed the audit)."""
        self.baseline = self.baseline.drop(index=[s for s in subjects if s in self.baseline.index])

    def excluded(self, site: str) -> set[str]:
        """Scans of ``site`` kept out of training: flagged (until revisit) or eliminated."""
        return {s for table in (self.flagged, self.eliminated) for s, r in table.items() if r["site"] == site}

    def snapshot(self) -> dict:
        """Everything needed to resume, as plain data."""
        return {"baseline": self.baseline.reset_index().to_dict("list"), "flagged": dict(self.flagged),
                "eliminated": dict(self.eliminated), "flagged_sites": dict(self.flagged_sites),
                "eliminated_sites": dict(self.eliminated_sites), "untrusted": sorted(self.untrusted)}

    def restore(self, snap: dict) -> None:
        self.baseline = pd.DataFrame(snap["baseline"]).set_index("subject")
        self.flagged, self.eliminated = dict(snap["flagged"]), dict(snap["eliminated"])
        self.flagged_sites = dict(snap.get("flagged_sites", {}))
        self.eliminated_sites = dict(snap.get("eliminated_sites", {}))
        self.untrusted = set(snap["untrusted"])
