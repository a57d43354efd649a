"""The travelling model: the model and its optimizer state go from site to site, cycle after cycle.

Every cycle the site order is drawn from a seeded RNG (``random``, the reference), kept
sorted (``fixed``) or given explicitly; each site trains the model the previous one
passed on (a site that fails or is rejected passes on what it received).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedqc.errors import UserError
from fedqc.protocol import State
from fedqc.strategies.cycles import Hop, HopCallback, Visitor, visit


def site_order(policy: str | tuple[str, ...], sites: list[str], *, seed: int, cycle: int) -> list[str]:
    """Visiting order for ``cycle``: reshuffled from a seeded RNG, fixed (sorted), or explicit."""
    if policy == "random":
        rng = np.random.default_rng([seed, cycle])
        return [sites[i] for i in rng.permutation(len(sites))]
    if policy == "fixed":
        return sorted(sites)
    missing = sorted(set(policy) - set(sites))
    if missing:
        raise UserError(f"train.order names site(s) without training data in this arm: {missing}")
    return list(policy)


@dataclass(frozen=True)
class TravellingRound:
    """A :data:`~fedqc.strategies.cycles.Round` of the travelling model over ``sites`` in ``order``."""

    sites: list[str]
    order: str | tuple[str, ...]
    seed: int

    def __call__(self, visitor: Visitor, state: State, cycle: int, lr: float,
                 on_hop: HopCallback) -> tuple[State, list[tuple[str, Hop, float]]]:
        hops = []
        for i, site in enumerate(site_order(self.order, self.sites, seed=self.seed, cycle=cycle)):
            hop, wall = visit(visitor, site, state, cycle, lr)
            state = hop.state
            hops.append((site, hop, wall))
            on_hop(cycle, i, site, hop)
        return state, hops
