"""A transport that counts the messages it carries (for the cost of a cycle in ``cycles.csv``)."""

from __future__ import annotations

from fedqc.protocol import EvalReply, EvalRequest, ImageFinding, SiteInfo, State, TrainReply, TrainRequest
from fedqc.transport import Transport


class CountingTransport:
    """``transport``, counting one message per training request, per audit and per site of an evaluation — what a
    Flower grid sends (the one-off site query at start-up is not counted)."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.messages = 0

    def site_info(self) -> dict[str, SiteInfo]:
        return self.transport.site_info()

    def check_images(self, site: str) -> list[ImageFinding]:
        self.messages += 1
        return self.transport.check_images(site)

    def train(self, site: str, state: State, request: TrainRequest) -> TrainReply:
        self.messages += 1
        return self.transport.train(site, state, request)

    def evaluate(self, sites: list[str], state: State, request: EvalRequest) -> dict[str, EvalReply]:
        self.messages += len(sites)
        return self.transport.evaluate(sites, state, request)
