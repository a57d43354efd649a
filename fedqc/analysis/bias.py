"""A bias study's figures for one arm: test AUROC on the normal and the bias-flipped test split, and how well a
linear probe reads the bias from the frozen encoder's features.

``bias_flipped.csv`` (written next to the manifest by a scenario's ``bias`` entries) is the
test split with every covered scan's marker reversed: a model that learned the marker
instead of the disease loses AUROC there. The probe is scikit-learn's logistic
regression on standardised features of the arm's last checkpoint, fitted on the train
and val scans and scored on the test scans (balanced accuracy; chance is one over the
number of bias classes), good scans only when the manifest records harm. Both are
analyses of a simulation, run where its manifest and scans are — never part of a
site's reply. Results are kept in ``<arm>/bias.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedqc.analysis.infer import predict_checkpoint, run_config
from fedqc.analysis.metrics import auroc
from fedqc.config.schema import model_spec
from fedqc.data.manifest import load_manifest
from fedqc.experiment.run_dir import RunDir, load_checkpoint
from fedqc.io import atomic_write_text

FLIPPED = "bias_flipped.csv"
LAST = 3  # cycles averaged, as the study's last-3 AUROC
BATCH = 16


def encoder_features(checkpoint: Path, table: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The frozen encoder's features (eval mode) of ``table``'s scans, and the subjects they belong to (an
    unreadable scan is left out)."""
    import torch

    from fedqc.data.images import ImageError, load_image
    from fedqc.models import bias_head, network
    from fedqc.models.state import unpack

    ckpt = load_checkpoint(checkpoint)
    spec = model_spec(ckpt["model"])
    encoder, classifier = network(spec)
    unpack(ckpt["state"], encoder, classifier, None, bias_head(spec, classifier))
    encoder.eval()
    features, kept = [], []
    rows = list(zip(table["subject"], table["path"]))
    with torch.no_grad():
        for start in range(0, len(rows), BATCH):
            scans = []
            for subject, path in rows[start:start + BATCH]:
                try:
                    scans.append(load_image(path, tuple(spec.input_shape)))
                except ImageError:
                    continue
                kept.append(subject)
            if scans:
                features.append(encoder(torch.from_numpy(np.stack(scans))).numpy())
    return (np.concatenate(features) if features else np.zeros((0, 0))), kept


def probe_accuracy(features: np.ndarray, target: np.ndarray, fit: np.ndarray) -> float:
    """Balanced accuracy on the rows not in ``fit`` of a logistic regression fitted on the rows in ``fit``; NaN
    when the fitted rows hold one class only or no row is left to score."""
    if len(set(target[fit])) < 2 or fit.all():
        return float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(features[fit], target[fit])
    return float(balanced_accuracy_score(target[~fit], probe.predict(features[~fit])))


def checkpoint_probes(checkpoint: Path, table: pd.DataFrame, columns: tuple[str, ...] = ("scanner", "sex")
                      ) -> dict[str, float]:
    """How well each of ``columns`` (a confound: scanner, sex) reads from the frozen encoder's features of
    ``checkpoint``: a linear probe's balanced accuracy (:func:`probe_accuracy`), fitted on ``table``'s train and val
    scans and scored on its test scans; also each column's chance level (one over its classes)."""
    features, subjects = encoder_features(checkpoint, table)
    rows = table.set_index("subject").loc[subjects]
    fit = (rows["split"] != "test").to_numpy()
    out = {}
    for column in columns:
        values = rows[column].astype(str).to_numpy()
        out[f"probe_{column}"] = probe_accuracy(features, values, fit)
        out[f"probe_{column}_chance"] = 1 / len(set(values))
    return out


def bias_row(run: RunDir, arm: str) -> dict:
    """``auroc_flipped_last3`` (the bias-flipped test split, last three cycles) when the run has one, and the probe's
    ``probe_bacc`` / ``probe_chance`` for the model's bias target when the manifest has its column; {} for a run
    that asks for neither (no unlearning head, no bias target other than the default marker, no bias-flipped
    split). Cached in ``<arm>/bias.json`` for the arm's last cycle."""
    arm_dir = run.arm(arm)
    cycles = arm_dir.cycles("checkpoints")
    cfg = run_config(run)
    flipped = cfg.manifest.parent / FLIPPED if cfg.manifest is not None else None
    asked = cfg.model.unlearn != "none" or cfg.model.bias_target != "marker" or flipped.is_file()
    if not cycles or cfg.manifest is None or not asked:
        return {}
    cache = arm_dir.path / "bias.json"
    if cache.is_file() and (kept := json.loads(cache.read_text())).get("cycle") == cycles[-1]:
        return {k: v for k, v in kept.items() if k != "cycle"}
    row: dict = {}
    if flipped.is_file():
        table = load_manifest(flipped)
        row["auroc_flipped_last3"] = float(np.mean([auroc(predict_checkpoint(arm_dir.checkpoint(c), table))
                                                    for c in cycles[-LAST:]]))
    manifest = load_manifest(cfg.manifest)
    if "harm" in manifest:  # the probe reads good scans: a corrupted one would tell it about its corruption
        manifest = manifest[manifest["harm"] == "none"]
    target = cfg.model.bias_target
    if target in manifest:
        probe = checkpoint_probes(arm_dir.checkpoint(cycles[-1]), manifest, (target,))
        row |= {"probe_target": target, "probe_bacc": probe[f"probe_{target}"],
                "probe_chance": probe[f"probe_{target}_chance"]}
    atomic_write_text(json.dumps({"cycle": cycles[-1], **row}, indent=1), cache)
    return row
