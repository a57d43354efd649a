"""The repository's layout: every study's configs load (through `extends:`) with valid scenarios, the shipped
configs stay few, the README stays an entry point, and no relative link in the docs points nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fedqc.config import parse_config
from fedqc.config.load import read_config_file
from fedqc.data.corruptions.scenario import Scenario
from fedqc.data.synth.effects import resolve_effects

ROOT = Path(__file__).resolve().parents[1]
STUDY_CONFIGS = sorted((ROOT / "studies").glob("*/*.yaml"))
EFFECTS = sorted((ROOT / "studies").glob("*/effects/*.yaml"))  # a study's cohort difficulty (fedqc cohort --effects)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "studies").rglob("*.md")),
        ROOT / "bench" / "README.md", ROOT / "sites" / "README.md"]
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)")


@pytest.mark.parametrize("path", STUDY_CONFIGS, ids=[str(p.relative_to(ROOT / "studies")) for p in STUDY_CONFIGS])
def test_every_study_config_loads_and_its_scenario_is_valid(path):
    cfg = parse_config(read_config_file(path), source=path, check_files=False)
    if cfg.scenario is not None:
        Scenario.from_dict(cfg.scenario)
    assert path.name in (path.parent / "README.md").read_text() or path.stem in (path.parent / "README.md").read_text(), \
        f"{path.relative_to(ROOT)} is not named in its study's README"


@pytest.mark.parametrize("path", EFFECTS, ids=[str(p.relative_to(ROOT / "studies")) for p in EFFECTS])
def test_every_study_effects_file_is_valid(path):
    resolve_effects(path, "v1")


def test_every_study_has_a_readme_listed_in_the_index():
    index = (ROOT / "studies" / "README.md").read_text()
    for folder in sorted(p for p in (ROOT / "studies").iterdir() if p.is_dir()):
        assert (folder / "README.md").is_file(), folder
        assert f"]({folder.name}/README.md)" in index, f"studies/README.md does not list {folder.name}"


def test_configs_hold_only_what_the_package_and_tests_use():
    shipped = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert len(shipped) <= 6, shipped
    for path in (ROOT / "configs").glob("*.yaml"):
        assert "extends" not in yaml.safe_load(path.read_text()), f"{path.name}: a shipped config stands alone"


def test_the_readme_is_an_entry_point():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_relative_links_point_to_files(doc):
    missing = [t for t in LINK.findall(doc.read_text())
               if not re.match(r"^[a-z]+:", t) and not (doc.parent / t).exists()]
    assert not missing, f"{doc.relative_to(ROOT)}: links to missing files: {missing}"
