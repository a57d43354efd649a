"""Seconds per clean-arm cycle on Flower simulation as sites, scans and resolution grow.

    python -m bench.scaling [--out bench/results/scaling.json]

Synthetic cohorts (seed 0, no harm), SFCN width 0.5, two cycles each; the second is
timed (steady state: images read, networks built; ``cycles.csv``, so Ray start-up is
excluded) and its hops give the per-hop overhead; peak memory of the whole process tree:

* same total scans: about 400 training and 80 test scans split over 10, 20, 40, 83 sites;
* same scans per site: 8 training and 1 test scans per site, 10 to 83 sites;
* resolution: 20 sites × 8 training scans at 32³, 48³, 64³.

``r2`` is the R² of a straight line of seconds against scans (training + test) over the
32³ points: a value near 1 says the cost is linear in scans, whatever the number of sites.
``r2_scans_and_sites`` fits seconds = a + b·scans + c·sites instead; ``c`` is the cost of
one more site (its hop and its test message) at a fixed number of scans.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import RESULTS, hop_overhead_s, machine, reference_config, simulate
from fedqc.data.synth.cohort import SiteSpec, generate_cohort

SITE_COUNTS = (10, 20, 40, 83)
SIZES = (32, 48, 64)


def sites(n: int, train: int, test: int) -> list[SiteSpec]:
    return [SiteSpec(f"s{i:03d}", f"scanner{i % 6:02d}", train, train // 2, train // 3, 1, i % 2, 0,
                     test, test // 2 + (i % 2 if test % 2 else 0), test // 3) for i in range(n)]


def point(tmp: Path, series: str, specs: list[SiteSpec], size: int) -> dict:
    data = tmp / f"{series}-{len(specs)}-{size}"
    generate_cohort(data, size=size, seed=0, harm={}, sites=specs)
    cfg = reference_config(2, "flower", data / "manifest.csv")
    cfg["model"]["input_shape"] = [size] * 3
    _, peak = simulate(cfg, data / "bench.yaml", data / "run")
    cycle = pd.read_csv(data / "run" / "clean" / "cycles.csv").iloc[-1]
    log = pd.read_csv(data / "run" / "clean" / "train_log.csv").query("cycle == 1")
    over = hop_overhead_s(log)
    row = {"series": series, "sites": len(specs), "size": size, "train_scans": sum(s.train_n for s in specs),
           "test_scans": sum(s.test_n for s in specs), "seconds": round(float(cycle["seconds"]), 3),
           "hop_overhead_ms_median": round(float(np.median(over)) * 1000, 1), "peak_rss_mb": peak}
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "scaling.json")
    args = ap.parse_args()
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in SITE_COUNTS:
            points.append(point(tmp, "same total scans", sites(n, max(1, round(400 / n)), max(1, round(80 / n))), 32))
        for n in SITE_COUNTS:
            points.append(point(tmp, "same scans per site", sites(n, 8, 1), 32))
        for size in SIZES:
            points.append(point(tmp, "resolution", sites(20, 8, 1), size))
    table = pd.DataFrame(points)
    flat = table[table["size"] == 32]
    x = (flat["train_scans"] + flat["test_scans"]).to_numpy(float)
    y = flat["seconds"].to_numpy(float)
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (slope * x + intercept)) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    design = np.column_stack([np.ones_like(x), x, flat["sites"].to_numpy(float)])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    r2_sites = 1 - ((y - design @ coef) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    res = table[table["series"] == "resolution"]
    result = {"machine": machine(), "points": points, "r2": float(r2),
              "seconds_per_scan_32": float(slope), "intercept_s": float(intercept),
              "r2_scans_and_sites": float(r2_sites), "seconds_per_site": float(coef[2]),
              "seconds_per_scan_given_sites": float(coef[1]),
              "seconds_by_size": dict(zip(res["size"].astype(str), res["seconds"]))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table.to_string(index=False))
    print(f"seconds = {intercept:.2f} + {slope * 1000:.1f} ms × scans, R² = {r2:.3f}; with sites: "
          f"{coef[1] * 1000:.1f} ms × scans + {coef[2] * 1000:.0f} ms × sites, R² = {r2_sites:.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
