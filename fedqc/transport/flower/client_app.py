"""The ClientApp: one site behind Flower. Handlers ``query`` (site facts, or its image checks), ``train``, ``evaluate``
(an :class:`~fedqc.protocol.EvalRequest`, or with ``parts`` in its fields a
:class:`~fedqc.protocol.CycleEvalRequest`: every part in one message).

A node finds its data from ``node_config``: in deployment ``site`` (and optionally its
own ``manifest``), in simulation ``partition-id`` indexing the sorted site names of the
experiment's manifest. The manifest comes from the factory argument (simulation), the
node config, or the run config's ``config`` (an experiment YAML, for ``flwr run``).
A node's ``device`` in its node config overrides the experiment's (a hospital knows
its own hardware).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedqc.config import ModelSpec
from fedqc.data.manifest import load_manifest
from fedqc.errors import UserError
from fedqc.protocol import CycleEvalRequest, EvalRequest, State, TrainRequest
from fedqc.site import Site
from fedqc.site.adversary import Adversary, lying_sites
from fedqc.transport.flower.codec import (
    ARRAYS,
    CONFIG,
    ERROR,
    IDS,
    encode_cycle_reply,
    encode_eval_reply,
    encode_site_info,
    encode_train_reply,
    model_from_config,
    record_to_state,
    site_options_from_config,
    slot,
)


@functools.lru_cache(maxsize=4)
def _manifest(path: str):
    return load_manifest(path, check_images=False)


@functools.lru_cache(maxsize=4)
def _names(manifest: str) -> list[str]:
    return sorted(_manifest(manifest)["site"].unique())


@functools.lru_cache(maxsize=None)  # one per site a process serves: a bounded cache thrashed on 83 sites
def _site(manifest: str, name: str, model: ModelSpec, options: tuple) -> Site | Adversary:
    """The site ``name``; a site that ``adversarial.csv`` beside the manifest names lies (a simulated attack:
    :class:`~fedqc.site.adversary.Adversary`, one per process, so a replay replays what this process answered)."""
    if name not in _names(manifest):
        raise UserError(f"site {name!r} is not in manifest {manifest}")
    table = _manifest(manifest)
    site = Site(name, table[table["site"] == name], model=model, **dict(options))
    if (lie := lying_sites(manifest).get(name)) is None:
        return site
    attack, params = lie
    peers = {params["target"]: _site(manifest, params["target"], model, options)} if attack == "framing" else {}
    return Adversary(site, attack, params, peers=peers)


def _resolve(context: Context, manifest: str | None, request: dict, name: str | None = None) -> Site:
    """The node's site, or (``name``, simulation only: every virtual node reads the one manifest) the site ``name``."""
    nc = context.node_config
    path = nc.get("manifest") or manifest
    if path is None and "config" in context.run_config:
        from fedqc.config import load_config

        path = str(load_config(str(context.run_config["config"])).manifest)
    if path is None:
        raise UserError("no manifest: set node_config 'manifest' or run_config 'config'")
    torch.set_num_threads(int(request.get("threads", 1)))
    site = nc.get("site")
    options = site_options_from_config({**request, **({"device": nc["device"]} if "device" in nc else {})})
    if name is not None and (site is not None or "partition-id" not in nc):
        raise UserError("a request naming several sites is answered by a simulation node only")
    if name is None:
        name = str(site) if site is not None else _names(str(path))[int(nc["partition-id"])]
    return _site(str(path), name, model_from_config(request), tuple(options.items()))


def make_client_app(manifest: str | None = None, mods: list | None = None) -> ClientApp:
    """A ClientApp bound to ``manifest`` (simulation) or resolving it per node; ``mods`` wrap every handler."""
    app = ClientApp(mods=mods or [])

    def answer(msg: Message, context: Context, work: Callable[[Site, dict], RecordDict]) -> Message:
        request = dict(msg.content[CONFIG])
        return Message(work(_resolve(context, manifest, request), request), reply_to=msg)

    def site_facts(site: Site, request: dict) -> RecordDict:
        if request.get("audit"):
            findings = ["\t".join(f) for f in site.check_images()]
            return RecordDict({IDS: ConfigRecord({"findings": findings} if findings else {})})
        return encode_site_info(site.info())

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return answer(msg, context, site_facts)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return answer(msg, context, lambda site, request: encode_train_reply(
            site.train(record_to_state(msg.content[ARRAYS]), TrainRequest.from_dict(request))))

    def scorer(request: dict) -> Callable[[Site, State], RecordDict]:
        """How a site answers an ``evaluate`` message of ``request``'s fields, on a state: its encoded reply."""
        if "parts" in request:
            cycle = CycleEvalRequest.from_dict(request)
            return lambda site, state: encode_cycle_reply(site.evaluate_cycle(state, cycle))
        one = EvalRequest.from_dict(request)
        return lambda site, state: encode_eval_reply(site.evaluate(state, one))

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        request = dict(msg.content[CONFIG])
        score = scorer(request)
        if "sites" not in request:
            return answer(msg, context, lambda site, request: score(site, record_to_state(msg.content[ARRAYS])))
        # a simulation fan-out in one message (GridTransport._evaluate_at_once): reply i of request["sites"] as
        # "metrics.i"/"ids.i" (a cycle evaluation's "verification.metrics.i", ...), or "error.i" for a site that
        # raised (codec.slot)
        state, content = record_to_state(msg.content[ARRAYS]), RecordDict()
        for i, name in enumerate(request["sites"]):
            try:
                for key, record in score(_resolve(context, manifest, request, str(name)), state).items():
                    content[slot(key, i)] = record
            except Exception as exc:  # noqa: BLE001 - a failing site loses its scores, not the fan-out
                content[slot(ERROR, i)] = ConfigRecord({"reason": f"{type(exc).__name__}: {exc}"})
        return Message(content, reply_to=msg)

    return app


app = make_client_app()
