"""CPU seconds of a command and everything it starts, Ray's daemons and workers included.

    python studies/parallel-studies/cpu_time.py [--also PATTERN] -- COMMAND...

Samples /proc every 0.5 s: the command's descendants, and (``--also``) processes whose command line contains
PATTERN and their descendants (the daemons of a `ray start` cluster, started before the command). Prints wall
seconds, CPU seconds (user + system; a process's last half second before it exits is missed) and CPU / wall,
and the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

TICK = os.sysconf("SC_CLK_TCK")


def table() -> dict[int, tuple[int, float, str]]:
    """pid -> (parent pid, CPU seconds, command line) of every process."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, cmd)
    return out


def tree(procs: dict, roots: set[int]) -> set[int]:
    found, grew = set(roots) & procs.keys(), True
    while grew:
        new = {p for p, (parent, _, _) in procs.items() if parent in found} - found
        found |= new
        grew = bool(new)
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--also", default=None)
    ap.add_argument("command", nargs="+")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    before = {p: c for p, (_, c, _) in table().items()}  # CPU the daemons spent before the command is not its
    t0 = time.perf_counter()
    proc = subprocess.Popen(args.command)
    cpu: dict[int, float] = {}
    names: dict[int, str] = {}
    while True:
        procs = table()
        roots = {proc.pid} | ({p for p, (_, _, c) in procs.items() if args.also in c and p != os.getpid()}
                              if args.also else set())
        for p in tree(procs, roots):
            cpu[p] = max(cpu.get(p, 0.0), procs[p][1])
            names[p] = procs[p][2].split(" ")[0].rsplit("/", 1)[-1] or names.get(p, "?")
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    used = {p: c - before.get(p, 0.0) for p, c in cpu.items()}
    total = sum(used.values())
    by_name: dict[str, float] = {}
    for p, c in used.items():
        by_name[names[p]] = by_name.get(names[p], 0.0) + c
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:5]
    print(f"{len(used)} processes; most CPU: " + ", ".join(f"{n} {c:.0f} s" for n, c in top))
    print(f"wall {wall:.0f} s, CPU {total:.0f} s (user + system), CPU/wall {total / wall:.2f}, "
          f"load average (1 min) {load0:.1f} before, {os.getloadavg()[0]:.1f} after, exit {proc.returncode}")


if __name__ == "__main__":
    main()
