"""The synthetic cohort's difficulty model: effect sizes, named effect sets, effects files, the oracle ceiling.

:class:`Effects` holds every effect size of the generator (:mod:`fedqc.data.synth.cohort`). The keys
added for difficulty (per-subject disease strength, label-unrelated anatomy, stronger scanner effects)
default to 0, which reproduces the cohorts generated before they existed byte for byte.

Each subject's random difficulty draws come from their own subject-keyed generator, apart from the one
that draws the scan, so turning one key on does not change what any other key draws, and a cohort stays
byte-identical for any number of worker processes. The drawn disease strength of every subject is the
cohort's ground truth (``effects_truth.csv``): :func:`oracle_auroc` scores it as a classifier that knows
it, the ceiling no model trained on the images can pass.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from fedqc.errors import ProblemsError, UserError

SHARE = (0.0, 1.0)
GAMMA = 0.15  # the per-scanner gamma's half-range every set before the key existed drew from
NONNEG = (0.0, math.inf)


def _key(default: float, bounds: tuple[float, float], doc: str):
    return field(default=default, metadata={"range": bounds, "doc": doc})


@dataclass(frozen=True)
class Effects:
    """Effect sizes of the generator (fractions unless stated); ``docs/data.md`` explains every key."""

    # disease: a PD subject's effect is its drawn strength s times pd_intensity and pd_atrophy
    pd_intensity: float = _key(0.2, SHARE, "deep-GM intensity drop in PD (at strength 1)")
    pd_atrophy: float = _key(0.2, (0.0, 0.9), "deep-GM shrink in PD, fraction of the local radius (at strength 1)")
    pd_nonexpressing: float = _key(0.0, SHARE, "share of PD subjects drawn with no visible effect (s = 0)")
    pd_effect_sd: float = _key(0.0, (0.0, 3.0), "sd of the other PD subjects' strength s (gamma, mean 1)")
    hc_pdlike: float = _key(0.0, SHARE, "share of controls drawn with a partial PD-like effect")
    hc_pdlike_max: float = _key(1.0, (0.0, 3.0), "a PD-like control's strength s is uniform in [0, this]")
    # anatomy
    age_atrophy: float = _key(0.08, (0.0, 0.5), "ventricle enlargement per decade over 40")
    female_head_scale: float = _key(0.93, (0.5, 1.5), "female / male head size")
    head_scale_sd: float = _key(0.03, (0.0, 0.3), "sd of the head size")
    deform_mm: float = _key(2.0, (0.0, 20.0), "sd of the smooth random deformation, mm")
    intensity_sd: float = _key(0.03, (0.0, 0.5), "sd of a global intensity factor")
    dgm_intensity_sd: float = _key(0.0, (0.0, 0.5), "sd of a label-unrelated deep-GM intensity change")
    dgm_size_sd: float = _key(0.0, (0.0, 0.5), "sd of a label-unrelated deep-GM size change (fraction of radius)")
    # scanner
    bias_strength: float = _key(0.15, (0.0, 2.0), "per-scanner multiplicative bias field amplitude")
    noise_max: float = _key(6.0, (1.0, 100.0), "per-scanner noise sd on the 0-255 scale, up to this")
    scanner_contrast: float = _key(0.0, (0.0, 0.9), "per-scanner grey-matter contrast change, uniform in +-this")
    scanner_blur: float = _key(0.0, (0.0, 5.0), "per-scanner blur (Gaussian sd in voxels), uniform in [0, this]")
    scanner_gamma: float = _key(GAMMA, (0.0, 0.5), "per-scanner intensity gamma, uniform in 1 +- this")


def effect_keys() -> list[str]:
    return [f.name for f in fields(Effects)]


# Named effect sets. A preset names its default set, so a cohort made with an earlier default can be made again
# by name once the preset moves on. ``v1``: the effects every preset shipped with before the difficulty model
# (every PD subject the same effect, no competing anatomy, mild scanner effects). ``v2``: the `reference` preset's
# calibration at 32³ (studies/reference-calibration): a disease effect that varies between subjects (a fifth of the
# patients without a visible one, some controls with a partial one; oracle ceiling about 0.87), more deformation,
# and scanners told apart by their noise and bias field, effects that do not mimic the disease (a per-scanner
# contrast or blur stops the travelling model learning at this resolution: decision 41). ``v3``: ``v2`` with ``v1``'s
# scanner noise (up to 6) and no per-scanner gamma, scanners told apart by their bias field: every seed's travelling
# model in the calibration's band and learning by W, where ``v2`` missed each once; 0.06-0.08 below central training
# on the same scans, as ``v2`` (decision 46).
_V2 = Effects(pd_nonexpressing=0.2, pd_effect_sd=0.5, hc_pdlike=0.15, deform_mm=3.0, bias_strength=0.4, noise_max=15.0)
EFFECT_SETS: dict[str, Effects] = {
    "v1": Effects(),
    "v2": _V2,
    "v3": replace(_V2, noise_max=6.0, scanner_gamma=0.0),
}


def _problems(data: dict) -> list[str]:
    """One line per problem of an effects mapping (its ``base`` key is checked by the caller)."""
    problems, keys = [], effect_keys()
    by_name = {f.name: f for f in fields(Effects)}
    for key, value in data.items():
        if key == "base":
            continue
        if key not in by_name:
            close = difflib.get_close_matches(str(key), keys, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(keys)}"
            problems.append(f"{key}: unknown effect key ({hint})")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key}: expected a number, got {value!r}")
        else:
            lo, hi = by_name[key].metadata["range"]
            if not (lo <= value <= hi):
                problems.append(f"{key}: must be in [{lo}, {hi}], got {value}")
    return problems


def parse_effects(data, *, default: str, source: str | Path = "effects") -> tuple[Effects, str]:
    """An effects mapping (any subset of the keys, optionally ``base: <set name>``) laid over the named set
    ``base`` (else ``default``): the resolved :class:`Effects` and the base's name. Every problem is reported
    at once, one line each."""
    if not isinstance(data, dict):
        raise ProblemsError(source, [f"expected a mapping of effect keys to numbers, got {data!r}"])
    problems = _problems(data)
    base = data.get("base", default)
    if base not in EFFECT_SETS:
        problems.append(f"base: unknown effect set {base!r} (known: {', '.join(EFFECT_SETS)})")
    if problems:
        raise ProblemsError(source, problems)
    values = {k: float(v) for k, v in data.items() if k != "base"}
    return Effects(**(asdict(EFFECT_SETS[base]) | values)), base


def resolve_effects(spec: str | Path | None, default: str) -> tuple[Effects, str]:
    """The effects ``spec`` asks for: None for the named set ``default``, a set's name, or a YAML file (see
    :func:`parse_effects`); and a one-line description of where they came from."""
    if spec is None:
        return EFFECT_SETS[default], default
    if str(spec) in EFFECT_SETS:
        return EFFECT_SETS[str(spec)], str(spec)
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--effects {spec}: neither an effect set ({', '.join(EFFECT_SETS)}) nor a file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    effects, base = parse_effects({} if data is None else data, default=default, source=path)
    return effects, f"{path} over {base}"


def effects_yaml(effects: Effects) -> str:
    """Every key of ``effects``, as a file ``--effects`` reads back to the same effects."""
    return yaml.safe_dump(asdict(effects), sort_keys=False)


# --------------------------------------------------------------------------- per-subject draws
@dataclass(frozen=True)
class SubjectDraw:
    """A subject's difficulty draws: disease strength ``pd_strength`` (multiplies the PD effects), a deep-GM
    intensity change and a deep-GM size change, both unrelated to the label."""

    pd_strength: float
    dgm_intensity: float
    dgm_size: float


def subject_draw(seed: int, subject: str, label: int, effects: Effects) -> SubjectDraw:
    """The draws of one subject, from its own generator: the same four numbers are drawn whatever the effects,
    so each key changes only what it scales. With the default effects a patient's strength is 1 and a
    control's 0, as before the difficulty model."""
    rng = np.random.default_rng([seed, 1000, *subject.encode()])  # 1000: no byte of a name, apart from scan RNGs
    u_share, u_strength, z_int, z_size = rng.random(), rng.random(), rng.standard_normal(), rng.standard_normal()
    if label == 1:
        if u_share < effects.pd_nonexpressing:
            strength = 0.0
        elif effects.pd_effect_sd > 0:
            k = effects.pd_effect_sd ** -2  # gamma with mean 1 and sd pd_effect_sd
            strength = float(stats.gamma.ppf(u_strength, k, scale=1.0 / k))
        else:
            strength = 1.0
    else:
        strength = u_strength * effects.hc_pdlike_max if u_share < effects.hc_pdlike else 0.0
    return SubjectDraw(strength, effects.dgm_intensity_sd * z_int, effects.dgm_size_sd * z_size)


def oracle_auroc(truth: pd.DataFrame, split: str = "test") -> float:
    """Test AUROC of an oracle that scores each subject by its drawn disease strength (``effects_truth.csv``):
    the generator's ceiling on ``split`` (NaN when it holds one class)."""
    from sklearn.metrics import roc_auc_score

    part = truth[truth["split"] == split]
    if part["label"].nunique() < 2:
        return float("nan")
    return float(roc_auc_score(part["label"], part["pd_strength"]))
