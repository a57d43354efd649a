"""Run an experiment: every configured arm in order, on the configured engine, into one run folder.

Engines: ``flower`` (Flower's simulation engine, one virtual SuperNode per site),
``inprocess`` (sites called directly), ``deployment`` (real SuperNodes; the ServerApp of
:mod:`fedqc.experiment.flower_app`). All carry the same requests to the same site logic
and give bit-identical weights for the same seed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedqc.config import ExperimentConfig
from fedqc.config.schema import REFERENCE_CALIBRATION, model_dict
from fedqc.data.corruptions.scenario import Scenario
from fedqc.data.inject import inject
from fedqc.data.manifest import load_manifest, target_columns
from fedqc.errors import BrokenScanError, UserError
from fedqc.experiment.adversarial import write_adversaries, write_backdoor
from fedqc.experiment.arms import TRUSTED, Arm, arms_for, harmful_scans
from fedqc.experiment.run_dir import VISITOR_KEY, ArmDir, RunDir, load_checkpoint
from fedqc.io import append_csv, atomic_write_csv
from fedqc.models import MARKER_CLASSES
from fedqc.models.state import initial_state
from fedqc.protocol import State, class_counts
from fedqc.qc.arm import QCArm
from fedqc.qc.detection import score_detection
from fedqc.site.adversary import Adversary, lying_sites
from fedqc.strategies.averaging import Aggregator
from fedqc.strategies.calibration import Calibrator
from fedqc.strategies.cycles import (
    Cycle,
    Hop,
    HopCallback,
    HopStatus,
    PlainVisitor,
    Visitor,
    train_cycles,
)
from fedqc.strategies.defence import UpdateNormCheck
from fedqc.strategies.schedule import Schedule, rounds_for
from fedqc.transport import Transport
from fedqc.transport.counting import CountingTransport
from fedqc.transport.fresh import FreshTransport

ERROR_COLUMNS = ["subject", "site", "cycle", "stage", "reason"]


def failing_sites(log: pd.DataFrame, cycles: int) -> dict[str, int]:
    """Sites whose hops failed in at least ``cycles`` consecutive cycles → longest run."""
    worst: dict[str, int] = {}
    for site, rows in log.assign(failed=log["status"] == HopStatus.FAILED.value).groupby("site"):
        run = best = 0
        for failed in rows.sort_values("cycle")["failed"]:
            run = run + 1 if failed else 0
            best = max(best, run)
        if best >= cycles:
            worst[site] = best
    return worst


def cycle_row(cycle: Cycle, hops: int, messages: int, state_bytes: int, write_seconds: float, done: float) -> dict:
    """``cycles.csv``'s row of a cycle: its wall ``seconds`` (from the start of its round to its logs written;
    the row itself and the checkpoint, written after, are not in it) split by what they were spent on
    (:func:`~fedqc.strategies.cycles.time_split`, ``write_seconds``: the predictions, logs and the visitor's
    logs), ``other_seconds`` the remainder: the server's own work in the round (the strategy's aggregation,
    the visitor's bookkeeping, reply checks, the progress bar) and the log rows' assembly; the ``messages`` to sites
    and the model ``state_bytes`` they and the training replies carried (:class:`~fedqc.transport.counting.Meter`)."""
    seconds = done - cycle.started
    parts = {**cycle.split, "write_seconds": write_seconds}
    return {"cycle": cycle.cycle, "hops": hops, "seconds": seconds, **parts,
            "other_seconds": seconds - sum(v for v in parts.values() if not math.isnan(v)), "messages": messages,
            "state_bytes": state_bytes}


class CycleRecorder:
    """Commits a finished cycle: predictions, log rows, the visitor's logs, and last the checkpoint (with the state
    the ``schedule``'s rounds keep)."""

    def __init__(self, arm_dir: ArmDir, cfg: ExperimentConfig, visitor: Visitor,
                 counter: CountingTransport | None = None, schedule: Schedule | None = None):
        self.arm_dir, self.cfg, self.visitor, self.counter, self.schedule = arm_dir, cfg, visitor, counter, schedule
        self.sent = counter.messages if counter else 0
        self.bytes = counter.state_bytes if counter else 0

    def __call__(self, cycle: Cycle, state: State) -> None:
        c = cycle.cycle
        rows = [{"cycle": c, "hop": i, "site": site, "n_scans": hop.n_scans, "loss": hop.loss, "seconds": hop.seconds,
                 "status": hop.status.value, "note": hop.note, "hop_seconds": wall}
                for i, (site, hop, wall) in enumerate(cycle.hops)]
        errors = [{"subject": p.subject, "site": site, "cycle": c, "stage": p.stage, "reason": p.reason}
                  for site, hop, _ in cycle.hops for p in hop.problems]
        for site, reply in cycle.test.items():
            errors += [{"subject": p.subject, "site": site, "cycle": c, "stage": "test", "reason": p.reason}
                       for p in reply.skipped]
            if reply.error:
                errors.append({"subject": "", "site": site, "cycle": c, "stage": "test", "reason": reply.error})
        if self.cfg.strict and any(e["subject"] for e in errors):
            bad = next(e for e in errors if e["subject"])
            raise BrokenScanError(f"unusable scan in cycle {c}: {bad['subject']}: {bad['reason']} "
                                  "(drop --strict / strict: false to skip and record such scans)")
        preds = pd.concat([r.scores for r in cycle.test.values()], ignore_index=True)
        t_write = time.perf_counter()
        atomic_write_csv(preds, self.arm_dir.predictions(c))
        append_csv(pd.DataFrame(rows), self.arm_dir.path / "train_log.csv")
        append_csv(pd.DataFrame(errors, columns=ERROR_COLUMNS), self.arm_dir.path / "errors.csv")
        if cycle.calibration is not None:
            append_csv(pd.DataFrame([{"cycle": c, **cycle.calibration}]), self.arm_dir.path / "calibration.csv")
        self.visitor.end_cycle(c)
        done = time.perf_counter()
        messages, self.sent = (self.counter.messages - self.sent, self.counter.messages) if self.counter else (0, 0)
        moved, self.bytes = (self.counter.state_bytes - self.bytes, self.counter.state_bytes) if self.counter else (0, 0)
        append_csv(pd.DataFrame([cycle_row(cycle, len(rows), messages, moved, done - t_write, done)]),
                   self.arm_dir.path / "cycles.csv")
        self.arm_dir.save_checkpoint(c, state, model=model_dict(self.cfg.model), visitor=self.visitor.snapshot(),
                                     calibration=cycle.calibration,
                                     strategy=self.schedule.snapshot() if self.schedule is not None else None)


def arm_sites(transport: Transport, arm: Arm, leave_out: dict[str, tuple[str, ...]]) -> list[str]:
    """Sites with at least one training scan the arm may train."""
    return sorted(s for s, i in transport.site_info().items() if set(i.train) - set(leave_out.get(s, ()))
                  and (arm.sites is None or s in arm.sites))


def run_arm(arm: Arm, transport: Transport, cfg: ExperimentConfig, run: RunDir, *, visitor: Visitor,
            leave_out: dict[str, tuple[str, ...]] | None = None, resume: bool = False,
            on_hop: HopCallback | None = None) -> State:
    """Train one arm to cycle C-1, committing a checkpoint per cycle; return the final state.

    With ``resume`` the arm continues after its last complete checkpoint; anything a
    killed run wrote beyond it (log rows, predictions) is discarded first. The strategy's
    rounds continue from the state the checkpoint they start from kept (a server
    optimiser's moments, FedBN's site layers), and so do the visitor's defences (the
    update norm check's window): the arm's own at a resume, the other arm's when it
    starts from one (it continues that arm's training).
    """
    arm_dir = run.arm(arm.name)
    done = arm_dir.last_checkpoint() if resume else None
    snapshot, kept, inherited = None, {}, None
    if done is not None:
        ckpt = load_checkpoint(arm_dir.checkpoint(done))
        state, first, snapshot, kept = ckpt["state"], done + 1, ckpt.get(VISITOR_KEY), ckpt.get("strategy", {})
    elif arm.start_from:
        src = run.arm(arm.start_from).checkpoint(arm.first_cycle - 1)
        if not src.is_file():
            raise UserError(f"arm {arm.name} starts from {src}, which does not exist")
        ckpt = load_checkpoint(src)
        state, first, kept, inherited = ckpt["state"], arm.first_cycle, ckpt.get("strategy", {}), ckpt.get(VISITOR_KEY)
    else:
        state, first = initial_state(cfg.model, cfg.train.seed), arm.first_cycle
    arm_dir.discard_from(first)
    visitor.begin(state, first, snapshot, inherited)
    info = transport.site_info()
    train = dataclasses.replace(cfg.train, cycles=arm.end(cfg.train.cycles) + 1)
    calibrate = None if cfg.calibration == REFERENCE_CALIBRATION else Calibrator(
        transport, cfg.calibration, cfg.defence.bn_pooling, cfg.defence.bn_clip, {s: i.n_val for s, i in info.items()})
    d = cfg.defence
    rounds = rounds_for(cfg.strategy, train, arm_sites(transport, arm, leave_out or {}), info,
                        Aggregator(d.aggregator, d.trim_beta, d.krum_f) if d.aggregator != "mean" else None)
    rounds.restore(kept)
    return train_cycles(transport, visitor, state, rounds=rounds, test_sites=sorted(s for s, i in info.items()
                                                                                    if i.n_test),
                        train=train, first_cycle=first, on_hop=on_hop or (lambda *_: None),
                        on_cycle=CycleRecorder(arm_dir, cfg, visitor, transport
                                               if isinstance(transport, CountingTransport) else None, rounds),
                        calibrate=calibrate, val_sites=sorted(s for s, i in info.items() if i.n_val),
                        meter=transport if isinstance(transport, CountingTransport) else None)


def ground_truth(cfg: ExperimentConfig) -> pd.DataFrame | None:
    """The manifest with its ``harm`` column, when the server has one (simulation); None in deployment."""
    if cfg.manifest is None:
        return None
    return load_manifest(cfg.manifest, check_images=False)


def write_detection(qc: QCArm, manifest: pd.DataFrame | None) -> None:
    """``detection.csv``: the QC arm scored against the ground truth, when there is one."""
    if manifest is not None and "harm" in manifest:
        atomic_write_csv(score_detection(manifest, qc.eliminated_table(), qc.pending_table()),
                         qc.folder / "detection.csv")


def check_trusted_sites(cfg: ExperimentConfig, transport: Transport, console: Console) -> None:
    """A trusted start needs its sites to exist; more than 2 sites or 10 % of the training scans is no longer
    the small curated subset the protocol means (a warning: the user may have reasons)."""
    if not any(a.name == TRUSTED for a in arms_for(cfg)):
        return
    info = transport.site_info()
    unknown = sorted(set(cfg.qc.trusted_sites) - set(info))
    if unknown:
        raise UserError(f"qc.trusted_sites: no such site(s): {unknown} (sites: {sorted(info)[:10]}...)")
    n_trusted = sum(len(info[s].train) for s in cfg.qc.trusted_sites)
    n_all = sum(len(i.train) for i in info.values())
    if not n_trusted:
        raise UserError(f"qc.trusted_sites: {list(cfg.qc.trusted_sites)} hold no training scans")
    if len(cfg.qc.trusted_sites) > 2 or n_trusted > 0.1 * n_all:
        console.print(f"[yellow]warning:[/] qc.trusted_sites hold {n_trusted} of {n_all} training scans in "
                      f"{len(cfg.qc.trusted_sites)} site(s): more than the protocol's 2 sites / 10 %")


def plain_visitor(cfg: ExperimentConfig, transport: Transport, arm: Arm, leave_out: dict[str, tuple[str, ...]],
                  counts: tuple[int, ...], oracle_val: dict[str, tuple[str, ...]]) -> PlainVisitor:
    """The visitor of an arm without QC, with the configured defences (:mod:`fedqc.strategies.defence`)."""
    d = cfg.defence
    return PlainVisitor(transport, cfg.train, leave_out, epochs=arm.epochs, class_counts=counts, val_sites=arm.sites,
                        val_leave_out=oracle_val if arm.oracle else {},
                        norm_check=UpdateNormCheck(d.update_norm, d.norm_window, d.norm_warmup) if d.update_norm
                        else None,
                        enrolled={s: i.train for s, i in transport.site_info().items()} if d.counts == "enrolment"
                        else None)


def run_experiment(cfg: ExperimentConfig, transport: Transport, out: Path, *, resume: bool = False,
                   quiet: bool = False) -> dict[str, float]:
    """Run every arm of ``cfg`` in order (clean first: the others start from it); return seconds per arm."""
    run = RunDir(out)
    # messages per cycle, in cycles.csv; every evaluation request fresh (a stale reply refused)
    transport = CountingTransport(FreshTransport(transport))
    console = Console(quiet=quiet, stderr=True)
    manifest = ground_truth(cfg)
    oracle, oracle_val = harmful_scans(manifest, "train"), harmful_scans(manifest, "val")
    if manifest is None and "clean" in cfg.arms:
        console.print("[yellow]warning:[/] the server has no manifest, so no ground truth: the clean arm trains "
                      "every scan the sites hold")
    check_trusted_sites(cfg, transport, console)
    counts = class_counts(transport.site_info()) if cfg.train.class_weights == "federation" else ()
    seconds: dict[str, float] = {}
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=quiet) as bar:
        for arm in arms_for(cfg):
            leave_out = oracle if arm.oracle else {}
            task = bar.add_task(arm.name, total=(arm.end(cfg.train.cycles) + 1 - arm.first_cycle)
                                                   * len(arm_sites(transport, arm, leave_out)))

            def on_hop(cycle: int, hop: int, site: str, outcome: Hop, task=task, name=arm.name) -> None:
                bar.update(task, advance=1, description=f"{name:5s} cycle {cycle:3d} {site:>16s} loss {outcome.loss:.3f}")

            t0 = time.perf_counter()
            qc = QCArm(transport, cfg, arm.name, run.arm(arm.name).path) if arm.qc else None
            visitor = qc or plain_visitor(cfg, transport, arm, leave_out, counts, oracle_val)
            run_arm(arm, transport, cfg, run, visitor=visitor, leave_out=leave_out, resume=resume, on_hop=on_hop)
            seconds[arm.name] = time.perf_counter() - t0
            if liars := lying_sites(cfg.manifest) if cfg.manifest is not None else {}:
                write_adversaries(run.arm(arm.name), liars, qc, manifest)
            if cfg.manifest is not None:
                write_backdoor(run.arm(arm.name), cfg.manifest)
            if qc:
                s = qc.summary()
                write_detection(qc, manifest)
                console.print(f"[bold]{arm.name}[/] ({s['criterion']}, {s['granularity']}): {s['verifications']} "
                              f"verifications in {s['verify_seconds']:.1f} s; {s['eliminated']} scans eliminated, "
                              f"{s['pending']} pending revisit")
    for name, s in seconds.items():
        for site, n in failing_sites(pd.read_csv(out / name / "train_log.csv"), cfg.failing_cycles).items():
            console.print(f"[yellow]warning:[/] {name}: site {site} failed in {n} consecutive cycles (train_log.csv)")
        errors = out / name / "errors.csv"
        n_bad = pd.read_csv(errors)["subject"].dropna().nunique() if errors.is_file() else 0
        console.print(f"[bold]{name}[/]: {s:.1f} s" + (f"; {n_bad} unusable scan(s) skipped, see {errors}" if n_bad else ""))
    return seconds


def inject_scenario(cfg: ExperimentConfig, run: RunDir, *, resume: bool) -> ExperimentConfig:
    """The config the run trains with: a ``scenario`` is injected into the manifest once, seeded by the training
    seed, into ``run.data`` (a resumed run keeps what was injected)."""
    trained = run.trained_config(cfg)
    if cfg.scenario is not None and not (resume and trained.manifest.is_file()):
        inject(cfg.manifest, Scenario.from_dict(cfg.scenario), run.data, seed=cfg.train.seed, overwrite=True)
    return trained


def resolve_model(cfg: ExperimentConfig, manifest: pd.DataFrame) -> ExperimentConfig:
    """``cfg`` with what ``model:`` leaves to the manifest filled in: ``targets``, the manifest's ``label_<name>``
    columns when the config lists none; ``bias_classes``, when an unlearning head needs them and the config lists
    none: a marker's absent and present, or the scanners or sites the manifest names (sorted)."""
    m = cfg.model
    if not m.targets:
        m = dataclasses.replace(m, targets=tuple(target_columns(manifest)))
    if m.unlearn != "none" and not m.bias_classes:
        if m.bias_target == "marker":
            classes = MARKER_CLASSES
        elif m.bias_target not in manifest:
            raise UserError(f"model.bias_target {m.bias_target}: the manifest has no {m.bias_target!r} column")
        else:
            classes = tuple(sorted(manifest[m.bias_target].astype(str).unique()))
        if len(classes) < 2:
            raise UserError(f"model.bias_target {m.bias_target}: the manifest names one ({classes[0]}); nothing to "
                            "unlearn")
        m = dataclasses.replace(m, bias_classes=classes)
    return dataclasses.replace(cfg, model=m)


def simulate(cfg: ExperimentConfig, out: Path, *, resume: bool = False, overwrite: bool = False,
             quiet: bool = False) -> None:
    """Prepare the run folder ``out`` and run ``cfg`` on its engine, on this machine."""
    import torch

    from fedqc.site.device import resolve as resolve_device

    if cfg.engine == "deployment":
        raise UserError("engine deployment runs on SuperNodes: use scripts/run_local_deployment.sh or "
                        "docker compose (docs/deployment.md), not simulate")
    run = RunDir(out)
    run.prepare(cfg, resume=resume, overwrite=overwrite)
    cfg = inject_scenario(cfg, run, resume=resume)
    cfg = resolve_model(cfg, load_manifest(cfg.manifest, check_images=False))
    liars = lying_sites(cfg.manifest)  # engine flower: the ClientApp wraps them itself (client_app._site)
    torch.set_num_threads(cfg.threads)
    resolve_device(cfg.device)  # a GPU asked for and absent stops here, not in every site
    if cfg.engine == "flower":
        from fedqc.transport.flower.simulation import run_on_simulation

        n_sites = load_manifest(cfg.manifest, check_images=False)["site"].nunique()
        run_on_simulation(cfg, lambda transport: run_experiment(cfg, transport, out, resume=resume, quiet=quiet),
                          n_sites=n_sites, quiet=quiet)
    else:
        from fedqc.transport.inprocess import InProcessTransport

        transport = InProcessTransport(load_manifest(cfg.manifest), cfg.model, device=cfg.device, data=cfg.data,
                                       deterministic=cfg.deterministic)
        honest = dict(transport.sites)
        for site, (attack, params) in liars.items():  # the simulated attack: the site's replies lie
            transport.sites[site] = Adversary(honest[site], attack, params, peers=honest)
        run_experiment(cfg, transport, out, resume=resume, quiet=quiet)
