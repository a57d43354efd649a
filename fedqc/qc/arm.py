"""A QC arm: how a visit trains when QC judges what the model learns, and what the arm writes.

A visit first asks its gate whether the site may train — :class:`~fedqc.qc.screening.SiteScreening`
checks the site's data, :class:`~fedqc.qc.verification.UpdateVerification` lets every
site train and verifies each update instead. Then the site's flagged scans due for a
revisit are retrained alone, and the rest of its pool is trained with the configured
granularity (:mod:`fedqc.qc.search`), each attempt judged by the gate.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from fedqc.config import ExperimentConfig
from fedqc.io import atomic_write_csv, atomic_write_text
from fedqc.protocol import ScanProblem, State, class_counts
from fedqc.qc.audit_stage import run_audit_stage
from fedqc.qc.criteria import SITE_CHECKS, UPDATE_CRITERIA
from fedqc.qc.gate import Gate, QCStatus, Update, VerificationScans
from fedqc.qc.logs import QCLogs, decision_row, decision_summary, eliminated_table, pending_table, scan_issue_counts
from fedqc.qc.policy import QCPolicy
from fedqc.qc.screening import SiteScreening
from fedqc.qc.search import SEARCHES
from fedqc.qc.verification import UpdateVerification
from fedqc.strategies.cycles import ONE_EPOCH, Hop, Local, hop_seed, train_request
from fedqc.strategies.defence import UpdateNormCheck, refusal
from fedqc.transport import Transport

HOLDOUT_STREAM = 1  # keeps the held-out draw apart from the visits' seeds (fedqc.strategies.cycles.hop_seed)


class QCArm:
    """The :class:`~fedqc.strategies.travelling.Visitor` of a QC arm named ``arm`` writing into ``folder``."""

    def __init__(self, transport: Transport, cfg: ExperimentConfig, arm: str, folder: Path):
        self.transport, self.cfg, self.name, self.folder = transport, cfg, arm, folder
        self.qc = cfg.qc_for(arm)
        info = transport.site_info()
        self.train_ids = {s: list(i.train) for s, i in info.items() if i.train}
        self.class_counts = class_counts(info) if cfg.train.class_weights == "federation" else ()
        self.policy = QCPolicy(train_counts={s: len(i.train) for s, i in info.items()},
                               revisit_after=self.qc.revisit_after, leave_site_out=self.qc.leave_site_out,
                               untrusted_fraction=self.qc.untrusted_fraction)
        self.scans = VerificationScans(transport, sorted(s for s, i in info.items() if i.n_val),
                                       fraction=self.qc.verify_fraction, seed=cfg.train.seed)
        self.gate: Gate
        if self.qc.criterion in SITE_CHECKS:
            self.gate = SiteScreening(SITE_CHECKS[self.qc.criterion].from_config(self.qc), self.policy, self.scans,
                                      transport, self.train_ids, checks=self.qc.scans, skill=self.qc.skill,
                                      ood_limit=self.qc.ood_limit)
        else:
            self.gate = UpdateVerification(UPDATE_CRITERIA[self.qc.criterion].from_config(self.qc), self.policy,
                                           self.scans)
        self.search = SEARCHES[self.qc.granularity]
        self.trusted = set(self.qc.trusted_sites) if self.qc.start == "trusted" else set()  # trained: not fresh
        self.held_out = held_out({s: ids for s, ids in self.train_ids.items() if s not in self.trusted},
                                 self.qc.holdout, cfg.train.seed)
        self.logs = QCLogs(folder)
        self.setup_seconds = 0.0  # the audit and the screening, before the first cycle
        d = cfg.defence  # an update far larger than the recent ones is rejected before it is verified
        self.norm_check = UpdateNormCheck(d.update_norm, d.norm_window, d.norm_warmup) if d.update_norm else None

    @property
    def verifications(self) -> int:
        """Site checks and update verifications made by this process (the logs hold every run's)."""
        return self.gate.verifications

    # ------------------------------------------------------------------ Visitor
    def begin(self, state: State, first_cycle: int, checkpoint: dict | None, inherited: dict | None = None) -> None:
        self.logs.truncate(first_cycle)
        if checkpoint:
            self.policy.restore(checkpoint)
            self.setup_seconds = checkpoint.get("setup_seconds", 0.0)  # absent from checkpoints of fedqc 0.1
            if self.norm_check is not None:
                self.norm_check.restore(checkpoint.get("update_norms", []))
            self.gate.resumed()
            return
        if self.norm_check is not None and inherited:
            self.norm_check.restore(inherited.get("update_norms", []))
        t0 = time.perf_counter()
        self.policy.start(self.scans.score(state))
        self.policy.set_untrained({site: ids for site, ids in self.train_ids.items() if site not in self.trusted})
        if self.qc.audit:
            sites = sorted(set(self.train_ids) | set(self.scans.sites))
            atomic_write_csv(run_audit_stage(self.transport, self.policy, sites, first_cycle), self.folder / "audit.csv")
        self.gate.screen(state, first_cycle)
        self.setup_seconds = time.perf_counter() - t0

    def visit(self, site: str, state: State, cycle: int, lr: float, local: Local = ONE_EPOCH) -> Hop:
        """Check the site, retrain its due revisits alone, then train the rest of its pool with the configured
        granularity — one local epoch whatever ``local.epochs`` asks (the search retrains subsets), with
        ``local.prox_mu``."""
        t0 = time.perf_counter()
        status = self.gate.check(site, state, cycle)
        if status in (QCStatus.SITE_ELIMINATED, QCStatus.SITE_FLAGGED):
            return Hop(state, seconds=0.0, status=status)
        if status:
            return Hop(state, seconds=time.perf_counter() - t0, status=status, problems=self.scans.take_problems())
        visit = _Visit(self, site, state, cycle, lr, local.prox_mu)
        revisits = self.policy.due(site, cycle)
        for subject in revisits:
            self.policy.revisit(subject, cycle, visit.attempt([subject], "revisit"))
        excluded = self.policy.excluded(site) | set(revisits)
        if self.policy.skill_cycle is None:  # the held-out scans wait, untrained, for the first screening
            excluded |= self.held_out
        pool = [s for s in self.train_ids.get(site, []) if s not in excluded]
        pool = [pool[i] for i in np.random.default_rng(hop_seed(self.cfg.train.seed, cycle, site)).permutation(len(pool))]
        if pool:
            self.search(pool, visit.attempt, lambda s: self.policy.flag(s, site, cycle), self.cfg.train.batch_size)
        return visit.outcome(time.perf_counter() - t0)

    def end_cycle(self, cycle: int) -> None:
        self.logs.write(self.policy, decision_row(self.policy, cycle, deciding=self.gate.deciding))

    def snapshot(self) -> dict:
        norms = {"update_norms": self.norm_check.snapshot()} if self.norm_check is not None else {}
        return {**self.policy.snapshot(), "setup_seconds": self.setup_seconds, **norms}

    def calibration_scans(self, sites: list[str]) -> dict[str, tuple[str, ...]]:
        """The verification scans QC trusts: no untrusted or flagged site's, none the audit took out."""
        return {s: out for s, out in self.policy.trusted_verification().items() if s in sites}

    # ------------------------------------------------------------------ outputs
    def summary(self) -> dict:
        """``qc_summary.json``: the arm's settings, cost and outcome, from its logs (whole even after a resume).

        ``arm_seconds`` is the set-up before the first cycle (audit, screening) plus every cycle's time.
        """
        path = self.folder / "qc_log.csv"
        log = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["criterion", "seconds"])
        judged = log[log["criterion"] != "invalid update"]
        cycles = pd.read_csv(self.folder / "cycles.csv")
        summary = {"arm": self.name, "criterion": self.qc.criterion, "granularity": self.qc.granularity,
                   "start": self.qc.start, "oracle_start": self.qc.start == "clean",
                   "trusted_sites": list(self.qc.trusted_sites) if self.qc.start == "trusted" else [],
                   "skill_cycle": self.policy.skill_cycle, "scan_checks": list(self.qc.scans),
                   "scan_issues": scan_issue_counts(self.policy),
                   "cost": dict(self.gate.counts),
                   "verify_fraction": self.qc.verify_fraction, "audit": self.qc.audit, "verifications": len(judged),
                   "verify_seconds": round(float(judged["seconds"].sum()) if "seconds" in judged else 0.0, 3),
                   "arm_seconds": round(self.setup_seconds + float(cycles["seconds"].sum()), 3),
                   "eliminated": len(self.policy.eliminated), "pending": len(self.policy.flagged),
                   **decision_summary(self.folder, log)}
        atomic_write_text(json.dumps(summary, indent=2), self.folder / "qc_summary.json")
        return summary

    def eliminated_table(self):
        return eliminated_table(self.policy)

    def pending_table(self):
        return pending_table(self.policy, self.train_ids)


class _Visit:
    """One visit's attempts: each trains a subset on the current state and keeps it only when the gate accepts."""

    def __init__(self, arm: QCArm, site: str, state: State, cycle: int, lr: float, prox_mu: float = 0.0):
        self.arm, self.site, self.state, self.cycle, self.lr, self.prox_mu = arm, site, state, cycle, lr, prox_mu
        self.seeds = np.random.SeedSequence(hop_seed(arm.cfg.train.seed, cycle, site))
        self.trained: list[tuple[int, float]] = []  # (scans, mean loss) of adopted updates
        self.skipped: dict[str, ScanProblem] = {}

    def attempt(self, subjects: list[str], scope: str) -> bool:
        arm, t = self.arm, time.perf_counter()
        seed = int(self.seeds.spawn(1)[0].generate_state(1)[0])
        request = train_request(arm.cfg.train, self.lr, seed, subjects=tuple(subjects), class_counts=arm.class_counts,
                                prox_mu=self.prox_mu)
        reply = arm.transport.train(self.site, self.state, request)
        self.skipped.update({p.subject: p for p in reply.skipped})
        if reason := refusal(self.state, request, reply, len(set(subjects)),
                             counts=arm.cfg.defence.counts == "enrolment", norm_check=arm.norm_check):
            arm.policy.reject(cycle=self.cycle, site=self.site, scope=scope, subjects=subjects, reason=reason)
            return False  # never evaluated, never adopted
        ok = arm.gate.judge(Update(reply, self.cycle, self.site, scope, tuple(subjects), t))
        if ok:
            self.trained.append((reply.n_scans, reply.loss))
            self.state = reply.state
            arm.policy.trained(reply.subjects, self.site, self.cycle)
        return ok

    def outcome(self, seconds: float) -> Hop:
        n = sum(k for k, _ in self.trained)
        loss = sum(k * v for k, v in self.trained) / n if n else float("nan")
        problems = sorted(self.skipped.values()) + self.arm.scans.take_problems()
        return Hop(self.state, n, loss, seconds, problems=problems)


def held_out(train_ids: dict[str, list[str]], share: float, seed: int) -> set[str]:
    """Per site, ``share`` of its training scans (rounded down), drawn with a seed of the run seed and the site: the
    scans ``qc.holdout`` keeps untrained until the model shows skill."""
    out: set[str] = set()
    for site, ids in train_ids.items():
        rng = np.random.default_rng([seed, zlib.crc32(site.encode()), HOLDOUT_STREAM])
        out.update(ids[i] for i in rng.permutation(len(ids))[:int(share * len(ids))])
    return out
