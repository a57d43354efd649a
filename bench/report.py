"""Write the Performance table of studies/performance/README.md from bench/results/*.json (the last step of ``make bench``).

    python -m bench.report [--doc studies/performance/README.md]
    python -m bench.report --overhead-table studies/performance/overhead-2026-12-07.json

Replaces the text between ``<!-- bench:start -->`` and ``<!-- bench:end -->``; a
benchmark whose JSON is missing gets a row saying so; the overhead benchmark's rows follow the
table. ``--overhead-table`` prints that table for another result file instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.common import RESULTS, ROOT

DOC = ROOT / "studies" / "performance" / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
BENCHMARKS = ("overhead", "qc_cost", "scaling", "deployment")


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _deployment(d: dict) -> str:
    sim, smoke, wide = d["simulation"], d["smoke"], d["wide"]

    def hop(r: dict) -> str:
        return f"{r['hop_overhead_s_median']:.1f} s (p95 {r['hop_overhead_s_p95']:.1f})"

    def run(r: dict) -> str:
        return f"{statistics.median(r['run_s']):.0f} s"

    return (f"hop overhead median: simulation {sim['hop_overhead_s_median']:.2f} s · loopback deployment, "
            f"Flower's stock path {hop(smoke['stock'])} · fedqc's fast path {hop(smoke['fast'])}; whole run "
            f"(deploy-smoke) stock {run(smoke['stock'])} · fast {run(smoke['fast'])}; {wide['sites']} sites × "
            f"{wide['scans_per_site']} scans: hop overhead stock {hop(wide['stock'])} · fast {hop(wide['fast'])}, "
            f"whole run stock {run(wide['stock'])} · fast {run(wide['fast'])}; a fresh ClientApp's start "
            f"{d['clientapp_start_s']:.1f} s")


def _ratio(row: dict) -> str:
    r = row["over_plain"]
    return f"{r['median']:.2f}× [{r['min']:.2f}–{r['max']:.2f}]"


def _overhead(o: dict) -> str:
    if "rows" not in o:  # a result of the former benchmark (one repeat, no calibration row)
        return (f"plain {o['plain_s']:.1f} s · in-process {o['inprocess_s']:.1f} s ({o['inprocess_over_plain']:.2f}×) · "
                f"Flower simulation {o['flower_s']:.1f} s ({o['flower_over_plain']:.2f}×) per cycle, "
                f"{o['cycles']} cycle(s), one repeat")
    r = o["rows"]
    parts = [f"{name} {r[name]['steady_s']['median']:.1f} s ({_ratio(r[name])})" for name in r if name != "plain"]
    return (f"steady cycle, median [range] of {o['repeats']} repeats × {o['cycles'] - 1} cycles: plain "
            f"{r['plain']['steady_s']['median']:.1f} s · " + " · ".join(parts) + "; details below")


def _overhead_met(o: dict) -> str:
    r = o["rows"]
    met = [f"{name}: {'yes' if r[name]['over_plain']['median'] <= (1.15 if name.startswith('flower') else 1.05) else 'no'}"
           for name in r if name != "plain"]
    return "; ".join(met)


def overhead_table(o: dict) -> str:
    """The overhead benchmark's rows: first cycle, steady cycle and ratio to plain with their range over the repeats,
    messages per cycle and the median time split of ``cycles.csv``."""
    split = ("train", "transport", "eval", "calibration", "test", "write", "other")
    lines = [f"`overhead`, {o['shape']}, {o['threads']} thread(s), {o['cycles']} cycles × {o['repeats']} repeats "
             "(seconds; median [min–max] over the repeats; a steady cycle is a repeat's median after its first):", "",
             "| row | first cycle | steady cycle | × plain | messages / cycle | "
             + " | ".join(split) + " | Flower hop overhead (median, p95) |",
             "|---|---|---|---|---|" + "---|" * len(split) + "---|"]
    for name, row in o["rows"].items():
        f, s = row["first_s"], row["steady_s"]
        cells = [f"{f['median']:.1f} [{f['min']:.1f}–{f['max']:.1f}]", f"{s['median']:.2f} [{s['min']:.2f}–{s['max']:.2f}]",
                 _ratio(row) if "over_plain" in row else "1", str(row.get("messages_per_cycle", "–"))]
        cells += [f"{row['split_s'][k + '_seconds']:.2f}" for k in split] if "split_s" in row else ["–"] * len(split)
        cells.append(f"{row['hop_overhead_ms_median']:.0f} ms, {row['hop_overhead_ms_p95']:.0f} ms"
                     if "hop_overhead_ms_median" in row else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    m = o["machine"]
    lines += ["", f"Machine: {m['cores']} cores ({m['cpu']}), torch {m['torch']} on {m['device']}, flwr {m['flwr']}."]
    return "\n".join(lines)


def rows() -> list[tuple[str, str, str, str]]:
    """(benchmark, figure, target, met) rows."""
    out = []
    if o := _load("overhead"):
        out.append(("overhead", _overhead(o), "Flower ≤ 1.15×, in-process ≤ 1.05× plain",
                    _overhead_met(o) if "rows" in o else "rerun: python -m bench.overhead"))
    if q := _load("qc_cost"):
        r, d = q["reference_detection"], q["default_detection"]
        out.append(("qc_cost",
                    (f"{q['sites']} sites: no QC {q['noqc_s']:.0f} s · reference method {q['reference_s']:.0f} s "
                     f"({q['reference_over_noqc']:.2f}×, {q['reference_verifications']} verifications; whole sites "
                     f"out of training {r['whole_site_recall']:.2f}, good scans out {r['good_out_of_training']}/{r['good']}) · "
                     f"default QC {q['default_s']:.0f} s ({q['default_over_noqc']:.2f}×, "
                     f"{q['default_verifications']} verifications; whole sites out of training {d['whole_site_recall']:.2f}, "
                     f"good scans out {d['good_out_of_training']}/{d['good']}) per cycle"),
                    "default ≤ 2× no QC, detection ≥ reference",
                    "yes" if q["default_over_noqc"] <= 2 and d["whole_site_recall"] >= r["whole_site_recall"]
                    and d["good_out_of_training"] <= r["good_out_of_training"] else "no"))
    if s := _load("scaling"):
        sizes = " · ".join(f"{k}³ {v:.1f} s" for k, v in s["seconds_by_size"].items())
        peak = max(p["peak_rss_mb"] for p in s["points"])
        out.append(("scaling",
                    (f"seconds = {s['intercept_s']:.1f} + {s['seconds_per_scan_32'] * 1000:.0f} ms × scans "
                     f"over {sum(p['size'] == 32 for p in s['points'])} points at 32³ (10–83 sites), "
                     f"R² {s['r2']:.3f}; with a per-site term: {s['seconds_per_scan_given_sites'] * 1000:.0f} ms × scans "
                     f"+ {s['seconds_per_site'] * 1000:.0f} ms × sites, R² {s['r2_scans_and_sites']:.3f}; "
                     f"20 sites × 8 scans: {sizes}; peak RSS ≤ {peak:.0f} MB"),
                    "R² ≥ 0.95", "yes" if s["r2"] >= 0.95 else "no"))
    if d := _load("deployment"):
        met = {run: d[run]["fast"]["hop_overhead_s_median"] <= 2 for run in ("smoke", "wide")}
        out.append(("deployment", _deployment(d), "fast path hop overhead ≤ 2 s (aim ≤ 1 s)",
                    "yes" if all(met.values()) else
                    f"3 sites: {'yes' if met['smoke'] else 'no'}; 20 sites: {'yes' if met['wide'] else 'no'}"))
    for name in BENCHMARKS:
        if not _load(name):
            out.append((name, f"not run yet: python -m bench.{name}", "", ""))
    return out


def table() -> str:
    machine = next((r["machine"] for n in BENCHMARKS if (r := _load(n))), None)
    lines = ["| benchmark | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| `{b}` | {f} | {t} | {m} |" for b, f, t, m in rows()]
    if (o := _load("overhead")) and "rows" in o:
        lines += ["", overhead_table(o)]
    if machine:
        lines.append("")
        lines.append(f"Machine: {machine['cores']} cores ({machine['cpu']}), torch {machine['torch']} with "
                     f"{machine['torch_threads']} threads on {machine['device']}, flwr {machine['flwr']}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    ap.add_argument("--doc", type=Path, default=DOC, help="the Markdown file whose bench block to rewrite")
    ap.add_argument("--overhead-table", type=Path, metavar="JSON",
                    help="print the overhead table of this bench.overhead result (e.g. one kept beside a dated "
                         "study section) and change nothing")
    args = ap.parse_args()
    if args.overhead_table:
        print(overhead_table(json.loads(args.overhead_table.read_text())))
        return
    text = args.doc.read_text() if args.doc.is_file() else ""
    if START not in text or END not in text:
        raise SystemExit(f"{args.doc} has no {START} … {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    args.doc.write_text(f"{head}{START}\n{table()}\n{END}{tail}")
    print(f"updated the Performance table in {args.doc}")


if __name__ == "__main__":
    main()
