"""Shared fixtures: a tiny synthetic cohort (16³, 3 good sites + harm) and its config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedqc.config import parse_config
from fedqc.data.synth.cohort import SiteSpec, generate_cohort
from fedqc.experiment.run_dir import ArmDir
from fedqc.transport.flower.env import apply_flower_env

apply_flower_env()
torch.set_num_threads(2)

TINY_SITES = [
    SiteSpec("alpha", "scannerA", 12, 6, 5, 4, 2, 2, 4, 2, 2),
    SiteSpec("beta", "scannerB", 6, 3, 2, 2, 1, 1, 3, 1, 1),
    SiteSpec("gamma", "scannerC", 1, 1, 0, 1, 0, 1, 2, 1, 1),
]
TINY_HARM = {"sites": [{"kind": "inverted", "new": "harm01-inverted", "train": 4, "val": 1}],
             "scans": [{"kind": "pure-noise", "site": "alpha"}, {"kind": "mislabeled", "site": "beta"}]}


def same(a: dict, b: dict) -> bool:
    """Bit-identical comparison of two states (dicts of arrays)."""
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    generate_cohort(out, size=16, seed=3, sites=TINY_SITES, harm=TINY_HARM)
    return out


def tiny_config(manifest, *, check_files: bool = True, **overrides):
    data = {"name": "tiny", "manifest": str(manifest), "engine": "inprocess", "threads": 2,
            "model": {"name": "sfcn", "width": 0.25, "input_shape": [16, 16, 16]},
            "train": {"cycles": 3, "branch_cycle": 0, "batch_size": 5, "lr": 1e-3, "seed": 1},
            # the model-based QC alone (the schema's default adds the image audit; tests that need it turn it on)
            "arms": ["clean", "dirty"], "qc": {"start": "clean", "audit": False},
            # the threshold is fitted (its scores in the cycle's closing message, every engine), BatchNorm statistics stay the
            # last site's: pooled ones move the tiny cohort's 8 verification scans' AUROC, which the QC tests' skill
            # gate reads (tests/test_calibration.py covers pooling)
            "calibration": {"batchnorm": "site", "threshold": "prevalence"}}
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = {**node[leaf], **value} if isinstance(value, dict) and isinstance(node.get(leaf), dict) \
            else value
    return parse_config(data, check_files=check_files)


@pytest.fixture
def tiny_cfg(tiny_cohort):
    return tiny_config(tiny_cohort / "manifest.csv")


def non_finite_copy(src: Path, dst: Path, value: float) -> None:
    """Copy a scan with one voxel set to ``value`` (NaN/Inf) as MetaImage: ITK's NIfTI IO zeroes such voxels."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(src), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = value
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(dst))


def checkpoint_path(arm_dir: Path, cycle: int) -> Path:
    return ArmDir(arm_dir).checkpoint(cycle)


def with_absolute_paths(table, root: Path):
    """A manifest table whose image paths point into ``root``, so it can be written anywhere."""
    return table.assign(path=[str(root / p) for p in table["path"]])


class Interrupt(Exception):
    """Raised from a hop callback: a run killed mid-cycle."""


def kill_and_resume_qc_arm(arm, transport, cfg, out: Path, *, cycle: int = 2, hop: int = 1):
    """Run QC ``arm`` into ``out`` until hop ``hop`` of ``cycle``, as if killed there, then resume it: the final state."""
    from fedqc.experiment.run_dir import RunDir
    from fedqc.experiment.runner import run_arm
    from fedqc.qc.arm import QCArm

    def on_hop(c, h, site, outcome):
        if (c, h) == (cycle, hop):
            raise Interrupt

    with pytest.raises(Interrupt):
        run_arm(arm, transport, cfg, RunDir(out), visitor=QCArm(transport, cfg, arm.name, out / arm.name), on_hop=on_hop)
    return run_arm(arm, transport, cfg, RunDir(out), visitor=QCArm(transport, cfg, arm.name, out / arm.name),
                   resume=True)
