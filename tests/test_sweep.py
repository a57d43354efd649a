"""A config's `scenario` injected at run time, label-noise placements, and `fedqc study --sweep`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedqc.cli import app
from fedqc.data.corruptions.scenario import Scenario
from fedqc.data.manifest import load_manifest
from fedqc.errors import ConfigError, UserError
from fedqc.experiment.study import Sweep
from tests.conftest import tiny_config

NOISE = {"label_noise": [{"sites": "all", "rate": 0.5}]}


def test_label_noise_at_k_random_sites_is_seeded_and_leaves_harmful_scans_alone(tiny_cohort):
    table = load_manifest(tiny_cohort / "manifest.csv", check_images=False)
    spec = {"label_noise": [{"sites": {"random": 2}, "rate": 0.5}]}
    plans = [Scenario.from_dict(spec).plan(table, seed) for seed in (0, 0, 1, 2, 3)]
    assert plans[0] == plans[1]
    good = set(table.loc[(table["split"] == "train") & (table["harm"] == "none"), "subject"])
    chosen = []
    for plan in plans:
        subjects = table.set_index("subject").loc[[a.subject for a in plan]]
        assert subjects["site"].nunique() <= 2 and {a.kind for a in plan} == {"mislabeled"}
        assert {a.subject for a in plan} <= good  # the cohort's own harmful scans keep their ground truth
        chosen.append(tuple(sorted(subjects["site"].unique())))
    assert len(set(chosen)) > 1  # other seeds, other sites
    with pytest.raises(UserError) as info:  # the tiny cohort has 3 good sites
        Scenario.from_dict({"label_noise": [{"sites": {"random": 4}, "rate": 0.5}]}).plan(table, 0)
    assert info.value.problems == ["label_noise[0]: 4 random sites asked, 3 good site(s) to choose from"]
    with pytest.raises(UserError) as info:
        Scenario.from_dict({"label_noise": [{"sites": {"random": 0}, "rate": 0.5}]})
    assert "{random: k} (k >= 1)" in info.value.problems[0]


def test_sweep_keys_reach_config_and_scenario_entries(tiny_cohort):
    cfg = tiny_config(tiny_cohort / "manifest.csv", scenario=NOISE)
    sweep = Sweep.parse("scenario.label_noise.0.rate=0,0.25,0.5")
    assert sweep.values == (0, 0.25, 0.5)
    assert [sweep.config(cfg, v).scenario["label_noise"][0]["rate"] for v in sweep.values] == [0, 0.25, 0.5]
    assert cfg.scenario == NOISE  # the swept configs are copies
    assert Sweep.parse("train.lr=0.01,0.001").config(cfg, 0.01).train.lr == 0.01
    old = Sweep.parse("train.warmup=0,1")  # a renamed key: the old name's folders, the new key set
    assert old.config(cfg, 1).train.branch_cycle == 1 and old.folder(Path("s"), 1) == Path("s/train.warmup=1")
    for spec, message in [("train.lr", "expected KEY=v1,v2"), ("train.lr=1,1", "listed twice")]:
        with pytest.raises(UserError, match=message):
            Sweep.parse(spec)
    with pytest.raises(UserError, match="the config has no scenario.label_noise.3 to sweep"):
        Sweep.parse("scenario.label_noise.3.rate=0.1").config(cfg, 0.1)
    with pytest.raises(UserError, match="set a scenario in the config first"):
        Sweep.parse("scenario.label_noise.0.rate=0.1").config(tiny_config(tiny_cohort / "manifest.csv"), 0.1)
    with pytest.raises(ConfigError) as info:
        Sweep.parse("train.lrr=0.1").config(cfg, 0.1)
    assert "train.lrr: unknown key" in info.value.problems[0]
    with pytest.raises(ConfigError) as info:
        Sweep.parse("train.lr=-1").config(cfg, -1)
    assert info.value.problems == ["train.lr: must be > 0, got -1.0"]


def test_a_scenario_is_read_from_a_file_and_checked(tiny_cohort, tmp_path):
    (tmp_path / "noise.yaml").write_text("label_noise:\n  - {sites: all, rate: 0.5}\n")
    data = {"name": "t", "manifest": str(tiny_cohort / "manifest.csv"), "scenario": "noise.yaml", "arms": ["clean"]}
    from fedqc.config import parse_config

    assert parse_config(data, base=tmp_path).scenario == NOISE
    with pytest.raises(ConfigError, match="scenario: file not found"):
        parse_config({**data, "scenario": "nope.yaml"}, base=tmp_path)
    with pytest.raises(ConfigError, match="scenario: a deployment's sites hold their own data"):
        parse_config({**data, "engine": "deployment"}, base=tmp_path)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_sweep_of_label_noise_runs_trains_on_the_flipped_labels_and_writes_curves(tiny_cohort, tmp_path):
    before = _digest(tiny_cohort)
    config = tmp_path / "sweep.yaml"
    cfg = tiny_config(tiny_cohort / "manifest.csv", scenario=NOISE, **{"train.cycles": 2, "arms": ["clean", "dirty"]})
    import yaml

    config.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, ["study", "--config", str(config), "--seeds", "0", "1", "--out", str(out),
                                      "--sweep", "scenario.label_noise.0.rate=0,0.5", "--quiet"])
    assert result.exit_code == 0, result.output
    assert _digest(tiny_cohort) == before  # the user's cohort is never written to
    table = load_manifest(tiny_cohort / "manifest.csv", check_images=False).set_index("subject")
    for rate in (0, 0.5):
        for seed in (0, 1):
            run = out / f"scenario.label_noise.0.rate={rate}" / f"seed_{seed}"
            harmed = pd.read_csv(run / "data" / "manifest.csv").set_index("subject")
            flipped = harmed.index[(harmed["harm"] == "mislabeled") & (table.loc[harmed.index, "harm"] == "none")]
            assert (harmed.loc[flipped, "label"] != table.loc[flipped, "label"]).all()
            good = table[(table["split"] == "train") & (table["harm"] == "none")]
            # exactly round(rate · n) of each good site's training labels flipped (half up)
            expected = sum(int(rate * n + 0.5) for n in good.groupby("site").size())
            assert len(flipped) == expected
            # the clean arm (the oracle) trains none of them, the dirty arm all of them
            clean = pd.read_csv(run / "clean" / "train_log.csv")
            assert clean["n_scans"].sum() == 2 * (len(good) - len(flipped))
    rows = pd.read_csv(out / "sweep.csv")
    assert len(rows) == 2 * 2 * 2 and set(rows["value"]) == {0, 0.5} and set(rows["arm"]) == {"clean", "dirty"}
    summary = pd.read_csv(out / "sweep_summary.csv")
    assert set(summary.loc[summary["figure"] == "auroc_last3", "n"]) == {2}
    assert (out / "sweep_auroc_last3.png").is_file() and (out / "sweep.md").is_file()
    paired = pd.read_csv(out / "sweep_paired.csv")  # per value, dirty − clean paired by seed
    last3 = paired[paired["figure"] == "auroc_last3"]
    assert set(zip(last3["value"], last3["pair"], last3["n"])) == {(0, "dirty-clean", 2), (0.5, "dirty-clean", 2)}
    assert (out / "sweep_diff_auroc_last3.png").is_file() and "## Paired differences" in (out / "sweep.md").read_text()
    text = (out / "scenario.label_noise.0.rate=0.5" / "study.md").read_text()
    assert "## Test metrics" in text and "## QC" not in text  # no QC arm, no QC section
    page = (out / "report.html").read_text()  # the sweep's page links each value's own study page
    assert all(f'href="scenario.label_noise.0.rate={v}/report.html"' in page for v in (0, 0.5))
    assert 'id="paired-table"' in page and (out / "scenario.label_noise.0.rate=0" / "report.html").is_file()


def test_prevalence_drops_train_and_val_scans_to_the_share_asked(tiny_cohort, tmp_path):
    from fedqc.data.inject import inject

    table = load_manifest(tiny_cohort / "manifest.csv", check_images=False)
    spec = {"prevalence": [{"sites": "all", "share": 0.2}, {"sites": ["beta"], "share": 0}]}
    m = inject(tiny_cohort / "manifest.csv", Scenario.from_dict(spec), tmp_path / "out", seed=1)
    dropped = pd.read_csv(tmp_path / "out" / "dropped.csv")
    assert len(m) + len(dropped) == len(table) and not set(m["subject"]) & set(dropped["subject"])
    assert (dropped["split"] != "test").all()  # the test split is never touched
    pd.testing.assert_frame_equal(m[m["split"] == "test"].reset_index(drop=True),
                                  table[table["split"] == "test"].reset_index(drop=True), check_dtype=False)
    before = table[(table["site"] == "alpha") & (table["split"] == "train")]["label"]
    alpha = m[(m["site"] == "alpha") & (m["split"] == "train")]["label"]
    n_neg = int((before == 0).sum())
    assert before.mean() > 0.2 and (alpha == 0).sum() == n_neg  # too many patients: only patients dropped
    assert (alpha == 1).sum() == int(0.2 * n_neg / 0.8 + 0.5)
    beta = m[(m["site"] == "beta") & (m["split"] != "test")]
    assert (beta["label"] == 0).all() and len(beta) > 0  # one class: controls only
    for bad, message in [({"prevalence": [{"sites": "all"}]}, "share (of patients, 0..1) required"),
                         ({"prevalence": [{"sites": "all", "share": 1.5}]}, "share must be in [0, 1]"),
                         ({"prevalence": [{"sites": "all", "share": 0.2, "splits": ["all"]}]}, "splits must list")]:
        with pytest.raises(UserError) as info:
            Scenario.from_dict(bad)
        assert any(message in p for p in info.value.problems)
