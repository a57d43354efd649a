"""What one center does, in plain Python: train a visit (or a given subset) and evaluate.

A :class:`Site` holds its own rows of the manifest and its own copy of the network; the
travelling state (weights + optimizer, :mod:`fedqc.state`) comes in and goes out as
arrays. Training is one local epoch over the chosen scans in a seeded order, batch size
``batch_size`` or the number of scans if smaller, the last partial batch trained (the
reference drops it; we do not). Evaluation returns confusion counts at threshold 0.5,
loss and Brier sums with fixed keys, and per-scan scores.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedqc.audit import audit_image
from fedqc.data.dataset import ImageError, load_image
from fedqc.metrics import counts_from_scores
from fedqc.models import build_model
from fedqc.state import State, pack, unpack

EVAL_BATCH = 16


@dataclass(frozen=True)
class ModelSpec:
    """Which network and at which input shape."""

    name: str = "sfcn"
    width: float = 0.5
    input_shape: tuple[int, int, int] = (32, 32, 32)


@dataclass
class TrainResult:
    state: State
    n_scans: int
    loss: float
    seconds: float
    subjects: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class EvalResult:
    counts: dict[str, float]
    scores: pd.DataFrame  # subject, site, label, score, sex, age
    skipped: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None  # the site failed or did not answer: no scores this time

    @classmethod
    def failed(cls, reason: str) -> EvalResult:
        empty = pd.DataFrame(columns=["subject", "site", "label", "score", "sex", "age"])
        return cls(counts_from_scores(np.zeros(0), np.zeros(0)), empty, [], reason)


def batches(items: list, batch_size: int) -> list[list]:
    """Consecutive chunks of ``min(batch_size, len(items))``; the last may be partial."""
    size = max(1, min(batch_size, len(items)))
    return [items[i : i + size] for i in range(0, len(items), size)]


class Site:
    """One center: its manifest rows and a private copy of the network."""

    def __init__(self, name: str, table: pd.DataFrame, *, model: ModelSpec = ModelSpec()):
        self.name = name
        self.table = table.set_index("subject", drop=False)
        self.model = model
        self.encoder, self.classifier = build_model(model.name, input_shape=model.input_shape, width=model.width)
        self.encoder.to(memory_format=torch.channels_last_3d)  # ~1.5× faster 3D convolutions on CPU
        self.loss_fn = nn.BCEWithLogitsLoss()

    @functools.cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        """Built on first training only: creating it imports torch._dynamo (~2 s of a fresh ClientApp)."""
        return torch.optim.Adam(list(self.encoder.parameters()) + list(self.classifier.parameters()))

    def subjects(self, split: str, *, include_harmful: bool = True) -> list[str]:
        rows = self.table[self.table["split"] == split]
        if not include_harmful:
            rows = rows[rows["harm"] == "none"]
        return list(rows["subject"])

    def info(self) -> dict[str, int]:
        """Scan counts per split (and good training scans); no data, only counts."""
        return {"train": len(self.subjects("train")), "train_good": len(self.subjects("train", include_harmful=False)),
                "val": len(self.subjects("val")), "test": len(self.subjects("test"))}

    def _images(self, subjects: list[str]) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
        arrays, ok, skipped = [], [], []
        for s in subjects:
            try:
                arrays.append(load_image(self.table.at[s, "path"], tuple(self.model.input_shape)))
                ok.append(s)
            except ImageError as exc:
                skipped.append((s, str(exc)))
        x = torch.from_numpy(np.stack(arrays)).contiguous(memory_format=torch.channels_last_3d) if arrays \
            else torch.empty(0)
        return x, ok, skipped

    def train(
        self,
        state: State,
        *,
        lr: float,
        seed: int,
        batch_size: int = 5,
        subjects: list[str] | None = None,
        include_harmful: bool = True,
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> TrainResult:
        """One local epoch.

        Parameters
        ----------
        state
            Incoming weights and optimizer state.
        lr
            Learning rate for this visit.
        seed
            Seeds the scan order and dropout; the server derives it per hop.
        subjects
            Train exactly these scans in this order (QC retraining); otherwise all of the
            site's training scans (minus ``exclude``, and minus harmful ones unless
            ``include_harmful``) in a seeded random order.
        """
        optimizer = self.optimizer  # built before the clock starts: its first creation is set-up, not training
        t0 = time.perf_counter()
        if subjects is None:
            pool = [s for s in self.subjects("train", include_harmful=include_harmful) if s not in exclude]
            subjects = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
        unknown = [s for s in subjects if s not in self.table.index]
        if unknown:
            raise KeyError(f"site {self.name}: unknown subject(s) {unknown[:5]}")
        unpack(state, self.encoder, self.classifier, optimizer)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(seed)
        self.encoder.train()
        self.classifier.train()
        total, n_done, done, skipped = 0.0, 0, [], []
        for chunk in batches(subjects, batch_size):
            x, ok, bad = self._images(chunk)
            skipped += bad
            if not ok:
                continue
            y = torch.tensor(self.table.loc[ok, "label"].to_numpy(dtype=np.float32))
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.classifier(self.encoder(x)).squeeze(1), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(ok)
            n_done += len(ok)
            done += ok
        return TrainResult(pack(self.encoder, self.classifier, optimizer), n_done,
                           total / n_done if n_done else float("nan"), time.perf_counter() - t0, done, skipped)

    def audit(self) -> list[tuple[str, str, str]]:
        """Image-level checks (:mod:`fedqc.audit`) on the train and val scans: (subject, split, reason)."""
        flagged = []
        for split in ("train", "val"):
            for s in self.subjects(split):
                try:
                    reason = audit_image(load_image(self.table.at[s, "path"], tuple(self.model.input_shape)))
                except ImageError as exc:
                    reason = str(exc)
                if reason:
                    flagged.append((s, split, reason))
        return flagged

    def sample(self, split: str, fraction: float, seed: int) -> list[str]:
        """A seeded share of a split: ``max(1, round(fraction · n))`` scans, in manifest order."""
        subjects = self.subjects(split)
        if fraction >= 1 or not subjects:
            return subjects
        keep = set(np.random.default_rng(seed).permutation(subjects)[: max(1, round(fraction * len(subjects)))])
        return [s for s in subjects if s in keep]

    @torch.no_grad()
    def evaluate(self, state: State, *, split: str, exclude: frozenset[str] | set[str] = frozenset(),
                 fraction: float = 1.0, sample_seed: int = 0) -> EvalResult:
        """Scores, counts and loss sums of ``state`` on this site's ``split`` scans.

        ``fraction`` < 1 evaluates a seeded subsample (:meth:`sample`), e.g. a smaller
        verification set for QC.
        """
        unpack(state, self.encoder, self.classifier, None)
        self.encoder.eval()
        self.classifier.eval()
        subjects = [s for s in self.sample(split, fraction, sample_seed) if s not in exclude]
        scores, done, skipped = [], [], []
        for chunk in batches(subjects, EVAL_BATCH):
            x, ok, bad = self._images(chunk)
            skipped += bad
            if ok:
                scores.append(torch.sigmoid(self.classifier(self.encoder(x)).squeeze(1)).double().numpy())
                done += ok
        rows = self.table.loc[done, ["subject", "site", "label", "sex", "age"]].reset_index(drop=True)
        rows.insert(3, "score", np.concatenate(scores) if scores else np.zeros(0))
        return EvalResult(counts_from_scores(rows["label"].to_numpy(), rows["score"].to_numpy()), rows, skipped)
