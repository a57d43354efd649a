"""``fedqc harm``: inject a harm scenario into any manifest — a researcher's own scans included.

The output folder gets a new manifest and the corrupted images only: good scans keep
their original (absolute) paths and are never copied, a label flip changes the manifest
and not the image, and the ground truth goes to ``harm`` / ``harm_detail``. A bias
scenario's markers go to ``marker`` / ``marker_detail``, and ``bias_flipped.csv`` lists
the test split with every covered scan's marker reversed (marked copies under
``flipped/``): the bias-flipped evaluation. Findings become further targets,
``label_<name>`` columns; a scenario's lying sites go to ``adversarial.csv`` (and a
backdoor's triggered test scans to ``triggered.csv``). Nothing is
written into or next to the input files: the output folder may neither lie inside the
manifest's or an image's folder nor contain an input file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from fedqc.data.corruptions import CORRUPTIONS, make_corruption
from fedqc.data.corruptions.scenario import DROPPED, Action, Scenario
from fedqc.data.images import pixels
from fedqc.data.manifest import load_manifest
from fedqc.errors import UserError
from fedqc.io import atomic_write_csv, atomic_write_text

GROUND_TRUTH = ("harm", "harm_detail")
ADVERSARIAL = "adversarial.csv"  # site, attack, params of the scenario's lying sites
TRIGGERED = "triggered.csv"  # a backdoor's test scans of the other label, trigger planted (attack success)


def corrupt(image: np.ndarray | None, label: int, action: Action) -> tuple[np.ndarray | None, int, str]:
    """Apply ``action`` to one scan: the corrupted image (None stays None for a label flip), label and record."""
    transform = make_corruption(action.kind, seed=action.seed, **action.params)
    image, label = transform(image, label)
    return image, int(label), action.record or transform.record()


def _write(image: np.ndarray, like: sitk.Image, out: Path, rel: Path) -> str:
    """Write ``image`` with ``like``'s geometry to ``out/rel``; return ``rel`` as the manifest's path."""
    written = sitk.GetImageFromArray(image)
    written.CopyInformation(like)
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(written, str(out / rel), useCompression=True)
    return rel.as_posix()


def _marked(path: str, out: Path, marker: pd.Series, rel: Path) -> str:
    """Write the scan at ``path`` (relative paths are in ``out``) with ``marker``'s marker to ``out/rel``."""
    original = sitk.ReadImage(str(out / path) if not Path(path).is_absolute() else path)
    image, _, _ = corrupt(pixels(original), 0, Action(marker["subject"], marker["kind"], 0, marker["params"]))
    return _write(image, original, out, rel)


def _plant_findings(result: pd.DataFrame, draws: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Plant each drawn finding into its scan, recorded as the target ``label_<name>`` (0 where not planted)."""
    result = result.assign(**{f"label_{name}": 0 for name in dict.fromkeys(draws["name"])})
    at = {s: i for i, s in zip(result.index, result["subject"])}
    for m in draws[draws["marker"] == 1].to_dict("records"):
        i = at[m["subject"]]
        result.at[i, "path"] = _marked(result.at[i, "path"], out, m,
                                       Path("images") / result.at[i, "site"] / f"{m['subject']}.nii.gz")
        result.at[i, f"label_{m['name']}"] = 1
    return result


def _plant_markers(result: pd.DataFrame, markers: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Mark ``result``'s scans as ``markers`` says (``marker``, ``marker_detail``), and write ``bias_flipped.csv``:
    the test rows with each covered scan's marker reversed (the unmarked original, or a marked copy)."""
    result = result.assign(marker=0, marker_detail="")
    flipped = result[result["split"] == "test"].copy()
    at, flip_at = ({s: i for i, s in zip(t.index, t["subject"])} for t in (result, flipped))
    for m in markers.to_dict("records"):
        i, path = at[m["subject"]], result.at[at[m["subject"]], "path"]
        name = Path(result.at[i, "site"]) / f"{m['subject']}.nii.gz"
        if m["marker"]:
            result.loc[i, ["path", "marker", "marker_detail"]] = [_marked(path, out, m, "images" / name), 1, m["record"]]
        else:
            result.at[i, "marker_detail"] = m["record"]
        if m["subject"] in flip_at:
            j = flip_at[m["subject"]]
            flipped.loc[j, ["path", "marker", "marker_detail"]] = \
                [path, 0, m["record"]] if m["marker"] else [_marked(path, out, m, "flipped" / name), 1, m["record"]]
    atomic_write_csv(flipped, out / "bias_flipped.csv")
    return result


def _plant_triggers(result: pd.DataFrame, actions: list[Action], out: Path) -> None:
    """``triggered.csv``: per backdoor (its label and trigger), the test scans of the other label with the trigger
    planted (copies under ``triggered/``; true labels kept, ``marker_detail`` the backdoor's record)."""
    backdoors = {json.dumps(a.params, sort_keys=True): a for a in actions if a.kind == "backdoor"}
    test, rows = result[result["split"] == "test"], []
    for i, (record, action) in enumerate(sorted(backdoors.items())):
        trigger = make_corruption("backdoor", **action.params).trigger()
        for row in test[test["label"] != action.params.get("label", 1)].to_dict("records"):
            original = sitk.ReadImage(row["path"] if Path(row["path"]).is_absolute() else str(out / row["path"]))
            image, _ = trigger(pixels(original), row["label"])
            rel = Path("triggered") / str(i) / row["site"] / f"{row['subject']}.nii.gz"
            rows.append({**row, "path": _write(image, original, out, rel), "marker": 1, "marker_detail": record})
    atomic_write_csv(pd.DataFrame(rows, columns=[*result.columns, *(c for c in ("marker", "marker_detail")
                                                                      if c not in result)]), out / TRIGGERED)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"scenario not found: {path}")
    try:
        return Scenario.from_dict(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None


def _check_output(out: Path, manifest: Path, table: pd.DataFrame) -> None:
    out = out.resolve()
    inputs = [manifest.resolve()] + [Path(p) for p in table["path"]]
    for folder in sorted({p.parent for p in inputs}):
        if out == folder or out.is_relative_to(folder):
            raise UserError(f"--out {out} is inside the input folder {folder}; choose a folder apart from the inputs")
    inside = [p for p in inputs if p.is_relative_to(out)]
    if inside:
        raise UserError(f"--out {out} contains input files (e.g. {inside[0]}); choose a folder apart from the inputs")


def inject(manifest: str | Path, scenario: Scenario, out: str | Path, *, seed: int = 0,
           overwrite: bool = False) -> pd.DataFrame:
    """Write ``out/manifest.csv`` (the scenario applied to ``manifest``), the corrupted images under
    ``out/images/<site>/`` and ``out/scenario.yaml``; return the new manifest."""
    manifest, out = Path(manifest), Path(out)
    table = load_manifest(manifest)
    _check_output(out, manifest, table)
    actions = scenario.plan(table, seed)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} exists and is not empty (use --overwrite to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    table = table.copy()
    table["harm_detail"] = table["harm_detail"].fillna("") if "harm_detail" in table else ""
    index = {s: i for i, s in enumerate(table["subject"])}
    rows = table.to_dict("records")
    dropped = {a.subject: a.record for a in actions if a.kind == DROPPED}
    for action in actions:
        if action.kind == DROPPED:
            continue
        if action.source is not None:
            row = {**rows[index[action.source]], "subject": action.subject, "site": action.site, "split": action.split}
            rows.append(row)
        else:
            row = rows[index[action.subject]]
        image = None
        if CORRUPTIONS[action.kind].changes_image:
            original = sitk.ReadImage(row["path"])
            image = pixels(original)  # a colour image is corrupted, and written, as grey
        image, row["label"], row["harm_detail"] = corrupt(image, row["label"], action)
        row["harm"] = action.kind
        if image is not None:
            row["path"] = _write(image, original, out, Path("images") / row["site"] / f"{action.subject}.nii.gz")
    result = pd.DataFrame(rows)
    result = result[~result["subject"].isin(dropped)].reset_index(drop=True)
    kept = table[~table["subject"].isin(dropped)]
    if scenario.findings:
        result = _plant_findings(result, scenario.finding_draws(kept, seed), out)
    if scenario.bias:
        result = _plant_markers(result, scenario.markers(kept, seed), out)
    if any(a.kind == "backdoor" for a in actions):
        _plant_triggers(result, actions, out)
    atomic_write_csv(result, out / "manifest.csv")
    if dropped:  # what a prevalence entry removed, so that nothing leaves the manifest unrecorded
        gone = table[table["subject"].isin(dropped)][["subject", "site", "split", "label"]]
        atomic_write_csv(gone.assign(entry=gone["subject"].map(dropped)), out / "dropped.csv")
    atomic_write_text(yaml.safe_dump({"seed": seed, "source": str(manifest.resolve()), "sites": list(scenario.sites),
                                      "scans": list(scenario.scans), "label_noise": list(scenario.label_noise),
                                      "prevalence": list(scenario.prevalence), "bias": list(scenario.bias),
                                      "findings": list(scenario.findings),
                                      "adversarial": list(scenario.adversarial)},
                                     sort_keys=False), out / "scenario.yaml")
    if scenario.adversarial:  # the ground truth of the lying sites, beside the harm columns'
        atomic_write_csv(pd.DataFrame([{"site": s, "attack": a, "params": json.dumps(p, sort_keys=True)}
                                       for s, (a, p) in sorted(scenario.adversaries().items())]),
                         out / ADVERSARIAL)
    return result
