"""A site that lies (simulation only): a :class:`~fedqc.site.Site`'s replies, rewritten by one attack.

A scenario's ``adversarial`` entries (:data:`~fedqc.data.corruptions.scenario.ATTACKS`)
name the sites and the attack; the in-process engine wraps those sites in
:class:`Adversary`, which trains and scores honestly and then rewrites the reply the way
a compromised site would — finite and well-formed, so that :func:`~fedqc.protocol.check_update`
passes it. What each attack targets and which defence answers it: docs/threat-model.md.

- ``bn_moments``: the BatchNorm moments of an evaluation (federated calibration) claim
  ``count`` × the values, each channel's mean moved by ``shift`` of its standard deviations
  and its standard deviation × ``scale`` (defaults 1000, 10, 10);
- ``scaled_update``: the model's change from the state sent × ``factor`` (default 1000);
- ``sign_flip``: the model's change reversed (same size, opposite direction);
- ``inflated_count``: the count of scans trained × ``factor`` (default 100): an averaging
  round's weight.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from fedqc.data.corruptions.scenario import ATTACKS
from fedqc.protocol import EvalReply, EvalRequest, ImageFinding, SiteInfo, State, TrainReply, TrainRequest

DEFAULTS = {"bn_moments": {"count": 1000.0, "shift": 10.0, "scale": 10.0}, "scaled_update": {"factor": 1000.0},
            "sign_flip": {}, "inflated_count": {"factor": 100.0}}


def scaled(sent: State, reply: State, factor: float) -> State:
    """``reply`` with every floating model array moved to ``sent + factor · (reply - sent)`` (the optimizer's state
    and integer arrays as they are)."""
    out = dict(reply)
    for key, value in reply.items():
        if key in sent and not key.startswith("optim.") and np.issubdtype(value.dtype, np.floating):
            out[key] = (sent[key] + factor * (value - sent[key])).astype(value.dtype)
    return out


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
    """``site`` (anything with a Site's ``info``, ``audit``, ``train``, ``evaluate``) whose replies lie by ``attack``
    with ``params`` (missing ones take :data:`DEFAULTS`)."""

    site: object
    attack: str
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}; expected one of {', '.join(ATTACKS)}")
        self.params = {**DEFAULTS[self.attack], **self.params}

    def info(self) -> SiteInfo:
        return self.site.info()

    def check_images(self) -> list[ImageFinding]:
        return self.site.check_images()

    def train(self, state: State, request: TrainRequest) -> TrainReply:
        reply = self.site.train(state, request)
        if self.attack in ("scaled_update", "sign_flip"):
            factor = -1.0 if self.attack == "sign_flip" else float(self.params["factor"])
            return dataclasses.replace(reply, state=scaled(state, reply.state, factor))
        if self.attack == "inflated_count":
            return dataclasses.replace(reply, n_scans=int(round(reply.n_scans * float(self.params["factor"]))))
        return reply

    def evaluate(self, state: State, request: EvalRequest) -> EvalReply:
        reply = self.site.evaluate(state, request)
        if self.attack == "bn_moments" and reply.moments and "bn_n" in reply.moments:
            p = self.params
            widths = [v.shape[0] for k, v in state.items() if k.endswith(".running_mean") and not k.startswith("optim.")]
            return dataclasses.replace(reply, moments=lying_moments(reply.moments, widths, float(p["count"]),
                                                                    float(p["shift"]), float(p["scale"])))
        return reply
