"""One center: its own rows of the manifest and a private copy of the network.

The travelling state comes in and goes out as arrays (:mod:`fedqc.models.state`).
Training is one local epoch over the chosen scans in a seeded order, in batches of
``batch_size`` (or all scans if fewer), the last partial batch included, read ahead
while the model trains (:mod:`fedqc.site.loading`), on the site's device
(:mod:`fedqc.site.device`: bf16 autocast on a GPU). Evaluation returns confusion counts
at threshold 0.5, loss and Brier sums with fixed keys, and per-scan scores of the main
``label``; a multi-label model (``model.targets``) trains on the mean loss over its
targets and adds ``label_<name>`` and ``score_<name>`` per further target. A site reads
only the columns the data contract and its model require (targets, a bias column) —
never the ground truth of injected harm: what an arm may not train arrives as a list of
ids.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

import fedqc.site.activations as activations
import fedqc.site.device as devices
from fedqc.config import DataConfig, ModelSpec
from fedqc.data.image_checks import check_image
from fedqc.data.images import ImageError, configure_cache, load_image
from fedqc.data.manifest import REQUIRED
from fedqc.errors import UserError
from fedqc.models import bias_classes, bias_head, encode, network
from fedqc.models.state import pack, unpack
from fedqc.protocol import (
    SCORE_COLUMNS,
    CycleEvalReply,
    CycleEvalRequest,
    EvalReply,
    EvalRequest,
    ImageFinding,
    ScanProblem,
    SiteInfo,
    State,
    TrainReply,
    TrainRequest,
    batches,
    epoch_seed,
)
from fedqc.scoring import counts_from_scores, feature_distance
from fedqc.site.activations import BATCHNORMS
from fedqc.site.loading import DeviceScans, prefetch
from fedqc.site.rebalance import augmenter, class_weights, epoch
from fedqc.site.unlearning import unlearning_step

EVAL_BATCH = 16


class Epoch(NamedTuple):
    """What one local epoch trained: distinct scans ``n``, their mean ``loss``, the ``subjects``, the scans it could
    not use, the seconds it ``wait``-ed for scans, the optimizer ``steps``."""

    n: int
    loss: float
    subjects: list[str]
    skipped: list[ScanProblem]
    wait: float
    steps: int


class BatchNormMoments:
    """While active, sums what the BatchNorm layers of ``modules`` receive (those indexed by ``only``, or all):
    per layer the count of values per channel, per channel the sums and sums of squares (float64), in the layers'
    order, zero for a layer not summed — what federated BatchNorm statistics pool
    (:data:`fedqc.protocol.BN_MOMENT_KEYS`)."""

    def __init__(self, *modules: nn.Module, only: tuple[int, ...] = ()):
        self.layers = [m for module in modules for m in module.modules() if isinstance(m, BATCHNORMS)]
        self.summed = [i for i in range(len(self.layers)) if not only or i in only]
        self.n = np.zeros(len(self.layers))
        self.sums = [np.zeros(m.num_features) for m in self.layers]
        self.squares = [np.zeros(m.num_features) for m in self.layers]

    def __enter__(self) -> BatchNormMoments:
        self.hooks = [self.layers[i].register_forward_pre_hook(functools.partial(self._add, i)) for i in self.summed]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self.hooks:
            hook.remove()

    def _add(self, i: int, module: nn.Module, args: tuple) -> None:
        x = args[0].double().transpose(0, 1).flatten(1)  # channels × (scans · voxels)
        self.n[i] += x.shape[1]
        self.sums[i] += x.sum(1).cpu().numpy()
        self.squares[i] += (x**2).sum(1).cpu().numpy()

    def moments(self) -> dict[str, np.ndarray]:
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
        return {"bn_n": self.n.copy(), "bn_sum": cat(self.sums), "bn_sq": cat(self.squares)}


def target_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                shares: tuple[float, ...] = ()) -> torch.Tensor:
    """Binary cross-entropy averaged over scans and targets (``logits`` and ``target``: one column per target, or 1-D
    for one): ``weight`` per scan, ``shares`` each target's relative weight (the mean over targets becomes their
    weighted mean; empty: all alike)."""
    if logits.ndim == 2 and weight is not None:
        weight = weight[:, None]  # a scan's weight (from its main label) on each of its targets
    if logits.ndim == 2 and shares:
        relative = torch.tensor(shares, dtype=logits.dtype, device=logits.device)
        relative = relative * len(shares) / relative.sum()
        weight = relative if weight is None else weight * relative
    return nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weight)


class Site:
    """One center: ``table`` holds its manifest rows (only the contract's columns are kept).

    With ``model.unlearn`` the network has a bias head, trained on the bias column the
    site knows (``marker`` or ``scanner``, or its own name): the column stays at the site.
    ``device`` (``cpu``, ``cuda``, ``cuda:N`` or ``auto``) is where its network trains;
    ``data`` how its scans are cached and read ahead; ``deterministic`` asks torch for
    repeatable GPU kernels. The last two configure the process the site runs in.
    """

    def __init__(self, name: str, table: pd.DataFrame, *, model: ModelSpec = ModelSpec(), device: str = "cpu",
                 data: DataConfig = DataConfig(), deterministic: bool = False):
        self.name = name
        self.model = model
        self.targets = ["label", *model.targets]
        missing = [t for t in model.targets if t not in table]
        if missing:
            raise UserError(f"site {name}: model.targets {missing} are not columns of its manifest")
        if model.target_weights and len(model.target_weights) != len(self.targets):
            raise UserError(f"site {name}: model.target_weights has {len(model.target_weights)} weights for "
                            f"{len(self.targets)} targets ({', '.join(self.targets)})")
        self.table = table[list(REQUIRED) + list(model.targets)].set_index("subject", drop=False)
        self.bias = self._bias_classes(table) if model.unlearn != "none" else None
        self.shape = tuple(model.input_shape)
        self.device = devices.resolve(device)
        devices.set_deterministic(deterministic, self.device)
        configure_cache(data.cache_gb, data.cache_dir)
        self.prefetch = data.prefetch if data.prefetch is not None else 2 if self.device.type == "cuda" else 0
        self.encoder, self.classifier = (m.to(self.device) for m in network(model))
        self.head = bias_head(model, self.classifier)
        if self.head is not None:
            self.head.to(self.device)
        # ~1.5× faster 3D convolutions on CPU; 2D layers keep the default layout
        self.memory_format = torch.channels_last_3d if len(model.input_shape) == 3 else torch.contiguous_format
        self.encoder.to(memory_format=self.memory_format)
        self.scans = DeviceScans(self.device, devices.memory_bound(self.device, data.device_cache_gb),
                                 self.memory_format)

    @functools.cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        """Built on first training only: creating it imports torch._dynamo (~2 s of a fresh ClientApp)."""
        return torch.optim.Adam([p for m in self.modules for p in m.parameters()])

    @property
    def modules(self) -> list[nn.Module]:
        """Encoder, classifier and (with unlearning) the bias head: the order of the optimizer's parameters."""
        return [self.encoder, self.classifier] + ([self.head] if self.head is not None else [])

    def _bias_classes(self, table: pd.DataFrame) -> pd.Series:
        """Each scan's bias class (an index into the model's bias classes), from the column the target names."""
        target, classes = self.model.bias_target, bias_classes(self.model)
        if target == "site":
            values = pd.Series(self.name, index=table["subject"])
        elif target not in table:
            raise UserError(f"site {self.name}: model.bias_target {target} needs a {target!r} column in the manifest")
        else:
            values = table.set_index("subject")[target]
            if target == "marker":
                values = pd.to_numeric(values, errors="coerce").fillna(-1).astype(int)
            values = values.astype(str)
        unknown = sorted(set(values) - set(classes))
        if unknown:
            raise UserError(f"site {self.name}: {target} value(s) {unknown[:5]} are not among model.bias_classes "
                            f"{list(classes)}")
        return values.map({c: i for i, c in enumerate(classes)})

    def subjects(self, split: str) -> list[str]:
        return list(self._splits.get(split, ()))

    @functools.cached_property
    def _splits(self) -> dict[str, tuple[str, ...]]:
        """Each split's subjects in manifest order (asked for at every message)."""
        return {split: tuple(rows) for split, rows in self.table.groupby("split", sort=False)["subject"]}

    def info(self) -> SiteInfo:
        train = self.subjects("train")
        return SiteInfo(self.name, tuple(train), len(self.subjects("val")), len(self.subjects("test")),
                        int(self.table.loc[train, "label"].sum()))

    def _images(self, subjects: list[str], *, augment: list[bool] | None = None,
                transform=None) -> tuple[torch.Tensor, list[str], list[ScanProblem]]:
        """The batch of ``subjects`` on the device (those marked in ``augment`` passed through ``transform``), the
        ids loaded, and the scans that could not be."""
        scans, ok, skipped = [], [], []
        for i, s in enumerate(subjects):
            path = self.table.at[s, "path"]
            try:
                augmented = np.asarray(transform(load_image(path, self.shape).copy()), dtype=np.float32) \
                    if augment and augment[i] else None
                scans.append(self.scans.scan(path, self.shape, augmented))
            except ImageError as exc:
                skipped.append(ScanProblem(s, str(exc)))
                continue
            ok.append(s)
        return (self.scans.stack(scans) if scans else torch.empty(0)), ok, skipped

    def train(self, state: State, request: TrainRequest) -> TrainReply:
        """``request.epochs`` local epochs of ``request`` on ``state`` (weights and optimizer), or ``request.steps``
        batches over as many epochs as they take; the model, the optimizer and FedProx's anchor (the weights sent)
        go on from one epoch to the next."""
        optimizer = self.optimizer  # built before the clock starts: its first creation is set-up, not training
        t0 = time.perf_counter()
        if request.subjects is not None:
            unknown = [s for s in request.subjects if s not in self.table.index]
            if unknown:
                raise KeyError(f"site {self.name}: unknown subject(s) {list(unknown)[:5]}")
        unpack(state, self.encoder, self.classifier, optimizer, self.head)
        for group in optimizer.param_groups:
            group["lr"] = request.lr
        for m in self.modules:
            m.train()
        anchor = [(p, p.detach().clone()) for m in self.modules for p in m.parameters()] \
            if request.prox_mu > 0 else []  # FedProx: the weights the round sent
        n, done, skipped, wait, steps, loss, e = 0, {}, [], 0.0, 0, float("nan"), 0
        while steps < request.steps if request.steps else e < request.epochs:
            trained = self._epoch(optimizer, request, epoch_seed(request.seed, e), anchor,
                                  request.steps - steps if request.steps else 0)
            n, steps, wait, skipped = n + trained.n, steps + trained.steps, wait + trained.wait, skipped + trained.skipped
            done.update(dict.fromkeys(trained.subjects))
            loss, e = trained.loss, e + 1
            if request.steps and not trained.steps:  # an epoch that takes no step ends the request
                break
        state = pack(self.encoder, self.classifier, optimizer if request.optimizer_state else None,
                     self.head)  # on a GPU: waits for its last step
        return TrainReply(state, n, loss, time.perf_counter() - t0, list(done), skipped, wait, steps, request.nonce)

    def _epoch(self, optimizer: torch.optim.Optimizer, request: TrainRequest, seed: int,
               anchor: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> Epoch:
        """One epoch of ``request`` seeded with ``seed`` (scan order, rebalancing, augmentation, dropout); its
        first ``steps`` batches only when that is set."""
        subjects = request.subjects
        if subjects is None:
            exclude = set(request.exclude)
            pool = [s for s in self.subjects("train") if s not in exclude]
            subjects = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
        torch.manual_seed(seed)
        labels = self.table.loc[list(subjects), "label"].to_numpy(dtype=int)
        plan = epoch(request.rebalance, list(subjects), labels, seed)
        augment = augmenter(len(self.model.input_shape), seed) if any(a for _, a in plan) else None
        counts = request.class_counts or tuple(np.bincount(labels, minlength=2))  # for weights
        total, n, done, skipped, wait, taken = 0.0, 0, {}, [], 0.0, 0
        chunks = list(batches(plan, request.batch_size))
        loads = (functools.partial(self._images, [s for s, _ in chunk], augment=[a for _, a in chunk],
                                   transform=augment) for chunk in (chunks[:steps] if steps > 0 else chunks))
        for (x, ok, bad), waited in prefetch(loads, self.prefetch):
            wait += waited
            skipped += bad
            if not ok:
                continue
            y = self.table.loc[ok, "label"].to_numpy(dtype=int)
            weight = torch.from_numpy(class_weights(y, counts)).to(self.device) if request.rebalance == "weights" else None
            loss = self._step(optimizer, self.scans.ready(x), ok, weight, anchor, request.prox_mu)
            total += loss.item() * len(ok)
            n, taken = n + len(ok), taken + 1
            done.update(dict.fromkeys(ok))
        return Epoch(len(done), total / n if n else float("nan"), list(done), skipped, wait, taken)

    def _step(self, optimizer: torch.optim.Optimizer, x: torch.Tensor, ok: list[str], weight: torch.Tensor | None,
              anchor: list[tuple[torch.Tensor, torch.Tensor]], prox_mu: float) -> torch.Tensor:
        """One batch: the task loss over every target (``weight`` per scan), FedProx's proximal term to ``anchor``
        (minimised, not reported), and with a bias head its unlearning updates; returns the task loss."""
        several = len(self.targets) > 1  # one column per target; a single target keeps its 1-D shape
        target = torch.from_numpy(self.table.loc[ok, self.targets if several else "label"].to_numpy(dtype=np.float32)
                                  ).to(self.device)

        def task(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with devices.autocast(self.device):
                logits = self.classifier(features).float()
            loss = target_loss(logits if several else logits.squeeze(1), target, weight, self.model.target_weights)
            prox = prox_mu / 2 * sum(((p - a) ** 2).sum() for p, a in anchor) if anchor else 0.0
            return loss, loss + prox

        if self.head is not None:
            return unlearning_step(self.model.unlearn, encoder=self.encoder, classifier=self.classifier,
                                   head=self.head, optimizer=optimizer, x=x, task=task,
                                   bias_weight=self.model.bias_weight, unlearn_weight=self.model.unlearn_weight,
                                   autocast=functools.partial(devices.autocast, self.device),
                                   bias=torch.tensor(self.bias.loc[ok].to_numpy(), device=self.device))
        optimizer.zero_grad(set_to_none=True)
        with devices.autocast(self.device):
            features = self.encoder(x)
        loss, total = task(features)
        total.backward()
        optimizer.step()
        return loss

    def check_images(self) -> list[ImageFinding]:
        """Image-level checks (:mod:`fedqc.data.image_checks`) on the train and val scans, in this order: unusable,
        blank or near-constant as stored, :func:`check_image` on the model input, and an exact copy (same voxels)
        of an earlier scan of this site, train before val. One finding per scan. Copies at other sites stay
        unseen: finding them would take the scans' hashes off the site (``fedqc audit`` finds them on a manifest).
        """
        import SimpleITK as sitk

        from fedqc.data.image_checks import check_raw, voxel_hash
        from fedqc.data.images import pixels

        findings, first = [], {}
        for split in ("train", "val"):
            for s in self.subjects(split):
                path = self.table.at[s, "path"]
                try:
                    arr = load_image(path, self.shape)  # unreadable, truncated, non-finite, wrong dimensions
                    stored = sitk.ReadImage(path)
                    reason = check_raw(pixels(stored)) or check_image(arr)
                    if reason is None:
                        digest = voxel_hash(sitk.GetArrayViewFromImage(stored))
                        reason = f"exact duplicate of {first[digest]}" if digest in first else None
                        first.setdefault(digest, s)
                except ImageError as exc:
                    reason = str(exc)
                if reason:
                    findings.append(ImageFinding(s, split, reason))
        return findings

    def sample(self, split: str, fraction: float, seed: int) -> list[str]:
        """A seeded share of a split: ``max(1, round(fraction · n))`` scans, in manifest order."""
        subjects = self.subjects(split)
        if fraction >= 1 or not subjects:
            return subjects
        keep = set(np.random.default_rng(seed).permutation(subjects)[: max(1, round(fraction * len(subjects)))])
        return [s for s in subjects if s in keep]

    def _batchnorm_pass(self, subjects: tuple[str, ...], positions: list[int]) -> list[ScanProblem]:
        """Forward ``subjects`` through the encoder's BatchNorm layers at ``positions`` (its children's indices; the
        moments hooks sum their inputs), from the activations kept from the previous pass when they still hold
        (:mod:`fedqc.site.activations`), else from the images; keep the input of the first of them for the next
        pass. Returns the scans that could not be read."""
        first, last = min(positions), max(positions)
        kept = activations.kept(self)
        skipped: list[ScanProblem] = []

        def images():
            loads = (functools.partial(self._images, chunk) for chunk in batches(list(subjects), EVAL_BATCH))
            for (x, ok, bad), _ in prefetch(loads, self.prefetch):
                skipped.extend(bad)
                if ok:
                    yield self.scans.ready(x), ok

        if kept is not None and kept.usable(self.encoder, subjects, first):
            start, source, skipped = kept.position, kept.batches, list(kept.skipped)
        else:
            start, source = 0, images()
        out, before, through = [], activations.children(self.encoder, start, first), \
            activations.children(self.encoder, first, last + 1)
        for x, ok in source:
            x = before(x)
            out.append((x, ok))
            through(x)
        activations.keep(self, self.encoder, subjects, first, out, skipped)
        return skipped

    def evaluate(self, state: State, request: EvalRequest) -> EvalReply:
        """Scores, counts and loss sums of ``state`` on the scans ``request`` names."""
        self._load(state)
        return self._score(request)

    def evaluate_cycle(self, state: State, request: CycleEvalRequest) -> CycleEvalReply:
        """The end of a cycle's scoring in one message: ``state`` loaded once, then each part of ``request`` answered
        as :meth:`evaluate` would answer it alone (the same scans in the same batches: bit-identical replies)."""
        self._load(state)
        return request.answer(self._score)

    def _load(self, state: State) -> None:
        """The model's arrays of ``state`` into the network, in evaluation mode."""
        unpack(state, self.encoder, self.classifier, None, self.head)
        for m in self.modules:
            m.eval()

    @torch.no_grad()
    def _score(self, request: EvalRequest) -> EvalReply:
        """:meth:`evaluate` of the loaded state."""
        exclude = set(request.exclude)
        subjects = [s for s in self.sample(request.split, request.fraction, request.sample_seed) if s not in exclude]
        bn = BatchNormMoments(*(self.encoder, self.classifier) if request.batchnorm else (), only=request.bn_layers)
        positions = activations.batchnorm_positions(self.encoder, self.classifier)
        if request.batchnorm and request.bn_layers and positions is not None:  # moments only, no scores
            with bn, devices.autocast(self.device):
                skipped = self._batchnorm_pass(tuple(subjects), [positions[i] for i in request.bn_layers])
            return EvalReply(counts_from_scores(np.zeros(0), np.zeros(0)), pd.DataFrame(columns=SCORE_COLUMNS),
                             skipped, moments=bn.moments(), answers=request.nonce)
        scores, taps, done, skipped, blocks = [], [], [], [], []
        loads = (functools.partial(self._images, chunk) for chunk in batches(subjects, EVAL_BATCH))
        with bn, devices.autocast(self.device):
            for (x, ok, bad), _ in prefetch(loads, self.prefetch):
                skipped += bad
                if ok:
                    f, t, blocks = encode(self.encoder, self.scans.ready(x))
                    scores.append(torch.sigmoid(self.classifier(f).float()).double().cpu().numpy())
                    taps.append(t.double().cpu().numpy())
                    done += ok
        rows = self.table.loc[done, ["subject", "site", "label", "sex", "age"]].reset_index(drop=True)
        scores = np.concatenate(scores) if scores else np.zeros((0, len(self.targets)))
        rows.insert(3, "score", scores[:, 0])
        for k, column in enumerate(self.model.targets, start=1):  # further targets: label_<name>, score_<name>
            rows[column] = self.table.loc[done, column].to_numpy(dtype=int)
            rows[f"score_{column.removeprefix('label_')}"] = scores[:, k]
        f = np.concatenate(taps) if taps else np.zeros((0, len(request.ood_center)))
        if request.ood_center and len(rows):
            rows["ood"] = feature_distance(f, np.asarray(request.ood_center), np.asarray(request.ood_scale), blocks)
        moments = {"feat_n": np.array([len(f)], dtype=float), "feat_sum": f.sum(0), "feat_sq": (f**2).sum(0)} \
            if request.moments else {}
        moments |= bn.moments() if request.batchnorm else {}
        return EvalReply(counts_from_scores(rows["label"].to_numpy(), rows["score"].to_numpy()), rows, skipped,
                         moments=moments or None, answers=request.nonce)

