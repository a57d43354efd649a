"""`flwr run .` through scripts/flwr_run.sh: same weights as in-process, SuperLink stopped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from fedqc.experiment.run_dir import load_checkpoint
from fedqc.experiment.runner import simulate
from tests.conftest import checkpoint_path, same, tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.flower
def test_flwr_run_matches_inprocess(tiny_cohort, tmp_path):
    cfg = tiny_config(tiny_cohort / "manifest.csv", **{"train.cycles": 2, "arms": ["clean"], "engine": "flower"})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "flwr"
    proc = subprocess.run([str(ROOT / "scripts" / "flwr_run.sh"), str(config), str(out), "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "flwr run status: finished:completed" in proc.stdout
    running = subprocess.run(["pgrep", "-f", f"{out}/.flwr/local-superlink"], capture_output=True, text=True)
    assert running.stdout == "", "the SuperLink was left running"

    inproc = tmp_path / "inproc"
    simulate(tiny_config(tiny_cohort / "manifest.csv", **{"train.cycles": 2, "arms": ["clean"]}), inproc, quiet=True)
    for cycle in (0, 1):
        assert same(load_checkpoint(checkpoint_path(out / "clean", cycle))["state"],
                    load_checkpoint(checkpoint_path(inproc / "clean", cycle))["state"])
