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
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import pandas as pd

from fedqc.errors import UserError
from fedqc.qc.criteria import SiteAUROCCheck, UpdateCriterion
from fedqc.qc.ledger import Event, ScanLedger, ScanStatus
from fedqc.qc.stats import confusion, excess_rate_p, skill
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
        b = b[np.isfinite(b["score"].to_numpy(dtype=float))]  # as update verification: finite scores only
        broken = int((~np.isfinite(rest["score"].to_numpy(dtype=float))).sum())
        if broken:  # a reply that cannot be ranked is a failure, not a crash
            ok, stats = False, {"note": f"{broken} of {len(rest)} of the site's scores are not finite"}
        else:
            ok, stats = check.decide(b["label"].to_numpy(), b["score"].to_numpy(), b["site"].to_numpy(),
                                     rest["label"].to_numpy(), rest["score"].to_numpy())
        if outcome is None or (outcome[0] and not ok):
            outcome = ok, stats | ({"note": f"target {target}"} if target != "label" else {})
    return outcome


@dataclass
class QCPolicy:
    """Parameters: ``train_counts`` (training scans per site, for the untrusted rule) and
    ``revisit_after`` (R: a scan flagged at cycle c is retried at c + R).

    The state — the verification baseline, the per-scan :class:`~fedqc.qc.ledger.ScanLedger`
    and its event log, the sites' flags and eliminations, the decision log — changes through
    the methods below only; the properties read it.
    """

    train_counts: dict[str, int] = field(default_factory=dict)
    revisit_after: int = 2
    leave_site_out: bool = True
    untrusted_fraction: float = 0.5
    baseline: pd.DataFrame | None = field(default=None, init=False)  # index subject; columns site, label, score
    ledger: ScanLedger = field(default_factory=ScanLedger, init=False)
    _flagged_sites: dict[str, dict] = field(default_factory=dict, init=False)
    _eliminated_sites: dict[str, int] = field(default_factory=dict, init=False)  # site → cycle eliminated
    _untrusted: set[str] = field(default_factory=set, init=False)
    _dropped: dict[str, str] = field(default_factory=dict, init=False)  # val scans out of the verification set → site
    _skill_cycle: int | None = field(default=None, init=False)  # the cycle the model first showed skill
    _scan_issues: dict[str, dict] = field(default_factory=dict, init=False)  # subject → its last per-scan check
    log: list[dict] = field(default_factory=list, init=False)  # the decisions: site checks, verifications
    scans_judged: Counter[int] = field(default_factory=Counter, init=False)  # cycle → per-scan checks (this process)

    # ------------------------------------------------------------------ reading
    @property
    def flagged(self) -> dict[str, dict]:
        """Flagged scans (subject → subject, site, cycle_flagged, due), in the order they were flagged."""
        return {e.subject: e.flag_row() for e in self.ledger.with_status(ScanStatus.FLAGGED)}

    @property
    def eliminated(self) -> dict[str, dict]:
        """Eliminated scans (subject → subject, site, cycle_flagged, cycle_eliminated, stage), in order."""
        return {e.subject: e.elimination_row() for e in self.ledger.with_status(ScanStatus.ELIMINATED)}

    @property
    def fresh(self) -> frozenset[str]:
        """Training scans the model has never trained on (out of sample: the per-scan checks judge them)."""
        return self.ledger.untrained()

    @property
    def flagged_sites(self) -> Mapping[str, dict]:
        return MappingProxyType(self._flagged_sites)

    @property
    def eliminated_sites(self) -> Mapping[str, int]:
        return MappingProxyType(self._eliminated_sites)

    @property
    def untrusted(self) -> frozenset[str]:
        return frozenset(self._untrusted)

    @property
    def skill_cycle(self) -> int | None:
        """The cycle the model first showed skill: decisions start there."""
        return self._skill_cycle

    @property
    def scan_issues(self) -> Mapping[str, dict]:
        """Subject → its last per-scan check (a row of ``scan_issues.csv``)."""
        return MappingProxyType(self._scan_issues)

    @property
    def events(self) -> list[dict]:
        """The event log of this process (``qc_events.csv``, :data:`~fedqc.qc.ledger.EVENT_COLUMNS`)."""
        return self.ledger.events

    @property
    def flags(self) -> list[dict]:
        return self.ledger.flags()

    @property
    def revisits(self) -> list[dict]:
        return self.ledger.revisits()

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
        mask = ~sites.isin(self._untrusted | set(self._flagged_sites)).to_numpy()
        if self.leave_site_out:
            mask &= (sites != site).to_numpy()
        return mask

    def skill(self) -> float:
        """The verification scans' median within-site AUROC under the baseline (:func:`~fedqc.qc.stats.skill`);
        NaN before the first baseline."""
        if self.baseline is None:
            return math.nan
        b = self.baseline[self.verification_set("")]
        return skill(b["label"].to_numpy(), b["score"].to_numpy(), b["site"].to_numpy())

    def rebase(self, scores: pd.DataFrame) -> None:
        """Make ``scores`` (subject, score), the adopted model's, the baseline of the scans they cover."""
        for column in ("score", *(c for c in self.baseline.columns if c.startswith("score_") and c in scores)):
            cand = scores.set_index("subject")[column].reindex(self.baseline.index)
            seen = cand.notna()
            self.baseline.loc[seen, column] = cand[seen]

    def drop_verification(self, subjects: list[str], cycle: int) -> None:
        """Remove scans from the verification set (e.g. val scans that failed the audit)."""
        gone = [s for s in subjects if s in self.baseline.index]
        sites = self.baseline.loc[gone, "site"].to_dict()
        self._dropped.update(sites)
        for subject, site in sites.items():
            self.ledger.record(Event.DROPPED, cycle, subject=subject, site=site)
        self.baseline = self.baseline.drop(index=gone)

    # ------------------------------------------------------------------ decisions
    def verify(self, criterion: UpdateCriterion, scores: pd.DataFrame, *, cycle: int, site: str, scope: str,
               subjects: list[str], n_trained: int, seconds: float = 0.0) -> bool:
        """Judge a candidate from its ``scores`` (subject, score) on the verification scans; rebase if accepted.

        A candidate that scores any verification scan with a non-finite value is rejected: a model that breaks
        on the verification scans is harmful, not unjudgeable (a ×1,000 update gave NaN scores, and before this
        rule passed as "no verification scans"). Scans no site scored (a site that failed) are left out.
        """
        cand = scores.set_index("subject")["score"].reindex(self.baseline.index)
        broken = int((~np.isfinite(scores["score"].to_numpy(dtype=float))).sum())
        mask = self.verification_set(site) & np.isfinite(cand.to_numpy(dtype=float))
        labels = self.baseline["label"].to_numpy()[mask]
        base, new = self.baseline["score"].to_numpy()[mask], cand.to_numpy()[mask]
        if broken:
            accepted, stats = False, {"stat": math.nan, "limit": math.nan,
                                      "note": f"{broken} of {len(scores)} verification scores not finite"}
        elif mask.any():
            accepted, stats = criterion.decide(labels, base, new, n_trained)
        else:
            accepted, stats = True, {"stat": math.nan, "limit": math.nan}
        self.log.append({"cycle": cycle, "site": site, "scope": scope, "subject": _one(subjects),
                         "n_trained": n_trained, "criterion": criterion.name, **stats, "accepted": accepted,
                         "judged": bool(mask.any()) or bool(broken),
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
        # evidence: the ranking test had two classes to rank, the label-issue test scans on both sides, or a failure
        judged = not accepted or not math.isnan(stats.get("p_value", math.nan)) \
            or (label_issues is not None and label_issues[1] > 0 and label_issues[3] > 0)
        self.log.append({"cycle": cycle, "site": site, "scope": "site", "subject": "", "n_trained": len(rest),
                         "criterion": check.name, **stats, "accepted": accepted, "judged": judged,
                         **confusion(rest["label"].to_numpy(), rest["score"].to_numpy()),
                         "n_verify": int(mask.sum()), "n_issues": int(issues.sum()), "seconds": seconds})
        flag = self._flagged_sites.pop(site, None)
        if flag is not None:
            self.ledger.record(Event.SITE_REVISITED, cycle, site=site, stage="site", cycle_flagged=flag["cycle_flagged"],
                               due=flag["due"], accepted=accepted)
            if not accepted:
                self.eliminate_site(site, cycle, subjects, cycle_flagged=flag["cycle_flagged"])
        elif not accepted:
            self._flagged_sites[site] = {"subject": "", "site": site, "cycle_flagged": cycle,
                                         "due": cycle + self.revisit_after}
            self.ledger.record(Event.SITE_FLAGGED, cycle, site=site, stage="site", cycle_flagged=cycle,
                               due=cycle + self.revisit_after)
            for s in scores["subject"]:  # flagged with their site (flagged.csv lists them)
                self.ledger.record(Event.FLAGGED, cycle, subject=s, site=site, stage="site", cycle_flagged=cycle,
                                   due=cycle + self.revisit_after)
        return accepted

    def reject(self, *, cycle: int, site: str, scope: str, subjects: list[str], reason: str) -> None:
        """Log an update rejected before verification (an invalid reply)."""
        self.log.append({"cycle": cycle, "site": site, "scope": scope, "subject": _one(subjects), "n_trained": 0,
                         "criterion": "invalid update", "accepted": False, "note": reason})

    # ------------------------------------------------------------------ what the model has seen
    def set_untrained(self, train_ids: dict[str, list[str]]) -> None:
        """The training scans (per site) the start model has never trained on: out of sample, the per-scan checks
        judge them."""
        self.ledger.set_untrained(train_ids)

    def trained(self, subjects: list[str], site: str, cycle: int) -> None:
        """An adopted update at ``site`` trained ``subjects``: the model has fitted them."""
        for s in subjects:
            entry = self.ledger.get(s)
            if entry is not None and entry.untrained:
                entry.untrained = False
                self.ledger.record(Event.TRAINED, cycle, subject=s, site=site)

    def reach_skill(self, cycle: int) -> None:
        """The model shows skill at ``cycle``: decisions start there (the first such cycle is kept)."""
        if self._skill_cycle is None:
            self._skill_cycle = cycle
            self.ledger.record(Event.SKILL, cycle)

    def record_scan_check(self, row: dict) -> None:
        """A scan's per-scan check and its decision (a row of ``scan_issues.csv``); replaces its earlier one."""
        self._scan_issues[row["subject"]] = row
        self.scans_judged[row["cycle"]] += 1

    # ------------------------------------------------------------------ scans and sites
    def site_due(self, site: str, cycle: int) -> bool:
        """Whether ``site`` trains at ``cycle``: not eliminated, and not flagged unless its revisit is due."""
        if site in self._eliminated_sites:
            return False
        return site not in self._flagged_sites or self._flagged_sites[site]["due"] <= cycle

    def flag(self, subject: str, site: str, cycle: int, stage: str = "verification") -> None:
        """Flag a scan (``stage``: what found it) until ``cycle + R``."""
        due = cycle + self.revisit_after
        self.ledger.move(self.ledger.entry(subject, site), ScanStatus.FLAGGED, site=site, cycle_flagged=cycle, due=due)
        self.ledger.record(Event.FLAGGED, cycle, subject=subject, site=site, stage=stage, cycle_flagged=cycle, due=due)

    def due(self, site: str, cycle: int) -> list[str]:
        """Flagged scans of ``site`` whose revisit is due at ``cycle``."""
        return sorted(e.subject for e in self.ledger.with_status(ScanStatus.FLAGGED) if e.site == site and e.due <= cycle)

    def revisit(self, subject: str, cycle: int, accepted: bool, stage: str = "verification") -> None:
        """Record a revisit: accepted → back in the pool; rejected → eliminated (at ``stage``)."""
        entry = self.ledger.get(subject)
        if entry is None or entry.status is not ScanStatus.FLAGGED:
            raise KeyError(subject)
        self.ledger.record(Event.REVISITED, cycle, subject=subject, site=entry.site, stage=stage,
                           cycle_flagged=entry.cycle_flagged, due=entry.due, accepted=accepted)
        if accepted:
            self.ledger.move(entry, ScanStatus.POOL, due=None)
        else:
            self.eliminate(subject, entry.site, cycle, stage, cycle_flagged=entry.cycle_flagged)

    def eliminate(self, subject: str, site: str, cycle: int, stage: str, *, cycle_flagged: int | None = None) -> None:
        """Eliminate a scan for the rest of training; a site losing enough scans becomes untrusted."""
        cycle_flagged = cycle if cycle_flagged is None else cycle_flagged
        self.ledger.move(self.ledger.entry(subject, site), ScanStatus.ELIMINATED, site=site, stage=stage,
                         cycle_flagged=cycle_flagged, due=None, cycle_eliminated=cycle)
        self.ledger.record(Event.ELIMINATED, cycle, subject=subject, site=site, stage=stage, cycle_flagged=cycle_flagged)
        n_out = sum(1 for e in self.ledger.with_status(ScanStatus.ELIMINATED) if e.site == site)
        if site not in self._untrusted and n_out >= self.untrusted_fraction * self.train_counts.get(site, math.inf):
            self._untrusted.add(site)
            self.ledger.record(Event.SITE_UNTRUSTED, cycle, site=site, stage=stage)

    def eliminate_site(self, site: str, cycle: int, subjects: list[str], *, cycle_flagged: int) -> None:
        """Eliminate a site: its training scans (stage ``site``) and its val scans leave QC for good."""
        self._eliminated_sites[site] = cycle
        self.ledger.record(Event.SITE_ELIMINATED, cycle, site=site, stage="site", cycle_flagged=cycle_flagged)
        if site not in self._untrusted:
            self._untrusted.add(site)
            self.ledger.record(Event.SITE_UNTRUSTED, cycle, site=site, stage="site")
        for s in subjects:
            entry = self.ledger.get(s)
            if entry is None or entry.status is not ScanStatus.ELIMINATED:
                flagged = entry is not None and entry.status is ScanStatus.FLAGGED
                self.eliminate(s, site, cycle, "site", cycle_flagged=entry.cycle_flagged if flagged else cycle_flagged)

    def trusted_verification(self) -> dict[str, tuple[str, ...]]:
        """The sites whose verification scans judge updates (none untrusted or flagged), each with its scans taken
        out of the verification set."""
        sites = set(self.baseline["site"]) - self._untrusted - set(self._flagged_sites)
        return {s: tuple(sorted(d for d, site in self._dropped.items() if site == s)) for s in sorted(sites)}

    def excluded(self, site: str) -> set[str]:
        """Scans of ``site`` kept out of training: flagged (until revisit) or eliminated."""
        return {s for s, e in self.ledger.entries.items() if e.site == site and e.status is not ScanStatus.POOL}

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self) -> dict:
        """Everything needed to resume, as plain data (the layout of fedqc 0.1's checkpoints)."""
        return {"baseline": self.baseline.reset_index().to_dict("list"), "flagged": self.flagged,
                "eliminated": self.eliminated, "flagged_sites": dict(self._flagged_sites),
                "eliminated_sites": dict(self._eliminated_sites), "untrusted": sorted(self._untrusted),
                "dropped": dict(self._dropped), "fresh": sorted(self.fresh), "skill_cycle": self._skill_cycle,
                "scan_issues": dict(self._scan_issues)}

    def restore(self, snap: dict) -> None:
        """The state of :meth:`snapshot`; the event log starts empty (``qc_events.csv`` holds the earlier events)."""
        self.baseline = pd.DataFrame(snap["baseline"]).set_index("subject")
        self.ledger = ScanLedger()
        self.ledger.set_untrained({"": snap.get("fresh", ())})  # the site is set when the scan is flagged
        for row in snap["flagged"].values():
            self.ledger.move(self.ledger.entry(row["subject"], row["site"]), ScanStatus.FLAGGED, site=row["site"],
                             cycle_flagged=row["cycle_flagged"], due=row["due"])
        for row in snap["eliminated"].values():
            self.ledger.move(self.ledger.entry(row["subject"], row["site"]), ScanStatus.ELIMINATED, site=row["site"],
                             stage=row["stage"], cycle_flagged=row["cycle_flagged"],
                             cycle_eliminated=row["cycle_eliminated"])
        self._flagged_sites, self._eliminated_sites = dict(snap["flagged_sites"]), dict(snap["eliminated_sites"])
        self._untrusted, self._dropped = set(snap["untrusted"]), dict(snap.get("dropped", {}))
        self._skill_cycle = snap.get("skill_cycle")
        self._scan_issues = dict(snap.get("scan_issues", {}))
