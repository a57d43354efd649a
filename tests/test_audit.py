"""The image audit (``fedqc audit``, :mod:`fedqc.data.audit`): every planted problem is found with its type and
nothing else is flagged; the command end to end; the QC audit stage's per-site checks (``Site.check_images``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.audit_planted import FLAGS, plant
from fedqc.cli import app
from fedqc.data.audit import NEAR_THRESHOLD, audit_manifest, audit_table, measure, robust_z, summarize
from fedqc.data.image_checks import check_raw, hamming, perceptual_hash, voxel_hash
from fedqc.data.manifest import load_manifest
from fedqc.data.synth.cohort import generate_cohort
from tests.conftest import TINY_SITES

SHAPE = (32, 32, 32)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    """A clean 32³ cohort of 35 scans at 3 sites, with bench.audit_planted's problems planted (44 scans)."""
    cohort = tmp_path_factory.mktemp("clean")
    generate_cohort(cohort, size=32, seed=5, sites=TINY_SITES, harm={})
    return plant(cohort / "manifest.csv", tmp_path_factory.mktemp("planted"), seed=0)


@pytest.fixture(scope="module")
def audited(planted) -> tuple[pd.DataFrame, pd.DataFrame]:
    return audit_manifest(planted[0], shape=SHAPE)


def flagged(table: pd.DataFrame) -> dict[str, set[str]]:
    return {r.subject: kinds for r in table.itertuples() if (kinds := {k for k, c in FLAGS.items() if getattr(r, c)})}


def test_every_planted_problem_is_found_and_nothing_else(planted, audited):
    _, expected = planted
    table, _ = audited
    kinds = [k for e in expected.values() for k in e]
    assert {k: kinds.count(k) for k in set(kinds)} == {  # what was planted: the test cannot pass on nothing
        "blank": 3, "exact_duplicate": 4, "near_duplicate": 4, "across_sites": 4, "unreadable": 1,
        "intensity_outlier": 1, "shape_outlier": 1}
    assert flagged(table) == expected  # every planted scan with exactly its kinds; no good scan flagged

    t = table.set_index("subject")
    for s in [s for s in expected if s.startswith("planted-exact")]:  # each copy names its original, and back
        original = t.at[s, "duplicate_of"]
        assert t.at[original, "duplicate_of"] == s and t.at[s, "path"] != t.at[original, "path"]
    for s in [s for s in expected if s.startswith("planted-near")]:
        original = t.at[s, "near_duplicate_of"]
        assert t.at[original, "near_duplicate_of"] == s and t.at[s, "near_distance"] <= NEAR_THRESHOLD
        assert not t.at[s, "is_exact_duplicate"]
    blanks = t.loc[t["is_blank"], "reason"]
    assert sorted(blanks) == ["blank: every voxel is 0", "blank: every voxel is 100",
                              "near-constant: 99.9% of the voxels are 0"]  # 27 of 32³ voxels are not
    assert t.loc[t["unreadable"], "reason"].str.startswith("unreadable image").all()
    assert t.loc[t["is_intensity_outlier"], "reason"].iloc[0].startswith("intensity outlier: ")
    assert t.loc[t["is_shape_outlier"], "reason"].iloc[0].startswith("shape outlier: size[2] 16 against a median 32")
    good = ~t.index.isin(list(expected))
    assert (t.loc[good, "reason"] == "").all()
    assert t.loc[good, "near_distance"].min() > NEAR_THRESHOLD  # distinct subjects are not near duplicates ...
    assert t.loc[good, "intensity_z"].max() < 5 and t.loc[good, "shape_z"].max() < 5  # ... nor outliers


def test_2d_images_every_planted_problem_is_found_and_nothing_else(tmp_path):
    """The same on 2D slices (the demo2d preset's, 32²): the hash, the checks and the outliers in two dimensions."""
    generate_cohort(tmp_path / "clean", preset="demo2d", size=32, seed=5, sites=TINY_SITES, harm={})
    manifest, expected = plant(tmp_path / "clean" / "manifest.csv", tmp_path / "planted", seed=0)
    table, _ = audit_manifest(manifest, shape=(32, 32))
    assert len(expected) == 14 and flagged(table) == expected
    assert table.loc[~table["subject"].isin(list(expected)), "near_distance"].min() > NEAR_THRESHOLD


def test_summary_counts_per_site_and_overall(audited):
    table, summary = audited
    assert list(summary["site"]) == sorted(table["site"].unique()) + ["all"]
    total = summary.set_index("site").loc["all"]
    assert total["scans"] == len(table) and total["any_issue"] == len(flagged(table))
    assert total["blank"] == 3 and total["exact_duplicate"] == 4 and total["near_duplicate"] == 4
    assert total["unreadable"] == 1 and total["duplicate_across_sites"] == 4
    assert (summary[summary["site"] != "all"].drop(columns="site").sum() == total).all()


def test_per_image_checks_on_arrays():
    assert check_raw(np.zeros((8, 8, 8), np.float32)) == "blank: every voxel is 0"
    near = np.zeros((10, 10, 10))
    near[0, 0, :5] = 7
    assert check_raw(near) == "near-constant: 99.5% of the voxels are 0"
    assert check_raw(np.arange(1000.0).reshape(10, 10, 10)) is None

    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert voxel_hash(a) == voxel_hash(a.copy())
    assert len({voxel_hash(a), voxel_hash(a.astype(np.float64)), voxel_hash(a.reshape(4, 3, 2))}) == 3

    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 32)] * 3, indexing="ij"))

    def head(centre, radii, seed) -> np.ndarray:  # an ellipsoid with smooth inner structure
        r = sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, radii))
        texture = np.random.default_rng(seed).normal(size=(4, 4, 4))
        inner = np.kron(texture, np.ones((8, 8, 8)))
        return (np.exp(-r * 2) * (1 + 0.3 * inner) * (r < 1))[None].astype(np.float32)

    one, other = head((0, 0, 0), (0.7, 0.8, 0.6), 0), head((0, 0, 0), (0.7, 0.8, 0.6), 1)
    moved = np.roll(one, 1, axis=2)
    h = perceptual_hash(one)
    assert h.shape == (511,) and perceptual_hash(one[:, :, :, 0]).shape == (575,)
    assert hamming(h, perceptual_hash(moved)) <= NEAR_THRESHOLD < hamming(h, perceptual_hash(other))

    z, median, scale = robust_z(np.array([1.0, 1, 1, 1, 2]), np.ones(5, bool), 0.1)  # MAD 0: the floor
    assert median == 1 and scale == 0.1 and z[-1] == pytest.approx(10)


def test_audit_table_from_arrays_blank_scans_are_only_blank():
    """Two all-zero scans are blank, not duplicates of each other, and get no other score."""
    rng = np.random.default_rng(0)
    scan = rng.random((8, 8, 8)).astype(np.float32)
    facts = [measure("a", "s1", "train", "a.nii", np.zeros((8, 8, 8)), np.zeros((1, 8, 8, 8))),
             measure("b", "s2", "train", "b.nii", np.zeros((8, 8, 8)), np.zeros((1, 8, 8, 8))),
             measure("c", "s1", "train", "c.nii", scan, scan.T[None]),
             measure("d", "s2", "val", "d.nii", scan, scan.T[None])]
    table = audit_table(facts)
    assert list(table["is_blank"]) == [True, True, False, False]
    assert list(table["is_exact_duplicate"]) == [False, False, True, True]
    assert list(table["duplicate_of"]) == ["", "", "d", "c"] and table["duplicate_across_sites"].iloc[2]
    assert table.loc[:1, ["intensity_z", "near_distance", "border_mean"]].isna().all().all()
    assert summarize(table).set_index("site").at["all", "exact_duplicate"] == 2


def run(args: list[str]) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else ""), \
        result.exception


def test_cli_end_to_end_leaves_the_inputs_alone(planted, tmp_path, monkeypatch):
    manifest, _ = planted
    inputs = [manifest, *map(Path, load_manifest(manifest, check_images=False)["path"])]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs}
    out = tmp_path / "audit"
    args = ["audit", str(manifest), "--out", str(out), "--shape", "32"]
    code, text, _ = run(args)
    assert code == 0, text
    table, summary = pd.read_csv(out / "audit.csv", keep_default_na=False), pd.read_csv(out / "audit_summary.csv")
    assert len(table) == len(pd.read_csv(manifest)) and sorted(p.name for p in out.iterdir()) == [
        "audit.csv", "audit_summary.csv"]
    assert summary.iloc[-1]["site"] == "all" and summary.iloc[-1]["any_issue"] == 14
    assert "any issue" in text and f"14 of {len(table)}" in text and "wrote" in text
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs} == before

    code, text, _ = run(args)  # the folder is not empty now
    assert code == 1 and "exists and is not empty (use --overwrite" in text and "Traceback" not in text
    (out / "keep.txt").write_text("mine")
    assert run(args + ["--overwrite"])[0] == 0 and (out / "keep.txt").read_text() == "mine"

    monkeypatch.chdir(tmp_path)  # the default folder: runs/audit-<the manifest's folder>
    assert run(["audit", str(manifest), "--shape", "32"])[0] == 0
    assert (tmp_path / "runs" / f"audit-{manifest.parent.name}" / "audit.csv").is_file()


@pytest.mark.parametrize("args,message", [
    (["audit", "nowhere.csv"], "file not found: nowhere.csv"),
    (["audit", "M", "--shape", "big"], "--shape must be an integer"),
    (["audit", "M", "--shape", "4"], "--shape needs two sides (2D) or three (3D), each >= 8"),
    (["audit", "M", "--near-threshold", "0.7"], "--near-threshold is a share of the hash bits in [0, 0.5)"),
    (["audit", "M", "--outlier-z", "0"], "--outlier-z must be > 0"),
], ids=["missing manifest", "shape not a number", "shape too small", "threshold", "outlier z"])
def test_cli_mistakes_fail_cleanly(args, message, planted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, text, exc = run([str(planted[0]) if a == "M" else a for a in args])
    assert code == 1 and message in text, text
    assert "Traceback" not in text and (exc is None or isinstance(exc, SystemExit))
    assert not (tmp_path / "runs").exists()


def test_cli_never_writes_over_an_input(planted, tmp_path):
    """A manifest called audit.csv, audited into its own folder: refused even with --overwrite."""
    manifest = tmp_path / "audit.csv"
    manifest.write_bytes(planted[0].read_bytes())  # its image paths are absolute
    code, text, _ = run(["audit", str(manifest), "--out", str(tmp_path), "--shape", "32", "--overwrite"])
    assert code == 1 and "would overwrite the input" in text, text
    assert manifest.read_bytes() == planted[0].read_bytes()


def test_site_audit_uses_the_same_checks(planted, audited):
    """The QC audit stage: unusable, blank, near-constant, and a later exact copy at the same site; copies at
    other sites and near duplicates stay unseen there."""
    from fedqc.config import ModelSpec
    from fedqc.site.site import Site

    manifest, expected = planted
    table = load_manifest(manifest, check_images=False)
    spec = ModelSpec(width=0.25, input_shape=SHAPE)
    findings = {f.subject: f.reason for name, rows in table.groupby("site") for f in Site(name, rows, model=spec).check_images()}
    t = audited[0].set_index("subject")
    within = [s for s, k in expected.items() if s.startswith("planted-exact") and "across_sites" not in k]
    assert set(findings) == set(t.index[t["is_blank"] | t["unreadable"]]) | set(within)
    assert findings[within[0]] == f"exact duplicate of {t.at[within[0], 'duplicate_of']}"
    assert all(findings[s] == t.at[s, "reason"] for s in t.index[t["is_blank"]])


def test_a_registered_audit_check_adds_its_columns_and_its_count():
    from fedqc.data.audit import AUDIT_ISSUES, AuditCheck, AuditInput
    from fedqc.data.issues import Found

    class Tiny(AuditCheck):
        """A toy issue type: scans with fewer than 300 voxels."""

        name = "tiny"

        def find(self, data: AuditInput) -> Found:
            voxels = np.array([np.prod(f.size) for f in data.facts], dtype=float)
            return Found(pd.DataFrame({self.score_column(): voxels, self.flag_column(): voxels < 300,
                                       "reason": ["tiny" if v < 300 else "" for v in voxels]}))

    scan = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    facts = [measure("a", "s1", "train", "a.nii", scan, scan.T[None]),
             measure("b", "s2", "train", "b.nii", scan[:, :, :4], scan[:, :, :4].T[None])]
    AUDIT_ISSUES.register(Tiny)
    try:
        table = audit_table(facts)
        assert list(table.columns[-3:]) == ["tiny_score", "is_tiny_issue", "reason"]
        assert list(table["is_tiny_issue"]) == [False, True] and table["reason"].iloc[1].endswith("; tiny")
        assert summarize(table).set_index("site").at["all", "tiny"] == 1
    finally:
        del AUDIT_ISSUES["tiny"]
    assert {"is_blank_issue", "blank_score", "is_blank"} <= set(audit_table(facts).columns)


def test_a_qc_arm_of_a_minimal_config_runs_the_audit_and_a_config_can_turn_it_off(tiny_cohort):
    from fedqc.config.load import parse_config

    minimal = {"name": "minimal", "manifest": str(tiny_cohort / "manifest.csv"), "arms": ["clean", "qc"],
               "qc": {"start": "scratch"}}
    assert parse_config(minimal).qc_for("qc").audit is True  # the schema's default (docs/qc.md: why)
    assert parse_config({**minimal, "qc": {"start": "scratch", "audit": False}}).qc_for("qc").audit is False
    assert parse_config({**minimal, "arms": ["clean", "qc-auroc-hierarchical-noaudit"]}).qc_for(
        "qc-auroc-hierarchical-noaudit").audit is False
