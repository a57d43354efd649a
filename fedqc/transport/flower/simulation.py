"""Run a function over Flower's simulation engine: one virtual SuperNode per site of the manifest."""

from __future__ import annotations

import logging
from typing import Callable

from fedqc.config import ExperimentConfig
from fedqc.transport.flower.grid import GridTransport


def run_on_simulation(cfg: ExperimentConfig, main: Callable[[GridTransport], None], *, n_sites: int,
                      quiet: bool = False) -> None:
    """Start the engine with ``cfg.threads`` CPUs for one ClientApp at a time and run ``main(transport)``."""
    from flwr.simulation import run_simulation

    from fedqc.transport.flower.client_app import make_client_app
    from fedqc.transport.flower.server_app import make_server_app

    logging.getLogger("flwr").setLevel(logging.WARNING if quiet else logging.INFO)
    backend = {"client_resources": {"num_cpus": cfg.threads, "num_gpus": 0.0},
               "init_args": {"num_cpus": cfg.threads, "include_dashboard": False, "logging_level": "ERROR",
                             "log_to_driver": not quiet}}
    server = make_server_app(cfg, lambda transport, context: main(transport), expected_nodes=n_sites)
    run_simulation(server_app=server, client_app=make_client_app(str(cfg.manifest)), num_supernodes=n_sites,
                   backend_config=backend)
