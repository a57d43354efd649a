"""A site's SuperExec that starts each ClientApp by forking a warm process instead of a fresh interpreter.

Flower's SuperExec (``flower-superexec``) starts ``flwr-clientapp`` for every message:
a new interpreter that imports Flower, then fedqc's ClientApp imports torch, MONAI,
pandas and SimpleITK. Most of a deployment hop's overhead is that start-up. This
SuperExec is Flower's own (same loop, same Runtime API client, same task tokens), with
one change: its executor forks this process, which has imported Flower's ClientApp
runtime and the third-party modules fedqc's ClientApp needs once, and the child runs
Flower's ``flwr-clientapp`` entry point as the fresh process would. Each message still
runs in its own process, pulls its message, the run and the FAB, installs the FAB and
loads the ClientApp from it (fedqc's own modules are not kept warm: the code that runs is
the FAB's), and pushes its reply through the SuperNode's Runtime API with its own token;
only the interpreter start and the third-party imports are shared (copy-on-write). Task
types other than the ClientApp are started as Flower starts them. A forked ClientApp asks
again for a message object not yet at its SuperNode after 10 ms, not 1 s
(:mod:`fedqc.transport.flower.fast.pull_backoff`).

It leans on internals of flwr 1.41.0 (the executor factory that ``run_superexec`` calls,
the ``flwr-clientapp`` entry point): on any other version, or if they moved, it runs
Flower's stock SuperExec and says so.

    python -m fedqc.transport.flower.fast.superexec <flower-superexec arguments>
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from fedqc.transport.flower.fast import FLWR_VERSION, fits, pull_backoff

# third-party modules a site's work imports on first use (Adam imports torch._dynamo; images, audits, metrics)
WARM_MODULES = ("torch._dynamo", "monai.transforms", "monai.networks.nets", "nibabel", "SimpleITK", "scipy.ndimage",
                "scipy.fft", "scipy.optimize", "scipy.stats", "sklearn.metrics", "sklearn.linear_model")


def _reap() -> None:
    """Collect the exit status of finished ClientApp children (no zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _warm_up() -> None:
    """Import fedqc's ClientApp for the third-party modules it pulls in (torch, MONAI, pandas), and
    :data:`WARM_MODULES`, then forget fedqc's own modules: each ClientApp imports them from its FAB, as under
    Flower's SuperExec. Imports only: no torch operation runs here, so no thread pool exists to fork."""
    import fedqc.transport.flower.client_app  # noqa: F401

    for module in WARM_MODULES:
        importlib.import_module(module)
    for name in [m for m in sys.modules if m.partition(".")[0] == "fedqc"]:
        del sys.modules[name]


def warm_executor_class():
    """Flower's subprocess executor, forking for ClientApp tasks; None where this flwr lacks what it needs."""
    from flwr.supercore.exit import exit_handler
    from flwr.supercore.superexec import run_superexec as superexec
    from flwr.supercore.superexec.executor import subprocess_executor

    if not fits() or not hasattr(superexec, "get_executor") \
            or not hasattr(subprocess_executor, "SubprocessExecutor") \
            or not isinstance(getattr(exit_handler, "registered_exit_handlers", None), list):
        return None
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

    # the module (the package exports a function of the same name)
    entry_point = importlib.import_module("flwr.supernode.cli.flwr_clientapp")
    if not pull_backoff.shorten(importlib.import_module("flwr.supernode.runtime.run_clientapp"),
                                "pull_and_inflate_object_from_tree"):
        return None

    class WarmExecutor(subprocess_executor.SubprocessExecutor):
        """Fork a warm child per ClientApp task; start other task types as Flower does."""

        def launch(self, spec: ExecutionSpec) -> LaunchResult:
            if spec.task_type != TaskType.CLIENT_APP or spec.runtime_dependency_install:
                return super().launch(spec)
            args = ["flwr-clientapp", "--runtime-api-address", spec.runtime_api_address, "--token", spec.token]
            if spec.insecure:
                args.append("--insecure")
            elif spec.root_certificates_path is not None:
                args += ["--root-certificates", spec.root_certificates_path]
            if spec.parent_pid is not None:
                args += ["--parent-pid", str(spec.parent_pid)]
            pid = os.fork()
            if pid:
                return LaunchResult.accepted()
            code = 1
            try:  # the child: Flower's flwr-clientapp, argv and all (its logs and tools see that program)
                exit_handler.registered_exit_handlers.clear()  # the SuperExec's, not this process's to run
                sys.argv = args
                entry_point.flwr_clientapp()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - the child never returns into the SuperExec's loop
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)

        def reconcile(self) -> None:
            _reap()

    return WarmExecutor


def main() -> None:
    from flwr.supercore.cli.flower_superexec import flower_superexec
    from flwr.supercore.superexec import run_superexec as superexec

    executor = warm_executor_class()
    if executor is None:
        import flwr

        print(f"warm SuperExec: written for flwr {FLWR_VERSION}, found {flwr.__version__}: "
              "running Flower's stock SuperExec", file=sys.stderr)
    else:
        _warm_up()
        superexec.get_executor = lambda *args, **kwargs: executor()
    sys.argv[0] = "flower-superexec"
    flower_superexec()


if __name__ == "__main__":
    main()
