"""A study's runs as Ray tasks: on this machine (``--parallel N``) or on a Ray cluster (``--ray-address``).

Each (sweep value, seed) run is one task holding ``threads`` CPUs (and ``gpus`` GPUs), writing only its own run
folder, and runs the in-process engine: Flower's simulation engine would start (or join) Ray from inside a
task, reserve CPUs the task already holds and shut Ray down in the worker when it ends (docs/decisions.md). The
engines give bit-identical weights, so a run's weights depend only on its config and thread count, not on where
it ran. A failing task is reported with its error; the others go on.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

from fedqc.config import ExperimentConfig
from fedqc.errors import UserError
from fedqc.experiment.study import StudyRun, check_recorded

OBJECT_STORE_BYTES = 256 * 2**20  # tasks pass configs and get nothing back: Ray's store stays small (minimum 75 MiB)


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Where tasks run: ``parallel`` runs at a time on a new local Ray instance, or the cluster at ``address``;
    ``threads`` CPUs per run; ``gpus`` GPUs per run (None: 1 when the runs' device may be a GPU and the cluster has
    one, else 0)."""

    parallel: int | None = None
    address: str | None = None
    threads: int = 1
    gpus: float | None = None

    def __post_init__(self):
        if (self.parallel is None) == (self.address is None):
            raise UserError("give one of --parallel N or --ray-address ADDRESS")
        if self.parallel is not None and self.parallel < 1:
            raise UserError(f"--parallel must be >= 1 (runs at a time), got {self.parallel}")
        if self.address is not None and not self.address.strip():
            raise UserError("--ray-address is empty: give HOST:PORT of the head node (`ray start --head`) or auto")
        if self.threads < 1:
            raise UserError(f"--threads-per-run must be >= 1, got {self.threads}")
        if self.gpus is not None and self.gpus < 0:
            raise UserError(f"--gpus-per-run must be >= 0, got {self.gpus}")


def for_tasks(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` as a task runs it: on the in-process engine (the same weights as Flower's simulation engine)."""
    return dataclasses.replace(cfg, engine="inprocess") if cfg.engine == "flower" else cfg


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a ``HOST:PORT`` (or ``ray://HOST:PORT``) where nothing answers: Ray itself waits minutes for it."""
    if address == "auto":
        return
    host, sep, port = address.split("://")[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"--ray-address: expected HOST:PORT of the head node (`ray start --head`) or auto, got "
                        f"{address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"--ray-address {address}: no Ray head node answers there ({exc.strerror or exc})") from None


@contextmanager
def ray_runtime(options: RayOptions) -> Iterator:
    """Ray started on this machine with ``parallel × threads`` CPUs and a capped object store, or connected to the
    cluster at ``address``; shut down (this process's part) on exit."""
    import ray

    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    if options.address is not None:
        check_reachable(options.address)
    try:
        with warnings.catch_warnings():  # Ray's notice that it may stop hiding GPUs from a task that holds none
            warnings.simplefilter("ignore", FutureWarning)
            if options.address is not None:
                ray.init(address=options.address, **quiet)
            else:  # "local": a new instance, never one another program started on this machine
                ray.init(address="local", num_cpus=options.parallel * options.threads, include_dashboard=False,
                         object_store_memory=OBJECT_STORE_BYTES, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"--ray-address {options.address}" if options.address else "--parallel"
        raise UserError(f"{where}: Ray did not start: {str(exc).strip().splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def gpus_per_run(runs: list[StudyRun], options: RayOptions, cluster_gpus: float) -> float:
    """GPUs a task holds (:class:`RayOptions`); a run that needs a GPU on a cluster with none is refused."""
    wants = {r.cfg.device for r in runs}
    if options.gpus is not None:
        gpus = options.gpus
    else:
        gpus = 1.0 if cluster_gpus and wants != {"cpu"} else 0.0
    if not cluster_gpus and (gpus > 0 or any(d.startswith("cuda") for d in wants)):
        raise UserError("the runs ask for a GPU (device or --gpus-per-run) and the Ray cluster has none")
    return gpus


def reason(exc: BaseException) -> str:
    """One line for a failed task: the run's own exception, not Ray's wrapper and traceback."""
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _run_task(run: StudyRun) -> float:
    t0 = time.perf_counter()
    run.run(quiet=True)
    return time.perf_counter() - t0


def run_on_ray(runs: list[StudyRun], options: RayOptions,
               on_run: Callable[[StudyRun, str, str], None] = lambda run, state, note: None) -> dict[StudyRun, str]:
    """Run every unfinished run of ``runs`` as a Ray task; return the failed ones with their error.

    ``on_run(run, state, note)`` reports ``done`` (kept), ``resumed`` or ``started`` when a task is submitted,
    and ``finished`` (note: its seconds) or ``failed`` (note: the error) as tasks end.
    """
    check_recorded(runs)
    failed: dict[StudyRun, str] = {}
    states = {r: r.state() for r in runs}
    for r in runs:
        if states[r] == "done":
            on_run(r, "done", "")
    todo = [r for r in runs if states[r] != "done"]
    if not todo:
        return failed
    with ray_runtime(options) as ray:
        gpus = gpus_per_run(todo, options, ray.cluster_resources().get("GPU", 0))
        task = ray.remote(_run_task).options(num_cpus=options.threads, num_gpus=gpus)
        pending = {}
        for r in todo:
            on_run(r, states[r], "")
            pending[task.remote(r)] = r
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            r = pending.pop(ref)
            try:
                on_run(r, "finished", f"{ray.get(ref):.0f} s")
            except Exception as exc:  # the run's error, or its worker lost: reported, the others go on
                failed[r] = reason(exc)
                on_run(r, "failed", failed[r])
    return failed
