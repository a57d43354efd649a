"""2D images end to end: PNG, JPEG and NIfTI slices, the 2D networks, the demo2d cohort through QC and infer."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from fedqc.config import parse_config
from fedqc.data.images import ImageError, load_image
from fedqc.errors import ConfigError
from tests.conftest import TINY_HARM, TINY_SITES, tiny_config


def _slice() -> np.ndarray:
    """A 20 × 24 (rows × columns) uint8 test picture: a bright disc on black, not symmetric."""
    y, x = np.mgrid[:20, :24]
    return np.where((x - 10) ** 2 + (y - 9) ** 2 < 40, 200 + x, 0).astype(np.uint8)


def _write(path, array, *, colour=False):
    img = sitk.GetImageFromArray(np.stack([array] * 3, -1) if colour else array, isVector=colour)
    sitk.WriteImage(img, str(path))
    return str(path)


def test_2d_images_in_every_format(tmp_path):
    a = _slice()
    grey = load_image(_write(tmp_path / "grey.png", a), (24, 20))
    assert grey.shape == (1, 24, 20) and grey.dtype == np.float32 and not grey.flags.writeable
    # (1, x, y): the column index is the first spatial axis, as for volumes
    np.testing.assert_allclose(grey[0], (a.T - a.min()) / float(a.max() - a.min()), atol=1e-6)
    np.testing.assert_allclose(load_image(_write(tmp_path / "rgb.png", a, colour=True), (24, 20)), grey, atol=1e-6)
    np.testing.assert_allclose(load_image(_write(tmp_path / "slice.nii.gz", a), (24, 20)), grey, atol=1e-6)
    one_slice = _write(tmp_path / "one.nii.gz", a[None])  # a slice stored as a one-slice volume
    np.testing.assert_allclose(load_image(one_slice, (24, 20)), grey, atol=1e-6)
    jpeg = load_image(_write(tmp_path / "grey.jpg", a), (24, 20))
    assert np.abs(jpeg - grey).mean() < 0.05  # lossy, but the same picture
    assert load_image(str(tmp_path / "grey.png"), (32, 32)).shape == (1, 32, 32)  # resized bilinearly
    with pytest.raises(ImageError, match="expected a 2-D image"):
        load_image(_write(tmp_path / "vol.nii.gz", np.zeros((4, 20, 24), np.uint8)), (24, 20))
    with pytest.raises(ImageError, match="expected a 3-D image"):
        load_image(str(tmp_path / "grey.png"), (24, 20, 8))


def test_input_shape_and_model_are_validated(tiny_cohort):
    manifest = tiny_cohort / "manifest.csv"
    for shape, model, message in [([16, 16, 16, 16], "sfcn", "two sides (2D) or three (3D)"),
                                  ([16, 16], "resnet18", "each >= 32 for resnet18"),
                                  ([32, 32], "densenet121", "each >= 64 for densenet121"),
                                  ([16, 16], "vgg", "'vgg' is not one of")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            tiny_config(manifest, check_files=False, model={"name": model, "input_shape": shape})
    assert tiny_config(manifest, check_files=False, model={"input_shape": [16, 16]}).model.input_shape == (16, 16)


@pytest.fixture(scope="module")
def tiny_2d_cohort(tmp_path_factory):
    from fedqc.data.synth.cohort import generate_cohort

    out = tmp_path_factory.mktemp("tiny2d")
    generate_cohort(out, preset="demo2d", size=16, seed=3, sites=TINY_SITES, harm=TINY_HARM)
    return out


def test_demo2d_cohort_is_the_demo_as_slices(tiny_2d_cohort, tmp_path):
    from fedqc.data.synth.cohort import generate_cohort

    m2 = pd.read_csv(tiny_2d_cohort / "manifest.csv")
    m3 = generate_cohort(tmp_path, size=16, seed=3, sites=TINY_SITES, harm=TINY_HARM)
    cols = ["subject", "site", "label", "sex", "age", "split", "harm"]
    pd.testing.assert_frame_equal(m2[cols], m3[cols])  # same subjects, labels and harm
    img = sitk.ReadImage(str(tiny_2d_cohort / m2.loc[0, "path"]))
    assert img.GetDimension() == 2 and img.GetSize() == (16, 16)


@pytest.mark.slow
def test_2d_run_with_audit_qc_and_infer(tiny_2d_cohort, tmp_path):
    from fedqc.analysis.infer import infer_run
    from fedqc.experiment.runner import simulate

    cfg = tiny_config(tiny_2d_cohort / "manifest.csv", **{
        "model": {"input_shape": [16, 16]}, "arms": ["clean", "dirty", "qc"], "train.cycles": 3,
        "qc": {"audit": True, "scans": ["ood"]}})
    run = tmp_path / "run"
    simulate(cfg, run, quiet=True)
    manifest = pd.read_csv(tiny_2d_cohort / "manifest.csv").set_index("subject")
    audited = pd.read_csv(run / "qc" / "audit.csv")
    # the image checks work unchanged on slices: the inverted site's and the pure-noise scan's images are found
    flagged = set(audited.loc[audited["split"] == "train", "subject"])
    assert sorted(manifest.loc[sorted(flagged), "harm"]) == ["inverted"] * 4 + ["pure-noise"]
    assert (run / "qc" / "scan_issues.csv").is_file() and (run / "qc" / "detection.csv").is_file()
    metrics = infer_run(run, n_boot=20)
    overall = metrics[metrics["group"] == "all"]
    assert set(overall["arm"]) == {"clean", "dirty", "qc"} and overall["auroc"].notna().all()


def test_2d_config_round_trips(tiny_2d_cohort):
    cfg = tiny_config(tiny_2d_cohort / "manifest.csv", model={"input_shape": [16, 16]})
    assert parse_config(cfg.to_dict()).model.input_shape == (16, 16)


def test_harm_on_a_manifest_of_photographs(tmp_path):
    """`fedqc harm` on PNGs (grey and colour): corrupted slices are written as 2D NIfTI and load like the rest."""
    from fedqc.data.corruptions.scenario import Scenario
    from fedqc.data.inject import inject

    rows, a, src = [], _slice(), tmp_path / "study"
    src.mkdir()
    for i, split in enumerate(["train"] * 4 + ["val", "test"]):
        path = _write(src / f"s{i}.png", a, colour=i % 2 == 1)
        rows.append({"subject": f"s{i}", "site": "A", "path": path, "label": i % 2, "sex": "F", "age": 60,
                     "split": split})
    pd.DataFrame(rows).to_csv(src / "manifest.csv", index=False)
    scenario = Scenario.from_dict({"scans": [{"kind": "inverted", "subject": "s0"}, {"kind": "noise", "subject": "s1"}]})
    m = inject(src / "manifest.csv", scenario, tmp_path / "out", seed=0).set_index("subject")
    inverted = load_image(str(tmp_path / "out" / m.at["s0", "path"]), (24, 20))
    np.testing.assert_allclose(inverted, 1 - load_image(str(src / "s0.png"), (24, 20)), atol=1e-6)
    noisy = load_image(str(tmp_path / "out" / m.at["s1", "path"]), (24, 20))
    assert noisy.shape == (1, 24, 20) and np.corrcoef(noisy.ravel(), inverted.ravel())[0, 1] < -0.5
