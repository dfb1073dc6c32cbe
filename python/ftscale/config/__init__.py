"""Typed configuration: YAML files + dotted ``key=value`` overrides → frozen dataclasses.

``base`` holds the machinery (build, overrides, errors that name the key), ``prep`` and
``train`` the two schemas (``eval``: the tasks and the train config's eval section),
``validate`` the pre-launch checks. Everything is re-exported here.
"""

from ftscale.config.base import apply_overrides, build, load_config, load_yaml, parse_count, to_dict
from ftscale.config.eval import EvalConfig, GuardConfig, SelectConfig, TaskConfig, TasksFile
from ftscale.config.prep import DecontamConfig, DedupConfig, PrepConfig, SourceConfig, TokenizerConfig
from ftscale.config.train import (
    DataConfig, LoggingConfig, LoraConfig, MlflowConfig, ModelConfig, OptimConfig, PeftConfig, SpikeConfig,
    TrainConfig, WandbConfig,
)
from ftscale.config.validate import Validated, check_against_dataset, detect_kind, validate_file

__all__ = [
    "DataConfig", "DecontamConfig", "DedupConfig", "EvalConfig", "GuardConfig", "LoggingConfig", "LoraConfig",
    "MlflowConfig", "ModelConfig", "OptimConfig", "PeftConfig", "PrepConfig", "SelectConfig", "SourceConfig",
    "SpikeConfig", "TaskConfig", "TasksFile", "TokenizerConfig", "TrainConfig", "Validated", "WandbConfig",
    "apply_overrides", "build", "check_against_dataset", "detect_kind", "load_config", "load_yaml", "parse_count",
    "to_dict", "validate_file",
]
