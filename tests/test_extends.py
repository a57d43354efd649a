"""`extends:` in a config: the base first, deep-merged mappings, replaced lists, paths from the stating file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from fedqc.config import ConfigError, load_config
from fedqc.experiment.run_dir import parse_snapshot


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def base(tiny_cohort, tmp_path) -> Path:
    """A base config in its own folder whose manifest path is relative to that folder."""
    folder = tmp_path / "configs"
    return write(folder / "base.yaml", {
        "name": "base", "manifest": os.path.relpath(tiny_cohort / "manifest.csv", folder),
        "model": {"name": "sfcn", "width": 0.25, "input_shape": [16, 16, 16]},
        "train": {"cycles": 3, "branch_cycle": 1, "lr": 1e-3, "batch_size": 4},
        "qc": {"audit": True, "alpha": 0.05, "start": "clean"}, "arms": ["clean", "dirty", "qc"], "engine": "inprocess"})


def test_an_old_key_name_in_a_file_overrides_its_bases_new_one(base, tmp_path, caplog):
    """A config of fedqc 0.1 (train.warmup) that extends a shipped config (train.branch_cycle) keeps its value."""
    child = write(tmp_path / "old.yaml", {"extends": str(base), "train": {"warmup": 0}})
    with caplog.at_level("WARNING", logger="fedqc.config.load"):
        cfg = load_config(child)
        assert load_config(base, {"train.warmup": 0}).train.branch_cycle == 0  # an override by the old name too
    assert cfg.train.branch_cycle == 0
    assert f"{child}: train.warmup is deprecated, read as train.branch_cycle" in caplog.messages
    assert "train.warmup is deprecated, read as train.branch_cycle" in caplog.messages


def test_mappings_merge_deeply_lists_replace_and_paths_resolve_from_the_stating_file(base, tiny_cohort, tmp_path):
    child = write(tmp_path / "studies" / "q" / "child.yaml", {
        "extends": "../../configs/base.yaml", "name": "child", "train": {"cycles": 4}, "qc": {"audit": False},
        "arms": ["clean"]})
    cfg = load_config(child)
    assert cfg.name == "child"
    assert (cfg.train.cycles, cfg.train.branch_cycle, cfg.train.batch_size) == (4, 1, 4)  # merged key by key
    assert (cfg.qc.audit, cfg.qc.alpha) == (False, 0.05)
    assert [a for a in cfg.arms] == ["clean"]  # a list replaces, it does not append
    assert cfg.manifest == (tiny_cohort / "manifest.csv").resolve()  # the base's relative path, from the base's folder


def test_bases_chain_and_a_relative_manifest_in_the_child_wins(base, tiny_cohort, tmp_path):
    middle = write(tmp_path / "studies" / "q" / "middle.yaml", {"extends": "../../configs/base.yaml",
                                                                "train": {"lr": 1e-4}})
    elsewhere = tmp_path / "other" / "manifest.csv"
    elsewhere.parent.mkdir()
    elsewhere.write_text((tiny_cohort / "manifest.csv").read_text())
    leaf = write(tmp_path / "studies" / "q" / "deep" / "leaf.yaml", {
        "extends": "../middle.yaml", "train": {"seed": 7}, "manifest": "../../../other/manifest.csv"})
    cfg = load_config(leaf)
    assert (cfg.train.lr, cfg.train.seed, cfg.train.cycles) == (1e-4, 7, 3)
    assert cfg.manifest == elsewhere.resolve()
    assert load_config(middle).train.seed == 0


def test_a_scenario_path_in_a_base_resolves_from_the_base(base, tmp_path):
    scenario = {"label_noise": [{"sites": "all", "rate": 0.2}]}
    write(tmp_path / "configs" / "scenarios" / "noise.yaml", scenario)
    with_scenario = write(tmp_path / "configs" / "noisy.yaml", {"extends": "base.yaml", "scenario": "scenarios/noise.yaml"})
    child = write(tmp_path / "studies" / "child.yaml", {"extends": "../configs/noisy.yaml"})
    assert load_config(child).scenario == scenario
    assert load_config(with_scenario).scenario == scenario


def test_the_run_folder_snapshot_is_the_resolved_config(base, tmp_path):
    child = write(tmp_path / "child.yaml", {"extends": "configs/base.yaml", "qc": {"alpha": 0.01}})
    cfg = load_config(child)
    snapshot = yaml.safe_dump(cfg.to_dict())
    assert "extends" not in yaml.safe_load(snapshot)
    assert parse_snapshot(snapshot, source="config.yaml") == cfg


@pytest.mark.parametrize("case,message", [
    ("missing", "extends: base config not found"),
    ("cycle", "extends: cycle:"),
    ("self", "extends: cycle:"),
    ("not a path", "extends: expected the path of a base config"),
    ("base not a mapping", "expected a mapping"),
])
def test_a_bad_base_is_one_line(case, message, base, tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    if case == "missing":
        write(a, {"extends": "nowhere.yaml"})
    elif case == "cycle":
        write(a, {"extends": "b.yaml", "name": "a"})
        write(b, {"extends": "a.yaml", "name": "b"})
    elif case == "self":
        write(a, {"extends": "./a.yaml"})
    elif case == "not a path":
        write(a, {"extends": ["configs/base.yaml"]})
    else:
        b.write_text("- 1\n- 2\n")
        write(a, {"extends": "b.yaml"})
    with pytest.raises(ConfigError) as err:
        load_config(a)
    text = str(err.value)
    assert message in text and len(text.strip().splitlines()) <= 2, text
    assert str(a) in text or case == "base not a mapping", text  # names the file that states the base
