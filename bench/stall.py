"""Why does the travelling model stall? Its clean arm against the same network on the same good scans pooled.

For each cohort (a manifest), each variant (config overrides) and each training seed, the
clean arm of the travelling model trains ``--cycles`` cycles; with ``--pooled`` the same
network trains on the same good training scans gathered as ONE site (a copy of the
manifest whose good train scans all belong to a site ``pooled``, harmful ones left out;
val and test scans stay at their sites), through the same engine and code path, so one
cycle of it is one epoch of central training. Per cycle it records:

- ``auroc``: test AUROC (:func:`fedqc.analysis.metrics.binary_metrics` on the saved
  predictions), and ``score_sd``, ``score_pos``, ``score_neg``: whether the model
  outputs a constant, and where the two classes sit;
- ``loss_one``, ``loss_two``: mean training loss of the hops at one-class and at
  two-class sites (scan-weighted, ``train_log.csv``);
- ``last_site_pos``: the share of patients in the last site the model trained at;
- ``seconds``: the cycle's wall time.

and per run ``first_065`` (the first cycle with test AUROC ≥ 0.65, none: never) and
``last3`` (the mean of the last three). ``--recheck`` also scores each travelling
run's last checkpoint after federated BatchNorm statistics (the default calibration:
:class:`fedqc.strategies.calibration.Calibrator` on the good val scans), which tells a
model that ranks well under pooled statistics from one that has learned nothing.
``--probe`` reads the scanner and sex from each run's last checkpoint (linear probes on
the frozen encoder's features of the good scans, fitted on train and val, scored on test:
:func:`fedqc.analysis.bias.checkpoint_probes`).

A variant is ``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE`` with dotted config keys and
YAML values (``lr1e-4:train.lr=1e-4``, ``gn:model.norm=group``). One key is the
bench's own: ``bench.adam=reset`` sends every site the model without Adam's state (a
fresh Adam at each hop) instead of the travelling one.

Runs go to ``--out/<cohort>/<travelling|pooled>/<variant>/seed<k>/`` (a finished run is
read, not rerun: ``fedqc`` resumes it); the records go to ``--out/summary.json`` (merged
with earlier calls), the table is printed, and ``--plot FILE.png`` draws the learning
curves of every record in the summary.

    python -m bench.stall --manifest data/ref-c1/manifest.csv --variant base \\
        --variant lr1e-4:train.lr=1e-4 --seeds 0 1 --pooled --out runs/stall
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fedqc.analysis.bias import checkpoint_probes
from fedqc.analysis.metrics import binary_metrics
from fedqc.analysis.report import markdown_table
from fedqc.config import ExperimentConfig, load_config
from fedqc.data.manifest import load_manifest
from fedqc.errors import UserError
from fedqc.experiment.arms import harmful_scans
from fedqc.experiment.run_dir import RunDir, load_checkpoint
from fedqc.protocol import EvalRequest, State, TrainReply, TrainRequest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "studies" / "travelling-stall" / "stall.yaml"
POOLED = "pooled"
LEAVES_CHANCE = 0.65  # issue 42's target: the clean arm's test AUROC by cycle W
FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
BENCH_KEYS = {"bench.adam": ("travel", "reset")}


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict = field(default_factory=dict)
    knobs: dict = field(default_factory=dict)  # the bench's own keys (bench.*)


def parse_variant(text: str) -> Variant:
    """``NAME[:KEY=VALUE,...]`` → a :class:`Variant`; a malformed one or an unknown bench key is a one-line error."""
    name, _, rest = text.partition(":")
    if not name or "/" in name:
        raise UserError(f"--variant {text!r}: expected NAME or NAME:KEY=VALUE,... (a name without '/')")
    overrides, knobs = {}, {}
    for item in filter(None, re.split(r",(?=[\w.]+=)", rest)):  # a comma before the next KEY=
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"--variant {text!r}: {item!r} is not KEY=VALUE")
        try:
            parsed = yaml.safe_load(value)
            parsed = float(parsed) if isinstance(parsed, str) and FLOAT.fullmatch(parsed) else parsed  # YAML 1.1: 1e-4
        except yaml.YAMLError:
            raise UserError(f"--variant {text!r}: {value!r} is not a YAML value") from None
        if key.startswith("bench."):
            if key not in BENCH_KEYS or parsed not in BENCH_KEYS[key]:
                raise UserError(f"--variant {text!r}: {key}={value} unknown; the bench's keys: "
                                + ", ".join(f"{k}={'|'.join(v)}" for k, v in BENCH_KEYS.items()))
            knobs[key] = parsed
        else:
            overrides[key] = parsed
    return Variant(name, overrides, knobs)


def pooled_manifest(manifest: Path, out: Path) -> Path:
    """A copy of ``manifest`` whose good train scans all belong to one site ``pooled`` (harmful train scans left out,
    val and test scans at their own sites, paths absolute): central training through the same code."""
    table = load_manifest(manifest, check_images=False)
    train = table["split"] == "train"
    table = table[~train | (table["harm"] == "none")].copy()
    table.loc[table["split"] == "train", "site"] = POOLED
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pooled-manifest.csv"
    table.to_csv(path, index=False)
    return path


@dataclass
class FreshAdam:
    """A transport that sends each site the model without Adam's state: every hop starts a fresh Adam."""

    inner: object

    def train(self, site: str, state: State, request: TrainRequest) -> TrainReply:
        return self.inner.train(site, {k: v for k, v in state.items() if not k.startswith("optim.")}, request)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def run(cfg: ExperimentConfig, out: Path, variant: Variant) -> None:
    """Train ``cfg`` into ``out`` (resuming what is there): :func:`fedqc.experiment.runner.simulate`, or with a bench
    key the same in-process steps around a wrapped transport."""
    import torch

    from fedqc.experiment.runner import resolve_model, run_experiment, simulate
    from fedqc.transport.inprocess import InProcessTransport

    if not variant.knobs:
        simulate(cfg, out, resume=True, quiet=True)
        return
    RunDir(out).prepare(cfg, resume=True, overwrite=False)
    (out / "bench-variant.json").write_text(json.dumps(variant.knobs))
    cfg = resolve_model(cfg, load_manifest(cfg.manifest, check_images=False))
    torch.set_num_threads(cfg.threads)
    transport = InProcessTransport(load_manifest(cfg.manifest), cfg.model, device=cfg.device, data=cfg.data,
                                   deterministic=cfg.deterministic)
    run_experiment(cfg, FreshAdam(transport), out, resume=True, quiet=True)


def curve(out: Path, cfg: ExperimentConfig) -> pd.DataFrame:
    """Per cycle of the clean arm in ``out``: test AUROC, the scores' spread and class means, training loss at
    one-class and two-class sites, the last site's patient share, wall seconds."""
    arm = RunDir(out).arm("clean")
    manifest = load_manifest(cfg.manifest, check_images=False)
    good = manifest[(manifest["split"] == "train") & (manifest["harm"] == "none")]
    pos = good.groupby("site")["label"].mean()
    log = pd.read_csv(arm.path / "train_log.csv")
    log = log[log["n_scans"] > 0].assign(one=lambda d: d["site"].map(pos).isin([0.0, 1.0]))
    seconds = pd.read_csv(arm.path / "cycles.csv").set_index("cycle")["seconds"]
    rows = []
    for c in arm.cycles("predictions"):
        p = pd.read_csv(arm.predictions(c))
        hops = log[log["cycle"] == c]
        mean_loss = lambda h: float(np.average(h["loss"], weights=h["n_scans"])) if len(h) else float("nan")  # noqa: E731
        rows.append({"cycle": c, "auroc": binary_metrics(p["label"], p["score"])["auroc"],
                     "score_sd": p["score"].std(), "score_pos": p.loc[p["label"] == 1, "score"].mean(),
                     "score_neg": p.loc[p["label"] == 0, "score"].mean(),
                     "loss_one": mean_loss(hops[hops["one"]]), "loss_two": mean_loss(hops[~hops["one"]]),
                     "last_site_pos": pos.get(hops["site"].iloc[-1], float("nan")) if len(hops) else float("nan"),
                     "seconds": seconds.get(c, float("nan"))})
    return pd.DataFrame(rows)


def recheck(out: Path, cfg: ExperimentConfig) -> float:
    """Test AUROC of the clean arm's last checkpoint after federated BatchNorm statistics on the good val scans."""
    from fedqc.config import CalibrationConfig
    from fedqc.strategies.calibration import Calibrator
    from fedqc.transport.inprocess import InProcessTransport

    arm = RunDir(out).arm("clean")
    state = load_checkpoint(arm.checkpoint(arm.last_checkpoint()))["state"]
    manifest = load_manifest(cfg.manifest, check_images=False)
    transport = InProcessTransport(manifest, cfg.model, data=cfg.data)
    info = transport.site_info()
    leave_out = harmful_scans(manifest, "val")
    state, _ = Calibrator(transport, CalibrationConfig())(
        state, {s: leave_out.get(s, ()) for s, i in sorted(info.items()) if i.n_val})
    replies = transport.evaluate(sorted(s for s, i in info.items() if i.n_test), state, EvalRequest("test"))
    p = pd.concat([r.scores for r in replies.values()], ignore_index=True)
    return binary_metrics(p["label"], p["score"])["auroc"]


def anatomy(out: Path, cfg: ExperimentConfig) -> pd.DataFrame:
    """Per checkpoint of the clean arm: what the network has become, on the test scans (their encoder taps' moments,
    :class:`~fedqc.protocol.EvalRequest` ``moments``) and in its weights: per block the share of dead channels
    (zero on every scan) and the median across-scan SD of a channel's spatial mean; the classifier's weight norm
    and bias; the mean |γ| of the BatchNorm layers; ``conv_change``, the mean relative change of the encoder's
    convolution weights since the previous checkpoint; ``adam_ratio``, the median |m|/√v of the Adam state the
    model carries (how much of its momentum survives the sites' disagreement)."""
    from fedqc.strategies.calibration import batchnorm_layers
    from fedqc.transport.inprocess import InProcessTransport

    arm = RunDir(out).arm("clean")
    manifest = load_manifest(cfg.manifest, check_images=False)
    transport = InProcessTransport(manifest[manifest["split"] == "test"], cfg.model, data=cfg.data)
    rows, previous = [], None
    for c in arm.cycles("checkpoints"):
        state = load_checkpoint(arm.checkpoint(c))["state"]
        layers = batchnorm_layers(state)
        convs = [k for k in state if k.startswith("encoder.") and k.endswith(".weight") and state[k].ndim > 2]
        moments = [k for k in state if k.startswith("optim.") and k.endswith(".exp_avg")]
        replies = transport.evaluate(sorted(transport.sites), state, EvalRequest("test", moments=True))
        n, total, sq = (sum(r.moments[k] for r in replies.values()) for k in ("feat_n", "feat_sum", "feat_sq"))
        mean, sd = total / n, np.sqrt(np.maximum(sq / n - (total / n) ** 2, 0))
        row = {"cycle": c, "classifier_w": float(np.linalg.norm(state["classifier.weight"])),
               "classifier_b": float(state["classifier.bias"][0]),
               "bn_gamma": float(np.mean([np.abs(state[p + "weight"]).mean() for p in layers])),
               "conv_change": float(np.mean([np.linalg.norm(state[k] - previous[k]) / np.linalg.norm(previous[k])
                                             for k in convs])) if previous else float("nan"),
               "adam_ratio": float(np.median(np.concatenate(
                   [np.abs(state[k]).ravel() / np.sqrt(state[k + "_sq"].ravel() + 1e-16) for k in moments])))}
        previous = state
        start = 0
        for i, p in enumerate(layers):
            width = state[p + "running_mean"].shape[0]
            row[f"dead{i}"] = float(np.mean(mean[start:start + width] == 0))
            row[f"sd{i}"] = float(np.median(sd[start:start + width]))
            start += width
        rows.append(row)
    return pd.DataFrame(rows)


def record(cohort: str, mode: str, variant: Variant, seed: int, frame: pd.DataFrame) -> dict:
    auroc = frame["auroc"].round(3).tolist()
    first = next((int(c) for c, a in zip(frame["cycle"], frame["auroc"]) if a >= LEAVES_CHANCE), None)
    return {"cohort": cohort, "mode": mode, "variant": variant.name, "seed": seed,
            "overrides": variant.overrides | variant.knobs, "auroc": auroc, "first_065": first,
            "last3": round(float(np.mean(frame["auroc"].tail(3))), 3),
            "per_cycle": frame.round(4).to_dict(orient="list")}


def table(records: list[dict]) -> pd.DataFrame:
    rows = [{"cohort": r["cohort"], "mode": r["mode"], "variant": r["variant"], "seed": r["seed"],
             "test AUROC per cycle": " ".join(f"{a:.2f}" for a in r["auroc"]),
             "first ≥ 0.65": "never" if r["first_065"] is None else r["first_065"], "last-3": r["last3"],
             "fed. BN (last)": r.get("recheck", float("nan")), "scanner probe": r.get("probe_scanner", float("nan")),
             "sex probe": r.get("probe_sex", float("nan"))} for r in records]
    return pd.DataFrame(rows)


def overview(records: list[dict], by: int = 5) -> pd.DataFrame:
    """Per (mode, variant) over its runs: how many leave chance (≥ 0.65) by cycle ``by`` (issue 42's W), and the
    last-3 AUROC's mean and range."""
    df = pd.DataFrame([{"mode": r["mode"], "variant": r["variant"], "early": r["first_065"] is not None
                        and r["first_065"] <= by, "last3": r["last3"]} for r in records])
    return df.groupby(["mode", "variant"], sort=False).agg(
        runs=("last3", "size"), **{f"≥ 0.65 by cycle {by}": ("early", "sum")}, last3_mean=("last3", "mean"),
        last3_min=("last3", "min"), last3_max=("last3", "max")).reset_index()


def plot(records: list[dict], path: Path) -> None:
    """One panel per cohort: each (mode, variant) a colour, one line per seed; pooled dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cohorts = sorted({r["cohort"] for r in records})
    keys = sorted({(r["mode"], r["variant"]) for r in records})
    colours = dict(zip(keys, plt.cm.tab10.colors * 3))
    fig, axes = plt.subplots(1, len(cohorts), figsize=(5.5 * len(cohorts), 4), sharey=True, squeeze=False)
    for ax, cohort in zip(axes[0], cohorts):
        labelled = set()
        for r in (r for r in records if r["cohort"] == cohort):
            key = (r["mode"], r["variant"])
            ax.plot(r["per_cycle"]["cycle"], r["auroc"], "--" if r["mode"] == POOLED else "-", marker=".",
                    color=colours[key], label=None if key in labelled else f"{r['mode']} {r['variant']}")
            labelled.add(key)
        ax.axhline(LEAVES_CHANCE, color="grey", lw=0.5)
        ax.set(title=cohort, xlabel="cycle (pooled: epoch)", ylim=(0.3, 1.02))
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("test AUROC")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, action="append", default=[], help="a cohort's manifest (repeatable)")
    ap.add_argument("--config", type=Path, default=CONFIG, help=f"base config (default {CONFIG.relative_to(ROOT)})")
    ap.add_argument("--variant", action="append", default=[], help="NAME[:KEY=VALUE,...] (repeatable; default base)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    ap.add_argument("--cycles", type=int, default=10, help="travelling cycles per run")
    ap.add_argument("--pooled", action="store_true", help="also train the pooled model of every variant")
    ap.add_argument("--pooled-cycles", type=int, default=3, help="epochs of the pooled model")
    ap.add_argument("--no-travelling", action="store_true", help="only the pooled model")
    ap.add_argument("--recheck", action="store_true", help="score each travelling run's last checkpoint after "
                                                            "federated BatchNorm statistics")
    ap.add_argument("--probe", action="store_true", help="read scanner and sex from each run's last checkpoint "
                                                          "(linear probes on the frozen encoder's features)")
    ap.add_argument("--diagnose", action="store_true", help="per checkpoint: dead channels, feature spread, "
                                                             "classifier and BatchNorm weights (anatomy)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "stall", help="runs and summary.json")
    ap.add_argument("--plot", type=Path, help="draw every record of the summary into this PNG")
    args = ap.parse_args()
    try:
        variants = [parse_variant(v) for v in args.variant or ["base"]]
        summary_file = args.out / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {"records": []}
        for manifest in args.manifest:
            cohort = manifest.resolve().parent.name
            modes = ([] if args.no_travelling else [("travelling", manifest, args.cycles)]) + \
                ([(POOLED, pooled_manifest(manifest, args.out / cohort), args.pooled_cycles)] if args.pooled else [])
            for mode, path, cycles in modes:
                for variant in variants:
                    for seed in args.seeds:
                        cfg = load_config(args.config, {**variant.overrides, "manifest": str(path.resolve()),
                                                        "train.seed": seed, "train.cycles": cycles,
                                                        "train.branch_cycle": min(cycles - 1, 5)})
                        out = args.out / cohort / mode / variant.name / f"seed{seed}"
                        t0 = time.perf_counter()
                        run(cfg, out, variant)
                        rec = record(cohort, mode, variant, seed, curve(out, cfg))
                        if args.diagnose:
                            rec["anatomy"] = anatomy(out, cfg).round(4).to_dict(orient="list")
                        if args.recheck and mode != POOLED:
                            rec["recheck"] = round(recheck(out, cfg), 3)
                        if args.probe:
                            arm = RunDir(out).arm("clean")
                            scans = load_manifest(cfg.manifest, check_images=False)
                            good = scans[scans["harm"] == "none"]
                            rec |= {k: round(v, 3) for k, v in
                                    checkpoint_probes(arm.checkpoint(arm.last_checkpoint()), good).items()}
                        rec |= {"config": str(args.config), "date": date.today().isoformat()}
                        key = (cohort, mode, variant.name, seed)
                        same = lambda r: (r["cohort"], r["mode"], r["variant"], r["seed"]) == key  # noqa: E731
                        earlier = next((r for r in summary["records"] if same(r)), {})  # keeps its recheck, anatomy
                        summary["records"] = [r for r in summary["records"] if not same(r)] + [earlier | rec]
                        args.out.mkdir(parents=True, exist_ok=True)
                        summary_file.write_text(json.dumps(summary, indent=1))
                        print(f"{cohort} {mode} {variant.name} seed {seed} ({time.perf_counter() - t0:.0f} s): "
                              f"{' '.join(f'{a:.2f}' for a in rec['auroc'])}", flush=True)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    if summary["records"]:
        print(markdown_table(table(summary["records"])))
        print(markdown_table(overview(summary["records"])))
    if args.plot:
        plot(summary["records"], args.plot)
        print(f"figure: {args.plot}")


if __name__ == "__main__":
    main()
