"""The end of a cycle: make the travelling model's scores mean the same at every site, and choose its threshold.

A travelling model's BatchNorm running statistics follow the last site it trained at
(each site has its own scanner), so its scores at every other site shift as a whole:
the AUROC holds, any fixed threshold does not. Two remedies, both fitted on the
verification (``val``) scans — never on test:

- **federated BatchNorm statistics** (``batchnorm: federated``): every calibration site
  runs the model over its verification scans and returns, per BatchNorm layer, the count
  of its inputs' values and their per-channel sums and sums of squares — counts and
  moments, no images, nothing per scan. The server pools them into each layer's running
  mean and variance. A layer's inputs depend on the layers before it, so a pass fixes one
  more layer: as many passes as layers give exactly the statistics of one training-mode
  BatchNorm pass over all those scans together (PyTorch's ``update_bn`` with one batch:
  layers normalised by the pooled variance, the unbiased one stored at the end). Pass k
  asks for layer k only, and a site forwards its scans from the input of layer k-1 it kept
  from pass k-1 (:mod:`fedqc.site.activations`): one forward of the scans in all, not one
  per layer. ``bn_passes`` caps the passes for deep networks (then every pass asks for the
  layers from its own on, each set from the pass that asked for it last);
- **a decision threshold** fitted on the verification scans' scores of the final model:
  ``youden`` (the score maximising sensitivity + specificity), ``prevalence`` (as many
  scans called positive as are positive), ``platt`` (where a logistic fit of the label on
  the score's logit crosses 0.5), or ``fixed`` 0.5, the reference. Every method's value is
  recorded; the configured one is used by the metrics and stored in the checkpoint.

In a run the two steps sit around the cycle's closing message
(:func:`fedqc.strategies.cycles.score_cycle`): :meth:`Calibrator.statistics` first, its
passes one evaluation message each; then the final state's verification scores travel in
the same message per site as its test scores, and :meth:`Calibrator.threshold` fits the
threshold on the verification part alone. :meth:`Calibrator.__call__` does both with a
message of its own for the scores (benchmarks, tests).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from fedqc.config import CalibrationConfig
from fedqc.config.schema import THRESHOLDS
from fedqc.protocol import BN_MOMENT_KEYS, EvalReply, EvalRequest, State, scores_table
from fedqc.strategies.defence import robust_moments
from fedqc.transport import Transport

FIXED = 0.5


def batchnorm_layers(state: State) -> list[str]:
    """The state's BatchNorm layers (their key prefixes), in the order the network runs them."""
    return [k[: -len("running_mean")] for k in state if k.endswith(".running_mean") and not k.startswith("optim.")]


def pool_batchnorm(state: State, moments: list[dict[str, np.ndarray]], *, unbiased: bool = True) -> State:
    """``state`` with every BatchNorm layer's running mean and variance set from the sites' pooled moments
    (:data:`~fedqc.protocol.BN_MOMENT_KEYS`): the unbiased variance, as BatchNorm keeps it, or the pooled one
    (what a training-mode pass normalises with); a layer no scan reached keeps its statistics."""
    layers = batchnorm_layers(state)
    widths = [state[p + "running_mean"].shape[0] for p in layers]
    moments = [m for m in moments if len(m["bn_n"]) == len(layers) and len(m["bn_sum"]) == sum(widths)]
    if not moments:
        return state
    n = np.sum([m["bn_n"] for m in moments], axis=0)
    total, sq = (np.sum([m[k] for m in moments], axis=0) for k in BN_MOMENT_KEYS[1:])
    out = dict(state)
    for i, (prefix, start) in enumerate(zip(layers, np.cumsum([0, *widths[:-1]]))):
        if n[i] < 2:
            continue
        s, q = total[start: start + widths[i]], sq[start: start + widths[i]]
        mean = s / n[i]
        var = np.maximum(q / n[i] - mean**2, 0.0) * (n[i] / (n[i] - 1) if unbiased else 1.0)
        out[prefix + "running_mean"] = mean.astype(state[prefix + "running_mean"].dtype)
        out[prefix + "running_var"] = var.astype(state[prefix + "running_var"].dtype)
    return out


def merge_moments(latest: dict[str, np.ndarray] | None, moments: list[dict[str, np.ndarray]],
                  widths: list[int]) -> dict[str, np.ndarray] | None:
    """``latest`` (per BatchNorm layer the pooled moments of the last pass that summed it) with the layers this
    pass's ``moments`` summed (a count above 0) replaced by their sum over the sites."""
    moments = [m for m in moments if len(m["bn_n"]) == len(widths) and len(m["bn_sum"]) == sum(widths)]
    if not moments:
        return latest
    now = {k: np.sum([m[k] for m in moments], axis=0) for k in BN_MOMENT_KEYS}
    if latest is None:
        return now
    out = {k: v.copy() for k, v in latest.items()}
    for i, start in enumerate(np.cumsum([0, *widths[:-1]])):
        if now["bn_n"][i] > 0:
            out["bn_n"][i] = now["bn_n"][i]
            for k in BN_MOMENT_KEYS[1:]:
                out[k][start: start + widths[i]] = now[k][start: start + widths[i]]
    return out


def exclusion_groups(scans: dict[str, tuple[str, ...]]) -> dict[tuple[str, ...], list[str]]:
    """The sites of ``scans`` (site → the val scans to leave out) grouped by what they leave out, in site order:
    one verification request each."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for site, exclude in sorted(scans.items()):
        groups.setdefault(tuple(exclude), []).append(site)
    return groups


def fit_thresholds(labels: np.ndarray, scores: np.ndarray) -> tuple[dict[str, float], str]:
    """Every method's threshold on (labels, scores) of verification scans, and a note when some fall back to
    0.5 (one class only; a Platt fit without a positive slope)."""
    y, s = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    out = {m: FIXED for m in THRESHOLDS}
    if len(set(y)) < 2:
        return out, f"verification scans hold {'no scans' if len(y) == 0 else 'one class'}: every threshold is 0.5"
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, s)
    out["youden"] = float(min(thr[int(np.argmax(tpr - fpr))], 1.0))
    out["prevalence"] = float(np.sort(s)[::-1][max(1, round(y.mean() * len(y))) - 1])
    logit = np.log(np.clip(s, 1e-7, 1 - 1e-7) / np.clip(1 - s, 1e-7, 1 - 1e-7))
    fit = LogisticRegression(C=np.inf).fit(logit[:, None], y)
    a, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if a <= 0:
        return out, "Platt fit without a positive slope (no skill on verification scans): platt is 0.5"
    out["platt"] = float(1 / (1 + math.exp(b / a)))
    return out, ""


@dataclass
class Calibrator:
    """The cycle's last step: BatchNorm statistics and the threshold, on the verification scans of ``scans``
    (site → its val scans to leave out; the arm decides which it trusts).

    ``pooling`` ``sum`` adds the sites' moments as they come; ``robust`` combines them with
    :func:`~fedqc.strategies.defence.robust_moments` (``clip``), each site's count bounded by the verification
    scans it declared at enrolment (``enrolled_val``, site → n_val) less those left out."""

    transport: Transport
    config: CalibrationConfig
    pooling: str = "sum"
    clip: float = 3.0
    enrolled_val: dict[str, int] = field(default_factory=dict)

    def _pool(self, replies: dict[str, EvalReply], scans: dict[str, tuple[str, ...]],
              widths: list[int]) -> list[dict[str, np.ndarray]]:
        """The moments of one pass to merge: every site's (``sum``), or their robust combination."""
        got = {s: r.moments for s, r in replies.items() if r.moments and not r.error
               and len(r.moments["bn_n"]) == len(widths) and len(r.moments["bn_sum"]) == sum(widths)}
        if self.pooling == "sum" or not got:
            return list(got.values())
        expected = [self.enrolled_val.get(s, 0) - len(scans.get(s, ())) for s in got]
        return [robust_moments(list(got.values()), expected, widths, self.clip)]

    def _evaluate(self, state: State, scans: dict[str, tuple[str, ...]], **fields) -> dict[str, EvalReply]:
        replies: dict[str, EvalReply] = {}
        for exclude, sites in exclusion_groups(scans).items():
            replies |= self.transport.evaluate(sites, state, EvalRequest("val", exclude=exclude, **fields))
        return replies

    def __call__(self, state: State, scans: dict[str, tuple[str, ...]]) -> tuple[State, dict]:
        """The state to checkpoint and score, and the record of what was done (one row of ``calibration.csv``):
        :meth:`statistics`, then the threshold on verification scores asked for in messages of their own."""
        t0 = time.perf_counter()
        state, passes = self.statistics(state, scans)
        return state, self.threshold(self._evaluate(state, scans), scans, passes, time.perf_counter() - t0)

    def statistics(self, state: State, scans: dict[str, tuple[str, ...]]) -> tuple[State, int]:
        """``state`` with federated BatchNorm statistics (as configured; else as it is), and the passes it took."""
        passes = 0
        if self.config.batchnorm == "federated" and (layers := batchnorm_layers(state)):
            passes = min(len(layers), self.config.bn_passes or len(layers))
            widths, latest = [state[p + "running_mean"].shape[0] for p in layers], None
            for p in range(passes):  # layer p's inputs need the pooled statistics of the layers before it
                wanted = (p,) if passes == len(layers) else tuple(range(p, len(layers)))
                replies = self._evaluate(state, scans, batchnorm=True, bn_layers=wanted)
                latest = merge_moments(latest, self._pool(replies, scans, widths), widths)
                state = pool_batchnorm(state, [latest] if latest else [], unbiased=p == passes - 1)
        return state, passes

    def threshold(self, replies: dict[str, EvalReply], scans: dict[str, tuple[str, ...]], passes: int,
                  seconds: float) -> dict:
        """The record of the cycle's calibration (one row of ``calibration.csv``): every method's threshold on the
        verification ``replies`` of the state :meth:`statistics` returned (site → reply to ``val`` minus its
        ``scans``), ``passes`` and ``seconds`` spent before this step (plus the fit's own). Verification replies
        only: a run's test scores never reach the calibration (:func:`fedqc.strategies.cycles.score_cycle`)."""
        t0 = time.perf_counter()
        order = [s for sites in exclusion_groups(scans).values() for s in sites]  # pooled in the sites' order of
        replies = {s: replies[s] for s in order if s in replies}  # their fan-outs: the same threshold bit for bit
        scores = scores_table(r for r in replies.values() if not r.error)
        thresholds, note = fit_thresholds(scores["label"].to_numpy(), scores["score"].to_numpy())
        failed = sorted(s for s, r in replies.items() if r.error)
        if failed:
            note = "; ".join(filter(None, [note, "no answer from " + ", ".join(f"{s} ({replies[s].error})"
                                                                             for s in failed)]))
        record = {"threshold": thresholds[self.config.threshold], "method": self.config.threshold,
                  "batchnorm": self.config.batchnorm, "bn_passes": passes, "n_val": len(scores),
                  "n_val_pos": int(scores["label"].sum()), **{f"threshold_{m}": v for m, v in thresholds.items()},
                  "seconds": seconds + time.perf_counter() - t0, "note": note}
        return record
