"""QC's record of the scans: a per-scan ledger (status, stage, cycles) and the event log of every change.

The ledger holds one :class:`ScanEntry` per scan QC knows of — the training scans the
start model has not trained on, and every scan flagged or eliminated. A scan is in the
pool, flagged (out of training until its revisit is due) or eliminated (out for good);
independently, it is *untrained* until an adopted update has trained it (the per-scan
checks judge only those: out of sample). :class:`~fedqc.qc.policy.QCPolicy` alone
changes it, and each change appends an event to :attr:`ScanLedger.events`, written to
``qc_events.csv`` (:data:`EVENT_COLUMNS`); ``flagged.csv`` and ``revisits.csv`` are views of
that log (:meth:`ScanLedger.flags`, :meth:`ScanLedger.revisits`).

Order is part of the record: a scan that changes status moves to the end of the ledger,
so each status lists its scans in the order they reached it — the order ``eliminated.csv``
and the checkpoint's ``flagged`` and ``eliminated`` have always had.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

# qc_events.csv: one row per change, in order. ``stage`` says what decided it (verification, site, audit,
# scan: <issue>, ...); ``cycle_flagged`` and ``due`` are a flag's, ``accepted`` a revisit's.
EVENT_COLUMNS = ["cycle", "event", "subject", "site", "stage", "cycle_flagged", "due", "accepted"]


class ScanStatus(str, Enum):
    POOL = "pool"  # trains when its site visits
    FLAGGED = "flagged"  # out of training until its revisit is due
    ELIMINATED = "eliminated"  # out of training for good


class Event(str, Enum):
    """The changes the event log records (``qc_events.csv``'s ``event``)."""

    FLAGGED = "flagged"  # a scan flagged; stage ``site``: flagged with its site (its status is the site's)
    REVISITED = "revisited"  # a flagged scan judged again: accepted → back in the pool
    ELIMINATED = "eliminated"
    TRAINED = "trained"  # an untrained scan first trained by an adopted update: in sample from now on
    DROPPED = "dropped"  # a val scan taken out of the verification set
    SITE_FLAGGED = "site flagged"
    SITE_REVISITED = "site revisited"
    SITE_ELIMINATED = "site eliminated"
    SITE_UNTRUSTED = "site untrusted"  # its val scans judge no update any more
    SKILL = "skill"  # the model first showed skill: decisions start


@dataclass
class ScanEntry:
    """One scan's line of the ledger."""

    subject: str
    site: str
    status: ScanStatus = ScanStatus.POOL
    stage: str = ""  # eliminated: what eliminated it (audit, verification, site, scan: <issue>)
    cycle_flagged: int | None = None
    due: int | None = None  # flagged: the cycle its revisit is due
    cycle_eliminated: int | None = None
    untrained: bool = False  # the model has never trained on it (out of sample)

    def flag_row(self) -> dict:
        """As ``flagged.csv`` and the checkpoint's ``flagged`` hold it."""
        return {"subject": self.subject, "site": self.site, "cycle_flagged": self.cycle_flagged, "due": self.due}

    def elimination_row(self) -> dict:
        """As ``eliminated.csv`` and the checkpoint's ``eliminated`` hold it."""
        return {"subject": self.subject, "site": self.site, "cycle_flagged": self.cycle_flagged,
                "cycle_eliminated": self.cycle_eliminated, "stage": self.stage}


class ScanLedger:
    """The per-scan ledger and its event log; changed by :class:`~fedqc.qc.policy.QCPolicy` only."""

    def __init__(self) -> None:
        self.entries: dict[str, ScanEntry] = {}
        self.events: list[dict] = []

    # ------------------------------------------------------------------ reading
    def with_status(self, status: ScanStatus) -> list[ScanEntry]:
        """The scans of ``status``, in the order they reached it."""
        return [e for e in self.entries.values() if e.status is status]

    def get(self, subject: str) -> ScanEntry | None:
        return self.entries.get(subject)

    def untrained(self) -> frozenset[str]:
        return frozenset(s for s, e in self.entries.items() if e.untrained)

    def flags(self) -> list[dict]:
        """``flagged.csv``'s rows: every flag, a flagged site's scans included."""
        return [e for e in self.events if e["event"] == Event.FLAGGED.value]

    def revisits(self) -> list[dict]:
        """``revisits.csv``'s rows: every revisit, a site's with an empty subject."""
        return [{**e, "cycle_revisited": e["cycle"]} for e in self.events
                if e["event"] in (Event.REVISITED.value, Event.SITE_REVISITED.value)]

    # ------------------------------------------------------------------ changing (QCPolicy only)
    def entry(self, subject: str, site: str) -> ScanEntry:
        """The scan's entry, a new one in the pool if QC did not know it."""
        if subject not in self.entries:
            self.entries[subject] = ScanEntry(subject, site)
        return self.entries[subject]

    def move(self, entry: ScanEntry, status: ScanStatus, **fields) -> None:
        """Set ``entry``'s status and ``fields``; a new status moves it to the end of the ledger."""
        if entry.status is not status:
            del self.entries[entry.subject]
            self.entries[entry.subject] = entry
        entry.status = status
        for key, value in fields.items():
            setattr(entry, key, value)

    def record(self, event: Event, cycle: int, *, subject: str = "", site: str = "", stage: str = "",
               **fields) -> dict:
        """Append an event (``fields``: ``cycle_flagged``, ``due``, ``accepted``) and return it."""
        row = {"cycle": cycle, "event": event.value, "subject": subject, "site": site, "stage": stage, **fields}
        self.events.append(row)
        return row

    def set_untrained(self, train_ids: dict[str, Iterable[str]]) -> None:
        for site, ids in train_ids.items():
            for subject in ids:
                self.entry(subject, site).untrained = True
