"""bench.budgets: strategies compared at equal training work, communication and wall time (issue 38)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.budgets import at_budget, equal_budgets


def curve(strategy: str, seed: int, auroc: list[float], work: int, megabytes: float) -> pd.DataFrame:
    n = len(auroc)
    return pd.DataFrame({"cycle": range(n), "auroc": auroc, "scan_steps": work * np.arange(1, n + 1),
                         "megabytes": megabytes * np.arange(1, n + 1), "messages": 10 * np.arange(1, n + 1),
                         "seconds": 5.0 * np.arange(1, n + 1), "strategy": strategy, "seed": seed})


def test_a_run_is_scored_by_its_last_cycles_within_the_budget():
    c = curve("fedavg", 0, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0], work=20, megabytes=1)
    assert at_budget(c, "scan_steps", 60) == pytest.approx(np.mean([0.5, 0.6, 0.7]))
    assert at_budget(c, "scan_steps", 79) == pytest.approx(np.mean([0.5, 0.6, 0.7]))  # cycle 4 ends at 80
    assert at_budget(c, "scan_steps", 120) == pytest.approx(np.mean([0.8, 0.9, 1.0]))
    assert np.isnan(at_budget(c, "scan_steps", 10))


def test_equal_work_stops_the_costlier_strategy_early_and_pairs_by_seed():
    """FedAvg trains twice the scans a cycle (two local epochs) and moves a third of the bytes: at equal work it is
    scored at its cycle 3 of 6, at equal bytes the travelling model is the one stopped early."""
    rows = []
    for seed, lift in ((0, 0.0), (1, 0.02), (2, 0.04)):
        rows.append(curve("travelling", seed, [0.6 + lift + 0.05 * i for i in range(6)], work=10, megabytes=3))
        rows.append(curve("fedavg", seed, [0.55 + lift + 0.05 * i for i in range(6)], work=20, megabytes=1))
    levels = equal_budgets(pd.concat(rows, ignore_index=True)).set_index(["budget", "strategy"])
    work = levels.loc[("scan_steps", "fedavg")]
    assert work["level"] == 60 and work["cycles_within"] == 3
    assert work["auroc"] == pytest.approx(np.mean([0.55 + 0.05 * i for i in range(3)]) + 0.02)
    # travelling at its full 6 cycles (0.80 + lift) against fedavg's first 3 (0.60 + lift): the same each seed
    assert work["vs_travelling"] == pytest.approx(-0.20) and work["ci_lo"] == pytest.approx(work["ci_hi"])
    assert levels.loc[("megabytes", "travelling"), "cycles_within"] == 2
    assert levels.loc[("megabytes", "fedavg"), "vs_travelling"] == pytest.approx(0.125)  # 0.75 against 0.625
    assert np.isnan(levels.loc[("scan_steps", "travelling"), "vs_travelling"])
    assert levels.loc[("messages", "fedavg"), "cycles_within"] == 6  # the same messages a cycle
