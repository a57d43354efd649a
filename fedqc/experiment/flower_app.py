"""The ServerApp of ``flwr run .`` and of a deployment (``pyproject.toml``'s ``serverapp``): the experiment the run
config names, run over :func:`fedqc.transport.flower.server_app.make_server_app`.

Run config keys beside the ServerApp's own (``config``, ``nodes``, ``fast``): ``out`` (run
folder, default ``runs/<name>``) and ``resume``.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context

from fedqc.config import ExperimentConfig
from fedqc.errors import UserError
from fedqc.experiment.run_dir import RunDir
from fedqc.experiment.runner import run_experiment
from fedqc.transport.flower.grid import GridTransport
from fedqc.transport.flower.server_app import make_server_app


def _out(cfg: ExperimentConfig, context: Context) -> Path:
    return Path(str(context.run_config.get("out", f"runs/{cfg.name}")))


def prepare(cfg: ExperimentConfig, context: Context) -> None:
    """Refuse a config with a scenario; prepare the run folder (before any site is contacted)."""
    if cfg.scenario is not None:  # the ClientApps read the config's manifest, not a harmed copy of it
        raise UserError("scenario: `flwr run` trains the manifest as it is; inject harm beforehand with "
                        "`fedqc harm`, or run with `fedqc simulate`")
    RunDir(_out(cfg, context)).prepare(cfg, resume=bool(context.run_config.get("resume", False)), overwrite=False,
                                       ignore=(".flwr", "logs", "tls"))


def main(transport: GridTransport, cfg: ExperimentConfig, context: Context) -> None:
    run_experiment(cfg, transport, _out(cfg, context), resume=bool(context.run_config.get("resume", False)),
                   quiet=True)


app = make_server_app(main, prepare=prepare)
