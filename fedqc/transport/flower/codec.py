"""What crosses the wire: the state as one packed Array, requests as a ConfigRecord, replies as counts and scores
(MetricRecord) and scan identifiers (ConfigRecord). No image data is ever put in a message."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedqc.config import DataConfig, ExperimentConfig, ModelSpec
from fedqc.config.schema import model_dict, model_spec
from fedqc.protocol import (
    BN_MOMENT_KEYS,
    COUNT_KEYS,
    CYCLE_PARTS,
    MOMENT_KEYS,
    CycleEvalReply,
    CycleEvalRequest,
    EvalReply,
    ScanProblem,
    SiteInfo,
    State,
    TrainReply,
)

PACKED = "fedqc.packed"  # an Array's stype: a whole state, see :func:`state_to_record`
# The records of a message's content: the packed state, a request's settings, a reply's counts and scores, its ids
ARRAYS, CONFIG, METRICS, IDS = "arrays", "config", "metrics", "ids"
ERROR = "error"  # a site that raised, in a reply for several sites: its reason


def part_key(part: str, key: str) -> str:
    """The key of a cycle evaluation's ``part`` record ``key`` (``verification.metrics``, ``test.ids``)."""
    return f"{part}.{key}"


def slot(key: str, i: int) -> str:
    """The key of the ``i``-th site's record ``key`` in a reply for several sites (``metrics.0``, ``error.2``)."""
    return f"{key}.{i}"


def state_to_record(state: State) -> ArrayRecord:
    """The state as one Array ``state``: an 8-byte length, a JSON header ``[[name, dtype, shape], ...]``, then
    each array's C-order bytes in header order.

    Flower moves every Array as objects of its own, one request each on every leg (SuperLink, SuperNode,
    ClientApp): a model with its Adam state is ~85 arrays, ~170 requests per message and per leg, seconds
    per hop on a loaded machine. Packed, a state is two objects. The bytes are the arrays' own: bit for bit.
    """
    arrays = {k: np.asarray(v) for k, v in state.items()}
    head = json.dumps([[k, v.dtype.str, list(v.shape)] for k, v in arrays.items()]).encode()
    data = b"".join([len(head).to_bytes(8, "little"), head, *(v.tobytes(order="C") for v in arrays.values())])
    return ArrayRecord({"state": Array("|u1", (len(data),), PACKED, data)})


def packed_layout(data: bytes) -> list[tuple[str, str, tuple[int, ...]]]:
    """Name, dtype and shape of each array in a packed state, without reading a value."""
    n = int.from_bytes(data[:8], "little")
    return [(k, dtype, tuple(shape)) for k, dtype, shape in json.loads(data[8:8 + n])]


def _unpack(data: bytes) -> State:
    out, offset = {}, 8 + int.from_bytes(data[:8], "little")
    for k, dtype, shape in packed_layout(data):
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        out[k] = np.frombuffer(data, dtype=dt, count=count, offset=offset).reshape(shape).copy()
        offset += count * dt.itemsize
    return out


def record_to_state(record: ArrayRecord) -> State:
    """Writable arrays from :func:`state_to_record` (or from Flower's own one-Array-per-tensor records)."""
    out: State = {}
    for k, a in record.items():
        if a.stype == PACKED:
            out |= _unpack(a.data)
        else:
            out[k] = a.numpy()
    return out


def to_config(d: dict) -> ConfigRecord:
    """A ConfigRecord of ``d`` without empty lists or None (Flower cannot type them)."""
    return ConfigRecord({k: list(v) if isinstance(v, tuple) else v for k, v in d.items()
                         if v is not None and not (isinstance(v, (list, tuple)) and len(v) == 0)})


def site_config(cfg: ExperimentConfig) -> dict:
    """The request fields every message carries: which network to build, and how the site runs it (threads,
    device, repeatable kernels, scan caches; a missing cache bound means the machine's default)."""
    model, data = cfg.model, cfg.data
    return {**{f"model.{k}": v for k, v in model_dict(model).items()}, "threads": cfg.threads, "device": cfg.device,
            "deterministic": cfg.deterministic, "data.cache_gb": data.cache_gb, "data.cache_dir": data.cache_dir,
            "data.prefetch": data.prefetch, "data.device_cache_gb": data.device_cache_gb}


def model_from_config(config: dict) -> ModelSpec:
    return model_spec({k[len("model."):]: v for k, v in config.items() if k.startswith("model.")})


def site_options_from_config(config: dict) -> dict:
    """:class:`fedqc.site.Site`'s keywords (device, data, deterministic) from a request's fields."""
    gb = lambda key: None if config.get(key) is None else float(config[key])  # noqa: E731
    data = DataConfig(cache_gb=gb("data.cache_gb"), cache_dir=config.get("data.cache_dir"),
                      prefetch=None if config.get("data.prefetch") is None else int(config["data.prefetch"]),
                      device_cache_gb=gb("data.device_cache_gb"))
    return {"device": str(config.get("device", "cpu")), "data": data,
            "deterministic": bool(config.get("deterministic", False))}


def unslot(content: RecordDict, i: int) -> dict:
    """The records of the ``i``-th site of a reply for several sites, under their own keys (:func:`slot` undone)."""
    out = {}
    for key, record in content.items():
        name, _, index = key.rpartition(".")
        if index == str(i):
            out[name] = record
    return out


def _problems(items: list[str]) -> list[ScanProblem]:
    return [ScanProblem(*x.split("\t", 1)) for x in items]


def encode_site_info(info: SiteInfo) -> RecordDict:
    return RecordDict({METRICS: MetricRecord({"val": info.n_val, "test": info.n_test,
                                                "train_positives": info.train_positives}),
                       IDS: to_config({"site": info.name, "train": list(info.train)})})


def decode_site_info(content: RecordDict) -> SiteInfo:
    m, ids = content[METRICS], content[IDS]
    return SiteInfo(str(ids["site"]), tuple(str(s) for s in ids.get("train", [])), int(m["val"]), int(m["test"]),
                    int(m["train_positives"]))


def encode_train_reply(res: TrainReply) -> RecordDict:
    return RecordDict({
        ARRAYS: state_to_record(res.state),
        METRICS: MetricRecord({"n_scans": res.n_scans, "loss": float(res.loss), "seconds": float(res.seconds),
                                 "data_wait_s": float(res.data_wait_s), "steps": res.steps}),
        IDS: to_config({"subjects": res.subjects, "skipped": [f"{p.subject}\t{p.reason}" for p in res.skipped],
                        "answers": res.answers}),
    })


def decode_train_reply(content: RecordDict) -> TrainReply:
    m, ids = content[METRICS], content[IDS]
    return TrainReply(record_to_state(content[ARRAYS]), int(m["n_scans"]), float(m["loss"]), float(m["seconds"]),
                      list(ids.get("subjects", [])), _problems(ids.get("skipped", [])),
                      float(m.get("data_wait_s", 0.0)), int(m.get("steps", 0)),
                      str(ids.get("answers", "")))


TARGET_COLUMNS = ("label_", "score_")  # a multi-label model's further targets and scores


def encode_eval_reply(res: EvalReply) -> RecordDict:
    s = res.scores
    metrics = {k: float(res.counts[k]) for k in COUNT_KEYS}
    if len(s):
        metrics |= {"score": [float(x) for x in s["score"]], "label": [int(x) for x in s["label"]],
                    "age": [float(x) for x in s["age"]]}
        if "ood" in s:
            metrics["ood"] = [float(x) for x in s["ood"]]
        metrics |= {c: [float(x) for x in s[c]] for c in s.columns if c.startswith(TARGET_COLUMNS)}
    if res.moments is not None:
        metrics |= {k: [float(x) for x in v] for k, v in res.moments.items()}
    ids = {"subject": list(s["subject"]), "sex": list(s["sex"]), "site": list(s["site"]),
           "skipped": [f"{p.subject}\t{p.reason}" for p in res.skipped], "answers": res.answers}
    return RecordDict({METRICS: MetricRecord(metrics), IDS: to_config(ids)})


def decode_eval_reply(content: RecordDict | dict) -> EvalReply:
    m, ids = content[METRICS], content[IDS]
    scores = pd.DataFrame({"subject": list(ids.get("subject", [])), "site": list(ids.get("site", [])),
                           "label": list(m.get("label", [])), "score": list(m.get("score", [])),
                           "sex": list(ids.get("sex", [])), "age": list(m.get("age", []))})
    if "ood" in m:
        scores["ood"] = list(m["ood"])
    for c in (c for c in m.keys() if c.startswith(TARGET_COLUMNS)):
        scores[c] = [int(x) for x in m[c]] if c.startswith("label_") else list(m[c])
    moments = {k: np.asarray(m[k], dtype=float) for k in MOMENT_KEYS + BN_MOMENT_KEYS if k in m} or None
    return EvalReply({k: float(m[k]) for k in COUNT_KEYS}, scores, _problems(ids.get("skipped", [])), moments=moments,
                     answers=str(ids.get("answers", "")))


def encode_cycle_reply(res: CycleEvalReply) -> RecordDict:
    """Each part's :func:`encode_eval_reply` records under its part's prefix (:func:`part_key`): the same records a
    part's reply would carry alone, in one message."""
    return RecordDict({part_key(name, key): record for name in CYCLE_PARTS if (part := getattr(res, name)) is not None
                       for key, record in encode_eval_reply(part).items()})


def decode_cycle_reply(content: RecordDict | dict, request: CycleEvalRequest) -> CycleEvalReply:
    """The parts ``request`` asked for; a part the reply lacks is :meth:`EvalReply.failed`."""
    def part(name: str) -> EvalReply:
        keys = [part_key(name, key) for key in (METRICS, IDS)]
        if not all(k in content for k in keys):
            return EvalReply.failed(f"the reply lacks its {name} part")
        return decode_eval_reply({key: content[k] for key, k in zip((METRICS, IDS), keys)})

    return CycleEvalReply(**{name: part(name) for name, _ in request.parts()})
