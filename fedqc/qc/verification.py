"""Update verification: judge each update *after* it trains, on the verification scans.

The candidate model scores every site's ``val`` scans (a federated evaluation, never
the test split); the criterion compares those scores with the last accepted model's
and the policy records the decision. Rollback is free: the travelling state is a dict
of arrays, so a rejected update is simply not adopted, model and optimizer alike.
"""

from __future__ import annotations

import time

from fedqc.protocol import State
from fedqc.qc.criteria import UpdateCriterion
from fedqc.qc.gate import Gate, QCStatus, Update, VerificationScans
from fedqc.qc.policy import QCPolicy


class UpdateVerification(Gate):
    """The gate of update criteria: every site trains; every update is verified before it is adopted.

    The baseline must hold the scores of the model a visit starts from. Along the
    travelling model that is the last adopted update; when a visit starts from another
    model — the round's model of an averaging strategy, the model calibration changed at
    the end of a cycle, a resumed run — the verification scans are rescored with it first.
    """

    def __init__(self, criterion: UpdateCriterion, policy: QCPolicy, scans: VerificationScans):
        super().__init__(policy, scans)
        self.criterion = criterion
        self.base: State | None = None  # the model whose scores the baseline holds (None: unknown)

    def screen(self, state: State, cycle: int) -> None:
        """Nothing is checked before training; the baseline is ``state``'s."""
        self.base = state

    def resumed(self) -> None:
        self.base = None

    def check(self, site: str, state: State, cycle: int) -> QCStatus | None:
        """Every site trains; the baseline becomes ``state``'s first if it holds another model's scores."""
        if state is not self.base:
            self.policy.rebase(self.verification_scores(state))
            self.base = state
        return None

    def judge(self, update: Update) -> bool:
        """Score the candidate on the verification scans; the criterion decides against the baseline."""
        scores = self.verification_scores(update.reply.state)
        ok = self.policy.verify(self.criterion, scores, cycle=update.cycle, site=update.site, scope=update.scope,
                                subjects=list(update.subjects), n_trained=update.reply.n_scans,
                                seconds=time.perf_counter() - update.started)
        self.verifications += 1
        if ok:
            self.base = update.reply.state
        return ok
