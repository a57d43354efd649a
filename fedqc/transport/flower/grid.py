"""The server's :class:`~fedqc.transport.Transport` over a Flower grid, one message per request.

Node ids are random per run, so the transport first fans out a ``query`` to every node
and maps the site names they report to node ids.

Replies are collected with ``grid.push_messages`` / ``grid.pull_messages``. Flower's
``send_and_receive`` waits a fixed 3 s between pulls on a deployment grid (0.1 s in
simulation), which dominates the hop of a tiny site. This transport polls the in-memory
(simulation) grid every 5 ms, an in-process call, and a deployment grid with a wait that
grows by 20 % from 5 ms up to 1 s, so a reply is picked up within a fifth of the time
already waited. Evaluation messages carry the model's arrays only: scoring needs no
optimizer state.
"""

from __future__ import annotations

import time

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedqc.config import ExperimentConfig
from fedqc.errors import SiteError
from fedqc.protocol import (
    AuditFinding,
    EvalReply,
    EvalRequest,
    SiteInfo,
    State,
    TrainReply,
    TrainRequest,
    weights,
)
from fedqc.transport.flower.codec import (
    decode_eval_reply,
    decode_site_info,
    decode_train_reply,
    site_config,
    state_to_record,
    to_config,
)

POLL_S = (0.005, 1.0)  # first and longest wait between two pulls for replies
POLL_GROWTH = 1.2


class GridTransport:
    """Sites behind a Flower grid; waits up to ``wait_s`` for ``expected_nodes`` to connect."""

    def __init__(self, grid: Grid, cfg: ExperimentConfig, *, expected_nodes: int | None = None,
                 wait_s: float = 120.0, timeout_s: float | None = None):
        self.grid = grid
        self.timeout_s = timeout_s if timeout_s is not None else cfg.site_timeout_s
        # the in-memory grid (it has a pull_interval) answers pulls in-process: poll it at the fastest rate
        self.max_wait = POLL_S[0] if hasattr(grid, "pull_interval") else POLL_S[1]
        self.base = site_config(cfg)
        deadline = time.monotonic() + wait_s
        nodes = list(grid.get_node_ids())
        while expected_nodes and len(nodes) < expected_nodes and time.monotonic() < deadline:
            time.sleep(0.2)
            nodes = list(grid.get_node_ids())
        self.node_of, self.info = {}, {}
        for reply in self._send([self._message("query", n, {}) for n in nodes]):
            info = decode_site_info(reply.content)
            self.node_of[info.name] = reply.metadata.src_node_id
            self.info[info.name] = info

    def _message(self, kind: str, node: int, request: dict, state: State | None = None) -> Message:
        content = RecordDict({"config": to_config({**self.base, **request})})
        if state is not None:
            content["arrays"] = state_to_record(state)
        return Message(content=content, dst_node_id=node, message_type=kind)

    def _send_and_receive(self, messages: list[Message]) -> list[Message]:
        """Push ``messages`` and pull replies until all are in or ``timeout_s`` has passed."""
        pending = set(self.grid.push_messages(messages))
        deadline, wait, replies = time.monotonic() + self.timeout_s, POLL_S[0], []
        while pending:
            for reply in self.grid.pull_messages(pending):
                replies.append(reply)
                pending.discard(reply.metadata.reply_to_message_id)
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            time.sleep(min(wait, remaining))
            wait = min(wait * POLL_GROWTH, self.max_wait)
        return replies

    def _exchange(self, messages: list[Message]) -> dict[int, Message | str]:
        """Send ``messages``; per destination node its reply, or why there is none."""
        replies = {r.metadata.src_node_id: r for r in self._send_and_receive(messages)}
        out: dict[int, Message | str] = {}
        for m in messages:
            node = m.metadata.dst_node_id
            reply = replies.get(node)
            out[node] = (f"did not answer within {self.timeout_s} s" if reply is None
                         else f"failed: {reply.error.reason}" if reply.has_error() else reply)
        return out

    def _send(self, messages: list[Message]) -> list[Message]:
        """Replies to every message, or :class:`SiteError` for the first node without one."""
        replies = self._exchange(messages)
        for node, reply in replies.items():
            if isinstance(reply, str):
                raise SiteError(f"node {node} {reply}")
        return list(replies.values())

    def site_info(self) -> dict[str, SiteInfo]:
        return dict(self.info)

    def audit(self, site: str) -> list[AuditFinding]:
        (reply,) = self._send([self._message("query", self.node_of[site], {"audit": True})])
        return [AuditFinding(*f.split("\t", 2)) for f in reply.content["ids"].get("findings", [])]

    def train(self, site: str, state: State, request: TrainRequest) -> TrainReply:
        (reply,) = self._send([self._message("train", self.node_of[site], request.to_dict(), state)])
        return decode_train_reply(reply.content)

    def evaluate(self, sites: list[str], state: State, request: EvalRequest) -> dict[str, EvalReply]:
        """Scores from every site that answers; a failed or silent site gets :meth:`EvalReply.failed`."""
        model = weights(state)
        replies = self._exchange([self._message("evaluate", self.node_of[s], request.to_dict(), model) for s in sites])
        results = {}
        for site in sites:
            reply = replies[self.node_of[site]]
            results[site] = (EvalReply.failed(f"site {site} {reply}") if isinstance(reply, str)
                             else decode_eval_reply(reply.content))
        return results
