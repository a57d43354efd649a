"""Manifest contract: every bad-input kind is reported with its rows; aliases accepted."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from fedqc.data.manifest import load_manifest, read_table, validate_manifest
from fedqc.errors import ManifestError
from tests.conftest import with_absolute_paths


@pytest.fixture
def good(tiny_cohort):
    return pd.read_csv(tiny_cohort / "manifest.csv", dtype=str, keep_default_na=False)


def check(df, root, tmp_path):
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    return validate_manifest(read_table(path), root=root)


def test_valid_manifest_passes(good, tiny_cohort, tmp_path):
    report = check(good, tiny_cohort, tmp_path)
    assert report.ok, report.errors
    assert report.warnings == []


def test_reference_aliases_accepted(good, tiny_cohort, tmp_path):
    aliased = good.rename(columns={"subject": "Subject", "site": "Study", "path": "Path",
                                   "label": "Group_bin", "sex": "Sex", "age": "Age"})
    assert check(aliased, tiny_cohort, tmp_path).ok
    with_absolute_paths(aliased.rename(columns={"Path": "path"}), tiny_cohort).rename(columns={"path": "Path"}) \
        .to_csv(tmp_path / "aliased.csv", index=False)
    table = load_manifest(tmp_path / "aliased.csv")
    assert {"subject", "site", "path", "label", "sex", "age"} <= set(table.columns)
    assert table["label"].dtype.kind == "i"


BAD = [
    ("missing column", lambda d: d.drop(columns=["age"]), "missing required column(s): age"),
    ("duplicate subject", lambda d: pd.concat([d, d.iloc[[0]]]), "duplicate subject"),
    ("subject in two splits", lambda d: pd.concat([d, d.iloc[[0]].assign(split="test")]), "more than one split"),
    ("missing file", lambda d: d.assign(path=d["path"].where(d.index != 1, "nope.nii.gz")), "image file missing"),
    ("label", lambda d: d.assign(label=d["label"].where(d.index != 2, "2")), "label not 0/1"),
    ("sex", lambda d: d.assign(sex=d["sex"].where(d.index != 2, "X")), "sex not M/F"),
    ("age text", lambda d: d.assign(age=d["age"].where(d.index != 3, "old")), "age not a number"),
    ("age NaN", lambda d: d.assign(age=d["age"].where(d.index != 3, "nan")), "age not a number"),
    ("empty site", lambda d: d.assign(site=d["site"].where(d.index != 4, "")), "empty site"),
    ("unknown split", lambda d: d.assign(split=d["split"].where(d.index != 4, "holdout")), "unknown split"),
]


@pytest.mark.parametrize("name,mutate,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_reported_with_rows(name, mutate, message, good, tiny_cohort, tmp_path):
    report = check(mutate(good.copy()).reset_index(drop=True), tiny_cohort, tmp_path)
    assert not report.ok
    hit = [e for e in report.errors if message in e]
    assert hit, report.errors
    if name not in ("missing column", "duplicate subject", "subject in two splits"):
        assert "line " in hit[0]  # offending rows named


def test_unreadable_image(good, tiny_cohort, tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    df = with_absolute_paths(good, tiny_cohort)
    df.loc[0, "path"] = "broken.nii.gz"
    report = check(df, tmp_path, tmp_path)
    assert any("unreadable" in e and df.loc[0, "subject"] in e for e in report.errors)


def test_site_without_val_is_a_warning(good, tiny_cohort, tmp_path):
    df = good[~((good["site"] == "beta") & (good["split"] == "val"))]
    report = check(df, tiny_cohort, tmp_path)
    assert report.ok and any("beta" in w for w in report.warnings)


def test_load_manifest_raises_with_all_problems(good, tiny_cohort, tmp_path):
    df = with_absolute_paths(good, tiny_cohort)
    df.loc[0, "label"] = "7"
    df.loc[1, "sex"] = "?"
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ManifestError) as exc:
        load_manifest(tmp_path / "bad.csv")
    assert len(exc.value.problems) == 2


@pytest.mark.parametrize("content", ["", "a,b\n1,2,3,4\n\"unterminated", "subject,site\n"])
def test_cli_validate_bad_files_no_traceback(content, tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(content)
    res = subprocess.run([sys.executable, "-m", "fedqc", "validate", str(path)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr + res.stdout
    assert "error" in res.stderr


def test_cli_validate_ok_and_missing(tiny_cohort, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "fedqc", "validate", str(tiny_cohort / "manifest.csv")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run([sys.executable, "-m", "fedqc", "validate", str(tmp_path / "none.csv")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "file not found" in missing.stderr and "Traceback" not in missing.stderr
