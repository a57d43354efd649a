"""Experiment configuration: the schema and its loader (no torch, MONAI or SimpleITK)."""

from fedqc.config.load import load_config, parse_config
from fedqc.config.schema import (
                                 ARMS,
                                 CRITERIA,
                                 ENGINES,
                                 GRANULARITIES,
                                 CalibrationConfig,
                                 DataConfig,
                                 DefenceConfig,
                                 ExperimentConfig,
                                 ModelSpec,
                                 QCConfig,
                                 StrategyConfig,
                                 TrainConfig,
                                 qc_variant,
)
from fedqc.errors import ConfigError

__all__ = ["ARMS", "CalibrationConfig", "CRITERIA", "ENGINES", "GRANULARITIES", "ConfigError", "DataConfig",
           "DefenceConfig", "ExperimentConfig",
           "ModelSpec", "QCConfig", "StrategyConfig",
           "TrainConfig", "load_config", "parse_config", "qc_variant"]
