"""bench.tuning: a strategy's lr and local epochs chosen on the verification scans, within the issue's budget."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from bench.tuning import grid, tune
from fedqc.data.manifest import load_manifest
from fedqc.errors import UserError
from tests.conftest import with_absolute_paths


def test_the_grid_holds_at_most_six_points_and_the_travelling_model_has_no_epochs():
    assert grid("travelling", [1e-3, 1e-2], [1, 3]) == [(1e-3, 1), (1e-2, 1)]
    assert grid("fedavg", [1e-3, 1e-2], [1, 3]) == [(1e-3, 1), (1e-2, 1), (1e-3, 3), (1e-2, 3)]
    with pytest.raises(UserError, match="7 grid points"):
        grid("travelling", [1e-4 * k for k in range(1, 8)], [1])
    with pytest.raises(UserError, match="9 grid points"):
        grid("fedprox", [1e-3, 3e-3, 1e-2], [1, 2, 3])


def config(tmp_path, manifest) -> str:
    path = tmp_path / f"{manifest.stem}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tune", "manifest": str(manifest), "engine": "inprocess", "threads": 1, "arms": ["clean"],
        "model": {"name": "sfcn", "width": 0.25, "input_shape": [16, 16, 16]},
        "train": {"cycles": 2, "branch_cycle": 0, "batch_size": 5, "lr": 1e-3, "seed": 1},
        "calibration": {"batchnorm": "site", "threshold": "prevalence"}}))
    return path


def test_the_lr_grid_must_hold_the_travelling_models_lr(tiny_cohort, tmp_path):
    with pytest.raises(UserError, match=r"train.lr \(0.001\)"):
        tune(config(tmp_path, tiny_cohort / "manifest.csv"), tmp_path / "out", ["fedavg"], [1e-2], [1])


@pytest.mark.slow
def test_shuffled_test_labels_change_the_test_scores_and_not_the_choice(tiny_cohort, tmp_path):
    table = load_manifest(tiny_cohort / "manifest.csv", check_images=False)
    test = table["split"] == "test"
    shuffled = table.copy()
    shuffled.loc[test, "label"] = np.random.default_rng(0).permutation(shuffled.loc[test, "label"].to_numpy())
    assert (shuffled["label"] != table["label"]).any()
    with_absolute_paths(shuffled, tiny_cohort).to_csv(tmp_path / "shuffled.csv", index=False)
    runs = {name: tune(config(tmp_path, manifest), tmp_path / name, ["travelling", "fedavg"], [1e-3, 3e-2], [1],
                       last=2)
            for name, manifest in (("true", tiny_cohort / "manifest.csv"), ("shuffled", tmp_path / "shuffled.csv"))}
    choice = ["strategy", "lr", "local_epochs", "val_auroc", "chosen"]
    pd.testing.assert_frame_equal(runs["true"][choice], runs["shuffled"][choice])
    assert runs["true"]["chosen"].sum() == 2 and runs["true"]["val_auroc"].nunique() > 1
    assert not np.allclose(runs["true"]["test_auroc_last"], runs["shuffled"]["test_auroc_last"])
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "true").rglob("checkpoints/*")}
    again = tune(config(tmp_path, tiny_cohort / "manifest.csv"), tmp_path / "true", ["travelling", "fedavg"],
                 [1e-3, 3e-2], [1], last=2)  # every point done: scored again, nothing retrained
    assert done and done == {p: p.stat().st_mtime_ns for p in (tmp_path / "true").rglob("checkpoints/*")}
    pd.testing.assert_frame_equal(again[choice], runs["true"][choice])
