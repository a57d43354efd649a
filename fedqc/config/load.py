"""One YAML file → a validated :class:`~fedqc.config.schema.ExperimentConfig`.

Every problem (unknown key, wrong type, out-of-range value, missing manifest) is
collected and raised together as :class:`~fedqc.errors.ConfigError`, one line per
problem naming the key. Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import re
import types
import typing
from pathlib import Path

import yaml

from fedqc.config.schema import (
    AGGREGATORS,
    ARMS,
    AVERAGINGS,
    BIAS_TARGETS,
    BN_HANDLING,
    BN_POOLING,
    BN_STATS,
    CLASS_WEIGHTS,
    COUNTS,
    CRITERIA,
    DEVICES,
    ENGINES,
    GRANULARITIES,
    MODEL_MIN_SIDE,
    MODELS,
    NORMS,
    ORDERS,
    REBALANCE,
    RENAMED_KEYS,
    SCAN_CHECKS,
    SERVER_OPTIMISERS,
    STARTS,
    STRATEGIES,
    THRESHOLDS,
    TRACKING,
    TRACKING_MODULES,
    UNLEARN,
    WEIGHTINGS,
    ExperimentConfig,
    qc_variant,
)
from fedqc.errors import ConfigError

log = logging.getLogger(__name__)


def _check_type(value, tp, key: str, problems: list[str]):
    """Coerce ``value`` to the annotated type ``tp`` or record a problem."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            trial: list[str] = []
            out = _check_type(value, option, key, trial)
            if not trial:
                return out
        problems.append(f"{key}: {value!r} has the wrong type")
        return None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}: expected a list, got {value!r}")
            return None
        inner = typing.get_args(tp)[0]
        return tuple(_check_type(v, inner, f"{key}[{i}]", problems) for i, v in enumerate(value))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool, dict) and isinstance(value, tp):
        return value
    if tp is type(None) and value is None:
        return None
    if tp is Path and isinstance(value, str):
        return Path(value)
    problems.append(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    return None


def _build(cls, data, prefix: str, problems: list[str]):
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    known = len(problems)
    names = {f.name for f in dataclasses.fields(cls) if f.init and f.name != "source"}
    for key in sorted(set(data) - names):
        problems.append(f"{prefix}{key}: unknown key (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names & set(data):
        tp, value = hints[name], data[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.", problems)
        else:
            kwargs[name] = _check_type(value, tp, prefix + name, problems)
    missing = [f.name for f in dataclasses.fields(cls) if f.name in names and f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    problems += [f"{prefix}{m}: required key missing" for m in missing]
    if len(problems) > known:  # None is a valid value of an optional key
        return None
    return cls(**kwargs)


def _check_ranges(cfg: ExperimentConfig, problems: list[str]) -> None:
    t, m, q = cfg.train, cfg.model, cfg.qc
    criteria, granularities = CRITERIA, GRANULARITIES
    rules = [
        (t.cycles >= 1, f"train.cycles: must be >= 1, got {t.cycles}"),
        (0 <= t.branch_cycle < t.cycles,
         f"train.branch_cycle: must be in 0..cycles-1 ({t.cycles - 1}), got {t.branch_cycle}"),
        (t.branch_cycle != t.cycles - 1 or all(a == "clean" or (a != "dirty" and qc_variant(a) is not None
                                                                and cfg.qc_for(a).start == "scratch") for a in cfg.arms),
         f"train.branch_cycle: the dirty and QC arms start at cycle branch_cycle+1 (QC from scratch at 0), so "
         f"branch_cycle must be <= cycles-2 ({t.cycles - 2}), got {t.branch_cycle}"),
        (t.batch_size >= 1, f"train.batch_size: must be >= 1, got {t.batch_size}"),
        (t.lr > 0, f"train.lr: must be > 0, got {t.lr}"),
        (t.lr_decay >= 0, f"train.lr_decay: must be >= 0, got {t.lr_decay}"),
        (isinstance(t.order, tuple) or t.order in ORDERS, f"train.order: {t.order!r} is not one of {ORDERS} or a list of sites"),
        (m.width > 0, f"model.width: must be > 0, got {m.width}"),
        (t.rebalance in REBALANCE, f"train.rebalance: {t.rebalance!r} is not one of {REBALANCE}"),
        (t.class_weights in CLASS_WEIGHTS, f"train.class_weights: {t.class_weights!r} is not one of {CLASS_WEIGHTS}"),
        (m.name in MODELS, f"model.name: {m.name!r} is not one of {MODELS}"),
        (m.norm in NORMS, f"model.norm: {m.norm!r} is not one of {NORMS}"),
        (all(t.startswith("label_") and len(t) > 6 for t in m.targets) and len(set(m.targets)) == len(m.targets),
         f"model.targets: distinct label_<name> columns, got {list(m.targets)}"),
        (all(w >= 0 for w in m.target_weights) and (not m.target_weights or sum(m.target_weights) > 0),
         f"model.target_weights: weights >= 0, not all 0, got {list(m.target_weights)}"),
        (not m.target_weights or not m.targets or len(m.target_weights) == 1 + len(m.targets),
         f"model.target_weights: one per target (label, then {len(m.targets)} in model.targets), "
         f"got {len(m.target_weights)}"),
        (m.unlearn in UNLEARN, f"model.unlearn: {m.unlearn!r} is not one of {UNLEARN}"),
        (m.bias_target in BIAS_TARGETS, f"model.bias_target: {m.bias_target!r} is not one of {BIAS_TARGETS}"),
        (m.bias_weight >= 0, f"model.bias_weight: must be >= 0, got {m.bias_weight}"),
        (m.unlearn_weight >= 0, f"model.unlearn_weight: must be >= 0, got {m.unlearn_weight}"),
        (not m.bias_classes or len(set(m.bias_classes)) == len(m.bias_classes) >= 2,
         f"model.bias_classes: at least two distinct classes, got {list(m.bias_classes)}"),
        (m.unlearn == "none" or cfg.engine != "deployment" or m.bias_classes or m.bias_target == "marker",
         f"model.bias_classes: engine deployment has no manifest to read the {m.bias_target} classes from; "
         "list them"),
        (m.norm == "batch" or m.name != "resnet18",
         f"model.norm: MONAI's resnet18 applies {m.norm} to its first layer only (its blocks keep BatchNorm); "
         "use sfcn or densenet121"),
        (cfg.calibration.batchnorm in BN_STATS,
         f"calibration.batchnorm: {cfg.calibration.batchnorm!r} is not one of {BN_STATS}"),
        (cfg.calibration.threshold in THRESHOLDS,
         f"calibration.threshold: {cfg.calibration.threshold!r} is not one of {THRESHOLDS}"),
        (cfg.calibration.bn_passes >= 0, f"calibration.bn_passes: must be >= 0, got {cfg.calibration.bn_passes}"),
        (cfg.strategy.name in STRATEGIES, f"strategy.name: {cfg.strategy.name!r} is not one of {STRATEGIES}"),
        (cfg.strategy.averaging in AVERAGINGS,
         f"strategy.averaging: {cfg.strategy.averaging!r} is not one of {AVERAGINGS}"),
        (cfg.strategy.weighting in WEIGHTINGS,
         f"strategy.weighting: {cfg.strategy.weighting!r} is not one of {WEIGHTINGS}"),
        (cfg.strategy.local_epochs >= 1, f"strategy.local_epochs: must be >= 1, got {cfg.strategy.local_epochs}"),
        (cfg.strategy.local_steps >= 0, f"strategy.local_steps: must be >= 0 (0: local_epochs), got "
                                        f"{cfg.strategy.local_steps}"),
        (cfg.strategy.local_steps == 0 or cfg.strategy.local_epochs == 1,
         f"strategy.local_steps: a round's local work is local_steps or local_epochs, not both (local_epochs is "
         f"{cfg.strategy.local_epochs})"),
        (cfg.strategy.local_steps == 0 or cfg.strategy.name != "travelling",
         "strategy.local_steps: set for averaging rounds; strategy.name travelling trains one epoch per visit"),
        (0 < cfg.strategy.fraction <= 1, f"strategy.fraction: must be in (0, 1], got {cfg.strategy.fraction}"),
        (cfg.strategy.mu >= 0, f"strategy.mu: must be >= 0, got {cfg.strategy.mu}"),
        (cfg.strategy.rounds >= 0, f"strategy.rounds: must be >= 0, got {cfg.strategy.rounds}"),
        (cfg.strategy.min_scans >= 0, f"strategy.min_scans: must be >= 0, got {cfg.strategy.min_scans}"),
        (len(m.input_shape) in (2, 3) and min(m.input_shape) >= MODEL_MIN_SIDE.get(m.name, 8),
         f"model.input_shape: two sides (2D) or three (3D), each >= {MODEL_MIN_SIDE.get(m.name, 8)} for "
         f"{m.name}, got {list(m.input_shape)}"),
        (cfg.engine in ENGINES, f"engine: {cfg.engine!r} is not one of {ENGINES}"),
        (cfg.threads >= 1, f"threads: must be >= 1, got {cfg.threads}"),
        (cfg.device in DEVICES or re.fullmatch(r"cuda:\d+", cfg.device) is not None,
         f"device: {cfg.device!r} is not one of {DEVICES} or cuda:N"),
        (cfg.gpus_per_site is None or cfg.gpus_per_site >= 0,
         f"gpus_per_site: must be >= 0, got {cfg.gpus_per_site}"),
        (cfg.data.cache_gb is None or cfg.data.cache_gb >= 0, f"data.cache_gb: must be >= 0, got {cfg.data.cache_gb}"),
        (cfg.data.device_cache_gb is None or cfg.data.device_cache_gb >= 0,
         f"data.device_cache_gb: must be >= 0, got {cfg.data.device_cache_gb}"),
        (cfg.data.prefetch is None or cfg.data.prefetch >= 0, f"data.prefetch: must be >= 0, got {cfg.data.prefetch}"),
        (cfg.site_timeout_s > 0, f"site_timeout_s: must be > 0, got {cfg.site_timeout_s}"),
        (cfg.failing_cycles >= 1, f"failing_cycles: must be >= 1, got {cfg.failing_cycles}"),
        (bool(cfg.arms) and all(a in ARMS or qc_variant(a) for a in cfg.arms),
         f"arms: each of {ARMS}, qc-<{'|'.join(criteria)}>-<{'|'.join(granularities)}>[-audit|-noaudit]"
         f"[-<{'|'.join(STARTS)}>] or qc-<{'|'.join(STARTS)}>, got {list(cfg.arms)}"),
        (len(set(cfg.arms)) == len(cfg.arms), f"arms: listed twice: {list(cfg.arms)}"),
        (q.criterion in criteria, f"qc.criterion: {q.criterion!r} is not one of {criteria}"),
        (q.granularity in granularities, f"qc.granularity: {q.granularity!r} is not one of {granularities}"),
        (q.tolerance >= 0, f"qc.tolerance: must be >= 0, got {q.tolerance}"),
        (q.z >= 0, f"qc.z: must be >= 0, got {q.z}"),
        (0 < q.alpha < 1, f"qc.alpha: must be in (0, 1), got {q.alpha}"),
        (q.revisit_after >= 1, f"qc.revisit_after: must be >= 1, got {q.revisit_after}"),
        (0 < q.verify_fraction <= 1, f"qc.verify_fraction: must be in (0, 1], got {q.verify_fraction}"),
        (0 < q.untrusted_fraction <= 1, f"qc.untrusted_fraction: must be in (0, 1], got {q.untrusted_fraction}"),
        (q.start in STARTS, f"qc.start: {q.start!r} is not one of {STARTS}"),
        (0 <= q.skill < 1, f"qc.skill: must be in [0, 1) (0: decide from the start), got {q.skill}"),
        (0 <= q.holdout < 1, f"qc.holdout: must be in [0, 1), got {q.holdout}"),
        (q.trusted_epochs >= 1, f"qc.trusted_epochs: must be >= 1, got {q.trusted_epochs}"),
        (q.ood_limit > 0, f"qc.ood_limit: must be > 0, got {q.ood_limit}"),
        (set(q.scans) <= set(SCAN_CHECKS), f"qc.scans: each of {SCAN_CHECKS}, got {list(q.scans)}"),
        (cfg.manifest is not None or cfg.engine == "deployment",
         "manifest: required key missing (only engine deployment runs without one)"),
        (cfg.defence.bn_pooling in BN_POOLING,
         f"defence.bn_pooling: {cfg.defence.bn_pooling!r} is not one of {BN_POOLING}"),
        (cfg.defence.bn_clip > 1, f"defence.bn_clip: must be > 1, got {cfg.defence.bn_clip}"),
        (cfg.defence.update_norm == 0 or cfg.defence.update_norm > 1,
         f"defence.update_norm: 0 (off) or a factor > 1, got {cfg.defence.update_norm}"),
        (cfg.defence.norm_window >= 1, f"defence.norm_window: must be >= 1, got {cfg.defence.norm_window}"),
        (1 <= cfg.defence.norm_warmup <= cfg.defence.norm_window,
         f"defence.norm_warmup: must be in 1..norm_window ({cfg.defence.norm_window}), got {cfg.defence.norm_warmup}"),
        (cfg.defence.counts in COUNTS, f"defence.counts: {cfg.defence.counts!r} is not one of {COUNTS}"),
        (cfg.defence.aggregator in AGGREGATORS,
         f"defence.aggregator: {cfg.defence.aggregator!r} is not one of {AGGREGATORS}"),
        (0 <= cfg.defence.trim_beta < 0.5, f"defence.trim_beta: must be in [0, 0.5), got {cfg.defence.trim_beta}"),
        (cfg.defence.krum_f >= 0, f"defence.krum_f: must be >= 0, got {cfg.defence.krum_f}"),
        (not (isinstance(cfg.scenario, dict) and cfg.scenario.get("adversarial")) or cfg.engine != "deployment",
         "scenario.adversarial: lying sites are simulated (engine inprocess or flower), not in deployment"),
        (cfg.scenario is None or cfg.engine != "deployment",
         "scenario: a deployment's sites hold their own data; inject harm beforehand with `fedqc harm`"),
    ]
    problems += [msg for ok, msg in rules if not ok]
    _check_qc_arms(cfg, problems)
    _check_tracking(cfg, problems)
    _check_averaging(cfg, problems)


def _check_tracking(cfg: ExperimentConfig, problems: list[str]) -> None:
    """A known backend, a URI of the backend's form, and its optional extra installed."""
    t = cfg.tracking
    if t.backend not in TRACKING:
        problems.append(f"tracking.backend: {t.backend!r} is not one of {TRACKING}")
        return
    if t.backend == "mlflow" and t.uri is not None and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", t.uri):
        problems.append(f"tracking.uri: an MLflow tracking URI such as sqlite:///path/mlflow.db or "
                        f"http://host:5000, got {t.uri!r}")
    if t.backend == "tensorboard" and t.uri is not None and "://" in t.uri:
        problems.append(f"tracking.uri: tensorboard writes to a local folder, not a URI; got {t.uri!r}")
    if t.backend != "none" and t.uri == "":
        problems.append("tracking.uri: empty; leave it out for the default in the run folder")
    module = TRACKING_MODULES.get(t.backend)
    if module is not None and importlib.util.find_spec(module) is None:
        problems.append(f"tracking.backend: {t.backend} needs the optional extra: pip install 'fedqc[tracking]'")


# Which server optimisers read which strategy.server_* key (the Flower strategy's own argument).
SERVER_KEYS = {"server_lr": SERVER_OPTIMISERS[1:], "server_momentum": ("fedavgm",),
               "server_beta_1": ("fedadam", "fedyogi"), "server_beta_2": ("fedadam", "fedyogi"),
               "server_tau": ("fedadagrad", "fedadam", "fedyogi")}


def _check_averaging(cfg: ExperimentConfig, problems: list[str]) -> None:
    """The server optimiser and BatchNorm handling of averaging rounds: known names, keys that the chosen optimiser
    reads (none set in vain), values in range, and what FedBN needs."""
    s = cfg.strategy
    if s.server not in SERVER_OPTIMISERS:
        problems.append(f"strategy.server: {s.server!r} is not one of {SERVER_OPTIMISERS}")
    elif s.server != "none" and s.name == "travelling":
        problems.append(f"strategy.server: {s.server} steps after averaging rounds; strategy.name travelling has none "
                        "(use fedavg, fedprox or fedtm)")
    for key, readers in SERVER_KEYS.items():
        value = getattr(s, key)
        if value is not None and s.server in SERVER_OPTIMISERS and s.server not in readers:
            problems.append(f"strategy.{key}: read by server {' / '.join(readers)} only, and strategy.server is "
                            f"{s.server}")
    ranges = [(s.server_lr, lambda v: v > 0, "> 0"), (s.server_momentum, lambda v: 0 <= v < 1, "in [0, 1)"),
              (s.server_beta_1, lambda v: 0 <= v < 1, "in [0, 1)"), (s.server_beta_2, lambda v: 0 <= v < 1, "in [0, 1)"),
              (s.server_tau, lambda v: v > 0, "> 0")]
    for key, (value, ok, text) in zip(SERVER_KEYS, ranges):
        if value is not None and not ok(value):
            problems.append(f"strategy.{key}: must be {text}, got {value}")
    if s.server == "fedavgm" and not s.server_momentum and s.server_lr in (None, 1.0):
        problems.append("strategy.server_momentum: fedavgm with momentum 0 and server_lr 1 is plain fedavg; set "
                        "server_momentum (e.g. 0.9) or server_lr")
    if s.batchnorm not in BN_HANDLING:
        problems.append(f"strategy.batchnorm: {s.batchnorm!r} is not one of {BN_HANDLING}")
    elif s.batchnorm == "local":
        if s.name == "travelling":
            problems.append("strategy.batchnorm: local (FedBN) keeps BatchNorm at each site between averaging rounds; "
                            "strategy.name travelling has none (use fedavg, fedprox or fedtm)")
        if cfg.model.norm != "batch":
            problems.append(f"strategy.batchnorm: local (FedBN) needs BatchNorm layers, and model.norm is "
                            f"{cfg.model.norm}")
        if cfg.calibration.batchnorm != "federated":
            problems.append("strategy.batchnorm: local (FedBN) leaves the averaged model no site's statistics; it needs "
                            "calibration.batchnorm federated (pooled from the verification scans)")


def _check_qc_arms(cfg: ExperimentConfig, problems: list[str]) -> None:
    """What each QC arm's start and per-scan checks need."""
    qcs = [cfg.qc_for(a) for a in cfg.arms if a not in ("clean", "dirty") and qc_variant(a) is not None]
    if any(q.start == "trusted" for q in qcs) and not cfg.qc.trusted_sites:
        problems.append("qc.trusted_sites: start trusted needs the sites whose data you trust (e.g. a coordinating "
                        "center's curated scans); or set qc.start to scratch, or clean (an oracle, simulation only)")
    if cfg.engine == "deployment" and any(q.start == "clean" for q in qcs):
        problems.append("qc.start: clean starts QC from the clean arm, an oracle that needs the ground truth only a "
                        "simulation has; on engine deployment use trusted (with qc.trusted_sites) or scratch")
    if any(q.start == "scratch" and q.criterion != "auroc" for q in qcs):
        problems.append("qc.start: scratch waits for skill in the site-check gate, so it needs criterion auroc")
    if any(q.holdout > 0 and q.criterion != "auroc" for q in qcs):
        problems.append("qc.holdout: scans are held out until the site-check gate sees skill, so it needs criterion "
                        "auroc")
    if any(q.criterion == "auroc" and "labels" in q.scans for q in qcs) and importlib.util.find_spec("cleanlab") is None:
        problems.append("qc.scans: 'labels' needs cleanlab (AGPL-3.0, an optional extra): pip install 'fedqc[cleanlab]', "
                        "or leave 'labels' out of qc.scans")


def _read_scenario(path: Path, problems: list[str]) -> dict | None:
    """A scenario given as a path: its YAML mapping, kept in the config (a run folder's snapshot stands alone)."""
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError:
        problems.append(f"scenario: file not found: {path}")
        return None
    except yaml.YAMLError as exc:
        problems.append(f"scenario: {path} is not valid YAML: {str(exc).splitlines()[0]}")
        return None
    if not isinstance(spec, dict):
        problems.append(f"scenario: {path} must hold a mapping (sites, scans, label_noise)")
        return None
    return spec


def _renamed(data: dict, source: str | Path, problems: list[str]) -> dict:
    """``data`` with each key of :data:`~fedqc.config.schema.RENAMED_KEYS` moved to its new name, one notice each on
    stderr (the fedqc logger); both names at once is a problem."""
    out = dict(data)
    for old, new in RENAMED_KEYS.items():
        (part, old_leaf), (_, new_leaf) = old.split("."), new.split(".")
        section = out.get(part)
        if not isinstance(section, dict) or old_leaf not in section:
            continue
        section = dict(section)
        out[part] = section
        if new_leaf in section:
            problems.append(f"{old}: renamed {new}; give only {new}")
            section.pop(old_leaf)
            continue
        section[new_leaf] = section.pop(old_leaf)
        log.warning("%s: %s is deprecated, read as %s", source, old, new)
    return out


def parse_config(data: dict, *, base: Path = Path("."), source: str | Path = "config",
                 check_files: bool = True) -> ExperimentConfig:
    """Validate a config mapping; relative paths are taken from ``base``.

    ``check_files=False`` skips the check that the manifest exists (reading a finished
    run's config, building a config in a test).
    """
    problems: list[str] = []
    if isinstance(data, dict) and isinstance(data.get("manifest"), str):
        data = {**data, "manifest": str((base / data["manifest"]).resolve())}
    if isinstance(data, dict) and isinstance(data.get("scenario"), str):
        data = {**data, "scenario": _read_scenario(base / data["scenario"], problems)}
    if isinstance(data, dict):
        data = _renamed(data, source, problems)
    cfg = _build(ExperimentConfig, data, "", problems)
    if cfg is not None:
        _check_ranges(cfg, problems)
        if check_files and cfg.manifest is not None and not cfg.manifest.is_file():
            problems.append(f"manifest: file not found: {cfg.manifest} (create it with `fedqc cohort`)")
    if problems:
        raise ConfigError(source, problems)
    return dataclasses.replace(cfg, source=Path(source) if source != "config" else None)


def _merged(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merge key by key, every other value (lists included) replaces."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config_file(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping with its ``extends:`` chain applied (the base first, this file on top).

    A relative ``manifest`` or ``scenario`` path resolves from the file that states it, so a
    base's paths stay right for every file that extends it. A missing base, a base that is not
    a mapping, and a cycle are each a one-line :class:`ConfigError` naming the file that states them.
    """
    where = _chain[-1] if _chain else path
    if path.resolve() in [p.resolve() for p in _chain]:
        raise ConfigError(where, ["extends: cycle: " + " -> ".join(str(p) for p in (*_chain, path))])
    if not path.is_file():
        raise ConfigError(where, [f"extends: base config not found: {path}" if _chain else f"config file not found: {path}"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"not valid YAML: {str(exc).splitlines()[0]}"]) from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(path, ["config: expected a mapping of keys (name, manifest, model, train, ...), got "
                                 + repr(data)[:60]])
    for key in ("manifest", "scenario"):
        if isinstance(data.get(key), str):
            data[key] = str((path.parent / data[key]).resolve())
    problems: list[str] = []
    data = _renamed(data, path, problems)  # per file, so a file's old key overrides its base's new one
    if problems:
        raise ConfigError(path, problems)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(path, [f"extends: expected the path of a base config, got {base!r}"])
    return _merged(read_config_file((path.parent / base).resolve(), (*_chain, path)), data)


def set_dotted(data: dict, dotted: str, value) -> None:
    """Set ``value`` at the dotted key ``dotted`` of a config mapping (``train.lr``), making the mappings on the way."""
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read and validate a YAML experiment config (its ``extends:`` chain applied);
    ``overrides`` (dotted keys) are merged on top."""
    path = Path(path)
    data = read_config_file(path)
    for dotted, value in (overrides or {}).items():
        if dotted in RENAMED_KEYS:
            log.warning("%s is deprecated, read as %s", dotted, RENAMED_KEYS[dotted])
            dotted = RENAMED_KEYS[dotted]
        set_dotted(data, dotted, value)
    return parse_config(data, base=path.parent, source=path)
