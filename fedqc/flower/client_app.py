"""ClientApp: one site. Handlers ``query`` (site name, counts, training ids, audit), ``train``, ``evaluate``.

A node finds its data from ``node_config``: in deployment ``site`` (and optionally its
own ``manifest``), in simulation ``partition-id`` indexing the sorted site names of the
experiment's manifest. The manifest comes from the factory argument (simulation), the
node config, or the run config's ``config`` (an experiment YAML, for ``flwr run``).
"""

from __future__ import annotations

import functools

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedqc.data.manifest import load_manifest
from fedqc.flower.codec import encode_eval_reply, encode_train_reply, record_to_state, to_config
from fedqc.site import ModelSpec, Site
from fedqc.transport import evaluate_request, train_request


@functools.lru_cache(maxsize=4)
def _manifest(path: str):
    return load_manifest(path, check_images=False)


@functools.lru_cache(maxsize=None)  # one per site a process serves: a bounded cache thrashed on 83 sites
def _site(manifest: str, site: str | None, partition: int | None, model: ModelSpec) -> Site:
    table = _manifest(manifest)
    names = sorted(table["site"].unique())
    name = site if site is not None else names[partition]
    if name not in names:
        raise ValueError(f"site {name!r} is not in manifest {manifest}")
    return Site(name, table[table["site"] == name], model=model)


def _resolve(context: Context, manifest: str | None, request: dict) -> Site:
    nc = context.node_config
    path = nc.get("manifest") or manifest
    if path is None and "config" in context.run_config:
        from fedqc.config import load_config

        path = str(load_config(str(context.run_config["config"])).manifest)
    if path is None:
        raise ValueError("no manifest: set node_config 'manifest' or run_config 'config'")
    model = ModelSpec(str(request["model.name"]), float(request["model.width"]),
                      tuple(int(x) for x in request["model.input_shape"]))
    torch.set_num_threads(int(request.get("threads", 1)))
    site = nc.get("site")
    return _site(str(path), None if site is None else str(site),
                 None if site is not None else int(nc["partition-id"]), model)


def make_client_app(manifest: str | None = None, mods: list | None = None) -> ClientApp:
    """A ClientApp bound to ``manifest`` (simulation) or resolving it per node; ``mods`` wrap every handler."""
    app = ClientApp(mods=mods or [])

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        request = dict(msg.content["config"])
        site = _resolve(context, manifest, request)
        ids = {"site": site.name, "train": site.subjects("train")}
        if request.get("audit"):
            ids["flagged"] = ["\t".join(f) for f in site.audit()]
        ids = to_config(ids)
        return Message(RecordDict({"metrics": MetricRecord(site.info()), "ids": ids}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        request = dict(msg.content["config"])
        site = _resolve(context, manifest, request)
        res = train_request(site, record_to_state(msg.content["arrays"]), request)
        return Message(encode_train_reply(res), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        request = dict(msg.content["config"])
        site = _resolve(context, manifest, request)
        res = evaluate_request(site, record_to_state(msg.content["arrays"]), request)
        return Message(encode_eval_reply(res), reply_to=msg)

    return app


app = make_client_app()
