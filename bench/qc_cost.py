"""The cost of one QC cycle against a no-QC (dirty) cycle, and what each detects.

    python -m bench.qc_cost [--sites N] [--out bench/results/qc_cost.json]

The ``reference`` preset's shape (32³, SFCN width 0.5) with the demo harm scenario
(whole inverted, noise and mislabeled sites plus single harmful scans), made under
data/reference-demoharm when missing. One experiment, in-process, seed 0: the clean
arm's cycle 0, then from its checkpoint one cycle (cycle 1) of

* ``dirty``: no QC;
* ``qc-reference-batch``: the reference method (verify after every batch, reference criterion);
* ``qc``: fedqc's default (auroc criterion, hierarchical, audit stage on).

A QC arm's seconds include its verifications; its detection is what is out of training
after that one cycle (eliminated, or flagged and waiting for its revisit), scored against
the manifest's ground truth. ``--sites N`` keeps the harmful sites and the N-3 largest good
ones, for a quicker, smaller run (the JSON says which).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd

from bench.common import RESULTS, ROOT, ensure_cohort, machine, reference_config, simulate
from fedqc.data.synth.cohort import DEMO_HARM

DATA = ROOT / "data" / "reference-demoharm" / "manifest.csv"
ARMS = {"noqc": "dirty", "reference": "qc-reference-batch", "default": "qc"}


def subset(manifest: Path, n_sites: int, out: Path) -> Path:
    table = pd.read_csv(manifest)
    harmful = sorted(table.loc[table["site"].str.startswith("harm"), "site"].unique())
    sizes = table[~table["site"].isin(harmful) & (table["split"] == "train")].groupby("site").size()
    keep = harmful + list(sizes.sort_values(ascending=False, kind="stable").index[: max(0, n_sites - len(harmful))])
    part = table[table["site"].isin(keep)].copy()
    part["path"] = [str(manifest.parent / p) for p in part["path"]]
    out.mkdir(parents=True, exist_ok=True)
    part.to_csv(out / "manifest.csv", index=False)
    return out / "manifest.csv"


def detection(arm_dir: Path, manifest: pd.DataFrame) -> dict:
    det = pd.read_csv(arm_dir / "detection.csv").set_index(["level", "name"])
    out = set(pd.read_csv(arm_dir / "eliminated.csv")["subject"]) | set(pd.read_csv(arm_dir / "flagged.csv")["subject"])
    good = set(manifest.loc[(manifest["harm"] == "none") & (manifest["split"] == "train"), "subject"])
    whole, overall = det.loc[("scope", "whole-site")], det.loc[("overall", "all")]
    single = det.loc[("scope", "single-scan")]

    def out_of_training(r: pd.Series) -> float:
        return (r["eliminated"] + r["pending"]) / r["harmful"]

    return {"whole_site_recall": round(float(out_of_training(whole)), 3),
            "single_scan_recall": round(float(out_of_training(single)), 3),
            "harmful_recall": round(float(out_of_training(overall)), 3),
            "good_eliminated": int(overall["good_eliminated"]), "good_out_of_training": len(out & good),
            "good": len(good)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.qc_cost", description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=0, help="keep this many sites (0: all 83 plus the harmful ones)")
    ap.add_argument("--out", type=Path, default=RESULTS / "qc_cost.json")
    args = ap.parse_args()
    ensure_cohort(DATA, harm=DEMO_HARM)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = subset(DATA, args.sites, tmp / "subset") if args.sites else DATA
        cfg = reference_config(2, "inprocess", manifest)  # W = 0: QC arms run cycle 1 from clean cycle 0
        cfg["arms"] = ["clean", *ARMS.values()]
        # the reference protocol's start (the clean checkpoint), deciding at once: the cost of a deciding cycle
        cfg["qc"] = {"criterion": "auroc", "granularity": "hierarchical", "audit": True, "start": "clean", "skill": 0.0}
        wall, peak = simulate(cfg, tmp / "qc_cost.yaml", tmp / "run")
        run = tmp / "run"
        table = pd.read_csv(manifest)
        result = {"machine": machine(), "sites": int(table["site"].nunique()), "scans": len(table),
                  "shape": "reference preset + demo harm, 32^3, SFCN width 0.5, in-process, QC cycle 1 from clean cycle 0",
                  "run_wall_s": round(wall, 1), "peak_rss_mb": peak}
        for key, arm in ARMS.items():
            result[f"{key}_s"] = float(pd.read_csv(run / arm / "cycles.csv")["seconds"].iloc[0])
            if key != "noqc":
                summary = json.loads((run / arm / "qc_summary.json").read_text())
                result[f"{key}_verifications"] = summary["verifications"]
                result[f"{key}_detection"] = detection(run / arm, table)
        result["reference_over_noqc"] = result["reference_s"] / result["noqc_s"]
        result["default_over_noqc"] = result["default_s"] / result["noqc_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for key in ("reference", "default"):
        d = result[f"{key}_detection"]
        print(f"{key:9s} {result[f'{key}_s']:.0f} s/cycle ({result[f'{key}_over_noqc']:.2f}x no QC), "
              f"{result[f'{key}_verifications']} verifications; out of training: whole sites {d['whole_site_recall']:.2f}, "
              f"single scans {d['single_scan_recall']:.2f}; good scans out {d['good_out_of_training']}/{d['good']}")
    print(f"no QC {result['noqc_s']:.0f} s/cycle; wrote {args.out}")


if __name__ == "__main__":
    main()
