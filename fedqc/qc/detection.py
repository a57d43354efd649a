"""Score a QC arm against the manifest's ground truth (the ``harm`` column) — simulation only.

Only training scans can be eliminated, so only they are scored. A harmful scan is
*eliminated* when QC eliminated it, *pending* when it was out of training awaiting a
revisit when training ended (flagged, not eliminated), and *missed* otherwise:
``harmful = eliminated + pending + missed``. Recall counts eliminations only. Harmful
scans are scored separately for **whole harmful sites** (every training scan of the
site is harmful) and **single scans** planted in good sites.

Lying sites (``adversarial.csv``, docs/threat-model.md) are scored per site by
:func:`score_adversaries` (``adversaries.csv``): which of them an arm named — refused an
update of — and with which check, beside how often it refused the honest sites' updates.
"""

from __future__ import annotations

import pandas as pd

from fedqc.protocol import FORM_REASONS
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


ADVERSARY_COLUMNS = ["site", "role", "updates", "refused", "refused_rate", "named", "checks", "eliminated"]


def check_name(criterion: str, note: str) -> str:
    """The check an update failed: a QC criterion, or for an update refused before verification (``invalid
    update``, or a plain arm's rejected hop) its reason up to the first colon (``update norm check``, ``stale reply
    (message freshness)``, ``missing arrays`` ...), or ``form check (<reason>)`` for an array that failed the form
    check."""
    if criterion and criterion != "invalid update":
        return criterion
    head, _, rest = str(note).partition(":")
    for reason in FORM_REASONS:  # check_update names the array first: the check is the form check
        if rest.strip().startswith(reason):
            return f"form check ({reason})"
    return head.strip() or "invalid update"


def score_adversaries(liars: dict[str, tuple[str, dict]], decisions: pd.DataFrame,
                      eliminated_sites: set[str] = frozenset(), harmful_sites: set[str] = frozenset()) -> pd.DataFrame:
    """Which sites an arm named — refused at least one update of — scored against the lying sites' ground truth.

    ``liars``: site → (attack, params) (``adversarial.csv``); ``decisions``: one row per update judged, columns
    ``site``, ``accepted`` (bool), ``criterion`` and ``note`` (a QC arm's ``qc_log.csv``, or a plain arm's
    ``train_log.csv`` rows with ``accepted = status == ok``). One row per lying site (role: its attack), per site
    a ``framing`` attack targets (role ``framed by <site>``: naming it is the attack's success), one ``honest`` row
    for the other sites together (refusals there are false alarms) and one ``honest, harmful data`` for those of
    them in ``harmful_sites`` (with harmful training scans: QC refusing them is its job); ``checks`` lists the
    checks failed, ``eliminated`` how many of the sites QC removed.
    """
    framed = {p.get("target"): site for site, (attack, p) in liars.items() if attack == "framing"}

    def role(site: str) -> str:
        return liars[site][0] if site in liars else f"framed by {framed[site]}" if site in framed else "honest"

    others = {s for s in decisions["site"].unique() if role(s) == "honest"}
    groups = {"honest": others - set(harmful_sites), "honest, harmful data": others & set(harmful_sites)}
    rows = []
    for name, sites in [*((s, {s}) for s in sorted(liars)), *((s, {s}) for s in sorted(set(framed) - set(liars))),
                        *groups.items()]:
        d = decisions[decisions["site"].isin(sites)]
        refused = d[~d["accepted"].astype(bool)]
        checks = sorted({check_name(str(c), str(n)) for c, n in zip(refused["criterion"].fillna(""),
                                                                     refused["note"].fillna(""))})
        rows.append({"site": f"{len(sites)} site(s)" if name in groups else name,
                     "role": name if name in groups else role(name), "updates": len(d),
                     "refused": len(refused), "refused_rate": ratio(len(refused), len(d)), "named": bool(len(refused)),
                     "checks": "; ".join(checks), "eliminated": len(sites & set(eliminated_sites))})
    return pd.DataFrame(rows, columns=ADVERSARY_COLUMNS)
