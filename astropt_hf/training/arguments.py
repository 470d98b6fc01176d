"""Pretraining configuration: one flat namespace of keys, from a YAML preset plus command-line overrides.

Every key can be set in the YAML file and overridden on the command line (`--hidden_size 64`). Model
keys are the `AstroPTConfig` constructor arguments; image-processor keys are the `AstroPTImageProcessor`
ones; the rest are training keys (the `PretrainArguments` fields, dataset keys from `DataArguments`
included). All three are parsed by one `HfArgumentParser` (`astropt_hf.command_line.ArgumentParser`):
the preset's values become the parser's defaults, the command line goes on top. Unknown keys and bad
values raise `ConfigError` naming the key, the expected and the actual value, before anything is loaded
or trained.

With no `--config` the defaults are the demo run (`scripts/configs/demo.yaml` spells the same values out).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from ..command_line import NOT_A_FLAG, ArgumentParser, is_literal, option
from ..configuration_astropt import AstroPTConfig
from ..data.arguments import DataArguments
from ..image_processing_astropt import AstroPTImageProcessor


class ConfigError(ValueError):
    """A pretraining configuration problem: unknown key, bad value or impossible combination."""


# The demo model: small enough to learn something visible in a few minutes on two CPU cores.
# asinh, then per-image standardisation: per-patch makes the mostly-sky patches of small stamps unpredictable noise.
DEMO_MODEL: dict[str, Any] = {
    "image_size": 32,
    "patch_size": 4,
    "num_channels": 3,
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "patch_norm": "per_image",
}
# asinh softening 0.02 nanomaggies: ~1.5 sigma of the synthetic r-band sky noise per pixel, near the ~1 sigma
# softening of Lupton et al. (1999) asinh magnitudes (set it for your data's units)
DEMO_PROCESSOR: dict[str, Any] = {"stretch": "asinh", "asinh_scale": 0.02}

SPECTRUM_KEYS = ("spectrum_normalisation",)
PROCESSOR_KEYS = ("resize_mode", "stretch", "asinh_scale", "do_rescale", "nan_fill_value")


@dataclasses.dataclass
class PretrainArguments(DataArguments):
    """All settings of a pretraining run: the dataset keys (`DataArguments`), the training keys below, the
    model shape (`model`, a dict of `AstroPTConfig` fields) and image-processor settings (`processor`, a dict
    of `AstroPTImageProcessor` fields). `model` and `processor` hold the keys that were set, on top of the
    demo's; the config and processor classes supply the rest."""

    _argument_group_name = "training keys"

    # --- run --------------------------------------------------------------------------------------
    output_dir: str = option("runs/astropt-demo", "folder for checkpoints, the final model, metrics and plots")
    overwrite_output_dir: bool = option(False, "start afresh even if output_dir holds checkpoints of a run")
    resume_from_checkpoint: str | None = option(None, "'latest' or a checkpoint folder to resume from")
    seed: int = option(1337, "seed for the model init and the data order")
    max_steps: int = option(300, "optimizer steps to train", minimum=1)
    # --- data loading -----------------------------------------------------------------------------
    num_workers: int = option(0, "DataLoader worker processes per rank", minimum=0)
    shuffle_buffer_size: int = option(10_000, "streaming only: size of the shuffle buffer", minimum=1)
    # --- optimisation -----------------------------------------------------------------------------
    batch_size: int = option(32, "images per micro-batch per process", minimum=1)
    gradient_accumulation_steps: int | None = option(
        None, "micro-batches per optimizer step (null: from tokens_per_step, else 1)", minimum=1
    )
    tokens_per_step: int | None = option(
        None, "target tokens (patches) per optimizer step over all processes; sets gradient_accumulation_steps",
        minimum=1,
    )
    learning_rate: float = option(2e-3, "peak learning rate", minimum=0.0)
    min_lr: float | None = option(None, "final learning rate of the cosine decay (null: learning_rate / 10)",
                                  minimum=0.0)
    warmup_steps: int = option(30, "linear warmup steps", minimum=0)
    lr_decay_steps: int | None = option(None, "step at which the cosine reaches min_lr (null: max_steps)", minimum=1)
    weight_decay: float = option(0.1, "AdamW weight decay, on 2-D weights only", minimum=0.0)
    betas: list[float] = option([0.9, 0.95], "AdamW betas")
    adam_epsilon: float = option(1e-8, "AdamW epsilon", minimum=0.0)
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: no clipping)", minimum=0.0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = option(
        "auto", "'auto' (bf16 on GPUs, fp32 on CPUs), 'no', 'bf16' or 'fp16'"
    )
    compile: bool = option(False, "torch.compile the model")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass to save memory")
    # --- evaluation, logging, saving --------------------------------------------------------------
    eval_steps: int = option(50, "evaluate the validation loss every this many steps (and at the end)", minimum=1)
    eval_batches: int = option(8, "batches in the fixed validation subset", minimum=1)
    eval_batch_size: int | None = option(None, "validation batch size (null: batch_size)", minimum=1)
    num_plot_images: int = option(8, "galaxies in each evaluation's prediction grid (0: no grid)", minimum=0)
    log_steps: int = option(10, "log the training loss every this many steps", minimum=1)
    save_steps: int = option(100, "save a resumable checkpoint every this many steps (0: only at the end)",
                             minimum=0)
    save_schedule: Literal["regular", "log"] = option(
        "regular", "'regular': every save_steps; 'log': also at steps 1, 2, 4, ... below save_steps, never pruned, "
        "every checkpoint with a loadable model/ folder"
    )
    save_total_limit: int = option(2, "keep this many most recent checkpoints (log-spaced ones are all kept)", minimum=1)
    save_model_in_checkpoints: bool = option(
        False, "write a loadable model/ folder (save_pretrained) into every checkpoint (always with save_schedule log)"
    )
    report_to: Literal["none", "tensorboard", "wandb", "all"] = option(
        "none", "experiment tracker: none, tensorboard, wandb or all"
    )
    run_name: str = option("astropt-pretrain", "tracker project / run name")
    record_sample_ids: bool = option(False, "debug: write the ids each rank trained on to output_dir/debug/")
    # --- hub --------------------------------------------------------------------------------------
    push_to_hub: bool = option(False, "upload the final model folder to the hub")
    hub_model_id: str | None = option(None, "hub repository id, e.g. 'me/astropt-5m'")
    hub_private: bool = option(False, "create the hub repository as private")
    # --- spectra (models with modalities [images, spectra]) ------------------------------------------
    spectrum_normalisation: Literal["median_abs", "none"] = option(
        "median_abs", "spectra: each divided by the median |flux| of its good samples ('median_abs'), or flux as "
        "given ('none', as upstream astroPT trains)"
    )
    # --- model and processor (flat keys in YAML and on the command line) ---------------------------
    model: dict = dataclasses.field(default_factory=lambda: dict(DEMO_MODEL), metadata=NOT_A_FLAG)
    processor: dict = dataclasses.field(default_factory=lambda: dict(DEMO_PROCESSOR), metadata=NOT_A_FLAG)

    # --- derived values -------------------------------------------------------------------------------
    def model_config(self) -> AstroPTConfig:
        """The `AstroPTConfig` this run trains."""
        return AstroPTConfig(**self.model)

    def image_processor(self) -> AstroPTImageProcessor:
        """The image processor matching the model (size and bands from the model config)."""
        config = self.model_config()
        return AstroPTImageProcessor(image_size=config.image_size, num_channels=config.num_channels, **self.processor)

    def spectrum_feature_extractor(self):
        """The spectrum feature extractor of a model with spectra (None for an images-only model)."""
        from ..feature_extraction_astropt import AstroPTSpectrumFeatureExtractor

        if not self.model_config().has_spectra:
            return None
        return AstroPTSpectrumFeatureExtractor(normalisation=self.spectrum_normalisation)

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

    def dataset_spec(self, split: str) -> dict[str, Any]:
        """The `astropt_hf.data.arguments.open_dataset` spec of one split of the training data."""
        return self.spec(split, image_size=self.model_config().image_size)

    def to_flat_dict(self) -> dict[str, Any]:
        """Every key as it would appear in a YAML preset (model and processor keys flattened). The spectrum keys
        appear only for a model with spectra, so the recorded settings of images-only runs are as before."""
        spectra = self.model_config().has_spectra
        flat = {f.name: getattr(self, f.name) for f in _TRAIN_FIELDS if spectra or f.name not in SPECTRUM_KEYS}
        flat.update(self.model)
        flat.update(self.processor)
        return flat


# ----------------------------------------------------------------------------------------------------
# Model and processor keys: dataclasses made from the constructors, so that a new config field is a new key
# ----------------------------------------------------------------------------------------------------

_TRAIN_FIELDS = tuple(f for f in dataclasses.fields(PretrainArguments) if f.metadata.get("flag", True))
# A model or processor key that neither the preset nor the command line sets stays out of `model` /
# `processor`, so the config class applies its own default (or the demo's).
_UNSET = object()


def _one_parser_type(hint):
    """The parser takes one type per key (or Optional of one): a constructor argument typed as several
    sequence types (`list[str] | tuple[str, ...]`) becomes a list of the first one's items."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return hint
    members = [m for m in typing.get_args(hint) if m is not type(None)]
    if len(members) < 2 or not all(typing.get_origin(m) in (list, tuple) for m in members):
        return hint
    items = list[typing.get_args(members[0])[0]] if typing.get_args(members[0]) else list
    return items | None if len(members) < len(typing.get_args(hint)) else items


def _is_list(hint) -> bool:
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(m is list or typing.get_origin(m) is list for m in members)


def _constructor_keys(cls, name: str, group: str, only: Sequence[str] | None = None):
    hints = typing.get_type_hints(cls.__init__)
    keys = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
    fields = []
    for key in (k for k in keys if only is None or k in only):
        hint = _one_parser_type(hints.get(key, Any))
        # the parser reads a list key's default only from a factory (a plain default would become None)
        unset = dataclasses.field(default_factory=lambda: _UNSET) if _is_list(hint) else dataclasses.field(default=_UNSET)
        fields.append((key, hint, unset))
    return dataclasses.make_dataclass(name, fields, namespace={"_argument_group_name": group})


ModelKeys = _constructor_keys(AstroPTConfig, "ModelKeys", "model keys (AstroPTConfig)")
ProcessorKeys = _constructor_keys(AstroPTImageProcessor, "ProcessorKeys", "image processor keys (AstroPTImageProcessor)",
                                  only=PROCESSOR_KEYS)


def known_keys() -> dict[str, str]:
    """Every configuration key -> its group ('train', 'model' or 'processor')."""
    keys = {f.name: "train" for f in _TRAIN_FIELDS}
    keys.update({f.name: "model" for f in dataclasses.fields(ModelKeys)})
    keys.update({f.name: "processor" for f in dataclasses.fields(ProcessorKeys)})
    return keys


# ----------------------------------------------------------------------------------------------------
# Parsing and validating the arguments
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PresetFile:
    """The flag read first: the preset whose values become the defaults of every other key."""

    config: str | None = option(None, "YAML preset (default: the demo settings)")


class _PretrainParser(ArgumentParser):
    """The parser of every pretraining key; raises `ConfigError` instead of exiting, so library callers
    (the sweep, the normalisation study) can catch it."""

    def __init__(self, dataclass_types=(PretrainArguments, ModelKeys, ProcessorKeys), **kwargs):
        super().__init__(
            dataclass_types,
            prog="pretrain.py",
            usage="pretrain.py [-h] [--config FILE] [--KEY VALUE ...]",
            description="Pretrain astroPT (next-patch regression). Every config key can be given as --key value.",
            **kwargs,
        )
        if PresetFile not in self.dataclass_types:  # listed in --help, read beforehand by `parse_pretrain_args`
            self.add_argument("--config", help=dataclasses.fields(PresetFile)[0].metadata["help"])

    def error(self, message: str):
        raise ConfigError(f"command line: {message}")

    def preset_error(self, message: str):
        raise ConfigError(message)

    def arguments(self, argv: Sequence[str], preset: dict[str, Any], source: str) -> PretrainArguments:
        """`PretrainArguments` from `preset` (flat keys, as parser defaults) with `argv` on top."""
        self.set_defaults(**self.values_from(preset, source))
        train, model, processor, *_ = self.parse(list(argv))
        for keys, target in ((model, train.model), (processor, train.processor)):
            given = {f.name: getattr(keys, f.name) for f in dataclasses.fields(keys)}
            target.update({key: value for key, value in given.items() if value is not _UNSET})
        validate_pretrain_args(train)
        return train


def build_pretrain_args(values: dict[str, Any] | None = None, source: str = "overrides") -> PretrainArguments:
    """`PretrainArguments` from flat `{key: value}` settings on top of the demo defaults, validated.

    Args:
        values: any configuration keys (train, model or processor), values typed or as strings.
        source: where the values came from, for error messages (a file name, "command line").
    """
    return _PretrainParser().arguments([], values or {}, source)


def parse_pretrain_args(argv: list[str] | None = None) -> PretrainArguments:
    """Arguments from a command line: `--config preset.yaml` (optional) then `--key value` overrides.

    Raises `ConfigError` for unknown keys, bad values or a missing/invalid config file.
    """
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    config_path = _PretrainParser((PresetFile,), add_help=False).parse_known(argv)[0].config
    preset = load_yaml_config(config_path) if config_path is not None else {}
    return _PretrainParser().arguments(argv, preset, f"config file {config_path!r}")


def validate_pretrain_args(args: PretrainArguments) -> None:
    """Check ranges, choices and combinations; build the model config and processor to let them check theirs."""
    hints = typing.get_type_hints(PretrainArguments)
    for field in _TRAIN_FIELDS:
        value, minimum = getattr(args, field.name), field.metadata.get("minimum")
        choices = typing.get_args(hints[field.name]) if is_literal(hints[field.name]) else None
        if choices is not None and value not in choices:
            raise ConfigError(f"config key {field.name!r}: got {value!r}; expected one of {list(choices)}")
        if minimum is not None and value is not None and value < minimum:
            raise ConfigError(f"config key {field.name!r}: got {value!r}; expected a value >= {minimum}")
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


__all__ = [
    "DEMO_MODEL",
    "DEMO_PROCESSOR",
    "ConfigError",
    "ModelKeys",
    "PretrainArguments",
    "ProcessorKeys",
    "build_pretrain_args",
    "known_keys",
    "load_yaml_config",
    "parse_pretrain_args",
    "validate_pretrain_args",
]
