"""Pretraining configuration: one flat namespace of keys, from a YAML preset plus command-line overrides.

Every key can be set in the YAML file and overridden on the command line (`--hidden_size 64`). Model
keys are the `AstroPTConfig` constructor arguments; image-processor keys are the `AstroPTImageProcessor`
ones; the rest are training keys (the `PretrainArguments` fields). Unknown keys and bad values raise
`ConfigError` naming the key, the expected and the actual value, before anything is loaded or trained.

With no `--config` the defaults are the demo run (`scripts/configs/demo.yaml` spells the same values out).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..configuration_astropt import AstroPTConfig
from ..image_processing_astropt import AstroPTImageProcessor


class ConfigError(ValueError):
    """A pretraining configuration problem: unknown key, bad value or impossible combination."""


# The demo model: small enough to learn something visible in a few minutes on two CPU cores.
# Input: an asinh stretch of the fluxes, then each image standardised as a whole (not upstream's per-patch).
# scripts/compare_normalisations.py measured this on held-out galaxies (README, "Choosing the input
# normalisation"): the only choice whose probes beat the random-init model on all five targets, with the
# second-best mean R². Per-patch standardisation turns the mostly-sky patches of 32px stamps into unit-variance
# noise that no model can predict (the loss floors early) and lost colour (g-r R² 0.66 vs 0.88).
DEMO_MODEL: dict[str, Any] = {
    "image_size": 32,
    "patch_size": 4,
    "num_channels": 3,
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "patch_norm": "per_image",
}
# asinh softening 0.02 nanomaggies: ~3 sigma of the synthetic r-band sky noise (set it for your data's units)
DEMO_PROCESSOR: dict[str, Any] = {"stretch": "asinh", "asinh_scale": 0.02}

PROCESSOR_KEYS = ("resize_mode", "stretch", "asinh_scale", "do_rescale", "nan_fill_value")
MIXED_PRECISION_CHOICES = ("auto", "no", "bf16", "fp16")
REPORT_TO_CHOICES = ("none", "tensorboard", "wandb", "all")


def _field(default, help: str, choices: tuple | None = None, minimum: float | None = None, **kwargs):
    metadata = {"help": help, "choices": choices, "minimum": minimum}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


@dataclasses.dataclass
class PretrainArguments:
    """All settings of a pretraining run except the model shape (`model`, a dict of `AstroPTConfig` fields)
    and image-processor settings (`processor`, a dict of `AstroPTImageProcessor` fields)."""

    # --- run --------------------------------------------------------------------------------------
    output_dir: str = _field("runs/astropt-demo", "folder for checkpoints, the final model, metrics and plots")
    overwrite_output_dir: bool = _field(False, "start afresh even if output_dir holds checkpoints of a run")
    resume_from_checkpoint: str | None = _field(None, "'latest' or a checkpoint folder to resume from")
    seed: int = _field(1337, "seed for the model init and the data order")
    max_steps: int = _field(300, "optimizer steps to train", minimum=1)
    # --- data -------------------------------------------------------------------------------------
    dataset: str = _field("synthetic", "'synthetic', an image folder, parquet/arrow file(s) or a hub dataset id")
    streaming: bool = _field(False, "read the dataset lazily (IterableDataset), for data larger than the disk")
    image_column: str | None = _field(None, "image column (auto-detected when null)")
    id_column: str | None = _field(None, "id column (auto-detected when null)")
    data_cache_dir: str | None = _field(None, "cache for the synthetic set / datasets downloads (null: default)")
    synthetic_num_train: int = _field(3000, "synthetic set: training galaxies", minimum=1)
    synthetic_num_validation: int = _field(256, "synthetic set: validation galaxies", minimum=1)
    synthetic_num_test: int = _field(512, "synthetic set: test galaxies", minimum=0)
    synthetic_image_size: int | None = _field(None, "synthetic stamp size in pixels (null: the model's image_size)")
    synthetic_seed: int = _field(0, "seed of the synthetic set (separate from `seed`, so the cache is reused)")
    num_workers: int = _field(0, "DataLoader worker processes per rank", minimum=0)
    shuffle_buffer_size: int = _field(10_000, "streaming only: size of the shuffle buffer", minimum=1)
    # --- optimisation -----------------------------------------------------------------------------
    batch_size: int = _field(32, "images per micro-batch per process", minimum=1)
    gradient_accumulation_steps: int | None = _field(
        None, "micro-batches per optimizer step (null: from tokens_per_step, else 1)", minimum=1
    )
    tokens_per_step: int | None = _field(
        None, "target tokens (patches) per optimizer step over all processes; sets gradient_accumulation_steps",
        minimum=1,
    )
    learning_rate: float = _field(2e-3, "peak learning rate", minimum=0.0)
    min_lr: float | None = _field(None, "final learning rate of the cosine decay (null: learning_rate / 10)", minimum=0.0)
    warmup_steps: int = _field(30, "linear warmup steps", minimum=0)
    lr_decay_steps: int | None = _field(None, "step at which the cosine reaches min_lr (null: max_steps)", minimum=1)
    weight_decay: float = _field(0.1, "AdamW weight decay, on 2-D weights only", minimum=0.0)
    betas: list = _field([0.9, 0.95], "AdamW betas")
    adam_epsilon: float = _field(1e-8, "AdamW epsilon", minimum=0.0)
    grad_clip: float = _field(1.0, "clip the global gradient norm to this (0: no clipping)", minimum=0.0)
    mixed_precision: str = _field(
        "auto", "'auto' (bf16 on GPUs, fp32 on CPUs), 'no', 'bf16' or 'fp16'", choices=MIXED_PRECISION_CHOICES
    )
    compile: bool = _field(False, "torch.compile the model")
    gradient_checkpointing: bool = _field(False, "recompute activations in the backward pass to save memory")
    # --- evaluation, logging, saving --------------------------------------------------------------
    eval_steps: int = _field(50, "evaluate the validation loss every this many steps (and at the end)", minimum=1)
    eval_batches: int = _field(8, "batches in the fixed validation subset", minimum=1)
    eval_batch_size: int | None = _field(None, "validation batch size (null: batch_size)", minimum=1)
    num_plot_images: int = _field(8, "galaxies in each evaluation's prediction grid (0: no grid)", minimum=0)
    log_steps: int = _field(10, "log the training loss every this many steps", minimum=1)
    save_steps: int = _field(100, "save a resumable checkpoint every this many steps (0: only at the end)", minimum=0)
    save_total_limit: int = _field(2, "keep this many most recent checkpoints", minimum=1)
    report_to: str = _field("none", "experiment tracker: none, tensorboard, wandb or all", choices=REPORT_TO_CHOICES)
    run_name: str = _field("astropt-pretrain", "tracker project / run name")
    record_sample_ids: bool = _field(False, "debug: write the ids each rank trained on to output_dir/debug/")
    # --- hub --------------------------------------------------------------------------------------
    push_to_hub: bool = _field(False, "upload the final model folder to the hub")
    hub_model_id: str | None = _field(None, "hub repository id, e.g. 'me/astropt-5m'")
    hub_private: bool = _field(False, "create the hub repository as private")
    # --- model and processor (flat keys in YAML and on the command line) ---------------------------
    model: dict = dataclasses.field(default_factory=lambda: dict(DEMO_MODEL))
    processor: dict = dataclasses.field(default_factory=lambda: dict(DEMO_PROCESSOR))

    # --- derived values -------------------------------------------------------------------------------
    def model_config(self) -> AstroPTConfig:
        """The `AstroPTConfig` this run trains."""
        return AstroPTConfig(**self.model)

    def image_processor(self) -> AstroPTImageProcessor:
        """The image processor matching the model (size and bands from the model config)."""
        config = self.model_config()
        return AstroPTImageProcessor(image_size=config.image_size, num_channels=config.num_channels, **self.processor)

    def resolved_min_lr(self) -> float:
        return self.learning_rate / 10 if self.min_lr is None else self.min_lr

    def resolved_lr_decay_steps(self) -> int:
        return self.max_steps if self.lr_decay_steps is None else self.lr_decay_steps

    def resolved_eval_batch_size(self) -> int:
        return self.batch_size if self.eval_batch_size is None else self.eval_batch_size

    def resolved_accumulation(self, num_processes: int) -> int:
        """Micro-batches per optimizer step for this many processes."""
        if self.gradient_accumulation_steps is not None:
            return self.gradient_accumulation_steps
        if self.tokens_per_step is None:
            return 1
        tokens_per_micro_batch = self.batch_size * self.model_config().num_patches * num_processes
        return max(1, round(self.tokens_per_step / tokens_per_micro_batch))

    def to_flat_dict(self) -> dict[str, Any]:
        """Every key as it would appear in a YAML preset (model and processor keys flattened)."""
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("model", "processor")}
        flat.update(self.model)
        flat.update(self.processor)
        return flat


# ----------------------------------------------------------------------------------------------------
# Key registry: every accepted key with its type, for YAML values and command-line strings alike.
# ----------------------------------------------------------------------------------------------------

_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(PretrainArguments) if f.name not in ("model", "processor")}


def _signature_types(callable_) -> dict[str, Any]:
    hints = typing.get_type_hints(callable_)
    names = [p for p in inspect.signature(callable_).parameters if p not in ("self", "kwargs")]
    return {name: hints.get(name, Any) for name in names}


_MODEL_TYPES = _signature_types(AstroPTConfig.__init__)
_PROCESSOR_TYPES = {k: v for k, v in _signature_types(AstroPTImageProcessor.__init__).items() if k in PROCESSOR_KEYS}
_TRAIN_TYPES = typing.get_type_hints(PretrainArguments)


def known_keys() -> dict[str, str]:
    """Every configuration key -> its group ('train', 'model' or 'processor')."""
    keys = {name: "train" for name in _TRAIN_FIELDS}
    keys.update({name: "model" for name in _MODEL_TYPES})
    keys.update({name: "processor" for name in _PROCESSOR_TYPES})
    return keys


def _key_type(key: str):
    group = known_keys()[key]
    return {"train": _TRAIN_TYPES, "model": _MODEL_TYPES, "processor": _PROCESSOR_TYPES}[group][key]


def _type_args(annotation) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


_NULL_STRINGS = ("null", "none", "~")
_TRUE_STRINGS = ("true", "yes", "1", "on")
_FALSE_STRINGS = ("false", "no", "0", "off")


def _coerce_one(value, kind):
    """Convert `value` (YAML scalar or command-line string) to `kind`; raise ValueError when it is not one."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE_STRINGS + _FALSE_STRINGS:
            return value.lower() in _TRUE_STRINGS
        raise ValueError("expected true or false")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, int):
            return value
        try:
            number = float(value) if isinstance(value, (str, float)) else math.nan  # accepts "1e4", 2000.0
        except ValueError:
            raise ValueError("expected an integer") from None
        if not math.isfinite(number) or number != int(number):
            raise ValueError("expected an integer")
        return int(number)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            number = float(value)  # YAML reads 3e-4 as a string: accept it here
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError("expected a string")
    if kind is list:  # betas: two numbers, from a YAML list, "0.9,0.95" or "0.9 0.95"
        items = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError("expected a list of numbers")
        return [_coerce_one(item, float) for item in items]
    return value


def coerce_value(key: str, value):
    """The value of `key` converted to its declared type; `ConfigError` naming key, expectation and value."""
    kinds = _type_args(_key_type(key))
    # "none" is a real value of some string keys (stretch: none, report_to: none); null always means null
    null_strings = _NULL_STRINGS if str not in kinds else ("null", "~")
    if value is None or (isinstance(value, str) and value.lower() in null_strings):
        if type(None) in kinds:
            return None
        raise ConfigError(f"config key {key!r} may not be null")
    errors = []
    # Try int before str so that `embedding_layer: 3` stays a block index and "3" on the command line too.
    for kind in sorted((k for k in kinds if k is not type(None)), key=lambda k: k is str):
        try:
            return _coerce_one(value, kind)
        except (TypeError, ValueError) as err:
            errors.append(str(err))
    expected = " or ".join(getattr(k, "__name__", str(k)) for k in kinds if k is not type(None))
    raise ConfigError(f"config key {key!r}: got {value!r}; expected {expected} ({'; '.join(errors)})")


# ----------------------------------------------------------------------------------------------------
# Building and validating the arguments
# ----------------------------------------------------------------------------------------------------


def build_pretrain_args(values: dict[str, Any] | None = None, source: str = "overrides") -> PretrainArguments:
    """`PretrainArguments` from flat `{key: value}` settings on top of the demo defaults, validated.

    Args:
        values: any configuration keys (train, model or processor), values typed or as strings.
        source: where the values came from, for error messages (a file name, "command line").
    """
    args = PretrainArguments()
    apply_settings(args, values or {}, source)
    validate_pretrain_args(args)
    return args


def apply_settings(args: PretrainArguments, values: dict[str, Any], source: str) -> None:
    """Set flat `{key: value}` settings on `args` (in place), converting and checking each key."""
    keys = known_keys()
    unknown = sorted(k for k in values if k not in keys)
    if unknown:
        raise ConfigError(
            f"{source}: unknown config key(s) {unknown}. Known keys: {', '.join(sorted(keys))}"
        )
    for key, raw in values.items():
        if isinstance(raw, dict):
            raise ConfigError(f"{source}: config key {key!r} holds a mapping; keys are flat (e.g. hidden_size: 64)")
        try:
            value = coerce_value(key, raw)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        group = keys[key]
        if group == "model":
            args.model[key] = value
        elif group == "processor":
            args.processor[key] = value
        else:
            setattr(args, key, value)


def validate_pretrain_args(args: PretrainArguments) -> None:
    """Check ranges, choices and combinations; build the model config and processor to let them check theirs."""
    for name, field in _TRAIN_FIELDS.items():
        value = getattr(args, name)
        choices, minimum = field.metadata.get("choices"), field.metadata.get("minimum")
        if choices is not None and value not in choices:
            raise ConfigError(f"config key {name!r}: got {value!r}; expected one of {list(choices)}")
        if minimum is not None and value is not None and value < minimum:
            raise ConfigError(f"config key {name!r}: got {value!r}; expected a value >= {minimum}")
    if len(args.betas) != 2 or not all(0.0 <= b < 1.0 for b in args.betas):
        raise ConfigError(f"config key 'betas': got {args.betas!r}; expected two numbers in [0, 1)")
    if args.resolved_min_lr() > args.learning_rate:
        raise ConfigError(
            f"config key 'min_lr': got {args.min_lr!r}; expected at most learning_rate={args.learning_rate}"
        )
    if args.gradient_accumulation_steps is not None and args.tokens_per_step is not None:
        raise ConfigError(
            "config keys 'gradient_accumulation_steps' and 'tokens_per_step' are both set "
            f"({args.gradient_accumulation_steps} and {args.tokens_per_step}); set one, e.g. "
            "--tokens_per_step null to choose the accumulation yourself"
        )
    if args.push_to_hub and not args.hub_model_id:
        raise ConfigError("config key 'hub_model_id' is required with push_to_hub (e.g. --hub_model_id me/astropt)")
    if not str(args.output_dir).strip():
        raise ConfigError("config key 'output_dir' is empty")
    try:
        config = args.model_config()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model keys {args.model}: {err}") from None
    try:
        args.image_processor()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"image processor keys {args.processor}: {err}") from None
    if args.synthetic_image_size is not None and args.synthetic_image_size < config.image_size:
        raise ConfigError(
            f"config key 'synthetic_image_size': got {args.synthetic_image_size}; expected at least the model's "
            f"image_size={config.image_size}"
        )


# ----------------------------------------------------------------------------------------------------
# YAML and command line
# ----------------------------------------------------------------------------------------------------


def load_yaml_config(path: str | os.PathLike) -> dict[str, Any]:
    """Flat `{key: value}` settings of a YAML preset (keys are not checked here)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values, not {type(values).__name__}")
    return values


class _RaisingParser(argparse.ArgumentParser):
    """argparse that raises `ConfigError` instead of exiting, so library callers can catch it."""

    def error(self, message: str):
        raise ConfigError(f"command line: {message}")


def _command_line_parser() -> argparse.ArgumentParser:
    parser = _RaisingParser(
        prog="pretrain.py",
        description="Pretrain astroPT (next-patch regression). Every config key can be given as --key value.",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="YAML preset (default: the demo settings)")
    groups = {
        "train": parser.add_argument_group("training keys"),
        "model": parser.add_argument_group("model keys (AstroPTConfig)"),
        "processor": parser.add_argument_group("image processor keys (AstroPTImageProcessor)"),
    }
    for key, group in known_keys().items():
        kinds = _type_args(_key_type(key))
        help_text = _TRAIN_FIELDS[key].metadata["help"] if key in _TRAIN_FIELDS else None
        if bool in kinds:  # `--push_to_hub` alone means true; `--push_to_hub false` works too
            groups[group].add_argument(f"--{key}", nargs="?", const="true", metavar="BOOL", help=help_text)
        elif list in kinds:
            groups[group].add_argument(f"--{key}", nargs="+", metavar="X", help=help_text)
        else:
            groups[group].add_argument(f"--{key}", metavar="VALUE", help=help_text)
    return parser


def parse_pretrain_args(argv: list[str] | None = None) -> PretrainArguments:
    """Arguments from a command line: `--config preset.yaml` (optional) then `--key value` overrides.

    Raises `ConfigError` for unknown keys, bad values or a missing/invalid config file.
    """
    parser = _command_line_parser()
    if argv is None:
        import sys

        argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        raise SystemExit(0)
    namespace = parser.parse_args(argv)
    overrides = vars(namespace)
    config_path = overrides.pop("config", None)
    args = PretrainArguments()
    if config_path is not None:
        apply_settings(args, load_yaml_config(config_path), f"config file {config_path!r}")
    apply_settings(args, overrides, "command line")
    validate_pretrain_args(args)
    return args


__all__ = [
    "DEMO_MODEL",
    "DEMO_PROCESSOR",
    "ConfigError",
    "PretrainArguments",
    "build_pretrain_args",
    "known_keys",
    "load_yaml_config",
    "parse_pretrain_args",
    "validate_pretrain_args",
]
