"""Measure issue 42's targets on one `reference` cohort, training seeds paired.

For the cohort at ``--cohort`` (made by ``fedqc cohort --preset reference``), three `fedqc study` runs over the
same seeds, each a config that ``extends:`` ``--config`` (default ``calibrated.yaml`` here: the reference-shape
settings over 20 cycles, W = 10):

- ``main``: the travelling model's clean and dirty arms on the cohort;
- ``pooled``: the same network on the same good training scans pooled at one site (one cycle = one epoch of
  central training; harmful training scans left out, val and test scans at their sites);
- ``trusted``: the travelling model trained on the trusted-start pair's training scans only (the QC studies'
  ``qc.trusted_sites``), every site's val and test scans kept.

Then linear probes (scanner, sex) on each seed's last clean-arm checkpoint (fitted on the train and val scans,
balanced accuracy on the test scans), and one row per seed of the figures the targets name to
``targets.csv``; ``targets.md`` gives each target's mean, 95 % t-interval over seeds and the paired differences.

Run from the repository root: ``python studies/reference-calibration/measure.py --cohort data/ref-c1
--out runs/calibration/c1 --seeds 0 1 2 3 4 --parallel 2``. A finished study is not run again; an unfinished
one resumes (`fedqc study`'s own rule).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench.stall import pooled_manifest
from fedqc.analysis.bias import checkpoint_probes
from fedqc.analysis.paired import paired_difference, t_interval
from fedqc.analysis.study import cycle_metrics
from fedqc.data.manifest import load_manifest
from fedqc.experiment.run_dir import RunDir

CONFIG = Path(__file__).resolve().parent / "calibrated.yaml"
TRUSTED = ("site02", "site10")  # two two-class sites with 130 of the 1,370 good training scans
SKILL = 0.65  # "leaves chance"
STUDIES = {"main": ["clean", "dirty"], "pooled": ["clean"], "trusted": ["clean"]}
HARSHER = Path(__file__).resolve().parent / "harsher.yaml"  # more harm injected at each run's start (--harsher)
ARMS = {**STUDIES, "harsher": ["clean", "dirty"]}  # every study's arms, the optional one included


def trusted_manifest(manifest: Path, out: Path) -> Path:
    """A copy of ``manifest`` whose training scans are the trusted pair's good ones only (paths absolute)."""
    table = load_manifest(manifest, check_images=False)
    train = table["split"] == "train"
    table = table[~train | (table["site"].isin(TRUSTED) & (table["harm"] == "none"))]
    path = out / "trusted-manifest.csv"
    table.to_csv(path, index=False)
    return path


def run_study(name: str, base: Path, manifest: Path, out: Path, seeds: list[int], parallel: int) -> Path:
    config = out / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"extends": str(base.resolve()), "name": name, "manifest": str(manifest.resolve()),
                                      "arms": ARMS[name], "threads": 1}))
    folder = out / name
    if not (folder / "study.csv").is_file():
        subprocess.run([sys.executable, "-m", "fedqc", "study", "--config", str(config), "--out", str(folder),
                        "--seeds", *map(str, seeds), "--parallel", str(parallel), "--threads-per-run", "1",
                        "--quiet"], check=True)
    return folder


def curve(folder: Path, seed: int, arm: str) -> pd.Series:
    """Test AUROC per cycle of one arm of one seed's run."""
    run = RunDir(folder / f"seed_{seed}")
    return cycle_metrics(run.arm(arm)).set_index("cycle")["auroc"]


def probes(folder: Path, seed: int, table: pd.DataFrame) -> dict:
    arm = RunDir(folder / f"seed_{seed}").arm("clean")
    return checkpoint_probes(arm.checkpoint(arm.cycles("checkpoints")[-1]), table)


def seed_row(out: Path, seed: int, table: pd.DataFrame) -> dict:
    row = {"seed": seed}
    runs = [("pooled", "pooled", "clean"), ("clean", "main", "clean"), ("dirty", "main", "dirty"),
            ("trusted", "trusted", "clean")]
    if (out / "harsher").is_dir():
        runs += [("harsher_clean", "harsher", "clean"), ("harsher_dirty", "harsher", "dirty")]
    for name, study, arm in runs:
        c = curve(out / study, seed, arm)
        last = c.tail(3)
        row |= {f"{name}_last3": last.mean(), f"{name}_spread3": last.max() - last.min(),
                f"{name}_curve": " ".join(f"{v:.2f}" for v in c)}
        skilled = c[c >= SKILL]
        row[f"{name}_first_skilled"] = int(skilled.index[0]) if len(skilled) else -1
    return row | probes(out / "main", seed, table)


def interval(values: pd.Series) -> str:
    d = values.to_numpy(dtype=float)
    lo, hi = t_interval(d)
    return f"{d.mean():.3f} [{lo:.3f}, {hi:.3f}]"


def report(rows: pd.DataFrame) -> str:
    s = rows.set_index("seed")
    lines = ["| figure | mean [95 % t-interval over seeds] | per seed |", "|---|---|---|"]
    figures = ["pooled_last3", "clean_last3", "dirty_last3", "trusted_last3", "clean_spread3", "clean_first_skilled",
               "probe_scanner", "probe_sex"]
    figures += [f for f in ("harsher_clean_last3", "harsher_dirty_last3") if f in s]
    for figure in figures:
        lines.append(f"| {figure} | {interval(s[figure])} | {' '.join(f'{v:.2f}' for v in s[figure])} |")
    lines += ["", "| paired difference (last-3 AUROC) | n | mean | 95 % t-interval | sign-flip p |", "|---|---|---|---|---|"]
    pairs = [("clean", "pooled"), ("trusted", "clean"), ("dirty", "clean")]
    if "harsher_dirty_last3" in s:
        pairs.append(("harsher_dirty", "harsher_clean"))
    for a, b in pairs:
        d = paired_difference(s[f"{a}_last3"], s[f"{b}_last3"], names=(a, b))
        lines.append(f"| {a} − {b} | {d['n']} | {d['mean']:+.3f} | [{d['ci_lo']:+.3f}, {d['ci_hi']:+.3f}] | "
                     f"{d['p']:.3f} |")
    lines += ["", "| seed | pooled | clean | dirty | trusted |", "|---|---|---|---|---|"]
    for r in rows.itertuples():
        lines.append(f"| {r.seed} | {r.pooled_curve} | {r.clean_curve} | {r.dirty_curve} | {r.trusted_curve} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, required=True, help="a `reference` cohort folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--config", type=Path, default=CONFIG, help="the schedule every study extends")
    ap.add_argument("--harsher", action="store_true", help="also the clean and dirty arms under --harm's harm")
    ap.add_argument("--harm", type=Path, default=HARSHER, help="the `harsher` study's config (default harsher.yaml)")
    ap.add_argument("--only", choices=list(ARMS), nargs="+", help="run these studies only (no report)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = (args.cohort / "manifest.csv").resolve()
    manifests = {"main": manifest, "pooled": pooled_manifest(manifest, args.out),
                 "trusted": trusted_manifest(manifest, args.out)}
    studies = args.only or [*STUDIES, *(["harsher"] if args.harsher else [])]
    for name in studies:
        base = args.harm if name == "harsher" else args.config
        run_study(name, base, manifests.get(name, manifest), args.out, args.seeds, args.parallel)
    if args.only:
        return
    table = load_manifest(manifest, check_images=False)
    rows = pd.DataFrame([seed_row(args.out, seed, table[table["harm"] == "none"]) for seed in args.seeds])
    rows.to_csv(args.out / "targets.csv", index=False)
    text = report(rows)
    (args.out / "targets.md").write_text(text)
    print(text)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
