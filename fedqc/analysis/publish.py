"""What follows a run's or a study's tables: ``report.html`` (:mod:`fedqc.analysis.report_html`) and the config's
experiment tracking (:mod:`fedqc.analysis.tracking`). ``fedqc infer``, ``fedqc study`` and the Python API call these
after writing the tables, so the page and the tracked record always come from the same files."""

from __future__ import annotations

from pathlib import Path

from fedqc.analysis.report_html import write_html
from fedqc.analysis.tracking import track_run, track_study


def publish_run(run: Path, *, html: bool = True) -> Path | None:
    """After ``fedqc infer``: ``run/report.html`` (``html``), then the run logged to its config's ``tracking``
    backend, if any. Returns the page's path (None without ``html``)."""
    page = write_html(run) if html else None
    track_run(run)
    return page


def publish_study(out: Path, runs: dict[str, Path], *, html: bool = True) -> Path | None:
    """After a study's (or a sweep's) tables: ``out/report.html`` (``html``), then its finished ``runs`` (name →
    folder) and the study logged to the config's ``tracking`` backend, if any. Returns the page's path."""
    page = write_html(out) if html else None
    track_study(out, runs)
    return page
