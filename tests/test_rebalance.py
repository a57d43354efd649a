"""Class rebalancing at the site: what each option trains, its weights, and that only training scans are touched."""

from __future__ import annotations

import numpy as np
import pytest

from fedqc.data.manifest import load_manifest
from fedqc.models.state import initial_state
from fedqc.protocol import EvalRequest, TrainRequest, class_counts
from fedqc.site import Site, rebalance
from tests.conftest import same, tiny_config

SUBJECTS = [f"s{i}" for i in range(10)]
LABELS = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0])  # 2 patients, 8 controls


def test_undersampling_keeps_every_minority_scan_and_as_many_of_the_majority():
    epoch = rebalance.epoch("undersample", SUBJECTS, LABELS, seed=3)
    kept = [s for s, _ in epoch]
    assert not any(a for _, a in epoch) and len(kept) == len(set(kept)) == 4
    assert {"s0", "s4"} <= set(kept) and epoch == rebalance.epoch("undersample", SUBJECTS, LABELS, seed=3)
    assert epoch != rebalance.epoch("undersample", SUBJECTS, LABELS, seed=4)


def test_oversampling_adds_minority_copies_until_balanced_and_augments_every_scan():
    from collections import Counter

    epoch = rebalance.epoch("oversample", SUBJECTS, LABELS, seed=3)
    counts = Counter(s for s, _ in epoch)
    assert set(counts) == set(SUBJECTS) and len(epoch) == 16  # every scan, and 6 copies: 8 patients, 8 controls
    assert sum(counts[s] for s in ("s0", "s4")) == 8 and all(counts[s] == 1 for s in SUBJECTS if s not in ("s0", "s4"))
    assert all(a for _, a in epoch)  # augmentation must not mark the minority: every scan of the epoch gets it
    for option in ("none", "weights", "oversample", "undersample"):  # one class: nothing to rebalance
        assert rebalance.epoch(option, SUBJECTS[:3], np.zeros(3), seed=0) == [(s, False) for s in SUBJECTS[:3]]


def test_class_weights_balance_the_classes():
    w = rebalance.class_weights(LABELS)
    assert w.mean() == pytest.approx(1) and w[LABELS == 1].sum() == pytest.approx(w[LABELS == 0].sum())
    fed = rebalance.class_weights(LABELS, counts=(900, 100))  # the federation's counts
    assert fed[0] == pytest.approx(5.0) and fed[1] == pytest.approx(1000 / 1800)
    assert np.all(rebalance.class_weights(np.zeros(4, int)) == 1)  # a one-class site with its own counts


def test_augmentation_changes_the_image_and_is_seeded():
    image = np.random.default_rng(0).uniform(size=(1, 16, 16, 16)).astype(np.float32)
    a, b = rebalance.augmenter(3, seed=1)(image), rebalance.augmenter(3, seed=1)(image)
    assert np.asarray(a).shape == image.shape and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), image)
    assert np.asarray(rebalance.augmenter(2, seed=1)(image[:, :, :, 0])).shape == (1, 16, 16)


@pytest.mark.parametrize("option", ["weights", "oversample", "undersample"])
def test_rebalancing_trains_the_site_scans_only_and_changes_training(tiny_cohort, option):
    cfg = tiny_config(tiny_cohort / "manifest.csv")
    table = load_manifest(cfg.manifest)
    site = Site("alpha", table[table["site"] == "alpha"], model=cfg.model)
    state = initial_state(cfg.model, seed=0)
    plain = site.train(state, TrainRequest(lr=1e-3, seed=5, batch_size=5))
    balanced = site.train(state, TrainRequest(lr=1e-3, seed=5, batch_size=5, rebalance=option))
    train = set(site.subjects("train"))
    assert set(balanced.subjects) <= train and not same(plain.state, balanced.state)
    if option != "undersample":
        assert set(balanced.subjects) == train and balanced.n_scans == len(train)  # distinct scans, copies aside
    for split in ("val", "test"):  # evaluation scores exactly the manifest's scans, once each
        reply = site.evaluate(balanced.state, EvalRequest(split))
        assert sorted(reply.scores["subject"]) == sorted(site.subjects(split))


def test_federation_class_counts_come_from_the_sites_counts(tiny_cohort):
    table = load_manifest(tiny_cohort / "manifest.csv")
    info = {s: Site(s, rows).info() for s, rows in table.groupby("site")}
    train = table[table["split"] == "train"]
    assert class_counts(info) == (int((train["label"] == 0).sum()), int(train["label"].sum()))
