"""Site screening: check a site's data *before* it trains, and adopt the updates of sites that pass.

At the start of every cycle the verification scans are scored (:meth:`SiteScreening.refresh`):
their scores are the baseline of the site check and the skill gate. Decisions wait until
the model shows skill on them (:func:`~fedqc.qc.stats.skill` ≥ ``qc.skill``). Then:

- **when skill is first reached**, every site is screened before the model trains
  anything more: site checks repeated until no further site fails (flagging a site
  takes its val scans out, which can expose another), then the **per-scan checks**
  (:mod:`fedqc.qc.scans`) on every scan the model has not trained on, all at once — so
  whether the model ever learns a site or a scan does not depend on the order sites come in;
- **at the start of each later cycle**, the scans that wait for a judgement — revisits
  that are due, and never-judged scans of sites that train this cycle (e.g. a site back
  from a flag) — are judged at once, with the model the cycle starts with and a feature
  reference scored from it (only in such cycles: the reference costs a second round);
- **at every visit** the site scores the scans it would train with the current model,
  and the **site check** (:class:`~fedqc.qc.criteria.SiteAUROCCheck`) compares how well
  that model separates the site's labels with the verification scans'. A failure
  against a baseline the model has moved away from is re-decided on freshly rescored
  verification scans: they are rescored only when a decision needs them.

A flagged scan sits out until its revisit; one that still has an issue then is
eliminated, one without returns to the pool.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from fedqc.errors import SiteError
from fedqc.protocol import EvalReply, EvalRequest, State, scores_table
from fedqc.qc.criteria import SiteAUROCCheck
from fedqc.qc.gate import Gate, QCStatus, Update, VerificationScans
from fedqc.qc.policy import QCPolicy, site_decision
from fedqc.qc.scans import SCAN_ISSUES, FeatureReference, OODLimit, ScanInput, find_scan_issues
from fedqc.transport import Transport


class SiteScreening(Gate):
    """The gate of site checks and per-scan checks (``checks``: names in :data:`~fedqc.qc.scans.SCAN_ISSUES`); a
    site's updates are adopted unverified."""

    def __init__(self, check: SiteAUROCCheck, policy: QCPolicy, scans: VerificationScans, transport: Transport,
                 train_ids: dict[str, list[str]], *, checks: tuple[str, ...] = (), skill: float = 0.7,
                 ood_limit: float = 3.5):
        super().__init__(policy, scans)
        self.site_check = check
        self.transport, self.train_ids = transport, train_ids
        self.checks, self.skill, self.ood_limit = set(checks), skill, ood_limit
        self.reference: FeatureReference | None = None
        self.limit: OODLimit | None = None
        self.cycle: int | None = None  # the cycle whose verification scores the baseline holds
        self.stale = False  # the model changed since the verification scans were scored
        self.reference_current = False  # the feature reference is the current model's
        self.reference_issues: tuple[int, int] | None = None  # verification scans' label issues, judged (last check)

    # ------------------------------------------------------------------ verification scans
    def refresh(self, state: State, cycle: int, *, features: bool) -> None:
        """Score the verification scans with ``state``: the baseline, and with ``features`` the feature reference
        and its limit (two rounds: the pooled statistics first, then the verification scans' own distances)."""
        features = features and "ood" in self.checks
        replies = self._rebase_now(state, moments=features)
        self.cycle = cycle
        self.reference_current = features or "ood" not in self.checks
        if features:
            judges = set(self.policy.baseline.loc[self.policy.verification_set(""), "site"])
            moments = [r.moments for s, r in replies.items() if s in judges and r.moments is not None]
            if sum(float(np.atleast_1d(m["feat_n"])[0]) for m in moments) < 2:  # every judge flagged: no reference,
                self.reference, self.limit = None, None                           # no feature-distance check
                return
            self.reference = FeatureReference.from_moments(moments)
            null = self.score_verification(state, **self.reference.request())
            ood = pd.concat([r.scores for s, r in null.items() if s in judges], ignore_index=True)["ood"]
            self.limit = OODLimit.from_null(ood.to_numpy(), self.ood_limit)

    def _rebase_now(self, state: State, **fields) -> dict[str, EvalReply]:
        """Rescore the verification scans with ``state`` and make their scores the baseline (the feature reference
        is kept); the replies."""
        replies = self.score_verification(state, **fields)
        self.policy.rebase(scores_table(replies.values()))
        self.stale = False
        return replies

    def _skilled(self, cycle: int) -> bool:
        if self.policy.skill_cycle is None and self.skill > 0:
            if not self.policy.skill() >= self.skill:
                return False
        self.policy.reach_skill(cycle)
        return True

    # ------------------------------------------------------------------ the gate
    @property
    def deciding(self) -> bool:
        return self.policy.skill_cycle is not None

    def screen(self, state: State, cycle: int) -> None:
        """Before the first cycle of the arm: score the verification scans; screen every site if the model has skill."""
        self.refresh(state, cycle, features=True)
        if self._skilled(cycle):
            self._screen_all(state, cycle)

    def resumed(self) -> None:
        self.cycle = None  # rescored at the next visit: exact, whatever the last visit changed

    def check(self, site: str, state: State, cycle: int) -> QCStatus | None:
        """None when ``site`` may train now; else why it sits this visit out."""
        if cycle != self.cycle:
            self._begin_cycle(state, cycle)
        if self.policy.skill_cycle is None:
            return None  # no decision before the model shows skill
        if site in self.policy.eliminated_sites:
            return QCStatus.SITE_ELIMINATED
        if not self.policy.site_due(site, cycle):
            return QCStatus.SITE_FLAGGED
        reply = self._score_site(site, state, cycle, features=False)
        return None if self._site_passes(site, reply, None, state, cycle) else QCStatus.SITE_CHECK_FAILED

    def _begin_cycle(self, state: State, cycle: int) -> None:
        """Before the cycle's first visit: rescore the verification scans; when the model first shows skill,
        screen every site; later, judge the scans that wait for it (due revisits, and scans never judged of
        sites that train this cycle) all at once, with the model the cycle starts with."""
        skilled_before = self.policy.skill_cycle is not None
        waiting = self._waiting(cycle) if skilled_before and self.checks else {}
        self.refresh(state, cycle, features=bool(waiting))
        if not self._skilled(cycle):
            return
        if not skilled_before:
            self._screen_all(state, cycle)
        elif waiting:
            replies = {}
            for site in waiting:  # all the site's scans, for its score shift; only the waiting ones are judged
                try:
                    replies[site] = self._score_site(site, state, cycle, features=True)
                except SiteError as exc:  # judged at a later cycle
                    self.scans.note(site, [], f"per-scan check failed: {exc}")
            judged = {s for subjects in waiting.values() for s in subjects}
            self._decide_scans(self._scan_issues(replies, state, only=judged), cycle, stage="screening")

    def _waiting(self, cycle: int) -> dict[str, list[str]]:
        """Per site that trains at ``cycle``: its scans due for a revisit, and its never-judged untrained scans."""
        out, untrained = {}, self.policy.fresh
        for site in sorted(self.train_ids):
            if site in self.policy.eliminated_sites or not self.policy.site_due(site, cycle):
                continue
            due = set(self.policy.due(site, cycle))
            subjects = [s for s in self._to_score(site, cycle)
                        if s in due or (s in untrained and s not in self.policy.scan_issues)]
            if subjects:
                out[site] = subjects
        return out

    def judge(self, update: Update) -> bool:
        """The checks judged the site's data before it trained: adopt; the verification scores are now stale."""
        self.stale, self.reference_current = True, False
        return True

    # ------------------------------------------------------------------ steps
    def _screen_all(self, state: State, cycle: int) -> None:
        """Site checks on every site until no further site fails, then the per-scan decisions on all of them.

        A flagged site's val scans leave the verification set, which can expose another
        harmful site they had masked; the per-scan issues are recomputed each round on
        the sites still in.
        """
        if self.stale or not self.reference_current:
            self.refresh(state, cycle, features=True)
        replies: dict[str, EvalReply] = {}
        for site in sorted(self.train_ids):
            if site in self.policy.flagged_sites:
                continue
            try:
                replies[site] = self._score_site(site, state, cycle, features=True)
            except SiteError as exc:  # checked at its visit instead
                self.scans.note(site, [], f"site check at screening failed: {exc}")
        while True:
            live = {s: r for s, r in replies.items() if s not in self.policy.flagged_sites}
            scans = self._scan_issues(live, state)
            passed = [self._site_passes(s, r, scans, state, cycle) for s, r in live.items()]  # every site, each round
            if all(passed):
                break
        self._decide_scans(self._scan_issues(replies, state), cycle, stage="screening")  # flagged sites' scans too

    def _to_score(self, site: str, cycle: int) -> list[str]:
        """The scans this visit could train, due revisits included."""
        exclude = self.policy.excluded(site) - set(self.policy.due(site, cycle))
        return [s for s in self.train_ids.get(site, []) if s not in exclude]

    def _score_site(self, site: str, state: State, cycle: int, *, features: bool) -> EvalReply:
        """The site's scores on the scans this visit could train, due revisits included; with ``features``, also
        their feature distances to the current reference (for the per-scan checks)."""
        exclude = sorted(self.policy.excluded(site) - set(self.policy.due(site, cycle)))
        fields = self.reference.request() if features and self.reference is not None and "ood" in self.checks else {}
        reply = self.transport.evaluate([site], state, EvalRequest("train", exclude=tuple(exclude), **fields))[site]
        if reply.error:
            raise SiteError(reply.error)
        self.scans.note(site, reply.skipped)
        self.counts["site_scorings"] += 1
        self.counts["scans_scored"] += len(reply.scores)
        return reply

    def _site_passes(self, site: str, reply: EvalReply, scans: pd.DataFrame | None, state: State, cycle: int) -> bool:
        """The site check on the site's scans except those with per-scan issues in ``scans`` (:meth:`_scan_issues`),
        and on its share of label issues against the verification scans' (:meth:`QCPolicy.check_site`)."""
        t = time.perf_counter()
        s = reply.scores
        issues = s["subject"].isin(set(scans.loc[scans["issue"] != "", "subject"]) if scans is not None else ())
        label_test = None
        if scans is not None and self.reference_issues is not None:
            mine = scans[(scans["site"] == site) & scans["label_judged"]]
            label_test = (int(mine["is_label_issue"].sum()), len(mine), *self.reference_issues)
        if self.stale:  # a failure against an outdated baseline is re-decided on the current model's
            ok, _ = site_decision(self.site_check, self.policy.baseline[self.policy.verification_set(site)],
                                  s[~issues.to_numpy()])
            if not ok:
                self._rebase_now(state)
        ok = self.policy.check_site(self.site_check, s, cycle=cycle, site=site, subjects=self.train_ids.get(site, []),
                                    seconds=time.perf_counter() - t, issues=issues, label_issues=label_test)
        self.verifications += 1
        return ok

    def _scan_issues(self, replies: dict[str, EvalReply], state: State, only: set[str] | None = None) -> pd.DataFrame:
        """Per scored scan the model has not trained on (the others it has fitted: nothing to judge), or only
        those of them in ``only``: every per-scan check's columns (:func:`~fedqc.qc.scans.find_scan_issues`) and
        ``issue`` (the checks that found one, joined by ``+``). Sets :attr:`reference_issues`: the verification
        scans' label issues and how many were judged (None unless ``labels`` ran).

        Each site's shift is estimated from all its scored scans and its verification scans,
        the ones the model has fitted included: they show the scanner as well.
        """
        every = scores_table(replies.values())
        judge = self.policy.fresh if only is None else self.policy.fresh & only
        scored = every[every["subject"].isin(judge)].reset_index(drop=True) if not every.empty else every
        self.reference_issues = None
        if scored.empty:
            return pd.DataFrame(columns=["subject", "site", *SCAN_ISSUES.columns(), "label_judged", "issue"])
        if self.stale and any(SCAN_ISSUES[c].needs_baseline for c in self.checks if c in SCAN_ISSUES):
            self._rebase_now(state)
        data = ScanInput(scored, every, self.policy.baseline[self.policy.verification_set("")], self.limit)
        table, summaries = find_scan_issues(data, self.checks)
        self.reference_issues = summaries.get("labels", {}).get("reference_issues")
        return table

    def _decide_scans(self, scans: pd.DataFrame, cycle: int, *, stage: str) -> None:
        """Flag scans with new issues; a due revisit with an issue is eliminated, without one it returns to the pool."""
        scans = scans[~scans["site"].isin(self.policy.eliminated_sites)]  # a flagged site's scans are judged too:
        due = {s for site in set(scans["site"]) for s in self.policy.due(site, cycle)}  # their flags end with it
        for r in scans.itertuples(index=False):
            if r.subject in due:
                decision = "eliminated" if r.issue else "returned"
                self.policy.revisit(r.subject, cycle, not r.issue, stage=f"scan: {r.issue}" if r.issue else "scan")
            elif r.issue:
                decision = "flagged"
                self.policy.flag(r.subject, r.site, cycle, stage=f"scan: {r.issue}")
            else:
                decision = "kept"
            if r.subject in self.policy.scan_issues and decision == "kept":
                continue  # the table keeps a scan's first check (out of sample) and its decisions
            row = {"subject": r.subject, "site": r.site, "cycle": cycle, "stage": "revisit" if r.subject in due else stage}
            for check in SCAN_ISSUES.values():
                row |= {check.score_column(): float(getattr(r, check.score_column())),
                        check.flag_column(): bool(getattr(r, check.flag_column()))}
            self.policy.record_scan_check(row | {"decision": decision})
