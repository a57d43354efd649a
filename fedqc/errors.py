"""Errors a user can fix: the command line prints them as one line (one more per problem), never a traceback.

Anything else that escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(ValueError):
    """An unusable input or request; ``problems`` lists one line per problem when there are several."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        super().__init__(message)


class ProblemsError(UserError):
    """A file with one or more problems, all reported together."""

    def __init__(self, source: str | Path, problems: list[str]):
        super().__init__(f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(problems), problems)


class ConfigError(ProblemsError):
    """An unusable experiment config."""


class ManifestError(ProblemsError):
    """An unusable manifest."""


class RunDirError(UserError):
    """A run folder that cannot be used as asked (exists, or was run with another config)."""


class BrokenScanError(UserError):
    """An unusable scan met with ``strict`` on."""


class SiteError(RuntimeError):
    """A site raised, replied with an error, or did not answer in time: the hop is lost."""
