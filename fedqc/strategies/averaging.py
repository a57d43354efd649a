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
the model's arrays only, the sites reply with theirs only, and only those are averaged. Adam's moments estimate the
gradients of one site's data along that site's local steps; an average of them
describes no model's gradients, and would carry a site's step count into another's bias
correction. (The travelling model carries Adam's state along because one optimizer
really does take every step.)

**Buffers.** BatchNorm's running statistics are averaged like the weights (what FedAvg
does); its integer batch counter comes back to its integer type after the average.
Calibration at the end of the cycle may replace the statistics
(:mod:`fedqc.strategies.calibration`).

**FedBN** (``strategy.batchnorm: local``; Li et al. 2021). Every BatchNorm layer — its
weight and bias, running statistics and counter — stays the site's own: a site starts
each round from the round's model with its own BatchNorm layers put back (the round's
ones the first time it trains), and what it trained is kept for its next round. The
server keeps them because a site is stateless between requests (each visit carries the
whole model); the arithmetic is that of a site keeping them. Everything else is averaged
as above. The model the run evaluates and checkpoints needs BatchNorm layers of its
own: their affine weight and bias are the sites' average (as FedAvg would give), their
running statistics the federated calibration's, pooled from the verification scans
(``calibration.batchnorm: federated``, which FedBN requires). On the pooled test scans
a FedBN run is therefore scored with pooled statistics and averaged affine parameters,
not with each site's own BatchNorm.

**Server optimisers** (``strategy.server``) take the round's average as Flower's
FedAvgM / FedAdagrad / FedAdam / FedYogi do (:mod:`fedqc.strategies.server`); a site's
kept BatchNorm layers are not stepped. Their state and FedBN's layers are the round's
own, saved in the checkpoint (:meth:`AveragingRound.snapshot`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fedqc.protocol import State, model_arrays
from fedqc.strategies.calibration import batchnorm_layers
from fedqc.strategies.cycles import Hop, HopCallback, HopStatus, Local, Visitor, visit
from fedqc.strategies.server import ServerOptimiser

SELECTION_STREAM = 2  # keeps the round's site sample apart from other seeded draws


def flower_strategy(name: str, mu: float):
    """Flower's strategy object for ``fedavg`` or ``fedprox`` (with proximal weight ``mu``)."""
    from flwr.serverapp.strategy import FedAvg, FedProx

    return FedProx(proximal_mu=mu) if name == "fedprox" else FedAvg()


def average(strategy, updates: list[tuple[str, State, float]], aggregator: Aggregator | None = None) -> State:
    """Flower's weighted average of ``updates`` — (site, model arrays, weight) — taken in site order, or with
    ``aggregator`` one of Flower's robust aggregations (:class:`Aggregator`); each array keeps its dtype (integers
    rounded back)."""
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    updates = sorted(updates, key=lambda u: u[0])
    contents = [RecordDict({"arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()}),
                            "metrics": MetricRecord({strategy.weighted_by_key: float(w)})})
                for _, state, w in updates]
    mean = aggregate_arrayrecords(contents, strategy.weighted_by_key) if aggregator is None or \
        aggregator.name == "mean" else aggregator(contents, strategy.weighted_by_key)
    first = updates[0][1]
    return {k: (np.rint(mean[k].numpy()) if np.issubdtype(first[k].dtype, np.integer) else mean[k].numpy())
            .astype(first[k].dtype).reshape(first[k].shape) for k in first}


def batchnorm_keys(state: State) -> frozenset[str]:
    """Every array of the state's BatchNorm layers: weight, bias, running statistics, batch counter."""
    return frozenset(k for p in batchnorm_layers(state) for k in state if k.startswith(p) and "." not in k[len(p):])


@dataclass(frozen=True)
class Aggregator:
    """How an averaging round combines its updates (``defence.aggregator``): ``mean`` (FedAvg's weighted mean), or
    one of Flower's robust aggregations, resistant to a minority of lying sites whatever their weights —
    ``median`` (FedMedian: each value's median over the sites), ``trimmed_mean`` (FedTrimmedAvg: each value's mean
    without the ``trim_beta`` share of the highest and of the lowest), ``krum`` (Krum: the one update closest to its
    n - ``krum_f`` - 2 nearest others, ``krum_f`` the lying sites it resists). The robust ones ignore the scan
    counts (Krum's one update keeps its own weight); Flower's functions do the arithmetic."""

    name: str = "mean"
    trim_beta: float = 0.2
    krum_f: int = 1

    def __call__(self, contents: list, weighted_by_key: str):
        """The ArrayRecord that Flower's strategy would aggregate from ``contents`` (reply RecordDicts)."""
        from flwr.app import Array, ArrayRecord
        from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
        from flwr.serverapp.strategy.multikrum import select_multikrum
        from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

        if self.name == "krum":
            return aggregate_arrayrecords(select_multikrum(contents, self.krum_f, 1), weighted_by_key)
        keys = list(contents[0]["arrays"].keys())
        stacked = {k: np.stack([c["arrays"][k].numpy() for c in contents]) for k in keys}
        if self.name == "median":  # FedMedian.aggregate_train's arithmetic (Flower has no function of it alone)
            return ArrayRecord({k: Array(np.asarray(np.median(v, axis=0))) for k, v in stacked.items()})
        return ArrayRecord({k: Array(np.asarray(trim_mean(v, self.trim_beta))) for k, v in stacked.items()})


@dataclass(frozen=True)
class AveragingRound:
    """A :data:`~fedqc.strategies.cycles.Round` of federated averaging over ``sites``.

    ``fraction`` of the sites (at least one; all with 1) is drawn each round from a seed of
    the run seed and the round; each trains ``epochs`` local epochs (or ``steps`` batches)
    from the round's model; the updates of sites that trained (status ok, at least one
    scan) are averaged with ``strategy``, weighted by their scans trained (``weighting``
    ``scans``: with local steps, a site smaller than the steps' batches counts its scans
    once per epoch it went through) or equally. A site that
    fails, is rejected or kept out by QC is absent from the average; with no update at
    all the model stays as it was.
    """

    sites: list[str]
    strategy: object  # a Flower FedAvg or FedProx (flower_strategy)
    seed: int
    fraction: float = 1.0
    weighting: str = "scans"
    epochs: int = 1
    steps: int = 0  # local steps (batches) per site instead of epochs
    server: ServerOptimiser | None = None
    local_bn: bool = False
    site_bn: dict[str, State] = field(default_factory=dict)  # FedBN: site → its BatchNorm arrays
    aggregator: Aggregator | None = None  # defence.aggregator (None: the weighted mean)

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
        kept = batchnorm_keys(sent) if self.local_bn else frozenset()
        local = Local(self.epochs, float(getattr(self.strategy, "proximal_mu", 0.0)), self.steps, optimizer_state=False)
        hops, updates = [], []
        for i, site in enumerate(self.select(cycle)):
            start = {**sent, **self.site_bn.get(site, {})} if kept else sent
            hop, wall = visit(visitor, site, start, cycle, lr, local)
            hops.append((site, hop, wall))
            on_hop(cycle, i, site, hop)
            if hop.status == HopStatus.OK and hop.n_scans:
                updates.append((site, model_arrays(hop.state), hop.n_scans if self.weighting == "scans" else 1))
                if kept:
                    self.site_bn[site] = {k: hop.state[k] for k in kept}
        if not updates:
            return sent, hops
        mean = average(self.strategy, updates, self.aggregator)
        if self.server is not None:  # Flower counts rounds from 1
            mean = self.server.step(sent, updates, mean, cycle + 1, kept)
        return mean, hops

    def snapshot(self) -> dict:
        """What the round keeps between cycles, as plain arrays (empty for plain FedAvg/FedProx): the server
        optimiser's state and FedBN's site BatchNorm layers."""
        server = self.server.snapshot() if self.server is not None else {}
        return ({"server": server} if server else {}) | ({"site_bn": dict(self.site_bn)} if self.site_bn else {})

    def restore(self, snapshot: dict) -> None:
        """Put back what :meth:`snapshot` returned (at a resume, or when an arm starts from another's checkpoint)."""
        if self.server is not None:
            self.server.restore(snapshot.get("server", {}))
        self.site_bn.clear()
        self.site_bn.update(snapshot.get("site_bn", {}))
