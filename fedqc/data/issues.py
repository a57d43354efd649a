"""Issue checks of one shape, after cleanlab's Datalab issue managers: a new check is one registered class.

A check has a ``name`` (how a config, a report and the ``issue``/``stage`` columns call it)
and an ``issue`` (the stem of its columns, by default the name). :meth:`IssueCheck.find`
takes what its family of checks sees (a :class:`~fedqc.data.audit.AuditInput` for the
image audit, a :class:`~fedqc.qc.scans.ScanInput` for QC's per-scan checks) and returns a
:class:`Found`: one row per scan with ``<issue>_score`` and ``is_<issue>_issue`` (and any
further columns the check explains itself with), plus a summary. Each family keeps a
:class:`Registry`; its checks run in registration order and their columns follow it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import pandas as pd

Input = TypeVar("Input")


@dataclass
class Found:
    """What a check found: per scan (rows in the order of its input) its columns, and a summary of plain data."""

    table: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


class IssueCheck(ABC, Generic[Input]):
    """One issue type: per scan a score and whether it is an issue (module docstring)."""

    name: ClassVar[str]
    issue: ClassVar[str] = ""  # the stem of the columns; empty: the name

    @classmethod
    def stem(cls) -> str:
        return cls.issue or cls.name

    @classmethod
    def score_column(cls) -> str:
        return f"{cls.stem()}_score"

    @classmethod
    def flag_column(cls) -> str:
        return f"is_{cls.stem()}_issue"

    @abstractmethod
    def find(self, data: Input) -> Found:
        """Per scan of ``data``: :meth:`score_column`, :meth:`flag_column` (and this check's own columns)."""


Check = TypeVar("Check", bound=type)


class Registry(dict[str, Check]):
    """A family's checks by name, in registration order; :meth:`register` is a class decorator."""

    def register(self, cls: Check) -> Check:
        self[cls.name] = cls
        return cls

    def columns(self) -> list[str]:
        """The score and flag column of every registered check, in order."""
        return [c for check in self.values() for c in (check.score_column(), check.flag_column())]

    def counts(self, table: pd.DataFrame) -> dict[str, int]:
        """Per registered check, its issues in ``table`` (0 where the table predates the check)."""
        return {name: int(table[check.flag_column()].fillna(False).astype(bool).sum())
                if check.flag_column() in table else 0 for name, check in self.items()}
