"""Does QC tell an imbalanced good site from a noisy one? The per-seed table of a label-noise sweep.

Reads study folders made by ``fedqc study --sweep scenario.label_noise.0.rate=...`` on a
scenario where one site's training labels are flipped (``--noisy``, default site02) and
the other sites are good (some imbalanced or one-class) or carry other, planted harm.
Per swept rate and seed:

- ``good sites flagged``: sites without any harmful training scan that the QC arm
  flagged at least once (the noisy site counts as good at rate 0), and which;
- ``noisy flagged``: whether the noisy site was flagged;
- ``flips eliminated``: the share of its flipped labels the QC arm eliminated;
- ``good scans eliminated``: good training scans eliminated;
- ``auroc``: test AUROC (mean of the last three cycles) of the clean, dirty and QC arms
  the study ran.

    python -m bench.qc_imbalance runs/demo-qc-imbalance-calibrated-study runs/demo-qc-imbalance-holdout-study
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from fedqc.analysis.report import markdown_table
from fedqc.analysis.study import LAST, cycle_metrics
from fedqc.experiment.run_dir import RunDir


def flagged_sites(qc_dir: Path) -> set[str]:
    """Sites the QC arm's site checks failed at least once."""
    log = pd.read_csv(qc_dir / "qc_log.csv")
    return set(log.loc[(log["scope"] == "site") & ~log["accepted"].astype(bool), "site"])


def row(run: Path, noisy: str) -> dict:
    """One run's figures (``run`` holds the arms of one rate and seed)."""
    manifest = pd.read_csv(run / "data" / "manifest.csv")
    train = manifest[manifest["split"] == "train"]
    harmful = train["harm"] != "none"
    flips = set(train.loc[harmful & (train["site"] == noisy) & (train["harm"] == "mislabeled"), "subject"])
    eliminated = set(pd.read_csv(run / "qc" / "eliminated.csv")["subject"])
    flagged = flagged_sites(run / "qc") - set(train.loc[harmful & (train["site"] != noisy), "site"])
    good = flagged - {noisy} if flips else flagged
    arms = [a for a in ("clean", "dirty", "qc") if (run / a / "cycles.csv").is_file()]
    auroc = [f"{cycle_metrics(RunDir(run).arm(a)).tail(LAST)['auroc'].mean():.3f}" for a in arms]
    return {"good sites flagged": ", ".join(sorted(good)) or "0", "noisy flagged": (noisy in flagged) if flips else "",
            "flips eliminated": round(len(flips & eliminated) / len(flips), 2) if flips else "",
            "good scans eliminated": len(eliminated - set(train.loc[harmful, "subject"])),
            f"auroc {' / '.join(arms)}": " / ".join(auroc)}


def table(study: Path, noisy: str) -> pd.DataFrame:
    rows = []
    for value in sorted(study.glob("*=*"), key=lambda p: float(p.name.split("=")[1])):
        for run in sorted(value.glob("seed_*")):
            if not (run / "qc" / "eliminated.csv").is_file():
                print(f"{run}: no finished QC arm, left out")
                continue
            rows.append({"rate": value.name.split("=")[1], "seed": run.name.split("_")[1], **row(run, noisy)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("studies", nargs="+", type=Path)
    parser.add_argument("--noisy", default="site02", help="the site whose labels the sweep flips")
    args = parser.parse_args()
    for study in args.studies:
        print(f"\n## {study}\n")
        print(markdown_table(table(study, args.noisy)))


if __name__ == "__main__":
    main()
