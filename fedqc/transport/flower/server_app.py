"""A ServerApp that connects to the sites through the grid and hands the transport to the caller's ``main``.

What runs over the transport is the caller's (an experiment, a benchmark); this adapter
only knows the grid.
"""

from __future__ import annotations

from typing import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedqc.config import ExperimentConfig
from fedqc.transport.flower.grid import GridTransport


def make_server_app(cfg: ExperimentConfig, main: Callable[[GridTransport, Context], None], *,
                    expected_nodes: int | Callable[[Context], int] = 0) -> ServerApp:
    """A ServerApp that builds a :class:`GridTransport` for ``cfg`` and calls ``main(transport, context)``."""
    app = ServerApp()

    @app.main()
    def run(grid: Grid, context: Context) -> None:
        nodes = expected_nodes(context) if callable(expected_nodes) else expected_nodes
        main(GridTransport(grid, cfg, expected_nodes=nodes), context)

    return app
