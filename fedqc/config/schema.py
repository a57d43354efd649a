"""The experiment schema: frozen dataclasses with the defaults of the reference method.

Pure Python: reading a config never imports torch, MONAI or SimpleITK.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

ARMS = ("clean", "dirty", "qc")
# The QC vocabulary; fedqc.qc implements each name (UPDATE_CRITERIA, SITE_CHECKS, SEARCHES).
CRITERIA = ("reference", "loss", "calibrated", "auroc")
GRANULARITIES = ("batch", "hierarchical")
ENGINES = ("flower", "inprocess", "deployment")  # deployment: real SuperNodes, one per site
ORDERS = ("random", "fixed")
# Where a QC arm's model comes from: ``clean`` the oracle clean arm's checkpoint (the reference protocol),
# ``trusted`` a warm-up on ``qc.trusted_sites`` only, ``scratch`` a fresh model with QC from cycle 0.
STARTS = ("clean", "trusted", "scratch")
SCAN_CHECKS = ("labels", "ood")  # per-scan checks by the model: cleanlab label issues, feature distance
REBALANCE = ("none", "weights", "oversample", "undersample")  # fedqc.site.rebalance implements each
CLASS_WEIGHTS = ("site", "federation")
MODELS = ("sfcn", "densenet121", "resnet18")  # fedqc.models builds each name, in 2D or 3D
# The smallest input side at which a batch of one still trains: the last BatchNorm must see more than one
# voxel (DenseNet121 halves the input five times, ResNet18 with MONAI's stride-1 stem four times, SFCN adapts).
MODEL_MIN_SIDE = {"sfcn": 8, "densenet121": 64, "resnet18": 32}
# The encoder's normalisation: BatchNorm keeps running statistics that follow the last site trained; GroupNorm
# and InstanceNorm normalise each scan by itself and keep none.
NORMS = ("batch", "group", "instance")
# Where BatchNorm's running statistics come from when a cycle ends: as the last site visited left them (``site``,
# the reference), or pooled from every calibration site's verification scans (``federated``: counts and moments).
BN_STATS = ("site", "federated")
# The decision threshold of the threshold metrics: 0.5 (``fixed``, the reference), or fitted each cycle on the
# verification scans (never test): Youden's J, the prevalence-matched threshold, or Platt's 0.5 point.
THRESHOLDS = ("fixed", "youden", "prevalence", "platt")
STRATEGIES = ("travelling", "fedavg", "fedprox", "fedtm")  # fedqc.strategies runs each
AVERAGINGS = ("fedavg", "fedprox")  # fedtm's averaging rounds
# Config keys renamed since fedqc 0.1 (dotted, old → new): the old key is still read, with a one-line notice, so
# old configs and run folders (whose config.yaml a resume compares) keep working.
RENAMED_KEYS = {"train.warmup": "train.branch_cycle", "strategy.warmup": "strategy.averaging"}
WEIGHTINGS = ("scans", "equal")  # how an averaging round weighs a site's update
# The server's step after an averaging round (Flower's strategies, fedqc.strategies.server): the average itself
# (``none``), or the average's change taken as a pseudo-gradient by SGD with momentum (FedAvgM) or an adaptive
# optimiser (FedAdagrad, FedAdam, FedYogi; Reddi et al. 2021).
SERVER_OPTIMISERS = ("none", "fedavgm", "fedadagrad", "fedadam", "fedyogi")
# BatchNorm in averaging rounds: averaged like every other layer (``averaged``, FedAvg), or kept at each site
# (``local``, FedBN: weights, bias and running statistics of every BatchNorm layer stay the site's own).
BN_HANDLING = ("averaged", "local")
# A bias head on the encoder's features and how it unlearns (fedqc.site.unlearning): Kim et al.'s Learning Not to
# Learn (gradient reversal + negative entropy), or HarmonyTM's three updates per batch (task, head, confusion).
UNLEARN = ("none", "lntl", "confusion")
# What the bias head predicts: a planted marker (the manifest's ``marker`` column), the scanner (``scanner``), or the
# site itself. Each is known to the site; only the trained weights leave it.
BIAS_TARGETS = ("marker", "scanner", "site")
# How calibration pools the sites' BatchNorm moments: summed as they come (``sum``), or each site's mean and variance
# clipped to the sites' median ± clip robust spreads with its count bounded by its enrolled verification scans
# (``robust``, :mod:`fedqc.strategies.defence`).
BN_POOLING = ("sum", "robust")
# A reply's count of scans trained (an averaging round's weight): believed (``reply``), or refused when above the
# scans the server asked the site to train, from what it declared at enrolment (``enrolment``: the count check).
COUNTS = ("reply", "enrolment")
# How an averaging round combines its updates: FedAvg's weighted mean, or Flower's robust aggregations
# (FedMedian, FedTrimmedAvg, Krum; fedqc.strategies.averaging.Aggregator).
AGGREGATORS = ("mean", "median", "trimmed_mean", "krum")


@dataclass(frozen=True)
class ModelSpec:
    """Which network and at which input shape (two sides for 2D images, three for volumes), its targets (one output
    per target: ``label``, then ``targets``) and its unlearning head."""

    name: str = "sfcn"
    width: float = 0.5
    input_shape: tuple[int, ...] = (32, 32, 32)
    norm: str = "batch"  # NORMS
    targets: tuple[str, ...] = ()  # further binary targets (label_<name> columns) after label; empty: the manifest's
    target_weights: tuple[float, ...] = ()  # each target's share of the loss, label first (empty: all alike)
    unlearn: str = "none"  # UNLEARN
    bias_target: str = "marker"  # BIAS_TARGETS
    bias_classes: tuple[str, ...] = ()  # the bias head's classes (empty: from the manifest; marker: 0 and 1)
    bias_weight: float = 1.0  # lntl: scale of the reversed gradient into the encoder; confusion: the head's loss
    unlearn_weight: float = 1.0  # lntl: weight of the negative entropy; confusion: weight of the confusion loss


def model_dict(model: ModelSpec) -> dict:
    """``model:`` as plain values (lists for tuples): what a checkpoint stores and a request carries."""
    return _plain(dataclasses.asdict(model))


def model_spec(d: dict) -> ModelSpec:
    """A :class:`ModelSpec` back from :func:`model_dict` (keys it lacks keep their defaults: older checkpoints)."""
    tuples = {"input_shape": int, "bias_classes": str, "targets": str, "target_weights": float}
    return ModelSpec(**{k: tuple(tuples[k](x) for x in d[k]) if k in tuples else d[k]
                        for k in (f.name for f in dataclasses.fields(ModelSpec)) if k in d})


@dataclass(frozen=True)
class CalibrationConfig:
    """What happens to the model at the end of every cycle, before it is scored and checkpointed
    (:mod:`fedqc.strategies.calibration`): BatchNorm statistics and the decision threshold."""

    batchnorm: str = "federated"  # BN_STATS
    threshold: str = "prevalence"  # THRESHOLDS
    bn_passes: int = 0  # federated batchnorm: evaluation passes (0: one per BatchNorm layer, exact)


# The reference method's behaviour (BatchNorm statistics of the last site, threshold 0.5): nothing is done at the end
# of a cycle. The defaults above were chosen by measurement (studies/calibration/README.md).
REFERENCE_CALIBRATION = CalibrationConfig(batchnorm="site", threshold="fixed")


@dataclass(frozen=True)
class StrategyConfig:
    """How the model trains across sites each cycle (a *round* of the averaging strategies).

    ``travelling`` visits the sites one after another; ``fedavg`` and ``fedprox`` send the
    same model to every site and average what comes back (Flower's FedAvg / FedProx);
    ``fedtm`` averages for ``rounds`` rounds (with ``averaging``) over the sites with at least
    ``min_scans`` training scans (and, unless ``single_class``, both classes), then
    travels over every site for the remaining cycles. The averaging rounds may end with
    a server optimiser (``server``: Flower's FedAvgM, FedAdagrad, FedAdam, FedYogi) and
    keep BatchNorm at each site (``batchnorm: local``, FedBN).
    """

    name: str = "travelling"
    local_epochs: int = 1  # averaging rounds: local epochs per site and round (QC arms train one)
    local_steps: int = 0  # averaging rounds: batches per site and round instead, over as many epochs (0: epochs)
    fraction: float = 1.0  # averaging rounds: share of the sites drawn each round (seeded; at least one)
    mu: float = 0.001  # fedprox (and a fedprox warm-up): weight of the proximal term mu/2 ||w - w_round||^2
    weighting: str = "scans"  # WEIGHTINGS: a site's update weighs its scans trained, or every site the same
    averaging: str = "fedavg"  # fedtm: AVERAGINGS, the strategy of its averaging rounds (fedqc 0.1: warmup)
    rounds: int = 5  # fedtm: averaging rounds before travelling
    min_scans: int = 20  # fedtm: sites with fewer training scans sit the warm-up out
    single_class: bool = False  # fedtm: whether sites whose training scans are one class join the warm-up
    server: str = "none"  # SERVER_OPTIMISERS: the server's step after each averaging round
    server_lr: float | None = None  # the server optimiser's learning rate (None: Flower's default for it)
    server_momentum: float | None = None  # fedavgm: momentum of the server's SGD (None: Flower's, 0)
    server_beta_1: float | None = None  # fedadam, fedyogi: first-moment decay (None: Flower's, 0.9)
    server_beta_2: float | None = None  # fedadam, fedyogi: second-moment decay (None: Flower's, 0.99)
    server_tau: float | None = None  # fedadagrad, fedadam, fedyogi: adaptivity (None: Flower's, 1e-3)
    batchnorm: str = "averaged"  # BN_HANDLING: local is FedBN


@dataclass(frozen=True)
class TrainConfig:
    """Travelling schedule; ``order`` is ``random``, ``fixed`` or an explicit site list."""

    cycles: int = 30
    branch_cycle: int = 10  # the dirty and QC arms start from the clean arm's checkpoint of it (fedqc 0.1: warmup)
    batch_size: int = 5
    lr: float = 1e-4
    lr_decay: float = 0.1  # lr × exp(-lr_decay · cycle)
    order: str | tuple[str, ...] = "random"
    seed: int = 0
    rebalance: str = "none"  # REBALANCE: class rebalancing of each visit's training scans, at the site
    class_weights: str = "site"  # rebalance weights: counts of the site's scans, or the federation's (as counts)


@dataclass(frozen=True)
class QCConfig:
    """QC of arms ``qc`` and ``qc-<criterion>-<granularity>`` (:mod:`fedqc.qc`)."""

    criterion: str = "auroc"
    granularity: str = "hierarchical"
    tolerance: float = 0.02  # reference criterion: allowed rate rise per trained scan
    z: float = 2.0  # paired criteria: one-sided z of the mean per-scan loss increase
    alpha: float = 0.01  # auroc criterion: level of the site check (site AUROC vs verification AUROC)
    revisit_after: int = 2  # R: a flagged scan is retried at cycle c + R
    verify_fraction: float = 1.0  # share of each site's val scans in the verification set (seeded)
    leave_site_out: bool = True  # a site's own val scans never judge its own updates
    audit: bool = True  # image-level audit before training, its own stage (docs/qc.md: why on)
    untrusted_fraction: float = 0.5  # a site with this share of its training scans eliminated
    #                                  loses its val scans from the verification set
    start: str = "trusted"  # STARTS; clean is an oracle (simulation only)
    trusted_sites: tuple[str, ...] = ()  # start trusted: the sites the model is warmed up on, and only those
    trusted_epochs: int = 10  # start trusted: local epochs per visit of the warm-up (a few curated scans)
    skill: float = 0.7  # decisions wait until the verification scans' median site AUROC reaches this
    holdout: float = 0.0  # until then, this share of each untrusted site's training scans (seeded) stays untrained,
    #                       so the first screening judges them out of sample
    scans: tuple[str, ...] = SCAN_CHECKS  # per-scan checks of the site-check gate (labels needs cleanlab)
    ood_limit: float = 3.5  # a scan is out of distribution beyond this many robust SDs of the verification scans


AUDIT_SUFFIXES = {"audit": True, "noaudit": False}


def qc_variant(arm: str) -> dict | None:
    """``qc-<criterion>-<granularity>[-audit|-noaudit][-<start>]`` or ``qc-<start>`` → the QC keys the name
    sets (criterion, granularity, audit, start); None for other names. ``qc`` alone sets none."""
    parts = arm.split("-")
    if parts[0] != "qc":
        return None
    keys: dict = {}
    rest = parts[1:]
    if len(rest) >= 2 and rest[0] in CRITERIA and rest[1] in GRANULARITIES:
        keys |= {"criterion": rest[0], "granularity": rest[1]}
        rest = rest[2:]
        if rest and rest[0] in AUDIT_SUFFIXES:
            keys["audit"] = AUDIT_SUFFIXES[rest.pop(0)]
    if rest and rest[0] in STARTS:
        keys["start"] = rest.pop(0)
    return None if rest else keys


@dataclass(frozen=True)
class DefenceConfig:
    """What the server checks beyond a reply's form, against a site that lies (docs/threat-model.md).

    The defaults are chosen from their measured cost on honest runs and what they stop (studies/adversarial-sites):
    ``counts: enrolment`` refuses a reply that claims more scans than the server asked for, which an honest site
    never does; ``update_norm: 5`` refuses an update more than five times the recent median's size per batch, and
    robust BatchNorm pooling bounds what one site's moments can move — on the demo's honest runs they left the
    clean and QC arms as they were, and they keep one lying site from sending every arm to chance. The robust
    aggregators, which change how honest sites of unequal size weigh, are off.
    """

    bn_pooling: str = "robust"  # BN_POOLING
    bn_clip: float = 3.0  # robust pooling: a site's channel mean within median ± bn_clip · median SD, its SD within ×/÷ bn_clip
    update_norm: float = 5.0  # reject an update whose change norm exceeds this × the median of recent accepted ones (0: off)
    norm_window: int = 20  # accepted updates the median is taken over
    norm_warmup: int = 3  # accepted updates before the check starts judging
    counts: str = "enrolment"  # COUNTS
    aggregator: str = "mean"  # AGGREGATORS: averaging rounds (fedavg, fedprox, fedtm's warm-up)
    trim_beta: float = 0.2  # trimmed_mean: share of the highest and of the lowest values left out, in [0, 0.5)
    krum_f: int = 1  # krum: lying sites it resists (needs more than 2·krum_f + 2 updates to mean anything)


@dataclass(frozen=True)
class DataConfig:
    """How a site holds its decoded scans (:mod:`fedqc.data.cache`, :mod:`fedqc.site.loading`).

    ``None`` chooses from the machine: a quarter of its memory for ``cache_gb``, 40 % of the GPU's for
    ``device_cache_gb``, reading ahead on a GPU only; 0 turns a cache (or reading ahead) off.
    """

    cache_gb: float | None = None  # decoded scans kept in memory per process (least recently used leave first)
    cache_dir: str | None = None  # a folder on the site's machine keeping decoded scans across processes and runs
    prefetch: int | None = None  # batches read ahead in a background thread while the model trains (0: read in
    #                              line; None: 2 on a GPU, 0 on CPU, where a reading thread competes with training's)
    device_cache_gb: float | None = None  # on a GPU: scans kept there as tensors, so a cycle copies nothing


DEVICES = ("auto", "cpu", "cuda")  # or cuda:N
# Experiment tracking after a run (fedqc.analysis.tracking): none, MLflow or TensorBoard, each an optional extra.
TRACKING = ("none", "mlflow", "tensorboard")
TRACKING_MODULES = {"mlflow": "mlflow", "tensorboard": "tensorboard"}  # backend → the module its extra installs


@dataclass(frozen=True)
class TrackingConfig:
    """Where ``fedqc infer`` and ``fedqc study`` log a run (params, per-cycle metrics, QC counts, report and
    tables). ``uri``: for ``mlflow`` a tracking URI (default ``sqlite:///<run>/mlflow.db``, no server), for
    ``tensorboard`` the log folder (default ``<run>/tensorboard``; a relative one is taken from the run folder)."""

    backend: str = "none"  # TRACKING
    uri: str | None = None
    experiment: str | None = None  # mlflow: the experiment's name (default: the config's name)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    manifest: Path | None = None  # required except for engine deployment, where the server holds no site data
    model: ModelSpec = ModelSpec()
    train: TrainConfig = TrainConfig()
    qc: QCConfig = QCConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    strategy: StrategyConfig = StrategyConfig()
    arms: tuple[str, ...] = ARMS
    engine: str = "flower"
    threads: int = 2
    device: str = "auto"  # DEVICES or cuda:N; auto: the first GPU when torch sees one, else the CPU
    deterministic: bool = False  # a GPU run repeatable: deterministic kernels where torch has them, fixed cuBLAS
    gpus_per_site: float | None = None  # Flower simulation: GPUs a ClientApp holds (None: 1 on a GPU device, else 0)
    data: DataConfig = DataConfig()
    defence: DefenceConfig = DefenceConfig()
    strict: bool = False  # an unusable scan stops the run instead of being skipped and recorded
    site_timeout_s: float = 600.0  # a site that does not answer within this costs its hop (Flower engines)
    failing_cycles: int = 2  # report a site that failed in this many consecutive cycles
    # a harm scenario (the format of `fedqc harm`) injected into the manifest at the start of each run, seeded by
    # the training seed, into <run>/data/: what a study sweeps (e.g. scenario.label_noise.0.rate)
    scenario: dict | None = None
    tracking: TrackingConfig = TrackingConfig()
    source: Path | None = field(default=None, compare=False)

    def qc_for(self, arm: str) -> QCConfig:
        """The QC settings of arm ``qc`` or of a variant named by :func:`qc_variant`."""
        return dataclasses.replace(self.qc, **(qc_variant(arm) or {}))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        if self.manifest is None:
            d.pop("manifest")
        else:
            d["manifest"] = str(self.manifest)
        return _plain(d)


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
