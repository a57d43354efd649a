"""Paired differences between a study's arms: the t-interval, the exact sign-flip p-value, missing seeds, --pair."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fedqc.analysis.paired import default_pairs, paired_difference, paired_table, parse_pair, sign_flip_p, t_interval
from fedqc.analysis.study import difference_span
from fedqc.cli import app
from fedqc.errors import UserError
from tests.conftest import tiny_config

T_975_2 = 4.302652729749464  # Student's t, 97.5 % quantile, 2 degrees of freedom (tables: 4.303)


@pytest.mark.parametrize("d,p", [
    ([1, 2, 3], 2 / 8),          # only +++ and --- reach |sum| 6
    ([2, 2, -1], 4 / 8),         # sums 5 3 1 -1 1 -1 -3 -5: four reach |3|
    ([0, 1, 2], 4 / 8),          # a zero's sign changes nothing: sums 3 1 -1 -3, each twice
    ([1, 2, -3], 1.0),           # observed sum 0: every assignment reaches it
    ([0.1] * 6, 2 / 64),         # equal differences: the smallest p 6 seeds allow (float sums tie within tolerance)
    ([0.3, -0.1, 0.2, 0.4], 4 / 16),  # sums ≥ 0.8 in |.|: ++++ (1.0), +-++ (0.8) and their negatives
    ([5], 1.0),                  # one seed: both signs reach |5|
])
def test_sign_flip_p_is_the_exact_share_of_sign_assignments(d, p):
    assert sign_flip_p(np.array(d, dtype=float)) == pytest.approx(p)


def test_t_interval_by_hand_and_undefined_for_one_seed():
    lo, hi = t_interval(np.array([1.0, 2.0, 3.0]))  # mean 2, sd 1
    assert (lo, hi) == pytest.approx((2 - T_975_2 / math.sqrt(3), 2 + T_975_2 / math.sqrt(3)))
    assert all(math.isnan(x) for x in t_interval(np.array([0.5])))
    one = paired_difference(pd.Series({0: 0.9}), pd.Series({0: 0.7}))
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.2) and math.isnan(one["ci_lo"]) and math.isnan(one["sd"])
    assert one["p"] == 1.0 and one["p_min"] == 1.0 and one["note"] == "one seed: no interval"


def test_pairs_only_over_seeds_both_arms_have_and_says_which_are_left_out():
    a = pd.Series({0: 0.9, 1: 0.8, 2: 0.7, 3: 0.5})
    b = pd.Series({0: 0.8, 1: 0.6, 2: 0.4, 4: 0.1, 5: np.nan})
    r = paired_difference(a, b, names=("qc", "dirty"))
    assert r["n"] == 3 and r["mean"] == pytest.approx(0.2) and r["sd"] == pytest.approx(0.1)
    assert (r["ci_lo"], r["ci_hi"]) == pytest.approx((0.2 - T_975_2 * 0.1 / math.sqrt(3), 0.2 + T_975_2 * 0.1 / math.sqrt(3)))
    assert r["p"] == pytest.approx(0.25) and r["p_min"] == 0.25
    assert r["note"] == "seed(s) 3 only in qc; seed(s) 4 only in dirty"


def test_paired_table_per_pair_and_figure_clipped_to_what_a_difference_can_be():
    rows = pd.DataFrame({"seed": [0, 1, 2] * 3, "arm": ["clean"] * 3 + ["dirty"] * 3 + ["qc"] * 3,
                         "cycle": [9] * 9, "auroc": [0.9, 0.2, 0.95, 0.1, 0.9, 0.1, 0.9, 0.85, 0.92],
                         "recall_whole-site": [np.nan] * 6 + [1.0, 0.5, 1.0]})
    pairs = default_pairs(["clean", "dirty", "qc"], ["qc"])
    assert pairs == [("qc", "dirty"), ("qc", "clean"), ("dirty", "clean")]
    t = paired_table(rows, pairs, span=difference_span).set_index(["pair", "figure"])
    assert list(t.index) == [("qc-dirty", "auroc"), ("qc-clean", "auroc"), ("dirty-clean", "auroc")]  # QC-only left out
    qd = t.loc[("qc-dirty", "auroc")]
    assert qd["mean"] == pytest.approx((0.8 - 0.05 + 0.82) / 3) and qd["ci_hi"] == 1.0 and qd["ci_lo"] < 0
    dc = t.loc[("dirty-clean", "auroc")]
    assert dc["mean"] == pytest.approx((-0.8 + 0.7 - 0.85) / 3) and dc["ci_lo"] == -1.0


def test_pair_names_are_parsed_across_hyphens_in_arm_names_and_bad_ones_fail_in_one_line():
    arms = ["clean", "dirty", "qc-auroc-site", "qc-clean", "trusted"]
    assert parse_pair("qc-auroc-site-dirty", arms) == ("qc-auroc-site", "dirty")
    assert parse_pair("qc-clean-clean", arms) == ("qc-clean", "clean")
    assert parse_pair("trusted:clean", arms) == ("trusted", "clean")
    for spec, message in [("qc-magic", "--pair qc-magic: expected A-B with A and B among the arms clean, dirty"),
                          ("clean", "expected A-B"), ("clean-clean", "an arm compared with itself"),
                          ("clean:", "expected A-B")]:
        with pytest.raises(UserError, match=message) as info:
            parse_pair(spec, arms)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="ambiguous"):
        parse_pair("a-b-c", ["a", "a-b", "b-c", "c"])


def test_study_refuses_a_bad_pair_before_training(tiny_cohort, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_cohort / "manifest.csv").to_dict()))
    result = CliRunner().invoke(app, ["study", "--config", str(config), "--seeds", "0", "--out", str(tmp_path / "s"),
                                      "--pair", "clean-qc", "--quiet"])
    text = result.stderr
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--pair clean-qc: expected A-B with A and B among the arms clean, dirty" in text
    assert len(text.strip().splitlines()) == 1 and not (tmp_path / "s").exists()
