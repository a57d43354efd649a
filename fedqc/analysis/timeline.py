"""A QC arm's timeline: for every site and cycle, what QC did, from the arm's logs (``train_log.csv``,
``qc_log.csv``, ``flagged.csv``, ``revisits.csv``, ``eliminated.csv``, ``qc_summary.json``).

One state per site and cycle, the first that holds of:

- ``eliminated``: scans of the site (or the whole site) were eliminated in the cycle (the audit's in the arm's
  first cycle);
- ``flagged``: the site failed its site check, or scans of it were flagged (kept out until their revisit);
- ``held``: the site sat the cycle out, flagged in an earlier one and waiting for its revisit;
- ``revisited``: flagged scans of the site were tried again (accepted or not);
- ``could-not-judge``: the site trained but QC could not judge it: before the model showed skill (decisions wait, see
  docs/qc.md), or a site check without a statistic (e.g. a site with one class has no AUROC);
- ``trained``: the site trained and passed;
- ``out``: the site, or every training scan of it, was eliminated in an earlier cycle;
- ``absent``: no scans trained (not visited, or nothing to train).

The counts beside each state (scans flagged, revisited, eliminated) go in the cell's details and in
:func:`qc_counts`, the per-cycle totals that experiment tracking logs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

STATES = ("eliminated", "flagged", "held", "revisited", "could-not-judge", "trained", "out", "absent")
LEGEND = {"trained": "trained, passed QC", "could-not-judge": "trained, QC could not judge (no skill yet, or no statistic)",
          "flagged": "site check failed or scans flagged", "held": "flagged site waiting for its revisit",
          "revisited": "flagged scans tried again", "eliminated": "scans or the site eliminated",
          "out": "site (or all its training scans) eliminated earlier", "absent": "no scans trained"}


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame()


def _count(df: pd.DataFrame, column: str) -> dict[tuple[str, int], int]:
    if df.empty:
        return {}
    return {(str(s), int(c)): int(n) for (s, c), n in df.groupby(["site", column]).size().items()}


def qc_timeline(arm: Path) -> pd.DataFrame:
    """One row per site and cycle of the QC arm in folder ``arm``: ``state`` (:data:`STATES`), ``n_trained``,
    ``flagged``, ``revisited``, ``eliminated`` (scans), ``site_check`` (passed, failed, none) and ``detail`` (a
    sentence for the reader). Empty when the folder has no ``qc_log.csv`` (not a QC arm)."""
    if not (arm / "qc_log.csv").is_file():
        return pd.DataFrame()
    train, log = _read(arm / "train_log.csv"), _read(arm / "qc_log.csv")
    flagged, revisits, eliminated = (_read(arm / f) for f in ("flagged.csv", "revisits.csv", "eliminated.csv"))
    summary = json.loads((arm / "qc_summary.json").read_text()) if (arm / "qc_summary.json").is_file() else {}
    skill_cycle = summary.get("skill_cycle")
    cycles = sorted(set(train.get("cycle", [])) | set(log.get("cycle", [])))
    sites = sorted(set(train.get("site", [])) | set(log.get("site", [])) | set(eliminated.get("site", [])))
    if not cycles:
        return pd.DataFrame()
    elim = eliminated.copy()
    if not elim.empty:  # the audit eliminates before training: its scans count in the arm's first cycle
        elim["cycle_eliminated"] = elim["cycle_eliminated"].fillna(cycles[0]).clip(lower=cycles[0])
    n_flag, n_rev, n_elim = (_count(flagged, "cycle_flagged"), _count(revisits, "cycle_revisited"),
                             _count(elim, "cycle_eliminated"))
    site_log = log[log["scope"] == "site"] if "scope" in log else log
    rows = []
    for site in sites:
        gone_at = None  # the cycle the whole site was eliminated
        if not elim.empty:
            whole = elim[(elim["site"] == site) & (elim["stage"] == "site")]
            gone_at = int(whole["cycle_eliminated"].min()) if not whole.empty else None
        for c in cycles:
            hops = train[(train["site"] == site) & (train["cycle"] == c)] if not train.empty else train
            checks = site_log[(site_log["site"] == site) & (site_log["cycle"] == c)] if not site_log.empty else site_log
            statuses = set(hops["status"]) if "status" in hops else set()
            n_trained = int(hops.loc[hops["status"] == "ok", "n_scans"].sum()) if "status" in hops else 0
            failed = bool((~checks["accepted"].astype(bool)).any()) if not checks.empty else False
            unjudged = bool(checks["p_value"].isna().any()) if "p_value" in checks and not checks.empty else False
            f, r, e = n_flag.get((site, c), 0), n_rev.get((site, c), 0), n_elim.get((site, c), 0)
            if e:
                state = "eliminated"
            elif failed or f or "qc: site check failed" in statuses:
                state = "flagged"
            elif "qc: site flagged" in statuses:
                state = "held"
            elif r:
                state = "revisited"
            elif gone_at is not None and c > gone_at or "qc: site eliminated" in statuses:
                state = "out"
            elif n_trained and ((skill_cycle is None or c < skill_cycle) or unjudged):
                state = "could-not-judge"
            elif n_trained:
                state = "trained"
            elif any(c0 < c for (s0, c0) in n_elim if s0 == site):  # every training scan eliminated earlier
                state = "out"
            else:
                state = "absent"
            parts = [f"{n_trained} scans trained"] if n_trained else []
            parts += [f"{n} {what}" for n, what in ((f, "flagged"), (r, "revisited"), (e, "eliminated")) if n]
            if not checks.empty:
                parts.append("site check " + ("failed" if failed else "passed"))
            rows.append({"site": site, "cycle": c, "state": state, "n_trained": n_trained, "flagged": f,
                         "revisited": r, "eliminated": e,
                         "site_check": "none" if checks.empty else ("failed" if failed else "passed"),
                         "detail": f"{site}, cycle {c}: {LEGEND[state]}" + (f" ({', '.join(parts)})" if parts else "")})
    return pd.DataFrame(rows)


def qc_counts(timeline: pd.DataFrame) -> pd.DataFrame:
    """Per cycle: scans trained, flagged, revisited and eliminated, and sites in each state (``sites_<state>``)."""
    if timeline.empty:
        return pd.DataFrame()
    counts = timeline.groupby("cycle")[["n_trained", "flagged", "revisited", "eliminated"]].sum()
    states = timeline.pivot_table(index="cycle", columns="state", values="site", aggfunc="count", fill_value=0)
    states = states.reindex(columns=list(STATES), fill_value=0).add_prefix("sites_")
    return counts.join(states).reset_index()
