"""Harm transforms do what they say and record it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from fedqc.data.corruptions import make_corruption as make_harm
from fedqc.data.corruptions.transforms import AdditiveNoise, Blank, Invert, LabelFlips, Mislabel, PureNoise


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


def test_additive_noise_is_the_reference_noise(brain):
    out, label = AdditiveNoise(seed=1)(brain, 1)
    assert label == 1 and out.dtype == brain.dtype
    assert (out == np.floor(out)).all() and 0 <= out.min() and out.max() <= 255  # stored as uint8
    inside = (brain > 40) & (brain < 215)  # away from the clipping bounds
    residual = out[inside] - brain[inside]
    assert 23 < residual.std() < 27 and abs(residual.mean() + 0.5) < 1.5  # N(0, 25), truncated to integers
    assert np.corrcoef(out[inside], brain[inside])[0, 1] > 0.8  # the anatomy stays visible
    assert (out[brain == 0] > 0).mean() > 0.4  # the background gets noise too


def test_pure_noise_has_no_anatomy_and_stays_in_brain(brain):
    out, _ = PureNoise(seed=1)(brain, 0)
    inside = brain > 0.1 * brain.max()
    assert (out[~inside] == 0).all()
    assert 0 <= out.min() and out.max() <= 255
    assert abs(np.corrcoef(out[inside], brain[inside])[0, 1]) < 0.1
    assert 20 < out[inside].std() < 30
    np.testing.assert_array_equal(out, PureNoise(seed=1)(brain, 0)[0])  # own RNG, seeded


@pytest.mark.parametrize("rate,rates", [(0.2, None), (None, {0: 0.1, 1: 0.5})])
def test_label_flips_flip_exactly_the_rate_asked(rate, rates):
    labels = np.array([0] * 60 + [1] * 40)
    flips = LabelFlips(rate=rate, rates=rates, seed=3)
    flips.randomize(labels)
    flipped = labels[flips.flipped]
    if rates is None:
        assert len(flips.flipped) == 20
    else:
        assert (flipped == 0).sum() == 6 and (flipped == 1).sum() == 20
    assert len(set(flips.flipped)) == len(flips.flipped)
    assert json.loads(flips.record())["kind"] == "mislabeled"


def test_blank_and_mislabel(brain):
    assert not Blank()(brain, 1)[0].any()
    img, label = Mislabel()(brain, 1)
    assert label == 0 and img is brain


def test_randomize_then_apply_reuses_the_draw_and_records_it(brain):
    noise = make_harm("pure-noise", seed=7, sigma=10.0)
    noise.randomize(brain, 0)
    first, second = noise.apply(brain, 0)[0], noise.apply(brain, 0)[0]
    np.testing.assert_array_equal(first, second)  # apply draws nothing
    rec = json.loads(noise.record())
    inside = brain > 0.1 * brain.max()
    assert rec == {"kind": "pure-noise", "sigma": 10.0, "threshold": 0.1, "seed": 7,
                   "noise_mean": round(float(brain[inside].mean()), 3)}
    noise.randomize(brain, 0)
    assert not np.array_equal(noise.apply(brain, 0)[0], first)  # a new call, a new draw from the same RNG
    assert json.loads(Invert(seed=3).record()) == {"kind": "inverted", "maximum": 255.0, "seed": 3}
