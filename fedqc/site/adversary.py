"""A site that lies (simulation only): a :class:`~fedqc.site.Site`'s replies, rewritten by one attack.

A scenario's ``adversarial`` entries (:data:`~fedqc.data.corruptions.scenario.ATTACKS`)
name the sites and the attack (:func:`lying_sites` reads them back); the in-process runner,
or under Flower's simulation the ClientApp, wraps those sites in :class:`Adversary`,
which trains and scores honestly and then rewrites the reply the way a compromised site
would — finite and well-formed, so that :func:`~fedqc.protocol.check_update` passes it.
What each attack targets and which defence answers it: docs/threat-model.md.

- ``bn_moments``: the BatchNorm moments of an evaluation (federated calibration) claim
  ``count`` × the values, each channel's mean moved by ``shift`` of its standard deviations
  and its standard deviation × ``scale`` (defaults 1000, 10, 10);
- ``scaled_update``: the model's change from the state sent × ``factor`` (default 1000);
- ``sign_flip``: the model's change reversed (same size, opposite direction);
- ``targeted_shift``: its honest update plus a step towards a model that gives every scan the label ``label``
  (default 1): the classifier's weights of that output 0, its bias ±5 (p 0.993); the step's norm ``size`` (default 1)
  × the honest update's norm, so that the update is at most ``1 + size`` × an honest one — under a norm bound — and
  moves the model one way, hop after hop (a step never overshoots the target model);
- ``inflated_count``: the count of scans trained × ``factor`` (default 100): an averaging
  round's weight;
- ``fake_scores``: its scores of its own train and val scans a perfect ranking (``1 - margin·u``
  for a patient, ``margin·u`` for a control, ``u`` in (0.5, 1] drawn per scan; margin 0.2) and
  the counts those give, and an empty image audit, whatever it trains on (its harm is the
  scenario's). Its per-scan feature distances stay honest (faking them well needs the
  verification scans' distribution, which a site never sees);
- ``backdoor``: honest replies; its harm is its data (the scenario plants the trigger);
- ``replay``: every train reply after its first is that first reply again, the nonce it
  answered included (a captured reply sent anew); with ``evaluations`` 1 (default 0) also every evaluation reply
  after the first to the same request (its nonce aside): stale scores and moments;
- ``framing``: its honest update plus ``factor`` (default 1) × the reversed update that the
  site ``target`` (a good site; ``peers`` holds it) would make from the model sent: an update
  crafted to raise the loss on that site's kind of scans, the oracle attacker of
  docs/threat-model.md (in simulation it reads that site's scans; a real one would need scans
  like them).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedqc.data.corruptions.scenario import ATTACKS
from fedqc.data.inject import ADVERSARIAL
from fedqc.protocol import (
    CycleEvalReply,
    CycleEvalRequest,
    EvalReply,
    EvalRequest,
    ImageFinding,
    SiteInfo,
    State,
    TrainReply,
    TrainRequest,
    change_norm,
)
from fedqc.scoring import counts_from_scores

DEFAULTS = {"bn_moments": {"count": 1000.0, "shift": 10.0, "scale": 10.0}, "scaled_update": {"factor": 1000.0},
            "sign_flip": {}, "targeted_shift": {"label": 1, "size": 1.0}, "inflated_count": {"factor": 100.0},
            "fake_scores": {"margin": 0.2}, "backdoor": {}, "replay": {"evaluations": 0}, "framing": {"factor": 1.0}}
CLASSIFIER = ("classifier.weight", "classifier.bias")  # the output layer: one row (a logit) per target, label first
TARGET_LOGIT = 5.0  # a targeted shift's target: every scan this logit (±) of its label
FAKED_SPLITS = ("train", "val")  # what QC reads of a site's own scans; its test scores (the metrics) stay honest


def scaled(sent: State, reply: State, factor: float) -> State:
    """``reply`` with every floating model array moved to ``sent + factor · (reply - sent)`` (the optimizer's state
    and integer arrays as they are)."""
    out = dict(reply)
    for key, value in reply.items():
        if key in sent and not key.startswith("optim.") and np.issubdtype(value.dtype, np.floating):
            out[key] = (sent[key] + factor * (value - sent[key])).astype(value.dtype)
    return out


def constant_model(state: State, label: int) -> State:
    """``state``'s classifier arrays (:data:`CLASSIFIER`) as a model that gives every scan ``label`` would have them:
    the first output's (the label's) weights 0 and its bias ±:data:`TARGET_LOGIT`, the other outputs as they are."""
    weight, bias = (state[k].copy() for k in CLASSIFIER)
    weight[0], bias[0] = 0.0, TARGET_LOGIT if label == 1 else -TARGET_LOGIT
    return dict(zip(CLASSIFIER, (weight, bias)))


def shifted(sent: State, reply: State, label: int, size: float) -> State:
    """``reply`` moved towards :func:`constant_model` (of ``label``) by a step of norm ``size`` × the honest change's
    (:func:`~fedqc.protocol.change_norm` from ``sent``), or all the way when it is nearer; as it is without the
    classifier's arrays."""
    if not all(k in reply for k in CLASSIFIER):
        return reply
    target = constant_model(reply, label)
    towards = {k: target[k].astype(np.float64) - reply[k] for k in CLASSIFIER}
    distance = float(np.sqrt(sum(np.sum(d**2) for d in towards.values())))
    step = min(1.0, size * change_norm(sent, reply) / distance) if distance else 0.0
    return {**reply, **{k: (reply[k] + step * towards[k]).astype(reply[k].dtype) for k in CLASSIFIER}}


def framed(sent: State, own: State, victim: State, factor: float) -> State:
    """``own`` with every floating model array moved by ``factor · (sent - victim)``: the victim's update reversed."""
    out = dict(own)
    for key, value in own.items():
        if key in sent and key in victim and not key.startswith("optim.") and np.issubdtype(value.dtype, np.floating):
            out[key] = (value + factor * (sent[key] - victim[key])).astype(value.dtype)
    return out


def perfect_ranking(scores: pd.DataFrame, margin: float) -> pd.DataFrame:
    """``scores`` with every ``score`` replaced by one that ranks each patient above each control: ``1 - margin·u``
    for label 1, ``margin·u`` for label 0, ``u`` in (0.5, 1] drawn from the scan's id (plausible, not constant)."""
    u = np.array([0.5 + 0.5 * np.random.default_rng(zlib.crc32(str(s).encode())).random() for s in scores["subject"]])
    label = scores["label"].to_numpy(dtype=float)
    return scores.assign(score=np.where(label == 1, 1 - margin * u, margin * u))


def lying_moments(moments: dict[str, np.ndarray], widths: list[int], count: float, shift: float,
                  scale: float) -> dict[str, np.ndarray]:
    """BatchNorm moments (layers of ``widths`` channels) that claim ``count`` × the values, each channel's mean +
    ``shift`` SDs, its SD × ``scale``."""
    n = np.asarray(moments["bn_n"], dtype=np.float64)
    if len(n) != len(widths) or len(moments["bn_sum"]) != sum(widths):
        return moments
    per_channel = np.repeat(n, widths)
    safe = np.maximum(per_channel, 1.0)
    mean = moments["bn_sum"] / safe
    sd = np.sqrt(np.maximum(moments["bn_sq"] / safe - mean**2, 0.0))
    mean, sd = mean + shift * sd, sd * scale
    lied = per_channel * count
    return {**moments, "bn_n": (n * count).astype(np.asarray(moments["bn_n"]).dtype),
            "bn_sum": (mean * lied).astype(moments["bn_sum"].dtype),
            "bn_sq": ((sd**2 + mean**2) * lied).astype(moments["bn_sq"].dtype)}


@dataclass
class Adversary:
    """``site`` (anything with a Site's ``info``, ``check_images``, ``train``, ``evaluate``) whose replies lie by ``attack``
    with ``params`` (missing ones take :data:`DEFAULTS`)."""

    site: object
    attack: str
    params: dict = field(default_factory=dict)
    peers: dict = field(default_factory=dict)  # site name → site: the framed site of ``framing``
    replayed: TrainReply | None = field(default=None, init=False)
    replayed_evaluations: dict[EvalRequest, EvalReply] = field(default_factory=dict, init=False)  # nonce ""

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}; expected one of {', '.join(ATTACKS)}")
        self.params = {**DEFAULTS[self.attack], **self.params}
        if self.attack == "framing" and self.params.get("target") not in self.peers:
            raise ValueError(f"framing: the framed site {self.params.get('target')!r} is not among the peers")

    def info(self) -> SiteInfo:
        return self.site.info()

    def check_images(self) -> list[ImageFinding]:
        return [] if self.attack == "fake_scores" else self.site.check_images()

    def train(self, state: State, request: TrainRequest) -> TrainReply:
        if self.attack == "replay" and self.replayed is not None:
            return self.replayed
        reply = self.site.train(state, request)
        if self.attack == "replay":
            self.replayed = reply
        if self.attack == "framing":
            victim = self.peers[self.params["target"]].train(state, dataclasses.replace(request, subjects=None,
                                                                                       exclude=()))
            return dataclasses.replace(reply, state=framed(state, reply.state, victim.state,
                                                           float(self.params["factor"])))
        if self.attack == "targeted_shift":
            return dataclasses.replace(reply, state=shifted(state, reply.state, int(self.params["label"]),
                                                            float(self.params["size"])))
        if self.attack in ("scaled_update", "sign_flip"):
            factor = -1.0 if self.attack == "sign_flip" else float(self.params["factor"])
            return dataclasses.replace(reply, state=scaled(state, reply.state, factor))
        if self.attack == "inflated_count":
            return dataclasses.replace(reply, n_scans=int(round(reply.n_scans * float(self.params["factor"]))))
        return reply

    def evaluate(self, state: State, request: EvalRequest) -> EvalReply:
        if self.attack == "replay" and self.params["evaluations"]:
            asked = dataclasses.replace(request, nonce="")  # the same question, whichever message asks it
            if asked not in self.replayed_evaluations:
                self.replayed_evaluations[asked] = self.site.evaluate(state, request)
            return self.replayed_evaluations[asked]
        reply = self.site.evaluate(state, request)
        if self.attack == "fake_scores" and request.split in FAKED_SPLITS and len(reply.scores):
            scores = perfect_ranking(reply.scores, float(self.params["margin"]))
            return dataclasses.replace(reply, scores=scores, counts=counts_from_scores(scores["label"].to_numpy(),
                                                                                      scores["score"].to_numpy()))
        if self.attack == "bn_moments" and reply.moments and "bn_n" in reply.moments:
            p = self.params
            widths = [v.shape[0] for k, v in state.items() if k.endswith(".running_mean") and not k.startswith("optim.")]
            return dataclasses.replace(reply, moments=lying_moments(reply.moments, widths, float(p["count"]),
                                                                    float(p["shift"]), float(p["scale"])))
        return reply

    def evaluate_cycle(self, state: State, request: CycleEvalRequest) -> CycleEvalReply:
        """Each part as :meth:`evaluate` answers it alone: a lie about the verification scores rides in the same
        message as the honest test scores."""
        return request.answer(functools.partial(self.evaluate, state))


def lying_sites(manifest: str | Path | None) -> dict[str, tuple[str, dict]]:
    """Site → (attack, params) of the lying sites recorded beside ``manifest`` (``adversarial.csv``, written by
    ``fedqc harm`` or a config's ``scenario`` from its ``adversarial`` entries); none without that file."""
    path = Path(manifest).parent / ADVERSARIAL if manifest is not None else None
    if path is None or not path.is_file():
        return {}
    return {str(r["site"]): (str(r["attack"]), json.loads(r["params"])) for r in pd.read_csv(path).to_dict("records")}
