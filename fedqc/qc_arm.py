"""A QC arm: how a visit trains when every update is verified, and what it writes.

Verification is a federated evaluation: the candidate goes to every site with ``val``
scans (optionally a seeded share ``qc.verify_fraction``), each returns per-scan scores,
and :class:`fedqc.qc.QCPolicy` decides. Rollback is free: the travelling state is a dict
of arrays, so a rejected update is simply not adopted, model and optimizer alike.
With the ``auroc`` criterion a visit starts with the site check instead: the site
scores the scans it would train, compared with the verification scans rescored by the
same model whenever an adopted update has changed it; before the first cycle every site
is screened (:meth:`QCRunner.screen`).

Granularity:

``batch`` (the reference, DESIGN §4)
    Verify after every training batch; on rejection roll back and retrain the batch's
    scans one at a time, verifying each; a scan that fails is flagged.
``hierarchical``
    Verify once per visit; only on rejection split the visit's scans in halves, then
    smaller, down to single scans (a halving search), so a clean visit costs one
    verification and one harmful scan in ``n`` costs about ``2·log2(n)``.

Revisits of flagged scans run first in a site's visit at cycle ``c + R``.
Outputs under ``DIR/<arm>/``: ``qc_log.csv``, ``flagged.csv``, ``revisits.csv``,
``eliminated.csv`` (and ``detection.csv`` from :mod:`fedqc.detection`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from fedqc.config import ExperimentConfig, QCConfig
from fedqc.io import append_csv, atomic_write_csv, truncate_csv
from fedqc.qc import QCPolicy, make_criterion
from fedqc.site import batches
from fedqc.state import State, check_update
from fedqc.travel import Arm, SiteError, Transport, hop_seed

ELIMINATED_COLUMNS = ["subject", "site", "cycle_flagged", "cycle_eliminated", "stage"]
REVISIT_COLUMNS = ["subject", "site", "cycle_flagged", "due", "cycle_revisited", "accepted"]
FLAG_COLUMNS = ["subject", "site", "cycle_flagged", "due"]
# Logs appended every cycle: file, QCPolicy list, the column that holds the cycle, fixed columns.
LOGS = (("qc_log.csv", "log", "cycle", None), ("revisits.csv", "revisits", "cycle_revisited", REVISIT_COLUMNS),
        ("flagged.csv", "flags", "cycle_flagged", FLAG_COLUMNS))


def halves(items: list) -> tuple[list, list]:
    mid = (len(items) + 1) // 2
    return items[:mid], items[mid:]


class QCRunner:
    """The :class:`fedqc.travel.ArmHooks` of a QC arm."""

    def __init__(self, transport: Transport, cfg: ExperimentConfig, arm: Arm, out: Path):
        self.transport, self.cfg, self.arm = transport, cfg, arm
        self.qc: QCConfig = cfg.qc_for(arm.name)
        self.dir = out / arm.name
        info = transport.site_info()
        self.val_sites = sorted(s for s, c in info.items() if c["val"] > 0)
        self.policy = QCPolicy(make_criterion(self.qc.criterion, tolerance=self.qc.tolerance, z=self.qc.z,
                                              alpha=self.qc.alpha),
                               train_counts={s: c["train"] for s, c in info.items()},
                               revisit_after=self.qc.revisit_after, leave_site_out=self.qc.leave_site_out,
                               untrusted_fraction=self.qc.untrusted_fraction)
        self.train_ids = {s: transport.train_subjects(s) for s, c in info.items() if c["train"] > 0}
        self.written = {name: 0 for name, *_ in LOGS}  # rows of each log already on disk
        self.verifications, self.verify_seconds = 0, 0.0
        self.val_problems: dict[tuple[str, str], str] = {}
        self.stale = False  # the model changed since the baseline's verification scores were taken
        self.checks_sites = self.policy.criterion.site_alpha is not None  # then updates are adopted unverified

    # ------------------------------------------------------------------ hooks
    def begin(self, state: State, first_cycle: int, checkpoint: dict | None) -> None:
        for name, _, column, _ in LOGS:
            truncate_csv(self.dir / name, lambda df, c=column: df[df[c] < first_cycle])
        if checkpoint is not None and "qc" in checkpoint:
            self.policy.restore(checkpoint["qc"])
            self.stale = True  # whether the last visit changed the model is not saved; rescoring is exact
            return
        self.policy.start(self._scores(state))
        if self.qc.audit:
            self.run_audit(first_cycle)
        if self.checks_sites:
            self.screen(state, first_cycle)

    def screen(self, state: State, cycle: int) -> None:
        """Check every site before the arm trains anything, until no further site fails.

        A flagged site's val scans leave the verification set, which can expose another
        harmful site that they had masked; the first check decides whether the model
        ever learns a site, so it must not depend on the order the sites come in.
        """
        def passes(site: str) -> bool:
            try:
                return self.check_site(site, state, cycle)
            except SiteError as exc:  # unchecked now: its visit checks it (or fails the hop)
                self.val_problems[("", site)] = f"site check at screening failed: {exc}"
                return True

        while True:
            sites = [s for s in sorted(self.train_ids) if s not in self.policy.flagged_sites]
            if all([passes(site) for site in sites]):  # a list: every site checked each round
                return

    def run_audit(self, cycle: int) -> None:
        """Eliminate training scans that fail the image audit; drop such val scans from verification."""
        sites = sorted(set(self.train_ids) | set(self.val_sites))
        rows = []
        for site in sites:
            try:
                flagged = self.transport.audit(site)
            except SiteError as exc:  # a site that cannot audit trains unaudited; recorded
                flagged = [("", "train", f"audit failed: {exc}")]
            rows += [{"subject": s, "site": site, "split": split, "reason": reason} for s, split, reason in flagged]
        table = pd.DataFrame(rows, columns=["subject", "site", "split", "reason"]).sort_values(["site", "subject"])
        for r in table[(table["split"] == "train") & (table["subject"] != "")].itertuples():
            self.policy.eliminate(r.subject, r.site, cycle, "audit")
        self.policy.drop_verification(list(table.loc[table["split"] == "val", "subject"]))
        atomic_write_csv(table, self.dir / "audit.csv")

    def end_cycle(self, cycle: int) -> None:
        for name, attr, _, columns in LOGS:
            rows = getattr(self.policy, attr)
            if len(rows) > self.written[name] or columns is not None:  # fixed columns: write the header too
                append_csv(pd.DataFrame(rows[self.written[name]:], columns=columns), self.dir / name)
            self.written[name] = len(rows)
        atomic_write_csv(self.eliminated_table(), self.dir / "eliminated.csv")

    def snapshot(self) -> dict:
        return self.policy.snapshot()

    def eliminated_table(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.policy.eliminated.values()), columns=ELIMINATED_COLUMNS)

    def flagged_table(self) -> pd.DataFrame:
        """Scans out of training at the end, awaiting a revisit: flagged ones and those of flagged sites."""
        rows = list(self.policy.flagged.values())
        rows += [{**flag, "subject": s} for site, flag in self.policy.flagged_sites.items()
                 for s in self.train_ids.get(site, []) if s not in self.policy.eliminated and s not in self.policy.flagged]
        return pd.DataFrame(rows, columns=FLAG_COLUMNS)

    # ------------------------------------------------------------------ verification
    def _scores(self, state: State) -> pd.DataFrame:
        request = {"split": "val", "fraction": self.qc.verify_fraction, "sample_seed": self.cfg.train.seed}
        results = self.transport.evaluate(self.val_sites, state, request)
        for site, r in results.items():  # reported with the visit in errors.csv
            self.val_problems.update({(s, site): reason for s, reason in r.skipped})
            if r.error:
                self.val_problems[("", site)] = r.error
        return pd.concat([r.scores for r in results.values()], ignore_index=True)

    def check_site(self, site: str, state: State, cycle: int) -> bool:
        """The site check (:meth:`fedqc.qc.QCPolicy.check_site`) on the scans this visit could train."""
        t = time.perf_counter()
        if self.stale:  # p-values compare one model's scores: the verification scans' must be this state's
            self.policy.rebase(self._scores(state))
            self.stale = False
        exclude = sorted(self.policy.excluded(site) - set(self.policy.due(site, cycle)))  # due revisits train now
        result = self.transport.evaluate([site], state, {"split": "train", "exclude": exclude})[site]
        if result.error:
            raise SiteError(result.error)
        self.val_problems.update({(s, site): reason for s, reason in result.skipped})
        seconds = time.perf_counter() - t
        ok = self.policy.check_site(result.scores, cycle=cycle, site=site, subjects=self.train_ids.get(site, []),
                                    seconds=seconds)
        self.verifications += 1
        self.verify_seconds += seconds
        return ok

    def visit(self, site: str, state: State, cycle: int, hop: int, lr: float) -> tuple[State, dict]:
        t0 = time.perf_counter()
        seeds = np.random.SeedSequence(hop_seed(self.cfg.train.seed, cycle, site))
        trained: list[tuple[int, float]] = []
        skipped: dict[str, str] = {}

        def attempt(state: State, subjects: list[str], scope: str) -> tuple[bool, State]:
            t = time.perf_counter()
            seed = int(seeds.spawn(1)[0].generate_state(1)[0])
            res = self.transport.train(site, state, {"lr": lr, "seed": seed, "batch_size": self.cfg.train.batch_size,
                                                     "subjects": subjects})
            skipped.update(res.skipped)
            if reason := check_update(state, res.state):  # never evaluated, never adopted
                self.policy.reject(cycle=cycle, site=site, scope=scope, subjects=subjects, reason=reason)
                return False, state
            if self.checks_sites:  # the site check has judged this visit's data
                trained.append((res.n_scans, res.loss))
                self.stale = True
                return True, res.state
            scores = self._scores(res.state)
            seconds = time.perf_counter() - t
            ok = self.policy.verify(scores, cycle=cycle, site=site, scope=scope, subjects=subjects,
                                    n_trained=res.n_scans, seconds=seconds)
            self.verifications += 1
            self.verify_seconds += seconds
            if ok:
                trained.append((res.n_scans, res.loss))
            return ok, (res.state if ok else state)

        def singles(state: State, subjects: list[str]) -> State:
            for s in subjects:
                ok, state = attempt(state, [s], "scan")
                if not ok:
                    self.policy.flag(s, site, cycle)
            return state

        def bisect(state: State, group: list[str]) -> State:
            for part in halves(group):
                if not part:
                    continue
                ok, state = attempt(state, part, "scan" if len(part) == 1 else "group")
                if not ok:
                    if len(part) == 1:
                        self.policy.flag(part[0], site, cycle)
                    else:
                        state = bisect(state, part)
            return state

        if self.checks_sites:
            if not self.policy.site_due(site, cycle):
                status = "qc: site eliminated" if site in self.policy.eliminated_sites else "qc: site flagged"
                return state, {"n_scans": 0, "loss": float("nan"), "seconds": 0.0, "status": status, "skipped": []}
            if not self.check_site(site, state, cycle):
                return state, {"n_scans": 0, "loss": float("nan"), "seconds": time.perf_counter() - t0,
                               "status": "qc: site check failed", "skipped": self.verification_problems()}
        revisited = self.policy.due(site, cycle)
        for s in revisited:
            ok, state = attempt(state, [s], "revisit")
            self.policy.revisit(s, cycle, ok)
        excluded = self.policy.excluded(site) | set(revisited)
        pool = [s for s in self.train_ids.get(site, []) if s not in excluded]
        pool = [pool[i] for i in np.random.default_rng(hop_seed(self.cfg.train.seed, cycle, site)).permutation(len(pool))]
        if pool and self.qc.granularity == "batch":
            for chunk in batches(pool, self.cfg.train.batch_size):
                ok, state = attempt(state, chunk, "batch")
                if not ok:
                    state = singles(state, chunk)
        elif pool:
            ok, state = attempt(state, pool, "visit")
            if not ok and len(pool) == 1:
                self.policy.flag(pool[0], site, cycle)
            elif not ok:
                state = bisect(state, pool)
        n = sum(k for k, _ in trained)
        loss = sum(k * v for k, v in trained) / n if n else float("nan")
        return state, {"n_scans": n, "loss": loss, "seconds": time.perf_counter() - t0, "status": "ok",
                       "skipped": sorted(skipped.items()) + self.verification_problems()}

    def verification_problems(self) -> list[tuple[str, str, str]]:
        """Unusable scans met while verifying since the last call, as errors.csv entries."""
        problems = [(s, f"{reason} (site {where})", "verification") for (s, where), reason in self.val_problems.items()]
        self.val_problems.clear()
        return problems
