"""Which encoder activations separate harmful scans: feature distance by harm kind, last layer vs every block.

Scores every training scan of a manifest with one checkpoint, measures each scan's
feature distance to the good verification scans (:func:`fedqc.scoring.feature_distance`)
over (a) the encoder's output only and (b) every block's activations
(:func:`fedqc.models.encode`, what the ``ood`` check uses), and prints the robust z
(median/MAD of the verification scans' log distances) per harm kind. A second table
gives, for the distance over the first k blocks (k = 1 .. all), the largest z of a good
training scan and the smallest of each image harm: where the margin is. The ground truth
is used only to pick the good verification scans and to group the output: this is an
analysis of the check, not the check.

    python -m bench.feature_distance --run runs/demo-protocols-study/seed_0 --arm clean --cycle 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedqc.analysis.infer import run_config
from fedqc.analysis.report import markdown_table
from fedqc.data.images import load_image
from fedqc.data.manifest import load_manifest
from fedqc.experiment.run_dir import RunDir, load_checkpoint
from fedqc.models import encode, network
from fedqc.models.state import unpack
from fedqc.qc.scans import FeatureReference, OODLimit
from fedqc.scoring import feature_distance


def activations(encoder, paths: list[str], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(last features, every block's spatial means, block widths) of each scan."""
    last, taps, blocks = [], [], []
    with torch.no_grad():
        for path in paths:
            f, t, blocks = encode(encoder, torch.from_numpy(np.array(load_image(path, shape)))[None])
            last.append(f.numpy()[0])
            taps.append(t.numpy()[0])
    return np.array(last, dtype=float), np.array(taps, dtype=float), blocks


def robust_z(reference: np.ndarray, scans: np.ndarray, blocks: list[int] | None) -> np.ndarray:
    moments = [{"feat_n": np.array([len(reference)]), "feat_sum": reference.sum(0), "feat_sq": (reference**2).sum(0)}]
    ref = FeatureReference.from_moments(moments)
    limit = OODLimit.from_null(feature_distance(reference, ref.center, ref.scale, blocks), limit=0.0)
    return limit.score(feature_distance(scans, ref.center, ref.scale, blocks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder (e.g. seed_0 of a study)")
    parser.add_argument("--arm", default="clean")
    parser.add_argument("--cycle", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = run_config(RunDir(args.run))
    manifest = load_manifest(cfg.manifest)
    encoder, classifier = network(cfg.model)
    unpack(load_checkpoint(RunDir(args.run).arm(args.arm).checkpoint(args.cycle))["state"], encoder, classifier, None)
    encoder.eval()
    shape = tuple(cfg.model.input_shape)
    val = manifest[(manifest["split"] == "val") & (manifest["harm"] == "none")]
    train = manifest[manifest["split"] == "train"]
    v_last, v_taps, blocks = activations(encoder, list(val["path"]), shape)
    t_last, t_taps, _ = activations(encoder, list(train["path"]), shape)
    out = train[["harm"]].assign(last_layer=robust_z(v_last, t_last, None), every_block=robust_z(v_taps, t_taps, blocks))
    table = out.groupby("harm").agg(n=("harm", "size"), last_min=("last_layer", "min"), last_max=("last_layer", "max"),
                                    blocks_min=("every_block", "min"), blocks_max=("every_block", "max"))
    print(f"robust z of the feature distance, {args.run} {args.arm} cycle {args.cycle} "
          f"({len(val)} good val scans as the reference; blocks {blocks})")
    print(markdown_table(table.round(2).reset_index()))
    edges = np.cumsum([0, *blocks])
    rows = []
    for k in range(1, len(blocks) + 1):
        z = pd.Series(robust_z(v_taps[:, : edges[k]], t_taps[:, : edges[k]], blocks[:k]), index=train.index)
        good = z[train["harm"] == "none"]
        rows.append({"first blocks": k, "good max": good.max(), "good > 3.5": int((good > 3.5).sum()),
                     **{f"{h} min": z[train["harm"] == h].min() for h in ("noise", "inverted", "blank")
                        if (train["harm"] == h).any()}})
    print("\nthe distance over the first k blocks: largest good z, smallest z of each image harm")
    print(markdown_table(pd.DataFrame(rows).round(2)))


if __name__ == "__main__":
    pd.set_option("display.width", 120)
    main()
