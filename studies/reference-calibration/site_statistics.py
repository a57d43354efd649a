"""Test AUROC of a checkpoint under three choices of BatchNorm statistics: the checkpoint's running ones (``eval``),
each test site's test scans as one batch (``test-batch``), and each site's own good train + val scans (``own``: no
labels, the site's own data). Sites with fewer than 2 test or 2 other good scans are left out.

Usage, from the repository root: ``python studies/reference-calibration/site_statistics.py CHECKPOINT MANIFEST``.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from fedqc.analysis.bias import load_checkpoint, model_spec
from fedqc.data.images import load_image
from fedqc.data.manifest import load_manifest
from fedqc.models import bias_head, network
from fedqc.models.state import unpack


def site_statistics_auroc(checkpoint: str, manifest: str) -> dict[str, float]:
    """The test AUROC of ``checkpoint``'s model on ``manifest``'s good test scans under each choice of statistics,
    and ``n``, the scans scored."""
    table = load_manifest(manifest, check_images=False)
    table = table[table["harm"] == "none"]
    ckpt = load_checkpoint(checkpoint)
    spec = model_spec(ckpt["model"])
    encoder, classifier = network(spec)
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def images(rows: pd.DataFrame) -> torch.Tensor:
        return torch.from_numpy(np.stack([load_image(p, tuple(spec.input_shape)) for p in rows["path"]]))

    def score(x: torch.Tensor) -> list[float]:
        return classifier(encoder(x)).squeeze(-1).tolist()

    scores: dict[str, list[float]] = {"eval": [], "test-batch": [], "own": []}
    labels: list[int] = []
    with torch.no_grad():
        for _, rows in table.groupby("site"):
            test, own = rows[rows["split"] == "test"], rows[rows["split"] != "test"]
            if len(test) < 2 or len(own) < 2:
                continue
            x = images(test)
            labels += test["label"].tolist()
            unpack(ckpt["state"], encoder, classifier, None, bias_head(spec, classifier))
            classifier.eval()
            encoder.eval()
            scores["eval"] += score(x)
            for m in norms:  # BatchNorm (only: dropout stays off) normalises with the batch's own moments
                m.train()
            scores["test-batch"] += score(x)
            for m in norms:  # running statistics = the cumulative moments of the site's own scans
                m.reset_running_stats()
                m.momentum = None
            encoder(images(own))
            for m in norms:
                m.eval()
            scores["own"] += score(x)
    return {k: float(roc_auc_score(labels, v)) for k, v in scores.items()} | {"n": len(labels)}


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = site_statistics_auroc(sys.argv[1], sys.argv[2])
    print(" ".join(f"{k} {v:.3f}" if k != "n" else f"n {v}" for k, v in result.items()))
