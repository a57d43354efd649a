"""The in-process transport: every site in this process, called directly (tests, quick runs, scoring checkpoints)."""

from __future__ import annotations

import functools
from typing import Callable

import pandas as pd

from fedqc.config import DataConfig, ModelSpec
from fedqc.errors import SiteError
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
from fedqc.site import Site
from fedqc.transport import Reply


class InProcessTransport:
    """All sites of one manifest table; a site that raises fails as it would over Flower. ``device``, ``data`` and
    ``deterministic`` are :class:`fedqc.site.Site`'s."""

    def __init__(self, manifest: pd.DataFrame, model: ModelSpec, *, device: str = "cpu",
                 data: DataConfig = DataConfig(), deterministic: bool = False):
        self.sites = {name: Site(name, rows, model=model, device=device, data=data, deterministic=deterministic)
                      for name, rows in manifest.groupby("site", sort=True)}

    def site_info(self) -> dict[str, SiteInfo]:
        return {name: site.info() for name, site in self.sites.items()}

    def check_images(self, site: str) -> list[ImageFinding]:
        try:
            return self.sites[site].check_images()
        except Exception as exc:
            raise SiteError(f"audit failed: {type(exc).__name__}: {exc}") from exc

    def train(self, site: str, state: State, request: TrainRequest) -> TrainReply:
        try:
            return self.sites[site].train(state, request)
        except Exception as exc:  # a failing site costs its hop, as over Flower
            raise SiteError(f"site {site} failed: {type(exc).__name__}: {exc}") from exc

    def evaluate(self, sites: list[str], state: State, request: EvalRequest) -> dict[str, EvalReply]:
        return self._each(sites, lambda site: site.evaluate(state, request), EvalReply.failed)

    def evaluate_cycle(self, sites: list[str], state: State, request: CycleEvalRequest) -> dict[str, CycleEvalReply]:
        return self._each(sites, lambda site: site.evaluate_cycle(state, request),
                          functools.partial(CycleEvalReply.failed, request))

    def _each(self, sites: list[str], ask: Callable[[Site], Reply], failed: Callable[[str], Reply]) -> dict[str, Reply]:
        """``ask`` of every site in turn; a site that raises gets ``failed`` (it loses this message's scores, not
        the run)."""
        replies = {}
        for s in sites:
            try:
                replies[s] = ask(self.sites[s])
            except Exception as exc:
                replies[s] = failed(f"site {s} failed: {type(exc).__name__}: {exc}")
        return replies
