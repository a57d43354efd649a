"""What every strategy shares: a visit's outcome, the visitors that train it, and the loop over cycles.

A *cycle* (a *round* of the averaging strategies) is one :data:`Round`: the strategy
decides which sites train from which model and how their results become the next model
(:mod:`fedqc.strategies.travelling`, :mod:`fedqc.strategies.averaging`); *how* a site
trains is the visitor's: plain training, or a QC arm's verified training
(:mod:`fedqc.qc.arm`). Then the loop calibrates the model, scores the final state —
verification scores for the threshold and the test split's scores, one message per site
(:func:`score_cycle`) — and hands the cycle to the caller, who commits it (logs, then the
checkpoint). The learning rate is ``lr × exp(-lr_decay · cycle)``; every random choice
inside a cycle derives from ``(seed, cycle, site)``, so a run resumed from any cycle ends
bit-identical. A site that fails costs its visit; training goes on without it.
"""

from __future__ import annotations

import math
import secrets
import time
import zlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Protocol

import numpy as np

from fedqc.config import TrainConfig
from fedqc.errors import SiteError
from fedqc.protocol import (
    CycleEvalRequest,
    EvalReply,
    EvalRequest,
    ScanProblem,
    State,
    TrainReply,
    TrainRequest,
)
from fedqc.strategies.defence import UpdateNormCheck, refusal
from fedqc.transport import Transport
from fedqc.transport.counting import CountingTransport, Meter


class HopStatus(str, Enum):
    """What became of a visit, as the strategies see it. A visitor may add outcomes of its own as another ``str``
    enum (QC's: :class:`fedqc.qc.gate.QCStatus`); a hop other than :attr:`OK` leaves the model as it was."""

    OK = "ok"
    REJECTED = "rejected"  # the site's reply was invalid: not adopted
    FAILED = "failed"  # the site raised or did not answer


@dataclass
class Hop:
    """The outcome of one visit: the state the model travels on with, and what happened."""

    state: State
    n_scans: int = 0
    loss: float = math.nan
    seconds: float = 0.0  # the site's own training time
    status: Enum = HopStatus.OK  # a HopStatus, or a visitor's own str enum; train_log.csv holds its value
    note: str = ""
    problems: list[ScanProblem] = field(default_factory=list)


@dataclass(frozen=True)
class Local:
    """What a round asks of a site's training: local epochs, or a number of local steps (batches, over as many
    epochs as they take; 0: whole epochs), FedProx's proximal weight (0: none), and whether the reply carries the
    optimizer's state (an averaging round starts every site with a fresh one: its replies need not)."""

    epochs: int = 1
    prox_mu: float = 0.0
    steps: int = 0
    optimizer_state: bool = True


ONE_EPOCH = Local()


class Visitor(Protocol):
    """How an arm trains a visit, and what it keeps between cycles."""

    def begin(self, state: State, first_cycle: int, checkpoint: dict | None, inherited: dict | None = None) -> None:
        """Called once before the first cycle; ``checkpoint`` is the resumed one, if any; ``inherited`` what the arm
        this one starts from kept at that cycle (its checkpoint's visitor part), if it starts from one: the
        defences' state goes on from it."""

    def visit(self, site: str, state: State, cycle: int, lr: float, local: Local = ONE_EPOCH) -> Hop:
        """Train ``state`` at ``site`` as ``local`` asks; the hop carries the state to go on with."""

    def end_cycle(self, cycle: int) -> None:
        """Write the cycle's logs (before its checkpoint is committed)."""

    def snapshot(self) -> dict:
        """Plain data saved in the checkpoint."""

    def calibration_scans(self, sites: list[str]) -> dict[str, tuple[str, ...]]:
        """Of ``sites`` (those with verification scans), the ones whose val scans the arm trusts to calibrate the
        model (:mod:`fedqc.strategies.calibration`), each with the scans to leave out."""


def hop_seed(seed: int, cycle: int, site: str) -> int:
    """The seed of one visit, derived from the run seed, cycle and site name."""
    return int(np.random.SeedSequence([seed, cycle, zlib.crc32(site.encode())]).generate_state(1)[0])


def train_request(train: TrainConfig, lr: float, seed: int, *, subjects: tuple[str, ...] | None = None,
                  exclude: tuple[str, ...] = (), class_counts: tuple[int, ...] = (), prox_mu: float = 0.0,
                  steps: int = 0, epochs: int = 1, optimizer_state: bool = True) -> TrainRequest:
    """A visit's :class:`~fedqc.protocol.TrainRequest`, with the run's batch size and class rebalancing, and a fresh
    nonce its reply must name (:func:`~fedqc.protocol.check_fresh`; random: it never steers training)."""
    return TrainRequest(lr=lr, seed=seed, batch_size=train.batch_size, subjects=subjects, exclude=exclude,
                        rebalance=train.rebalance, class_counts=class_counts, prox_mu=prox_mu, steps=steps,
                        nonce=secrets.token_hex(8), epochs=epochs, optimizer_state=optimizer_state)


def learning_rate(lr: float, decay: float, cycle: int) -> float:
    return lr * math.exp(-decay * cycle)


@dataclass
class PlainVisitor:
    """``epochs`` × the round's local epochs per visit — or ``epochs`` × its local steps —, in one request, adopted
    unless a reply is invalid; ``leave_out`` per site is not trained.

    Defences (:mod:`fedqc.strategies.defence`): ``norm_check`` rejects an update far larger than the recent ones;
    ``enrolled`` (site → the training scans it declared at enrolment) rejects a reply that claims more scans than
    were asked for (None: the reply's count is believed).
    """

    transport: Transport
    train: TrainConfig
    leave_out: dict[str, tuple[str, ...]] = field(default_factory=dict)
    epochs: int = 1
    class_counts: tuple[int, ...] = ()  # the federation's, when train.class_weights is federation
    val_sites: tuple[str, ...] | None = None  # whose val scans calibrate the model (None: all)
    val_leave_out: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per site, val scans that may not
    norm_check: UpdateNormCheck | None = None
    enrolled: dict[str, tuple[str, ...]] | None = None

    def begin(self, state: State, first_cycle: int, checkpoint: dict | None, inherited: dict | None = None) -> None:
        if self.norm_check is not None and (checkpoint or inherited):
            self.norm_check.restore((checkpoint or inherited).get("update_norms", []))

    def _asked(self, site: str, request: TrainRequest, reply: TrainReply) -> int:
        """The distinct scans the site was asked to train: its enrolled ones not excluded, or without enrolment the
        count its reply claims per epoch (believed, as ``counts: reply`` believes it)."""
        if self.enrolled is None:
            return -(-int(reply.n_scans) // max(request.epochs, 1))
        return len(set(self.enrolled.get(site, ())) - set(request.exclude))

    def visit(self, site: str, state: State, cycle: int, lr: float, local: Local = ONE_EPOCH) -> Hop:
        request = train_request(self.train, lr, hop_seed(self.train.seed, cycle, site),
                                exclude=self.leave_out.get(site, ()), class_counts=self.class_counts,
                                prox_mu=local.prox_mu, steps=self.epochs * local.steps,
                                epochs=self.epochs * local.epochs, optimizer_state=local.optimizer_state)
        reply = self.transport.train(site, state, request)
        if reason := refusal(state, request, reply, self._asked(site, request, reply),
                             counts=self.enrolled is not None, norm_check=self.norm_check):
            return Hop(state, seconds=reply.seconds, status=HopStatus.REJECTED, note=reason, problems=reply.skipped)
        return Hop(reply.state, reply.n_scans, reply.loss, reply.seconds, problems=reply.skipped)

    def end_cycle(self, cycle: int) -> None:
        pass

    def snapshot(self) -> dict:
        return {"update_norms": self.norm_check.snapshot()} if self.norm_check is not None else {}

    def calibration_scans(self, sites: list[str]) -> dict[str, tuple[str, ...]]:
        return {s: self.val_leave_out.get(s, ()) for s in sites if self.val_sites is None or s in self.val_sites}


@dataclass
class Cycle:
    """One finished cycle: its hops (with the server's wall time of each), its calibration (None: none done), the
    test split's scores, and where its time went (:func:`time_split`)."""

    cycle: int
    hops: list[tuple[str, Hop, float]]  # site, outcome, hop wall seconds
    test: dict[str, EvalReply]
    test_seconds: float
    started: float
    calibration: dict | None = None
    split: dict[str, float] = field(default_factory=dict)


def time_split(round_meter: Meter | None, calibration_seconds: float, test_seconds: float) -> dict[str, float]:
    """A cycle's seconds so far by what they were spent on (``cycles.csv``'s columns; the runner adds its writes and
    the remainder): ``train_seconds``, the sites' own training (what their replies report); ``transport_seconds``,
    the rest of the training requests' wall time (sending the model and its state, Ray or the grid, packing);
    ``eval_seconds``, the evaluation messages of the round itself (QC's verification scoring: transport included);
    ``calibration_seconds``, the end-of-cycle calibration (its BatchNorm passes' messages, the server's pooling and
    the threshold's fit); ``test_seconds``, the cycle's closing message (:func:`score_cycle`: the test split's
    scores and, riding in it, the threshold's verification scores). ``round_meter`` is what the transport carried
    during the round (None: not metered, NaN)."""
    m = round_meter
    nan = math.nan
    return {"train_seconds": m.site_train if m else nan, "transport_seconds": m.train_wall - m.site_train if m else nan,
            "eval_seconds": m.eval_wall if m else nan, "calibration_seconds": calibration_seconds,
            "test_seconds": test_seconds}


HopCallback = Callable[[int, int, str, Hop], None]  # cycle, index of the visit, site, outcome
Round = Callable[[Visitor, State, int, float, HopCallback], tuple[State, list[tuple[str, Hop, float]]]]
"""One cycle of a strategy: ``(visitor, state, cycle, lr, on_hop) -> (next state, [(site, hop, wall seconds)])``."""


class Calibrate(Protocol):
    """The end-of-cycle calibration in its two steps around the closing message
    (:class:`~fedqc.strategies.calibration.Calibrator`)."""

    def statistics(self, state: State, scans: dict[str, tuple[str, ...]]) -> tuple[State, int]:
        """The state to score and checkpoint, and the evaluation passes it took."""

    def threshold(self, replies: dict[str, EvalReply], scans: dict[str, tuple[str, ...]], passes: int,
                  seconds: float) -> dict:
        """The calibration's record (a row of ``calibration.csv``), from the verification replies alone."""


def score_cycle(transport: Transport, state: State, verification: dict[str, tuple[str, ...]],
                test_sites: list[str]) -> tuple[dict[str, EvalReply], dict[str, EvalReply]]:
    """The cycle's closing scoring of its final ``state``, one message per site (a
    :class:`~fedqc.protocol.CycleEvalRequest`): the ``val`` scores of the sites in ``verification`` (site → the val
    scans to leave out) and the test scores of ``test_sites``. Both score the same state with no server step between
    them, so a site asked for both answers both in one message; sites asking alike share a fan-out.

    Returns ``(verification replies, test replies)``, kept apart: the first go to the calibration's threshold
    (:meth:`Calibrate.threshold`), the test replies only to the cycle's predictions and metrics (the caller's
    ``on_cycle``), never to training, calibration or QC — the test split steers nothing. The message's parts are
    named (``verification``, ``test``), so a test score cannot be read as a verification one. The test replies
    are in ``test_sites``' order (the predictions' row order)."""
    groups: dict[CycleEvalRequest, list[str]] = {}
    for site in sorted(set(verification) | set(test_sites)):
        request = CycleEvalRequest(verification=EvalRequest("val", exclude=tuple(verification[site]))
                                   if site in verification else None,
                                   test=EvalRequest("test") if site in test_sites else None)
        groups.setdefault(request, []).append(site)
    replies = {}
    for request, sites in groups.items():
        replies |= transport.evaluate_cycle(sites, state, request)
    return {s: replies[s].verification for s in verification}, {s: replies[s].test for s in test_sites}


def visit(visitor: Visitor, site: str, state: State, cycle: int, lr: float,
          local: Local = ONE_EPOCH) -> tuple[Hop, float]:
    """The visitor's visit of ``site`` (a site that fails: a failed hop, ``state`` unchanged) and its wall time."""
    t0 = time.perf_counter()
    try:
        hop = visitor.visit(site, state, cycle, lr, local)
    except SiteError as exc:
        hop = Hop(state, seconds=math.nan, status=HopStatus.FAILED, note=str(exc))
    return hop, time.perf_counter() - t0


def train_cycles(transport: Transport, visitor: Visitor, state: State, *, rounds: Callable[[int], Round],
                 test_sites: list[str], train: TrainConfig, first_cycle: int, on_hop: HopCallback,
                 on_cycle: Callable[[Cycle, State], None], calibrate: Calibrate | None = None,
                 val_sites: list[str] = (), meter: CountingTransport | None = None) -> State:
    """Cycles ``first_cycle .. train.cycles - 1``: run the cycle's round (``rounds(cycle)``), calibrate the model on
    the verification scans of ``val_sites`` the visitor trusts (when ``calibrate`` is given: its BatchNorm
    statistics, then its threshold on the verification part of the closing message), scoring the test split in
    that same message (:func:`score_cycle`). ``meter``, the counting transport the visitor's and calibration's
    requests go through, splits the round's time (:func:`time_split`)."""
    for cycle in range(first_cycle, train.cycles):
        started = time.perf_counter()
        before = meter.meter if meter else None
        state, hops = rounds(cycle)(visitor, state, cycle, learning_rate(train.lr, train.lr_decay, cycle), on_hop)
        during = meter.meter - before if meter else None
        calibration, scans, passes, t_calibrate = None, {}, 0, time.perf_counter()
        if calibrate is not None:
            scans = visitor.calibration_scans(list(val_sites))
            state, passes = calibrate.statistics(state, scans)
        t_test = time.perf_counter()
        verification, test = score_cycle(transport, state, scans, test_sites)
        t_fit = time.perf_counter()
        if calibrate is not None:
            calibration = calibrate.threshold(verification, scans, passes, t_test - t_calibrate)
        calibration_seconds = t_test - t_calibrate + time.perf_counter() - t_fit
        on_cycle(Cycle(cycle, hops, test, t_fit - t_test, started, calibration,
                       time_split(during, calibration_seconds, t_fit - t_test)), state)
    return state
