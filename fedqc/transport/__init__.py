"""How the server reaches sites: :class:`Transport`, implemented in-process (:mod:`.inprocess`) and over
Flower (:mod:`.flower`). Every implementation carries the same typed requests to the same
:class:`~fedqc.site.Site` logic, and a failing site surfaces as :class:`~fedqc.protocol.SiteError`."""

from __future__ import annotations

from typing import Protocol, TypeVar

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
)

Reply = TypeVar("Reply", EvalReply, CycleEvalReply)  # what an evaluation message brings back


class Transport(Protocol):
    def site_info(self) -> dict[str, SiteInfo]:
        """Per site: its training scans' ids and val/test counts."""

    def check_images(self, site: str) -> list[ImageFinding]:
        """The findings of ``site``'s image checks on its own train and val scans (the QC audit stage's input)."""

    def train(self, site: str, state: State, request: TrainRequest) -> TrainReply:
        """Train ``state`` at ``site``; :class:`~fedqc.protocol.SiteError` when the site fails."""

    def evaluate(self, sites: list[str], state: State, request: EvalRequest) -> dict[str, EvalReply]:
        """Score ``state`` at each site; a site that fails gets :meth:`EvalReply.failed`."""

    def evaluate_cycle(self, sites: list[str], state: State, request: CycleEvalRequest) -> dict[str, CycleEvalReply]:
        """The end of a cycle's scoring of ``state``: one message per site carrying every part of ``request``
        (:class:`~fedqc.protocol.CycleEvalRequest`); a site that fails gets :meth:`CycleEvalReply.failed`."""
