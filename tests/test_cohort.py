"""Synthetic cohort: determinism, reference shape, readable images, a learnable signal."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from fedqc.cli import app
from fedqc.data.images import load_image
from fedqc.data.manifest import load_manifest
from fedqc.data.synth import cohort
from fedqc.data.synth.cohort import SiteSpec, _subject_rows, generate_cohort, reference_sites
from fedqc.data.synth.effects import EFFECT_SETS, Effects, effect_keys, oracle_auroc, resolve_effects, subject_draw
from tests.conftest import TINY_HARM, TINY_SITES

ROOT = Path(__file__).resolve().parents[1]


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


# --------------------------------------------------------------------------- the difficulty model
# manifest.csv of `fedqc cohort --preset smoke --size 16 --seed 0` made by the generator before the difficulty model
# (commit 899873c; numpy 2.4, SimpleITK 2.5), with each image's voxel mean and sd. The generator's bytes are the same
# on one machine whatever the worker count, not across CPUs: its float paths differ (the same commit gave other voxel
# bytes on an AMD EPYC and an Intel Xeon), so voxels are compared within a relative 1e-5.
SHIPPED_SMOKE_16 = Path(__file__).parent / "fixtures" / "smoke16_v1.csv"
HARD = {"pd_nonexpressing": 0.3, "pd_effect_sd": 0.5, "hc_pdlike": 0.3, "dgm_intensity_sd": 0.1,
        "dgm_size_sd": 0.1, "scanner_contrast": 0.3, "scanner_blur": 1.0, "deform_mm": 4.0}


def _voxel_table(folder) -> pd.DataFrame:
    """The cohort's manifest with each image's voxel mean and sd."""
    table = pd.read_csv(folder / "manifest.csv")
    voxels = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / p))).astype(np.float64) for p in table["path"]]
    return table.assign(voxel_mean=[v.mean() for v in voxels], voxel_sd=[v.std() for v in voxels])


def _voxels(folder, subject) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "images" / subject.split("-")[0] / f"{subject}.nii.gz")))


def run_cli(args: list[str]) -> tuple[int, str, BaseException | None]:
    """Exit code, what the command wrote to stderr (stdout when it succeeded) and its exception."""
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.stderr if result.exit_code else result.stdout, result.exception


def test_default_effects_reproduce_the_shipped_generator(tmp_path):
    generate_cohort(tmp_path, preset="smoke", size=16, seed=0, effects=Effects(), workers=1)
    made, shipped = _voxel_table(tmp_path), pd.read_csv(SHIPPED_SMOKE_16)
    voxels = ["voxel_mean", "voxel_sd"]
    pd.testing.assert_frame_equal(made.drop(columns=voxels), shipped.drop(columns=voxels))
    np.testing.assert_allclose(made[voxels].to_numpy(), shipped[voxels].to_numpy(), rtol=1e-5)
    assert json.loads((tmp_path / "cohort.json").read_text())["effects_source"] == "v1"  # the set they equal
    assert EFFECT_SETS["v1"] == Effects()
    assert {name: p[2] for name, p in cohort.PRESETS.items()} == {"demo": "v1", "demo2d": "v1", "smoke": "v1",
                                                                  "reference": "v3"}


def test_named_sets_are_the_screened_effects_files():
    """``v2`` and ``v3`` are the effects files the calibration study screened and measured (difficulty-screening)."""
    effects = ROOT / "studies" / "difficulty-screening" / "effects"
    assert EFFECT_SETS["v2"] == resolve_effects(effects / "hetero-noise.yaml", "v1")[0] != EFFECT_SETS["v1"]
    assert EFFECT_SETS["v3"] == resolve_effects(effects / "hetero-bias.yaml", "v1")[0] != EFFECT_SETS["v2"]


def test_effects_file_recorded_and_read_back(tmp_path):
    (tmp_path / "hard.yaml").write_text(yaml.safe_dump(HARD))
    code, text, _ = run_cli(["cohort", "--preset", "smoke", "--size", "12", "--workers", "1", "--out",
                             str(tmp_path / "c"), "--effects", str(tmp_path / "hard.yaml")])
    assert code == 0, text
    assert "oracle ceiling" in text
    recorded = yaml.safe_load((tmp_path / "c" / "effects.yaml").read_text())
    assert recorded == asdict(Effects()) | HARD  # every key, resolved over the preset's set
    meta = json.loads((tmp_path / "c" / "cohort.json").read_text())
    assert meta["effects"] == recorded and meta["effects_source"].endswith("hard.yaml over v1")
    again, source = resolve_effects(tmp_path / "c" / "effects.yaml", "v1")  # the record reproduces the cohort
    assert asdict(again) == recorded
    assert "manifest" not in source and resolve_effects("v1", "v1") == (Effects(), "v1")
    assert "pd_strength" not in pd.read_csv(tmp_path / "c" / "manifest.csv").columns  # sites never see it


@pytest.mark.parametrize("content, messages", [
    ("pd_nonexpresing: 0.5\ncolour: 3\n", ["pd_nonexpresing: unknown effect key (did you mean pd_nonexpressing?)",
                                           "colour: unknown effect key (known keys: pd_intensity"]),
    ("pd_intensity: high\nhc_pdlike: true\n", ["pd_intensity: expected a number, got 'high'",
                                              "hc_pdlike: expected a number, got True"]),
    ("pd_nonexpressing: 1.5\ndeform_mm: -1\n", ["pd_nonexpressing: must be in [0.0, 1.0], got 1.5",
                                               "deform_mm: must be in [0.0, 20.0], got -1"]),
    ("base: v0\n", ["base: unknown effect set 'v0' (known: v1, v2, v3)"]),
    ("- 0.2\n", ["expected a mapping of effect keys to numbers"]),
    ("pd_intensity: [0.2\n", ["not valid YAML"]),
], ids=["unknown keys", "wrong types", "out of range", "unknown base", "not a mapping", "not YAML"])
def test_bad_effects_file_one_line_each(tmp_path, content, messages):
    (tmp_path / "bad.yaml").write_text(content)
    code, text, exc = run_cli(["cohort", "--preset", "smoke", "--size", "12", "--out", str(tmp_path / "c"),
                               "--effects", str(tmp_path / "bad.yaml")])
    assert code == 1 and "Traceback" not in text and isinstance(exc, SystemExit), text
    lines = text.strip().splitlines()
    for m in messages:
        assert sum(m in line for line in lines) == 1, (m, text)
    assert len(lines) == (1 if "YAML" in messages[0] else 1 + len(messages)), text  # a header, then one per problem
    assert not (tmp_path / "c").exists()


def test_unknown_effect_set_one_line(tmp_path):
    code, text, _ = run_cli(["cohort", "--preset", "smoke", "--out", str(tmp_path / "c"), "--effects", "v9"])
    assert code == 1 and text.strip().count("\n") == 0 and "neither an effect set (v1, v2, v3) nor a file" in text


def test_nonexpressing_patients_drawn_without_effect(tmp_path):
    """With pd_nonexpressing 0.5 about half the patients are drawn with strength 0 (recorded in the truth file),
    and their images are those of a cohort with no disease effect at all, while the others' are not."""
    sites = [SiteSpec("s1", "sc1", 16, 12, 8, 0, 0, 0, 8, 6, 4)]
    het = Effects(pd_nonexpressing=0.5)
    generate_cohort(tmp_path / "het", size=12, seed=4, sites=sites, harm={}, effects=het)
    generate_cohort(tmp_path / "none", size=12, seed=4, sites=sites, harm={},
                    effects=Effects(pd_nonexpressing=0.5, pd_intensity=0.0, pd_atrophy=0.0))
    truth = pd.read_csv(tmp_path / "het" / cohort.TRUTH)
    assert json.loads((tmp_path / "het" / "cohort.json").read_text())["effects_source"] == "custom"
    pd_rows = truth[truth["label"] == 1]
    silent = pd_rows["pd_strength"] == 0
    assert len(pd_rows) == 18 and 5 <= silent.sum() <= 13 and (pd_rows.loc[~silent, "pd_strength"] == 1).all()
    assert (truth.loc[truth["label"] == 0, "pd_strength"] == 0).all()
    for row in truth.itertuples():
        same = np.array_equal(_voxels(tmp_path / "het", row.subject), _voxels(tmp_path / "none", row.subject))
        assert same == (row.pd_strength == 0), row.subject
    test_pd = pd_rows[pd_rows["split"] == "test"]  # a silent patient ties every control: half a pair won
    assert oracle_auroc(truth) == pytest.approx(1 - (test_pd["pd_strength"] == 0).mean() / 2)


def test_difficulty_draws_spread_and_keep_keys_apart():
    subjects = [f"s-train{i:03d}" for i in range(400)]
    hard = Effects(pd_effect_sd=0.5, hc_pdlike=0.25, hc_pdlike_max=0.8, dgm_intensity_sd=0.1)
    pd_s = np.array([subject_draw(0, s, 1, hard).pd_strength for s in subjects])
    hc_s = np.array([subject_draw(0, s, 0, hard).pd_strength for s in subjects])
    assert abs(pd_s.mean() - 1) < 0.08 and abs(pd_s.std() - 0.5) < 0.08 and (pd_s > 0).all()
    assert 0.18 < (hc_s > 0).mean() < 0.32 and hc_s.max() <= 0.8
    dgm = np.array([subject_draw(0, s, 1, hard).dgm_intensity for s in subjects])
    assert abs(dgm.std() - 0.1) < 0.015
    only_sd = [subject_draw(0, s, 1, Effects(pd_effect_sd=0.5)).pd_strength for s in subjects]
    assert np.array_equal(only_sd, pd_s)  # other keys do not change what pd_effect_sd draws


def test_scanner_gamma_scales_the_drawn_gamma_and_nothing_else():
    names = [f"scanner{i:02d}" for i in range(1, 21)]
    shipped = [cohort.scanner_params(n, 4, Effects()) for n in names]
    flat = [cohort.scanner_params(n, 4, Effects(scanner_gamma=0.0)) for n in names]
    half = [cohort.scanner_params(n, 4, Effects(scanner_gamma=0.075)) for n in names]
    gammas = np.array([p["gamma"] for p in shipped])
    assert gammas.min() >= 0.85 and gammas.max() <= 1.15 and gammas.std() > 0.05  # the shipped range
    assert all(p["gamma"] == 1.0 for p in flat)
    assert np.allclose([p["gamma"] - 1 for p in half], (gammas - 1) / 2)
    for a, b in zip(shipped, flat):  # the other scanner effects are drawn as before
        assert {k: v for k, v in a.items() if k != "gamma"} == {k: v for k, v in b.items() if k != "gamma"}


def test_workers_byte_identical_with_difficulty_on(tmp_path):
    hard = Effects(**HARD)
    for n in (1, 2):
        generate_cohort(tmp_path / f"w{n}", preset="smoke", size=12, seed=3, effects=hard, workers=n)
    one, two = _digest(tmp_path / "w1"), _digest(tmp_path / "w2")
    assert one == two and len(one) > 30
    generate_cohort(tmp_path / "plain", preset="smoke", size=12, seed=3, workers=1)
    assert _digest(tmp_path / "plain")["images/hospitalA/hospitalA-train000.nii.gz"] != \
        one["images/hospitalA/hospitalA-train000.nii.gz"]


def test_oracle_auroc_hand_computed():
    truth = pd.DataFrame({"split": ["test"] * 6 + ["train"] * 2, "label": [1, 1, 1, 0, 0, 0, 1, 0],
                          "pd_strength": [1.0, 0.0, 0.5, 0.0, 0.3, 0.0, 0.0, 9.0]})
    # test pairs (patient, control): 1.0 beats all 3; 0.0 ties two 0.0 (1/2 each), loses to 0.3; 0.5 beats all 3
    assert oracle_auroc(truth) == pytest.approx(7 / 9)
    assert oracle_auroc(truth, "train") == 0.0
    assert np.isnan(oracle_auroc(truth[truth["label"] == 1]))


def test_every_effect_key_documented():
    doc = open("docs/data.md").read()
    assert all(f"`{k}`" in doc for k in effect_keys())
