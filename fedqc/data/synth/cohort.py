"""Synthetic multi-center brain-MRI cohort built from the MNI152 template in nilearn's wheel.

Every subject is the 2 mm MNI152 2009 T1 template (shipped inside nilearn, never
downloaded) resampled through a subject-specific sampling grid, in one batched
``grid_sample`` call:

* head size: a global scale, smaller for women (``female_head_scale``) plus jitter;
* a smooth random deformation (``deform_mm``) and a global intensity jitter;
* Parkinson's disease: an intensity drop (``pd_intensity``) and local atrophy
  (``pd_atrophy``) in deep grey matter — GM probability under Gaussian blobs at the
  putamen, caudate, pallidum and thalamus (nilearn ships no labels);
* age: ventricle enlargement (``age_atrophy`` per decade over 40);
* scanner: per-scanner bias field, contrast (gamma), gain and noise.

The difficulty model (:mod:`fedqc.data.synth.effects`, all off by default) adds a per-subject disease
strength, label-unrelated deep-GM anatomy and per-scanner grey-matter contrast and blur.

Presets: ``demo`` (10 good sites of varied size + the default harm scenario),
``demo2d`` (the same sites, labels and harm as 2D slices: the axial plane through the
deep grey matter, where the disease effect is), and ``reference`` (83 sites whose
train/test sizes, PD and female counts follow the real study, ``reference_sites.csv``;
each site also gets a ``val`` split). Same seed → byte-identical manifest and images, whatever the
number of worker processes: each scan draws from its own subject-keyed RNG.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from fedqc.data.corruptions.scenario import DROPPED, Action, Scenario
from fedqc.data.corruptions.transforms import MAX_INTENSITY
from fedqc.data.inject import corrupt
from fedqc.data.synth.effects import EFFECT_SETS, GAMMA, Effects, SubjectDraw, effects_yaml, oracle_auroc, subject_draw
from fedqc.errors import UserError

# Deep grey matter centres in MNI mm (left/right putamen, caudate, pallidum, thalamus).
DGM_CENTRES_MM = [(s * x, y, z) for s in (-1, 1) for x, y, z in
                  ((25, 2, 0), (13, 12, 10), (19, -4, -1), (11, -18, 7))]
DGM_RADIUS_MM = 7.0
VENTRICLE_CENTRE_MM = (0.0, -5.0, 15.0)
VENTRICLE_RADIUS_MM = 22.0


@dataclass(frozen=True)
class SiteSpec:
    """Counts for one site; ``*_pd`` and ``*_female`` are counts within each split."""

    site: str
    scanner: str
    train_n: int
    train_pd: int
    train_female: int
    val_n: int
    val_pd: int
    val_female: int
    test_n: int
    test_pd: int
    test_female: int


# --------------------------------------------------------------------------- template
@dataclass(frozen=True)
class Template:
    """Template channels (T1, GM, deep-GM weight, brain mask) as a (1, 4, X, Y, Z) tensor."""

    channels: torch.Tensor
    lo: np.ndarray  # brain bounding box in template voxels
    hi: np.ndarray
    affine: np.ndarray


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=2)
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata()
    affine = t1.affine
    t1 = t1.get_fdata()
    t1 = t1 / t1.max()
    inv = np.linalg.inv(affine)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in t1.shape], indexing="ij"), -1)
    dgm = np.zeros(t1.shape)
    for centre in DGM_CENTRES_MM:
        c = (inv @ np.array([*centre, 1.0]))[:3]
        d2 = (((grid - c) * 2.0) ** 2).sum(-1)  # 2 mm voxels
        dgm = np.maximum(dgm, np.exp(-d2 / (2 * DGM_RADIUS_MM**2)))
    dgm *= gm
    idx = np.argwhere(mask > 0)
    lo = np.maximum(idx.min(0) - 2, 0).astype(float)
    hi = np.minimum(idx.max(0) + 2, np.array(t1.shape) - 1).astype(float)
    chans = torch.from_numpy(np.stack([t1, gm, dgm, mask]).astype(np.float32))[None]
    return Template(chans, lo, hi, affine)


def _mm_to_vox(template: Template, mm) -> np.ndarray:
    return (np.linalg.inv(template.affine) @ np.array([*mm, 1.0]))[:3]


# --------------------------------------------------------------------------- subjects
def _smooth_field(rng: np.random.Generator, shape, control: int = 5, channels: int = 3):
    coarse = torch.from_numpy(rng.standard_normal((1, channels, control, control, control)))
    return F.interpolate(coarse.float(), size=tuple(shape), mode="trilinear", align_corners=True)[0]


def _sampling_axes(tpl: Template, shape: tuple[int, ...]) -> tuple[list[torch.Tensor], tuple[int, int, int]]:
    """Template voxel coordinates along each output axis, and the 3D shape sampled: a 2D ``shape`` samples one
    axial slice at the height of the deep grey matter."""
    axes = [torch.linspace(float(a), float(b), n) for a, b, n in zip(tpl.lo, tpl.hi, shape)]
    if len(shape) == 2:
        z = float(np.mean([_mm_to_vox(tpl, c)[2] for c in DGM_CENTRES_MM]))
        return axes + [torch.tensor([z])], (*shape, 1)
    return axes, tuple(shape)


def synth_subject(
    rng: np.random.Generator,
    *,
    shape: tuple[int, ...],
    label: int,
    sex: str,
    age: float,
    scanner: dict,
    effects: Effects,
    draw: SubjectDraw | None = None,
) -> np.ndarray:
    """One synthetic T1 scan on a 0-255 scale, array axes (x, y, z) — or (x, y) for a 2D ``shape``.

    ``draw``: the subject's difficulty draws (:func:`~fedqc.data.synth.effects.subject_draw`); None gives
    the label's plain effect (strength 1 for a patient, 0 for a control) and no anatomy change. Every
    difficulty step is skipped when it is 0, so the default effects give the images of the generator
    before the difficulty model, bit for bit."""
    draw = draw or SubjectDraw(float(label), 0.0, 0.0)
    tpl = load_template()
    axes, shape3 = _sampling_axes(tpl, shape)
    vox = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # output -> template voxel
    centre = torch.tensor((tpl.lo + tpl.hi) / 2, dtype=torch.float32)
    scale = (effects.female_head_scale if sex == "F" else 1.0) + effects.head_scale_sd * rng.standard_normal()
    vox = centre + (vox - centre) / scale
    mm_per_vox = 2.0
    shrink = effects.pd_atrophy * draw.pd_strength + draw.dgm_size  # disease atrophy + label-unrelated size
    if shrink:
        for c_mm in DGM_CENTRES_MM:
            c = torch.tensor(_mm_to_vox(tpl, c_mm), dtype=torch.float32)
            w = torch.exp(-(((vox - c) * mm_per_vox) ** 2).sum(-1, keepdim=True) / (2 * DGM_RADIUS_MM**2))
            vox = vox + shrink * w * (vox - c)
    vent = torch.tensor(_mm_to_vox(tpl, VENTRICLE_CENTRE_MM), dtype=torch.float32)
    w = torch.exp(-(((vox - vent) * mm_per_vox) ** 2).sum(-1, keepdim=True) / (2 * VENTRICLE_RADIUS_MM**2))
    vox = vox - effects.age_atrophy * max(age - 40.0, 0.0) / 10.0 * w * (vox - vent)
    vox = vox + _smooth_field(rng, shape3).permute(1, 2, 3, 0) * (effects.deform_mm / mm_per_vox)

    size = torch.tensor(tpl.channels.shape[2:], dtype=torch.float32)
    norm = 2.0 * vox / (size - 1) - 1.0
    grid = norm.flip(-1)[None]  # grid_sample wants (z, y, x) order for (D, H, W) = (x, y, z)
    t1, gm, dgm, _mask = F.grid_sample(tpl.channels, grid, mode="bilinear", align_corners=True)[0]

    img = t1 * (1.0 - effects.pd_intensity * dgm * draw.pd_strength)
    if draw.dgm_intensity:
        img = img * (1.0 - draw.dgm_intensity * dgm)
    if scanner["contrast"]:
        img = img * (1.0 + scanner["contrast"] * gm)
    img = img * (1.0 + effects.intensity_sd * rng.standard_normal())
    field = _smooth_field(np.random.default_rng(scanner["seed"]), shape3, control=3, channels=1)[0]
    bias = torch.exp(effects.bias_strength * scanner["bias"] * field)
    img = torch.clamp(img * bias, min=0.0) ** scanner["gamma"]
    img = img * MAX_INTENSITY * scanner["gain"]
    if scanner["blur"]:
        sigma = (scanner["blur"],) * 3 if len(shape) == 3 else (scanner["blur"], scanner["blur"], 0.0)
        img = torch.from_numpy(ndimage.gaussian_filter(img.numpy(), sigma, mode="nearest"))
    img = img + torch.from_numpy(rng.normal(0.0, scanner["noise"], size=shape3)).float().abs()
    return torch.clamp(img, 0.0, MAX_INTENSITY).numpy().astype(np.float32).reshape(shape)


def scanner_params(name: str, seed: int, effects: Effects) -> dict:
    """Deterministic scanner effects from the scanner's name and the cohort seed. The difficulty model's
    scanner effects (contrast, blur) draw from a generator of their own, so the others stay as they were."""
    rng = np.random.default_rng([seed, *name.encode()])
    extra = np.random.default_rng([seed, 1001, *name.encode()])  # 1001: no byte of a name
    return {
        "seed": int(rng.integers(2**31)),
        "bias": float(rng.uniform(0.3, 1.0)),
        "gamma": 1.0 + (float(rng.uniform(1.0 - GAMMA, 1.0 + GAMMA)) - 1.0) * (effects.scanner_gamma / GAMMA),
        "gain": float(rng.uniform(0.8, 1.0)),
        "noise": float(rng.uniform(1.0, effects.noise_max)),
        "contrast": float(extra.uniform(-1.0, 1.0)) * effects.scanner_contrast,
        "blur": float(extra.uniform(0.0, 1.0)) * effects.scanner_blur,
    }


def write_nifti(path: Path, image: np.ndarray, shape) -> None:
    """Write an (x, y, z) or (x, y) array as NIfTI with spacing covering the cropped template box."""
    tpl = load_template()
    spacing = [float((hi - lo) * 2.0 / max(n - 1, 1)) for lo, hi, n in zip(tpl.lo, tpl.hi, shape)]
    img = sitk.GetImageFromArray(image.T)
    img.SetSpacing(spacing)
    flip = np.diag([-1.0, -1.0, 1.0][: len(shape)])  # RAS array in LPS terms
    img.SetDirection(tuple(flip.ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=True)


# --------------------------------------------------------------------------- presets
def _split_counts(n: int, pd: int, female: int, frac: float) -> tuple[int, int, int]:
    """Carve a val split of about ``frac`` of a site's train counts (at least one scan)."""
    k = max(1, round(n * frac))
    return k, round(k * pd / n) if n else 0, round(k * female / n) if n else 0


def reference_sites(val_fraction: float = 0.2) -> list[SiteSpec]:
    """The 83 sites of the real study (train/test as published, plus a val split)."""
    with resources.files("fedqc.data").joinpath("reference_sites.csv").open() as fh:
        table = pd.read_csv(fh)
    specs = []
    for r in table.itertuples():
        val = _split_counts(r.train_n, r.train_pd, r.train_female, val_fraction)
        specs.append(SiteSpec(r.site, r.scanner_id, r.train_n, r.train_pd, r.train_female,
                              *val, r.test_n, r.test_pd, r.test_female))
    return specs


DEMO_TRAIN_SIZES = (60, 45, 35, 28, 20, 14, 10, 7, 4, 2)


def demo_sites(seed: int) -> list[SiteSpec]:
    """10 good sites of very different size, PD share and sex mix."""
    rng = np.random.default_rng([seed, 7])
    specs = []
    for i, n in enumerate(DEMO_TRAIN_SIZES):
        pd_share = float(np.clip(rng.normal(0.5, 0.12), 0.2, 0.8))
        f_share = float(np.clip(rng.normal(0.42, 0.1), 0.2, 0.7))
        counts = []
        for k in (n, max(1, round(n * 0.25)), max(1, round(n * 0.35))):
            counts += [k, round(k * pd_share), round(k * f_share)]
        specs.append(SiteSpec(f"site{i + 1:02d}", f"scanner{i % 6 + 1:02d}", *counts))
    return specs


# Harm scenarios in the format of fedqc.data.corruptions.scenario. In a synthetic cohort a ``new`` site
# and the single scans of a named ``site`` are synthesized as extra subjects, then corrupted.
DEMO_HARM = {
    "sites": [
        {"kind": "inverted", "new": "harm01-inverted", "train": 30, "val": 6},
        {"kind": "noise", "new": "harm02-noise", "train": 25, "val": 5},
        {"kind": "mislabeled", "new": "harm03-mislabeled", "train": 60, "val": 12},
    ],
    "scans": [
        {"kind": "inverted", "site": "site02"},
        {"kind": "noise", "site": "site03"},
        {"kind": "blank", "site": "site04"},
        {"kind": "mislabeled", "site": "site05"},
    ],
}
# The reference study's two scenarios together: whole harmful centers (one of each kind, and a small one
# like the 30 real centers under 5 scans) and single harmful scans, ten of each kind, in randomly chosen
# good centers of every size.
REFERENCE_HARM = {
    "sites": [
        {"kind": "inverted", "new": "harm01-inverted", "train": 20, "val": 4},
        {"kind": "noise", "new": "harm02-noise", "train": 20, "val": 4},
        {"kind": "mislabeled", "new": "harm03-mislabeled", "train": 20, "val": 4},
        {"kind": "inverted", "new": "harm04-inverted-small", "train": 3, "val": 1},
    ],
    "scans": [{"kind": k, "site": "random", "count": 10} for k in ("inverted", "noise", "blank", "mislabeled")],
}
SMOKE_SITES = [
    SiteSpec("hospitalA", "scanner01", 8, 4, 3, 2, 1, 1, 3, 1, 1),
    SiteSpec("hospitalB", "scanner02", 6, 3, 2, 2, 1, 1, 3, 2, 1),
    SiteSpec("hospitalC", "scanner03", 4, 2, 2, 2, 1, 1, 2, 1, 1),
]
# Each preset's sites, harm scenario and default effect set (a name in EFFECT_SETS).
PRESETS = {
    "demo": (demo_sites, DEMO_HARM, "v1"),
    "demo2d": (demo_sites, DEMO_HARM, "v1"),
    "smoke": (lambda seed: list(SMOKE_SITES), {}, "v1"),  # 3 small good sites: deployment smoke runs
    "reference": (lambda seed: reference_sites(), REFERENCE_HARM, "v3"),  # calibrated at 32³
}
PRESET_2D = {"demo2d"}  # presets of 2D slices; their default side is 64 (DenseNet121's smallest)


def preset_shape(preset: str, size: int | tuple[int, ...] | None) -> tuple[int, ...]:
    """The image shape of ``preset`` at ``size`` (one side, or every side; None: the preset's default)."""
    dims = 2 if preset in PRESET_2D else 3
    size = (64 if dims == 2 else 32) if size is None else size
    shape = (size,) * dims if isinstance(size, int) else tuple(size)
    if len(shape) != dims or min(shape) < 8:
        raise UserError(f"size of preset {preset}: one int or {dims} ints, each >= 8; got {size}")
    return shape


# --------------------------------------------------------------------------- generation
TRUTH = "effects_truth.csv"  # each subject's drawn disease strength; ground truth, never read by a site
EFFECTS_FILE = "effects.yaml"  # the cohort's resolved effects, a file `fedqc cohort --effects` reads back
def _subject_rows(spec: SiteSpec, seed: int) -> list[dict]:
    """Labels, sexes and ages of a site's subjects, exactly matching its counts."""
    rows = []
    for split in ("train", "val", "test"):
        n, n_pd, n_f = (getattr(spec, f"{split}_{k}") for k in ("n", "pd", "female"))
        rng = np.random.default_rng([seed, *spec.site.encode(), *split.encode()])
        labels = rng.permutation([1] * n_pd + [0] * (n - n_pd))
        sexes = rng.permutation(["F"] * n_f + ["M"] * (n - n_f))
        for i, (lab, sex) in enumerate(zip(labels, sexes)):
            age = float(np.clip(rng.normal(66 if lab else 63, 8), 40, 90))
            rows.append({"subject": f"{spec.site}-{split}{i:03d}", "site": spec.site,
                         "label": int(lab), "sex": str(sex), "age": round(age, 1), "split": split,
                         "scanner": spec.scanner, "harm": "none", "harm_detail": ""})
    return rows


def _synthesized_harm(spec: dict, specs: list[SiteSpec], seed: int) -> tuple[list[dict], Scenario]:
    """The extra subjects a harm scenario asks a synthetic cohort for, and the scenario that corrupts them.

    A ``new`` site becomes a synthesized site (its own scanner) turned harmful; ``count`` single scans at
    a named ``site`` become that many synthesized subjects there, each targeted by id. Other entries
    (``site: random``, ``rate``, ``subject``, ``label_noise``) apply to the cohort as they would to any manifest.
    """
    Scenario.from_dict(spec)  # every problem of the scenario itself, before anything is synthesized
    scanners = {s.site: s.scanner for s in specs}
    rows, sites, scans = [], [], []
    for entry in spec.get("sites", []):
        if "new" not in entry:
            sites.append(entry)
            continue
        name, n_train, n_val = entry["new"], entry.get("train", 0), entry.get("val", 0)
        fake = SiteSpec(name, f"scanner-{name}", n_train, n_train // 2, n_train // 3,
                        n_val, n_val // 2, n_val // 3, 0, 0, 0)
        rows += _subject_rows(fake, seed)
        sites.append({k: v for k, v in entry.items() if k not in ("new", "train", "val")} | {"site": name})
    j = 0
    for entry in spec.get("scans", []):
        site = entry.get("site")
        if site is None or site == "random":
            scans.append(entry)
            continue
        if site not in scanners:
            raise UserError(f"harm scenario: single harmful scan targets unknown site {site!r}")
        for _ in range(entry.get("count", 1)):
            rng = np.random.default_rng([seed, 99, j])
            subject = f"{site}-harm{j:02d}"
            rows.append({"subject": subject, "site": site, "label": int(rng.integers(2)),
                         "sex": "F" if rng.random() < 0.4 else "M",
                         "age": round(float(np.clip(rng.normal(65, 8), 40, 90)), 1), "split": "train",
                         "scanner": scanners[site], "harm": "none", "harm_detail": ""})
            scans.append({k: v for k, v in entry.items() if k not in ("site", "count")} | {"subject": subject})
            j += 1
    return rows, Scenario.from_dict({"sites": sites, "scans": scans, "label_noise": spec.get("label_noise", []),
                                     "prevalence": spec.get("prevalence", [])})


# Most scans per task sent to a worker: few enough that an error surfaces within a few tasks' time at full
# size (about 3 s a scan on one core), enough that the per-task cost (pickling, queues) is small next to a 16³ scan.
SCANS_PER_TASK = 8


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS reports one (containers, taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _worker_init() -> None:
    """One torch thread per worker process, so that the workers together use each core once."""
    torch.set_num_threads(1)


def _make_scan(row: dict, action: Action | None, *, out: Path, shape: tuple[int, ...], seed: int,
               effects: Effects) -> dict:
    """Synthesize, corrupt and write one subject's scan; return its manifest row (a copy: workers send it back)
    with the subject's drawn disease strength under ``pd_strength`` (ground truth, kept out of the manifest)."""
    row = dict(row)
    rng = np.random.default_rng([seed, *row["subject"].encode()])
    scanner = scanner_params(row["scanner"], seed, effects)
    draw = subject_draw(seed, row["subject"], row["label"], effects)
    row["pd_strength"] = draw.pd_strength
    image = synth_subject(rng, shape=shape, label=row["label"], sex=row["sex"],
                          age=row["age"], scanner=scanner, effects=effects, draw=draw)
    if action is not None:
        image, row["label"], row["harm_detail"] = corrupt(image, row["label"], action)
        row["harm"] = action.kind
    row["path"] = f"images/{row['site']}/{row['subject']}.nii.gz"
    write_nifti(out / row["path"], image, shape)
    return row


def generate_cohort(
    out: str | Path,
    *,
    preset: str = "demo",
    size: int | tuple[int, ...] | None = None,
    seed: int = 0,
    harm: dict | None = None,
    effects: Effects | None = None,
    effects_source: str | None = None,
    sites: list[SiteSpec] | None = None,
    workers: int | None = None,
) -> pd.DataFrame:
    """Write ``out/manifest.csv`` and one NIfTI per scan under ``out/images/<site>/``.

    Parameters
    ----------
    out
        Output folder (created).
    preset
        ``demo``, ``demo2d`` (its 2D slices), ``reference`` or ``smoke`` (3 small sites, no harm).
    size
        Image shape: an int for a cube (a square for a 2D preset) or every side (the reference is 160, 192,
        160); None: 32 for a 3D preset, 64 for a 2D one.
    seed
        Seeds every random choice; the same seed gives byte-identical files.
    harm
        Harm scenario as a dict (:mod:`fedqc.data.corruptions.scenario`, applied through the same
        planner and transforms as ``fedqc harm``); ``None`` uses the preset's default, ``{}`` injects nothing.
    effects
        Effect sizes (:mod:`fedqc.data.synth.effects`); ``None`` uses the preset's default set.
    effects_source
        Where ``effects`` came from, recorded in ``cohort.json``; None: the name of the set they equal, else
        ``custom``.
    sites
        Site counts replacing the preset's (tests, custom cohorts).
    workers
        Processes making scans in parallel (``None``: every usable core; 1: in this process). The files do
        not depend on it; an error in a worker is raised here as the sequential run would raise it.
    """
    workers = usable_cores() if workers is None else workers
    if workers < 1:
        raise UserError(f"workers must be >= 1 (None: all cores), got {workers}")
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    site_fn, default_harm, default_effects = PRESETS[preset]
    effects = effects or EFFECT_SETS[default_effects]
    shape = preset_shape(preset, size)
    harm_spec = default_harm if harm is None else harm
    specs = sites if sites is not None else site_fn(seed)
    extra, scenario = _synthesized_harm(harm_spec, specs, seed)
    rows = [r for s in specs for r in _subject_rows(s, seed)] + extra
    actions = {a.subject: a for a in scenario.plan(pd.DataFrame(rows), seed)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in rows if getattr(actions.get(r["subject"]), "kind", None) != DROPPED]  # prevalence
    base_rows = rows
    make = functools.partial(_make_scan, out=out, shape=shape, seed=seed, effects=effects)
    todo = [actions.get(r["subject"]) for r in rows]
    workers = min(workers, len(rows))
    if workers <= 1:
        rows = list(map(make, rows, todo))
    else:
        load_template()  # once, before the fork: every worker inherits it
        start = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(start),
                                 initializer=_worker_init) as pool:
            chunk = max(1, min(SCANS_PER_TASK, len(rows) // (4 * workers)))  # a small cohort still spreads out
            rows = list(pool.map(make, rows, todo, chunksize=chunk))  # in input order
    cols = ["subject", "site", "path", "label", "sex", "age", "split", "harm", "harm_detail", "scanner"]
    table = pd.DataFrame(rows)
    manifest = table[cols]
    manifest.to_csv(out / "manifest.csv", index=False)
    # the drawn disease strength, with each subject's label as drawn (before a mislabeling harm): no site reads it
    truth = table[["subject", "site", "split", "pd_strength"]].assign(label=[r["label"] for r in base_rows])
    truth[["subject", "site", "split", "label", "pd_strength"]].to_csv(out / TRUTH, index=False)
    (out / EFFECTS_FILE).write_text(effects_yaml(effects))
    (out / "cohort.json").write_text(pd.Series({
        "preset": preset, "size": list(shape), "seed": seed, "harm": harm_spec,
        "effects_source": effects_source or next((n for n, e in EFFECT_SETS.items() if e == effects), "custom"),
        "effects": asdict(effects),
        "oracle_test_auroc": oracle_auroc(truth)}).to_json(indent=2))
    return manifest

