"""A BIDS dataset → manifest (`fedqc manifest from-bids`), the geometry report (`fedqc validate --geometry`) and
`fedqc manifest resample`, on small BIDS trees written here, broken ones included."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from fedqc.cli import app
from fedqc.data.bids import manifest_from_bids
from fedqc.data.geometry import advice, geometry_table
from fedqc.data.manifest import load_manifest, read_table, validate_manifest
from fedqc.errors import UserError

pytest.importorskip("bids")

# participant, sex, age, group, site, sessions
PEOPLE = [(f"{site.lower()}{i:02d}", "M" if i % 2 else "female", 50 + 3 * i, "PD" if i % 3 == 0 else "HC", site,
           ("1", "2") if i < 2 else ())
          for site in ("A", "B") for i in range(8)]


def write_image(path: Path, spacing: tuple, orientation: str, seed: int) -> None:
    img = sitk.GetImageFromArray(np.random.default_rng(seed).random((8, 8, 8), dtype=np.float32) * 1000)
    img.SetSpacing(spacing)
    sitk.WriteImage(sitk.DICOMOrient(img, orientation), str(path))


def make_bids(root: Path, people=PEOPLE, *, participants: bool = True) -> Path:
    """A dataset of two sites: A stores 1 mm RAS scans, B 2 mm LPS ones; the first two participants of each site
    have two sessions; each scan's sidecar names its institution."""
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    if participants:
        pd.DataFrame([{"participant_id": f"sub-{p}", "sex": sex, "age": age, "group": group, "site": site}
                      for p, sex, age, group, site, _ in people]).to_csv(root / "participants.tsv", sep="\t", index=False)
    for k, (p, _, _, _, site, sessions) in enumerate(people):
        for ses in sessions or ("",):
            anat = root / f"sub-{p}" / (f"ses-{ses}" if ses else "") / "anat"
            anat.mkdir(parents=True, exist_ok=True)
            stem = f"sub-{p}" + (f"_ses-{ses}" if ses else "") + "_T1w"
            write_image(anat / f"{stem}.nii.gz", (1.0,) * 3 if site == "A" else (2.0,) * 3,
                        "RAS" if site == "A" else "LPS", k)
            (anat / f"{stem}.json").write_text(json.dumps({"InstitutionName": f"Hospital {site}",
                                                           "MagneticFieldStrength": 3}))
    return root


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_bids(tmp_path_factory.mktemp("bids") / "ds")


def from_bids(dataset, **kw):
    kw = {"label": "group", "positive": ["PD"], "negative": ["HC"]} | kw
    return manifest_from_bids(dataset, **kw)


def test_from_bids_writes_a_valid_manifest_and_leaves_the_dataset_alone(dataset, tmp_path):
    before = tree_hash(dataset)
    out = tmp_path / "m" / "manifest.csv"
    code, text = cli("manifest", "from-bids", dataset, "--label", "group", "--positive", "PD", "--negative", "HC",
                     "--out", out)
    assert code == 0, text
    assert tree_hash(dataset) == before
    table = read_table(out)
    assert validate_manifest(table, root=out.parent).ok
    assert len(table) == 20 and set(table["site"]) == {"A", "B"}  # 16 participants, 4 of them with 2 sessions
    assert set(table["sex"]) == {"M", "F"} and set(table["label"]) == {"0", "1"}
    row = table[table["subject"] == "sub-a01_ses-2"].iloc[0]
    assert (row["participant"], row["session"], row["label"], row["sex"]) == ("a01", "2", "0", "M")
    assert pd.read_csv(out.with_name("manifest_skipped.csv")).empty
    code, text = cli("validate", out)
    assert code == 0, text
    code, text = cli("manifest", "from-bids", dataset, "--label", "group", "--out", out)
    assert code == 1 and "exists; pass --overwrite" in text


def test_splits_keep_participants_whole_cover_every_site_and_follow_the_seed(dataset):
    table, _ = from_bids(dataset)
    assert (table.groupby("participant")["split"].nunique() == 1).all()
    for site, t in table.groupby("site"):
        assert set(t["split"]) == {"train", "val", "test"}, site
        assert set(t.loc[t["split"] == "train", "label"]) == {0, 1}, site  # stratified by label within the site
    shares = table.drop_duplicates("participant")["split"].value_counts()
    assert shares["train"] > shares["val"] and shares["train"] > shares["test"]
    again, _ = from_bids(dataset)
    pd.testing.assert_frame_equal(table, again)
    other, _ = from_bids(dataset, seed=1)
    assert not other["split"].equals(table["split"])


@pytest.mark.parametrize("site_from, sites", [("session", {"1", "2"}), ("sidecar:InstitutionName", {"Hospital A",
                                                                                                       "Hospital B"})])
def test_site_from_session_or_sidecar(dataset, site_from, sites):
    table, skipped = from_bids(dataset, site_from=site_from, split="0.5,0.25,0.25")
    assert set(table["site"]) == sites
    if site_from == "session":  # the 12 participants with one unnamed session are skipped, each with its reason
        assert len(table) == 8 and len(skipped) == 12
        assert skipped["reason"].str.contains("no session").all()


def test_unusable_rows_are_skipped_with_a_reason_each(tmp_path):
    people = [*PEOPLE[:6], ("x01", "O", 60, "HC", "A", ()), ("x02", "M", "n/a", "HC", "A", ()),
              ("x03", "M", 61, "MCI", "A", ()), *PEOPLE[8:14]]
    root = make_bids(tmp_path / "ds", people)
    make_bids(tmp_path / "extra", [("zz9", "M", 70, "HC", "B", ())], participants=False)
    (tmp_path / "extra" / "sub-zz9").rename(root / "sub-zz9")  # a scan of a participant missing from participants.tsv
    tsv = pd.read_csv(root / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    pd.concat([tsv, pd.DataFrame([{"participant_id": "sub-noscan", "sex": "M", "age": 40, "group": "HC",
                                   "site": "B"}])]).to_csv(root / "participants.tsv", sep="\t", index=False)
    sidecar = root / "sub-b05" / "anat" / "sub-b05_T1w.json"
    sidecar.write_text(json.dumps({"MagneticFieldStrength": 3}))  # no InstitutionName
    out = tmp_path / "manifest.csv"
    code, text = cli("manifest", "from-bids", root, "--label", "group", "--positive", "PD", "--negative", "HC",
                     "--site-from", "sidecar:InstitutionName", "--out", out)
    assert code == 0, text
    skipped = pd.read_csv(tmp_path / "manifest_skipped.csv")
    reasons = dict(zip(skipped["participant"], skipped["reason"]))
    assert reasons == {
        "x01": "sub-x01: sex 'O' is neither male nor female (M/F, male/female; codes only with Levels in participants.json)",
        "x02": "sub-x02: age 'n/a' is not a number in 0..130",
        "x03": "sub-x03: group 'MCI' cannot be mapped to 0/1: name the values with --positive/--negative",
        "zz9": "sub-zz9: sub-zz9 is not in participants.tsv",
        "b05": "sub-b05: its JSON sidecar has no InstitutionName",
        "noscan": "sub-noscan: listed in participants.tsv but has no T1w image"}
    for reason in reasons.values():
        assert f"skipped: {reason}" in text  # printed, one line each
    assert len(read_table(out)) == 20 - 5  # 20 scans, 5 of them skipped
    assert validate_manifest(read_table(out), root=tmp_path).ok


def test_sex_codes_map_only_when_participants_json_documents_them(tmp_path):
    people = [(p, "1" if sex == "M" else "2", *rest) for p, sex, *rest in PEOPLE]
    root = make_bids(tmp_path / "ds", people)
    with pytest.raises(UserError, match="no usable scan .20 skipped, e.g. sub-a00_ses-1: sex '2' is neither"):
        from_bids(root)
    (root / "participants.json").write_text(json.dumps({"sex": {"Levels": {"1": "male", "2": "female"}}}))
    table, skipped = from_bids(root)
    assert skipped.empty and set(table["sex"]) == {"M", "F"}


@pytest.mark.parametrize("change, kw, message", [
    ("no participants.tsv", {}, "no participants.tsv; fedqc takes sex, age and the label from it"),
    ("no T1w", {}, "no sub-*/[ses-*/]anat/*_T1w.nii[.gz] files"),
    (None, {"label": "diagnosis"}, "no label column 'diagnosis'; name it with --label"),
    (None, {"site_from": "participants:scanner"}, "no site column 'scanner'"),
    (None, {"site_from": "scanner"}, "--site-from: expected participants[:COLUMN], session or sidecar:KEY"),
    (None, {"split": "0.5,0.5"}, "--split: expected three shares"),
    (None, {"split": "0.9,0.07,0.03"}, "multiple of 0.05"),
    (None, {"positive": ["PD"], "negative": []}, "give both --positive and --negative"),
    (None, {"positive": [], "negative": []}, "no usable scan"),  # PD/HC are not 0/1 without a mapping
])
def test_broken_datasets_and_options_give_one_line_errors(tmp_path, change, kw, message):
    root = make_bids(tmp_path / "ds", participants=change != "no participants.tsv")
    if change == "no T1w":
        for f in root.rglob("*_T1w.nii.gz"):
            f.rename(f.with_name(f.name.replace("_T1w", "_T2w")))
    with pytest.raises(UserError, match=None) as exc:
        from_bids(root, **kw)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    args = ["manifest", "from-bids", root, "--out", tmp_path / "m.csv", "--label", kw.get("label", "group"),
            "--site-from", kw.get("site_from", "participants"), "--split", kw.get("split", "0.6,0.2,0.2")]
    args += [a for v in kw.get("positive", ["PD"]) for a in ("--positive", v)]
    args += [a for v in kw.get("negative", ["HC"]) for a in ("--negative", v)]
    code, text = cli(*args)
    assert code == 1 and message in text and "Traceback" not in text


def test_geometry_report_names_each_sites_scans_and_the_orientation_mismatch(dataset, tmp_path):
    table, _ = from_bids(dataset)
    geo = geometry_table(table)
    assert set(geo.loc[geo["site"] == "A", "orientation"]) == {"RAS"}
    assert set(geo.loc[geo["site"] == "B", "orientation"]) == {"LPS"}
    # the codes agree with nibabel's reading of the files
    first_b = table[table["site"] == "B"]["path"].iloc[0]
    assert "".join(nib.aff2axcodes(nib.load(first_b).affine)) == "LPS"
    lines = advice(geo, (32, 32, 32))
    site_a = next(line for line in lines if line.startswith("site A:"))
    assert "10 scans, 8x8x8 voxels, 1 mm, RAS, intensities " in site_a and "10 will be resized to 32x32x32" in site_a
    assert any(line.startswith("site B:") and "2 mm, LPS" in line for line in lines)
    assert any(line.startswith("orientations differ (LPS, RAS)") for line in lines)
    assert any(line.startswith("fields of view differ") for line in lines)
    out = tmp_path / "manifest.csv"
    table.to_csv(out, index=False)
    code, text = cli("validate", out, "--geometry", "--shape", "8")
    assert code == 0 and "all already 8x8x8" in text and "orientations differ" in text, text


def test_resample_writes_ras_copies_at_the_models_shape_and_leaves_the_input(dataset, tmp_path):
    table, _ = from_bids(dataset)
    src = tmp_path / "in" / "manifest.csv"
    src.parent.mkdir()
    table.to_csv(src, index=False)
    before = tree_hash(dataset)
    code, text = cli("manifest", "resample", src, "--shape", "12x10x8", "--out", tmp_path / "out")
    assert code == 0, text
    assert tree_hash(dataset) == before
    resampled = load_manifest(tmp_path / "out" / "manifest.csv")
    geo = geometry_table(resampled)
    assert set(geo["orientation"]) == {"RAS"} and set(geo["shape"]) == {"12x10x8"}
    # the field of view is kept: site B's 16 mm (8 voxels of 2 mm) now spans 12 voxels of 1.33 mm on x
    assert set(geo.loc[geo["site"] == "B", "fov_mm"]) == {"16x16x16"}
    code, text = cli("manifest", "resample", src, "--shape", "12x10x8", "--out", tmp_path / "out")
    assert code == 1 and "pass --overwrite" in text


@pytest.mark.slow
def test_a_bids_dataset_trains_end_to_end(dataset, tmp_path):
    """BIDS → manifest → geometry check → resample → a run → its report, through the commands and the API."""
    import fedqc

    out = tmp_path / "manifest.csv"
    assert cli("manifest", "from-bids", dataset, "--label", "group", "--positive", "PD", "--negative", "HC",
               "--site-from", "sidecar:InstitutionName", "--out", out)[0] == 0
    assert cli("validate", out, "--geometry", "--shape", "16")[0] == 0
    assert cli("manifest", "resample", out, "--shape", "16", "--out", tmp_path / "16")[0] == 0
    config = {"name": "bids", "manifest": str(tmp_path / "16" / "manifest.csv"), "engine": "inprocess", "threads": 1,
              "model": {"name": "sfcn", "width": 0.25, "input_shape": [16, 16, 16]},
              "train": {"cycles": 1, "branch_cycle": 0, "lr": 0.001}, "arms": ["clean"],
              "calibration": {"batchnorm": "site", "threshold": "fixed"}}
    run = fedqc.run(config, out=tmp_path / "run", n_boot=50)
    preds = run.arms["clean"].predictions(0)
    test = read_table(tmp_path / "16" / "manifest.csv").query("split == 'test'")
    assert sorted(preds["subject"]) == sorted(test["subject"])
    assert run.arms["clean"].errors.empty and set(run.summary()["arm"]) == {"clean"}
    assert cli("report", tmp_path / "run")[0] == 0  # → the run's page (fedqc infer's tables made first)
    page = (tmp_path / "run" / "report.html").read_text()
    assert 'id="final-table"' in page and (tmp_path / "run" / "metrics.csv").is_file()
