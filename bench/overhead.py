"""Framework overhead: a clean-arm cycle as a plain PyTorch loop, in-process, and on Flower simulation.

    python -m bench.overhead [--cycles 4] [--repeats 3] [--threads 2] [--out bench/results/overhead.json]

The ``reference`` preset's shape (83 sites, 32³; made under data/reference when missing)
with a half-width SFCN, the clean arm, seed 0. Rows:

* ``plain``: one model and one Adam over the same sites, visiting order, scan order and
  batches, then the same end-of-cycle work as fedqc: it scores the test split and writes
  the predictions and a checkpoint (weights and Adam state). The compute floor, with no
  travelling state, no transport and no calibration.
* ``inprocess`` and ``flower``: fedqc's travelling model through the in-process transport
  and Flower's simulation engine (Ray start-up excluded: a cycle's seconds are timed inside
  the run, in ``cycles.csv``), with calibration off (BatchNorm statistics of the last site,
  threshold 0.5: the plain loop's end of cycle);
* ``inprocess+calibration`` and ``flower+calibration``: the same with the default
  calibration (federated BatchNorm statistics and a fitted threshold), its own rows.

Every row runs ``--cycles`` cycles (≥ 4) ``--repeats`` times, the rows interleaved within a
repeat so that a change in the machine's load reaches them all. The first cycle fills the
image caches and builds the networks: it is reported apart. A repeat's steady figure is the
median of its other cycles; a row gives the median over the repeats and their range
(min–max), and its ratio to the plain loop the same way (each repeat's row over that
repeat's plain loop). The fedqc rows add messages per cycle, the median time split of
``cycles.csv`` and, on Flower, each hop's overhead (its wall time on the server minus the
site's own training time).
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
from fedqc.io import atomic_write_csv
from fedqc.models.state import initial_state, unpack
from fedqc.protocol import batches
from fedqc.site import Site
from fedqc.site.site import EVAL_BATCH
from fedqc.strategies.cycles import hop_seed, learning_rate
from fedqc.strategies.travelling import site_order

ROWS = ("plain", "inprocess", "flower", "inprocess+calibration", "flower+calibration")
SPLIT = ("train_seconds", "transport_seconds", "eval_seconds", "calibration_seconds", "test_seconds", "write_seconds",
         "other_seconds")


def plain_cycles(cfg_dict: dict, out: Path) -> list[float]:
    """Seconds per cycle of the plain loop: same scans, order and batches as the clean arm, then the test split's
    scores written to ``out``/predictions and the weights and Adam state to ``out``/checkpoints, per cycle.

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
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
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
        scores = []
        with torch.no_grad():
            for site in sites.values():
                for chunk in batches(site.subjects("test"), EVAL_BATCH):
                    x, ok, _ = site._images(chunk)
                    rows = site.table.loc[ok, ["subject", "site", "label", "sex", "age"]].reset_index(drop=True)
                    rows.insert(3, "score", torch.sigmoid(clf(enc(site.scans.ready(x))).squeeze(1)).double().numpy())
                    scores.append(rows)
        atomic_write_csv(pd.concat(scores, ignore_index=True), out / "predictions" / f"cycle_{cycle:03d}.csv")
        torch.save({"encoder": enc.state_dict(), "classifier": clf.state_dict(), "optimizer": opt.state_dict()},
                   out / "checkpoints" / f"cycle_{cycle:03d}.pt")
        seconds.append(time.perf_counter() - t0)
    return seconds


def fedqc_run(cfg_dict: dict, out: Path) -> dict:
    """Run the clean arm with ``python -m fedqc.simulate`` (a fresh process, like a user's run)."""
    wall, peak = simulate(cfg_dict, out.with_suffix(".yaml"), out)
    cycles = pd.read_csv(out / "clean" / "cycles.csv")
    log = pd.read_csv(out / "clean" / "train_log.csv")
    over = hop_overhead_s(log[log["cycle"] > 0])  # steady-state hops
    steady = cycles[cycles["cycle"] > 0]
    return {"cycle_s": [round(float(s), 3) for s in cycles["seconds"]], "run_wall_s": round(wall, 2),
            "peak_rss_mb": peak, "hops_per_cycle": int(cycles["hops"].iloc[-1]),
            "messages_per_cycle": int(steady["messages"].median()),
            "split_s": {k: round(float(steady[k].median()), 3) for k in SPLIT},
            "hop_overhead_ms_median": float(np.median(over) * 1000),
            "hop_overhead_ms_p95": float(np.percentile(over, 95) * 1000)}


def summary(first: list[float], steady: list[float], plain: list[float] | None) -> dict:
    """A row over its repeats: first cycle and steady cycle (median, min, max), and the steady ratio to the plain
    loop per repeat (median, min, max)."""
    def spread(x) -> dict:
        return {"median": float(np.median(x)), "min": float(np.min(x)), "max": float(np.max(x))}
    row = {"first_s": spread(first), "steady_s": spread(steady)}
    if plain is not None:
        row["over_plain"] = spread(np.asarray(steady) / np.asarray(plain))
    return row


def config(row: str, cycles: int, threads: int, manifest: Path) -> dict:
    engine, _, calibration = row.partition("+")
    cfg = reference_config(cycles, "inprocess" if engine == "plain" else engine, manifest)
    cfg["threads"] = threads
    if calibration:
        del cfg["calibration"]  # the default
    return cfg


def write(runs: dict[str, list], args: argparse.Namespace) -> dict:
    """Summarise the repeats run so far (``args.repeats`` says how many were asked for) into ``args.out``."""
    cycle_s = {row: [run if row == "plain" else run["cycle_s"] for run in rs] for row, rs in runs.items()}
    plain = [float(np.median(c[1:])) for c in cycle_s["plain"]]
    rows = {}
    for row, cs in cycle_s.items():
        cs = cs[:len(plain)]
        rows[row] = summary([c[0] for c in cs], [float(np.median(c[1:])) for c in cs], None if row == "plain" else plain)
        if row != "plain":
            last = runs[row][-1]
            rows[row] |= {"messages_per_cycle": last["messages_per_cycle"], "hops_per_cycle": last["hops_per_cycle"],
                          "split_s": {k: float(np.median([run["split_s"][k] for run in runs[row]])) for k in SPLIT},
                          "peak_rss_mb": max(run["peak_rss_mb"] for run in runs[row])}
            if row.startswith("flower"):
                rows[row] |= {k: float(np.median([run[k] for run in runs[row]]))
                              for k in ("hop_overhead_ms_median", "hop_overhead_ms_p95")}
    rows["plain"]["peak_rss_mb"] = own_peak_rss_mb()
    shape = "reference preset (32^3)" if args.manifest == REFERENCE else str(args.manifest)
    result = {"machine": machine(), "shape": f"{shape}, SFCN width 0.5, clean arm",
              "cycles": args.cycles, "repeats": len(plain), "repeats_asked": args.repeats, "threads": args.threads,
              "rows": rows, "cycle_s": cycle_s, "runs": {row: rs for row, rs in runs.items() if row != "plain"}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=4, help="cycles per run (at least 4: the first is reported apart)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (and Ray CPUs) of every row")
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    ap.add_argument("--manifest", type=Path, default=REFERENCE,
                    help="another cohort (a check of the benchmark itself; the figures are the reference shape's)")
    ap.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    args = ap.parse_args()
    args.manifest = args.manifest.resolve()  # the runs' configs are written elsewhere
    if args.cycles < 4:
        ap.error("--cycles must be at least 4 (the first cycle is reported apart, the median of the others)")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if "plain" not in args.rows:
        ap.error("--rows must include plain (the other rows are measured against it)")
    if args.manifest == REFERENCE:
        ensure_cohort(REFERENCE)
    runs: dict[str, list] = {row: [] for row in args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for row in args.rows:
                print(f"repeat {r + 1}/{args.repeats}: {row} ...", flush=True)
                cfg = config(row, args.cycles, args.threads, args.manifest)
                out = Path(tmp) / f"{row}-{r}"
                runs[row].append(plain_cycles(cfg, out) if row == "plain" else fedqc_run(cfg, out))
            rows = write(runs, args)  # after every repeat: an interrupted benchmark keeps the repeats it finished
    for row, s in rows.items():
        ratio = f" ({s['over_plain']['median']:.2f}×)" if "over_plain" in s else ""
        print(f"{row:22s} first {s['first_s']['median']:.1f} s, then {s['steady_s']['median']:.2f} s/cycle "
              f"[{s['steady_s']['min']:.2f}–{s['steady_s']['max']:.2f}]{ratio}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
