"""The Python API (docs/api.md): its worked example runs as written, and its results are what the commands give."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import fedqc
from fedqc.cli import app
from fedqc.data.synth.cohort import generate_cohort
from fedqc.errors import RunDirError, UserError

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """docs/api.md's code blocks run in a folder holding the smoke cohort; their variables."""
    folder = tmp_path_factory.mktemp("api")
    generate_cohort(folder / "data" / "smoke", preset="smoke", size=16, seed=0, workers=1)
    code = "\n".join(re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S))
    assert "fedqc.run(" in code and "fedqc.study(" in code and "fedqc.load_run(" in code
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        scope: dict = {}
        exec(compile(code, str(DOC), "exec"), scope)
    return folder, scope


@pytest.mark.slow
def test_the_worked_example_gives_what_the_commands_give(example):
    folder, scope = example
    result, run = scope["result"], folder / "runs" / "api-example"
    assert isinstance(result, fedqc.RunResult) and result.path == run.resolve()
    assert result.config.name == "api-example" and result.config.manifest == run.resolve() / "data" / "manifest.csv"
    assert list(result.arms) == ["clean", "dirty", "qc"]
    qc = result.arms["qc"]
    assert set(qc.checkpoints) == {0, 1} and qc.last_checkpoint.is_file()
    assert {"flagged", "eliminated", "detection", "qc_log"} <= set(qc.qc) and qc.qc_summary["criterion"]
    assert result.arms["dirty"].qc == {} and set(result.arms["dirty"].checkpoints) == {1}
    flagged = pd.read_csv(run / "qc" / "flagged.csv")
    pd.testing.assert_frame_equal(result.qc_table("flagged"), flagged.assign(arm="qc")[["arm", *flagged.columns]])
    pd.testing.assert_frame_equal(qc.predictions(), pd.read_csv(run / "qc" / "predictions" / "cycle_001.csv"))
    # the metrics are fedqc infer's, to the digit: same bootstrap seed and resamples
    code = CliRunner().invoke(app, ["infer", "--run", str(run), "--n-boot", "200"]).exit_code
    assert code == 0
    infer = pd.read_csv(run / "metrics.csv")
    again = scope["again"]
    pd.testing.assert_frame_equal(again.metrics.reset_index(drop=True), infer, check_dtype=False, atol=1e-12)
    last = infer[infer["group"] == "all"].groupby("arm", sort=False).tail(1)
    assert again.summary()["auroc"].tolist() == pytest.approx(last["auroc"].tolist())
    study = scope["study"]
    assert study.seeds == [0, 1] and set(study.table["seed"]) == {0, 1}
    assert (folder / study.path / "summary.csv").is_file() and scope["first"].config.train.seed == 0


@pytest.mark.slow
def test_api_errors_are_the_commands_one_line_errors(example):
    folder, scope = example
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        with pytest.raises(RunDirError, match="already exists; pass --resume"):
            fedqc.run(scope["config"], out="runs/api-example")
        with pytest.raises(UserError, match="train.cycles: must be >= 1"):
            fedqc.run(scope["config"], out="runs/other", overrides={"train.cycles": 0})
        with pytest.raises(UserError, match="expected a YAML path, a mapping or an ExperimentConfig"):
            fedqc.run(42)
        with pytest.raises(UserError, match="is not a run folder"):
            fedqc.load_run("data/smoke")
        with pytest.raises(UserError, match="qc_table: expected one of"):
            scope["result"].qc_table("flags")
        with pytest.raises(UserError, match="no predictions for cycle 7"):
            scope["result"].arms["qc"].predictions(7)


@pytest.mark.slow
def test_a_sweep_returns_one_study_per_value(example, tmp_path):
    folder, scope = example
    config = {**scope["config"], "manifest": str(folder / "data" / "smoke" / "manifest.csv"), "scenario": None,
              "arms": ["clean"]}
    sweep = fedqc.study(config, seeds=[0], out=tmp_path / "sweep", sweep="train.cycles=1,2")
    assert sweep.key == "train.cycles" and set(sweep.studies) == {1, 2}
    assert set(sweep.summary["value"]) == {1, 2}
    assert sweep.studies[2].load_run(0).metrics["cycle"].max() == 1
    with pytest.raises(UserError, match="a sweep: use .studies"):
        sweep.load_run(0)
