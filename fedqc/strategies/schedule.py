"""Which round each cycle runs: the configured strategy as a :data:`~fedqc.strategies.cycles.Round` per cycle."""

from __future__ import annotations

from dataclasses import dataclass

from fedqc.config import StrategyConfig, TrainConfig
from fedqc.protocol import SiteInfo
from fedqc.strategies.averaging import Aggregator, AveragingRound, flower_strategy
from fedqc.strategies.cycles import Round
from fedqc.strategies.server import ServerOptimiser, flower_optimiser
from fedqc.strategies.travelling import TravellingRound


def warmup_sites(strategy: StrategyConfig, sites: list[str], info: dict[str, SiteInfo]) -> list[str]:
    """FedTM's warm-up sites: at least ``min_scans`` training scans and, unless ``single_class``, both classes."""
    def both(i: SiteInfo) -> bool:
        return 0 < i.train_positives < len(i.train)

    return [s for s in sites if len(info[s].train) >= strategy.min_scans and (strategy.single_class or both(info[s]))]


@dataclass(frozen=True)
class Schedule:
    """``cycle → round``: ``first`` for cycles before ``switch``, ``then`` from it on; and the state the rounds keep
    between cycles (an averaging round's server optimiser and FedBN layers), for the checkpoint."""

    first: Round
    then: Round
    switch: int = 0

    def __call__(self, cycle: int) -> Round:
        return self.first if cycle < self.switch else self.then

    def _stateful(self) -> AveragingRound | None:
        return next((r for r in (self.first, self.then) if isinstance(r, AveragingRound)), None)

    def snapshot(self) -> dict:
        """The averaging round's state (:meth:`AveragingRound.snapshot`); empty when there is none."""
        r = self._stateful()
        return r.snapshot() if r is not None else {}

    def restore(self, snapshot: dict) -> None:
        if (r := self._stateful()) is not None:
            r.restore(snapshot)


def rounds_for(strategy: StrategyConfig, train: TrainConfig, sites: list[str],
               info: dict[str, SiteInfo], aggregator: Aggregator | None = None) -> Schedule:
    """The schedule over ``sites``: always travelling, always averaging (fedavg, fedprox), or FedTM's averaging
    warm-up over :func:`warmup_sites` for the first ``strategy.rounds`` cycles, then travelling over all; averaging
    rounds combine their updates with ``aggregator`` (None: the weighted mean)."""
    travelling = TravellingRound(sites, train.order, train.seed)
    if strategy.name == "travelling":
        return Schedule(travelling, travelling)

    def averaging(name: str, over: list[str]) -> AveragingRound:
        server = ServerOptimiser(flower_optimiser(strategy)) if strategy.server != "none" else None
        return AveragingRound(over, flower_strategy(name, strategy.mu), train.seed, strategy.fraction,
                              strategy.weighting, strategy.local_epochs, strategy.local_steps, server,
                              strategy.batchnorm == "local", aggregator=aggregator)

    if strategy.name in ("fedavg", "fedprox"):
        every = averaging(strategy.name, sites)
        return Schedule(every, every)
    warm = warmup_sites(strategy, sites, info)
    return Schedule(averaging(strategy.averaging, warm) if warm else travelling, travelling, strategy.rounds)
