"""The QC state machine: verification baseline, flagged and eliminated scans and sites, the decision log.

**Scans.** A scan whose update fails is *flagged*: kept out of training until cycle
``c + R``, then retrained alone and verified again — accepted, it returns to the pool;
rejected, it is *eliminated* for the rest of training.

**Sites.** A site that fails its check is flagged and sits out until ``c + R``; it is
then checked again — passing, it trains again; failing, it is eliminated with all its
training scans (stage ``site``), and its ``val`` scans leave the verification set for
good. While a site is flagged its ``val`` scans are out of the verification set too.

**Verification set.** The baseline holds the last accepted model's scores on the
verification scans, so every comparison is paired. With ``leave_site_out`` an update
is never judged by its own site's ``val`` scans; a site that has lost a share
``untrusted_fraction`` of its training scans loses its ``val`` scans from it for good.

Pure Python on hand-made scores: every decision can be unit-tested without a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fedqc.errors import UserError
from fedqc.qc.criteria import SiteAUROCCheck, UpdateCriterion
from fedqc.qc.stats import confusion, excess_rate_p
from fedqc.scoring import per_scan_loss, score_targets, target_view


def _one(subjects: list[str]) -> str:
    return subjects[0] if len(subjects) == 1 else ""


def site_decision(check: SiteAUROCCheck, verification: pd.DataFrame, site: pd.DataFrame) -> tuple[bool, dict]:
    """The site check on every target both tables score (a single-target model: ``label`` alone): the site passes
    when every target passes; the statistics are the main target's, or the first failing target's (named in
    ``note``)."""
    outcome = None
    for target in (t for t in score_targets(site.columns) if t in score_targets(verification.columns)):
        b, rest = target_view(verification, target), target_view(site, target)
        ok, stats = check.decide(b["label"].to_numpy(), b["score"].to_numpy(), b["site"].to_numpy(),
                                 rest["label"].to_numpy(), rest["score"].to_numpy())
        if outcome is None or (outcome[0] and not ok):
            outcome = ok, stats | ({"note": f"target {target}"} if target != "label" else {})
    return outcome


@dataclass
class QCPolicy:
    """Parameters: ``train_counts`` (training scans per site, for the untrusted rule) and
    ``revisit_after`` (R: a scan flagged at cycle c is retried at c + R)."""

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
    dropped: dict[str, str] = field(default_factory=dict)  # val scans taken out of the verification set → site
    fresh: set[str] = field(default_factory=set)  # training scans the model has never trained on (out-of-sample)
    skill_cycle: int | None = None  # the cycle the model first showed skill: decisions start there
    scan_issues: dict[str, dict] = field(default_factory=dict)  # subject → its last per-scan check (scans.py)
    log: list[dict] = field(default_factory=list)
    flags: list[dict] = field(default_factory=list)
    revisits: list[dict] = field(default_factory=list)

    # ------------------------------------------------------------------ verification set
    def start(self, scores: pd.DataFrame) -> None:
        """Set the baseline: the current model's scores on the verification scans."""
        if scores.empty:
            raise UserError("QC needs verification scans: no site has a usable non-empty val split")
        targets = [c for c in scores.columns if c.startswith(("label_", "score_"))]  # a multi-label model's
        self.baseline = scores.set_index("subject")[["site", "label", "score", *targets]].copy()

    def verification_set(self, site: str) -> np.ndarray:
        """Mask over the baseline rows that judge an update trained at (or a check of) ``site``."""
        sites = self.baseline["site"]
        mask = ~sites.isin(self.untrusted | set(self.flagged_sites)).to_numpy()
        if self.leave_site_out:
            mask &= (sites != site).to_numpy()
        return mask

    def rebase(self, scores: pd.DataFrame) -> None:
        """Make ``scores`` (subject, score), the adopted model's, the baseline of the scans they cover."""
        for column in ("score", *(c for c in self.baseline.columns if c.startswith("score_") and c in scores)):
            cand = scores.set_index("subject")[column].reindex(self.baseline.index)
            seen = cand.notna()
            self.baseline.loc[seen, column] = cand[seen]

    def drop_verification(self, subjects: list[str]) -> None:
        """Remove scans from the verification set (e.g. val scans that failed the audit)."""
        gone = [s for s in subjects if s in self.baseline.index]
        self.dropped.update(self.baseline.loc[gone, "site"].to_dict())
        self.baseline = self.baseline.drop(index=gone)

    # ------------------------------------------------------------------ decisions
    def verify(self, criterion: UpdateCriterion, scores: pd.DataFrame, *, cycle: int, site: str, scope: str,
               subjects: list[str], n_trained: int, seconds: float = 0.0) -> bool:
        """Judge a candidate from its ``scores`` (subject, score) on the verification scans; rebase if accepted."""
        cand = scores.set_index("subject")["score"].reindex(self.baseline.index)
        mask = self.verification_set(site) & cand.notna().to_numpy()
        labels = self.baseline["label"].to_numpy()[mask]
        base, new = self.baseline["score"].to_numpy()[mask], cand.to_numpy()[mask]
        if mask.any():
            accepted, stats = criterion.decide(labels, base, new, n_trained)
        else:
            accepted, stats = True, {"stat": math.nan, "limit": math.nan}
        self.log.append({"cycle": cycle, "site": site, "scope": scope, "subject": _one(subjects),
                         "n_trained": n_trained, "criterion": criterion.name, **stats, "accepted": accepted,
                         **confusion(labels, new), "base_loss": float(per_scan_loss(labels, base).mean()),
                         "n_verify": int(mask.sum()), "seconds": seconds})
        if accepted:
            self.rebase(scores)
        return accepted

    def check_site(self, check: SiteAUROCCheck, scores: pd.DataFrame, *, cycle: int, site: str,
                   subjects: list[str], seconds: float = 0.0, issues: pd.Series | None = None,
                   label_issues: tuple[int, int, int, int] | None = None) -> bool:
        """The site check on ``scores`` (subject, label, score) of the site's training scans under the baseline model.

        The baseline must hold the same model's verification scores (:meth:`rebase`). A
        multi-label model is checked on every target (:func:`site_decision`).
        ``issues`` (a mask over ``scores``) marks scans with per-scan issues: they are left
        out of the check, which judges the rest — and a site where they are more than half
        fails. ``label_issues`` = (the site's label issues, its scans judged for them, the
        verification scans' label issues, verification scans judged): a site whose share
        is significantly higher (one-sided Fisher exact test at the check's ``alpha``)
        fails — its labels disagree with the model more often than clean labels do, even
        where the scans the model has fitted still rank well. A first failure flags the
        site until ``c + R``; a failure at that revisit eliminates it with all of
        ``subjects`` (its training scans).
        """
        mask = self.verification_set(site)
        b = self.baseline[mask]
        issues = pd.Series(False, index=scores.index) if issues is None else issues
        rest = scores[~issues.to_numpy()]
        accepted, stats = site_decision(check, b, rest)
        if issues.sum() > len(scores) / 2:
            accepted, stats = False, stats | {"note": f"{int(issues.sum())} of {len(scores)} scans with per-scan issues"}
        if label_issues is not None:
            p = excess_rate_p(*label_issues)
            stats = stats | {"label_issues_p": p}
            if p < check.alpha:
                k, n, k_ref, n_ref = label_issues
                accepted, stats = False, stats | {"note": f"label issues at {k} of {n} scans, verification {k_ref} of "
                                                          f"{n_ref} (Fisher p = {p:.2g})"}
        self.log.append({"cycle": cycle, "site": site, "scope": "site", "subject": "", "n_trained": len(rest),
                         "criterion": check.name, **stats, "accepted": accepted,
                         **confusion(rest["label"].to_numpy(), rest["score"].to_numpy()),
                         "n_verify": int(mask.sum()), "n_issues": int(issues.sum()), "seconds": seconds})
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

    def reject(self, *, cycle: int, site: str, scope: str, subjects: list[str], reason: str) -> None:
        """Log an update rejected before verification (an invalid reply)."""
        self.log.append({"cycle": cycle, "site": site, "scope": scope, "subject": _one(subjects), "n_trained": 0,
                         "criterion": "invalid update", "accepted": False, "note": reason})

    # ------------------------------------------------------------------ what the model has seen
    def set_untrained(self, subjects: set[str]) -> None:
        """The training scans the start model has never trained on (out-of-sample: the per-scan checks judge them)."""
        self.fresh = set(subjects)

    def trained(self, subjects: list[str]) -> None:
        """An adopted update trained ``subjects``: the model has fitted them."""
        self.fresh.difference_update(subjects)

    def reach_skill(self, cycle: int) -> None:
        """The model shows skill at ``cycle``: decisions start there (the first such cycle is kept)."""
        if self.skill_cycle is None:
            self.skill_cycle = cycle

    def record_scan_check(self, row: dict) -> None:
        """A scan's per-scan check and its decision (a row of ``scan_issues.csv``); replaces its earlier one."""
        self.scan_issues[row["subject"]] = row

    # ------------------------------------------------------------------ scans and sites
    def site_due(self, site: str, cycle: int) -> bool:
        """Whether ``site`` trains at ``cycle``: not eliminated, and not flagged unless its revisit is due."""
        if site in self.eliminated_sites:
            return False
        return site not in self.flagged_sites or self.flagged_sites[site]["due"] <= cycle

    def flag(self, subject: str, site: str, cycle: int) -> None:
        self.flagged[subject] = {"subject": subject, "site": site, "cycle_flagged": cycle,
                                 "due": cycle + self.revisit_after}
        self.flags.append(dict(self.flagged[subject]))

    def due(self, site: str, cycle: int) -> list[str]:
        """Flagged scans of ``site`` whose revisit is due at ``cycle``."""
        return sorted(s for s, f in self.flagged.items() if f["site"] == site and f["due"] <= cycle)

    def revisit(self, subject: str, cycle: int, accepted: bool, stage: str = "verification") -> None:
        """Record a revisit: accepted → back in the pool; rejected → eliminated (at ``stage``)."""
        flag = self.flagged.pop(subject)
        self.revisits.append({**flag, "cycle_revisited": cycle, "accepted": accepted})
        if not accepted:
            self.eliminate(subject, flag["site"], cycle, stage, cycle_flagged=flag["cycle_flagged"])

    def eliminate(self, subject: str, site: str, cycle: int, stage: str, *, cycle_flagged: int | None = None) -> None:
        """Eliminate a scan for the rest of training; a site losing enough scans becomes untrusted."""
        self.eliminated[subject] = {"subject": subject, "site": site,
                                    "cycle_flagged": cycle if cycle_flagged is None else cycle_flagged,
                                    "cycle_eliminated": cycle, "stage": stage}
        n_out = sum(1 for e in self.eliminated.values() if e["site"] == site)
        if site not in self.untrusted and n_out >= self.untrusted_fraction * self.train_counts.get(site, math.inf):
            self.untrusted.add(site)

    def eliminate_site(self, site: str, cycle: int, subjects: list[str], *, cycle_flagged: int) -> None:
        """Eliminate a site: its training scans (stage ``site``) and its val scans leave QC for good."""
        self.eliminated_sites[site] = cycle
        self.untrusted.add(site)
        for s in subjects:
            if s not in self.eliminated:
                flag = self.flagged.pop(s, None)
                self.eliminate(s, site, cycle, "site", cycle_flagged=flag["cycle_flagged"] if flag else cycle_flagged)

    def trusted_verification(self) -> dict[str, tuple[str, ...]]:
        """The sites whose verification scans judge updates (none untrusted or flagged), each with its scans taken
        out of the verification set."""
        sites = set(self.baseline["site"]) - self.untrusted - set(self.flagged_sites)
        return {s: tuple(sorted(d for d, site in self.dropped.items() if site == s)) for s in sorted(sites)}

    def excluded(self, site: str) -> set[str]:
        """Scans of ``site`` kept out of training: flagged (until revisit) or eliminated."""
        return {s for table in (self.flagged, self.eliminated) for s, r in table.items() if r["site"] == site}

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self) -> dict:
        """Everything needed to resume, as plain data."""
        return {"baseline": self.baseline.reset_index().to_dict("list"), "flagged": dict(self.flagged),
                "eliminated": dict(self.eliminated), "flagged_sites": dict(self.flagged_sites),
                "eliminated_sites": dict(self.eliminated_sites), "untrusted": sorted(self.untrusted),
                "dropped": dict(self.dropped), "fresh": sorted(self.fresh), "skill_cycle": self.skill_cycle,
                "scan_issues": dict(self.scan_issues)}

    def restore(self, snap: dict) -> None:
        self.baseline = pd.DataFrame(snap["baseline"]).set_index("subject")
        self.flagged, self.eliminated = dict(snap["flagged"]), dict(snap["eliminated"])
        self.flagged_sites, self.eliminated_sites = dict(snap["flagged_sites"]), dict(snap["eliminated_sites"])
        self.untrusted, self.dropped = set(snap["untrusted"]), dict(snap.get("dropped", {}))
        self.fresh, self.skill_cycle = set(snap.get("fresh", ())), snap.get("skill_cycle")
        self.scan_issues = dict(snap.get("scan_issues", {}))
