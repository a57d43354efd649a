"""`fedqc study`: aggregation over seeds, and a study that resumes seed by seed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fedqc.analysis.study import summarize, write_study
from fedqc.experiment.run_dir import RunDir, load_checkpoint
from fedqc.experiment.study import plan_study, run_all, seed_dir
from tests.conftest import same, tiny_config


def test_summary_is_mean_sd_and_t_interval_per_arm_and_figure():
    rows = pd.DataFrame({"seed": [0, 1, 2, 0, 1, 2], "arm": ["a"] * 3 + ["b"] * 3,
                         "auroc": [0.6, 0.7, 0.5, 0.5, np.nan, 0.6], "verifications": [10, 12, 14, 1, 1, 1]})
    s = summarize(rows).set_index(["arm", "figure"])
    a = s.loc[("a", "auroc")]
    half = stats.t.ppf(0.975, 2) * np.std([0.6, 0.7, 0.5], ddof=1) / math.sqrt(3)
    assert a["n"] == 3 and a["mean"] == pytest.approx(0.6) and a["sd"] == pytest.approx(0.1)
    assert (a["ci_lo"], a["ci_hi"]) == pytest.approx((0.6 - half, 0.6 + half))
    b = s.loc[("b", "auroc")]  # a missing value is left out, not counted as 0
    assert b["n"] == 2 and b["mean"] == pytest.approx(0.55)
    assert s.loc[("b", "verifications"), "sd"] == 0 and s.loc[("b", "verifications"), "ci_lo"] == 1
    one = summarize(rows[rows["seed"] == 0]).set_index(["arm", "figure"]).loc[("a", "auroc")]
    assert one["n"] == 1 and one["mean"] == 0.6 and math.isnan(one["sd"]) and math.isnan(one["ci_lo"])
    assert "seed" not in set(s.index.get_level_values("figure"))


def test_intervals_are_clipped_to_what_the_figure_can_be():
    rows = pd.DataFrame({"seed": [0, 1, 2], "arm": ["a"] * 3, "accuracy": [0.99, 0.5, 1.0],
                         "recall_single-scan_noise": [0.0, 0.0, 0.5], "good_lost": [0, 0, 30]})
    s = summarize(rows).set_index("figure")
    assert s.loc["accuracy", "ci_hi"] == 1.0 and 0 < s.loc["accuracy", "ci_lo"] < s.loc["accuracy", "mean"]
    assert s.loc["recall_single-scan_noise", "ci_lo"] == 0.0
    assert s.loc["good_lost", "ci_lo"] == 0.0 and s.loc["good_lost", "ci_hi"] > 30


@pytest.mark.slow
def test_study_runs_every_seed_and_resumes_an_interrupted_one(tiny_cohort, tmp_path):
    # skill 0: QC decides from its first cycle, whatever a 3-cycle tiny model learned on this machine's float paths
    cfg = tiny_config(tiny_cohort / "manifest.csv", **{"arms": ["clean", "dirty", "qc"], "train.cycles": 3,
                                                       "qc": {"audit": True, "skill": 0}})
    out = tmp_path / "study"
    planned = plan_study(cfg, [0, 1], out)
    run_all(planned, quiet=True)
    runs = [r.folder for r in planned]
    full = {s: load_checkpoint(RunDir(r).arm("qc").checkpoint(2))["state"] for s, r in zip([0, 1], runs)}
    assert not same(full[0], full[1])  # the seeds differ
    summary = write_study(out, dict(zip([0, 1], runs)), "test", pairs=("clean-qc", "qc-dirty"))
    rows = pd.read_csv(out / "study.csv")
    assert sorted(zip(rows["seed"], rows["arm"])) == [(s, a) for s in (0, 1) for a in ("clean", "dirty", "qc")]
    qc = rows[rows["arm"] == "qc"]
    assert (qc["recall_whole-site_inverted"] == 1.0).all() and (qc["recall_site_harm01-inverted"] == 1.0).all()
    assert qc["recall_whole-site"].between(0, 1).all() and qc["recall_single-scan"].between(0, 1).all()
    assert (qc["verifications"] > 0).all() and rows["auroc"].between(0, 1).all()
    assert (qc["scans_judged"] > 0).all() and (qc["scans_trained_unjudged"] >= 0).all()  # from qc_summary.json
    assert set(summary["arm"]) == {"clean", "dirty", "qc"} and (out / "study_auroc.png").is_file()
    assert "| qc |" in (out / "study.md").read_text() and "## QC: recall" in (out / "study.md").read_text()
    paired = pd.read_csv(out / "paired.csv").set_index(["pair", "figure"])  # the defaults once, then the named pair
    assert list(dict.fromkeys(paired.index.get_level_values("pair"))) == ["qc-dirty", "qc-clean", "dirty-clean",
                                                                         "clean-qc"]
    per_seed = rows.pivot(index="seed", columns="arm", values="auroc_last3")
    assert paired.loc[("qc-dirty", "auroc_last3"), "mean"] == pytest.approx((per_seed["qc"] - per_seed["dirty"]).mean())
    assert paired.loc[("clean-qc", "auroc_last3"), "mean"] == pytest.approx(-paired.loc[("qc-clean", "auroc_last3"), "mean"])
    assert (paired["n"] == 2).all() and "## Paired differences" in (out / "study.md").read_text()

    # interrupt seed 1 in its QC arm: its last checkpoint and what came after it are lost
    arm = RunDir(seed_dir(out, 1)).arm("qc")
    arm.checkpoint(2).unlink()
    kept = RunDir(seed_dir(out, 0)).arm("qc").checkpoint(2).stat().st_mtime_ns
    states = []
    run_all(plan_study(cfg, [0, 1], out), quiet=True, on_run=lambda run, state: states.append((run.seed, state)))
    assert states == [(0, "done"), (1, "resumed")]
    assert RunDir(seed_dir(out, 0)).arm("qc").checkpoint(2).stat().st_mtime_ns == kept
    assert same(load_checkpoint(arm.checkpoint(2))["state"], full[1])  # resumed mid-arm to the same weights
    write_study(out, {0: seed_dir(out, 0), 1: seed_dir(out, 1)}, "test")
    timing = [c for c in rows.columns if c in ("seconds", "cycle_seconds", "cost_vs_dirty")]  # times, not results
    again = pd.read_csv(out / "study.csv").drop(columns=timing)
    pd.testing.assert_frame_equal(again, rows.drop(columns=timing))
