"""Granularity: how a QC visit trains its scans and narrows a rejected update down to single scans.

``attempt(subjects, scope)`` trains ``subjects`` on the current state and returns
whether the update was accepted (the caller keeps or rolls back the state);
``flag(subject)`` puts a scan that failed alone on the revisit list.

``batch`` (the reference)
    Verify after every training batch; on rejection retrain the batch's scans one at a
    time, verifying each.
``hierarchical``
    Verify once per visit; only on rejection split the scans in halves, then smaller,
    down to single scans, so a clean visit costs one verification and one harmful scan
    in ``n`` about ``2·log2(n)``.
"""

from __future__ import annotations

from typing import Callable

from fedqc.protocol import batches

Attempt = Callable[[list[str], str], bool]
Flag = Callable[[str], None]


def batch_search(pool: list[str], attempt: Attempt, flag: Flag, batch_size: int) -> None:
    for chunk in batches(pool, batch_size):
        if not attempt(chunk, "batch"):
            for subject in chunk:
                if not attempt([subject], "scan"):
                    flag(subject)


def hierarchical_search(pool: list[str], attempt: Attempt, flag: Flag, batch_size: int) -> None:
    if attempt(pool, "visit"):
        return
    if len(pool) == 1:
        flag(pool[0])
    else:
        _bisect(pool, attempt, flag)


def _bisect(group: list[str], attempt: Attempt, flag: Flag) -> None:
    mid = (len(group) + 1) // 2
    for part in (group[:mid], group[mid:]):
        if not part or attempt(part, "scan" if len(part) == 1 else "group"):
            continue
        if len(part) == 1:
            flag(part[0])
        else:
            _bisect(part, attempt, flag)


SEARCHES: dict[str, Callable[[list[str], Attempt, Flag, int], None]] = {
    "batch": batch_search, "hierarchical": hierarchical_search}
