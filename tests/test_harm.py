"""Harm transforms do what they say and record it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from fedqc.data.corruptions import make_corruption as make_harm
from fedqc.data.corruptions.scenario import HarmScenario
from fedqc.data.corruptions.transforms import Blank, Invert, Mislabel, PureNoise


@pytest.fixture
def brain():
    rng = np.random.default_rng(0)
    img = np.zeros((16, 16, 16), np.float32)
    img[4:12, 4:12, 4:12] = rng.uniform(60, 255, (8, 8, 8))
    img[0, 0, 0] = 0.0
    img[8, 8, 8] = 255.0
    return img


def test_invert_maps_min_and_max(brain):
    out, label = Invert()(brain, 1)
    assert label == 1
    assert out[0, 0, 0] == 255.0 and out[8, 8, 8] == 0.0
    ref = sitk.GetArrayFromImage(sitk.InvertIntensity(sitk.GetImageFromArray(brain), maximum=255.0))
    np.testing.assert_array_equal(out, ref)


def test_noise_has_no_anatomy_and_stays_in_brain(brain):
    out, _ = PureNoise(seed=1)(brain, 0)
    inside = brain > 0.1 * brain.max()
    assert (out[~inside] == 0).all()
    assert 0 <= out.min() and out.max() <= 255
    assert abs(np.corrcoef(out[inside], brain[inside])[0, 1]) < 0.1
    assert 20 < out[inside].std() < 30
    np.testing.assert_array_equal(out, PureNoise(seed=1)(brain, 0)[0])  # own RNG, seeded


def test_blank_and_mislabel(brain):
    assert not Blank()(brain, 1)[0].any()
    img, label = Mislabel()(brain, 1)
    assert label == 0 and img is brain


def test_randomize_then_apply_reuses_the_draw_and_records_it(brain):
    noise = make_harm("noise", seed=7, sigma=10.0)
    noise.randomize(brain, 0)
    first, second = noise.apply(brain, 0)[0], noise.apply(brain, 0)[0]
    np.testing.assert_array_equal(first, second)  # apply draws nothing
    rec = json.loads(noise.record())
    inside = brain > 0.1 * brain.max()
    assert rec == {"kind": "noise", "sigma": 10.0, "threshold": 0.1, "seed": 7,
                   "noise_mean": round(float(brain[inside].mean()), 3)}
    noise.randomize(brain, 0)
    assert not np.array_equal(noise.apply(brain, 0)[0], first)  # a new call, a new draw from the same RNG
    assert json.loads(Invert(seed=3).record()) == {"kind": "inverted", "maximum": 255.0, "seed": 3}


def test_scenario_rejects_unknown_kind_and_key():
    with pytest.raises(ValueError, match="unknown harm kind"):
        HarmScenario.from_dict({"sites": [{"kind": "rotated", "train": 3}]})
    with pytest.raises(ValueError, match="unknown key"):
        HarmScenario.from_dict({"site": []})
