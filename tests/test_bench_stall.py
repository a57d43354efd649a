"""bench.stall's own parts: variants, the pooled manifest (central training through the same code), fresh Adam."""

from __future__ import annotations

import numpy as np
import pytest

from bench.stall import POOLED, FreshAdam, parse_variant, pooled_manifest
from fedqc.data.manifest import load_manifest
from fedqc.errors import UserError
from fedqc.protocol import TrainRequest


def test_variant_values_are_yaml_with_yaml_1_1_floats_read_as_floats():
    v = parse_variant("v:train.lr=1e-4,model.input_shape=[16,16,16],calibration={batchnorm: site},bench.adam=reset")
    assert v.name == "v"
    assert v.overrides == {"train.lr": 1e-4, "model.input_shape": [16, 16, 16], "calibration": {"batchnorm": "site"}}
    assert v.knobs == {"bench.adam": "reset"}
    assert parse_variant("base") == parse_variant("base:")


@pytest.mark.parametrize("text, message", [
    ("v:train.lr", "is not KEY=VALUE"),
    (":train.lr=1", "expected NAME"),
    ("a/b", "expected NAME"),
    ("v:bench.adam=sometimes", "bench.adam=sometimes unknown"),
    ("v:bench.speed=2", "bench.speed=2 unknown"),
    ("v:train.order=[a", "is not a YAML value"),
])
def test_a_bad_variant_is_a_one_line_error(text, message):
    with pytest.raises(UserError, match=message) as exc:
        parse_variant(text)
    assert "\n" not in str(exc.value)


def test_the_pooled_manifest_puts_every_good_train_scan_at_one_site(tiny_cohort, tmp_path):
    source = load_manifest(tiny_cohort / "manifest.csv", check_images=False)
    pooled = load_manifest(pooled_manifest(tiny_cohort / "manifest.csv", tmp_path))  # images found: paths absolute
    train = pooled[pooled["split"] == "train"]
    good = source[(source["split"] == "train") & (source["harm"] == "none")]
    assert set(train["site"]) == {POOLED}
    assert sorted(train["subject"]) == sorted(good["subject"])
    others = lambda t: t[t["split"] != "train"].set_index("subject")["site"].sort_index()  # noqa: E731
    assert others(pooled).equals(others(source))


class Recorder:
    """An inner transport that records what each site was sent."""

    def __init__(self):
        self.sent = []

    def train(self, site, state, request):
        self.sent.append(sorted(state))
        return "reply"

    def site_info(self):
        return {"a": None}


def test_fresh_adam_sends_the_model_without_the_optimizer_state():
    inner = Recorder()
    state = {"encoder.0.weight": np.zeros(2), "optim.0.exp_avg": np.zeros(2), "optim.0.step": np.zeros(())}
    assert FreshAdam(inner).train("a", state, TrainRequest(lr=1e-3, seed=0, batch_size=5)) == "reply"
    assert inner.sent == [["encoder.0.weight"]]
    assert FreshAdam(inner).site_info() == {"a": None}  # everything else passes through
