"""Where harm goes: a scenario names whole harmful sites, single harmful scans and label noise, and
:meth:`Scenario.plan` turns it into one :class:`Action` per corrupted scan of a given manifest.

A scenario (YAML or a dict)::

    sites:                       # whole harmful sites: every train and val scan (test scans never)
      - {kind: inverted, site: hospitalA}                  # an existing site turned harmful
      - {kind: noise, new: harm-noise, train: 20, val: 4}  # a new site of copies of other sites' scans
    scans:                       # single harmful training scans in good sites
      - {kind: inverted, site: hospitalB}                  # count 1 by default
      - {kind: noise, site: random, count: 10}             # one each in 10 randomly chosen good sites
      - {kind: blank, rate: 0.01}                          # 1 % of the good sites' training scans
      - {kind: mislabeled, subject: sub-042}               # that scan
    label_noise:                 # a share of sites' training labels flipped (ground truth: mislabeled)
      - {sites: [hospitalC], rate: 0.2}                    # symmetric
      - {sites: all, rates: {0: 0.1, 1: 0.3}}              # class-conditional: share flipped per label
      - {sites: {random: 3}, rate: 0.4}                    # concentrated at 3 randomly chosen good sites
    prevalence:                  # drop scans to set sites' share of patients (train and val unless splits says)
      - {sites: all, share: 0.18, splits: [train, val, test]}  # every site at 18 % patients, test included
      - {sites: {random: 5}, share: 0}                     # then 5 sites with controls only (one class)
    bias:                        # a spurious marker correlated with the label (train, val, test unless splits says)
      - {sites: all, marker: patch, correlation: 0.9}      # 90 % of patients carry it, 10 % of controls
      - {sites: [hospitalA], marker: gain, correlation: 1.0, params: {factor: 1.2}}
    findings:                    # further binary targets: a visible finding at a prevalence, label_<name> columns
      - {name: lesion, marker: patch, prevalence: 0.3, params: {size: 0.12, at: 0.55, value: 200}}
    adversarial:                 # sites that lie in their replies (simulation: engines inprocess, flower)
      - {sites: [hospitalD], attack: scaled_update, params: {factor: 1000}}
      - {sites: [hospitalE], attack: framing, params: {target: hospitalB}}

Prevalence entries apply first, in order, and remove scans from the output manifest
(``dropped`` actions; ``fedqc harm`` lists them in ``dropped.csv``); the harm entries then
work on the scans that remain.

A bias entry plants a marker (:data:`~fedqc.data.corruptions.MARKERS`) in each scan of its
sites and splits with probability ``correlation`` for a patient and ``1 - correlation``
for a control; :meth:`Scenario.markers` draws which. A **finding** entry makes a multi-label
manifest: a marker planted in a ``prevalence`` share of the scans of its sites and
splits (every one by default), independently of the label, recorded as the target
column ``label_<name>``. A marked scan is not harmful: its
ground truth is the manifest's ``marker`` column, and ``fedqc harm`` also writes the
*bias-flipped* test split (every test scan with its marker reversed) to score what a
model learned from the marker.

An **adversarial** entry makes its sites lie in their replies (:data:`ATTACKS`,
:mod:`fedqc.site.adversary`); ``fedqc harm`` records them in ``adversarial.csv``, the
ground truth a defence's detection is scored against (docs/threat-model.md). A
``backdoor`` entry also poisons data: ``share`` of each of its sites' training scans of
the other label get the trigger (a :class:`~fedqc.data.corruptions.transforms.Patch`)
and the label ``label``, recorded as harm kind ``backdoor``; ``fedqc harm`` then writes
``triggered.csv``, the test scans of the other label with the trigger planted, on which
a run measures the attack's success.

Any entry may carry the corruption's parameters under ``params`` (e.g. ``{sigma: 25}``).
Every random choice derives from the injection seed; every problem is reported with the entry it is in.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fedqc.data.corruptions import CORRUPTIONS, MARKERS
from fedqc.data.corruptions.transforms import LabelFlips, share
from fedqc.errors import UserError

_KEYS = {"sites": {"kind", "site", "new", "train", "val", "params"},
         "scans": {"kind", "site", "subject", "count", "rate", "params"},
         "label_noise": {"sites", "rate", "rates"},
         "prevalence": {"sites", "share", "splits"},
         "bias": {"sites", "marker", "correlation", "splits", "params"},
         "findings": {"name", "sites", "marker", "prevalence", "splits", "params"},
         "adversarial": {"sites", "attack", "params"}}
# A lying site's attacks (fedqc.site.adversary applies them) → the parameters each takes.
ATTACKS = {"bn_moments": ("count", "shift", "scale"),  # BatchNorm moments: count ×count, mean +shift SDs, SD ×scale
           "scaled_update": ("factor",),  # the model's change ×factor
           "sign_flip": (),  # the model's change reversed
           "targeted_shift": ("label", "size"),  # its change plus a step (size × its norm) to a model of one label
           "inflated_count": ("factor",),  # the scans-trained count ×factor
           "fake_scores": ("margin",),  # its train/val scores a perfect ranking (label ± margin), whatever it trains
           "backdoor": ("share", "label", "size", "at", "value"),  # share of its training scans: trigger, label forced
           "replay": ("evaluations",),  # every train reply after its first (evaluations 1: also every evaluation
           #                             reply after the first to the same request) that first reply again
           "framing": ("target", "factor")}  # its update plus factor × the reversed update of site target's scans
TEXT_PARAMS = {"target"}  # attack parameters that are a site name; the others are numbers
BACKDOOR = {"share": 0.5, "label": 1}  # a backdoor's defaults (the trigger's: Patch's)
DROPPED = "dropped"  # the kind of an action that removes a scan (prevalence)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Action:
    """One scan of the output manifest that carries harm.

    ``source`` is the scan copied into a new site (then ``site`` and ``split`` are the copy's); a label
    flip chosen by a rate carries its rule in ``record``.
    """

    subject: str
    kind: str
    seed: int
    params: dict = field(default_factory=dict)
    source: str | None = None
    site: str | None = None
    split: str | None = None
    record: str | None = None


def scan_seed(seed: int, subject: str) -> int:
    """The seed of one scan's corruption, from the injection seed and the scan's id."""
    return int(np.random.SeedSequence([seed, zlib.crc32(subject.encode())]).generate_state(1)[0])


def _number(entry: dict, key: str, where: str, problems: list[str], *, rate: bool = False):
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (not rate and not isinstance(value, int)):
        problems.append(f"{where}: {key} must be {'a number' if rate else 'an integer'}, got {value!r}")
        return None
    if rate and not 0 <= value <= 1:
        problems.append(f"{where}: {key} must be in [0, 1], got {value}")
        return None
    if not rate and value < (0 if key in ("train", "val") else 1):
        problems.append(f"{where}: {key} must be >= {0 if key in ('train', 'val') else 1}, got {value}")
        return None
    return value


def _check_sites(chosen, where: str, problems: list[str]) -> None:
    """``sites`` of a label-noise or prevalence entry: ``all``, a list of names, or ``{random: k}``."""
    if chosen == "all" or (isinstance(chosen, list) and chosen and all(isinstance(x, str) for x in chosen)):
        return
    if isinstance(chosen, dict) and set(chosen) == {"random"} and isinstance(chosen["random"], int) \
            and not isinstance(chosen["random"], bool) and chosen["random"] >= 1:
        return
    problems.append(f"{where}: sites must be 'all', a list of site names or {{random: k}} (k >= 1), got {chosen!r}")


def _choose_sites(chosen, good: list[str], known: set[str], rng: np.random.Generator, where: str,
                  problems: list[str]) -> list[str] | None:
    """The sites an entry names: ``all`` the ``good`` ones, a list (each must be ``known``), or k random good ones."""
    if chosen == "all":
        return list(good)
    if isinstance(chosen, dict):
        if chosen["random"] > len(good):
            problems.append(f"{where}: {chosen['random']} random sites asked, {len(good)} good site(s) to choose from")
            return None
        return sorted(str(x) for x in rng.choice(good, chosen["random"], replace=False))
    unknown = sorted(set(chosen) - known)
    if unknown:
        problems.append(f"{where}: unknown site(s) {unknown}")
        return None
    return list(chosen)


def _drops(table: pd.DataFrame, share: float, rng: np.random.Generator) -> list[str]:
    """Scans of one site's split to drop so that its share of patients is ``share`` (as near as counts allow)."""
    pos, neg = table.loc[table["label"] == 1, "subject"], table.loc[table["label"] == 0, "subject"]
    if len(pos) > share * len(table):  # too many patients: keep round(share · n_neg / (1 − share))
        keep = len(pos) if share >= 1 else int(share * len(neg) / (1 - share) + 0.5)
        return sorted(rng.choice(pos.to_numpy(), len(pos) - keep, replace=False))
    keep = len(neg) if share <= 0 else int((1 - share) * len(pos) / share + 0.5)
    return sorted(rng.choice(neg.to_numpy(), max(len(neg) - keep, 0), replace=False))


@dataclass(frozen=True)
class Scenario:
    sites: tuple[dict, ...] = ()
    scans: tuple[dict, ...] = ()
    label_noise: tuple[dict, ...] = ()
    prevalence: tuple[dict, ...] = ()
    bias: tuple[dict, ...] = ()
    findings: tuple[dict, ...] = ()
    adversarial: tuple[dict, ...] = ()

    @classmethod
    def from_dict(cls, spec: dict | None) -> Scenario:
        """Check the scenario's shape (keys, kinds, numbers); the manifest is checked by :meth:`plan`."""
        spec = spec or {}
        if not isinstance(spec, dict):
            raise UserError(f"harm scenario: expected a mapping with sites, scans, label_noise; got {spec!r}")
        problems = [f"harm scenario: unknown key {k!r} (allowed: {', '.join(_KEYS)})" for k in sorted(set(spec) - set(_KEYS))]
        parts = {}
        for part, keys in _KEYS.items():
            entries = spec.get(part) or []
            if not isinstance(entries, list):
                problems.append(f"{part}: expected a list, got {entries!r}")
                entries = []
            for i, entry in enumerate(entries):
                where = f"{part}[{i}]"
                if not isinstance(entry, dict):
                    problems.append(f"{where}: expected a mapping, got {entry!r}")
                    continue
                allowed = ", ".join(sorted(keys))
                problems += [f"{where}: unknown key {k!r} (allowed: {allowed})" for k in sorted(set(entry) - keys)]
                if part in ("sites", "scans") and entry.get("kind") not in CORRUPTIONS:
                    problems.append(f"{where}: unknown harm kind {entry.get('kind')!r}; expected one of {', '.join(CORRUPTIONS)}")
                if not isinstance(entry.get("params", {}), dict):
                    problems.append(f"{where}: params must be a mapping")
                for key in ("train", "val", "count"):
                    _number(entry, key, where, problems)
                _number(entry, "rate", where, problems, rate=True)
            parts[part] = tuple(e for e in entries if isinstance(e, dict))
        for i, e in enumerate(parts["sites"]):
            if ("site" in e) == ("new" in e):
                problems.append(f"sites[{i}]: give either site (an existing site) or new (a site made of copies)")
            elif "new" in e and not e.get("train", 0) + e.get("val", 0):
                problems.append(f"sites[{i}]: a new site needs train and/or val scans")
        for i, e in enumerate(parts["scans"]):
            if sum(k in e for k in ("site", "subject", "rate")) != 1:
                problems.append(f"scans[{i}]: give exactly one of site, subject or rate")
        for i, e in enumerate(parts["label_noise"]):
            if ("rate" in e) == ("rates" in e):
                problems.append(f"label_noise[{i}]: give either rate (symmetric) or rates (per label)")
            _check_sites(e.get("sites"), f"label_noise[{i}]", problems)
            rates = e.get("rates", {})
            if not isinstance(rates, dict) or not set(map(str, rates)) <= {"0", "1"}:
                problems.append(f"label_noise[{i}]: rates must map labels 0 and/or 1 to a share, got {rates!r}")
            else:
                for label in rates:
                    _number(rates, label, f"label_noise[{i}].rates", problems, rate=True)
        for i, e in enumerate(parts["prevalence"]):
            _check_sites(e.get("sites"), f"prevalence[{i}]", problems)
            if "share" not in e:
                problems.append(f"prevalence[{i}]: share (of patients, 0..1) required")
            splits = e.get("splits", ["train", "val"])
            if not isinstance(splits, list) or not splits or not set(splits) <= {"train", "val", "test"}:
                problems.append(f"prevalence[{i}]: splits must list train, val and/or test, got {splits!r}")
            _number(e, "share", f"prevalence[{i}]", problems, rate=True)
        for part, key in (("bias", "correlation"), ("findings", "prevalence")):
            for i, e in enumerate(parts[part]):
                where = f"{part}[{i}]"
                _check_sites(e.get("sites", "all"), where, problems)
                if e.get("marker") not in MARKERS:
                    problems.append(f"{where}: unknown marker {e.get('marker')!r}; expected one of {', '.join(MARKERS)}")
                if key not in e:
                    problems.append(f"{where}: {key} (0..1) required")
                _number(e, key, where, problems, rate=True)
                splits = e.get("splits", list(SPLITS))
                if not isinstance(splits, list) or not splits or not set(splits) <= set(SPLITS):
                    problems.append(f"{where}: splits must list train, val and/or test, got {splits!r}")
        liars: dict[str, str] = {}
        for i, e in enumerate(parts["adversarial"]):
            where = f"adversarial[{i}]"
            sites = e.get("sites")
            if not isinstance(sites, list) or not sites or not all(isinstance(x, str) for x in sites):
                problems.append(f"{where}: sites must be a list of site names, got {sites!r}")
                sites = []
            for site in sites:
                if site in liars:
                    problems.append(f"{where}: site {site} already lies in {liars[site]}")
                liars.setdefault(site, where)
            if e.get("attack") not in ATTACKS:
                problems.append(f"{where}: unknown attack {e.get('attack')!r}; expected one of {', '.join(ATTACKS)}")
                continue
            params = e.get("params", {})
            allowed = ATTACKS[e["attack"]]
            for key, value in (params.items() if isinstance(params, dict) else ()):
                if key not in allowed:
                    problems.append(f"{where}: unknown param {key!r} of {e['attack']} (allowed: "
                                    f"{', '.join(allowed) or 'none'})")
                elif key in TEXT_PARAMS:
                    if not isinstance(value, str):
                        problems.append(f"{where}: params.{key} must be a site name, got {value!r}")
                elif isinstance(value, bool) or not isinstance(value, (int, float)):
                    problems.append(f"{where}: params.{key} must be a number, got {value!r}")
            if e["attack"] == "framing" and "target" not in (params if isinstance(params, dict) else {}):
                problems.append(f"{where}: framing needs params.target, the good site it frames")
            if e["attack"] == "backdoor" and isinstance(params, dict) and isinstance(params.get("share"), (int, float)):
                _number(params, "share", f"{where}.params", problems, rate=True)
            for key in (k for k in ("label", "evaluations") if k in allowed):  # 0/1: a class, or a switch
                if isinstance(params, dict) and isinstance(params.get(key), (int, float)) and params[key] not in (0, 1):
                    problems.append(f"{where}: params.{key} must be 0 or 1, got {params[key]!r}")
            if e["attack"] == "targeted_shift" and isinstance(params, dict) \
                    and isinstance(params.get("size"), (int, float)) and not params["size"] > 0:
                problems.append(f"{where}: params.size must be > 0, got {params['size']!r}")
        names = [e.get("name") for e in parts["findings"]]
        for i, name in enumerate(names):
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name) or name in names[:i]:
                problems.append(f"findings[{i}]: name must be a distinct word (letters, digits, _ or -), got {name!r}")
        if problems:
            raise UserError(f"harm scenario: {len(problems)} problem(s)", problems)
        return cls(parts["sites"], parts["scans"], parts["label_noise"], parts["prevalence"], parts["bias"],
                   parts["findings"], parts["adversarial"])

    def adversaries(self) -> dict[str, tuple[str, dict]]:
        """Site → (attack, params) of the adversarial entries."""
        return {site: (e["attack"], dict(e.get("params", {}))) for e in self.adversarial for site in e["sites"]}

    def plan(self, table: pd.DataFrame, seed: int) -> list[Action]:
        """The corrupted scans of ``table`` (a loaded manifest: ``harm`` filled, ``none`` for a good scan) under
        this scenario, seeded by ``seed``.

        Raises :class:`UserError` listing every problem: an unknown site or subject, a test scan
        targeted, a scan targeted twice, more scans asked than there are. Scans the manifest already
        records as harmful (its ``harm`` column) are never targeted again: their ground truth stays.
        """
        problems: list[str] = []
        actions: list[Action] = []
        for i, e in enumerate(self.adversarial):
            if unknown := sorted(set(e["sites"]) - set(table["site"])):
                problems.append(f"adversarial[{i}]: unknown site(s) {unknown}")
            framed = e.get("params", {}).get("target")
            if e["attack"] == "framing" and (framed not in set(table["site"]) or framed in self.adversaries()):
                problems.append(f"adversarial[{i}]: params.target {framed!r} is not a good site of the manifest")
        for i, e in enumerate(self.prevalence):
            where, rng = f"prevalence[{i}]", np.random.default_rng(scan_seed(seed, f"prevalence-{i}"))
            splits = e.get("splits", ["train", "val"])
            kept = table[table["split"].isin(splits)]
            names = _choose_sites(e["sites"], sorted(set(kept["site"])), set(table["site"]), rng, where, problems)
            for site in names or []:
                for split in splits:
                    rows = kept[(kept["site"] == site) & (kept["split"] == split)]
                    actions += [Action(str(s), DROPPED, 0, record=where) for s in _drops(rows, e["share"], rng)]
            table = table[~table["subject"].isin({a.subject for a in actions})]
        train = table[table["split"] == "train"]
        sites = set(table["site"])
        taken: dict[str, str] = dict.fromkeys(table.loc[table["harm"] != "none", "subject"], "the manifest (harm column)")

        def target(subject: str, kind: str, entry: dict, where: str, **extra) -> None:
            if subject in taken:
                problems.append(f"{where}: scan {subject} is already targeted by {taken[subject]}")
                return
            taken[subject] = where
            actions.append(Action(subject, kind, scan_seed(seed, subject), dict(entry.get("params", {})), **extra))

        harmful_sites = {e["site"] for e in self.sites if "site" in e}
        for i, e in enumerate(self.sites):
            where = f"sites[{i}]"
            if "site" in e:
                if e["site"] not in sites:
                    problems.append(f"{where}: unknown site {e['site']!r}")
                    continue
                for s in table.loc[(table["site"] == e["site"]) & (table["split"] != "test"), "subject"]:
                    target(s, e["kind"], e, where)
        for i, e in enumerate(self.adversarial):  # a backdoor: its poisoned training scans, harm kind backdoor
            if e["attack"] != "backdoor":
                continue
            params = {**BACKDOOR, **e.get("params", {})}
            trigger = {"params": {k: v for k, v in params.items() if k != "share"}}
            for site in e["sites"]:
                rows = train[(train["site"] == site) & (train["label"] != params["label"])
                             & ~train["subject"].isin(taken)]
                rng = np.random.default_rng(scan_seed(seed, f"backdoor-{site}"))
                for s in sorted(rng.choice(rows["subject"].to_numpy(), share(params["share"], len(rows)),
                                           replace=False)):
                    target(str(s), "backdoor", trigger, f"adversarial[{i}]")
        good_train = train[~train["site"].isin(harmful_sites)]
        copied: set[str] = set()  # good scans copied into a new site: each at most once
        rng = np.random.default_rng([seed, 1])
        for i, e in enumerate(self.sites):
            if "new" not in e:
                continue
            where = f"sites[{i}]"
            if e["new"] in sites:
                problems.append(f"{where}: new site {e['new']!r} already exists")
                continue
            pool = [s for s in good_train["subject"] if s not in taken and s not in copied]
            n = e.get("train", 0) + e.get("val", 0)
            if n > len(pool):
                problems.append(f"{where}: {n} scans asked, {len(pool)} good training scans left to copy")
                continue
            sources = rng.choice(pool, size=n, replace=False)
            for j, src in enumerate(sources):
                split = "train" if j < e.get("train", 0) else "val"
                k = j if split == "train" else j - e.get("train", 0)
                copied.add(src)
                target(f"{e['new']}-{split}{k:03d}", e["kind"], e, where, source=src, site=e["new"], split=split)
        for i, e in enumerate(self.scans):
            where = f"scans[{i}]"
            rng = np.random.default_rng([seed, 2, i])
            pool = good_train[~good_train["subject"].isin(taken)]
            if "subject" in e:
                row = table[table["subject"] == e["subject"]]
                if row.empty:
                    problems.append(f"{where}: unknown subject {e['subject']!r}")
                elif row["split"].iloc[0] == "test":
                    problems.append(f"{where}: {e['subject']} is a test scan; the test split is never corrupted")
                else:
                    target(e["subject"], e["kind"], e, where)
                continue
            if "rate" in e:
                chosen = rng.choice(pool["subject"].to_numpy(), size=share(e["rate"], len(pool)), replace=False)
            elif e["site"] == "random":
                count = e.get("count", 1)
                by_site = sorted(pool["site"].unique())
                if count > len(pool):
                    problems.append(f"{where}: {count} scans asked, {len(pool)} good training scans left")
                    continue
                order = list(rng.permutation(by_site))
                chosen = []
                while len(chosen) < count:  # one scan per site, round after round, sites in a random order
                    for site in order:
                        left = [s for s in pool.loc[pool["site"] == site, "subject"] if s not in chosen]
                        if left and len(chosen) < count:
                            chosen.append(str(rng.choice(left)))
            elif e["site"] not in sites:
                problems.append(f"{where}: unknown site {e['site']!r}")
                continue
            else:
                mine = pool.loc[pool["site"] == e["site"], "subject"].to_numpy()
                count = e.get("count", 1)
                if count > len(mine):
                    problems.append(f"{where}: {count} scan(s) asked at {e['site']}, which has {len(mine)} "
                                    "good training scan(s) left")
                    continue
                chosen = rng.choice(mine, size=count, replace=False)
            for s in chosen:
                target(str(s), e["kind"], e, where)
        for i, e in enumerate(self.label_noise):
            where = f"label_noise[{i}]"
            good = sorted(set(train.loc[~train["subject"].isin(taken), "site"]) - harmful_sites)
            rng = np.random.default_rng(scan_seed(seed, f"label-noise-{i}"))
            for site in _choose_sites(e["sites"], good, sites, rng, where, problems) or []:
                rows = train[(train["site"] == site) & ~train["subject"].isin(taken)]
                flips = LabelFlips(rate=e.get("rate"), rates={int(k): v for k, v in e.get("rates", {}).items()} or None,
                                   seed=scan_seed(seed, f"label-noise-{i}-{site}"))
                flips.randomize(rows["label"].to_numpy())
                for s in rows["subject"].to_numpy()[flips.flipped]:
                    target(str(s), "mislabeled", {}, where, record=flips.record())
        if problems:
            raise UserError(f"harm scenario: {len(problems)} problem(s)", problems)
        return actions

    def markers(self, table: pd.DataFrame, seed: int) -> pd.DataFrame:
        """Which scans of ``table`` (the manifest after prevalence drops) carry a bias entry's marker: one row per
        scan an entry covers (``subject, marker`` 0/1, ``kind``, ``params``, ``record``), drawn from ``seed``;
        a patient carries it with probability ``correlation``, a control with ``1 - correlation``."""
        return self._draw("bias", table, seed)

    def finding_draws(self, table: pd.DataFrame, seed: int) -> pd.DataFrame:
        """Which scans of ``table`` carry each finding (``name`` beside the columns of :meth:`markers`): a
        ``prevalence`` share of the scans an entry covers, whatever their label."""
        return self._draw("findings", table, seed)

    def _draw(self, part: str, table: pd.DataFrame, seed: int) -> pd.DataFrame:
        problems: list[str] = []
        rows: list[dict] = []
        covered: dict[tuple[str, str], str] = {}
        for i, e in enumerate(getattr(self, part)):
            where, rng = f"{part}[{i}]", np.random.default_rng(scan_seed(seed, f"{part}-{i}"))
            name = e.get("name", "marker")
            names = _choose_sites(e.get("sites", "all"), sorted(set(table["site"])), set(table["site"]), rng, where,
                                  problems)
            scans = table[table["site"].isin(names or []) & table["split"].isin(e.get("splits", list(SPLITS)))]
            key = "correlation" if part == "bias" else "prevalence"
            record = json.dumps({"kind": e["marker"], **e.get("params", {}), key: e[key], "entry": where},
                                sort_keys=True)
            for subject, label in zip(scans["subject"], scans["label"].astype(int)):
                if (subject, name) in covered:
                    problems.append(f"{where}: scan {subject} already carries the marker of {covered[subject, name]}")
                    continue
                covered[subject, name] = where
                p = e[key] if part == "findings" or label == 1 else 1 - e[key]
                rows.append({"subject": subject, "name": name, "marker": int(rng.random() < p), "kind": e["marker"],
                             "params": dict(e.get("params", {})), "record": record})
        if problems:
            raise UserError(f"harm scenario: {len(problems)} problem(s)", problems)
        return pd.DataFrame(rows, columns=["subject", "name", "marker", "kind", "params", "record"])
