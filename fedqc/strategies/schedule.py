"""Which round each cycle runs: the configured strategy as a :data:`~fedqc.strategies.cycles.Round` per cycle."""

from __future__ import annotations

from typing import Callable

from fedqc.config import StrategyConfig, TrainConfig
from fedqc.protocol import SiteInfo
from fedqc.strategies.averaging import Aggregator, AveragingRound, flower_strategy
from fedqc.strategies.cycles import Round
from fedqc.strategies.travelling import TravellingRound


def warmup_sites(strategy: StrategyConfig, sites: list[str], info: dict[str, SiteInfo]) -> list[str]:
    """FedTM's warm-up sites: at least ``min_scans`` training scans and, unless ``single_class``, both classes."""
    def both(i: SiteInfo) -> bool:
        return 0 < i.train_positives < len(i.train)

    return [s for s in sites if len(info[s].train) >= strategy.min_scans and (strategy.single_class or both(info[s]))]


def rounds_for(strategy: StrategyConfig, train: TrainConfig, sites: list[str],
               info: dict[str, SiteInfo], aggregator: Aggregator | None = None) -> Callable[[int], Round]:
    """``cycle → round`` for ``sites``: always travelling, always averaging (fedavg, fedprox), or FedTM's averaging
    warm-up over :func:`warmup_sites` for the first ``strategy.rounds`` cycles, then travelling over all; averaging
    rounds combine their updates with ``aggregator`` (None: the weighted mean)."""
    travelling = TravellingRound(sites, train.order, train.seed)
    if strategy.name == "travelling":
        return lambda cycle: travelling

    def averaging(name: str, over: list[str]) -> AveragingRound:
        return AveragingRound(over, flower_strategy(name, strategy.mu), train.seed, strategy.fraction,
                              strategy.weighting, strategy.local_epochs, aggregator)

    if strategy.name in ("fedavg", "fedprox"):
        every = averaging(strategy.name, sites)
        return lambda cycle: every
    warm = warmup_sites(strategy, sites, info)
    warmup = averaging(strategy.warmup, warm) if warm else travelling
    return lambda cycle: warmup if cycle < strategy.rounds else travelling
