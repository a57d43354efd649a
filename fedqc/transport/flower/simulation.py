"""Run a function over Flower's simulation engine: one virtual SuperNode per site of the manifest."""

from __future__ import annotations

import logging
from typing import Callable

from fedqc.config import ExperimentConfig
from fedqc.transport.flower.grid import GridTransport


def gpus_per_site(cfg: ExperimentConfig) -> float:
    """GPUs a ClientApp actor holds: ``cfg.gpus_per_site``, else a whole GPU when the device is one, else 0.

    Ray shows an actor only the GPUs it holds (with 0 it hides them all). The travelling
    model trains one site at a time, so one actor with a whole GPU is the default;
    fractions let several actors share a GPU (concurrent evaluation) and need as many
    CPUs in ``threads`` × actors.
    """
    if cfg.gpus_per_site is not None:
        return float(cfg.gpus_per_site)
    from fedqc.site.device import resolve

    return 1.0 if resolve(cfg.device).type == "cuda" else 0.0


def run_on_simulation(cfg: ExperimentConfig, main: Callable[[GridTransport], None], *, n_sites: int,
                      quiet: bool = False) -> None:
    """Start the engine with ``cfg.threads`` CPUs (and :func:`gpus_per_site` GPUs) for one ClientApp at a time and
    run ``main(transport)``."""
    from flwr.simulation import run_simulation

    from fedqc.transport.flower.client_app import make_client_app
    from fedqc.transport.flower.fast import vce
    from fedqc.transport.flower.server_app import make_server_app

    logging.getLogger("flwr").setLevel(logging.WARNING if quiet else logging.INFO)
    vce.install()  # a pushed message reaches its ClientApp at once, not on the engine's next 100 ms sweep
    backend = {"client_resources": {"num_cpus": cfg.threads, "num_gpus": gpus_per_site(cfg)},
               "init_args": {"num_cpus": cfg.threads, "include_dashboard": False, "logging_level": "ERROR",
                             "log_to_driver": not quiet}}
    server = make_server_app(lambda transport, *_: main(transport), cfg=cfg, expected_nodes=n_sites)
    run_simulation(server_app=server, client_app=make_client_app(str(cfg.manifest)), num_supernodes=n_sites,
                   backend_config=backend)
