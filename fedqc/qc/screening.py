"""Site screening: check a site's data *before* it trains, and adopt the updates of sites that pass.

The site scores the scans it would train with the last accepted model; the site check
(:class:`~fedqc.qc.criteria.SiteAUROCCheck`) compares how well that model separates
the site's labels with how well it separates the verification scans' labels within
their sites. The verification scans are rescored whenever an adopted update changed
the model, so both sides are always the same model's. Before a QC arm trains anything,
every site is screened until no further site fails, so whether the model ever learns a
site does not depend on the order sites come in.
"""

from __future__ import annotations

import time

from fedqc.errors import SiteError
from fedqc.protocol import EvalRequest, State, TrainReply
from fedqc.qc.criteria import SiteAUROCCheck
from fedqc.qc.policy import QCPolicy
from fedqc.qc.verification import VerificationScans
from fedqc.strategies.travelling import HopStatus
from fedqc.transport import Transport


class SiteScreening:
    """The gate of site checks: a site trains only after its data passed; its updates are adopted unverified."""

    def __init__(self, check: SiteAUROCCheck, policy: QCPolicy, scans: VerificationScans, transport: Transport,
                 train_ids: dict[str, list[str]]):
        self.site_check, self.policy, self.scans = check, policy, scans
        self.transport, self.train_ids = transport, train_ids
        self.stale = False  # the model changed since the verification scans were scored
        self.verifications, self.seconds = 0, 0.0

    def screen(self, state: State, cycle: int) -> None:
        """Check every site, repeating until no further site fails.

        A flagged site's val scans leave the verification set, which can expose another
        harmful site they had masked. A site that cannot be checked now is recorded and
        checked at its visit instead.
        """
        def passes(site: str) -> bool:
            try:
                return self.check_data(site, state, cycle)
            except SiteError as exc:
                self.scans.note(site, [], f"site check at screening failed: {exc}")
                return True

        while True:
            sites = [s for s in sorted(self.train_ids) if s not in self.policy.flagged_sites]
            if all([passes(site) for site in sites]):  # a list: every site checked each round
                return

    def resumed(self) -> None:
        self.stale = True  # whether the last visit changed the model is not saved; rescoring is exact

    def check(self, site: str, state: State, cycle: int) -> HopStatus | None:
        """None when ``site`` may train now; else why it sits this visit out."""
        if site in self.policy.eliminated_sites:
            return HopStatus.SITE_ELIMINATED
        if not self.policy.site_due(site, cycle):
            return HopStatus.SITE_FLAGGED
        return None if self.check_data(site, state, cycle) else HopStatus.SITE_CHECK_FAILED

    def check_data(self, site: str, state: State, cycle: int) -> bool:
        """The site check on the scans this visit could train (due revisits included)."""
        t = time.perf_counter()
        if self.stale:
            self.policy.rebase(self.scans.score(state))
            self.stale = False
        exclude = sorted(self.policy.excluded(site) - set(self.policy.due(site, cycle)))
        reply = self.transport.evaluate([site], state, EvalRequest("train", exclude=tuple(exclude)))[site]
        if reply.error:
            raise SiteError(reply.error)
        self.scans.note(site, reply.skipped)
        seconds = time.perf_counter() - t
        ok = self.policy.check_site(self.site_check, reply.scores, cycle=cycle, site=site,
                                    subjects=self.train_ids.get(site, []), seconds=seconds)
        self.verifications += 1
        self.seconds += seconds
        return ok

    def judge(self, reply: TrainReply, *, cycle: int, site: str, scope: str, subjects: list[str],
              started: float) -> bool:
        """The site check has judged this visit's data: adopt."""
        self.stale = True
        return True
