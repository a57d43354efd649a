"""A transport that counts the messages it carries, the model state they move and the time they take (for the cost
of a cycle in ``cycles.csv``)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

from fedqc.protocol import (
    CycleEvalReply,
    CycleEvalRequest,
    EvalReply,
    EvalRequest,
    ImageFinding,
    SiteInfo,
    State,
    TrainReply,
    TrainRequest,
    model_arrays,
)
from fedqc.transport import Reply, Transport


@dataclass(frozen=True)
class Meter:
    """Running totals of what a :class:`CountingTransport` carried: messages, the bytes of model state they moved
    (``state_bytes``: what a Flower grid's arrays carry — a training request's state, optimizer's included where the
    strategy sends it, and its reply's; an evaluation request's model arrays per site; evaluation replies' scores
    and moments, small beside a model, are not counted), the server's wall seconds of training requests
    (``train_wall``) and of evaluations (``eval_wall``), and the sites' own training seconds their replies report
    (``site_train``; ``train_wall - site_train`` is what the transport added)."""

    messages: int = 0
    train_wall: float = 0.0
    site_train: float = 0.0
    eval_wall: float = 0.0
    state_bytes: int = 0

    def __sub__(self, other: Meter) -> Meter:
        return Meter(self.messages - other.messages, self.train_wall - other.train_wall,
                     self.site_train - other.site_train, self.eval_wall - other.eval_wall,
                     self.state_bytes - other.state_bytes)


def state_bytes(state: State) -> int:
    """Bytes of a state's arrays (what a message carrying it moves, without the encoding's few bytes per key)."""
    return sum(int(v.nbytes) for v in state.values())


class CountingTransport:
    """``transport``, counting one message per training request, per audit and per site of an evaluation — a cycle
    evaluation too, however many parts it carries — what a Flower grid sends (the one-off site query at start-up is
    not counted), and timing them (:class:`Meter`)."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.meter = Meter()

    @property
    def messages(self) -> int:
        return self.meter.messages

    @property
    def state_bytes(self) -> int:
        return self.meter.state_bytes

    def site_info(self) -> dict[str, SiteInfo]:
        return self.transport.site_info()

    def check_images(self, site: str) -> list[ImageFinding]:
        self.meter = replace(self.meter, messages=self.meter.messages + 1)
        return self.transport.check_images(site)

    def train(self, site: str, state: State, request: TrainRequest) -> TrainReply:
        t0 = time.perf_counter()
        try:
            reply = self.transport.train(site, state, request)
        finally:  # a failed request's wall time is the transport's: no site training came back
            m = self.meter
            self.meter = replace(m, messages=m.messages + 1, train_wall=m.train_wall + time.perf_counter() - t0,
                                 state_bytes=m.state_bytes + state_bytes(state))
        self.meter = replace(self.meter, state_bytes=self.meter.state_bytes + state_bytes(reply.state))
        if math.isfinite(reply.seconds):
            self.meter = replace(self.meter, site_train=self.meter.site_train + reply.seconds)
        return reply

    def evaluate(self, sites: list[str], state: State, request: EvalRequest) -> dict[str, EvalReply]:
        return self._evaluation(sites, state, lambda: self.transport.evaluate(sites, state, request))

    def evaluate_cycle(self, sites: list[str], state: State, request: CycleEvalRequest) -> dict[str, CycleEvalReply]:
        return self._evaluation(sites, state, lambda: self.transport.evaluate_cycle(sites, state, request))

    def _evaluation(self, sites: list[str], state: State, send: Callable[[], dict[str, Reply]]) -> dict[str, Reply]:
        """``send()``'s replies, counted as one message of ``state``'s model arrays per site and timed as
        evaluation."""
        t0 = time.perf_counter()
        try:
            return send()
        finally:
            m = self.meter
            self.meter = replace(m, messages=m.messages + len(sites), eval_wall=m.eval_wall + time.perf_counter() - t0,
                                 state_bytes=m.state_bytes + len(sites) * state_bytes(model_arrays(state)))
