"""Flower and Ray settings fedqc runs with: no telemetry, no update checks, no runtime dependency installation."""

from __future__ import annotations

import os

FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
              "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


def apply_flower_env() -> None:
    """Set :data:`FLOWER_ENV` and :data:`RAY_ENV` in this process (and so in what it starts)."""
    os.environ.update(FLOWER_ENV | RAY_ENV)


if __name__ == "__main__":  # `eval "$(python -m fedqc.transport.flower.env)"`: the same settings for shell scripts
    print("\n".join(f"export {k}={v}" for k, v in (FLOWER_ENV | RAY_ENV).items()))
