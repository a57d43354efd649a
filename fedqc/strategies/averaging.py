"""Federated averaging: every site of a round trains the same model, and the server averages what comes back.

FedAvg and FedProx as Flower implements them (:class:`flwr.serverapp.strategy.FedAvg`,
:class:`~flwr.serverapp.strategy.FedProx`): the strategy object holds the knobs
(``weighted_by_key``, ``proximal_mu``), and the average is Flower's
``aggregate_arrayrecords`` — what their ``aggregate_train`` computes over the replies'
contents — called on the replies in sorted-site order, by both engines alike. Float
sums depend on their order, so the order is fixed and two runs give identical weights;
Flower messages can only be built inside a Flower run, so the in-process engine could
not call ``aggregate_train`` itself, and calling the function it wraps keeps both engines
on one arithmetic. FedProx's proximal term is the site's (``TrainRequest.prox_mu``).

**Optimizer state.** Every site starts each round with a fresh Adam: the server sends
the model's arrays only, and only those are averaged. Adam's moments estimate the
gradients of one site's data along that site's local steps; an average of them
describes no model's gradients, and would carry a site's step count into another's bias
correction. (The travelling model carries Adam's state along because one optimizer
really does take every step.)

**Buffers.** BatchNorm's running statistics are averaged like the weights (what FedAvg
does); its integer batch counter comes back to its integer type after the average.
Calibration at the end of the cycle may replace the statistics
(:mod:`fedqc.strategies.calibration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedqc.protocol import State, model_arrays
from fedqc.strategies.cycles import Hop, HopCallback, HopStatus, Local, Visitor, visit

SELECTION_STREAM = 2  # keeps the round's site sample apart from other seeded draws


def flower_strategy(name: str, mu: float):
    """Flower's strategy object for ``fedavg`` or ``fedprox`` (with proximal weight ``mu``)."""
    from flwr.serverapp.strategy import FedAvg, FedProx

    return FedProx(proximal_mu=mu) if name == "fedprox" else FedAvg()


def average(strategy, updates: list[tuple[str, State, float]]) -> State:
    """Flower's weighted average of ``updates`` — (site, model arrays, weight) — taken in site order; each array
    keeps its dtype (integers rounded back)."""
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    updates = sorted(updates, key=lambda u: u[0])
    contents = [RecordDict({"arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()}),
                            "metrics": MetricRecord({strategy.weighted_by_key: float(w)})})
                for _, state, w in updates]
    mean = aggregate_arrayrecords(contents, strategy.weighted_by_key)
    first = updates[0][1]
    return {k: (np.rint(mean[k].numpy()) if np.issubdtype(first[k].dtype, np.integer) else mean[k].numpy())
            .astype(first[k].dtype).reshape(first[k].shape) for k in first}


@dataclass(frozen=True)
class AveragingRound:
    """A :data:`~fedqc.strategies.cycles.Round` of federated averaging over ``sites``.

    ``fraction`` of the sites (at least one; all with 1) is drawn each round from a seed of
    the run seed and the round; each trains ``local`` from the round's model; the updates
    of sites that trained (status ok, at least one scan) are averaged with ``strategy``,
    weighted by their scans trained (``weighting`` ``scans``) or equally. A site that
    fails, is rejected or kept out by QC is absent from the average; with no update at
    all the model stays as it was.
    """

    sites: list[str]
    strategy: object  # a Flower FedAvg or FedProx (flower_strategy)
    seed: int
    fraction: float = 1.0
    weighting: str = "scans"
    epochs: int = 1

    def select(self, cycle: int) -> list[str]:
        """The round's sites, sorted."""
        if self.fraction >= 1:
            return sorted(self.sites)
        k = max(1, math.ceil(self.fraction * len(self.sites)))
        rng = np.random.default_rng([self.seed, cycle, SELECTION_STREAM])
        return sorted(self.sites[i] for i in rng.choice(len(self.sites), k, replace=False))

    def __call__(self, visitor: Visitor, state: State, cycle: int, lr: float,
                 on_hop: HopCallback) -> tuple[State, list[tuple[str, Hop, float]]]:
        sent = model_arrays(state)  # no optimizer state: each site starts the round with a fresh Adam
        local = Local(self.epochs, float(getattr(self.strategy, "proximal_mu", 0.0)))
        hops, updates = [], []
        for i, site in enumerate(self.select(cycle)):
            hop, wall = visit(visitor, site, sent, cycle, lr, local)
            hops.append((site, hop, wall))
            on_hop(cycle, i, site, hop)
            if hop.status == HopStatus.OK and hop.n_scans:
                updates.append((site, model_arrays(hop.state), hop.n_scans if self.weighting == "scans" else 1))
        return (average(self.strategy, updates) if updates else sent), hops
