"""The ServerApp of ``flwr run .`` (and of a deployment): the run config names the experiment YAML and output.

Run config keys: ``config`` (experiment YAML), ``out`` (run folder, default
``runs/<name>``), ``nodes`` (SuperNodes to wait for), ``resume``, ``fast`` (default true:
fedqc's fast deployment path, where a reply's objects not yet on the SuperLink are asked
for again after 10 ms, not Flower's 1 s; :mod:`fedqc.transport.flower.pull_backoff`). The environment variable
``FEDQC_MESSAGE_LOG`` names a file where every reply from a site is described, without its values
(:func:`fedqc.transport.flower.grid.describe_reply`): what left the sites, for a privacy review.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedqc.config import load_config
from fedqc.errors import UserError
from fedqc.experiment.run_dir import RunDir
from fedqc.experiment.runner import run_experiment
from fedqc.transport.flower import pull_backoff
from fedqc.transport.flower.grid import GridTransport

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    cfg = load_config(str(rc["config"]))
    if cfg.scenario is not None:  # the ClientApps read the config's manifest, not a harmed copy of it
        raise UserError("scenario: `flwr run` trains the manifest as it is; inject harm beforehand with "
                        "`fedqc harm`, or run with `fedqc simulate`")
    out = Path(str(rc.get("out", f"runs/{cfg.name}")))
    resume = bool(rc.get("resume", False))
    RunDir(out).prepare(cfg, resume=resume, overwrite=False, ignore=(".flwr", "logs", "tls"))
    if rc.get("fast", True):
        from flwr.superlink.grid import http_grid

        if not pull_backoff.shorten(http_grid, "pull_objects"):
            log.warning("fast path: written for flwr %s; Flower's stock pulls are used", pull_backoff.FLWR_VERSION)
    message_log = os.environ.get("FEDQC_MESSAGE_LOG")
    transport = GridTransport(grid, cfg, expected_nodes=int(rc.get("nodes", 0)),
                              message_log=Path(message_log) if message_log else None)
    run_experiment(cfg, transport, out, resume=resume, quiet=True)
