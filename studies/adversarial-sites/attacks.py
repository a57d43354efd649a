"""The attack × defence study of issue 39 on the demo: one ``fedqc study`` per attack and defence set, then one table.

``run`` writes ``OUT/configs/<attack>-<defence>.yaml`` (extending ``demo-adversarial.yaml`` with the attack's
``scenario.adversarial`` entry and the defence's ``defence`` keys) and runs ``fedqc study`` on it into
``OUT/<attack>-<defence>/``, one after another (a finished study is kept; an interrupted one resumes).
``table`` reads every study there is: per attack, defence and arm the last-3 test AUROC, its paired difference
from the honest run (attack ``none``, same defence and seed; mean and 95 % t-interval over seeds), whether the
lying site was named and by which checks (``adversaries.csv``) and, for the backdoor, its success
(``backdoor.json``); it writes ``OUT/table.csv`` and prints the markdown table. What each attack and defence is:
docs/threat-model.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from fedqc.analysis.paired import paired_difference
from fedqc.analysis.study import study_rows

HERE = Path(__file__).resolve().parent
LIAR = "site02"  # a good demo site of 73 scans; the framed site is site01
ATTACKS = {
    "none": [],
    "bn_moments": [{"sites": [LIAR], "attack": "bn_moments"}],
    "scaled_update": [{"sites": [LIAR], "attack": "scaled_update", "params": {"factor": 1000}}],
    "sign_flip": [{"sites": [LIAR], "attack": "sign_flip"}],
    "targeted_shift": [{"sites": [LIAR], "attack": "targeted_shift", "params": {"label": 1, "size": 1}}],
    "inflated_count": [{"sites": [LIAR], "attack": "inflated_count"}],
    "fake_scores": [{"sites": ["harm01-inverted"], "attack": "fake_scores"}],  # (b): a harmful site hides it
    "backdoor": [{"sites": [LIAR], "attack": "backdoor", "params": {"share": 0.5, "label": 1}}],
    "replay": [{"sites": [LIAR], "attack": "replay"}],
    "framing": [{"sites": [LIAR], "attack": "framing", "params": {"target": "site01"}}],
    "without_liar": [],  # honest, without the liar's training scans: what refusing its updates leaves at best
}
DEFENCES = {"off": {"update_norm": 0.0, "bn_pooling": "sum"},  # only the count check and message freshness
            "checks": {"update_norm": 5.0, "bn_pooling": "robust"},
            "norm": {"update_norm": 5.0, "bn_pooling": "sum"}, "robust_bn": {"update_norm": 0.0, "bn_pooling": "robust"},
            "default": {}}  # norm, robust_bn: each check's cost on honest runs; default: the schema's


def without_liar(out: Path) -> Path:
    """The demo's manifest without the liar's training scans (its verification and test scans kept, so that the
    test split is the attacks' own; paths made absolute), written under ``out/data``."""
    from fedqc.config import load_config

    source = load_config(HERE / "demo-adversarial.yaml").manifest
    table = pd.read_csv(source)
    table["path"] = [str((source.parent / p).resolve()) for p in table["path"]]
    path = out / "data" / f"demo-without-{LIAR}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table[(table["site"] != LIAR) | (table["split"] != "train")].to_csv(path, index=False)
    return path


def config(attack: str, defence: str, out: Path, arms: list[str] | None = None) -> Path:
    """The study config of one attack and defence set (``arms`` of it, or demo-adversarial.yaml's), written under
    ``out/configs``."""
    spec = {"extends": str(HERE / "demo-adversarial.yaml"), "name": f"adversarial-{attack}-{defence}"}
    if attack == "without_liar":
        spec["manifest"] = str(without_liar(out).resolve())
    if arms:
        spec["arms"] = arms
    if ATTACKS[attack]:
        spec["scenario"] = {"adversarial": ATTACKS[attack]}
    if DEFENCES[defence]:
        spec["defence"] = DEFENCES[defence]
    path = out / "configs" / f"{attack}-{defence}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(args: argparse.Namespace) -> None:
    for attack in args.attacks:
        for defence in args.defences:
            cmd = [sys.executable, "-m", "fedqc", "study", "--config", str(config(attack, defence, args.out, args.arms)),
                   "--seeds", *map(str, args.seeds), "--out", str(args.out / f"{attack}-{defence}")]
            if args.parallel:
                cmd += ["--parallel", str(args.parallel)]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)


def seeds_of(study: Path) -> dict[int, Path]:
    return {int(p.name.removeprefix("seed_")): p for p in sorted(study.glob("seed_*")) if p.is_dir()}


def detection(study: Path, arm: str) -> dict:
    """Over the study's seeds: in how many the lying site was named, the checks it failed, the honest sites'
    refusals, and the backdoor's mean success and clean rate."""
    named, checks, honest, success, clean = 0, set(), 0, [], []
    for run in seeds_of(study).values():
        table = run / arm / "adversaries.csv"
        if table.is_file():
            t = pd.read_csv(table, dtype={"checks": str}).fillna({"checks": ""})
            liars = t[~t["role"].str.startswith("honest") & ~t["role"].str.startswith("framed by")]
            named += int(liars["named"].any())
            checks |= {c for cs in liars["checks"] for c in cs.split("; ") if c}
            honest += int(t.loc[t["role"] == "honest", "refused"].sum())
        if (b := run / arm / "backdoor.json").is_file():
            result = json.loads(b.read_text())
            success.append(result["attack_success"])
            clean.append(result["clean_rate"])
    out = {"named_seeds": named, "checks": "; ".join(sorted(checks)), "honest_refused": honest}
    if success:
        out |= {"backdoor_success": sum(success) / len(success), "backdoor_clean_rate": sum(clean) / len(clean)}
    return out


def table(args: argparse.Namespace) -> pd.DataFrame:
    studies = {tuple(p.name.split("-", 1)): p for p in sorted(args.out.iterdir()) if p.is_dir() and seeds_of(p)
               and p.name.split("-", 1)[0] in ATTACKS}
    rows = []
    for (attack, defence), study in sorted(studies.items()):
        per_seed = study_rows(seeds_of(study), list(args.arms))
        if per_seed.empty:  # started, no arm finished yet
            continue
        honest, lost = studies.get(("none", defence)), studies.get(("without_liar", defence))
        base = study_rows(seeds_of(honest), list(args.arms)) if honest else None
        floor = study_rows(seeds_of(lost), list(args.arms)) if lost else None
        for arm, r in per_seed.groupby("arm"):
            a = r.set_index("seed")["auroc_last3"]
            row = {"attack": attack, "defence": defence, "arm": arm, "seeds": len(a), "auroc_last3": a.mean()}
            if base is not None and attack != "none":
                b = base[base["arm"] == arm].set_index("seed")["auroc_last3"]
                d = paired_difference(a, b, names=(attack, "none"))
                row |= {"vs_honest": d["mean"], "ci_lo": d["ci_lo"], "ci_hi": d["ci_hi"]}
            if floor is not None and attack not in ("none", "without_liar"):
                b = floor[floor["arm"] == arm].set_index("seed")["auroc_last3"]
                d = paired_difference(a, b, names=(attack, "without_liar"))
                row |= {"vs_without_liar": d["mean"], "wl_ci_lo": d["ci_lo"], "wl_ci_hi": d["ci_hi"]}
            rows.append(row | detection(study, arm))
    result = pd.DataFrame(rows)
    result.to_csv(args.out / "table.csv", index=False)
    print(markdown(result))
    return result


def markdown(frame: pd.DataFrame) -> str:
    """``frame`` as a markdown table, numbers to 3 decimals."""
    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the studies")
    r.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    r.add_argument("--defences", nargs="+", default=list(DEFENCES), choices=list(DEFENCES))
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    r.add_argument("--parallel", type=int, default=None, help="fedqc study --parallel: runs at a time (Ray tasks)")
    r.add_argument("--arms", nargs="+", default=None, help="the arms to run (default: demo-adversarial.yaml's)")
    t = sub.add_parser("table", help="tabulate the studies there are")
    t.add_argument("--arms", nargs="+", default=["clean", "dirty", "qc", "qc-loss-batch"])
    for p in (r, t):
        p.add_argument("--out", type=Path, default=Path("runs/adversarial-sites"))
    args = parser.parse_args(argv)
    run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    main()
