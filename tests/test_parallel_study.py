"""`fedqc study --parallel`: runs as Ray tasks give the sequential weights, a failing run is reported and the others
finish, a resume keeps the thread count, bad options end in one line."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fedqc.cli import app
from fedqc.experiment.run_dir import RunDir, load_checkpoint
from tests.conftest import same, tiny_config

SWEEP = "train.lr=0.001,0.002"
RUNS = [(lr, seed) for lr in (0.001, 0.002) for seed in (0, 1)]
TIMES = ["seconds", "cycle_seconds"]  # wall times: the only figures that may differ between two executions


def study(config, out, *extra):
    return CliRunner().invoke(app, ["study", "--config", str(config), "--seeds", "0", "1", "--out", str(out),
                                    "--sweep", SWEEP, "--quiet", *map(str, extra)])


def run_dir(out, lr, seed) -> RunDir:
    return RunDir(out / f"train.lr={lr}" / f"seed_{seed}")


def untimed(ckpt: dict) -> dict:
    """A checkpoint without its state and the calibration's seconds."""
    rest = {k: v for k, v in ckpt.items() if k not in ("state", "encoder", "classifier", "bias", "optim")}
    if "calibration" in rest:
        rest["calibration"] = {k: v for k, v in rest["calibration"].items() if k != "seconds"}
    return rest


@pytest.fixture(scope="module")
def studies(tiny_cohort, tmp_path_factory):
    """The same 2-seed × 2-value study run sequentially and with --parallel 2, one thread per run."""
    tmp = tmp_path_factory.mktemp("parallel")
    config = tmp / "tiny.yaml"
    cfg = tiny_config(tiny_cohort / "manifest.csv", **{"arms": ["clean"], "train.cycles": 2, "threads": 1})
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    for name, extra in (("seq", ()), ("par", ("--parallel", 2))):
        result = study(config, tmp / name, *extra)
        assert result.exit_code == 0, result.output
    return config, tmp / "seq", tmp / "par"


@pytest.mark.slow
def test_parallel_runs_give_the_sequential_weights_and_tables(studies):
    _, seq, par = studies
    for lr, seed in RUNS:
        arm_s, arm_p = run_dir(seq, lr, seed).arm("clean"), run_dir(par, lr, seed).arm("clean")
        assert arm_s.cycles("checkpoints") == arm_p.cycles("checkpoints") == [0, 1]
        for cycle in (0, 1):
            a, b = load_checkpoint(arm_s.checkpoint(cycle)), load_checkpoint(arm_p.checkpoint(cycle))
            assert same(a["state"], b["state"]) and untimed(a) == untimed(b)
    other = load_checkpoint(run_dir(par, 0.001, 1).arm("clean").checkpoint(1))["state"]
    assert not same(load_checkpoint(run_dir(par, 0.001, 0).arm("clean").checkpoint(1))["state"], other)
    for table in ("sweep.csv", "train.lr=0.002/study.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(seq / table).drop(columns=TIMES),
                                      pd.read_csv(par / table).drop(columns=TIMES))
    assert not (par / "missing.csv").exists()


@pytest.mark.slow
def test_a_failing_run_is_reported_and_the_others_finish(studies, tmp_path):
    config, _, par = studies
    out = tmp_path / "par"
    shutil.copytree(par, out)
    resumed = run_dir(out, 0.001, 0).arm("clean")  # killed after cycle 0: resumes mid-arm
    resumed.checkpoint(1).unlink()
    broken = run_dir(out, 0.002, 1).arm("clean")  # its only checkpoint unreadable: the run fails
    broken.checkpoint(1).unlink()
    broken.checkpoint(0).write_bytes(b"not a checkpoint")
    result = study(config, out, "--parallel", 2)
    assert result.exit_code == 1
    assert "1 of 4 runs failed" in result.output and "train.lr=0.002, seed 1: failed (" in result.output
    assert "Traceback" not in result.output
    assert same(load_checkpoint(resumed.checkpoint(1))["state"],
                load_checkpoint(run_dir(par, 0.001, 0).arm("clean").checkpoint(1))["state"])
    missing = pd.read_csv(out / "missing.csv")
    assert list(missing["run"]) == ["train.lr=0.002, seed 1"] and missing["error"].str.len().gt(0).all()
    rows = pd.read_csv(out / "sweep.csv")
    assert sorted(zip(rows["value"], rows["seed"])) == [(0.001, 0), (0.001, 1), (0.002, 0)]
    assert "## Missing runs" in (out / "sweep.md").read_text()
    assert "## Missing runs" in (out / "train.lr=0.002" / "study.md").read_text()
    assert not (out / "train.lr=0.001" / "missing.csv").exists()


def test_a_resume_refuses_another_thread_count(tiny_cohort, tmp_path):
    config = tmp_path / "tiny.yaml"
    cfg = tiny_config(tiny_cohort / "manifest.csv", **{"arms": ["clean"], "threads": 1})
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    run = tmp_path / "out" / "train.lr=0.001" / "seed_0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(tiny_config(tiny_cohort / "manifest.csv", **{
        "arms": ["clean"], "threads": 1, "train.seed": 0, "train.lr": 0.001}).to_dict()))
    result = study(config, tmp_path / "out", "--threads-per-run", 2)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "was run with 1 thread(s), this study asks 2" in lines[0]
    assert "--threads-per-run 1" in lines[0]
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]  # nothing ran


@pytest.mark.parametrize("extra, message", [
    (["--parallel", "0"], "--parallel must be >= 1"),
    (["--parallel", "2", "--ray-address", "127.0.0.1:6379"], "give one of --parallel N or --ray-address"),
    (["--threads-per-run", "0"], "--threads-per-run must be >= 1"),
    (["--gpus-per-run", "1"], "--gpus-per-run needs --parallel N or --ray-address"),
    (["--parallel", "1", "--gpus-per-run", "-1"], "--gpus-per-run must be >= 0"),
    (["--ray-address", "headnode"], "expected HOST:PORT"),
    (["--ray-address", "127.0.0.1:1"], "no Ray head node answers there"),
])
def test_bad_options_end_in_one_line(tiny_cohort, tmp_path, extra, message):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_cohort / "manifest.csv", arms=["clean"]).to_dict()))
    result = study(config, tmp_path / "out", *extra)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not (tmp_path / "out").exists()
