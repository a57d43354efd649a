"""Every bad input ends in a clear message naming the problem, exit code 1 and no traceback."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fedqc.cli import app
from tests.conftest import with_absolute_paths


def base_config(manifest) -> dict:
    return {"name": "tiny", "manifest": str(manifest), "engine": "inprocess",
            "model": {"name": "sfcn", "width": 0.25, "input_shape": [16, 16, 16]},
            "train": {"cycles": 2, "branch_cycle": 0, "lr": 1e-3}, "arms": ["clean"]}


def set_key(data: dict, dotted: str, value) -> dict:
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return data


CONFIGS = [  # (id, dotted key, value, expected message)
    ("unknown key", "colour", "red", "colour: unknown key"),
    ("unknown nested key", "train.speed", 3, "train.speed: unknown key"),
    ("wrong type", "train.cycles", "ten", "train.cycles: expected int"),
    ("cycles 0", "train.cycles", 0, "train.cycles: must be >= 1"),
    ("branch cycle >= cycles", "train.branch_cycle", 2, "train.branch_cycle: must be in 0..cycles-1"),
    ("old and new name", "train.warmup", 0, "train.warmup: renamed train.branch_cycle; give only train.branch_cycle"),
    ("batch size 0", "train.batch_size", 0, "train.batch_size: must be >= 1"),
    ("negative lr", "train.lr", -0.1, "train.lr: must be > 0"),
    ("unknown order", "train.order", "zigzag", "train.order"),
    ("tolerance < 0", "qc.tolerance", -0.02, "qc.tolerance: must be >= 0"),
    ("z < 0", "qc.z", -1, "qc.z: must be >= 0"),
    ("verify fraction 0", "qc.verify_fraction", 0, "qc.verify_fraction: must be in (0, 1]"),
    ("unknown criterion", "qc.criterion", "magic", "qc.criterion"),
    ("unknown granularity", "qc.granularity", "daily", "qc.granularity"),
    ("revisit after 0", "qc.revisit_after", 0, "qc.revisit_after: must be >= 1"),
    ("unknown arm", "arms", ["clean", "qc-magic-batch"], "arms:"),
    ("arm listed twice", "arms", ["clean", "clean"], "arms: listed twice"),
    ("missing manifest", "manifest", "nowhere.csv", "manifest: file not found"),
    ("unknown engine", "engine", "warp", "engine:"),
    ("tiny input shape", "model.input_shape", [4, 4, 4], "model.input_shape"),
    ("width 0", "model.width", 0, "model.width: must be > 0"),
    ("qc not a mapping", "qc", "on", "qc: expected a mapping"),
]


def run(args):
    result = CliRunner().invoke(app, args)
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    return result.exit_code, text, result.exception


def assert_clean_failure(args, message):
    code, text, exc = run(args)
    assert code == 1, text
    assert message in text, text
    assert "Traceback" not in text and (exc is None or isinstance(exc, SystemExit))


@pytest.mark.parametrize("key,value,message", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config(key, value, message, tiny_cohort, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(set_key(base_config(tiny_cohort / "manifest.csv"), key, value)))
    assert_clean_failure(["simulate", "--config", str(path), "--out", str(tmp_path / "run")], message)
    assert not (tmp_path / "run").exists()


def test_no_cycle_left_after_the_branch_cycle(tiny_cohort, tmp_path):
    """branch_cycle = cycles-1 leaves the dirty and QC arms nothing to run: refused before anything runs."""
    data = set_key(base_config(tiny_cohort / "manifest.csv"), "train.branch_cycle", 1)
    data["arms"] = ["clean", "dirty"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert_clean_failure(["simulate", "--config", str(path), "--out", str(tmp_path / "run")],
                         "train.branch_cycle: the dirty and QC arms start at cycle branch_cycle+1")


@pytest.mark.parametrize("content,message", [("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "expected a mapping")],
                         ids=["broken YAML", "list instead of mapping"])
def test_unreadable_config(content, message, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert_clean_failure(["simulate", "--config", str(path)], message)


def test_missing_config(tmp_path):
    assert_clean_failure(["simulate", "--config", str(tmp_path / "none.yaml")], "config file not found")


def test_debug_shows_the_error_itself_on_every_command(tmp_path):
    from fedqc.errors import ConfigError, ManifestError

    for args, error in ((["simulate", "--config", str(tmp_path / "none.yaml")], ConfigError),
                        (["validate", str(tmp_path / "none.csv")], ManifestError)):
        code, _, exc = run([*args, "--debug"])
        assert code == 1 and isinstance(exc, error), (args, exc)


MANIFESTS = [
    ("missing column", lambda d: d.drop(columns=["sex"]), "missing required column(s): sex"),
    ("duplicate subject", lambda d: pd.concat([d, d.iloc[[0]]]), "duplicate subject"),
    ("bad label", lambda d: d.assign(label=d["label"].astype(str).where(d.index != 0, "yes")), "label not 0/1"),
    ("missing image", lambda d: d.assign(path=d["path"].where(d.index != 0, "gone.nii.gz")), "image file missing"),
    ("broken image", lambda d: d.assign(path=d["path"].where(d.index != 0, "broken.nii.gz")), "unreadable"),
]


@pytest.mark.parametrize("mutate,message", [m[1:] for m in MANIFESTS], ids=[m[0] for m in MANIFESTS])
def test_bad_manifest(mutate, message, tiny_cohort, tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")  # next to the manifest: relative paths find it
    good = with_absolute_paths(pd.read_csv(tiny_cohort / "manifest.csv"), tiny_cohort)
    mutate(good).to_csv(tmp_path / "bad_manifest.csv", index=False)
    assert_clean_failure(["validate", str(tmp_path / "bad_manifest.csv")], message)


OPTIONS = [
    (["infer"], "give either --run DIR or --checkpoint FILE --manifest CSV"),
    (["infer", "--run", "x", "--age-bins", "old,young"], "--age-bins must be numbers"),
    (["infer", "--checkpoint", "nope.pt"], "--checkpoint needs --manifest"),
    (["cohort", "--out", "x", "--size", "big"], "--size must be an integer"),
    (["cohort", "--out", "x", "--preset", "huge"], "huge"),
    (["cohort", "--out", "x", "--workers", "-1"], "--workers must be >= 0"),
    (["audit", "nowhere.csv"], "file not found: nowhere.csv"),
    (["sites", "split", "--manifest", "nowhere.csv", "--out", "s"], "nowhere.csv"),
    (["sites", "compose", "--sites", "nowhere", "--config", "nowhere.yaml"], "config not found: nowhere.yaml"),
]


@pytest.mark.parametrize("args,message", OPTIONS, ids=[" ".join(o[0]) for o in OPTIONS])
def test_bad_options(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_clean_failure(args, message)


def test_sites_commands_fail_cleanly(tiny_cohort, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(base_config(tiny_cohort / "manifest.csv")))
    assert_clean_failure(["sites", "compose", "--sites", str(tmp_path / "none"), "--config", str(config)],
                         "sites.csv not found (make it with `fedqc sites split`)")
    args = ["sites", "split", "--manifest", str(tiny_cohort / "manifest.csv"), "--out", str(tmp_path / "s")]
    assert run(args)[0] == 0
    assert_clean_failure(args, "exists and is not empty (use --overwrite to replace it)")


def test_deployment_engine_is_refused_by_simulate_and_needs_no_manifest(tmp_path):
    data = base_config("unused")
    data.pop("manifest")
    path = tmp_path / "dep.yaml"
    path.write_text(yaml.safe_dump(data))  # engine inprocess without a manifest
    assert_clean_failure(["simulate", "--config", str(path)], "manifest: required key missing")
    path.write_text(yaml.safe_dump({**data, "engine": "deployment"}))
    assert_clean_failure(["simulate", "--config", str(path), "--out", str(tmp_path / "run")],
                         "engine deployment runs on SuperNodes")
    assert not (tmp_path / "run").exists()


def test_run_folder_is_never_clobbered(tiny_cohort, tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(base_config(tiny_cohort / "manifest.csv")))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    assert_clean_failure(["simulate", "--config", str(path), "--out", str(tmp_path / "run")], "already exists")
    assert (tmp_path / "run" / "keep.txt").read_text() == "x"
