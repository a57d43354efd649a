"""Paired differences between the arms of a study, seed by seed: mean, t-interval and a sign-flip p-value.

Why paired
----------
The arms of one training seed are not independent samples. They share the cohort, the clean arm's
checkpoint of cycle W (where the dirty arm and the clean-start QC arms begin), the visiting order and the
training seed, so most of what varies from seed to seed (a lucky or unlucky start, an order that stalls)
moves every arm of that seed together. Comparing the arms' means with two separate intervals counts that
shared variation twice and hides a consistent difference; the difference *within* a seed removes it. So
a comparison of arm A with arm B is made on ``d_s = A_s - B_s`` for every seed ``s`` both arms have:

- the mean of ``d`` and its t-interval, ``mean ± t_{(1+level)/2, n-1} · sd / sqrt(n)`` (a 95 % t-interval
  over seeds by default; undefined with one seed);
- an exact two-sided sign-flip permutation p-value: under "no difference" each ``d_s`` is as likely
  to be ``-d_s``, so the ``2^n`` sign assignments are equally likely; the p-value is the share of them
  whose ``|sum|`` reaches the observed one. It needs no normality and, being exact, no resampling (no
  bootstrap, which is unreliable over ten seeds or fewer). Its smallest value is ``2 / 2^n``: with 5
  seeds 0.0625, so a claim of p < 0.05 needs 6 seeds or more. Above :data:`EXACT_SEEDS` seeds it is
  estimated from ``2^EXACT_SEEDS`` seeded random sign assignments (``note`` says so).

Headline claims use 5 seeds or more (docs/outputs.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from fedqc.errors import UserError

EXACT_SEEDS = 16  # the p-value is exact (all 2^n sign assignments) up to this many seeds
COLUMNS = ["pair", "a", "b", "figure", "n", "mean", "sd", "ci_lo", "ci_hi", "p", "p_min", "note"]


def t_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` t-interval of the mean of ``d``; (NaN, NaN) with fewer than two values."""
    from scipy.stats import t

    n = len(d)
    if n < 2:
        return float("nan"), float("nan")
    half = float(t.ppf((1 + level) / 2, n - 1) * d.std(ddof=1) / np.sqrt(n))
    return float(d.mean()) - half, float(d.mean()) + half


def sign_flip_p(d: np.ndarray) -> float:
    """Two-sided sign-flip permutation p-value of the mean of ``d`` (paired differences) being 0: exact over all
    ``2^n`` sign assignments for ``n <=`` :data:`EXACT_SEEDS`, else from ``2^EXACT_SEEDS`` seeded random ones.
    NaN for no value, 1 for one (both signs reach ``|d|``). Ties with the observed ``|sum|`` count as reaching it
    (SciPy's relative tolerance)."""
    from scipy.stats import permutation_test

    if len(d) < 2:  # SciPy wants two values
        return 1.0 if len(d) else float("nan")
    result = permutation_test((np.asarray(d, dtype=float),), lambda x, axis: np.sum(x, axis=axis),
                              permutation_type="samples", vectorized=True, n_resamples=2 ** EXACT_SEEDS,
                              alternative="two-sided", rng=0)
    return float(result.pvalue)


def paired_difference(a: pd.Series, b: pd.Series, level: float = 0.95, names: tuple[str, str] = ("a", "b")) -> dict:
    """``a - b`` over the seeds (the index) where both have a value: n, mean, sd, t-interval, sign-flip p, the
    smallest p that n seeds allow, and a note on seeds only one side (``names``) has, on one seed, or on an
    estimated p."""
    both = pd.concat({"a": a, "b": b}, axis=1).dropna()
    d = (both["a"] - both["b"]).to_numpy(dtype=float)
    n = len(d)
    lo, hi = t_interval(d, level)
    notes = [f"seed(s) {', '.join(map(str, sorted(s)))} only in {side}"
             for side, s in ((names[0], set(a.dropna().index) - set(both.index)),
                             (names[1], set(b.dropna().index) - set(both.index))) if s]
    if n == 1:
        notes.append("one seed: no interval")
    if n > EXACT_SEEDS:
        notes.append(f"p from {2 ** EXACT_SEEDS} random sign flips")
    return {"n": n, "mean": float(d.mean()) if n else float("nan"), "sd": float(d.std(ddof=1)) if n > 1 else float("nan"),
            "ci_lo": lo, "ci_hi": hi, "p": sign_flip_p(d), "p_min": min(1.0, 2.0 ** (1 - n)) if n else float("nan"),
            "note": "; ".join(notes)}


def default_pairs(arms: Sequence[str], qc_arms: Iterable[str]) -> list[tuple[str, str]]:
    """The comparisons every study reports, for the arms it has: each QC arm − dirty, each QC arm − clean, dirty −
    clean."""
    qc = [a for a in qc_arms if a in arms]
    pairs = [(q, "dirty") for q in qc if "dirty" in arms] + [(q, "clean") for q in qc if "clean" in arms]
    return pairs + ([("dirty", "clean")] if {"dirty", "clean"} <= set(arms) else [])


def parse_pair(spec: str, arms: Sequence[str]) -> tuple[str, str]:
    """``A-B`` (or ``A:B`` when arm names make ``A-B`` ambiguous) into two of ``arms``; a one-line UserError
    otherwise. Arm names hold hyphens (``qc-auroc-site``), so every split at a hyphen is tried."""
    if ":" in spec:
        splits = [tuple(spec.split(":", 1))]
    else:
        parts = spec.split("-")
        splits = [("-".join(parts[:i]), "-".join(parts[i:])) for i in range(1, len(parts))]
    found = [(a, b) for a, b in splits if a in arms and b in arms]
    if not found:
        raise UserError(f"--pair {spec}: expected A-B with A and B among the arms {', '.join(arms)}")
    if len(found) > 1:
        raise UserError(f"--pair {spec}: ambiguous ({' or '.join(f'{a}:{b}' for a, b in found)}); write A:B")
    a, b = found[0]
    if a == b:
        raise UserError(f"--pair {spec}: an arm compared with itself")
    return a, b


def pairs_for(arms: Sequence[str], qc_arms: Iterable[str], named: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The default pairs and the ``named`` ones (``--pair`` values, validated), each once, in that order."""
    pairs = default_pairs(arms, qc_arms) + [parse_pair(spec, arms) for spec in named]
    return list(dict.fromkeys(pairs))


def paired_table(rows: pd.DataFrame, pairs: Sequence[tuple[str, str]], level: float = 0.95,
                 span=lambda figure: (float("-inf"), float("inf"))) -> pd.DataFrame:
    """Per pair and every numeric figure of ``rows`` (one row per seed × arm, as ``study.csv``) that both arms
    have: the paired difference (:func:`paired_difference`). ``span(figure)`` bounds the interval (a share's
    difference lies in [-1, 1])."""
    figures = [c for c in rows.columns if c not in ("seed", "arm", "cycle") and pd.api.types.is_numeric_dtype(rows[c])]
    out = []
    for a, b in pairs:
        ra, rb = (rows[rows["arm"] == arm].set_index("seed") for arm in (a, b))
        for figure in figures:
            if ra[figure].notna().any() and rb[figure].notna().any():
                r = paired_difference(ra[figure], rb[figure], level, (a, b))
                low, high = span(figure)
                r["ci_lo"], r["ci_hi"] = max(r["ci_lo"], low), min(r["ci_hi"], high)  # NaN stays NaN
                out.append({"pair": f"{a}-{b}", "a": a, "b": b, "figure": figure, **r})
    return pd.DataFrame(out, columns=COLUMNS)
