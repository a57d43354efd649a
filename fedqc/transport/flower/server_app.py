"""fedqc's one ServerApp: it connects to the sites through the grid and hands the transport to the caller's ``main``.

What runs over the transport is the caller's (an experiment, a benchmark); this adapter
only knows the grid. Built for a given experiment config (the simulation engine,
:mod:`fedqc.transport.flower.simulation`), or for the one the run config names — the
ServerApp of ``flwr run .`` and of a deployment (:mod:`fedqc.experiment.flower_app`),
whose run config keys are: ``config`` (experiment YAML), ``nodes`` (SuperNodes to wait
for), ``fast`` (default true: fedqc's fast deployment path, where a reply's objects not
yet on the SuperLink are asked for again after 10 ms, not Flower's 1 s;
:mod:`fedqc.transport.flower.fast.pull_backoff`), and the caller's own (``out``,
``resume``). The environment variable ``FEDQC_MESSAGE_LOG`` names a file where every
reply from a site is described, without its values
(:func:`fedqc.transport.flower.grid.describe_reply`): what left the sites, for a privacy review.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedqc.config import ExperimentConfig, load_config
from fedqc.transport.flower.fast import FLWR_VERSION, pull_backoff
from fedqc.transport.flower.grid import GridTransport

log = logging.getLogger(__name__)

Main = Callable[[GridTransport, ExperimentConfig, Context], None]
Prepare = Callable[[ExperimentConfig, Context], None]


def make_server_app(main: Main, *, cfg: ExperimentConfig | None = None, expected_nodes: int = 0,
                    prepare: Prepare | None = None) -> ServerApp:
    """A ServerApp that calls ``prepare(cfg, context)`` (before the grid is contacted), builds a
    :class:`GridTransport` and calls ``main(transport, cfg, context)``.

    With ``cfg`` the app runs that experiment and waits for ``expected_nodes``; without, the run config gives
    the experiment and the deployment's settings (module docstring).
    """
    app = ServerApp()

    @app.main()
    def run(grid: Grid, context: Context) -> None:
        rc = context.run_config
        experiment = cfg if cfg is not None else load_config(str(rc["config"]))
        if prepare is not None:
            prepare(experiment, context)
        nodes, message_log = expected_nodes, None
        if cfg is None:
            nodes, message_log = int(rc.get("nodes", 0)), os.environ.get("FEDQC_MESSAGE_LOG")
            if rc.get("fast", True):
                from flwr.superlink.grid import http_grid

                if not pull_backoff.shorten(http_grid, "pull_objects"):
                    log.warning("fast path: written for flwr %s; Flower's stock pulls are used", FLWR_VERSION)
        transport = GridTransport(grid, experiment, expected_nodes=nodes,
                                  message_log=Path(message_log) if message_log else None)
        main(transport, experiment, context)

    return app
