"""The QC gate: the one interface through which a QC arm (:class:`~fedqc.qc.arm.QCArm`) asks QC about a visit.

A gate **receives** the model before the arm's first cycle (:meth:`Gate.screen`), each
visit's site and the state it would train from (:meth:`Gate.check`), and each candidate
update a visit produces (:meth:`Gate.judge`, an :class:`Update`). It **decides** whether
the site may train now (``None``, or the :class:`QCStatus` of why not) and whether an
update is adopted. It **counts** its decisions (:attr:`Gate.verifications`) and its cost
(:attr:`Gate.counts`: verification rounds, site scorings, scans scored — the ``cost`` of
``qc_summary.json``). What it decides it records in the :class:`~fedqc.qc.policy.QCPolicy`.

Two gates implement it: :class:`~fedqc.qc.screening.SiteScreening` (criterion ``auroc``)
decides before a site trains and adopts what it then trains;
:class:`~fedqc.qc.verification.UpdateVerification` (the update criteria) lets every site
train and judges every update.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from enum import Enum

import pandas as pd

from fedqc.protocol import EvalReply, EvalRequest, ScanProblem, State, TrainReply, scores_table
from fedqc.qc.policy import QCPolicy
from fedqc.transport import Transport


class QCStatus(str, Enum):
    """Why a QC arm's visit trained nothing: the hop statuses QC adds to the strategies' own
    (:class:`~fedqc.strategies.cycles.HopStatus`); ``train_log.csv`` holds their values."""

    SITE_FLAGGED = "qc: site flagged"
    SITE_CHECK_FAILED = "qc: site check failed"
    SITE_ELIMINATED = "qc: site eliminated"


@dataclass(frozen=True)
class Update:
    """A candidate update for a gate to judge: the site's reply, and where, when and on what it trained.

    ``scope`` names the attempt (a whole visit, a batch of the search, a revisit of one scan);
    ``started`` is the ``time.perf_counter()`` at which the attempt began: its verification
    time counts from there.
    """

    reply: TrainReply
    cycle: int
    site: str
    scope: str
    subjects: tuple[str, ...]
    started: float


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
        return scores_table(self.evaluate(state).values())

    def note(self, site: str, skipped: list[ScanProblem], error: str | None = None) -> None:
        self.problems.update({(p.subject, site): p.reason for p in skipped})
        if error:
            self.problems[("", site)] = error

    def take_problems(self) -> list[ScanProblem]:
        out = [ScanProblem(s, f"{reason} (site {site})", "verification") for (s, site), reason in self.problems.items()]
        self.problems.clear()
        return out


class Gate(ABC):
    """What every QC gate receives, decides and counts (module docstring)."""

    def __init__(self, policy: QCPolicy, scans: VerificationScans):
        self.policy, self.scans = policy, scans
        self.verifications = 0  # decisions made by this process (site checks, update verifications)
        self.counts: Counter[str] = Counter()  # cost counters: verification_rounds, site_scorings, scans_scored

    @property
    def deciding(self) -> bool:
        """Whether the gate makes decisions now (a gate that waits for the model's skill does not before it)."""
        return True

    @abstractmethod
    def screen(self, state: State, cycle: int) -> None:
        """Before the arm's first cycle (not on resume): whatever the gate checks before any site trains."""

    @abstractmethod
    def resumed(self) -> None:
        """The arm resumed from a checkpoint: forget what the gate knew of the model it judged."""

    @abstractmethod
    def check(self, site: str, state: State, cycle: int) -> QCStatus | None:
        """``None`` when ``site`` may train from ``state`` now; else why it sits this visit out."""

    @abstractmethod
    def judge(self, update: Update) -> bool:
        """Whether ``update`` is adopted (recorded in the policy)."""

    def score_verification(self, state: State, **fields) -> dict[str, EvalReply]:
        """The verification sites' replies for ``state`` (plus request ``fields``), counted as one round."""
        replies = self.scans.evaluate(state, **fields)
        self.counts["verification_rounds"] += 1
        self.counts["scans_scored"] += sum(len(r.scores) for r in replies.values())
        return replies

    def verification_scores(self, state: State) -> pd.DataFrame:
        """:meth:`score_verification`'s scores as one table."""
        return scores_table(self.score_verification(state).values())
