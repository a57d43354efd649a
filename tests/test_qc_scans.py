"""Per-scan checks by the model (label issues, feature distance), start protocols, small sites and cost counters."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedqc.protocol import EvalReply, EvalRequest, SiteInfo, TrainReply
from fedqc.qc.arm import QCArm
from fedqc.qc.scans import FeatureReference, OODLimit, label_issues, shift_scores, site_offsets
from fedqc.qc.stats import skill
from fedqc.scoring import feature_distance
from tests.conftest import kill_and_resume_qc_arm, tiny_config

cleanlab = pytest.importorskip("cleanlab")  # the optional extra; installed with .[dev]


# ----------------------------------------------------------------------------- arrays in, masks out
def test_cleanlab_finds_a_flipped_label_among_out_of_sample_probabilities():
    rng = np.random.default_rng(0)
    labels = np.tile([1, 0], 50)
    logits = np.where(labels == 1, 3.0, -3.0) + rng.normal(0, 1, 100)
    probs = 1 / (1 + np.exp(-logits))
    flipped = labels.copy()
    sure = [i for i in range(40) if abs(logits[i]) > 3.5]  # scans the model is sure about
    wrong = [next(i for i in sure if labels[i] == 1), next(i for i in sure if labels[i] == 0)]
    flipped[wrong] = 1 - flipped[wrong]  # a patient called a control and a control called a patient
    judged = np.zeros(100, bool)
    judged[:40] = True  # the scans under judgement; the rest are the reference (verification) scans
    issues = label_issues(flipped, probs, judged)
    assert issues.shape == (40,) and set(np.flatnonzero(issues)) == set(wrong)
    assert not label_issues(labels, probs, judged).any()  # the true labels: no issue
    assert not label_issues(np.ones(100, int), probs, judged).any()  # one class: nothing to learn thresholds from


def test_a_site_shifted_as_a_whole_has_no_label_issues_once_its_shift_is_removed_and_a_flip_there_is_found():
    rng = np.random.default_rng(4)
    labels = np.tile([1, 0], 60)
    sites = np.repeat(["v", "w", "t"], 40)  # v and w: verification; t: the site judged
    logits = np.where(labels == 1, 2.5, -2.5) + rng.normal(0, 0.7, 120)
    logits[sites == "t"] += 6.0  # the model sees site t's scanner as a whole as more patient-like
    probs = 1 / (1 + np.exp(-logits))
    judged = sites == "t"
    assert label_issues(labels, probs, judged).sum() >= 10  # unshifted: cleanlab calls its controls issues
    offsets = site_offsets(labels, probs, sites)
    assert set(offsets) == {"v", "w", "t"} and offsets["t"] < -4 and abs(offsets["v"]) < 1
    shifted = shift_scores(probs, sites, offsets)
    assert np.allclose([shifted[sites == s].mean() for s in ("v", "w", "t")], 0.5)  # each site's share of patients
    assert not label_issues(labels, shifted, judged).any()
    flipped = labels.copy()
    wrong = int(np.flatnonzero(judged & (labels == 1))[np.argmax(logits[judged & (labels == 1)])])  # a sure patient
    flipped[wrong] = 0
    shifted = shift_scores(probs, sites, site_offsets(flipped, probs, sites))
    assert np.flatnonzero(label_issues(flipped, shifted, judged)).tolist() == [wrong - 80]
    one_class = np.where(sites == "t", 0, labels)  # a site with one class: its shift cannot be told from its labels
    assert "t" not in site_offsets(one_class, probs, sites)
    assert np.isnan(shift_scores(probs, sites, site_offsets(one_class, probs, sites))[judged]).all()
    controls = np.where(sites == "t", 0, labels)  # site t of controls only, shifted, one of them called a patient
    t_logits = logits.copy()
    t_logits[judged] = -2.5 + 6.0 + rng.normal(0, 0.7, 40)
    t_probs = 1 / (1 + np.exp(-t_logits))
    controls[80] = 1
    shifted = shift_scores(t_probs, sites, site_offsets(controls, t_probs, sites))
    assert np.flatnonzero(label_issues(controls, shifted, judged)).tolist() == [0]


def test_a_site_whose_labels_disagree_more_often_than_the_verification_scans_fails():
    from fedqc.qc.criteria import SiteAUROCCheck
    from fedqc.qc.policy import QCPolicy

    labels = np.tile([1, 0], 20)
    verify = pd.DataFrame({"subject": [f"v{i}" for i in range(40)], "site": np.repeat(["v", "w"], 20),
                           "label": labels, "score": np.where(labels == 1, 0.8, 0.2)})
    site = pd.DataFrame({"subject": [f"t{i}" for i in range(40)], "site": "t", "label": labels,
                         "score": np.where(labels == 1, 0.8, 0.2)})  # the scans it has fitted rank perfectly

    def verdict(label_issues):
        policy = QCPolicy(revisit_after=2)
        policy.start(verify)
        ok = policy.check_site(SiteAUROCCheck(0.01), site, cycle=1, site="t", subjects=list(site["subject"]),
                               label_issues=label_issues)
        return ok, policy.log[-1]

    ok, row = verdict((8, 20, 2, 100))  # 8 of 20 fresh scans against 2 of 100 verification scans
    assert not ok and row["label_issues_p"] < 0.01 and "Fisher" in row["note"]
    ok, row = verdict((2, 20, 8, 100))  # a share like the verification scans': clean labels the model misjudges
    assert ok and row["label_issues_p"] > 0.5
    assert verdict((0, 0, 2, 100))[0]  # nothing judged: no evidence


def test_held_out_scans_wait_untrained_for_the_first_screening(tmp_path):
    arm, fed = scan_arm(tmp_path, start="scratch", skilled_after=12, skill=0.7, holdout=0.5)
    assert len(arm.held_out) == 10 + 2 and arm.held_out == scan_arm(tmp_path, start="scratch", holdout=0.5)[0].held_out
    state = {"encoder.w": np.zeros(1)}
    arm.begin(state, 0, None)
    for site in ("t", "u"):  # cycle 0, no skill yet: only the scans not held out train
        state = arm.visit(site, state, 0, 1e-3).state
    assert len(fed.trained) == 12 and not arm.held_out & set(fed.trained)
    arm.visit("t", state, 1, 1e-3)  # skilled at cycle 1: the screening judges the held-out scans out of sample
    assert arm.policy.skill_cycle == 1 and set(arm.policy.scan_issues) == arm.held_out
    assert {"t03", "t07"} <= arm.held_out and {"t03", "t07"} <= set(arm.policy.flagged)  # the odd and flipped scans
    assert {s for s in arm.held_out if s[0] == "t"} - {"t03", "t07"} <= set(fed.trained)  # the rest train from now on


def test_feature_distance_limit_is_robust_to_a_few_outliers_in_the_reference():
    rng = np.random.default_rng(1)
    features = rng.normal(0, 1, (200, 8))
    features[:4] += 10  # a few harmful verification scans among the reference
    moments = [{"feat_n": np.array([100.0]), "feat_sum": f.sum(0), "feat_sq": (f**2).sum(0)}
               for f in (features[:100], features[100:])]
    ref = FeatureReference.from_moments(moments)
    limit = OODLimit.from_null(feature_distance(features, ref.center, ref.scale), limit=6.0)
    good, far = rng.normal(0, 1, (50, 8)), rng.normal(0, 1, (3, 8)) + 10
    assert not limit.issues(feature_distance(good, ref.center, ref.scale)).any()
    assert limit.issues(feature_distance(far, ref.center, ref.scale)).all()


def test_feature_distance_separates_an_inverted_scan_from_good_ones(tiny_cohort):
    """A real (tiny, briefly trained) model: the inverted center's scans sit far from the good sites' features."""
    from fedqc.data.manifest import load_manifest
    from fedqc.models.state import initial_state
    from fedqc.protocol import TrainRequest
    from fedqc.site import Site

    cfg = tiny_config(tiny_cohort / "manifest.csv")
    manifest = load_manifest(cfg.manifest)
    sites = {s: Site(s, t, model=cfg.model) for s, t in manifest.groupby("site")}
    state = initial_state(cfg.model, 0)
    for cycle in range(3):
        for s in ("alpha", "beta"):
            state = sites[s].train(state, TrainRequest(lr=1e-3, seed=cycle, batch_size=5)).state
    good = [sites[s].evaluate(state, EvalRequest("val", moments=True)) for s in ("alpha", "beta")]
    ref = FeatureReference.from_moments([r.moments for r in good])
    null = pd.concat([sites[s].evaluate(state, EvalRequest(split, **ref.request())).scores
                      for s in ("alpha", "beta") for split in ("val", "train")])
    inverted = sites["harm01-inverted"].evaluate(state, EvalRequest("train", **ref.request())).scores
    clean_null = null[~null["subject"].isin(manifest.loc[manifest["harm"] != "none", "subject"])]
    assert inverted["ood"].min() > clean_null["ood"].max()  # every inverted scan beyond every good one


# ----------------------------------------------------------------------------- a QC arm on a fake federation
class ScanFederation:
    """Val site "v" (40 scans), training sites "t" (20 scans, t03 with odd features, t07 labelled wrongly) and
    "u" (4 scans, all patients). A model that trained fewer than ``skilled_after`` scans scores at chance."""

    def __init__(self, skilled_after: int = 0):
        rng = np.random.default_rng(2)
        self.skilled_after = skilled_after
        self.truth = {f"v{i:02d}": i % 2 for i in range(40)} | {f"t{i:02d}": i % 2 for i in range(20)} | \
            {f"u{i}": 1 for i in range(4)}
        self.labels = dict(self.truth) | {"t07": 0}  # t07 is a patient labelled a control
        self.features = {s: rng.normal(0, 1, 4) for s in self.truth}
        self.features["t03"] = self.features["t03"] + 12  # out of distribution
        self.noise = {s: rng.normal(0, 0.08) for s in self.truth} | {"t07": 0.15}  # the model is sure: a patient
        self.evaluated: list[tuple[str, int]] = []  # (split, scans)
        self.trained: list[str] = []

    def site_info(self):
        return {"v": SiteInfo("v", (), 40, 0), "t": SiteInfo("t", tuple(f"t{i:02d}" for i in range(20)), 0, 0),
                "u": SiteInfo("u", tuple(f"u{i}" for i in range(4)), 0, 0)}

    def train(self, site, state, request):
        subjects = list(request.subjects)
        self.trained += subjects
        return TrainReply({"encoder.w": state["encoder.w"] + len(subjects)}, len(subjects), 0.5, 0.0, subjects,
                          answers=request.nonce)

    def evaluate(self, sites, state, request: EvalRequest):
        skilled = state["encoder.w"][0] >= self.skilled_after
        replies = {}
        for site in sites:
            ids = [s for s in self.truth if s[0] == site and s not in request.exclude]
            if request.split == "val" and site != "v" or request.split == "train" and site == "v":
                ids = []
            score = [0.5 + self.noise[s] if not skilled else (0.8 if self.truth[s] else 0.2) + self.noise[s] for s in ids]
            frame = pd.DataFrame({"subject": ids, "site": site, "label": [self.labels[s] for s in ids], "score": score})
            f = np.array([self.features[s] for s in ids]).reshape(len(ids), 4)
            if request.ood_center:
                frame["ood"] = feature_distance(f, np.array(request.ood_center), np.array(request.ood_scale))
            moments = {"feat_n": np.array([float(len(f))]), "feat_sum": f.sum(0), "feat_sq": (f**2).sum(0)} \
                if request.moments else None
            self.evaluated.append((request.split, len(ids)))
            replies[site] = EvalReply({}, frame, moments=moments)
        return replies


def summary(arm: QCArm, folder) -> dict:
    pd.DataFrame({"cycle": [1], "seconds": [0.0]}).to_csv(folder / "cycles.csv", index=False)  # what the runner writes
    return arm.summary()


def scan_arm(tmp_path, start="clean", skilled_after=0, **qc):
    cfg = tiny_config("unused.csv", check_files=False, **{
        "arms": ["clean", "qc"], "qc": {"criterion": "auroc", "start": start, "trusted_sites": ["u"], **qc}})
    fed = ScanFederation(skilled_after)
    return QCArm(fed, cfg, "qc", tmp_path), fed


def test_the_summary_of_an_arm_that_only_refused_updates(tmp_path):
    """A QC arm whose log holds only refused replies (a lying site's, before any check judged a site) still sums up:
    no verification, no verification seconds."""
    arm, _ = scan_arm(tmp_path, skilled_after=99)
    arm.begin({"encoder.w": np.zeros(1)}, 1, None)
    arm.policy.reject(cycle=1, site="t", scope="visit", subjects=[], reason="update norm check: ...")
    arm.end_cycle(1)
    assert set(pd.read_csv(tmp_path / "qc_log.csv")["criterion"]) == {"invalid update"}
    result = summary(arm, tmp_path)
    assert result["verifications"] == 0 and result["verify_seconds"] == 0.0


def test_a_flipped_label_and_an_odd_scan_are_flagged_then_eliminated_at_their_revisit(tmp_path):
    arm, fed = scan_arm(tmp_path)
    state = {"encoder.w": np.zeros(1)}
    arm.begin(state, 1, None)  # the screening judges every site's scans at once
    assert set(arm.policy.flagged) == {"t03", "t07"} and not arm.policy.flagged_sites
    issues = arm.policy.scan_issues
    assert issues["t07"]["is_label_issue"] and not issues["t07"]["is_ood_issue"]
    assert issues["t03"]["is_ood_issue"] and issues["t03"]["stage"] == "screening"
    hop = arm.visit("t", state, 1, 1e-3)
    assert hop.n_scans == 18 and not {"t03", "t07"} & set(fed.trained)  # flagged scans sit out
    assert not arm.policy.fresh & set(fed.trained)  # trained scans are in-sample from now on
    state = hop.state
    arm.visit("t", state, 3, 1e-3)  # the revisit: still out of distribution, still mislabeled
    eliminated = arm.eliminated_table().set_index("subject")
    assert set(eliminated.index) == {"t03", "t07"} and eliminated.loc["t07", "stage"] == "scan: labels"
    assert eliminated.loc["t03", "stage"] == "scan: ood"
    arm.end_cycle(3)
    table = pd.read_csv(tmp_path / "scan_issues.csv")
    assert len(table) == 24 and set(table.loc[table["decision"] == "eliminated", "subject"]) == {"t03", "t07"}
    s = summary(arm, tmp_path)
    assert s["scan_issues"]["labels"] == 1 and s["scan_issues"]["ood"] == 1
    assert s["start"] == "clean" and s["oracle_start"] is True


def test_only_scans_the_model_never_trained_are_judged(tmp_path):
    arm, _ = scan_arm(tmp_path, start="trusted")
    assert arm.qc.start == "trusted"
    arm.begin({"encoder.w": np.zeros(1)}, 1, None)
    assert not arm.policy.fresh & {"u0", "u1", "u2", "u3"}  # the trusted site trained the start model
    assert "u0" not in arm.policy.scan_issues and "t00" in arm.policy.scan_issues  # only those are judged


def test_scratch_makes_no_decision_before_the_model_shows_skill(tmp_path):
    arm, fed = scan_arm(tmp_path, start="scratch", skilled_after=24, skill=0.7)
    state = {"encoder.w": np.zeros(1)}
    arm.begin(state, 0, None)
    assert arm.policy.skill_cycle is None and not arm.policy.log
    for site in ("t", "u"):  # cycle 0: no check, every scan trains (harmful ones too)
        state = arm.visit(site, state, 0, 1e-3).state
    assert not arm.policy.log and not arm.policy.flagged and len(fed.trained) == 24
    arm.visit("t", state, 1, 1e-3)  # cycle 1: the rescored verification scans show skill, so every site is screened
    assert arm.policy.skill_cycle == 1 and {r["cycle"] for r in arm.policy.log} == {1}
    assert not arm.policy.flagged and not arm.policy.scan_issues  # trained before skill: fitted, nothing to judge
    b = arm.policy.baseline
    assert skill(b["label"], b["score"], b["site"]) >= 0.7


def test_cost_counters_count_verification_rounds_site_scorings_and_scans(tmp_path):
    arm, fed = scan_arm(tmp_path)
    state = {"encoder.w": np.zeros(1)}
    arm.begin(state, 1, None)

    def cost():
        return summary(arm, tmp_path)["cost"]

    # start: the baseline (not a gate round), then the gate's refresh: scores + moments, then distances
    assert cost()["verification_rounds"] == 2 and cost()["site_scorings"] == 2
    assert cost()["scans_scored"] == 40 + 40 + 20 + 4
    arm.visit("t", state, 1, 1e-3)
    arm.visit("u", state, 1, 1e-3)
    assert cost()["verification_rounds"] == 2  # the same cycle: the site checks use the cycle's baseline
    arm.visit("t", state, 2, 1e-3)
    assert cost()["verification_rounds"] == 3  # a new cycle with nothing to judge scan by scan: one round
    arm.visit("t", state, 3, 1e-3)  # t03 and t07 are due: the feature reference is scored again (two rounds)
    assert cost() == {"verification_rounds": 5, "site_scorings": 7,
                      "scans_scored": 104 + 18 + 4 + 40 + 18 + 80 + 20 + 18}
    # the site's scans for its score shift (only the two revisits are judged), then the visit
    assert fed.evaluated[-2:] == [("train", 20), ("train", 18)]


def test_a_site_is_judged_without_its_scans_with_issues_and_fails_when_they_are_most_of_it():
    from fedqc.qc.criteria import SiteAUROCCheck
    from fedqc.qc.policy import QCPolicy

    rng = np.random.default_rng(3)
    labels = np.tile([1, 0], 20)
    verify = pd.DataFrame({"subject": [f"v{i}" for i in range(40)], "site": np.repeat(["v", "w"], 20), "label": labels,
                           "score": np.clip(np.where(labels == 1, 0.8, 0.2) + rng.normal(0, 0.1, 40), 0.01, 0.99)})
    site = pd.DataFrame({"subject": [f"t{i}" for i in range(40)], "site": "t", "label": np.tile([1, 0], 20),
                         "score": np.where(np.tile([1, 0], 20) == 1, 0.8, 0.2)})
    odd = [f"t{i}" for i in range(8)]
    site.loc[:7, "score"] = 1 - site.loc[:7, "score"]  # eight scans scored against their labels
    check = SiteAUROCCheck(0.01)

    def verdict(issues):
        policy = QCPolicy(revisit_after=2)
        policy.start(verify)
        return policy.check_site(check, site, cycle=1, site="t", subjects=list(site["subject"]), issues=issues)

    assert not verdict(None)  # judged with its odd scans, the site fails
    assert verdict(site["subject"].isin(odd))  # with them left out as per-scan issues, it passes
    assert not verdict(site["subject"].isin([f"t{i}" for i in range(21)]))  # 21 of 40 scans with issues: fails


def test_skill_is_the_median_site_auroc_so_a_harmful_minority_does_not_decide():
    labels = np.tile([1, 0], 30)
    sites = np.repeat(["a", "b", "c"], 20)
    good = np.where(labels == 1, 0.8, 0.2)
    scores = np.where(sites == "c", 1 - good, good)  # site c's labels are flipped
    assert skill(labels, scores, sites) == 1.0  # two good sites of three: skilled
    assert skill(labels, np.where(sites == "a", good, 1 - good), sites) == 0.0  # two of three flipped: no skill
    assert np.isnan(skill(np.ones(60), scores, sites))  # no site with both classes


# ----------------------------------------------------------------------------- the starts, end to end
@pytest.mark.slow
def test_trusted_and_scratch_starts_end_to_end_and_resume(tiny_cohort, tmp_path):
    from fedqc.data.manifest import load_manifest
    from fedqc.experiment.arms import arms_for
    from fedqc.experiment.run_dir import RunDir, load_checkpoint
    from fedqc.experiment.runner import run_experiment
    from fedqc.transport.inprocess import InProcessTransport
    from tests.conftest import checkpoint_path, same

    class Recording(InProcessTransport):
        def __init__(self, *args):
            super().__init__(*args)
            self.trained: list[tuple[str, tuple[str, ...]]] = []

        def train(self, site, state, request):
            reply = super().train(site, state, request)
            self.trained.append((site, tuple(reply.subjects)))
            return reply

    cfg = tiny_config(tiny_cohort / "manifest.csv", **{
        "arms": ["qc-auroc-hierarchical-trusted", "qc-auroc-hierarchical-scratch"], "train.cycles": 4,
        "train.branch_cycle": 1, "qc": {"trusted_sites": ["beta"], "trusted_epochs": 2, "skill": 0.0}})
    assert [(a.name, a.first_cycle, a.start_from) for a in arms_for(cfg)] == [
        ("trusted", 0, None), ("qc-auroc-hierarchical-trusted", 2, "trusted"), ("qc-auroc-hierarchical-scratch", 0, None)]
    manifest = load_manifest(cfg.manifest)
    transport = Recording(manifest, cfg.model)
    run = tmp_path / "run"
    RunDir(run).prepare(cfg, resume=False, overwrite=False)
    run_experiment(cfg, transport, run, quiet=True)
    trusted_hops = transport.trained[:2]  # the warm-up: cycles 0 and 1, a message of two epochs each, beta only
    beta = set(manifest.loc[(manifest["site"] == "beta") & (manifest["split"] == "train"), "subject"])
    assert {site for site, _ in trusted_hops} == {"beta"} and set().union(*(set(s) for _, s in trusted_hops)) == beta
    assert RunDir(run).arm("trusted").last_checkpoint() == 1  # the warm-up stops at W
    for arm, start in (("qc-auroc-hierarchical-trusted", "trusted"), ("qc-auroc-hierarchical-scratch", "scratch")):
        summary = json.loads((run / arm / "qc_summary.json").read_text())
        assert summary["start"] == start and summary["oracle_start"] is False and summary["skill_cycle"] is not None
        assert (run / arm / "scan_issues.csv").is_file() and (run / arm / "detection.csv").is_file()
    issues = pd.read_csv(run / "qc-auroc-hierarchical-trusted" / "scan_issues.csv")
    assert not set(issues["subject"]) & beta  # the trusted site's scans trained the start model: not judged
    # killed mid-arm, the scratch arm resumes to the same weights and decisions
    cut = tmp_path / "cut"
    RunDir(cut).prepare(cfg, resume=False, overwrite=False)
    arm = arms_for(cfg)[2]

    resumed = kill_and_resume_qc_arm(arm, transport, cfg, cut)
    assert same(resumed, load_checkpoint(checkpoint_path(run / arm.name, 3))["state"])
    pd.testing.assert_frame_equal(pd.read_csv(run / arm.name / "scan_issues.csv"),
                                  pd.read_csv(cut / arm.name / "scan_issues.csv"))


def test_a_site_made_of_odd_scans_fails_and_its_scans_are_eliminated_at_their_revisit(tmp_path):
    class WithOddSite(ScanFederation):
        def __init__(self):
            super().__init__()
            for i in range(4):  # a small center of out-of-distribution scans
                self.truth[f"w{i}"] = self.labels[f"w{i}"] = i % 2
                self.features[f"w{i}"] = np.full(4, 12.0) + i
                self.noise[f"w{i}"] = 0.0

        def site_info(self):
            return super().site_info() | {"w": SiteInfo("w", tuple(f"w{i}" for i in range(4)), 0, 0)}

    cfg = tiny_config("unused.csv", check_files=False, **{"arms": ["clean", "qc"],
                                                         "qc": {"criterion": "auroc", "start": "clean"}})
    arm = QCArm(WithOddSite(), cfg, "qc", tmp_path)
    state = {"encoder.w": np.zeros(1)}
    arm.begin(state, 1, None)
    assert "w" in arm.policy.flagged_sites and {f"w{i}" for i in range(4)} <= set(arm.policy.flagged)
    arm.visit("w", state, 3, 1e-3)  # the revisit: the scans are judged first, still out of distribution
    eliminated = arm.eliminated_table().set_index("subject")
    assert {f"w{i}" for i in range(4)} <= set(eliminated.index)
    assert set(eliminated.loc[[f"w{i}" for i in range(4)], "stage"]) == {"scan: ood"}


def test_a_registered_scan_check_adds_its_columns_and_its_issues_flag_scans(tmp_path):
    from fedqc.data.issues import Found
    from fedqc.qc.scans import SCAN_ISSUES, ScanCheck, ScanInput

    class FifthSubjects(ScanCheck):
        """A toy check: scans whose number is a multiple of five are issues; the score is the number."""

        name = "fifth"

        def find(self, data: ScanInput) -> Found:
            number = data.judged["subject"].str[1:].astype(int)
            return Found(pd.DataFrame({self.score_column(): number.to_numpy(float),
                                       self.flag_column(): (number % 5 == 0).to_numpy()}, index=data.judged.index))

    SCAN_ISSUES.register(FifthSubjects)
    try:
        arm, _ = scan_arm(tmp_path)
        arm.gate.checks.add("fifth")  # a config names the built-in checks only (fedqc.config.schema.SCAN_CHECKS)
        arm.begin({"encoder.w": np.zeros(1)}, 1, None)
        arm.end_cycle(1)
        table = pd.read_csv(tmp_path / "scan_issues.csv").set_index("subject")
        assert list(table.columns[-7:]) == ["label_score", "is_label_issue", "ood_score", "is_ood_issue",
                                            "fifth_score", "is_fifth_issue", "decision"]
        assert table.loc["t10", "is_fifth_issue"] and not table.loc["t04", "is_fifth_issue"]
        assert table.loc["t04", "fifth_score"] == 4.0
        assert table.loc["t10", "decision"] == "flagged" and table.loc["t04", "decision"] == "kept"
        assert set(arm.policy.flagged) == {"t00", "t03", "t05", "t07", "t10", "t15", "u0"}
        assert summary(arm, tmp_path)["scan_issues"]["fifth"] == int(table["is_fifth_issue"].sum()) > 0
    finally:
        del SCAN_ISSUES["fifth"]


def test_qc_decisions_say_what_qc_could_and_could_not_decide(tmp_path):
    """qc_decisions.csv: no decisions before skill (what trains then can no longer be judged out of sample), then
    the scans judged out of sample, and a one-class site whose scans the model has fitted checked without evidence."""
    from fedqc.analysis.report import decisions_section

    arm, fed = scan_arm(tmp_path, start="scratch", skilled_after=4)
    state = {"encoder.w": np.zeros(1)}
    arm.begin(state, 0, None)  # a fresh model scores at chance: no skill, no screening
    state = arm.visit("u", state, 0, 1e-3).state  # u's 4 patients train unjudged
    arm.end_cycle(0)
    state = arm.visit("t", state, 1, 1e-3).state  # skill at cycle 1: every site screened, t's 20 scans judged first
    state = arm.visit("u", state, 1, 1e-3).state  # u: one class, every scan fitted — no evidence either way
    arm.end_cycle(1)
    rows = pd.read_csv(tmp_path / "qc_decisions.csv", keep_default_na=False).set_index("cycle")
    assert rows.loc[0, ["deciding", "sites_checked", "scans_judged", "scans_trained_unjudged", "scans_untrained"]] \
        .tolist() == [False, 0, 0, 4, 20]
    assert rows.loc[1, ["deciding", "sites_without_evidence", "scans_judged", "scans_trained_unjudged"]].tolist() \
        == [True, "u", 20, 0]
    assert rows.loc[1, "scans_untrained"] == 2 and set(arm.policy.fresh) == {"t03", "t07"}  # flagged, sitting out
    assert rows.loc[0, "skill"] < 0.7 <= rows.loc[1, "skill"]
    s = summary(arm, tmp_path)
    assert (s["cycles_deciding"], s["scans_judged"], s["scans_trained_unjudged"], s["sites_never_judged"]) == \
        (1, 20, 4, ["u"])
    text = "\n".join(decisions_section("qc", pd.read_csv(tmp_path / "qc_decisions.csv")))
    assert "QC decided from cycle 1; 20 per-scan checks, every one out of sample" in text
    assert "4 trained before any" in text and ": u." in text
