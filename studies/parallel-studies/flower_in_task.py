"""The alternative not chosen (docs/decisions.md, section 27): Flower's simulation engine inside a Ray task.

    python studies/parallel-studies/flower_in_task.py CONFIG TASKS CPUS

Starts Ray on this machine with CPUS CPUs and runs TASKS runs of CONFIG (on ``engine: flower``, seeds 0..TASKS-1)
as tasks of one CPU each, into runs/flower_in_task/; Flower's engine finds Ray initialised and joins it. Prints
how many finished within 150 s and Ray's free resources then, and shuts Ray down.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import ray

from fedqc.config import load_config
from fedqc.experiment.study import plan_study

config, tasks, cpus = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = plan_study(load_config(config, {"engine": "flower"}), list(range(tasks)), Path("runs/flower_in_task").absolute())
ray.init(address="local", num_cpus=cpus, include_dashboard=False, object_store_memory=256 * 2**20,
         logging_level=logging.ERROR)
one = ray.remote(num_cpus=1)(lambda run: run.run(quiet=True))
t0 = time.perf_counter()
ready, _ = ray.wait([one.remote(r) for r in runs], num_returns=tasks, timeout=150)
print(f"{tasks} task(s) on {cpus} CPU(s): {len(ready)} finished in {time.perf_counter() - t0:.0f} s; "
      f"free: {ray.available_resources().get('CPU', 0)} CPU")
ray.shutdown()
