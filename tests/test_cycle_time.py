"""Where a cycle's time goes: ``cycles.csv``'s split adds up to the cycle and matches what the other logs record."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedqc.config import parse_config
from fedqc.data.synth.cohort import generate_cohort
from fedqc.experiment.runner import simulate

PARTS = ["train_seconds", "transport_seconds", "eval_seconds", "calibration_seconds", "test_seconds", "write_seconds"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`fedqc cohort --preset smoke --size 16`, a clean and a QC arm (verification scoring in the round) for two
    cycles in-process, with the default calibration (its evaluation messages at the end of the cycle)."""
    folder = tmp_path_factory.mktemp("cycle-time")
    generate_cohort(folder / "smoke", preset="smoke", size=16, seed=0, workers=1)
    cfg = parse_config({"name": "cycle-time", "manifest": str(folder / "smoke" / "manifest.csv"), "engine": "inprocess",
                        "threads": 1, "model": {"name": "sfcn", "width": 0.25, "input_shape": [16, 16, 16]},
                        "train": {"cycles": 2, "branch_cycle": 0, "batch_size": 5, "lr": 1e-3, "seed": 0},
                        "arms": ["clean", "qc"], "qc": {"start": "scratch", "skill": 0, "audit": False}})
    simulate(cfg, folder / "run", quiet=True)
    return folder / "run"


@pytest.mark.parametrize("arm", ["clean", "qc"])
def test_the_split_adds_up_to_the_cycle(run, arm):
    cycles = pd.read_csv(run / arm / "cycles.csv")
    assert list(cycles.columns) == ["cycle", "hops", "seconds", *PARTS, "other_seconds", "messages", "state_bytes"]
    assert (cycles[[*PARTS, "other_seconds"]] >= 0).all().all()  # no part counted twice
    assert np.allclose(cycles[[*PARTS, "other_seconds"]].sum(axis=1), cycles["seconds"], rtol=0, atol=1e-9)
    log = pd.read_csv(run / arm / "train_log.csv")
    hops = log.groupby("cycle")[["seconds", "hop_seconds"]].sum()
    if arm == "clean":  # a plain hop's seconds are the site's training: the same figures, summed apart
        assert np.allclose(cycles["train_seconds"], hops["seconds"].to_numpy())
        assert (cycles["eval_seconds"] == 0).all()
    else:  # QC scores its candidates inside the visit
        assert (cycles["eval_seconds"] > 0).all()
    # the round's training and evaluation messages happen inside its hops
    inside = cycles[["train_seconds", "transport_seconds", "eval_seconds"]].sum(axis=1).to_numpy()
    assert (inside <= hops["hop_seconds"].to_numpy() + 1e-9).all()
    assert (cycles["calibration_seconds"] > 0).all()  # the default calibration runs every cycle
