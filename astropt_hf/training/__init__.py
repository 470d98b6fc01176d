"""Pretraining astroPT with Accelerate: configuration, schedule, optimizer, atomic checkpoints and the loop.

Entry points: `parse_pretrain_args(argv)` / `build_pretrain_args(dict)` -> `PretrainArguments`, and
`run_pretraining(args)` -> summary dict. `scripts/pretrain.py` is a thin command line over these.
"""

from .arguments import (
    DEMO_MODEL,
    DEMO_PROCESSOR,
    ConfigError,
    PretrainArguments,
    build_pretrain_args,
    known_keys,
    load_yaml_config,
    parse_pretrain_args,
)
from .checkpointing import find_latest_checkpoint, list_checkpoints
from .loop import run_pretraining
from .optim import build_optimizer, parameter_groups
from .precision import resolve_mixed_precision
from .schedule import build_scheduler, learning_rate_at

__all__ = [
    "DEMO_MODEL",
    "DEMO_PROCESSOR",
    "ConfigError",
    "PretrainArguments",
    "build_optimizer",
    "build_pretrain_args",
    "build_scheduler",
    "find_latest_checkpoint",
    "known_keys",
    "learning_rate_at",
    "list_checkpoints",
    "load_yaml_config",
    "parameter_groups",
    "parse_pretrain_args",
    "resolve_mixed_precision",
    "run_pretraining",
]
