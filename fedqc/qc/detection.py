"""Score a QC arm against the manifest's ground truth (the ``harm`` column) — simulation only.

Only training scans can be eliminated, so only they are scored. A harmful scan is
*eliminated* when QC eliminated it, *pending* when it was out of training awaiting a
revisit when training ended (flagged, not eliminated), and *missed* otherwise:
``harmful = eliminated + pending + missed``. Recall counts eliminations only. Harmful
scans are scored separately for **whole harmful sites** (every training scan of the
site is harmful) and **single scans** planted in good sites.
"""

from __future__ import annotations

import pandas as pd

from fedqc.scoring import ratio

COLUMNS = ["level", "name", "scope", "harmful", "eliminated", "pending", "missed", "recall",
           "good", "good_eliminated", "good_eliminated_rate", "good_pending", "precision"]


def score_detection(manifest: pd.DataFrame, eliminated: pd.DataFrame, pending: pd.DataFrame) -> pd.DataFrame:
    """One row per harm kind and scope, one per scope, one ``overall``, one per site."""
    train = manifest[manifest["split"] == "train"].copy()
    whole = train.groupby("site")["harm"].transform(lambda h: (h != "none").all())
    train["scope"] = ["whole-site" if w else "single-scan" for w in whole]
    train["eliminated"] = train["subject"].isin(eliminated["subject"])
    train["pending"] = train["subject"].isin(pending["subject"]) & ~train["eliminated"]
    train["harmful"] = train["harm"] != "none"

    def row(level: str, name: str, scope: str, t: pd.DataFrame) -> dict:
        bad, good = t[t["harmful"]], t[~t["harmful"]]
        n_elim, n_pending, n_good_elim = int(bad["eliminated"].sum()), int(bad["pending"].sum()), int(good["eliminated"].sum())
        return {"level": level, "name": name, "scope": scope, "harmful": len(bad), "eliminated": n_elim,
                "pending": n_pending, "missed": len(bad) - n_elim - n_pending,
                "recall": ratio(n_elim, len(bad)), "good": len(good), "good_eliminated": n_good_elim,
                "good_eliminated_rate": ratio(n_good_elim, len(good)), "good_pending": int(good["pending"].sum()),
                "precision": ratio(n_elim, n_elim + n_good_elim)}

    rows = [row("kind", kind, scope, t) for (scope, kind), t in train[train["harmful"]].groupby(["scope", "harm"], sort=True)]
    rows += [row("scope", scope, scope, train[train["scope"] == scope]) for scope in ("whole-site", "single-scan")
             if (train["scope"] == scope).any()]
    rows.append(row("overall", "all", "all", train))
    rows += [row("site", site, str(t["scope"].iloc[0]), t) for site, t in train.groupby("site", sort=True)]
    return pd.DataFrame(rows, columns=COLUMNS)
