"""What the defences against a lying site cost a cycle: the update norm check, the count check and robust BatchNorm
pooling, timed on a config's model and sites, against a run's cycle without them.

    python -m bench.defence_cost --config configs/demo.yaml --run runs/adversarial-sites/none-default/seed_0/clean

A plain arm makes one norm check and one count check per hop; the federated BatchNorm calibration pools the sites'
moments once per pass, one pass per BatchNorm layer (``calibration.bn_passes: 0``), over the sites with
verification scans. Each is timed here on arrays of the model's shapes (the arithmetic does not depend on their
values): the median of ``--repeats`` timings, in the process's own thread. The run gives what they are compared
with: its hops per cycle and its median cycle seconds (``cycles.csv``, the first cycle, which reads every image,
left out). Robust pooling is counted as its extra over the plain sum. Writes ``--out`` (JSON) and prints it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import RESULTS, machine
from fedqc.config import load_config
from fedqc.data.manifest import load_manifest
from fedqc.models.state import initial_state
from fedqc.strategies.calibration import batchnorm_layers, merge_moments, pool_batchnorm
from fedqc.strategies.defence import UpdateNormCheck, count_check, robust_moments


def timed(call, repeats: int) -> float:
    """The median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def site_moments(widths: list[int], sites: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """One site's BatchNorm moments per site: counts per layer, per-channel sums and sums of squares."""
    out = []
    for _ in range(sites):
        n = rng.integers(500, 5000, len(widths)).astype(np.float64)
        mean = rng.normal(0, 1, sum(widths))
        counts = np.repeat(n, widths)
        out.append({"bn_n": n, "bn_sum": mean * counts, "bn_sq": (mean**2 + rng.uniform(0.5, 2, sum(widths))) * counts})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True, help="an arm folder of a run without the defences")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "defence_cost.json")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    manifest = load_manifest(cfg.manifest)
    sites = int(manifest.loc[manifest["split"] == "val", "site"].nunique())
    rng = np.random.default_rng(0)
    state = initial_state(cfg.model, 0)
    reply = {k: (v + rng.normal(0, 1e-3, v.shape).astype(v.dtype)) if v.dtype.kind == "f" else v
             for k, v in state.items()}
    check = UpdateNormCheck(5.0)
    for _ in range(check.warmup):
        check.norms.append(1.0)
    layers = batchnorm_layers(state)
    widths = [state[p + "running_mean"].shape[0] for p in layers]
    moments = site_moments(widths, sites, rng)
    expected = [30] * sites

    def pooled(parts):
        return pool_batchnorm(state, [merge_moments(None, parts, widths)])

    norm_s = timed(lambda: check(state, reply), args.repeats)
    count_s = timed(lambda: count_check(40, 41), args.repeats)
    sum_s = timed(lambda: pooled(moments), args.repeats)
    robust_s = timed(lambda: pooled([robust_moments(moments, expected, widths)]), args.repeats)
    cycles = pd.read_csv(args.run / "cycles.csv")
    later = cycles[cycles["cycle"] > cycles["cycle"].min()]
    cycle_s, hops = float(later["seconds"].median()), float(later["hops"].median())
    per_cycle = {"norm_check": hops * norm_s, "count_check": hops * count_s,
                 "robust_pooling_extra": len(layers) * max(robust_s - sum_s, 0.0)}
    result = {"config": str(args.config), "run": str(args.run), "sites_with_val": sites, "batchnorm_layers": len(layers),
              "hops_per_cycle": hops, "cycle_seconds": cycle_s,
              "seconds_per_call": {"norm_check": norm_s, "count_check": count_s, "sum_pooling": sum_s,
                                   "robust_pooling": robust_s},
              "seconds_per_cycle": per_cycle, "share_of_cycle": {k: v / cycle_s for k, v in per_cycle.items()},
              "share_all": sum(per_cycle.values()) / cycle_s, "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("hops_per_cycle", "cycle_seconds", "seconds_per_cycle", "share_of_cycle",
                                             "share_all")}, indent=2))


if __name__ == "__main__":
    main()
