"""Framework overhead: a clean-arm cycle as a plain PyTorch loop, in-process, and on Flower simulation.

    python -m bench.overhead --cycles 1 --out bench/results/overhead.json

The ``reference`` preset's shape (83 sites, 32³; made under data/reference when missing)
with a half-width SFCN, the clean arm, seed 0, back to back in one invocation:

* ``plain``: one model and one Adam over the same sites, visiting order, scan order and
  batches, then the same test-split scoring: the compute floor, with no travelling
  state, no transport and no logs.
* ``inprocess``: fedqc's travelling model through the in-process transport.
* ``flower``: the same through Flower's simulation engine (Ray start-up excluded: the
  seconds of a cycle are timed inside the run, in ``cycles.csv``).

Seconds per cycle are the median over cycles after the first when ``--cycles`` > 1
(steady state: images read, networks and optimizers built), else the one cycle's.

A hop's overhead is its wall time on the server minus the site's own training time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.common import (
    REFERENCE,
    RESULTS,
    ensure_cohort,
    hop_overhead_s,
    machine,
    own_peak_rss_mb,
    reference_config,
    simulate,
)
from fedqc.config import parse_config
from fedqc.data.manifest import load_manifest
from fedqc.experiment.arms import harmful_scans
from fedqc.models.state import initial_state, unpack
from fedqc.protocol import batches
from fedqc.site import Site
from fedqc.site.site import EVAL_BATCH
from fedqc.strategies.cycles import hop_seed, learning_rate
from fedqc.strategies.travelling import site_order


def plain_cycles(cfg_dict: dict) -> list[float]:
    """Seconds per cycle of the plain loop: same scans, order and batches as the clean arm.

    Like the runner's clean arm, each site trains its training scans in manifest order minus
    the ones the ground truth marks harmful, permuted by the hop's seed.
    """
    cfg = parse_config(cfg_dict)
    torch.set_num_threads(cfg.threads)
    table = load_manifest(cfg.manifest)
    leave_out = harmful_scans(table)
    sites = {name: Site(name, rows, model=cfg.model) for name, rows in table.groupby("site", sort=True)}
    pools = {}
    for name, site in sites.items():
        drop = set(leave_out.get(name, ()))
        pools[name] = [s for s in site.subjects("train") if s not in drop]
    model = sites[next(iter(sites))]  # one network and one optimizer for the whole loop
    state = initial_state(cfg.model, cfg.train.seed)
    unpack(state, model.encoder, model.classifier, None)
    enc, clf, opt = model.encoder, model.classifier, model.optimizer
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    train_sites = sorted(name for name, pool in pools.items() if pool)
    seconds = []
    for cycle in range(cfg.train.cycles):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg.train.lr, cfg.train.lr_decay, cycle)
        for name in site_order(cfg.train.order, train_sites, seed=cfg.train.seed, cycle=cycle):
            site, pool, seed = sites[name], pools[name], hop_seed(cfg.train.seed, cycle, name)
            order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
            torch.manual_seed(seed)
            enc.train()
            clf.train()
            for chunk in batches(order, cfg.train.batch_size):
                x, ok, _ = site._images(chunk)
                x = site.scans.ready(x)
                y = torch.tensor(site.table.loc[ok, "label"].to_numpy(dtype=np.float32))
                opt.zero_grad(set_to_none=True)
                loss_fn(clf(enc(x)).squeeze(1), y).backward()
                opt.step()
        enc.eval()
        clf.eval()
        with torch.no_grad():
            for site in sites.values():
                for chunk in batches(site.subjects("test"), EVAL_BATCH):
                    x, _, _ = site._images(chunk)
                    torch.sigmoid(clf(enc(x)).squeeze(1))
        seconds.append(time.perf_counter() - t0)
    return seconds


def per_cycle(seconds) -> float:
    seconds = list(seconds)
    return float(np.median(seconds[1:] if len(seconds) > 1 else seconds))


def fedqc_run(cfg_dict: dict, out: Path) -> dict:
    """Run the clean arm with ``python -m fedqc.simulate`` (a fresh process, like a user's run)."""
    wall, peak = simulate(cfg_dict, out.with_suffix(".yaml"), out)
    cycles = pd.read_csv(out / "clean" / "cycles.csv")
    log = pd.read_csv(out / "clean" / "train_log.csv")
    log = log[log["cycle"] > 0] if len(cycles) > 1 else log  # steady-state hops
    over = hop_overhead_s(log)
    return {"cycle_s": [round(float(s), 3) for s in cycles["seconds"]], "seconds_per_cycle": per_cycle(cycles["seconds"]),
            "run_wall_s": round(wall, 2), "peak_rss_mb": peak, "hops_per_cycle": int(cycles["hops"].iloc[0]),
            "hop_overhead_ms_median": float(np.median(over) * 1000), "hop_overhead_ms_p95": float(np.percentile(over, 95) * 1000)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    args = ap.parse_args()
    ensure_cohort(REFERENCE)
    with tempfile.TemporaryDirectory() as tmp:
        plain = plain_cycles(reference_config(args.cycles, "inprocess"))
        inproc = fedqc_run(reference_config(args.cycles, "inprocess"), Path(tmp) / "inprocess")
        flower = fedqc_run(reference_config(args.cycles, "flower"), Path(tmp) / "flower")
    plain_s = per_cycle(plain)
    result = {
        "machine": machine(), "shape": "reference preset: 83 sites, 32^3, SFCN width 0.5, clean arm",
        "cycles": args.cycles, "plain_s": plain_s, "inprocess_s": inproc["seconds_per_cycle"],
        "flower_s": flower["seconds_per_cycle"], "inprocess_over_plain": inproc["seconds_per_cycle"] / plain_s,
        "flower_over_plain": flower["seconds_per_cycle"] / plain_s,
        "hop_overhead_ms_median": flower["hop_overhead_ms_median"], "hop_overhead_ms_p95": flower["hop_overhead_ms_p95"],
        "plain_cycle_s": [round(s, 3) for s in plain], "inprocess": inproc, "flower": flower,
        "peak_rss_mb": {"plain": own_peak_rss_mb(), "inprocess": inproc["peak_rss_mb"], "flower": flower["peak_rss_mb"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"plain {plain_s:.1f} s/cycle | in-process {result['inprocess_s']:.1f} s ({result['inprocess_over_plain']:.3f}x) "
          f"| Flower simulation {result['flower_s']:.1f} s ({result['flower_over_plain']:.3f}x); "
          f"Flower hop overhead median {result['hop_overhead_ms_median']:.0f} ms, p95 {result['hop_overhead_ms_p95']:.0f} ms")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
