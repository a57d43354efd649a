"""Synthetic cohort: determinism, reference shape, readable images, a learnable signal."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fedqc.data.images import load_image
from fedqc.data.manifest import load_manifest
from fedqc.data.synth import cohort
from fedqc.data.synth.cohort import SiteSpec, _subject_rows, generate_cohort, reference_sites
from tests.conftest import TINY_HARM, TINY_SITES


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_byte_identical(tmp_path):
    for name in ("a", "b"):
        generate_cohort(tmp_path / name, size=12, seed=5, sites=TINY_SITES[:2], harm=TINY_HARM)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b and len(a) > 20
    generate_cohort(tmp_path / "c", size=12, seed=6, sites=TINY_SITES[:2], harm=TINY_HARM)
    assert _digest(tmp_path / "c") != a


def test_workers_give_byte_identical_files(tmp_path):
    manifests = {n: generate_cohort(tmp_path / f"w{n}", size=12, seed=5, sites=TINY_SITES, harm=TINY_HARM, workers=n)
                 for n in (1, 2)}
    pd.testing.assert_frame_equal(manifests[1], manifests[2])
    one, two = _digest(tmp_path / "w1"), _digest(tmp_path / "w2")
    assert one == two and len(one) > 40  # manifest.csv, cohort.json and every image
    assert (manifests[2]["harm_detail"] != "").sum() > 5  # the workers' corruption records came back


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_error_surfaces(workers, tmp_path, monkeypatch):
    def failing_write(path, image, shape):  # a fork-started worker inherits the patch
        if path.name == "beta-train002.nii.gz":
            raise OSError(f"disk full: {path.name}")
        write(path, image, shape)

    write = cohort.write_nifti
    monkeypatch.setattr(cohort, "write_nifti", failing_write)
    with pytest.raises(OSError, match="disk full: beta-train002"):
        generate_cohort(tmp_path, size=12, seed=5, sites=TINY_SITES, harm={}, workers=workers)
    assert not (tmp_path / "manifest.csv").exists()


def test_reference_preset_matches_csv():
    csv = pd.read_csv("fedqc/data/reference_sites.csv").set_index("site")
    specs = reference_sites()
    assert len(specs) == 83
    rows = pd.DataFrame([r for s in specs for r in _subject_rows(s, seed=0)])
    for split in ("train", "test"):
        part = rows[rows["split"] == split].groupby("site")
        assert (part.size() == csv[f"{split}_n"]).all()
        assert (part["label"].sum() == csv[f"{split}_pd"]).all()
        assert (part["sex"].apply(lambda s: (s == "F").sum()) == csv[f"{split}_female"]).all()
    val = rows[rows["split"] == "val"].groupby("site").size()
    assert len(val) == 83 and (val >= 1).all()
    assert rows["subject"].is_unique


def test_images_readable_and_manifest_valid(tiny_cohort):
    m = load_manifest(tiny_cohort / "manifest.csv")
    img = sitk.ReadImage(m["path"].iloc[0])
    assert img.GetSize() == (16, 16, 16)
    arr = sitk.GetArrayFromImage(img)
    assert 0 <= arr.min() and arr.max() <= 255 and arr.std() > 10
    assert set(m["harm"]) == {"none", "inverted", "pure-noise", "mislabeled"}
    assert (m.loc[m["harm"] != "none", "harm_detail"] != "").all()


def test_disease_signal_is_learnable(tmp_path):
    sites = [SiteSpec(f"s{i}", f"sc{i}", 40, 20, 16, 0, 0, 0, 20, 10, 8) for i in range(3)]
    m = generate_cohort(tmp_path, size=24, seed=2, sites=sites, harm={})
    x = np.stack([load_image(str(tmp_path / p), (24, 24, 24))[0, 8:16, 8:16, 8:16].ravel() for p in m["path"]])
    train = (m["split"] == "train").to_numpy()
    clf = LogisticRegression(C=1.0, max_iter=3000).fit(x[train], m["label"][train])
    auc = roc_auc_score(m["label"][~train], clf.predict_proba(x[~train])[:, 1])
    assert auc > 0.8, auc  # chance is 0.5
