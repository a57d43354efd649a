"""A QC arm's files: ``qc_log.csv``, ``revisits.csv``, ``flagged.csv`` and ``qc_events.csv`` (appended each cycle),
``eliminated.csv`` and ``scan_issues.csv`` (one row per scan: its last per-scan check — scores, issues, decision and
stage). ``qc_events.csv`` is the policy's event log (:mod:`fedqc.qc.ledger`); ``flagged.csv`` and ``revisits.csv``
are views of it, in the columns fedqc 0.1 wrote."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedqc.io import append_csv, atomic_write_csv, truncate_csv
from fedqc.qc.ledger import EVENT_COLUMNS
from fedqc.qc.policy import QCPolicy
from fedqc.qc.scans import SCAN_ISSUES

ELIMINATED_COLUMNS = ["subject", "site", "cycle_flagged", "cycle_eliminated", "stage"]
REVISIT_COLUMNS = ["subject", "site", "cycle_flagged", "due", "cycle_revisited", "accepted"]
FLAG_COLUMNS = ["subject", "site", "cycle_flagged", "due"]
EVENTS = "qc_events.csv"
EVENT_DTYPES = {"cycle_flagged": "Int64", "due": "Int64"}  # a flag's columns: empty in other events
# file, the QCPolicy list it holds, the column with the cycle, fixed columns (None: whatever the rows hold)
LOGS = (("qc_log.csv", "log", "cycle", None), ("revisits.csv", "revisits", "cycle_revisited", REVISIT_COLUMNS),
        ("flagged.csv", "flags", "cycle_flagged", FLAG_COLUMNS), (EVENTS, "events", "cycle", EVENT_COLUMNS))


class QCLogs:
    """Appends the policy's new log rows at the end of every cycle; on resume, drops rows of later cycles."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written = {name: 0 for name, *_ in LOGS}  # rows of each log already on disk

    def truncate(self, first_cycle: int) -> None:
        for name, _, column, _ in LOGS:
            if name == EVENTS:
                _append_events(pd.DataFrame(columns=EVENT_COLUMNS), self.folder / name, before=first_cycle)
            else:
                truncate_csv(self.folder / name, lambda df, c=column: df[df[c] < first_cycle])

    def write(self, policy: QCPolicy) -> None:
        for name, attr, _, columns in LOGS:
            rows = getattr(policy, attr)
            if len(rows) > self.written[name] or columns is not None:  # fixed columns: write the header too
                append = _append_events if name == EVENTS else append_csv
                append(pd.DataFrame(rows[self.written[name]:], columns=columns), self.folder / name)
            self.written[name] = len(rows)
        atomic_write_csv(eliminated_table(policy), self.folder / "eliminated.csv")
        atomic_write_csv(scan_issue_table(policy).sort_values(["site", "subject"]), self.folder / "scan_issues.csv")


def _append_events(rows: pd.DataFrame, path: Path, *, before: int | None = None) -> None:
    """Append events to ``qc_events.csv``, keeping only its rows of cycles ``before`` a given one; its integer
    columns with gaps stay integers (:func:`~fedqc.io.append_csv` would read them back as floats)."""
    if path.is_file() and path.stat().st_size:
        old = pd.read_csv(path, dtype=EVENT_DTYPES)
        old = old[old["cycle"] < before] if before is not None else old
        rows = pd.concat([old, rows.astype(EVENT_DTYPES)], ignore_index=True) if len(rows) else old
    elif before is not None:
        return
    atomic_write_csv(rows.astype(EVENT_DTYPES), path)


def scan_issue_columns() -> list[str]:
    """``scan_issues.csv``'s columns: the scan, when and where it was checked, every registered per-scan check's
    score and flag (:data:`~fedqc.qc.scans.SCAN_ISSUES`), the decision."""
    return ["subject", "site", "cycle", "stage", *SCAN_ISSUES.columns(), "decision"]


def scan_issue_table(policy: QCPolicy) -> pd.DataFrame:
    return pd.DataFrame(list(policy.scan_issues.values()), columns=scan_issue_columns())


def scan_issue_counts(policy: QCPolicy) -> dict[str, int]:
    """``qc_summary.json``'s ``scan_issues``: issues per check, scans checked, scans per decision."""
    issues = scan_issue_table(policy)
    return {**SCAN_ISSUES.counts(issues), "scans_checked": len(issues),
            **{f"decision_{k}": int(v) for k, v in issues["decision"].value_counts().items()}}


def eliminated_table(policy: QCPolicy) -> pd.DataFrame:
    return pd.DataFrame(list(policy.eliminated.values()), columns=ELIMINATED_COLUMNS)


def pending_table(policy: QCPolicy, train_ids: dict[str, list[str]]) -> pd.DataFrame:
    """Scans out of training at the end, awaiting a revisit: flagged ones and those of flagged sites."""
    flagged, eliminated = policy.flagged, policy.eliminated
    rows = list(flagged.values())
    rows += [{**flag, "subject": s} for site, flag in policy.flagged_sites.items()
             for s in train_ids.get(site, []) if s not in eliminated and s not in flagged]
    return pd.DataFrame(rows, columns=FLAG_COLUMNS)
