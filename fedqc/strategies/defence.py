"""What the server checks beyond a reply's form, so that one site that lies cannot steer the model alone.

:func:`~fedqc.protocol.check_update` checks a reply's form (keys, shapes, dtypes, finite
values); a compromised site can send a well-formed reply that is still a lie. Three checks
use only what the server can verify itself (docs/threat-model.md):

- :class:`UpdateNormCheck` (``defence.update_norm``): an update whose parameter change is
  far larger than the recent accepted ones (a multiple of their median) is rejected, and
  the hop names the check. It catches scaled updates; a sign-flipped update of honest size
  passes it (QC's verification on other sites' scans is what judges its direction).
- :func:`count_check` (``defence.counts: enrolment``): a reply that claims more scans
  trained than the server asked the site to train (from the training scans it declared
  at enrolment) is refused, and the hop names the check. An honest site never trains
  more scans than it was asked (its reply counts distinct scans), so honest runs are
  unchanged; a count above is a proven lie (e.g. to weigh more in an average).
- :func:`robust_moments` (``defence.bn_pooling: robust``): federated BatchNorm pooling
  combines each site's per-channel mean and variance, each clipped to the sites' median ±
  ``clip`` median standard deviations (the variance within ×/÷ ``clip``²), weighted by a count
  bounded by the verification scans the site declared at enrolment. One site among three or
  more can then move a channel's pooled mean by at most its bounded share of the pooled
  count times the window's width (stated in docs/threat-model.md), however large its reply.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from fedqc.protocol import BN_MOMENT_KEYS, State, TrainReply, TrainRequest, change_norm, check_reply, model_norm


@dataclass
class UpdateNormCheck:
    """Rejects an update whose :func:`change_norm` per batch exceeds ``factor`` × the median of the last ``window``
    accepted ones. Per batch the server asked for (given by the caller, from the scans it asked the site to train),
    because an honest change grows with the steps taken: a site of 70 scans moves the model about seven times as far
    as one of 10, and a median over sites of unequal size would refuse the largest sites' honest updates. Until
    ``warmup`` updates are accepted there is no median yet: an update is then rejected only when its
    change is larger than the whole model it changes (:func:`model_norm` of the state sent) — no training step
    moves a model by its own size (an honest change is a small share of it), a scaled one does; a model of norm 0
    (initialised at zero) gives no size to compare with. A site lying from
    the very first hops within that bound sets part of the reference: the median still needs a majority of them.
    An arm that goes on from another arm's checkpoint goes on with its accepted norms (:meth:`restore`)."""

    factor: float
    window: int = 20
    warmup: int = 3
    norms: deque = field(default_factory=deque)

    def __call__(self, sent: State, reply: State, batches: int = 1) -> str | None:
        """Why the update is rejected, or None (then its norm per batch joins the reference); ``batches``: the
        batches the server asked the site to train."""
        change = change_norm(sent, reply)
        if len(self.norms) < self.warmup and 0 < (size := model_norm(sent)) < change:
            return (f"update norm check: change norm {change:.3g} > the norm {size:.3g} of the model it changes "
                    f"(warm-up: {len(self.norms)} of {self.warmup} accepted updates)")
        norm = change / max(int(batches), 1)
        if len(self.norms) >= self.warmup:
            median = float(np.median(self.norms))
            if norm > self.factor * median:
                return (f"update norm check: change norm per batch {norm:.3g} > {self.factor:g} × median "
                        f"{median:.3g} of the last {len(self.norms)} accepted updates")
        self.norms.append(norm)
        while len(self.norms) > self.window:
            self.norms.popleft()
        return None

    def snapshot(self) -> list[float]:
        return list(self.norms)

    def restore(self, norms: list[float]) -> None:
        self.norms = deque(float(x) for x in norms)


def count_check(n_reply: int, n_asked: int) -> str | None:
    """Why a reply's count of scans trained is a lie, or None: more than the ``n_asked`` the server asked for."""
    if int(n_reply) > int(n_asked):
        return f"count check: the reply claims {int(n_reply)} scans trained, {int(n_asked)} asked"
    return None


def refusal(sent: State, request: TrainRequest, reply: TrainReply, asked: int, *, counts: bool,
            norm_check: UpdateNormCheck | None) -> str | None:
    """Why the server refuses a training reply to ``request`` for ``asked`` distinct scans, or None: its form and
    freshness (:func:`~fedqc.protocol.check_reply`), with ``counts`` a count of scans beyond what was asked
    (:func:`count_check`), with ``norm_check`` a change too large per batch asked. In that order: the norm check
    remembers the updates it accepts, so it sees only replies the others let through."""
    return check_reply(sent, request, reply) \
        or (counts and count_check(reply.n_scans, request.most_scans(asked))) \
        or (norm_check and norm_check(sent, reply.state, request.batches(asked))) or None


def robust_moments(moments: list[dict[str, np.ndarray]], expected: list[int], widths: list[int],
                   clip: float = 3.0) -> dict[str, np.ndarray]:
    """The sites' BatchNorm moments (:data:`~fedqc.protocol.BN_MOMENT_KEYS`, one dict per site) combined into one,
    robust to one site that lies.

    Per layer, a site's count weighs at most ``expected`` (the verification scans it should have scored) × the
    median over sites of count per expected scan (the values one scan gives the layer); per channel, its mean is
    clipped to ``[m - clip·d, m + clip·d]`` and its standard deviation to ``[d / clip, clip·d]``, with ``m`` and
    ``d`` the sites' medians. The result is the sums that those means, variances and counts give: with no site
    clipped or bounded it is the plain sum (up to rounding). A layer no site reached keeps count 0.
    """
    n = np.array([m["bn_n"] for m in moments], dtype=np.float64)  # sites × layers
    out = {k: np.zeros_like(np.asarray(moments[0][k], dtype=np.float64)) for k in BN_MOMENT_KEYS}
    expected_arr = np.maximum(np.asarray(expected, dtype=np.float64), 1.0)
    for i, start in enumerate(np.cumsum([0, *widths[:-1]])):
        reached = n[:, i] > 0
        if not reached.any():
            continue
        cols = slice(start, start + widths[i])
        ni = n[reached, i]
        per_scan = float(np.median(ni / expected_arr[reached]))
        w = np.minimum(ni, expected_arr[reached] * per_scan)
        s = np.array([np.asarray(m["bn_sum"], dtype=np.float64)[cols] for m, r in zip(moments, reached) if r])
        q = np.array([np.asarray(m["bn_sq"], dtype=np.float64)[cols] for m, r in zip(moments, reached) if r])
        mean = s / ni[:, None]
        sd = np.sqrt(np.maximum(q / ni[:, None] - mean**2, 0.0))
        m, d = np.median(mean, axis=0), np.median(sd, axis=0)
        mean = np.clip(mean, m - clip * d, m + clip * d)
        sd = np.clip(sd, d / clip, d * clip)
        out["bn_n"][i] = w.sum()
        out["bn_sum"][cols] = (w[:, None] * mean).sum(axis=0)
        out["bn_sq"][cols] = (w[:, None] * (sd**2 + mean**2)).sum(axis=0)
    return out
