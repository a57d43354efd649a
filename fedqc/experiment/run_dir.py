"""The run folder: one place that knows its layout.

``RUN/config.yaml`` (the resolved config), and per arm ``RUN/<arm>/``:
``checkpoints/cycle_NNN.pt`` (encoder, classifier and optimizer saved separately, the
cycle, the arm, the model spec, and the visitor's state under ``qc``),
``predictions/cycle_NNN.csv`` (test scores), ``train_log.csv``, ``errors.csv``,
``cycles.csv``, ``calibration.csv`` (when the config calibrates: each cycle's threshold
and BatchNorm pooling), and a QC arm's logs. A cycle is committed by its checkpoint, written
last; resuming discards whatever a killed run wrote after the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fedqc.config import ExperimentConfig, parse_config
from fedqc.config.schema import REFERENCE_CALIBRATION
from fedqc.errors import RunDirError, UserError
from fedqc.io import atomic_write, atomic_write_text, truncate_csv
from fedqc.protocol import EvalRequest, State

PARTS = ("encoder", "classifier", "bias", "optim")
CYCLE_LOGS = ("train_log.csv", "errors.csv", "cycles.csv", "calibration.csv")
# The checkpoint key of the arm's visitor's snapshot (:meth:`~fedqc.strategies.cycles.Visitor.snapshot`): a QC arm's
# policy, a plain arm's update norms. Named "qc" since fedqc 0.1, when only QC arms had one; kept, since another name
# would change the bytes of every checkpoint (and of the demo's, which stay bit-identical across refactors).
VISITOR_KEY = "qc"
FIXED_THRESHOLD = 0.5  # the reference's decision threshold: an arm that does not calibrate uses it


def cycle_name(cycle: int) -> str:
    return f"cycle_{cycle:03d}"


def cycle_of(path: Path) -> int:
    """The cycle of a ``cycle_NNN.*`` file."""
    return int(path.stem.split("_")[1])


class ArmDir:
    """The folder of one arm."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def name(self) -> str:
        return self.path.name

    def checkpoint(self, cycle: int) -> Path:
        return self.path / "checkpoints" / f"{cycle_name(cycle)}.pt"

    def predictions(self, cycle: int) -> Path:
        return self.path / "predictions" / f"{cycle_name(cycle)}.csv"

    def cycles(self, kind: str) -> list[int]:
        """Cycles with a file of ``kind`` (``checkpoints`` or ``predictions``)."""
        return sorted(cycle_of(p) for p in (self.path / kind).glob("cycle_*.*") if p.suffix in (".pt", ".csv"))

    def thresholds(self) -> dict[int, float]:
        """Per cycle, the decision threshold fitted on the verification scans (``calibration.csv``); cycles not
        listed use :data:`FIXED_THRESHOLD`."""
        path = self.path / "calibration.csv"
        if not path.is_file():
            return {}
        table = pd.read_csv(path)
        return dict(zip(table["cycle"].astype(int), table["threshold"].astype(float)))

    def threshold(self, cycle: int) -> float:
        return self.thresholds().get(cycle, FIXED_THRESHOLD)

    def last_checkpoint(self) -> int | None:
        cycles = self.cycles("checkpoints")
        return cycles[-1] if cycles else None

    def discard_from(self, first_cycle: int) -> None:
        """Drop log rows and predictions of ``first_cycle`` and later (what a killed run left behind)."""
        for name in CYCLE_LOGS:
            truncate_csv(self.path / name, lambda df: df[df["cycle"] < first_cycle])
        for cycle in self.cycles("predictions"):
            if cycle >= first_cycle:
                self.predictions(cycle).unlink()

    def save_checkpoint(self, cycle: int, state: State, *, model: dict, visitor: dict,
                        calibration: dict | None = None, strategy: dict | None = None) -> None:
        """Cycle ``cycle``'s checkpoint: the state by part, and what the visitor (``qc``), the calibration and the
        strategy's rounds (``strategy``: a server optimiser's state, FedBN's site layers) keep; empty ones omitted."""
        import torch

        parts: dict[str, dict] = {p: {} for p in PARTS}
        for key, value in state.items():
            part, rest = key.split(".", 1)
            parts[part][rest] = torch.from_numpy(np.array(value))
        parts = {p: v for p, v in parts.items() if v or p != "bias"}  # a model without a bias head stores none
        ckpt = {**parts, "cycle": cycle, "arm": self.name, "model": model, **({VISITOR_KEY: visitor} if visitor else {}),
                **({"calibration": calibration} if calibration else {}), **({"strategy": strategy} if strategy else {})}
        atomic_write(self.checkpoint(cycle), lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path: Path) -> dict:
    """A checkpoint with its arrays joined back into the travelling state under ``state``."""
    import torch

    ckpt = torch.load(path, weights_only=False)
    ckpt["state"] = {f"{p}.{k}": v.numpy() for p in PARTS for k, v in ckpt.get(p, {}).items()}
    return ckpt


def parse_snapshot(snapshot: str, *, source: str | Path = "config") -> ExperimentConfig:
    """A run folder's ``config.yaml``. Keys a later fedqc added take their defaults, except ``calibration``: a
    snapshot without it was run before calibration existed, i.e. with the reference behaviour."""
    data = yaml.safe_load(snapshot)
    if isinstance(data, dict) and "calibration" not in data:
        data = {**data, "calibration": dataclasses.asdict(REFERENCE_CALIBRATION)}
    return parse_config(data, source=source, check_files=False)


def _flat(d: dict, prefix: str = "") -> dict:
    """A nested mapping as ``{dotted key: value}``."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(snapshot: str, cfg: ExperimentConfig, *, source: str | Path = "config.yaml") -> list[str]:
    """The dotted keys whose value in a run folder's ``config.yaml`` (:func:`parse_snapshot`) differs from ``cfg``'s;
    ``["config.yaml"]`` when the snapshot cannot be read. Empty: a newer version that leaves the settings unchanged
    may resume the run."""
    try:
        old = _flat(parse_snapshot(snapshot, source=source).to_dict())
    except (UserError, yaml.YAMLError):
        return ["config.yaml"]
    new = _flat(cfg.to_dict())
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def _same_config(snapshot: str, cfg: ExperimentConfig, source: Path) -> bool:
    """Whether a run folder's ``config.yaml`` (at ``source``) resolves to ``cfg``."""
    return not config_differences(snapshot, cfg, source=source)


class RunDir:
    """A run folder ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def arm(self, name: str) -> ArmDir:
        return ArmDir(self.root / name)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        """Where a config's ``scenario`` is injected: ``manifest.csv``, corrupted images, ``scenario.yaml``."""
        return self.root / "data"

    def trained_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """``cfg`` as the run trains it: with a ``scenario``, on the harmed manifest under :attr:`data`."""
        if cfg.scenario is None:
            return cfg
        return dataclasses.replace(cfg, manifest=self.data / "manifest.csv", scenario=None)

    def prepare(self, cfg: ExperimentConfig, *, resume: bool, overwrite: bool, ignore: tuple[str, ...] = ()) -> None:
        """Create the folder with a snapshot of the resolved config; never clobber silently.

        Entries named in ``ignore`` (a launcher's ``.flwr``, ``logs`` and ``tls``) do not make it a used run folder.
        """
        snapshot = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        if self.root.exists() and any(p.name not in ignore for p in self.root.iterdir()):
            if resume:
                old = self.config.read_text() if self.config.is_file() else None
                if old is not None and not _same_config(old, cfg, self.config):
                    raise RunDirError(f"{self.root} was run with a different config; resume needs the same one")
            elif overwrite:
                shutil.rmtree(self.root)
            else:
                raise RunDirError(f"{self.root} already exists; pass --resume to continue it or --overwrite to "
                                  "replace it")
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(snapshot, self.config)


def predict_checkpoint(checkpoint: Path, manifest: pd.DataFrame, *, split: str = "test") -> pd.DataFrame:
    """Per-scan scores of one checkpoint on a manifest's ``split``, through the site logic."""
    from fedqc.config.schema import model_spec
    from fedqc.transport.inprocess import InProcessTransport

    ckpt = load_checkpoint(checkpoint)
    spec = model_spec(ckpt["model"])
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise UserError(f"manifest has no {split!r} rows to score")
    transport = InProcessTransport(rows, spec)
    replies = transport.evaluate(sorted(transport.sites), ckpt["state"], EvalRequest(split))
    return pd.concat([r.scores for r in replies.values()], ignore_index=True)
