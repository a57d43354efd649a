"""What a run with lying sites writes per arm (simulation only; docs/threat-model.md): ``adversaries.csv``, which
lying sites the arm named and with which checks, and ``backdoor.json``, a backdoor's success on its triggered test
scans."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fedqc.data.inject import TRIGGERED
from fedqc.data.manifest import load_manifest
from fedqc.experiment.run_dir import ArmDir, predict_checkpoint
from fedqc.io import atomic_write_csv, atomic_write_text
from fedqc.qc.arm import QCArm
from fedqc.qc.detection import score_adversaries
from fedqc.strategies.cycles import HopStatus

DECISION_COLUMNS = ["site", "accepted", "criterion", "note"]  # what score_adversaries reads of a QC log


def write_adversaries(arm_dir: ArmDir, liars: dict[str, tuple[str, dict]], qc: QCArm | None,
                      manifest: pd.DataFrame | None) -> None:
    """``adversaries.csv``: which lying sites the arm named, with the checks they failed
    (:func:`~fedqc.qc.detection.score_adversaries`): a QC arm's decisions are its ``qc_log.csv``; a plain arm's its
    hops that got a reply (``train_log.csv``: ok or rejected). The other sites are split by the ``manifest``'s
    ground truth: with harmful training scans or without."""
    if qc is not None:  # a log where no check refused a reply has no note column
        path = qc.folder / "qc_log.csv"
        decisions = (pd.read_csv(path) if path.is_file() else pd.DataFrame()).reindex(columns=DECISION_COLUMNS)
        eliminated = set(qc.policy.eliminated_sites)
    else:
        log = pd.read_csv(arm_dir.path / "train_log.csv")
        log = log[log["status"].isin([HopStatus.OK.value, HopStatus.REJECTED.value])]
        decisions = log.assign(accepted=log["status"] == HopStatus.OK.value, criterion="")
        eliminated = set()
    harmful = set() if manifest is None or "harm" not in manifest else \
        set(manifest.loc[(manifest["split"] == "train") & (manifest["harm"] != "none"), "site"])
    atomic_write_csv(score_adversaries(liars, decisions, eliminated, harmful), arm_dir.path / "adversaries.csv")


def write_backdoor(arm_dir: ArmDir, manifest: Path) -> None:
    """``backdoor.json``, when the manifest has a backdoor's ``triggered.csv``: of its test scans (the other label,
    trigger planted), the share the arm's last model assigns the backdoor's label at the cycle's threshold — the
    attack's success — beside the share of the same scans without the trigger (the run's own test predictions)."""
    path, cycle = Path(manifest).parent / TRIGGERED, arm_dir.last_checkpoint()
    if not path.is_file() or cycle is None:
        return
    triggered = load_manifest(path)
    label = int(json.loads(triggered["marker_detail"].iloc[0]).get("label", 1)) if len(triggered) else 1
    threshold = arm_dir.threshold(cycle)
    scores = predict_checkpoint(arm_dir.checkpoint(cycle), triggered)
    clean = pd.read_csv(arm_dir.predictions(cycle))
    clean = clean[clean["subject"].isin(triggered["subject"])]

    def target_share(s: pd.Series) -> float:
        return float(((s >= threshold) == bool(label)).mean()) if len(s) else float("nan")

    atomic_write_text(json.dumps({"cycle": cycle, "label": label, "threshold": threshold, "triggered": len(scores),
                                  "attack_success": target_share(scores["score"]),
                                  "clean_rate": target_share(clean["score"])}, indent=1), arm_dir.path / "backdoor.json")
