"""The ``fedqc`` command line: validate, audit, cohort, harm, simulate, study, infer, report, manifest, sites.

A user's mistake (:class:`~fedqc.errors.UserError`), a site that cannot be reached
(:class:`~fedqc.errors.SiteError`) or a file the system refuses (``OSError``) ends in
a one-line reason (one more per problem) and exit code 1; ``--debug`` shows the
traceback. Anything else is a bug and keeps its traceback. Commands import their
heavy dependencies (torch, MONAI, SimpleITK, Flower) only when they run.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from fedqc.errors import SiteError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Travelling-model learning on medical images with quality control of harmful data.")
err = Console(stderr=True, highlight=False, soft_wrap=True)  # one line per message, never wrapped
out = Console(highlight=False)
USER_ERRORS = (UserError, SiteError, OSError)


DEBUG = typer.Option(False, "--debug", help="Show tracebacks.")


def friendly(fn):
    """Turn user errors into a clean message and exit code 1; the command gains the option ``--debug``, which
    re-raises them (with their traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, debug: bool = False, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except USER_ERRORS as exc:
            if debug:
                raise
            problems = getattr(exc, "problems", None)
            err.print(f"[red]error:[/] {escape(str(exc).splitlines()[0] if problems else str(exc))}")
            for p in problems or []:
                err.print(f"  - {escape(p)}")
            raise typer.Exit(1)

    signature = inspect.signature(fn)
    wrapper.__signature__ = signature.replace(parameters=[
        *signature.parameters.values(), inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=DEBUG,
                                                          annotation="bool")])
    wrapper.__annotations__ = {**fn.__annotations__, "debug": "bool"}
    return wrapper


@app.command()
@friendly
def validate(manifest: Path = typer.Argument(..., help="Manifest CSV."),
             no_images: bool = typer.Option(False, "--no-images", help="Skip opening image headers."),
             geometry: bool = typer.Option(False, "--geometry", help="Also report every site's orientation, "
                                           "spacing, shape and intensity range against the model's input (reads "
                                           "every scan)."),
             shape: str = typer.Option("32x32x32", "--shape", help="With --geometry: the model's input_shape, AxBxC "
                                       "(AxB for 2D) or one side for a cube.")):
    """Check a manifest against the data contract; exit 0 when it is valid. With --geometry, say what the scans
    need before training."""
    from fedqc.data.manifest import read_table, validate_manifest

    table = read_table(manifest)
    report = validate_manifest(table, root=manifest.parent, check_images=not no_images)
    for w in report.warnings:
        err.print(f"[yellow]warning:[/] {w}")
    if not report.ok:
        err.print(f"[red]error:[/] {manifest}: {len(report.errors)} problem(s)")
        for e in report.errors:
            err.print(f"  - {e}")
        raise typer.Exit(1)
    counts = table.groupby("split").size().to_dict()
    out.print(f"{manifest}: valid — {len(table)} scans, {table['site'].nunique()} sites, "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if geometry:
        from fedqc.data.audit import parse_shape
        from fedqc.data.geometry import advice, geometry_table
        from fedqc.data.manifest import load_manifest

        for line in advice(geometry_table(load_manifest(manifest)), parse_shape(shape)):
            out.print(escape(line), soft_wrap=True)


@app.command()
@friendly
def cohort(preset: str = typer.Option("demo", help="demo, demo2d (2D slices), reference or smoke."),
           out_dir: Path = typer.Option(..., "--out", help="Output folder."),
           size: str = typer.Option(None, help="Image side (default 32, 64 for demo2d), or every side as "
                                                "160x192x160 (64x64 for 2D)."),
           seed: int = typer.Option(0, help="Random seed."),
           no_harm: bool = typer.Option(False, "--no-harm", help="Inject no harmful data."),
           workers: int = typer.Option(0, help="Processes making scans (0: every usable core); the files are the "
                                               "same for any number."),
           effects: str = typer.Option(None, "--effects", help="Effect sizes: a named set (v1, v2, v3) or a YAML file of "
                                                               "any effect keys (docs/data.md); default: the preset's.")):
    """Generate a synthetic multi-center brain-MRI cohort (manifest + NIfTI images)."""
    import time

    from fedqc.data.audit import parse_sides
    from fedqc.data.synth.cohort import PRESETS, generate_cohort
    from fedqc.data.synth.effects import resolve_effects

    sides = None if size is None else parse_sides(size, "--size")
    if workers < 0:
        raise UserError(f"--workers must be >= 0 (0: every usable core), got {workers}")
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    chosen, source = resolve_effects(effects, PRESETS[preset][2])
    t0 = time.perf_counter()
    m = generate_cohort(out_dir, preset=preset, size=sides[0] if sides and len(sides) == 1 else sides, seed=seed,
                        harm={} if no_harm else None, workers=workers or None, effects=chosen, effects_source=source)
    harmful = int((m["harm"] != "none").sum())
    out.print(f"{out_dir / 'manifest.csv'}: {len(m)} scans, {m['site'].nunique()} sites, "
              f"{harmful} harmful, in {time.perf_counter() - t0:.1f} s")
    ceiling = json.loads((out_dir / "cohort.json").read_text())["oracle_test_auroc"]
    out.print(f"effects {source}; oracle ceiling (test AUROC of the drawn disease strength): {ceiling:.3f}")


@app.command()
@friendly
def harm(manifest: Path = typer.Option(..., "--manifest", help="Manifest CSV of the scans to corrupt."),
         scenario: Path = typer.Option(..., "--scenario", help="Harm scenario YAML (configs/scenarios/)."),
         out_dir: Path = typer.Option(..., "--out", help="Output folder, apart from the inputs."),
         seed: int = typer.Option(0, help="Seeds every choice and every corruption."),
         overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder.")):
    """Inject harmful data into a manifest: a new manifest and the corrupted images, the input untouched."""
    from fedqc.data.inject import inject, load_scenario

    table = inject(manifest, load_scenario(scenario), out_dir, seed=seed, overwrite=overwrite)
    counts = table.loc[table["harm"] != "none", "harm"].value_counts().sort_index()
    out.print(f"{out_dir / 'manifest.csv'}: {len(table)} scans, {int(counts.sum())} harmful ("
              + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")


def _simulate(config: Path, out_dir: Optional[Path], resume: bool, overwrite: bool, quiet: bool,
              engine: Optional[str], strict: bool):
    from fedqc.config import load_config
    from fedqc.experiment.runner import simulate

    overrides = ({"engine": engine} if engine else {}) | ({"strict": True} if strict else {})
    cfg = load_config(config, overrides)
    simulate(cfg, out_dir or Path("runs") / cfg.name, resume=resume, overwrite=overwrite, quiet=quiet)


SIM_OPTS = dict(
    config=typer.Option(..., "--config", help="Experiment YAML."),
    out_dir=typer.Option(None, "--out", help="Run folder (default runs/<name>)."),
    resume=typer.Option(False, "--resume", help="Continue from the last complete checkpoint."),
    overwrite=typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    quiet=typer.Option(False, "--quiet", help="No progress output."),
    engine=typer.Option(None, "--engine", help="Override the config's engine: flower or inprocess."),
    strict=typer.Option(False, "--strict", help="Stop at the first unusable scan instead of skipping it."),
)


@app.command("simulate")
@friendly
def simulate_cmd(config: Path = SIM_OPTS["config"], out_dir: Optional[Path] = SIM_OPTS["out_dir"],
                 resume: bool = SIM_OPTS["resume"], overwrite: bool = SIM_OPTS["overwrite"],
                 quiet: bool = SIM_OPTS["quiet"], engine: Optional[str] = SIM_OPTS["engine"],
                 strict: bool = SIM_OPTS["strict"]):
    """Run an experiment's arms on one machine (same as ``python -m fedqc.simulate``)."""
    _simulate(config, out_dir, resume, overwrite, quiet, engine, strict)


@app.command(context_settings={"allow_extra_args": True})
@friendly
def study(ctx: typer.Context,
          config: Path = typer.Option(..., "--config", help="Experiment YAML."),
          seeds: list[int] = typer.Option([0, 1, 2], "--seeds", help="Training seeds: --seeds 0 1 2."),
          out_dir: Optional[Path] = typer.Option(None, "--out", help="Study folder (default runs/<name>-study)."),
          sweep: Optional[str] = typer.Option(None, "--sweep", help="A study per value of a config or scenario "
                                              "key: --sweep scenario.label_noise.0.rate=0,0.1,0.2"),
          parallel: Optional[int] = typer.Option(None, "--parallel", help="Run N runs at a time, each a Ray task on "
                                                 "this machine (N x threads CPUs)."),
          ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Run every run as a Ray task on the "
                                                    "cluster at HOST:PORT (`ray start --head`), or auto."),
          threads_per_run: Optional[int] = typer.Option(None, "--threads-per-run", help="Torch threads (and Ray CPUs) "
                                                        "of each run; default the config's threads. The weights "
                                                        "depend on it: a resume must give the same."),
          gpus_per_run: Optional[float] = typer.Option(None, "--gpus-per-run", help="With --parallel/--ray-address: "
                                                       "GPUs of each run, e.g. 0.5 (default 1 on a cluster with "
                                                       "GPUs unless device is cpu, else 0)."),
          pair: list[str] = typer.Option([], "--pair", help="Also compare arms A and B paired by seed (A-B; "
                                         "repeat for more). QC − dirty, QC − clean, dirty − clean always are."),
          html: bool = typer.Option(True, "--html/--no-html", help="Write report.html (fedqc report)."),
          quiet: bool = typer.Option(False, "--quiet", help="No progress output.")):
    """Run the experiment once per seed; study.csv, summary.csv (mean, sd, 95 % t-interval), paired.csv (arms
    compared seed by seed: t-interval and exact sign-flip p), a plot, study.md. With --sweep, one such study per
    value and sweep.csv, sweep_summary.csv, sweep_paired.csv, curves and sweep.md. With --parallel or
    --ray-address, every run is a Ray task (docs/studies-at-scale.md)."""
    import dataclasses

    import pandas as pd

    from fedqc.analysis.paired import pairs_for
    from fedqc.analysis.study import write_results
    from fedqc.config import load_config
    from fedqc.experiment.arms import arms_for
    from fedqc.experiment.study import Sweep, plan_study, plan_sweep, run_all

    extra = list(ctx.args)  # `--seeds 0 1 2`: the values after the first
    if not all(x.lstrip("-").isdigit() for x in extra):
        raise UserError(f"unexpected argument(s) {extra}; seeds are integers: --seeds 0 1 2")
    seeds = list(seeds) + [int(x) for x in extra]
    if threads_per_run is not None and threads_per_run < 1:
        raise UserError(f"--threads-per-run must be >= 1, got {threads_per_run}")
    tasks = parallel is not None or ray_address is not None
    if gpus_per_run is not None and not tasks:
        raise UserError("--gpus-per-run needs --parallel N or --ray-address ADDRESS")
    cfg = load_config(config)
    pairs = tuple(pair)
    pairs_for([a.name for a in arms_for(cfg)], [], pairs)  # a bad --pair fails before anything trains
    if threads_per_run is not None:
        cfg = dataclasses.replace(cfg, threads=threads_per_run)
    options = None
    if tasks:
        from fedqc.experiment.parallel import RayOptions, for_tasks

        options = RayOptions(parallel, ray_address, cfg.threads, gpus_per_run)
        cfg = for_tasks(cfg)
    out_dir = out_dir or Path("runs") / f"{cfg.name}-study"
    states = {"done": "finished earlier, kept", "resumed": "resuming", "started": "running", "finished": "finished",
              "failed": "failed"}
    command = f"fedqc study --config {config} --seeds {' '.join(map(str, seeds))} --out {out_dir}"
    command += "".join(f" --pair {p}" for p in pairs)
    swept = None
    if sweep is not None:
        command += f" --sweep {sweep}"
        swept = Sweep.parse(sweep)
        runs = plan_sweep(cfg, swept, seeds, out_dir.absolute())  # absolute: a task may run in another folder
    else:
        runs = plan_study(cfg, seeds, out_dir.absolute())

    def report(run, state, note=""):
        err.print(f"{run.name}: {states[state]}" + (f" ({note})" if note else ""))

    if options is None:
        run_all(runs, quiet=quiet, on_run=report)
        failed = {}
    else:
        from fedqc.experiment.parallel import run_on_ray

        failed = run_on_ray(runs, options, on_run=report)
    summary = write_results(out_dir, runs, command, swept, failed, pairs)
    if summary is not None:
        from fedqc.analysis.publish import publish_study

        publish_study(out_dir, {r.name: r.folder for r in runs if r not in failed}, html=html)
    if summary is not None and swept is not None:
        for r in summary[summary["figure"] == "auroc_last3"].itertuples():
            out.print(f"{swept.key}={r.value!s:8s} {r.arm:28s} AUROC (last 3 cycles) {r.mean:.3f} "
                      f"[{r.ci_lo:.3f}, {r.ci_hi:.3f}] over {r.n} seed(s)")
        out.print(f"wrote {out_dir / 'sweep.csv'}, {out_dir / 'sweep_summary.csv'}, {out_dir / 'sweep.md'} and curves")
    elif summary is not None:
        for r in summary[summary["figure"] == "auroc_last3"].itertuples():
            out.print(f"{r.arm:28s} AUROC (last 3 cycles) {r.mean:.3f} [{r.ci_lo:.3f}, {r.ci_hi:.3f}] over {r.n} "
                      "seed(s)")
        differences = pd.read_csv(out_dir / "paired.csv")
        for r in differences[differences["figure"] == "auroc_last3"].itertuples():
            out.print(f"{r.pair:28s} paired difference {r.mean:+.3f} [{r.ci_lo:+.3f}, {r.ci_hi:+.3f}], sign-flip p "
                      f"{r.p:.3g} over {r.n} seed(s)")
        out.print(f"wrote {out_dir / 'study.csv'}, {out_dir / 'summary.csv'}, {out_dir / 'paired.csv'}, "
                  f"{out_dir / 'study_auroc.png'}, {out_dir / 'study.md'}")
    if summary is not None and html:
        out.print(f"report: {out_dir / 'report.html'}")
    if failed:
        err.print(f"[red]error:[/] {len(failed)} of {len(runs)} runs failed"
                  + (f" (listed in {out_dir / 'missing.csv'})" if summary is not None else "")
                  + "; run the same command again to retry them, finished runs are kept")
        for r, e in failed.items():
            err.print(f"  - {r.name}: {e}")
        raise typer.Exit(1)


@app.command()
@friendly
def infer(run: Optional[Path] = typer.Option(None, "--run", help="Run folder from `fedqc simulate`."),
          checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="One checkpoint (with --manifest)."),
          manifest: Optional[Path] = typer.Option(None, "--manifest", help="Manifest to score --checkpoint on."),
          out_file: Optional[Path] = typer.Option(None, "--out", help="With --checkpoint: metrics CSV to write."),
          recompute: bool = typer.Option(False, "--recompute", help="Rescore every cycle from its checkpoint."),
          age_bins: str = typer.Option("60,70", "--age-bins", help="Age bin edges, comma separated."),
          n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95% CIs."),
          seed: int = typer.Option(0, help="Bootstrap seed."),
          html: bool = typer.Option(True, "--html/--no-html", help="With --run: write report.html (fedqc report).")):
    """Per-cycle test metrics overall and by sex and age group, fairness gaps, plots, report.md and report.html."""
    from fedqc.analysis.infer import checkpoint_threshold, infer_run, predict_checkpoint
    from fedqc.analysis.metrics import group_metrics, target_metrics
    from fedqc.scoring import score_targets

    try:
        edges = tuple(sorted(float(x) for x in age_bins.split(",")))
    except ValueError:
        raise UserError(f"--age-bins must be numbers separated by commas, got {age_bins!r}") from None
    if (run is None) == (checkpoint is None):
        raise UserError("give either --run DIR or --checkpoint FILE --manifest CSV")
    if run is not None:
        from fedqc.analysis.publish import publish_run

        metrics = infer_run(run, recompute=recompute, age_edges=edges, n_boot=n_boot, seed=seed)
        publish_run(run, html=html)
        overall = metrics[metrics["group"] == "all"].groupby("arm", sort=False)
        for (arm, df), r in zip(overall, overall.tail(1).itertuples()):
            out.print(f"{arm:6s} cycle {r.cycle:3d}  AUROC {r.auroc:.3f} [{r.auroc_lo:.3f}, {r.auroc_hi:.3f}]  "
                      f"accuracy {r.accuracy:.3f} at threshold {r.threshold:.3f}  "
                      f"mean AUROC of last 3 cycles {df['auroc'].tail(3).mean():.3f}")
        if (run / "metrics_targets.csv").is_file():
            import pandas as pd

            targets = pd.read_csv(run / "metrics_targets.csv")
            last = targets[targets["cycle"] == targets.groupby("arm")["cycle"].transform("max")]
            out.print(last[["arm", "cycle", "target", "n_pos", "f1", "auroc", "average_precision"]]
                      .to_string(index=False))
            out.print(f"wrote {run / 'metrics_targets.csv'} (every target, and their macro average)")
        out.print(f"wrote {run / 'metrics.csv'}, {run / 'fairness.csv'}, {run / 'plots'}/, {run / 'report.md'}")
        if html:
            out.print(f"report: {run / 'report.html'}")
        return
    from fedqc.data.manifest import load_manifest

    if manifest is None:
        raise UserError("--checkpoint needs --manifest")
    if not checkpoint.is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    threshold, method = checkpoint_threshold(checkpoint)
    preds = predict_checkpoint(checkpoint, load_manifest(manifest))
    metrics = group_metrics(preds, age_edges=edges, n_boot=n_boot, seed=seed, threshold=threshold)
    target = out_file or checkpoint.with_suffix(".metrics.csv")
    metrics.to_csv(target, index=False)
    out.print(metrics[["group", "n", "n_pos", "accuracy", "auroc", "sensitivity", "specificity"]].to_string(index=False))
    if len(score_targets(preds.columns)) > 1:
        targets = target_metrics(preds, threshold)
        targets.to_csv(target.with_name(target.stem + "_targets.csv"), index=False)
        out.print(targets[["target", "n_pos", "f1", "auroc", "average_precision"]].to_string(index=False))
        out.print(f"wrote {target.with_name(target.stem + '_targets.csv')}")
    out.print(f"threshold metrics at {threshold:.3f} ({method}"
              + (", fitted on the run's verification scans)" if method != "fixed" else ", the reference)"))
    out.print(f"wrote {target}")


@app.command()
@friendly
def report(folder: Path = typer.Argument(..., help="A run folder (fedqc simulate), a study's or a sweep's (fedqc "
                                         "study).")):
    """One self-contained page, FOLDER/report.html: metrics per cycle with intervals, subgroup gaps, calibration, the
    QC timeline and per-scan table of a run; the curves, summary and paired differences of a study or sweep. A run
    without metrics.csv gets fedqc infer's files first."""
    from fedqc.analysis.report_html import write_html

    out.print(f"report: {write_html(folder)}")


@app.command()
@friendly
def audit(manifest: Path = typer.Argument(..., help="Manifest CSV; every split is audited."),
          out_dir: Optional[Path] = typer.Option(None, "--out", help="Folder for audit.csv and audit_summary.csv "
                                                 "(default runs/audit-<manifest folder or stem>)."),
          shape: str = typer.Option("32x32x32", "--shape", help="The model input shape the model-input checks and "
                                    "the near-duplicate hash see: AxBxC, AxB for 2D, or one side for a cube."),
          near_threshold: Optional[float] = typer.Option(None, "--near-threshold", help="Near duplicates: at most "
                                                         "this share of perceptual-hash bits differ (default 0.08)."),
          outlier_z: Optional[float] = typer.Option(None, "--outlier-z", help="Intensity and shape outliers: robust "
                                                    "z-score (median/MAD over the manifest) above this (default 5)."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out (only the two "
                                         "audit files are replaced).")):
    """Image audit without training: unreadable, blank or near-constant scans, exact and near duplicates (within
    and across sites), intensity and shape outliers, inverted-looking and noise-like scans; per scan and per site."""
    import time

    from rich.table import Table

    from fedqc.data.audit import NEAR_THRESHOLD, OUTLIER_Z, audit_manifest, default_out, parse_shape

    sides = parse_shape(shape)
    out_dir = out_dir or default_out(manifest)
    t0 = time.perf_counter()
    table, summary = audit_manifest(manifest, shape=sides, out=out_dir, overwrite=overwrite,
                                    near_threshold=NEAR_THRESHOLD if near_threshold is None else near_threshold,
                                    outlier_z=OUTLIER_Z if outlier_z is None else outlier_z)
    per_site = summary[summary["site"] != "all"].set_index("site")
    view = Table(title=f"{len(table)} scans at {len(per_site)} sites, {time.perf_counter() - t0:.1f} s")
    for col in ("issue", "scans", "sites (most first)"):
        view.add_column(col, justify="right" if col == "scans" else "left")
    for col in [*summary.columns[3:], "any_issue"]:
        counts = per_site[col][per_site[col] > 0].sort_values(ascending=False, kind="stable")
        where = ", ".join(f"{site} {n}" for site, n in counts.head(4).items())
        view.add_row(col.replace("_", " "), f"{counts.sum()}" + (f" of {len(table)}" if col == "any_issue" else ""),
                     where + (f" (+{len(counts) - 4} more)" if len(counts) > 4 else ""), end_section=col == "no_anatomy")
    out.print(view)
    out.print(f"wrote {out_dir / 'audit.csv'} (one row per scan, a reason for each flagged one) and "
              f"{out_dir / 'audit_summary.csv'}")


manifest_app = typer.Typer(no_args_is_help=True, help="Make a manifest from a BIDS dataset; resample its scans.")
app.add_typer(manifest_app, name="manifest")


@manifest_app.command("from-bids")
@friendly
def manifest_from_bids_cmd(
        dataset: Path = typer.Argument(..., help="BIDS dataset folder (participants.tsv, sub-*/[ses-*/]anat/)."),
        out_file: Path = typer.Option(..., "--out", help="Manifest CSV to write; skipped scans go to "
                                      "<name>_skipped.csv beside it."),
        site_from: str = typer.Option("participants", "--site-from", help="participants (its site column), "
                                      "participants:COLUMN, session, or sidecar:KEY (e.g. sidecar:InstitutionName)."),
        label: str = typer.Option("label", "--label", help="participants.tsv column holding the label."),
        positive: list[str] = typer.Option([], "--positive", help="A label value meaning 1 (repeatable; default "
                                           "mapping 0/1, false/true, no/yes)."),
        negative: list[str] = typer.Option([], "--negative", help="A label value meaning 0 (repeatable)."),
        split: str = typer.Option("0.6,0.2,0.2", "--split", help="Shares of participants for train,val,test "
                                  "(multiples of 0.05), stratified by site and label."),
        seed: int = typer.Option(0, help="Seeds the split."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out.")):
    """Write a manifest from a BIDS dataset's T1w scans; every unusable scan is printed and recorded."""
    from fedqc.data.bids import manifest_from_bids, skipped_path
    from fedqc.data.manifest import read_table, validate_manifest
    from fedqc.io import atomic_write_csv

    if out_file.exists() and not overwrite:
        raise UserError(f"{out_file} exists; pass --overwrite to replace it")
    table, skipped = manifest_from_bids(dataset, site_from=site_from, label=label, positive=positive,
                                        negative=negative, split=split, seed=seed)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(table, out_file)
    atomic_write_csv(skipped, skipped_path(out_file))
    for reason in skipped["reason"]:
        err.print(f"[yellow]skipped:[/] {escape(reason)}")
    report = validate_manifest(read_table(out_file), root=out_file.parent)
    if not report.ok:  # a bug if it happens: every row was checked above
        raise UserError(f"{out_file} does not pass validation", report.errors)
    counts = table.groupby("split").size().to_dict()
    out.print(f"{out_file}: {len(table)} scans of {table['participant'].nunique()} participants at "
              f"{table['site'].nunique()} sites, " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
              + f"; {len(skipped)} skipped ({skipped_path(out_file)})", soft_wrap=True)


@manifest_app.command("resample")
@friendly
def manifest_resample(manifest: Path = typer.Argument(..., help="Manifest CSV."),
                      shape: str = typer.Option("32x32x32", "--shape", help="The model's input_shape: AxBxC, AxB "
                                                "for 2D, or one side for a cube."),
                      out_dir: Path = typer.Option(..., "--out", help="Folder for manifest.csv and images/."),
                      overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out.")):
    """Copies of every scan in RAS at the model's shape (SimpleITK, smoothed before downsampling) and a manifest
    pointing at them; the input is untouched."""
    from fedqc.data.audit import parse_shape
    from fedqc.data.geometry import resample_manifest

    sides = parse_shape(shape)
    table = resample_manifest(manifest, sides, out_dir, overwrite=overwrite)
    out.print(f"{out_dir / 'manifest.csv'}: {len(table)} scans resampled to {'x'.join(map(str, sides))} (RAS) under "
              f"{out_dir / 'images'}", soft_wrap=True)


sites_app = typer.Typer(no_args_is_help=True, help="Per-site folders and the docker-compose topology for real SuperNodes.")
app.add_typer(sites_app, name="sites")


@sites_app.command("split")
@friendly
def sites_split(manifest: Path = typer.Option(..., "--manifest", help="The experiment's manifest CSV."),
                out_dir: Path = typer.Option(..., "--out", help="Folder for the sites, e.g. sites/<experiment>."),
                overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder.")):
    """Split a manifest into one folder per site: its own rows (manifest.csv) and scans (images/)."""
    from fedqc.transport.flower.deploy.sites import split_sites

    table = split_sites(manifest, out_dir, overwrite=overwrite)
    for r in table.itertuples():
        out.print(f"{out_dir / r.folder}: train {r.train}, val {r.val}, test {r.test}")
    out.print(f"wrote {len(table)} site folders and {out_dir / 'sites.csv'}")


@sites_app.command("compose")
@friendly
def sites_compose(sites: Path = typer.Option(..., "--sites", help="Folder from `fedqc sites split`."),
                  config: str = typer.Option(..., "--config", help="Experiment YAML, relative to the repository."),
                  out_file: Optional[Path] = typer.Option(None, "--out", help="Compose file to write (default "
                                                          "docker-compose.yml, with --tls docker-compose.tls.yml)."),
                  tls: bool = typer.Option(False, "--tls", help="TLS and SuperNode authentication: certificates "
                                           "from ./certificates, each SuperNode's key from <site>/keys/.")):
    """Write the docker-compose topology: SuperLink, ServerApp SuperExec, a SuperNode + SuperExec per site."""
    from fedqc.transport.flower.deploy.sites import missing_site_keys, write_compose

    if not Path(config).is_file():
        raise UserError(f"config not found: {config}")
    out_file = out_file or Path("docker-compose.tls.yml" if tls else "docker-compose.yml")
    out.print(f"wrote {write_compose(sites, out_file, config=config, tls=tls)}")
    if tls and (missing := missing_site_keys(sites)):
        out.print(f"note: no keys/supernode.key yet for {', '.join(missing)}: make them with "
                  f"`fedqc sites keys --sites {sites}` (or each hospital on its machine) before starting")


@sites_app.command("certificates")
@friendly
def sites_certificates(out_dir: Path = typer.Option(Path("certificates"), "--out", help="Folder for the files."),
                       hosts: list[str] = typer.Option([], "--host", help="A name or IP address SuperNodes and "
                                                       "the flwr CLI dial, besides 127.0.0.1 and localhost "
                                                       "(repeatable; `superlink` for docker compose)."),
                       days: int = typer.Option(365, "--days", help="Validity of the certificates."),
                       overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files.")):
    """Write a CA and the SuperLink's TLS certificate (the coordinator's side of TLS)."""
    from fedqc.transport.flower.deploy.certificates import write_server_certificates

    files = write_server_certificates(out_dir, hosts=hosts, days=days, overwrite=overwrite)
    out.print(f"wrote {files.ca_cert} (give it to every site and to the flwr CLI), {files.server_cert} and "
              f"{files.server_key} (the SuperLink's), {files.ca_key} (keep it private)")


@sites_app.command("keys")
@friendly
def sites_keys(sites: Optional[Path] = typer.Option(None, "--sites", help="Folder from `fedqc sites split`: "
                                                    "a key pair for each of its sites."),
               site: Optional[Path] = typer.Option(None, "--site", help="One site's folder (a hospital's own)."),
               overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing keys.")):
    """Write a SuperNode's authentication key pair into <site>/keys/ (supernode.key, supernode.pub)."""
    from fedqc.transport.flower.deploy.certificates import write_site_key, write_site_keys

    if (sites is None) == (site is None):
        raise UserError("give either --sites or --site")
    if site is not None:
        if not site.is_dir():
            raise UserError(f"site folder not found: {site}")
        keys = {site.resolve().name: write_site_key(site, overwrite=overwrite)}
    else:
        keys = write_site_keys(sites, overwrite=overwrite)
    for name, files in keys.items():
        out.print(f"{name}: {files.private} (stays with the SuperNode), {files.public} (send to the coordinator)")


def simulate_main() -> None:
    """Entry point of ``python -m fedqc.simulate``."""
    typer.run(simulate_cmd)


def main() -> None:
    app()
