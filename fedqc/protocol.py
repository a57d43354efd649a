"""What the server and a site say to each other: typed requests and replies, site facts, errors.

The travelling state is a flat ``{name: numpy array}`` dict: ``encoder.<param>``,
``classifier.<param>`` and ``optim.<i>.<field>`` (Adam's ``step``, ``exp_avg``,
``exp_avg_sq`` of parameter *i*), so the optimizer state travels with the model and a
transport only ever carries named arrays, numbers and scan identifiers — never images.
No torch here: the server side and the config layer use these types too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, NamedTuple

import numpy as np
import pandas as pd

State = dict[str, np.ndarray]
SCORE_COLUMNS = ["subject", "site", "label", "score", "sex", "age"]
COUNT_KEYS = ("n", "tp", "fp", "tn", "fn", "loss_sum", "brier_sum")
MOMENT_KEYS = ("feat_n", "feat_sum", "feat_sq")  # scans, per-feature sums, per-feature sums of squares
# per BatchNorm layer the values its input had over a site's scans (scans × voxels), then per channel of every layer
# (concatenated in layer order) their sums and sums of squares: what federated BatchNorm statistics pool
BN_MOMENT_KEYS = ("bn_n", "bn_sum", "bn_sq")


class ScanProblem(NamedTuple):
    """An unusable scan met at ``stage`` (``train``, ``verification`` or ``test``); the subject is empty
    when a whole site could not answer."""

    subject: str
    reason: str
    stage: str = "train"


class ImageFinding(NamedTuple):
    """A scan that fails a site's image checks (:meth:`fedqc.site.Site.check_images`): the QC audit stage's input."""

    subject: str
    split: str
    reason: str


@dataclass(frozen=True)
class SiteInfo:
    """What a site tells the server about itself: its training scans' ids and how many val/test scans it has."""

    name: str
    train: tuple[str, ...]
    n_val: int
    n_test: int
    train_positives: int = 0  # a count: the federation's class counts are summed from it


def class_counts(info: dict[str, SiteInfo]) -> tuple[int, int]:
    """The federation's training scans per class (controls, patients), from the sites' counts."""
    n, pos = sum(len(i.train) for i in info.values()), sum(i.train_positives for i in info.values())
    return n - pos, pos


@dataclass(frozen=True)
class TrainRequest:
    """Train ``epochs`` local epochs (one message, whatever the epochs: what FedAvg's sites do in a round).

    ``subjects`` set: exactly these scans in this order (QC retrains exact subsets).
    Otherwise every training scan except ``exclude``, in an order drawn from the epoch's
    seed: ``seed`` for the first epoch, :func:`epoch_seed` for the others. The seed also
    seeds dropout; the server derives it per hop. ``rebalance`` and
    ``class_counts`` (the federation's, for weights; empty: the site's own) say how the
    site rebalances the classes of its scans (:mod:`fedqc.site.rebalance`). With
    ``steps``, the site trains that many batches over as many epochs as they take (an
    epoch that takes none ends the request) and ``epochs`` is not read.
    """

    lr: float
    seed: int
    batch_size: int
    subjects: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    rebalance: str = "none"
    class_counts: tuple[int, ...] = ()
    prox_mu: float = 0.0  # FedProx: the site adds prox_mu/2 · ||w - w_sent||² to its loss
    steps: int = 0  # train ``steps`` batches, over as many epochs as they take (0: ``epochs`` whole epochs)
    nonce: str = ""  # fresh per request (train_request): the reply names it (message freshness, check_fresh)
    epochs: int = 1  # local epochs (the model, optimizer and FedProx's anchor carried from one to the next)
    optimizer_state: bool = True  # the reply carries the optimizer's state (the travelling model's goes on with it)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainRequest:
        subjects = d.get("subjects")
        return cls(lr=float(d["lr"]), seed=int(d["seed"]), batch_size=int(d["batch_size"]),
                   subjects=None if subjects is None else tuple(str(s) for s in subjects),
                   exclude=tuple(str(s) for s in d.get("exclude", ())), rebalance=str(d.get("rebalance", "none")),
                   class_counts=tuple(int(x) for x in d.get("class_counts", ())),
                   prox_mu=float(d.get("prox_mu", 0.0)), steps=int(d.get("steps", 0)),
                   nonce=str(d.get("nonce", "")), epochs=int(d.get("epochs", 1)),
                   optimizer_state=bool(d.get("optimizer_state", True)))

    def most_scans(self, asked: int) -> int:
        """The most scans an honest reply can count, its site asked to train ``asked`` distinct scans: one per
        scan and epoch, or one per scan of each batch with ``steps``."""
        return self.steps * self.batch_size if self.steps else asked * self.epochs

    def batches(self, asked: int) -> int:
        """The batches an honest site trains for this request, asked to train ``asked`` distinct scans."""
        return self.steps if self.steps else -(-int(asked) // self.batch_size) * self.epochs


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of a request's ``epoch``: the request's own for the first, one derived from it for the others."""
    return seed if epoch == 0 else int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


@dataclass(frozen=True)
class EvalRequest:
    """Score the scans of ``split`` (minus ``exclude``); ``fraction`` < 1 scores a share drawn from ``sample_seed``.

    ``moments``: also return the encoder features' count, per-feature sums and sums of
    squares over the scored scans (no per-scan features). ``batchnorm``: also return the
    inputs' moments of every BatchNorm layer (:data:`BN_MOMENT_KEYS`); with ``bn_layers`` (their
    indices in the network's order) of those layers only (the others' counts 0) and, where the site
    can forward from the activations it kept from the previous pass, no scores
    (:mod:`fedqc.site.activations`). ``ood_center``/``ood_scale``
    (one value per feature): also return each scan's feature distance to them (column ``ood``). ``nonce``: fresh
    per request (:class:`~fedqc.transport.fresh.FreshTransport`); the reply names it (message freshness,
    :func:`check_fresh`).
    """

    split: str
    exclude: tuple[str, ...] = ()
    fraction: float = 1.0
    sample_seed: int = 0
    moments: bool = False
    batchnorm: bool = False
    bn_layers: tuple[int, ...] = ()
    ood_center: tuple[float, ...] = ()
    ood_scale: tuple[float, ...] = ()
    nonce: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EvalRequest:
        return cls(split=str(d["split"]), exclude=tuple(str(s) for s in d.get("exclude", ())),
                   fraction=float(d.get("fraction", 1.0)), sample_seed=int(d.get("sample_seed", 0)),
                   moments=bool(d.get("moments", False)), batchnorm=bool(d.get("batchnorm", False)),
                   bn_layers=tuple(int(i) for i in d.get("bn_layers", ())),
                   ood_center=tuple(float(x) for x in d.get("ood_center", ())),
                   ood_scale=tuple(float(x) for x in d.get("ood_scale", ())), nonce=str(d.get("nonce", "")))


CYCLE_PARTS = ("verification", "test")  # a CycleEvalRequest's parts, in the order a site answers them
PART_SPLITS = {"verification": "val", "test": "test"}


@dataclass(frozen=True)
class CycleEvalRequest:
    """The end of a cycle's scoring of its final state at one site, one message: ``verification``, the ``val``
    scores the threshold is fitted on (with the calibration's exclusions), and ``test``, the test split's scores
    (None: the site has no such part). The two score the same state with no server step between them, so they
    travel together (docs/decisions.md, section 44); each part is an :class:`EvalRequest` of its own, with its own
    nonce, answered as if it had come alone (:meth:`answer`).

    The parts are named, not listed, so that a reply's test scores can only be read as such: the server hands
    :attr:`CycleEvalReply.test` to the metrics alone, never to the calibration or QC (the test split steers
    nothing). Validated: at least one part, each an :class:`EvalRequest` of its part's split.
    """

    verification: EvalRequest | None = None
    test: EvalRequest | None = None

    def __post_init__(self) -> None:
        if self.verification is None and self.test is None:
            raise ValueError("a cycle evaluation request needs a verification or a test part")
        for name, part in self.parts():
            if not isinstance(part, EvalRequest) or part.split != PART_SPLITS[name]:
                raise ValueError(f"a cycle evaluation request's {name} part must be an EvalRequest of split "
                                 f"{PART_SPLITS[name]!r}, not {part!r}")

    def parts(self) -> list[tuple[str, EvalRequest]]:
        """The parts asked for, by name, in :data:`CYCLE_PARTS` order."""
        return [(name, part) for name in CYCLE_PARTS if (part := getattr(self, name)) is not None]

    def answer(self, evaluate: Callable[[EvalRequest], EvalReply]) -> CycleEvalReply:
        """Each part answered by ``evaluate``, verification first: what a site does with the message."""
        return CycleEvalReply(**{name: evaluate(part) for name, part in self.parts()})

    def to_dict(self) -> dict:
        """One flat dict (a Flower ConfigRecord holds no nesting): ``parts`` names the parts, each part's fields
        under ``<part>.``."""
        return {"parts": [name for name, _ in self.parts()],
                **{f"{name}.{k}": v for name, part in self.parts() for k, v in part.to_dict().items()}}

    @classmethod
    def from_dict(cls, d: dict) -> CycleEvalRequest:
        parts = [str(p) for p in d["parts"]]
        unknown = sorted(set(parts) - set(CYCLE_PARTS))
        if unknown:
            raise ValueError(f"unknown cycle evaluation part(s) {unknown}; expected some of {list(CYCLE_PARTS)}")
        return cls(**{name: EvalRequest.from_dict({k[len(name) + 1:]: v for k, v in d.items()
                                                   if k.startswith(name + ".")}) for name in parts})


@dataclass
class TrainReply:
    """What a site trained: the state to go on with, ``n_scans`` scans trained summed over the request's epochs (a
    scan trained in two epochs counts twice: the training work, and FedAvg's weight), the last epoch's mean
    ``loss``, the distinct ``subjects`` trained, and the scans it could not use (once per epoch)."""

    state: State
    n_scans: int
    loss: float
    seconds: float
    subjects: list[str]
    skipped: list[ScanProblem] = field(default_factory=list)
    data_wait_s: float = 0.0  # of ``seconds``, the time training waited for its next batch of scans
    steps: int = 0  # optimizer steps taken (batches with at least one usable scan)
    answers: str = ""  # the nonce of the request this reply answers


@dataclass
class EvalReply:
    counts: dict[str, float]
    scores: pd.DataFrame  # SCORE_COLUMNS
    skipped: list[ScanProblem] = field(default_factory=list)
    error: str | None = None  # the site failed or did not answer: no scores this time
    moments: dict[str, np.ndarray] | None = None  # MOMENT_KEYS and/or BN_MOMENT_KEYS, as the request asked
    answers: str = ""  # the nonce of the request this reply answers

    @classmethod
    def failed(cls, reason: str) -> EvalReply:
        return cls({k: 0.0 for k in COUNT_KEYS}, pd.DataFrame(columns=SCORE_COLUMNS), [], reason)


@dataclass
class CycleEvalReply:
    """A site's answer to a :class:`CycleEvalRequest`: one :class:`EvalReply` per part it asked for (None
    otherwise), each naming its own part's nonce. ``test`` goes to the metrics only (the request's docstring)."""

    verification: EvalReply | None = None
    test: EvalReply | None = None

    @classmethod
    def failed(cls, request: CycleEvalRequest, reason: str) -> CycleEvalReply:
        """Every part ``request`` asked for failed for ``reason`` (the site raised or did not answer)."""
        return request.answer(lambda _: EvalReply.failed(reason))


def scores_table(replies: Iterable[EvalReply]) -> pd.DataFrame:
    """The scores of ``replies`` as one table. A failed reply's empty frame is left out: concatenated, its untyped
    columns would make the scores objects, which pandas then refuses in a float column (a QC baseline's)."""
    frames = [r.scores for r in replies if len(r.scores)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)


def model_arrays(state: State) -> State:
    """The model's arrays only (what scoring needs), without the optimizer's."""
    return {k: v for k, v in state.items() if not k.startswith("optim.")}


FORM_REASONS = ("shape/dtype", "non-finite values", "negative variances")  # what check_update says of an array


def check_update(sent: State, reply: State) -> str | None:
    """Why a site's reply cannot be adopted, or None.

    The reply must carry exactly the keys that were sent (plus the optimizer state when
    none was sent yet), each with the sent shape and dtype, only finite values, and no
    negative BatchNorm running variance (which the model takes the square root of: a
    finite reply that scores every scan NaN).
    """
    missing = sorted(set(sent) - set(reply))
    extra = sorted(set(reply) - set(sent))
    if missing:
        return f"missing arrays: {missing[:3]}"
    if extra and (any(k.startswith("optim.") for k in sent) or not all(k.startswith("optim.") for k in extra)):
        return f"unexpected arrays: {extra[:3]}"
    for key, value in reply.items():
        ref = sent.get(key)
        if ref is not None and (value.shape != ref.shape or value.dtype != ref.dtype):
            return f"{key}: {FORM_REASONS[0]} {value.shape}/{value.dtype}, expected {ref.shape}/{ref.dtype}"
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            return f"{key}: {FORM_REASONS[1]}"
        if key.endswith("running_var") and (value < 0).any():
            return f"{key}: {FORM_REASONS[2]}"
    return None


def change_norm(sent: State, reply: State) -> float:
    """The Euclidean norm of the model's change (every floating array but the optimizer's) from ``sent`` to
    ``reply``."""
    total = 0.0
    for key, value in model_arrays(reply).items():
        if np.issubdtype(value.dtype, np.floating) and key in sent:
            total += float(np.sum((value.astype(np.float64) - sent[key].astype(np.float64)) ** 2))
    return float(np.sqrt(total))


def model_norm(state: State) -> float:
    """The Euclidean norm of the model (every floating array but the optimizer's): how far a change would have to
    go to be as large as the model itself."""
    return float(np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in model_arrays(state).values()
                             if np.issubdtype(v.dtype, np.floating))))


def check_fresh(request: TrainRequest | EvalRequest, reply: TrainReply | EvalReply) -> str | None:
    """Why ``reply`` does not answer ``request`` (message freshness), or None: a request with a nonce must be answered
    by a reply that names it, so that an earlier reply replayed — by a site or on the network — is refused. Train and
    evaluation messages alike."""
    if request.nonce and reply.answers != request.nonce:
        return (f"stale reply (message freshness): it answers request {reply.answers or '(none)'}, not "
                f"{request.nonce}")
    return None


def check_reply(sent: State, request: TrainRequest, reply: TrainReply) -> str | None:
    """Why a train reply cannot be adopted, or None: it must answer ``request`` (:func:`check_fresh`) and carry a
    well-formed state (:func:`check_update`)."""
    return check_fresh(request, reply) or check_update(sent, reply.state)


def batches(items: list, batch_size: int) -> list[list]:
    """The batching rule both sides share: chunks of ``min(batch_size, len(items))``, the last one kept
    even when partial (the reference drops it; we do not)."""
    size = max(1, min(batch_size, len(items)))
    return [items[i : i + size] for i in range(0, len(items), size)]
