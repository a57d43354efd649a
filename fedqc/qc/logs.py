"""A QC arm's files: ``qc_log.csv``, ``revisits.csv``, ``flagged.csv``, ``qc_events.csv`` and ``qc_decisions.csv``
(appended each cycle), ``eliminated.csv`` and ``scan_issues.csv`` (one row per scan: its last per-scan check —
scores, issues, decision and stage). ``qc_events.csv`` is the policy's event log (:mod:`fedqc.qc.ledger`);
``flagged.csv`` and ``revisits.csv`` are views of it, in the columns fedqc 0.1 wrote. ``qc_decisions.csv`` says, per
cycle, what QC could decide: whether it was deciding (the model's skill), how many scans it judged out of sample,
how many the model trained before any per-scan check could judge them, and which sites it checked without
evidence (:func:`decision_row`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedqc.io import append_csv, atomic_write_csv, truncate_csv
from fedqc.qc.ledger import EVENT_COLUMNS, Event
from fedqc.qc.policy import QCPolicy
from fedqc.qc.scans import SCAN_ISSUES

ELIMINATED_COLUMNS = ["subject", "site", "cycle_flagged", "cycle_eliminated", "stage"]
REVISIT_COLUMNS = ["subject", "site", "cycle_flagged", "due", "cycle_revisited", "accepted"]
FLAG_COLUMNS = ["subject", "site", "cycle_flagged", "due"]
EVENTS = "qc_events.csv"
DECISIONS = "qc_decisions.csv"
DECISION_COLUMNS = ["cycle", "deciding", "skill", "sites_checked", "sites_without_evidence", "scans_judged",
                    "scans_trained_unjudged", "scans_untrained"]
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
        truncate_csv(self.folder / DECISIONS, lambda df: df[df["cycle"] < first_cycle])
        for name, _, column, _ in LOGS:
            if name == EVENTS:
                _append_events(pd.DataFrame(columns=EVENT_COLUMNS), self.folder / name, before=first_cycle)
            else:
                truncate_csv(self.folder / name, lambda df, c=column: df[df[c] < first_cycle])

    def write(self, policy: QCPolicy, decisions: dict | None = None) -> None:
        """Append the policy's new rows (and ``decisions``, this cycle's :func:`decision_row`); rewrite the tables."""
        if decisions is not None:
            append_csv(pd.DataFrame([decisions], columns=DECISION_COLUMNS), self.folder / DECISIONS)
        for name, attr, _, columns in LOGS:
            rows = getattr(policy, attr)
            if len(rows) > self.written[name] or columns is not None:  # fixed columns: write the header too
                append = _append_events if name == EVENTS else append_csv
                append(pd.DataFrame(rows[self.written[name]:], columns=columns), self.folder / name)
            self.written[name] = len(rows)
        atomic_write_csv(eliminated_table(policy), self.folder / "eliminated.csv")
        atomic_write_csv(scan_issue_table(policy).sort_values(["site", "subject"]), self.folder / "scan_issues.csv")


def decision_row(policy: QCPolicy, cycle: int, *, deciding: bool) -> dict:
    """``qc_decisions.csv``'s row of ``cycle``, at its end (the policy holds this process's rows of the cycle).

    ``deciding``: the gate made decisions (a site check waits for the model's skill); ``skill``: the verification
    scans' median within-site AUROC under the last baseline (:func:`~fedqc.qc.stats.skill`); ``sites_checked``:
    site checks made; ``sites_without_evidence``: the sites whose checks had no evidence (a one-class site's
    ranking, no label-issue test), ``;``-joined — passed, not judged; ``scans_judged``: per-scan checks made, every
    one on a scan the model had not trained on; ``scans_trained_unjudged``: scans the model trained on for the
    first time without a per-scan check before (none can judge them out of sample any more);
    ``scans_untrained``: training scans still out of sample at the cycle's end.
    """
    checks = [r for r in policy.log if r["cycle"] == cycle and r["scope"] == "site"]
    no_evidence = sorted({r["site"] for r in checks} - {r["site"] for r in checks if r["judged"]})
    trained = {e["subject"] for e in policy.events if e["cycle"] == cycle and e["event"] == Event.TRAINED.value}
    return {"cycle": cycle, "deciding": deciding, "skill": round(policy.skill(), 4), "sites_checked": len(checks),
            "sites_without_evidence": ";".join(no_evidence), "scans_judged": policy.scans_judged[cycle],
            "scans_trained_unjudged": len(trained - set(policy.scan_issues)), "scans_untrained": len(policy.fresh)}


def decision_summary(folder: Path, log: pd.DataFrame) -> dict:
    """``qc_summary.json``'s account of what QC could decide, over the whole run (its ``qc_decisions.csv`` and
    ``log``, its ``qc_log.csv``): cycles deciding, per-scan checks (all out of sample; a revisit judges a scan
    again), scans trained unjudged, and the sites every check of which had no evidence (checked, never judged)."""
    decisions = pd.read_csv(folder / DECISIONS) if (folder / DECISIONS).is_file() else pd.DataFrame(
        columns=DECISION_COLUMNS)
    never: list[str] = []
    if "judged" in log.columns:
        sites = log[log["scope"] == "site"]
        never = sorted(site for site, judged in sites.groupby("site")["judged"] if not judged.astype(bool).any())
    return {"cycles_deciding": int(decisions["deciding"].astype(bool).sum()),
            "scans_judged": int(decisions["scans_judged"].sum()),
            "scans_trained_unjudged": int(decisions["scans_trained_unjudged"].sum()), "sites_never_judged": never}


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
