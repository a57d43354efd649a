"""The cycle's closing message: a site's verification and test scores of the final state in one message, answered
exactly as the separate requests were, on every transport; the test part kept apart from the calibration."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from uuid import uuid4

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedqc.data.manifest import load_manifest
from fedqc.models.state import initial_state
from fedqc.protocol import CycleEvalReply, CycleEvalRequest, EvalReply, EvalRequest
from fedqc.strategies.cycles import score_cycle
from fedqc.transport.counting import CountingTransport
from fedqc.transport.flower.client_app import make_client_app
from fedqc.transport.flower.grid import GridTransport
from fedqc.transport.fresh import FreshTransport
from fedqc.transport.inprocess import InProcessTransport
from tests.conftest import tiny_config


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch):
    """What Flower sets in a ServerApp's process, and a message needs."""
    for key, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 3)):
        monkeypatch.setattr(TaskIdentity, key, value)


@pytest.fixture(scope="module")
def sites(tiny_cohort):
    """The tiny cohort's sites in-process, a model state and, per site, the val scan its closing request leaves
    out (the first; none at a site with one val scan)."""
    cfg = tiny_config(tiny_cohort / "manifest.csv")
    manifest = load_manifest(cfg.manifest)
    val = manifest[manifest["split"] == "val"].groupby("site")["subject"].apply(list)
    exclude = {s: tuple(v[:1]) if len(v) > 1 else () for s, v in val.items()}
    return cfg, InProcessTransport(manifest, cfg.model), initial_state(cfg.model, 0), exclude


def assert_same(a: EvalReply, b: EvalReply) -> None:
    """Two replies carry the same scores, counts, skipped scans and moments (the nonce aside)."""
    assert a.error is None and b.error is None
    assert a.scores.equals(b.scores) and a.counts == b.counts and a.skipped == b.skipped
    assert (a.moments is None) == (b.moments is None)


def separately(transport, sites, state, exclude) -> dict[str, tuple[EvalReply | None, EvalReply | None]]:
    """Each site's verification and test replies as two requests of their own (what a cycle sent before)."""
    out = {}
    for site in sites:
        val = transport.evaluate([site], state, EvalRequest("val", exclude=exclude.get(site, ())))[site]
        test = transport.evaluate([site], state, EvalRequest("test"))[site]
        out[site] = (val, test)
    return out


def test_a_cycle_request_is_named_validated_and_travels_as_flat_fields():
    request = CycleEvalRequest(verification=EvalRequest("val", exclude=("a1", "a2")), test=EvalRequest("test"))
    fields = dict(ConfigRecord({k: list(v) if isinstance(v, tuple) else v for k, v in request.to_dict().items()
                                if not (isinstance(v, tuple) and not v)}))  # what a Flower message holds
    assert CycleEvalRequest.from_dict(fields) == request and fields["parts"] == ["verification", "test"]
    assert CycleEvalRequest.from_dict(CycleEvalRequest(test=EvalRequest("test")).to_dict()).verification is None
    with pytest.raises(ValueError, match="needs a verification or a test part"):
        CycleEvalRequest()
    with pytest.raises(ValueError, match="test part must be an EvalRequest of split 'test'"):
        CycleEvalRequest(test=EvalRequest("val"))  # verification scores can never pass for test scores
    with pytest.raises(ValueError, match="verification part must be an EvalRequest of split 'val'"):
        CycleEvalRequest(verification=EvalRequest("test"))
    with pytest.raises(ValueError, match="unknown cycle evaluation part"):
        CycleEvalRequest.from_dict({**request.to_dict(), "parts": ["verification", "train"]})
    failed = CycleEvalReply.failed(CycleEvalRequest(test=EvalRequest("test")), "gone")
    assert failed.verification is None and failed.test.error == "gone"


def test_in_process_the_closing_message_answers_what_the_separate_requests_did(sites):
    cfg, transport, state, exclude = sites
    names = sorted(transport.sites)
    before = separately(transport, names, state, exclude)
    for site in names:  # one message per site, both parts
        request = CycleEvalRequest(verification=EvalRequest("val", exclude=exclude[site]), test=EvalRequest("test"))
        reply = transport.evaluate_cycle([site], state, request)[site]
        assert_same(reply.verification, before[site][0])
        assert_same(reply.test, before[site][1])
        assert len(reply.verification.scores) and set(reply.verification.scores["subject"]).isdisjoint(
            reply.test.scores["subject"])


class AppGrid:
    """A grid whose nodes run fedqc's ClientApp in this process (node i: the i-th site, as in simulation), each
    message answered when pushed. With ``simulation`` it has what GridTransport hooks on Flower's in-memory grid,
    so a fan-out to several sites is one message (GridTransport._evaluate_at_once); otherwise one per site, as a
    deployment grid."""

    def __init__(self, manifest: str, n_sites: int, simulation: bool):
        self.app, self.replies, self.pushed = make_client_app(manifest), {}, []
        self.nodes = {100 + i: i for i in range(n_sites)}
        if simulation:
            self.pull_interval = 0.1
            self.state = SimpleNamespace(store_message_res=lambda message: None)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages: list[Message]) -> list[str]:
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid4().hex
            self.pushed.append(m.metadata.message_type)
            node = m.metadata.dst_node_id
            reply = self.app(m, Context(7, node, {"partition-id": self.nodes[node]}, RecordDict(), {}))
            self.replies[m.metadata.message_id] = reply
            if hasattr(self, "state"):
                self.state.store_message_res(reply)
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, ids) -> list[Message]:
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]


@pytest.mark.parametrize("simulation", [False, True], ids=["deployment", "simulation"])
def test_over_flower_the_closing_message_answers_what_the_separate_requests_did(sites, simulation):
    """Through the ClientApp and the codec (a request's parts as prefixed fields, a reply's as prefixed records):
    the replies equal the separate requests' over the same grid, every part naming its own nonce (FreshTransport);
    one message per site, or in simulation one for the whole fan-out."""
    cfg, inprocess, state, exclude = sites
    names = sorted(inprocess.sites)
    grid = AppGrid(str(cfg.manifest), len(names), simulation)
    transport = FreshTransport(GridTransport(grid, cfg, expected_nodes=len(names), timeout_s=60))
    before = separately(transport, names, state, exclude)
    assert all(before[s][1].scores.equals(inprocess.evaluate([s], state, EvalRequest("test"))[s].scores)
               for s in names if len(before[s][1].scores))  # the codec's scores are the site's
    grid.pushed.clear()
    both = [s for s in names if exclude[s] == ()]  # the sites whose closing requests are alike: one fan-out
    request = CycleEvalRequest(verification=EvalRequest("val"), test=EvalRequest("test"))
    replies = transport.evaluate_cycle(both, state, request)
    assert grid.pushed == ["evaluate"] * (1 if simulation and len(both) > 1 else len(both))
    for site in both:
        assert_same(replies[site].verification, before[site][0])
        assert_same(replies[site].test, before[site][1])
        assert replies[site].verification.answers != replies[site].test.answers
    site = next(s for s in names if exclude[s])
    only = transport.evaluate_cycle([site], state, CycleEvalRequest(EvalRequest("val", exclude=exclude[site])))
    assert only[site].test is None
    assert_same(only[site].verification, before[site][0])


class Stale:
    """A transport whose sites answer the verification part with an earlier reply (another nonce)."""

    def __init__(self, inner):
        self.inner = inner

    def evaluate_cycle(self, sites, state, request):
        replies = self.inner.evaluate_cycle(sites, state, request)
        return {s: dataclasses.replace(r, verification=dataclasses.replace(r.verification, answers="0123"))
                for s, r in replies.items()}


def test_a_stale_part_is_refused_alone(sites):
    _, transport, state, _ = sites
    request = CycleEvalRequest(verification=EvalRequest("val"), test=EvalRequest("test"))
    reply = FreshTransport(Stale(transport)).evaluate_cycle(["alpha"], state, request)["alpha"]
    assert reply.verification.error.startswith("stale reply (message freshness): it answers request 0123")
    assert reply.verification.scores.empty and reply.test.error is None and len(reply.test.scores)


class Recording:
    """A fake transport: site ``<name>`` scores its val scans 0.25 and its test scans 0.75; records each call."""

    def __init__(self, failing: str = ""):
        self.calls, self.failing = [], failing

    def evaluate_cycle(self, sites, state, request):
        self.calls.append((tuple(sites), request))

        def part(site, r):
            score = 0.25 if r.split == "val" else 0.75
            return EvalReply({}, pd.DataFrame({"subject": [f"{site}-{r.split}"], "site": site, "label": [1],
                                               "score": [score]}))

        return {s: CycleEvalReply.failed(request, "down") if s == self.failing
                else request.answer(lambda r, s=s: part(s, r)) for s in sites}


def test_score_cycle_sends_one_message_per_site_and_keeps_the_test_scores_apart():
    """Sites asked alike share a fan-out; every site gets one message with the parts it has (verification where the
    calibration asks, test where there are test scans); the verification replies hold only val scores, the test
    replies only test scores, in the test sites' order; a failed site fails both its parts."""
    fake = Recording(failing="d")
    counting = CountingTransport(fake)
    verification = {"a": (), "b": ("b1",), "c": (), "v": ()}  # v: verification scans only
    test_sites = ["d", "c", "a", "b"]  # d: test scans only (and it fails)
    val, test = score_cycle(counting, {}, verification, test_sites)
    assert counting.messages == 5  # |{a, b, c, d, v}|, not 4 + 4
    assert sorted(site for sites, _ in fake.calls for site in sites) == ["a", "b", "c", "d", "v"]
    asked = {site: request for sites, request in fake.calls for site in sites}
    assert asked["a"] == asked["c"] == CycleEvalRequest(EvalRequest("val"), EvalRequest("test"))
    assert asked["b"] == CycleEvalRequest(EvalRequest("val", exclude=("b1",)), EvalRequest("test"))
    assert asked["v"].test is None and asked["d"].verification is None
    assert list(val) == ["a", "b", "c", "v"] and list(test) == test_sites
    assert all((r.scores["score"] == 0.25).all() for r in val.values())
    assert test["d"].error == "down" and all((test[s].scores["score"] == 0.75).all() for s in "abc")


def test_the_meter_counts_the_model_state_each_message_moves():
    """A training request moves its state (optimizer's included) and its reply's; an evaluation the model arrays
    alone, once per site; a training request that fails moves only what was sent."""
    from fedqc.protocol import TrainReply, TrainRequest

    model = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float64)}  # 48 + 32 bytes
    full = {**model, "optim.m.w": np.zeros((3, 4), np.float32)}  # + 48

    class Fake(Recording):
        def train(self, site, state, request):
            if site == "down":
                raise RuntimeError("site gone")
            return TrainReply({**state, "optim.v.w": np.zeros((3, 4), np.float32)}, 1, 0.5, 0.1, ["a1"])

    counting = CountingTransport(Fake())
    counting.train("a", full, TrainRequest(lr=1e-3, seed=0, batch_size=2))
    assert counting.state_bytes == 128 + 176
    with pytest.raises(RuntimeError):
        counting.train("down", full, TrainRequest(lr=1e-3, seed=0, batch_size=2))
    assert counting.state_bytes == 304 + 128
    score_cycle(counting, full, {"a": (), "b": ()}, ["a", "b", "c"])
    assert counting.state_bytes == 432 + 3 * 80 and counting.messages == 2 + 3


def test_the_closing_message_counts_one_per_site_in_a_run(tmp_path, tiny_cohort):
    """A clean arm with the default federated calibration: per cycle its hops, one message per BatchNorm pass and
    verification site, then one closing message per site with verification or test scans — the verification
    sites that also hold test scans no longer get a message of their own."""
    from fedqc.experiment.runner import simulate

    cfg = tiny_config(tiny_cohort / "manifest.csv", **{"arms": ["clean"], "train.cycles": 2,
                                                       "calibration": {"batchnorm": "federated"}})
    simulate(cfg, tmp_path / "run", quiet=True)
    manifest = load_manifest(cfg.manifest)
    val, test = (set(manifest.loc[manifest["split"] == split, "site"]) for split in ("val", "test"))
    cycles = pd.read_csv(tmp_path / "run" / "clean" / "cycles.csv")
    passes = pd.read_csv(tmp_path / "run" / "clean" / "calibration.csv")["bn_passes"].to_numpy()
    assert (passes > 0).all() and val & test and val - test  # both kinds of closing message
    assert np.array_equal(cycles["messages"], cycles["hops"] + passes * len(val) + len(val | test))
    # before: a fan-out for the threshold and one for the test split, len(val) + len(test) messages
    assert len(val) + len(test) - len(val | test) == len(val & test) > 0


def test_a_reply_without_a_part_it_was_asked_for_fails_that_part(sites):
    """Over Flower (the codec) and through FreshTransport: a part missing from a site's reply is a failed part, not a
    reply the server believes or a crash."""
    from fedqc.transport.flower.codec import decode_cycle_reply, encode_cycle_reply

    _, transport, state, _ = sites
    request = CycleEvalRequest(verification=EvalRequest("val"), test=EvalRequest("test"))
    test_only = transport.evaluate_cycle(["alpha"], state, CycleEvalRequest(test=EvalRequest("test")))["alpha"]
    decoded = decode_cycle_reply(encode_cycle_reply(test_only), request)
    assert decoded.verification.error == "the reply lacks its verification part"
    assert_same(decoded.test, test_only.test)

    class Partial:
        def evaluate_cycle(self, sites, state, request):
            return {s: dataclasses.replace(r, verification=None)
                    for s, r in transport.evaluate_cycle(sites, state, request).items()}

    reply = FreshTransport(Partial()).evaluate_cycle(["alpha"], state, request)["alpha"]
    assert reply.verification.error == "no reply to the val part" and reply.test.error is None
