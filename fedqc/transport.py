"""The in-process transport: the travelling strategy calls each site's logic directly.

Used for tests and quick runs; Flower's engines (:mod:`fedqc.flower`) carry the same
requests as messages to the same :class:`~fedqc.site.Site` logic.
"""

from __future__ import annotations

import pandas as pd

from fedqc.site import EvalResult, ModelSpec, Site, TrainResult
from fedqc.state import State
from fedqc.travel import SiteError


def train_request(site: Site, state: State, request: dict) -> TrainResult:
    """Apply a train request (the fields the strategy sends) to a site."""
    return site.train(state, lr=request["lr"], seed=request["seed"], batch_size=request["batch_size"],
                      subjects=request.get("subjects"), include_harmful=request.get("include_harmful", True),
                      exclude=frozenset(request.get("exclude", ())))


def evaluate_request(site: Site, state: State, request: dict) -> EvalResult:
    return site.evaluate(state, split=request["split"], exclude=frozenset(request.get("exclude", ())),
                         fraction=float(request.get("fraction", 1.0)), sample_seed=int(request.get("sample_seed", 0)))


class InProcessTransport:
    """All sites in this process, built from one manifest table."""

    def __init__(self, manifest: pd.DataFrame, model: ModelSpec):
        self.sites = {name: Site(name, rows, model=model) for name, rows in manifest.groupby("site", sort=True)}

    def site_info(self) -> dict[str, dict[str, int]]:
        return {name: site.info() for name, site in self.sites.items()}

    def train_subjects(self, site: str) -> list[str]:
        return self.sites[site].subjects("train")

    def audit(self, site: str) -> list[tuple[str, str, str]]:
        try:
            return self.sites[site].audit()
        except Exception as exc:
            raise SiteError(f"audit failed: {type(exc).__name__}: {exc}") from exc

    def train(self, site: str, state: State, request: dict) -> TrainResult:
        try:
            return train_request(self.sites[site], state, request)
        except Exception as exc:  # a failing site costs its hop, as over Flower
            raise SiteError(f"site {site} failed: {type(exc).__name__}: {exc}") from exc

    def evaluate(self, sites: list[str], state: State, request: dict) -> dict[str, EvalResult]:
        results = {}
        for s in sites:
            try:
                results[s] = evaluate_request(self.sites[s], state, request)
            except Exception as exc:  # a failing site loses its scores, not the run
                results[s] = EvalResult.failed(f"site {s} failed: {type(exc).__name__}: {exc}")
        return results
