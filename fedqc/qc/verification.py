"""Update verification: judge each update *after* it trains, on the verification scans.

The candidate model scores every site's ``val`` scans (a federated evaluation, never
the test split); the criterion compares those scores with the last accepted model's
and the policy records the decision. Rollback is free: the travelling state is a dict
of arrays, so a rejected update is simply not adopted, model and optimizer alike.
"""

from __future__ import annotations

import dataclasses
import time

import pandas as pd

from fedqc.protocol import EvalReply, EvalRequest, ScanProblem, State, TrainReply
from fedqc.qc.criteria import UpdateCriterion
from fedqc.qc.policy import QCPolicy
from fedqc.strategies.cycles import HopStatus
from fedqc.transport import Transport


class VerificationScans:
    """The sites' ``val`` scans (a seeded share ``fraction`` of each), scored through the transport.

    Scans a site could not score, and sites that could not answer, are collected for
    ``errors.csv`` (stage ``verification``) until :meth:`take_problems`.
    """

    def __init__(self, transport: Transport, sites: list[str], *, fraction: float, seed: int):
        self.transport, self.sites = transport, sites
        self.request = EvalRequest("val", fraction=fraction, sample_seed=seed)
        self.problems: dict[tuple[str, str], str] = {}  # (subject, site) → reason

    def evaluate(self, state: State, **fields) -> dict[str, EvalReply]:
        """Every verification site's reply to the verification request (plus ``fields``, e.g. ``moments``)."""
        replies = self.transport.evaluate(self.sites, state, dataclasses.replace(self.request, **fields))
        for site, r in replies.items():
            self.note(site, r.skipped, r.error)
        return replies

    def score(self, state: State) -> pd.DataFrame:
        return pd.concat([r.scores for r in self.evaluate(state).values()], ignore_index=True)

    def note(self, site: str, skipped: list[ScanProblem], error: str | None = None) -> None:
        self.problems.update({(p.subject, site): p.reason for p in skipped})
        if error:
            self.problems[("", site)] = error

    def take_problems(self) -> list[ScanProblem]:
        out = [ScanProblem(s, f"{reason} (site {site})", "verification") for (s, site), reason in self.problems.items()]
        self.problems.clear()
        return out


class UpdateVerification:
    """The gate of update criteria: every site trains; every update is verified before it is adopted.

    The baseline must hold the scores of the model a visit starts from. Along the
    travelling model that is the last adopted update; when a visit starts from another
    model — the round's model of an averaging strategy, the model calibration changed at
    the end of a cycle, a resumed run — the verification scans are rescored with it first.
    """

    def __init__(self, criterion: UpdateCriterion, policy: QCPolicy, scans: VerificationScans):
        self.criterion, self.policy, self.scans = criterion, policy, scans
        self.verifications, self.seconds = 0, 0.0
        self.base: State | None = None  # the model whose scores the baseline holds (None: unknown)

    def screen(self, state: State, cycle: int) -> None:
        """Nothing is checked before training; the baseline is ``state``'s."""
        self.base = state

    def resumed(self) -> None:
        self.base = None

    def check(self, site: str, state: State, cycle: int) -> HopStatus | None:
        if state is not self.base:
            self.policy.rebase(self.scans.score(state))
            self.base = state
        return None

    def judge(self, reply: TrainReply, *, cycle: int, site: str, scope: str, subjects: list[str],
              started: float) -> bool:
        scores = self.scans.score(reply.state)
        seconds = time.perf_counter() - started
        ok = self.policy.verify(self.criterion, scores, cycle=cycle, site=site, scope=scope, subjects=subjects,
                                n_trained=reply.n_scans, seconds=seconds)
        self.verifications += 1
        self.seconds += seconds
        if ok:
            self.base = reply.state
        return ok
