"""bench.compare_runs: two run folders are the same run when everything but timing fields matches."""

from __future__ import annotations

import json

import pandas as pd
import torch

from bench.compare_runs import compare


def write_run(folder, weight: float, seconds: float, score: float = 0.5):
    (folder / "clean" / "checkpoints").mkdir(parents=True)
    torch.save({"model": {"w": torch.tensor([1.0, weight])}, "seconds": seconds},
               folder / "clean" / "checkpoints" / "cycle_000.pt")
    pd.DataFrame({"subject": ["a"], "score": [score], "seconds": [seconds]}).to_csv(folder / "clean" / "log.csv",
                                                                                   index=False)
    (folder / "clean" / "summary.json").write_text(json.dumps({"eliminated": 1, "arm_seconds": seconds}))


def test_timing_fields_are_left_out_and_any_other_difference_is_reported(tmp_path):
    write_run(tmp_path / "a", 2.0, 1.0)
    write_run(tmp_path / "b", 2.0, 9.0)
    assert compare(tmp_path / "a", tmp_path / "b") == (3, [])
    write_run(tmp_path / "c", 2.0 + 1e-5, 1.0, score=0.6)
    n, diffs = compare(tmp_path / "a", tmp_path / "c")
    assert diffs == ["clean/checkpoints/cycle_000.pt.model.w", "clean/log.csv"]
    (tmp_path / "c" / "clean" / "summary.json").unlink()
    assert "clean/summary.json: only in " + str(tmp_path / "a") in compare(tmp_path / "a", tmp_path / "c")[1]
