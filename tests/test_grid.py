"""The grid transport when SuperNodes go away and come back, on an in-memory stand-in for a deployment grid."""

from __future__ import annotations

from uuid import uuid4

import httpx
import pytest
from flwr.app import Message
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.supercore.task_identity import TaskIdentity

from fedqc.errors import SiteError
from fedqc.protocol import SiteInfo
from fedqc.transport.flower.codec import encode_site_info
from fedqc.transport.flower.grid import GridTransport
from tests.conftest import tiny_config


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch):
    """What Flower sets in a ServerApp's process, and a message needs."""
    for key, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 3)):
        monkeypatch.setattr(TaskIdentity, key, value)


class LoopbackGrid:
    """Nodes that answer ``query`` at once, as a SuperLink relays them.

    A node in ``gone`` stopped sending heartbeats: it is no longer listed, and the
    SuperLink answers its messages with ``NODE_UNAVAILABLE``. A message to a node the
    SuperLink does not know is refused (an empty id), as Flower 1.41 does.
    """

    def __init__(self, sites: dict[int, str]):
        self.sites, self.gone, self.inbox, self.queried = dict(sites), set(), {}, []

    def get_node_ids(self) -> list[int]:
        return [n for n in self.sites if n not in self.gone]

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid4().hex
            known = m.metadata.dst_node_id in self.sites
            ids.append(m.metadata.message_id if known else "")
            if known:
                self.inbox[m.metadata.message_id] = m
                self.queried.append(m.metadata.dst_node_id)
        return ids

    def pull_messages(self, ids) -> list[Message]:
        replies = []
        for i in list(ids):
            m = self.inbox.pop(i)
            node = m.metadata.dst_node_id
            if node in self.gone:
                replies.append(create_message_error_unavailable_res_message(m.metadata, "node_unavail"))
            else:
                replies.append(Message(encode_site_info(SiteInfo(self.sites[node], ("s1",), 1, 1)), reply_to=m))
        return replies


def _query(transport: GridTransport, node: int) -> Message | str:
    return transport._exchange([transport._message("query", node, {})])[node]


def test_a_node_that_went_away_is_reported_as_unavailable_not_as_silent(tiny_cohort):
    grid = LoopbackGrid({11: "alpha", 12: "beta"})
    transport = GridTransport(grid, tiny_config(tiny_cohort / "manifest.csv"), expected_nodes=2, timeout_s=30)
    assert transport.node_of == {"alpha": 11, "beta": 12}
    grid.gone.add(12)
    reason = _query(transport, 12)
    assert isinstance(reason, str) and reason.startswith("failed: ") and "did not answer" not in reason
    assert _query(transport, 99) == "is not connected (the SuperLink refused the message)"
    assert not isinstance(_query(transport, 11), str)


def test_a_restarted_supernode_serves_its_site_again_under_its_new_id(tiny_cohort):
    grid = LoopbackGrid({11: "alpha", 12: "beta"})
    transport = GridTransport(grid, tiny_config(tiny_cohort / "manifest.csv"), expected_nodes=2, timeout_s=30)
    grid.gone.add(12)
    grid.sites[13] = "beta"  # beta's SuperNode restarted: it registered anew
    grid.sites[14] = "stranger"  # a site that was not in the run when it started
    transport._rejoin()
    assert transport.node_of == {"alpha": 11, "beta": 13}
    assert set(transport.site_info()) == {"alpha", "beta"}, "a site joining mid-run stays out"
    asked = len(grid.queried)
    transport._rejoin()
    assert len(grid.queried) == asked, "each new node is asked once"


def test_a_run_whose_supernodes_do_not_all_connect_stops_in_one_line_instead_of_going_on_without_a_site(tiny_cohort):
    grid = LoopbackGrid({11: "alpha", 12: "beta"})
    with pytest.raises(SiteError, match=r"^2 of the 3 SuperNodes expected connected within 0.5 s; start the missing"):
        GridTransport(grid, tiny_config(tiny_cohort / "manifest.csv"), expected_nodes=3, wait_s=0.5, timeout_s=30)
    assert not grid.queried, "no site was asked anything"


class BusyGrid(LoopbackGrid):
    """A SuperLink whose next pulls fail with ``status`` (as Flower 1.41's did when its SQLite state was locked);
    the replies stay there."""

    def __init__(self, sites: dict[int, str], status: int, failures: int):
        super().__init__(sites)
        self.status, self.failures = status, failures

    def pull_messages(self, ids) -> list[Message]:
        if self.failures:
            self.failures -= 1
            request = httpx.Request("POST", "http://127.0.0.1/v1/runtime/pull-messages")
            raise httpx.HTTPStatusError("busy", request=request, response=httpx.Response(self.status, request=request))
        return super().pull_messages(ids)


def test_a_failed_pull_is_tried_again_and_loses_no_reply(tiny_cohort, caplog):
    grid = BusyGrid({11: "alpha", 12: "beta"}, status=500, failures=3)
    transport = GridTransport(grid, tiny_config(tiny_cohort / "manifest.csv"), expected_nodes=2, timeout_s=30)
    assert transport.node_of == {"alpha": 11, "beta": 12} and grid.failures == 0
    assert caplog.text.count("pulling replies from the SuperLink failed") == 3


def test_a_refused_pull_is_raised(tiny_cohort):
    grid = BusyGrid({11: "alpha"}, status=403, failures=1)
    with pytest.raises(httpx.HTTPStatusError):
        GridTransport(grid, tiny_config(tiny_cohort / "manifest.csv"), expected_nodes=1, timeout_s=30)


class LossyGrid(LoopbackGrid):
    """A SuperLink that loses the first ``losses`` replies of ``node`` (its upload failed: Flower answers with an
    error message instead)."""

    def __init__(self, sites: dict[int, str], node: int, losses: int):
        super().__init__(sites)
        self.node, self.losses = node, losses

    def pull_messages(self, ids) -> list[Message]:
        replies = []
        for i in list(ids):
            if self.inbox[i].metadata.dst_node_id == self.node and self.losses:
                self.losses -= 1
                replies.append(create_message_error_unavailable_res_message(self.inbox.pop(i).metadata, "lost"))
        return replies + super().pull_messages([i for i in ids if i in self.inbox])


def test_a_lost_answer_to_the_first_query_is_asked_for_again(tiny_cohort, caplog):
    grid = LossyGrid({11: "alpha", 12: "beta"}, node=12, losses=2)
    transport = GridTransport(grid, tiny_config(tiny_cohort / "manifest.csv"), expected_nodes=2, timeout_s=30)
    assert transport.node_of == {"alpha": 11, "beta": 12}
    assert grid.queried == [11, 12, 12, 12], "only the node without an answer is asked again"
    assert caplog.text.count("asking 1 node(s) again which site they serve: node 12 failed") == 2


def test_a_node_that_never_answers_the_first_query_ends_the_run_in_one_line(tiny_cohort):
    grid = LossyGrid({11: "alpha", 12: "beta"}, node=12, losses=3)
    with pytest.raises(SiteError, match="^node 12 failed: "):
        GridTransport(grid, tiny_config(tiny_cohort / "manifest.csv"), expected_nodes=2, timeout_s=30)
