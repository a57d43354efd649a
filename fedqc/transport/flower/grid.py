"""The server's :class:`~fedqc.transport.Transport` over a Flower grid, one message per request.

Node ids are random per run, so the transport first fans out a ``query`` to every node
and maps the site names they report to node ids. Before every hop and evaluation it
looks for nodes that connected since: a SuperNode restarted without an authentication
key comes back under a new id, and its site is served from it again.

Replies are collected with ``grid.push_messages`` / ``grid.pull_messages``. Flower's
``send_and_receive`` waits a fixed 3 s between pulls on a deployment grid (0.1 s in
simulation), which dominates the hop of a tiny site. On the in-memory (simulation) grid
this transport pulls when a reply is stored (it hooks the grid's link state, so nothing
polls); on a deployment grid it waits between pulls a time that grows by 20 % from 5 ms
up to 0.25 s, so a reply is picked up within a fifth of the time already waited, and
within a quarter of a second on a long hop (a pull is one local request). Evaluation
messages carry the model's arrays only (scoring needs no optimizer state), encoded once
per fan-out; a cycle evaluation (:class:`~fedqc.protocol.CycleEvalRequest`) is one such
message per site, its parts' fields and replies under their parts' prefixes (codec).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import httpx
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedqc.config import ExperimentConfig
from fedqc.errors import SiteError
from fedqc.protocol import (
    CycleEvalReply,
    CycleEvalRequest,
    EvalReply,
    EvalRequest,
    ImageFinding,
    SiteInfo,
    State,
    TrainReply,
    TrainRequest,
    model_arrays,
)
from fedqc.transport import Reply
from fedqc.transport.flower.codec import (
    ARRAYS,
    CONFIG,
    ERROR,
    IDS,
    PACKED,
    decode_cycle_reply,
    decode_eval_reply,
    decode_site_info,
    decode_train_reply,
    packed_layout,
    site_config,
    slot,
    state_to_record,
    to_config,
    unslot,
)

log = logging.getLogger(__name__)

POLL_S = (0.005, 0.25)  # first and longest wait between two pulls for replies
POLL_GROWTH = 1.2
QUERY_TRIES = 3  # asks of a node which site it serves, at the start of a run


def describe_reply(reply: Message) -> dict:
    """What a site's reply carries, never its values: its type, the shape of each array, the length of each metric
    (None for a single number) and the value types of each config entry (ids and reasons: strings)."""
    record: dict = {"type": reply.metadata.message_type, "arrays": {}, "metrics": {}, "configs": {}}
    if not reply.has_error():
        for rec in reply.content.array_records.values():  # a packed state: the arrays it holds
            for k, a in rec.items():
                record["arrays"] |= ({name: list(shape) for name, _, shape in packed_layout(a.data)}
                                     if a.stype == PACKED else {k: list(a.shape)})
        for rec in reply.content.metric_records.values():
            record["metrics"] |= {k: (len(v) if isinstance(v, list) else None) for k, v in rec.items()}
        for rec in reply.content.config_records.values():
            record["configs"] |= {k: sorted({type(x).__name__ for x in (v if isinstance(v, list) else [v])})
                                  for k, v in rec.items()}
    return record


class GridTransport:
    """Sites behind a Flower grid; waits up to ``wait_s`` for ``expected_nodes`` to connect (fewer: :class:`SiteError`).

    With ``message_log`` every reply the server receives is described there, one JSON line each
    (:func:`describe_reply`): what the sites sent, for a privacy review, without the values.
    """

    def __init__(self, grid: Grid, cfg: ExperimentConfig, *, expected_nodes: int | None = None,
                 wait_s: float = 300.0, timeout_s: float | None = None, message_log: Path | None = None):
        self.grid, self.message_log = grid, message_log
        self.timeout_s = timeout_s if timeout_s is not None else cfg.site_timeout_s
        self.stored = self._hook_replies(grid)  # None: a deployment grid, polled
        self.base = site_config(cfg)
        deadline = time.monotonic() + wait_s
        nodes = list(grid.get_node_ids())
        while expected_nodes and len(nodes) < expected_nodes and time.monotonic() < deadline:
            time.sleep(0.2)
            nodes = list(grid.get_node_ids())
        if expected_nodes and len(nodes) < expected_nodes:  # a run without a site would lose its data unrecorded
            raise SiteError(f"{len(nodes)} of the {expected_nodes} SuperNodes expected connected within {wait_s:g} s;"
                            " start the missing ones and run again")
        self.node_of, self.info = {}, {}
        for reply in self._query_all(nodes):
            info = decode_site_info(reply.content)
            self.node_of[info.name] = reply.metadata.src_node_id
            self.info[info.name] = info
        self.seen = set(nodes)  # nodes already asked which site they serve; never asked again

    def _query_all(self, nodes: list[int]) -> list[Message]:
        """Every node's answer to ``query``, asking a node whose answer failed again (up to :data:`QUERY_TRIES`
        times, 1 s apart): a query changes nothing at a site, and a SuperLink under load can lose a reply (Flower
        1.41's SQLite state answered "database is locked" when 20 stock SuperNodes replied at once). A node still
        without an answer is :class:`SiteError`."""
        replies, failed = [], {}
        for attempt in range(QUERY_TRIES):
            if attempt:
                log.warning("asking %d node(s) again which site they serve: %s", len(failed), "; ".join(
                    f"node {n} {why}" for n, why in failed.items()))
                time.sleep(1.0)
            answers = self._exchange([self._message("query", n, {}) for n in (failed or nodes)])
            replies += [r for r in answers.values() if not isinstance(r, str)]
            failed = {n: r for n, r in answers.items() if isinstance(r, str)}
            if not failed:
                return replies
        node, why = next(iter(failed.items()))
        raise SiteError(f"node {node} {why}")

    def _rejoin(self) -> None:
        """Map SuperNodes that connected since the last look to their sites.

        A SuperNode that restarts without an authentication key registers anew and gets a
        new node id; from its next message on, its site is served by the new node. One
        ``get_node_ids`` call when no node is new; a new node costs one ``query``. Only
        the run's own sites are mapped: a site that was not there at the start stays out.
        """
        new = [n for n in self.grid.get_node_ids() if n not in self.seen]
        if not new:
            return
        self.seen.update(new)
        for node, reply in self._exchange([self._message("query", n, {}) for n in new]).items():
            site = None if isinstance(reply, str) else decode_site_info(reply.content).name
            if site in self.node_of:
                log.info("site %s rejoined as node %d (was node %d)", site, node, self.node_of[site])
                self.node_of[site] = node
            else:
                log.warning("node %d %s; it is left out of this run", node,
                            reply if isinstance(reply, str) else f"serves {site}, not a site of this run")

    @staticmethod
    def _hook_replies(grid: Grid) -> threading.Condition | None:
        """On the in-memory grid, a condition notified whenever its link state stores a reply (counted in
        ``count``); the hook wraps that one state object's ``store_message_res``."""
        state = getattr(grid, "state", None)
        if not hasattr(grid, "pull_interval") or not callable(getattr(state, "store_message_res", None)):
            return None
        stored = threading.Condition()
        stored.count = 0
        store = state.store_message_res

        def store_message_res(message):
            out = store(message)
            with stored:
                stored.count += 1
                stored.notify_all()
            return out

        state.store_message_res = store_message_res
        return stored

    def _message(self, kind: str, node: int, request: dict, state: State | None = None, *,
                 arrays: ArrayRecord | None = None) -> Message:
        content = RecordDict({CONFIG: to_config({**self.base, **request})})
        if state is not None or arrays is not None:
            content[ARRAYS] = arrays if arrays is not None else state_to_record(state)
        return Message(content=content, dst_node_id=node, message_type=kind)

    def _send_and_receive(self, messages: list[Message],
                          timeout_s: float | None = None) -> tuple[set[str], dict[str, Message]]:
        """Push ``messages`` and pull replies until all are in or ``timeout_s`` (default ``self.timeout_s``) has
        passed. Returns the ids of the messages the SuperLink accepted (it refuses one whose node is gone) and the
        replies by the id of the message they answer."""
        stored, timeout_s = self.stored, self.timeout_s if timeout_s is None else timeout_s
        pushed = {i for i in self.grid.push_messages(messages) if i}
        pending = set(pushed)
        deadline, wait, replies = time.monotonic() + timeout_s, POLL_S[0], {}
        while pending:
            seen = stored.count if stored is not None else 0
            pulled = self._pull(pending)
            for reply in pulled:
                replies[reply.metadata.reply_to_message_id] = reply
                pending.discard(reply.metadata.reply_to_message_id)
            if self.message_log is not None and pulled:
                with open(self.message_log, "a") as fh:
                    fh.writelines(json.dumps(describe_reply(r)) + "\n" for r in pulled)
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            if stored is not None:  # wake on the next stored reply (1 s at most: a reply stored unseen still counts)
                with stored:
                    stored.wait_for(lambda: stored.count != seen, timeout=min(1.0, remaining))
            else:
                time.sleep(min(wait, remaining))
                wait = min(wait * POLL_GROWTH, POLL_S[1])
        return pushed, replies

    def _pull(self, pending: set[str]) -> list[Message]:
        """The replies the SuperLink has for ``pending``; none this time when the SuperLink fails the pull.

        A SuperLink under load can fail a request (Flower 1.41's SQLite state answered
        HTTP 500 "database is locked" with 20 stock SuperNodes replying at once): the
        replies stay undelivered on the SuperLink, so the next pull gets them. A refusal
        (4xx, e.g. the run was stopped) is raised.
        """
        try:
            return list(self.grid.pull_messages(pending))
        except (httpx.HTTPStatusError, httpx.TransportError) as exc:
            if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code < 500:
                raise
            log.warning("pulling replies from the SuperLink failed (%s); trying again", exc)
            return []

    def _exchange(self, messages: list[Message], timeout_s: float | None = None) -> dict[int, Message | str]:
        """Send ``messages``; per destination node its reply, or why there is none.

        Replies are matched to messages by id, not by sender: when a node goes away (its
        heartbeats stop), the SuperLink itself answers for it with a ``NODE_UNAVAILABLE`` error.
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        pushed, replies = self._send_and_receive(messages, timeout_s)  # pushing gives each message its id
        out: dict[int, Message | str] = {}
        for m in messages:
            reply = replies.get(m.metadata.message_id)
            if m.metadata.message_id not in pushed:
                out[m.metadata.dst_node_id] = "is not connected (the SuperLink refused the message)"
            elif reply is None:
                out[m.metadata.dst_node_id] = f"did not answer within {timeout_s} s"
            else:
                out[m.metadata.dst_node_id] = f"failed: {reply.error.reason}" if reply.has_error() else reply
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

    def check_images(self, site: str) -> list[ImageFinding]:
        # "audit": the query's key since fedqc 0.1, kept so that servers and sites of either version understand it
        (reply,) = self._send([self._message("query", self.node_of[site], {"audit": True})])
        return [ImageFinding(*f.split("\t", 2)) for f in reply.content[IDS].get("findings", [])]

    def train(self, site: str, state: State, request: TrainRequest) -> TrainReply:
        self._rejoin()
        (reply,) = self._send([self._message("train", self.node_of[site], request.to_dict(), state)])
        return decode_train_reply(reply.content)

    def evaluate(self, sites: list[str], state: State, request: EvalRequest) -> dict[str, EvalReply]:
        """Scores from every site that answers; a failed or silent site gets :meth:`EvalReply.failed`."""
        return self._fan_out(sites, state, request.to_dict(), decode_eval_reply, EvalReply.failed)

    def evaluate_cycle(self, sites: list[str], state: State, request: CycleEvalRequest) -> dict[str, CycleEvalReply]:
        """Every part of ``request`` from every site that answers, one message each; a failed or silent site gets
        :meth:`CycleEvalReply.failed`."""
        return self._fan_out(sites, state, request.to_dict(), functools.partial(decode_cycle_reply, request=request),
                             functools.partial(CycleEvalReply.failed, request))

    def _fan_out(self, sites: list[str], state: State, fields: dict, decode: Callable[[RecordDict | dict], Reply],
                 failed: Callable[[str], Reply]) -> dict[str, Reply]:
        """One ``evaluate`` message of ``fields`` per site, ``decode``-d; ``failed`` for a site without a reply."""
        self._rejoin()
        arrays = state_to_record(model_arrays(state))  # one encoding for the whole fan-out
        if self.stored is not None and len(sites) > 1:  # in simulation, a fan-out is one message
            return self._evaluate_at_once(sites, arrays, fields, decode, failed)
        replies = self._exchange([self._message("evaluate", self.node_of[s], fields, arrays=arrays) for s in sites])
        results = {}
        for site in sites:
            reply = replies[self.node_of[site]]
            results[site] = failed(f"site {site} {reply}") if isinstance(reply, str) else decode(reply.content)
        return results

    def _evaluate_at_once(self, sites: list[str], arrays: ArrayRecord, fields: dict,
                          decode: Callable[[RecordDict | dict], Reply],
                          failed: Callable[[str], Reply]) -> dict[str, Reply]:
        """Simulation only: the whole fan-out as one message, to the first site's node, which scores every site
        (all virtual nodes read the same manifest). One engine dispatch (~10 ms: Ray, the link state) instead of
        one per site; each site still fails alone; ``timeout_s`` is per site. Counted as one message per site
        (:class:`~fedqc.transport.counting.CountingTransport`): what the deployment grid sends."""
        node = self.node_of[sites[0]]
        message = self._message("evaluate", node, {**fields, "sites": list(sites)}, arrays=arrays)
        reply = self._exchange([message], self.timeout_s * len(sites))[node]
        if isinstance(reply, str):
            return {s: failed(f"site {s} {reply}") for s in sites}
        c = reply.content
        return {site: failed(f"site {site} failed: {c[slot(ERROR, i)]['reason']}") if slot(ERROR, i) in c
                else decode(unslot(c, i)) for i, site in enumerate(sites)}
