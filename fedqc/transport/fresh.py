"""Message freshness for evaluations: every evaluation request carries a fresh nonce, and a reply that does not name
it is refused.

Train requests get their nonce where the server builds them
(:func:`fedqc.strategies.cycles.train_request`) and a visit refuses a stale train reply
(:func:`~fedqc.protocol.check_reply`). Evaluation requests are built in many places (QC's
verification and screening, calibration, the test split), so the server stamps and checks
them here, once, on whatever transport carries them (in-process or a Flower grid): a site
answers with the nonce (:attr:`~fedqc.protocol.EvalReply.answers`), and a reply that names
another — an earlier reply replayed, by a site or on the network — becomes
:meth:`EvalReply.failed <fedqc.protocol.EvalReply.failed>` with the reason of
:func:`~fedqc.protocol.check_fresh`, so that its scores and moments are never believed and
every consumer records it as it records a site that did not answer (``errors.csv``, the
calibration's note). The nonce is random and steers nothing: runs stay bit-identical.
A cycle evaluation (:class:`~fedqc.protocol.CycleEvalRequest`) gets a nonce per part, each
part's reply checked against its own: a stale part fails alone.
"""

from __future__ import annotations

import dataclasses
import secrets

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
    check_fresh,
)
from fedqc.transport import Transport


class FreshTransport:
    """``transport`` whose evaluation requests each carry a fresh nonce, their stale replies refused (module
    docstring); everything else passes through unchanged."""

    def __init__(self, transport: Transport):
        self.transport = transport

    def site_info(self) -> dict[str, SiteInfo]:
        return self.transport.site_info()

    def check_images(self, site: str) -> list[ImageFinding]:
        return self.transport.check_images(site)

    def train(self, site: str, state: State, request: TrainRequest) -> TrainReply:
        return self.transport.train(site, state, request)

    def evaluate(self, sites: list[str], state: State, request: EvalRequest) -> dict[str, EvalReply]:
        request = dataclasses.replace(request, nonce=secrets.token_hex(8))
        replies = self.transport.evaluate(sites, state, request)
        return {s: fresh(request, r) for s, r in replies.items()}

    def evaluate_cycle(self, sites: list[str], state: State, request: CycleEvalRequest) -> dict[str, CycleEvalReply]:
        request = CycleEvalRequest(**{name: dataclasses.replace(part, nonce=secrets.token_hex(8))
                                      for name, part in request.parts()})
        replies = self.transport.evaluate_cycle(sites, state, request)
        return {s: CycleEvalReply(**{name: fresh(part, getattr(r, name)) for name, part in request.parts()})
                for s, r in replies.items()}


def fresh(request: EvalRequest, reply: EvalReply | None) -> EvalReply:
    """``reply``, or :meth:`EvalReply.failed` when it does not answer ``request`` (or is missing)."""
    if reply is None:
        return EvalReply.failed(f"no reply to the {request.split} part")
    return EvalReply.failed(reason) if reply.error is None and (reason := check_fresh(request, reply)) else reply
