"""Pieces a pretraining run sets up with: checks before any work (the tracker is installed), the collators
(with their decode limits) and a warning about the data (display images given a flux stretch), the
tracker's flat config, the images of the prediction grids, and the reset that lets another run start in the
same process."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from accelerate.state import AcceleratorState, GradientState

from ..data import DecodeLimits, GalaxyCollator, decode_image
from .arguments import ConfigError, PretrainArguments
from .data_streams import count_items, validation_batches
from .modalities import spectrum_extractor_for

logger = logging.getLogger(__name__)


def tracker_config(args: PretrainArguments) -> dict[str, Any]:
    """Flat scalars only: TensorBoard's hparams accept nothing else."""
    flat = {}
    for key, value in args.to_flat_dict().items():
        flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def first_images(source, collator, count: int) -> dict | None:
    """The first `count` decodable validation images (and their spectra, if the collator reads them), for the
    prediction grids and spectrum panels."""
    if count <= 0:
        return None
    loader = validation_batches(source, collator, num_items=count * 2, batch_size=count * 2)
    for batch in loader:
        if batch["pixel_values"].shape[0]:
            kept = {name: value[:count] for name, value in batch.items() if isinstance(value, torch.Tensor)}
            return {**kept, "ids": batch["ids"][:count]}
    return None


def pretraining_collators(sources, processor, config, max_side_factor: int, warn: bool = False,
                          spectrum_extractor=None) -> list:
    """One `GalaxyCollator` per source: an image of more than `max_side_factor` times the model's side (its
    pixels per band, read from the file's header before anything is decoded) is skipped and counted; a model
    with spectra also gets each source's spectra through `spectrum_extractor`. With `warn`, first
    `warn_if_stretching_display_images` on the last source (the validation split)."""
    limits = DecodeLimits.for_image_size(config.image_size, config.num_channels, max_side_factor)
    if warn:
        warn_if_stretching_display_images(sources[-1], processor, limits)
    return [
        GalaxyCollator(processor, source.image_column, source.id_column, decode_limits=limits,
                       spectrum_extractor=spectrum_extractor_for(source, spectrum_extractor))
        for source in sources
    ]


def warn_if_stretching_display_images(source, processor, limits=None) -> None:
    """Warn when an asinh stretch meant for fluxes (the demo's default) meets 8-bit images, which PNG/JPEG
    cutouts are and which are usually stretched for display already. Looks at the first item only, decoded
    within `limits` (a `DecodeLimits`) as the collator would."""
    if processor.stretch != "asinh" or count_items(source) in (None, 0):
        return
    try:
        image = decode_image(source.dataset[0][source.image_column], source=f"{source.origin} item 0", limits=limits)
    except (ValueError, OSError):
        return  # an undecodable first item is skipped and counted by the collator, as any other
    if image.dtype == np.uint8:
        logger.warning(
            "%s holds 8-bit images (e.g. PNG/JPEG), usually already stretched for display, and this run applies "
            "asinh(x / %g) on top (the demo's setting for fluxes); for display images pass --stretch none",
            source.origin, processor.asinh_scale,
        )


def check_tracker_installed(report_to: str) -> None:
    """Fail before any work if the chosen tracker's package is missing (Accelerate would skip it quietly)."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    needed = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    if report_to in needed and not needed[report_to]():
        raise ConfigError(f"config key 'report_to': {report_to!r} is not installed (pip install {report_to})")


def reset_accelerate_state() -> None:
    """Forget this run's Accelerator settings so that another run can start in the same process
    (e.g. a scaling sweep) with a different precision or accumulation. The process group stays."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def run_banner(trainer) -> str:
    """The lines a run prints when it starts: model shape, data, processes and precision, output folder."""
    config, args = trainer.config, trainer.args
    items = trainer.num_train if trainer.num_train is not None else "streaming"
    return (
        f"astroPT pretraining: {trainer.num_parameters / 1e6:.2f}M parameters, {config.num_hidden_layers} layers x "
        f"{config.hidden_size} wide, {config.num_patches} patches of {config.patch_size}px per "
        f"{config.image_size}px image\n"
        f"  data: {trainer.train_source.origin} ({items} items), validation {trainer.val_source.origin}\n"
        f"  {trainer.world} process(es) on {trainer.accelerator.device}, precision {trainer.mixed_precision}, "
        f"batch {args.batch_size} x accumulation {trainer.accumulation} x {trainer.world} = "
        f"{trainer.tokens_per_step:,} tokens per step, steps {trainer.start_step}->{args.max_steps}\n"
        f"  output: {trainer.output_dir}"
    )


__all__ = [
    "check_tracker_installed",
    "first_images",
    "pretraining_collators",
    "reset_accelerate_state",
    "run_banner",
    "tracker_config",
    "warn_if_stretching_display_images",
]
