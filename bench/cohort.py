"""Seconds per scan of the synthetic cohort generator, with the shipped effects and with difficulty keys on.

Generates a preset (no harm) once per effect set and repeat, the sets interleaved so that a change of the
machine's load falls on each alike, on one worker process and one torch thread.
Command: ``python -m bench.cohort [--preset reference] [--size 32] [--repeats 2] [--effects v1 FILE ...]``.
Output: ``bench/results/cohort.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from bench.common import RESULTS, machine
from fedqc.data.synth.cohort import PRESETS, generate_cohort
from fedqc.data.synth.effects import resolve_effects

HARD = "studies/difficulty-screening/effects/hard-all.yaml"  # every difficulty key on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="reference", choices=sorted(PRESETS))
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--effects", nargs="+", default=["v1", HARD])
    args = parser.parse_args()
    torch.set_num_threads(1)
    seconds: dict[str, list[float]] = {e: [] for e in args.effects}
    scans = 0
    for _ in range(args.repeats):
        for spec in args.effects:
            effects, _source = resolve_effects(spec, PRESETS[args.preset][2])
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                scans = len(generate_cohort(tmp, preset=args.preset, size=args.size, seed=0, harm={},
                                            effects=effects, workers=1))
                seconds[spec].append(time.perf_counter() - t0)
    result = {"preset": args.preset, "size": args.size, "scans": scans, "load_1min": os.getloadavg()[0],
              "machine": machine(),
              "ms_per_scan": {e: [round(1000 * s / scans, 1) for s in v] for e, v in seconds.items()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cohort.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["ms_per_scan"]))


if __name__ == "__main__":
    main()
