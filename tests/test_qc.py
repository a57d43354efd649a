"""QC: criteria, the policy state machine, granularity modes, detection scoring, a QC arm end to end."""

from __future__ import annotations

import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from fedqc.config import CRITERIA, GRANULARITIES, ConfigError
from fedqc.errors import SiteError
from fedqc.protocol import EvalReply, SiteInfo, TrainReply
from fedqc.qc.arm import QCArm
from fedqc.qc.criteria import (
    SITE_CHECKS,
    UPDATE_CRITERIA,
    CalibratedLossCriterion,
    LossCriterion,
    ReferenceCriterion,
    SiteAUROCCheck,
)
from fedqc.qc.detection import score_detection
from fedqc.qc.gate import QCStatus
from fedqc.qc.policy import QCPolicy
from fedqc.qc.search import SEARCHES
from fedqc.qc.stats import auroc_se, confusion, recalibrate, site_auroc_test, within_site_auroc_se
from fedqc.strategies.cycles import HopStatus
from tests.conftest import kill_and_resume_qc_arm, tiny_config

# 20 verification scans at one site "v": 10 patients, 10 controls
LABELS = np.array([1] * 10 + [0] * 10)


def scores_frame(scores, site="v") -> pd.DataFrame:
    return pd.DataFrame({"subject": [f"s{i:02d}" for i in range(len(scores))], "site": site,
                         "label": LABELS[: len(scores)], "score": scores})


def good_scores(rng=None, spread=0.1):
    rng = rng or np.random.default_rng(0)
    return np.clip(np.where(LABELS == 1, 0.75, 0.25) + rng.normal(0, spread, len(LABELS)), 0.01, 0.99)


# ----------------------------------------------------------------------------- criteria
def test_every_configurable_name_has_one_implementation():
    assert set(UPDATE_CRITERIA) | set(SITE_CHECKS) == set(CRITERIA) and not set(UPDATE_CRITERIA) & set(SITE_CHECKS)
    assert set(SEARCHES) == set(GRANULARITIES)


def test_confusion_uses_true_rates():
    c = confusion(np.array([1, 1, 1, 0]), np.array([0.9, 0.2, 0.1, 0.7]))
    assert (c["tp"], c["fn"], c["fp"], c["tn"]) == (1, 2, 1, 0)
    assert c["fnr"] == pytest.approx(2 / 3) and c["fpr"] == 1.0  # FN/(FN+TP), FP/(FP+TN)
    assert math.isnan(confusion(np.array([1]), np.array([0.9]))["fpr"])


def test_reference_tolerance_scales_with_scans_trained():
    base = np.where(LABELS == 1, 0.9, 0.1)
    worse = base.copy()
    worse[:2] = 0.1  # two patients missed: FNR rises by 0.2
    crit = ReferenceCriterion(tolerance=0.02)
    assert not crit.decide(LABELS, base, worse, n_trained=5)[0]  # limit 0.1
    ok, stats = crit.decide(LABELS, base, worse, n_trained=10)  # limit 0.2: not "more than"
    assert ok and stats["stat"] == pytest.approx(0.2) and stats["limit"] == pytest.approx(0.2)


def test_recalibration_removes_a_logit_shift_and_scale():
    base = good_scores()
    logit = np.log(base / (1 - base))
    shifted = 1 / (1 + np.exp(-(3 * logit + 2.0)))  # leans to "patient", more confident
    np.testing.assert_allclose(recalibrate(LABELS, shifted), recalibrate(LABELS, base), atol=5e-3)


@pytest.mark.parametrize("name", ["loss", "calibrated"])
def test_paired_criteria_reject_harm_and_accept_good_updates(name):
    crit = UPDATE_CRITERIA[name](z=2.0)
    rng = np.random.default_rng(1)
    base = good_scores(rng)
    # typical good updates: small per-scan changes in both directions
    accepted = [crit.decide(LABELS, base, np.clip(base + rng.normal(0, 0.03, 20), 0.01, 0.99), 5)[0]
                for _ in range(200)]
    assert np.mean(accepted) > 0.9
    # clearly harmful updates: the ranking inverted, or lost
    assert not crit.decide(LABELS, base, 1 - base, 5)[0]
    assert not crit.decide(LABELS, base, rng.uniform(0.3, 0.7, 20), 5)[0]


def test_calibrated_criterion_ignores_drift_that_fools_the_others():
    base = good_scores()
    logit = np.log(base / (1 - base))
    drifted = 1 / (1 + np.exp(-(logit + 2.5)))  # same ranking, all-patient bias
    assert CalibratedLossCriterion().decide(LABELS, base, drifted, 5)[0]
    assert not LossCriterion().decide(LABELS, base, drifted, 5)[0]
    assert not ReferenceCriterion().decide(LABELS, base, drifted, 5)[0]


# ----------------------------------------------------------------------------- policy
def test_auroc_and_its_hanley_mcneil_standard_error():
    a, se = auroc_se(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1]))
    assert a == pytest.approx(0.75)
    q1, q2 = 0.75 / 1.25, 2 * 0.75**2 / 1.75
    assert se == pytest.approx(math.sqrt((0.75 * 0.25 + (q1 - 0.75**2) + (q2 - 0.75**2)) / 4))
    assert all(math.isnan(v) for v in auroc_se(np.array([1, 1]), np.array([0.2, 0.3])))


def test_within_site_auroc_ignores_shifts_between_sites():
    labels = np.array([1, 0, 1, 0, 1, 0])
    scores = np.array([0.3, 0.2, 0.9, 0.8, 0.6, 0.5])  # each site separated, whole sites shifted
    sites = np.array(["a", "a", "b", "b", "c", "c"])
    assert auroc_se(labels, scores)[0] < 0.7 and within_site_auroc_se(labels, scores, sites)[0] == 1.0
    a, se = within_site_auroc_se(np.array([1, 0, 0, 1, 1]), np.array([0.9, 0.1, 0.2, 0.4, 0.5]),
                                 np.array(["a", "a", "a", "b", "b"]))  # site b has one label: no pairs
    assert a == 1.0 and se == pytest.approx(auroc_se(np.array([1, 0, 0]), np.array([0.9, 0.1, 0.2]))[1])
    assert math.isnan(within_site_auroc_se(np.array([1, 0]), np.array([0.9, 0.1]), np.array(["a", "b"]))[0])


def test_site_check_rejects_a_site_its_labels_disagree_with_and_ignores_shifts_and_one_odd_scan():
    rng = np.random.default_rng(0)
    verify_labels = np.tile([1, 0], 30)
    verify_sites = np.repeat(["u", "v", "w"], 20)
    shift = np.repeat([-0.2, 0.0, 0.2], 20)  # the model scores whole verification sites higher or lower
    verify = np.clip(np.where(verify_labels == 1, 0.6, 0.4) + shift + rng.normal(0, 0.08, 60), 0.01, 0.99)
    labels = np.repeat([1, 0], 15)
    good = np.clip(np.where(labels == 1, 0.6, 0.4) + rng.normal(0, 0.08, 30), 0.01, 0.99)
    assert site_auroc_test(verify_labels, verify, verify_sites, labels, good, 0.01)[0]
    assert site_auroc_test(verify_labels, verify, verify_sites, labels, 0.5 + good / 2, 0.01)[0]  # shifted site
    odd = good.copy()
    odd[0] = 0.01  # one patient scored as the surest control
    assert site_auroc_test(verify_labels, verify, verify_sites, labels, odd, 0.01)[0]
    alike = np.clip(0.9 + rng.normal(0, 0.01, 30), 0, 1)  # scored alike whatever the label (inverted, noise)
    for harmful in (alike, 1 - good):  # ... and labels flipped
        ok, stats = site_auroc_test(verify_labels, verify, verify_sites, labels, harmful, 0.01)
        assert not ok and stats["p_value"] < 1e-3 and stats["stat"] > stats["limit"]


def test_a_one_class_site_gives_the_site_check_no_evidence():
    rng = np.random.default_rng(1)
    verify_labels = np.tile([1, 0], 30)
    verify_sites = np.repeat(["u", "v", "w"], 20)
    verify = np.clip(np.where(verify_labels == 1, 0.7, 0.3) + rng.normal(0, 0.1, 60), 0.01, 0.99)
    for scores in (np.full(5, 0.7), np.full(5, 0.3)):  # five scans labelled patients, scored either way
        ok, stats = site_auroc_test(verify_labels, verify, verify_sites, np.ones(5), scores, 0.01)
        assert ok and math.isnan(stats["auroc_site"]) and math.isnan(stats["p_value"])
    ok, stats = site_auroc_test(verify_labels, verify, verify_sites, np.tile([1, 0], 3), np.tile([0.3, 0.7], 3), 0.01)
    assert not ok and stats["auroc_site"] == 0.0  # with both classes the same scores are judged


CHECK = SiteAUROCCheck(alpha=0.01)
REFERENCE = ReferenceCriterion(0.02)
LOSS = LossCriterion()


def site_policy(revisit_after=2) -> QCPolicy:
    p = QCPolicy(revisit_after=revisit_after, train_counts={"a": 20, "b": 20})
    rng = np.random.default_rng(1)
    labels = np.repeat([1, 0], 15)
    frame = pd.DataFrame({"subject": [f"v{i}" for i in range(30)] + ["a_val"], "site": ["v"] * 30 + ["a"],
                          "label": list(labels) + [1],
                          "score": list(np.where(labels == 1, 0.8, 0.2) + rng.normal(0, 0.1, 30)) + [0.5]})
    p.start(frame)
    return p


def train_scores(site: str, good: bool) -> pd.DataFrame:
    labels = np.repeat([1, 0], 10)
    scores = np.where(labels == (1 if good else 0), 0.8, 0.2)  # harmful: the model disagrees with every label
    return pd.DataFrame({"subject": [f"{site}{i:02d}" for i in range(20)], "label": labels, "score": scores})


def test_site_check_flags_revisits_and_eliminates_a_site():
    p = site_policy()
    subjects = list(train_scores("a", False)["subject"])
    assert p.site_due("a", 3)
    assert not p.check_site(CHECK, train_scores("a", False), cycle=3, site="a", subjects=subjects)
    assert p.flagged_sites["a"]["due"] == 5 and not p.site_due("a", 4) and p.site_due("a", 5)
    assert p.verification_set("b").sum() == 30  # a flagged site's val scan does not judge others
    assert p.check_site(CHECK, train_scores("b", True), cycle=3, site="b", subjects=["b00"]) and not p.flagged_sites.get("b")
    p.flag("a03", "a", 3)  # a scan flagged by update verification goes with its site
    assert not p.check_site(CHECK, train_scores("a", False), cycle=5, site="a", subjects=subjects)
    assert p.eliminated_sites == {"a": 5} and not p.site_due("a", 9) and not p.flagged
    assert {e["stage"] for e in p.eliminated.values()} == {"site"} and set(p.eliminated) == set(subjects)
    assert p.eliminated["a00"]["cycle_flagged"] == 3 and p.eliminated["a00"]["cycle_eliminated"] == 5
    assert "a" in p.untrusted and p.verification_set("b").sum() == 30  # its val scan leaves the set
    log = pd.DataFrame(p.log)
    assert list(log["scope"]) == ["site"] * 3 and list(log["accepted"]) == [False, True, False]
    assert [r["accepted"] for r in p.revisits] == [False] and p.revisits[0]["subject"] == ""
    assert [f["subject"] for f in p.flags if f["cycle_flagged"] == 3 and f["site"] == "a"] == subjects + ["a03"]


def test_site_passing_its_revisit_trains_again():
    p = site_policy()
    assert not p.check_site(CHECK, train_scores("a", False), cycle=1, site="a", subjects=[])
    assert p.check_site(CHECK, train_scores("a", True), cycle=3, site="a", subjects=[])
    assert not p.flagged_sites and not p.eliminated_sites and p.site_due("a", 4)
    q = QCPolicy()
    p.check_site(CHECK, train_scores("b", False), cycle=4, site="b", subjects=[])
    q.restore(p.snapshot())
    assert q.flagged_sites == p.flagged_sites == {"b": {"subject": "", "site": "b", "cycle_flagged": 4, "due": 6}}


def policy(**kw) -> QCPolicy:
    p = QCPolicy(train_counts={"a": 4, "v": 10}, **kw)
    p.start(scores_frame(np.where(LABELS == 1, 0.9, 0.1)))
    return p


def test_state_updates_only_on_acceptance():
    p = policy(leave_site_out=False)
    base = p.baseline["score"].copy()
    bad = np.where(LABELS == 1, 0.1, 0.1)  # misses every patient
    assert not p.verify(REFERENCE, scores_frame(bad), cycle=1, site="a", scope="batch", subjects=["x", "y"], n_trained=2)
    pd.testing.assert_series_equal(p.baseline["score"], base)
    slightly = np.where(LABELS == 1, 0.8, 0.2)
    assert p.verify(REFERENCE, scores_frame(slightly), cycle=1, site="a", scope="batch", subjects=["x"], n_trained=1)
    np.testing.assert_allclose(p.baseline["score"], slightly)
    log = pd.DataFrame(p.log)
    assert list(log["accepted"]) == [False, True] and list(log["fnr"]) == [1.0, 0.0]
    assert {"cycle", "site", "scope", "subject", "n_trained", "stat", "limit", "fp", "fn", "tp", "tn",
            "fpr", "fnr", "loss", "accepted", "seconds", "n_verify"} <= set(log.columns)


def test_a_candidate_with_non_finite_verification_scores_is_rejected_not_passed_unjudged():
    """A ×1,000 update scores the verification scans NaN: rejected and named, never adopted as "no evidence"."""
    p = policy(leave_site_out=False)
    base = p.baseline["score"].copy()
    broken = np.where(LABELS == 1, 0.9, np.nan)
    assert not p.verify(LOSS, scores_frame(broken), cycle=1, site="a", scope="batch", subjects=["x"], n_trained=1)
    pd.testing.assert_series_equal(p.baseline["score"], base)
    row = p.log[-1]
    assert row["judged"] and row["note"] == f"{int((LABELS == 0).sum())} of {len(LABELS)} verification scores not finite"
    assert p.verify(LOSS, scores_frame(p.baseline["score"].to_numpy()), cycle=1, site="a", scope="batch",
                    subjects=["x"], n_trained=1)  # the same model's own scores pass


def test_revisit_schedule_exclusion_and_elimination():
    p = policy(revisit_after=2)
    p.flag("a1", "a", cycle=3)
    p.flag("a2", "a", cycle=3)
    assert p.excluded("a") == {"a1", "a2"}
    assert p.due("a", 4) == [] and p.due("a", 5) == ["a1", "a2"] and p.due("v", 5) == []
    p.revisit("a1", 5, accepted=True)  # back in the pool
    p.revisit("a2", 5, accepted=False)  # second failure: eliminated
    assert p.excluded("a") == {"a2"}
    assert p.eliminated["a2"] == {"subject": "a2", "site": "a", "cycle_flagged": 3, "cycle_eliminated": 5,
                                  "stage": "verification"}
    assert [r["accepted"] for r in p.revisits] == [True, False]


def test_leave_site_out_and_untrusted_sites():
    p = QCPolicy(train_counts={"a": 2})
    frame = pd.concat([scores_frame(good_scores(), "a"), scores_frame(good_scores(), "b")
                       .assign(subject=lambda d: "b" + d["subject"])])
    p.start(frame)
    assert p.verification_set("a").sum() == 20 and p.verification_set("b").sum() == 20
    for s in ("a1", "a2"):
        p.flag(s, "a", 0)
    p.revisit("a1", 2, accepted=False)
    assert "a" in p.untrusted  # half of its training scans eliminated: its val leaves the set
    assert p.verification_set("c").sum() == 20 and p.verification_set("b").sum() == 0


def test_snapshot_round_trip():
    p = policy()
    p.flag("a1", "a", 1)
    q = QCPolicy(train_counts={"a": 4})
    q.restore(p.snapshot())
    assert q.flagged == p.flagged and q.untrusted == p.untrusted
    pd.testing.assert_frame_equal(q.baseline, p.baseline, check_dtype=False)


def test_the_ledger_and_its_event_log():
    """Each scan's status, stage and cycles in the ledger; every change an event, in order; flagged.csv's and
    revisits.csv's rows are views of the log; the state changes through the policy's methods only."""
    from fedqc.qc.ledger import ScanStatus

    p = policy(revisit_after=2)
    p.set_untrained({"a": ["a1", "a2", "a3"]})
    p.flag("a1", "a", cycle=1)
    p.flag("a2", "a", cycle=1, stage="scan: labels")
    p.trained(["a3", "v0"], "a", cycle=1)  # v0: not an untrained training scan, nothing to record
    p.revisit("a1", 3, accepted=True)
    p.revisit("a2", 3, accepted=False, stage="scan: labels")
    p.reach_skill(2)
    p.reach_skill(3)  # the first cycle is kept
    p.drop_verification(["s00"], cycle=3)
    entries = {e.subject: (e.status, e.stage, e.cycle_flagged, e.cycle_eliminated, e.untrained)
               for e in p.ledger.entries.values()}
    assert entries == {"a1": (ScanStatus.POOL, "", 1, None, True), "a3": (ScanStatus.POOL, "", None, None, False),
                       "a2": (ScanStatus.ELIMINATED, "scan: labels", 1, 3, True)}
    assert p.fresh == {"a1", "a2"} and p.excluded("a") == {"a2"}
    assert [(e["cycle"], e["event"], e["subject"], e["stage"]) for e in p.events] == [
        (1, "flagged", "a1", "verification"), (1, "flagged", "a2", "scan: labels"), (1, "trained", "a3", ""),
        (3, "revisited", "a1", "verification"), (3, "revisited", "a2", "scan: labels"),
        (3, "eliminated", "a2", "scan: labels"), (2, "skill", "", ""), (3, "dropped", "s00", "")]
    assert [(f["subject"], f["due"]) for f in p.flags] == [("a1", 3), ("a2", 3)]
    assert [(r["subject"], r["cycle_revisited"], r["accepted"]) for r in p.revisits] == [("a1", 3, True),
                                                                                        ("a2", 3, False)]
    for name in ("fresh", "flagged", "eliminated", "skill_cycle", "untrusted", "flagged_sites"):
        with pytest.raises(AttributeError):
            setattr(p, name, None)
    with pytest.raises(TypeError):
        p.flagged_sites["a"] = {}  # a read-only view


def test_the_ledger_keeps_each_status_in_the_order_scans_reached_it(tmp_path):
    """A scan flagged again after a revisit moves behind the others (checkpoints and eliminated.csv have always
    listed scans so); the snapshot restores the same ledger; qc_events.csv keeps its integers when appended to and
    truncated on resume."""
    from fedqc.qc.logs import QCLogs

    p = policy(revisit_after=1)
    p.set_untrained({"a": ["a1", "a2"]})
    for s in ("a1", "a2"):
        p.flag(s, "a", cycle=1)
    p.revisit("a1", 2, accepted=True)
    p.flag("a1", "a", cycle=2)
    p.eliminate("a3", "a", 2, "audit")
    assert list(p.flagged) == ["a2", "a1"] and p.flagged["a1"]["cycle_flagged"] == 2
    q = QCPolicy(train_counts={"a": 4})
    q.restore(p.snapshot())
    assert q.snapshot()["flagged"] == p.snapshot()["flagged"] and list(q.flagged) == ["a2", "a1"]
    assert q.eliminated == p.eliminated and q.fresh == p.fresh and not q.events
    logs = QCLogs(tmp_path)
    logs.write(p)
    logs.truncate(2)  # resuming at cycle 2
    events = pd.read_csv(tmp_path / "qc_events.csv")
    assert list(events["cycle"]) == [1, 1] and list(events["due"]) == [2, 2]
    assert (tmp_path / "qc_events.csv").read_text().splitlines()[1] == "1,flagged,a1,a,verification,1,2,"


# ----------------------------------------------------------------------------- granularity
def info(site, n_train=0, n_val=0, prefix=None):
    return SiteInfo(site, tuple(f"{prefix or site}{i:02d}" for i in range(n_train)), n_val, 0)


class FakeTransport:
    """One training site "t" (ids given), one val site "v"; harmful ids end in "x".

    The state counts harmful scans trained; a model that saw any scores at chance.
    Every train call records the state it received.
    """

    def __init__(self, train_ids):
        self.ids = train_ids
        self.received: list[dict] = []
        self.requests: list[list[str]] = []
        self.evaluated: list[str] = []

    def site_info(self):
        return {"t": SiteInfo("t", tuple(self.ids), 0, 0), "v": SiteInfo("v", (), 20, 0)}

    def train(self, site, state, request):
        self.received.append({k: v.copy() for k, v in state.items()})
        subjects = list(request.subjects)
        self.requests.append(subjects)
        harm = sum(s.endswith("x") for s in subjects)
        new = {"encoder.w": state["encoder.w"] + len(subjects), "optim.0.exp_avg": state["optim.0.exp_avg"] + 1,
               "harm": state["harm"] + harm}
        return TrainReply(new, len(subjects), 0.5, 0.0, subjects, answers=request.nonce)

    def evaluate(self, sites, state, request):
        self.evaluated.append(request.split)
        if request.split == "train":  # the site check: harmful scans scored against their label
            ids = [s for s in self.ids if s not in request.exclude]
            labels = np.arange(len(ids)) % 2
            scores = np.where([s.endswith("x") for s in ids], 1 - labels, labels) * 0.8 + 0.1
            return {"t": EvalReply({}, pd.DataFrame({"subject": ids, "site": "t", "label": labels, "score": scores}))}
        scores = np.where(LABELS == 1, 0.9, 0.1) if state["harm"][0] == 0 else np.full(20, 0.5)
        return {"v": EvalReply({}, scores_frame(scores))}


def qc_cfg(**qc):
    """A QC config that needs no images: these tests run against fake transports, whose updates add the scans
    trained to a weight — sizes that differ by the subset's, which the update norm check (tests/test_adversarial.py)
    would judge: it is off here."""
    return tiny_config("unused.csv", check_files=False, **{"arms": ["clean", "qc"], "qc": {"scans": [], **qc},
                                                           "defence": {"update_norm": 0}})


def runner(tmp_path, ids, granularity, criterion="loss", transport_cls=FakeTransport):
    transport = transport_cls(ids)
    r = QCArm(transport, qc_cfg(criterion=criterion, granularity=granularity), "qc", tmp_path / "qc")
    state = {"encoder.w": np.zeros(1), "optim.0.exp_avg": np.zeros(1), "harm": np.zeros(1)}
    r.begin(state, 1, None)
    return r, transport, state


def test_hierarchical_isolates_one_harmful_scan_in_log_n(tmp_path):
    ids = [f"t{i:02d}" for i in range(15)] + ["t15x"]
    r, transport, state = runner(tmp_path, ids, "hierarchical")
    hop = r.visit("t", state, 1, 1e-3)
    assert set(r.policy.flagged) == {"t15x"}
    assert r.verifications <= 2 * math.ceil(math.log2(16)) + 1
    assert hop.state["harm"][0] == 0 and hop.state["encoder.w"][0] == 15 and hop.n_scans == 15
    # a clean visit costs one verification
    r2, _, state2 = runner(tmp_path / "2", [f"t{i:02d}" for i in range(16)], "hierarchical")
    r2.visit("t", state2, 1, 1e-3)
    assert r2.verifications == 1 and not r2.policy.flagged


def test_batch_mode_rolls_back_model_and_optimizer(tmp_path):
    ids = ["t00", "t01x", "t02", "t03", "t04"]  # one batch of 5 with one harmful scan
    r, transport, state = runner(tmp_path, ids, "batch")
    final = r.visit("t", state, 1, 1e-3).state
    batch_input, first_single_input = transport.received[0], transport.received[1]
    assert all(np.array_equal(batch_input[k], first_single_input[k]) for k in batch_input)  # exact rollback
    assert r.verifications == 1 + 5 and set(r.policy.flagged) == {"t01x"}
    assert final["encoder.w"][0] == 4 and final["optim.0.exp_avg"][0] == 4 and final["harm"][0] == 0


def test_flagged_scan_is_revisited_then_eliminated(tmp_path):
    r, transport, state = runner(tmp_path, ["t00", "t01x"], "hierarchical")
    state = r.visit("t", state, 1, 1e-3).state
    assert set(r.policy.flagged) == {"t01x"}
    state = r.visit("t", state, 2, 1e-3).state  # excluded until its revisit at 1 + R
    assert transport.requests[-1] == ["t00"] and r.policy.flagged["t01x"]["due"] == 3
    assert r.verifications == 1 + 2 + 1
    r.visit("t", state, 3, 1e-3)
    assert transport.requests[-2:] == [["t01x"], ["t00"]]  # the revisit first, alone
    assert "t01x" in r.policy.eliminated and not r.policy.flagged


def test_site_check_keeps_a_harmful_site_out_then_eliminates_it(tmp_path):
    ids = [f"t{i:02d}x" for i in range(20)]
    r, transport, state = runner(tmp_path, ids, "hierarchical", criterion="auroc")  # begin screens every site
    assert len(r.pending_table()) == 20 and r.policy.flagged_sites["t"]["due"] == 3  # out of training, pending
    statuses = []
    for cycle in (1, 2, 3, 4):
        hop = r.visit("t", state, cycle, 1e-3)
        state = hop.state
        statuses.append(hop.status)
    assert statuses == [QCStatus.SITE_FLAGGED, QCStatus.SITE_FLAGGED, QCStatus.SITE_CHECK_FAILED,
                        QCStatus.SITE_ELIMINATED]
    assert transport.requests == [] and state["encoder.w"][0] == 0  # never trained
    assert r.verifications == 2 and set(r.eliminated_table()["stage"]) == {"site"} and len(r.eliminated_table()) == 20
    # a good site passes its checks and trains its visit, adopted without a val evaluation
    r2, transport2, state2 = runner(tmp_path / "2", [f"t{i:02d}" for i in range(20)], "hierarchical", criterion="auroc")
    hop = r2.visit("t", state2, 1, 1e-3)
    assert hop.status == HopStatus.OK and hop.n_scans == 20 and hop.state["encoder.w"][0] == 20
    assert r2.verifications == 2 and [r["scope"] for r in r2.policy.log] == ["site", "site"]
    r2.visit("t", hop.state, 2, 1e-3)  # the model changed: val is rescored before the next check
    # the verification scans are scored at the start (twice: baseline, then the screening's refresh) and once
    # per cycle; the site's scans at every check
    assert transport2.evaluated == ["val", "val", "train", "train", "val", "train"]


def test_a_site_that_cannot_be_checked_loses_its_hop_not_the_arm(tmp_path):
    class Down(FakeTransport):
        def evaluate(self, sites, state, request):
            if request.split == "train":
                return {"t": EvalReply.failed("site t did not answer")}
            return super().evaluate(sites, state, request)

    r, _, state = runner(tmp_path, ["t00", "t01"], "hierarchical", "auroc", Down)  # the screening records it
    assert not r.policy.flagged_sites and "did not answer" in r.scans.problems[("", "t")]
    with pytest.raises(SiteError, match="did not answer"):  # the visit's own check fails the hop
        r.visit("t", state, 1, 1e-3)


class TwoSiteTransport:
    """Training sites "a" (scored alike whatever the label) and "b" (labels flipped, val scans too); val at "v"."""

    labels = np.tile([1, 0], 10)

    def site_info(self):
        return {"a": info("a", 20), "b": info("b", 20, 20), "v": info("v", 0, 20)}

    def evaluate(self, sites, state, request):
        def frame(site, scores):
            return pd.DataFrame({"subject": [f"{site}{request.split}{i:02d}" for i in range(20)], "site": site,
                                 "label": self.labels, "score": scores})
        right = np.where(self.labels == 1, 0.8, 0.2) + np.linspace(0, 0.1, 20)
        if request.split == "train":
            return {s: EvalReply({}, frame(s, np.linspace(0.4, 0.6, 20) if s == "a" else 1 - right)) for s in sites}
        return {"b": EvalReply({}, frame("b", 1 - right)), "v": EvalReply({}, frame("v", right))}


def test_screening_repeats_until_no_site_fails(tmp_path):
    r = QCArm(TwoSiteTransport(), qc_cfg(criterion="auroc", skill=0), "qc", tmp_path)  # b's val scans: no skill
    r.begin({"encoder.w": np.zeros(1)}, 1, None)
    checks = [(row["site"], row["accepted"]) for row in r.policy.log]
    # round 1: "a" passes while b's flipped val scans drag the verification AUROC down; "b" fails;
    # round 2, without b's val scans: "a" fails
    assert checks == [("a", True), ("b", False), ("a", False)] and set(r.policy.flagged_sites) == {"a", "b"}


# ----------------------------------------------------------------------------- detection
def test_detection_scores_against_ground_truth():
    manifest = pd.DataFrame({
        "subject": ["h1", "h2", "g1", "g2", "g3", "x1", "v1"],
        "site": ["harm", "harm", "good", "good", "good", "good", "good"],
        "split": ["train"] * 6 + ["val"],
        "harm": ["noise", "noise", "none", "none", "none", "inverted", "none"]})
    eliminated = pd.DataFrame({"subject": ["h1", "g1"]})
    pending = pd.DataFrame({"subject": ["h2"]})
    d = score_detection(manifest, eliminated, pending).set_index(["level", "name"])
    # pending is not missed: harmful = eliminated + pending + missed
    assert d.loc[("kind", "noise"), ["harmful", "eliminated", "pending", "missed"]].tolist() == [2, 1, 1, 0]
    assert d.loc[("kind", "noise"), "scope"] == "whole-site" and d.loc[("kind", "inverted"), "scope"] == "single-scan"
    overall = d.loc[("overall", "all")]
    assert overall["recall"] == pytest.approx(1 / 3) and overall["precision"] == pytest.approx(1 / 2)
    assert overall["good"] == 3 and overall["good_eliminated_rate"] == pytest.approx(1 / 3)
    assert d.loc[("site", "good"), "good_eliminated"] == 1


# ----------------------------------------------------------------------------- config
def test_qc_config_validation(tiny_cohort):
    cfg = tiny_config(tiny_cohort / "manifest.csv", **{"arms": ["clean", "qc", "qc-reference-batch"]})
    assert cfg.qc_for("qc-reference-batch").criterion == "reference"
    assert cfg.qc_for("qc-reference-batch").granularity == "batch"
    assert cfg.qc_for("qc") == cfg.qc
    assert cfg.qc_for("qc-auroc-hierarchical-noaudit").audit is False
    assert cfg.qc_for("qc-auroc-batch-audit").audit is True and cfg.qc_for("qc-auroc-batch").audit is cfg.qc.audit
    with pytest.raises(ConfigError) as err:
        tiny_config(tiny_cohort / "manifest.csv", **{"arms": ["qc-magic-batch"], "qc": {"criterion": "x", "z": -1, "alpha": 1}})
    text = str(err.value)
    assert "arms:" in text and "qc.criterion" in text and "qc.z" in text and "qc.alpha" in text
    assert cfg.qc_for("qc-trusted").start == "trusted" and cfg.qc_for("qc-reference-batch-noaudit-scratch").start == "scratch"
    assert cfg.qc_for("qc-auroc-batch-clean").criterion == "auroc" and cfg.qc_for("qc-auroc-batch-clean").start == "clean"


def test_qc_start_and_scan_check_validation(tiny_cohort, monkeypatch):
    import importlib.util

    manifest = tiny_cohort / "manifest.csv"
    bad = [({"qc": {"start": "trusted", "trusted_sites": []}}, "qc.trusted_sites: start trusted needs"),
           ({"qc": {"start": "somewhere"}}, "qc.start: 'somewhere' is not one of"),
           ({"qc": {"start": "scratch", "criterion": "loss"}}, "qc.start: scratch waits for skill"),
           ({"qc": {"scans": ["labels", "vibes"]}}, "qc.scans: each of"),
           ({"qc": {"skill": 1.0}}, "qc.skill: must be in [0, 1)"),
           ({"qc": {"trusted_epochs": 0}}, "qc.trusted_epochs: must be >= 1"),
           ({"qc": {"holdout": 1.0}}, "qc.holdout: must be in [0, 1)"),
           ({"qc": {"holdout": 0.5, "criterion": "loss"}}, "qc.holdout: scans are held out until the site-check"),
           ({"arms": ["qc-auroc-batch-somewhere"]}, "arms:"),
           ({"engine": "deployment", "qc": {"start": "clean"}}, "qc.start: clean starts QC from the clean arm, an "
                                                                 "oracle")]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)):
            tiny_config(manifest, **{"arms": ["clean", "qc"], **overrides})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cleanlab" else real(name, *a))
    with pytest.raises(ConfigError, match=re.escape("qc.scans: 'labels' needs cleanlab (AGPL-3.0, an optional extra)")):
        tiny_config(manifest, **{"arms": ["clean", "qc"]})
    assert tiny_config(manifest, **{"arms": ["clean", "qc"], "qc": {"scans": ["ood"]}}).qc.scans == ("ood",)
    # a QC arm from scratch starts at cycle 0, so it needs no cycle after the warm-up; one from the clean arm does
    scratch = {"arms": ["clean", "qc"], "train.cycles": 1, "train.branch_cycle": 0, "qc": {"start": "scratch", "scans": ["ood"]}}
    assert tiny_config(manifest, **scratch).train.cycles == 1
    with pytest.raises(ConfigError, match=re.escape("train.branch_cycle: the dirty and QC arms start at cycle branch_cycle+1")):
        tiny_config(manifest, **{**scratch, "arms": ["clean", "qc-clean"]})


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_qc_arms_end_to_end_and_resume(tiny_cohort, tmp_path):
    from fedqc.analysis.infer import infer_run
    from fedqc.data.manifest import load_manifest
    from fedqc.experiment.arms import arms_for
    from fedqc.experiment.run_dir import load_checkpoint
    from fedqc.experiment.runner import simulate
    from fedqc.transport.inprocess import InProcessTransport
    from tests.conftest import checkpoint_path, same

    cfg = tiny_config(tiny_cohort / "manifest.csv", **{"arms": ["clean", "dirty", "qc", "qc-reference-batch"],
                                                       "train.cycles": 4, "qc": {"audit": True}})
    run = tmp_path / "run"
    simulate(cfg, run, quiet=True)
    manifest = load_manifest(cfg.manifest).set_index("subject")
    for arm in ("qc", "qc-reference-batch"):
        log = pd.read_csv(run / arm / "qc_log.csv")
        assert set(log["cycle"]) == {1, 2, 3} and log["n_verify"].max() > 0
        assert set(log["scope"]) <= {"visit", "group", "batch", "scan", "revisit", "site"}
        # the audit removes the image-level harm before any training: the inverted site and the pure-noise scan
        eliminated = pd.read_csv(run / arm / "eliminated.csv")
        audited = eliminated[eliminated["stage"] == "audit"]
        assert sorted(manifest.loc[audited["subject"], "harm"]) == ["inverted"] * 4 + ["pure-noise"]
        assert (audited["cycle_eliminated"] == 1).all()
        detection = pd.read_csv(run / arm / "detection.csv").set_index(["level", "name"])
        assert detection.loc[("kind", "inverted"), ["harmful", "eliminated", "recall"]].tolist() == [4, 4, 1.0]
        assert detection.loc[("kind", "pure-noise"), ["scope", "eliminated"]].tolist() == ["single-scan", 1]
        train = manifest[manifest["split"] == "train"]
        harmful = set(train.index[train["harm"] != "none"])
        overall = detection.loc[("overall", "all")]
        assert overall["eliminated"] == len(harmful & set(eliminated["subject"]))
        assert overall["good_eliminated"] == len(set(eliminated["subject"]) - harmful)
        assert overall["eliminated"] + overall["pending"] + overall["missed"] == overall["harmful"] == len(harmful)
    assert "batch" in set(pd.read_csv(run / "qc-reference-batch" / "qc_log.csv")["scope"])
    assert set(pd.read_csv(run / "qc" / "qc_log.csv")["scope"]) == {"site"}  # auroc: the site check only
    metrics = infer_run(run, n_boot=20)
    overall = metrics[metrics["group"] == "all"]
    assert {a: sorted(overall.loc[overall["arm"] == a, "cycle"]) for a in cfg.arms} == \
        {"clean": [0, 1, 2, 3], "dirty": [1, 2, 3], "qc": [1, 2, 3], "qc-reference-batch": [1, 2, 3]}
    assert overall["auroc"].notna().all()
    report = (run / "report.md").read_text()
    assert "QC detection: `qc`" in report and "QC detection: `qc-reference-batch`" in report
    assert "What QC could decide: `qc`" in report and "What QC could decide: `qc-reference-batch`" in report
    assert (run / "plots" / "qc_qc-reference-batch.png").is_file()

    # a QC arm killed mid-cycle resumes to the same weights, decisions and eliminations
    transport = InProcessTransport(load_manifest(cfg.manifest), cfg.model)
    cut = tmp_path / "cut"
    shutil.copytree(run / "clean", cut / "clean")

    for arm in [a for a in arms_for(cfg) if a.qc]:
        resumed = kill_and_resume_qc_arm(arm, transport, cfg, cut)
        assert same(resumed, load_checkpoint(checkpoint_path(run / arm.name, 3))["state"])
        for name in ("qc_log.csv", "flagged.csv", "revisits.csv", "eliminated.csv", "qc_events.csv", "qc_decisions.csv"):
            a = pd.read_csv(run / arm.name / name).drop(columns=["seconds", "hop_seconds"], errors="ignore")
            b = pd.read_csv(cut / arm.name / name).drop(columns=["seconds", "hop_seconds"], errors="ignore")
            pd.testing.assert_frame_equal(a, b)


def test_audit_flags_image_level_harm_only(tiny_cohort):
    from fedqc.data.image_checks import check_image
    from fedqc.data.images import load_image
    from fedqc.data.manifest import load_manifest

    m = load_manifest(tiny_cohort / "manifest.csv")
    flagged = {r.harm for r in m.itertuples() if check_image(load_image(r.path, (16, 16, 16))) is not None}
    assert flagged == {"inverted", "pure-noise"}  # the tiny cohort's image-level harm; never a good or mislabeled scan
    assert check_image(np.zeros((1, 8, 8, 8), dtype=np.float32)).startswith("blank")


def test_audit_stage_eliminates_before_training(tiny_cohort, tmp_path):
    from fedqc.data.manifest import load_manifest
    from fedqc.models.state import initial_state
    from fedqc.transport.inprocess import InProcessTransport

    cfg = tiny_config(tiny_cohort / "manifest.csv", **{"arms": ["clean", "qc"], "qc": {"audit": True}})
    transport = InProcessTransport(load_manifest(cfg.manifest), cfg.model)
    r = QCArm(transport, cfg, "qc", tmp_path / "qc")
    r.begin(initial_state(cfg.model, 0), 1, None)
    audit = pd.read_csv(tmp_path / "qc" / "audit.csv")
    m = load_manifest(cfg.manifest).set_index("subject")
    assert set(m.loc[audit["subject"], "harm"]) == {"inverted", "pure-noise"}
    train_flagged = set(audit.loc[audit["split"] == "train", "subject"])
    assert set(r.policy.eliminated) == train_flagged
    assert {e["stage"] for e in r.policy.eliminated.values()} == {"audit"}
    assert not set(audit.loc[audit["split"] == "val", "subject"]) & set(r.policy.baseline.index)


def test_qc_never_evaluates_or_adopts_an_invalid_update(tmp_path):
    r, transport, state = runner(tmp_path, ["t00", "t01"], "hierarchical")
    original = transport.train

    def poisoned(site, state, request):
        res = original(site, state, request)
        res.state = {**res.state, "encoder.w": np.full(1, np.inf)}
        return res

    transport.train = poisoned
    final = r.visit("t", state, 1, 1e-3).state
    assert final["encoder.w"][0] == 0  # nothing adopted
    log = pd.DataFrame(r.policy.log)
    assert (~log["accepted"]).all() and log["note"].str.contains("non-finite").all()


def test_unusable_verification_scan_is_recorded(tiny_cohort, tmp_path):
    from fedqc.experiment.runner import simulate
    from tests.conftest import non_finite_copy

    root = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, root)
    m = pd.read_csv(root / "manifest.csv")
    val = m.index[(m["split"] == "val") & (m["site"] == "alpha")][0]
    non_finite_copy(root / m.loc[val, "path"], root / "inf.mha", np.inf)
    m.loc[val, "path"] = "inf.mha"
    m.to_csv(root / "manifest.csv", index=False)
    cfg = tiny_config(root / "manifest.csv", **{"arms": ["clean", "qc"], "train.cycles": 2})
    simulate(cfg, tmp_path / "run", quiet=True)
    errors = pd.read_csv(tmp_path / "run" / "qc" / "errors.csv")
    hit = errors[errors["subject"] == m.loc[val, "subject"]]
    assert set(hit["stage"]) == {"verification"} and hit["reason"].str.contains("infinite").all()
