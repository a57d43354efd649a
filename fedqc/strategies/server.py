"""The server's step after an averaging round: Flower's FedAvgM, FedAdagrad, FedAdam and FedYogi, called on arrays.

Each of Flower's strategies (:mod:`flwr.serverapp.strategy`) computes its step inside
``aggregate_train``: it first lets :class:`~flwr.serverapp.strategy.FedAvg` average the
reply *messages*, then takes the change from the model it sent (``current_arrays``) as a
pseudo-gradient for SGD with momentum (FedAvgM, Hsu et al. 2019) or an adaptive optimiser
(FedAdagrad / FedAdam / FedYogi, Reddi et al. 2021). Messages can only be built inside a
Flower run, so the class used here is Flower's own with one method underneath it replaced:
:class:`OnContents` sits between Flower's optimiser and FedAvg in the method order and
averages the replies' *contents* (Flower's ``aggregate_arrayrecords``, in sorted-site order
as :func:`fedqc.strategies.averaging.average`), and Flower's ``aggregate_train`` of the
optimiser runs unchanged on top of it. What is ours: setting ``current_arrays`` to the
round's model before the step (Flower's ``configure_train`` does it in a Flower run), the
round number (``cycle + 1``, as Flower counts from 1), and saving the optimiser's state.

**Which arrays.** The optimiser steps the trainable floating-point arrays; BatchNorm's
running statistics and batch counter are statistics, not parameters, and take the plain
average (the calibration may replace them, :mod:`fedqc.strategies.calibration`), as do the
arrays a site keeps (FedBN's BatchNorm layers, :mod:`fedqc.strategies.averaging`).

**State.** FedAvgM's momentum and FedOpt's first and second moments live in the strategy
object between rounds; :meth:`ServerOptimiser.snapshot` returns them as plain arrays for
the checkpoint and :meth:`~ServerOptimiser.restore` puts them back, so a resumed run takes
the same steps as one never stopped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedqc.config import StrategyConfig
from fedqc.protocol import State

BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")
# config key → the argument of Flower's strategy it sets (None in the config: Flower's own default)
FLOWER_ARGUMENTS = {"fedavgm": {"server_lr": "server_learning_rate", "server_momentum": "server_momentum"},
                    "fedadagrad": {"server_lr": "eta", "server_tau": "tau"},
                    "fedadam": {"server_lr": "eta", "server_beta_1": "beta_1", "server_beta_2": "beta_2",
                                "server_tau": "tau"},
                    "fedyogi": {"server_lr": "eta", "server_beta_1": "beta_1", "server_beta_2": "beta_2",
                                "server_tau": "tau"}}


@functools.cache
def _on_contents():
    """:class:`OnContents`, built on first use so that reading a config never imports Flower. The replies' checks
    that Flower's FedAvg makes on Messages (one ArrayRecord, the same keys) are the protocol's here
    (:func:`fedqc.protocol.check_update` before a reply enters a round)."""
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    class OnContents(FedAvg):
        """FedAvg's ``aggregate_train`` on reply contents (RecordDicts) instead of Messages: Flower's weighted
        average of their arrays (``aggregate_arrayrecords``), no metrics."""

        def aggregate_train(self, server_round, replies):
            contents = list(replies)
            return (aggregate_arrayrecords(contents, self.weighted_by_key) if contents else None), None

    return OnContents


def flower_optimiser(strategy: StrategyConfig):
    """Flower's strategy class of ``strategy.server`` under :class:`OnContents`, with the configured arguments."""
    from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi

    base = {"fedavgm": FedAvgM, "fedadagrad": FedAdagrad, "fedadam": FedAdam, "fedyogi": FedYogi}[strategy.server]
    cls = type(f"{base.__name__}OnContents", (base, _on_contents()), {"__module__": __name__})
    args = {arg: getattr(strategy, key) for key, arg in FLOWER_ARGUMENTS[strategy.server].items()
            if getattr(strategy, key) is not None}
    return cls(**args)


def stepped_keys(state: State, kept: frozenset[str] = frozenset()) -> list[str]:
    """The keys of ``state`` the server optimiser steps: floating-point, not a BatchNorm statistic, not ``kept``."""
    return [k for k, v in state.items() if np.issubdtype(v.dtype, np.floating) and not k.endswith(BUFFER_SUFFIXES)
            and k not in kept]


@dataclass
class ServerOptimiser:
    """Flower's server optimiser ``flower`` (from :func:`flower_optimiser`) on states; keeps its state across rounds."""

    flower: object

    def step(self, sent: State, updates: list[tuple[str, State, float]], average: State, server_round: int,
             kept: frozenset[str] = frozenset()) -> State:
        """``average`` (the round's plain average of ``updates`` — site, arrays, weight — from ``sent``) with the
        :func:`stepped_keys` replaced by Flower's step on the same updates; each array keeps its dtype."""
        from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

        keys = stepped_keys(sent, kept)
        key = self.flower.weighted_by_key
        contents = [RecordDict({"arrays": ArrayRecord({k: Array(np.ascontiguousarray(state[k])) for k in keys}),
                                "metrics": MetricRecord({key: float(w)})})
                    for _, state, w in sorted(updates, key=lambda u: u[0])]
        current = {k: np.ascontiguousarray(sent[k]) for k in keys}
        # what Flower's configure_train stores: FedAvgM an ArrayRecord, FedOpt's subclasses a dict of ndarrays
        self.flower.current_arrays = (ArrayRecord({k: Array(v) for k, v in current.items()})
                                      if hasattr(self.flower, "momentum_vector") else current)
        stepped, _ = self.flower.aggregate_train(server_round, contents)
        return {**average, **{k: stepped[k].numpy().astype(sent[k].dtype).reshape(sent[k].shape) for k in keys}}

    def snapshot(self) -> dict[str, dict[str, np.ndarray]]:
        """The optimiser's state as plain arrays: FedAvgM's momentum (by key), FedOpt's ``m_t`` and ``v_t``."""
        f = self.flower
        if hasattr(f, "momentum_vector"):
            keys = list(f.current_arrays.keys()) if f.current_arrays is not None else []
            return {"momentum": dict(zip(keys, f.momentum_vector))} if f.momentum_vector is not None else {}
        return {name: dict(getattr(f, name)) for name in ("m_t", "v_t") if getattr(f, name)}

    def restore(self, snapshot: dict[str, dict[str, np.ndarray]]) -> None:
        """Put back what :meth:`snapshot` returned (FedAvgM's momentum in the order of the stepped keys, which
        :meth:`step` keeps)."""
        f = self.flower
        if hasattr(f, "momentum_vector"):
            f.momentum_vector = list(snapshot["momentum"].values()) if "momentum" in snapshot else None
            return
        for name in ("m_t", "v_t"):
            setattr(f, name, dict(snapshot[name]) if name in snapshot else None)
