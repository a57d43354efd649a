"""What crosses the wire: model state as an ArrayRecord, requests as a ConfigRecord,
replies as counts/scores (MetricRecord) and subject identifiers (ConfigRecord).

No image data is ever put in a message: only the model's arrays, numbers and ids.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedqc.metrics import COUNT_KEYS
from fedqc.site import EvalResult, TrainResult
from fedqc.state import State


def state_to_record(state: State) -> ArrayRecord:
    return ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in state.items()})


def record_to_state(record: ArrayRecord) -> State:
    return {k: a.numpy() for k, a in record.items()}


def to_config(d: dict) -> ConfigRecord:
    """A ConfigRecord of ``d`` without empty lists or None (Flower cannot type them)."""
    return ConfigRecord({k: list(v) if isinstance(v, tuple) else v for k, v in d.items()
                         if v is not None and not (isinstance(v, (list, tuple)) and len(v) == 0)})


def encode_train_reply(res: TrainResult) -> RecordDict:
    return RecordDict({
        "arrays": state_to_record(res.state),
        "metrics": MetricRecord({"n_scans": res.n_scans, "loss": float(res.loss), "seconds": float(res.seconds)}),
        "ids": to_config({"subjects": res.subjects, "skipped": [f"{s}\t{r}" for s, r in res.skipped]}),
    })


def _skipped(ids: ConfigRecord) -> list[tuple[str, str]]:
    return [tuple(x.split("\t", 1)) for x in ids.get("skipped", [])]


def decode_train_reply(content: RecordDict) -> TrainResult:
    m, ids = content["metrics"], content["ids"]
    return TrainResult(record_to_state(content["arrays"]), int(m["n_scans"]), float(m["loss"]), float(m["seconds"]),
                       list(ids.get("subjects", [])), _skipped(ids))


def encode_eval_reply(res: EvalResult) -> RecordDict:
    s = res.scores
    metrics = {k: float(res.counts[k]) for k in COUNT_KEYS}
    if len(s):
        metrics |= {"score": [float(x) for x in s["score"]], "label": [int(x) for x in s["label"]],
                    "age": [float(x) for x in s["age"]]}
    ids = {"subject": list(s["subject"]), "sex": list(s["sex"]), "site": list(s["site"]),
           "skipped": [f"{a}\t{b}" for a, b in res.skipped]}
    return RecordDict({"metrics": MetricRecord(metrics), "ids": to_config(ids)})


def decode_eval_reply(content: RecordDict) -> EvalResult:
    m, ids = content["metrics"], content["ids"]
    scores = pd.DataFrame({"subject": list(ids.get("subject", [])), "site": list(ids.get("site", [])),
                           "label": list(m.get("label", [])), "score": list(m.get("score", [])),
                           "sex": list(ids.get("sex", [])), "age": list(m.get("age", []))})
    return EvalResult({k: float(m[k]) for k in COUNT_KEYS}, scores, _skipped(ids))
