"""The audit stage: every site runs cheap image-level checks on its own train and val scans before a QC arm
trains; training scans that fail are eliminated (stage ``audit``), val scans that fail leave the verification set.

The checks themselves run at the site (:mod:`fedqc.data.image_checks`); only ids and reasons come back. The
audit is a stage of its own (``qc.audit``), so the model-based QC can be measured with and without it.
"""

from __future__ import annotations

import pandas as pd

from fedqc.errors import SiteError
from fedqc.qc.policy import QCPolicy
from fedqc.transport import Transport

AUDIT_COLUMNS = ["subject", "site", "split", "reason"]


def run_audit_stage(transport: Transport, policy: QCPolicy, sites: list[str], cycle: int) -> pd.DataFrame:
    """Audit ``sites``, apply the outcome to ``policy`` and return the ``audit.csv`` table."""
    rows = []
    for site in sites:
        try:
            findings = transport.check_images(site)
        except SiteError as exc:  # a site that cannot audit trains unaudited; recorded
            rows.append({"subject": "", "site": site, "split": "train", "reason": f"audit failed: {exc}"})
            continue
        rows += [{"subject": f.subject, "site": site, "split": f.split, "reason": f.reason} for f in findings]
    table = pd.DataFrame(rows, columns=AUDIT_COLUMNS).sort_values(["site", "subject"])
    for r in table[(table["split"] == "train") & (table["subject"] != "")].itertuples():
        policy.eliminate(r.subject, r.site, cycle, "audit")
    policy.drop_verification(list(table.loc[table["split"] == "val", "subject"]), cycle)
    return table
