"""`fedqc harm`: a scenario injected into a manifest of scans fedqc did not make, the input left untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from typer.testing import CliRunner

from fedqc.cli import app
from fedqc.data.corruptions.scenario import Scenario
from fedqc.data.inject import inject
from fedqc.data.manifest import load_manifest
from fedqc.data.synth.cohort import REFERENCE_HARM
from fedqc.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def plain_study(tmp_path) -> Path:
    """Three sites of 8-bit scans written with plain SimpleITK: sizes 6, 4 and 2 training scans."""
    root = tmp_path / "study"
    rng = np.random.default_rng(0)
    rows = []
    for site, n_train in (("A", 6), ("B", 4), ("C", 2)):
        for split, n in (("train", n_train), ("val", 2), ("test", 2)):
            for i in range(n):
                subject = f"{site}-{split}{i}"
                arr = np.zeros((10, 12, 14), np.uint8)
                arr[2:8, 3:9, 3:11] = rng.integers(60, 200, (6, 6, 8))
                img = sitk.GetImageFromArray(arr)
                img.SetSpacing((1.5, 1.5, 2.0))
                (root / "scans").mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(img, str(root / "scans" / f"{subject}.nii.gz"))
                rows.append({"subject": subject, "site": site, "path": f"scans/{subject}.nii.gz", "label": i % 2,
                             "sex": "MF"[i % 2], "age": 60 + i, "split": split})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


SCENARIO = {"sites": [{"kind": "inverted", "site": "C"}, {"kind": "noise", "new": "N", "train": 2, "val": 1}],
            "scans": [{"kind": "blank", "site": "A", "count": 2}, {"kind": "mislabeled", "subject": "B-train1"}],
            "label_noise": [{"sites": ["B"], "rate": 0.5}]}


def test_harm_writes_what_the_scenario_says_and_never_touches_the_input(plain_study, tmp_path):
    before = digest(plain_study)
    out = tmp_path / "harmed"
    m = inject(plain_study / "manifest.csv", Scenario.from_dict(SCENARIO), out, seed=4)
    assert digest(plain_study) == before  # the input tree is byte-identical
    loaded = load_manifest(out / "manifest.csv").set_index("subject")  # a valid manifest
    original = load_manifest(plain_study / "manifest.csv").set_index("subject")
    harm = loaded["harm"]
    assert set(harm[loaded["site"] == "C"].loc[lambda h: h.index.str.contains("train|val")]) == {"inverted"}
    assert set(harm[loaded["split"] == "test"]) == {"none"}  # the test split is never corrupted
    assert (loaded["site"] == "N").sum() == 3 and set(harm[loaded["site"] == "N"]) == {"noise"}
    assert (harm[loaded["site"] == "A"] == "blank").sum() == 2
    assert harm["B-train1"] == "mislabeled" and loaded.at["B-train1", "label"] != original.at["B-train1", "label"]
    flipped_b = harm[(loaded["site"] == "B") & (loaded["split"] == "train")]
    assert (flipped_b == "mislabeled").sum() == 1 + 2  # one named, half of the other three (rounded up)
    for subject, row in loaded.iterrows():
        path = Path(row["path"])
        if row["harm"] in ("none", "mislabeled"):  # good scans and label flips: the original file, not a copy
            assert path.is_relative_to(plain_study.resolve()), subject
        else:
            assert path.is_relative_to(out.resolve()) and row["harm_detail"], subject
    c = loaded[(loaded["site"] == "C") & (loaded["split"] == "train")].iloc[0]
    src = sitk.ReadImage(original.at[c.name, "path"])
    inv = sitk.ReadImage(c["path"])
    assert inv.GetSpacing() == src.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(inv), 255 - sitk.GetArrayFromImage(src))
    assert m["harm"].ne("none").sum() == harm.ne("none").sum()
    with pytest.raises(UserError, match="--overwrite"):
        inject(plain_study / "manifest.csv", Scenario.from_dict(SCENARIO), out, seed=4)
    again = inject(plain_study / "manifest.csv", Scenario.from_dict(SCENARIO), out, seed=4, overwrite=True)
    pd.testing.assert_frame_equal(again, m)  # seeded: the same scans, the same corruptions
    assert digest(plain_study) == before


@pytest.mark.parametrize("out", ["study/harmed", "study/scans/x", "."])
def test_harm_refuses_an_output_among_the_inputs(plain_study, tmp_path, out):
    with pytest.raises(UserError, match="input"):
        inject(plain_study / "manifest.csv", Scenario.from_dict(SCENARIO), tmp_path / out, overwrite=True)


SCENARIO_ERRORS = [
    ({"sites": [{"kind": "rotated", "site": "A"}]}, "unknown harm kind 'rotated'"),
    ({"site": []}, "unknown key 'site'"),
    ({"scans": [{"kind": "blank", "site": "A", "colour": 1}]}, "unknown key 'colour'"),
    ({"scans": [{"kind": "blank", "rate": 1.5}]}, "rate must be in [0, 1]"),
    ({"label_noise": [{"sites": "all", "rates": {"0": -0.1}}]}, "must be in [0, 1]"),
    ({"sites": [{"kind": "inverted", "site": "A", "new": "X"}]}, "give either site"),
    ({"scans": [{"kind": "blank", "site": "A", "subject": "A-train0"}]}, "exactly one of site, subject or rate"),
    ({"scans": [{"kind": "blank", "site": "A", "count": 0}]}, "count must be >= 1"),
]
PLAN_ERRORS = [
    ({"sites": [{"kind": "inverted", "site": "Z"}]}, "unknown site 'Z'"),
    ({"scans": [{"kind": "blank", "site": "C", "count": 3}]}, "3 scan(s) asked at C, which has 2"),
    ({"scans": [{"kind": "blank", "subject": "A-test0"}]}, "test scan"),
    ({"scans": [{"kind": "blank", "subject": "nobody"}]}, "unknown subject 'nobody'"),
    ({"sites": [{"kind": "noise", "new": "A", "train": 1}]}, "already exists"),
    ({"sites": [{"kind": "noise", "new": "N", "train": 50}]}, "50 scans asked"),
    ({"scans": [{"kind": "blank", "subject": "A-train0"}, {"kind": "noise", "subject": "A-train0"}]},
     "already targeted"),
]


@pytest.mark.parametrize("spec,message", SCENARIO_ERRORS + PLAN_ERRORS,
                         ids=[m for _, m in SCENARIO_ERRORS + PLAN_ERRORS])
def test_every_scenario_problem_is_one_clear_line(spec, message, plain_study, tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["harm", "--manifest", str(plain_study / "manifest.csv"), "--scenario",
                                      str(scenario), "--out", str(tmp_path / "out")])
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 1 and message in text and "Traceback" not in text, text
    assert not (tmp_path / "out").exists()  # nothing written for a bad scenario


def test_shipped_scenarios_are_valid_and_the_reference_preset_uses_its_own():
    for path in sorted((ROOT / "configs" / "scenarios").glob("*.yaml")):
        Scenario.from_dict(yaml.safe_load(path.read_text()))
    assert yaml.safe_load((ROOT / "configs" / "scenarios" / "reference-study.yaml").read_text()) == REFERENCE_HARM
