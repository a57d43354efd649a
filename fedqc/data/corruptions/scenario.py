"""Where harm goes: whole harmful sites (every scan, ``train`` and ``val``) and single harmful scans
added to otherwise good sites."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fedqc.data.corruptions import CORRUPTIONS
from fedqc.errors import UserError


@dataclass(frozen=True)
class HarmfulSite:
    """A whole site whose every scan carries ``kind``."""

    kind: str
    train: int
    val: int = 0


@dataclass(frozen=True)
class HarmfulScan:
    """One harmful training scan added to the good site ``site``."""

    kind: str
    site: str


@dataclass(frozen=True)
class HarmScenario:
    sites: tuple[HarmfulSite, ...] = ()
    scans: tuple[HarmfulScan, ...] = ()

    @classmethod
    def from_dict(cls, spec: dict | None) -> HarmScenario:
        spec = spec or {}
        unknown = set(spec) - {"sites", "scans"}
        if unknown:
            raise UserError(f"harm scenario: unknown key(s) {sorted(unknown)} (allowed: sites, scans)")
        try:
            sites = tuple(HarmfulSite(**s) for s in spec.get("sites", []))
            scans = tuple(HarmfulScan(**s) for s in spec.get("scans", []))
        except TypeError as exc:
            raise UserError(f"harm scenario: {exc}") from None
        bad = sorted({item.kind for item in sites + scans} - set(CORRUPTIONS))
        if bad:
            raise UserError(f"harm scenario: unknown harm kind(s) {bad}; expected one of {', '.join(CORRUPTIONS)}")
        return cls(sites, scans)

    def to_dict(self) -> dict:
        return {"sites": [asdict(s) for s in self.sites], "scans": [asdict(s) for s in self.scans]}
