"""The package's shape: layers import only downwards, no import cycle, light entry points."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fedqc"
# lowest first; a module may import its own layer and the layers before it
LAYERS = [("fedqc.errors", "fedqc.scoring", "fedqc.io"), ("fedqc.protocol",), ("fedqc.config",), ("fedqc.data",),
          ("fedqc.models",), ("fedqc.site",), ("fedqc.transport",), ("fedqc.strategies",), ("fedqc.qc",),
          ("fedqc.experiment",), ("fedqc.analysis",), ("fedqc.cli", "fedqc.simulate", "fedqc.__main__", "fedqc.api")]
HEAVY = ("torch", "monai", "SimpleITK", "flwr")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """fedqc modules imported anywhere in ``path`` (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fedqc")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedqc"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return found & known


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def layer(module: str) -> int:
    if module == "fedqc":  # the package's __init__: the API's lazy re-exports (fedqc.run, fedqc.load_run, ...)
        return len(LAYERS) - 1
    return next(i for i, names in enumerate(LAYERS) if any(module == n or module.startswith(n + ".") for n in names))


def test_every_module_has_a_layer_and_imports_only_downwards():
    wrong = [f"{m} -> {d}" for m, deps in graph().items() for d in deps
             if d != "fedqc" and layer(d) > layer(m)]
    assert not wrong, "upward imports:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                return path + [m, d]
            if d not in state and (cycle := visit(d, path + [m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            cycle = visit(m, [])
            assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("code", ["import fedqc.config; fedqc.config.load_config",
                                  "import fedqc; fedqc.run, fedqc.study, fedqc.load_run, fedqc.RunResult",
                                  "import sys; sys.argv = ['fedqc', '--help']\n"
                                  "from fedqc.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass"])
def test_config_help_and_api_import_no_heavy_library(code):
    probe = code + f"\nimport sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
