"""Validation loss on the fixed subset, and the evaluation grid: inputs above next-patch predictions, or
(masked runs) masked inputs, reconstructions and truths."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..plotting import plot_galaxy_grid
from .collectives import any_process


def dummy_pixel_values(config, device) -> torch.Tensor:
    """One blank image: stands in for an empty batch so that every process still runs a forward pass."""
    size = config.image_size
    return torch.zeros(1, config.num_channels, size, size, device=device)


# Masked runs draw their evaluation masks from this seed, so every evaluation masks the same patches and
# validation losses (and grids) are comparable from one evaluation to the next.
EVALUATION_MASK_SEED = 0


def _is_masked(model) -> bool:
    return getattr(model.config, "objective", "next_patch") == "masked_patch"


def _evaluation_masks(unwrapped, pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Masks for a batch, drawn on the CPU from `generator` (the same on every device)."""
    return unwrapped.random_patch_mask(pixel_values.shape[0], generator=generator).to(pixel_values.device)


@torch.no_grad()
def evaluate_loss(accelerator, model, batches: Iterable[dict], config) -> tuple[float, int, int]:
    """Mean validation loss over all images of all processes' batches.

    Returns (loss, images, skipped). Processes with fewer batches (or empty ones, all items skipped) run
    a weight-zero forward on a blank image, so every process runs the same number of forward passes.
    Masked-patch runs use masks from a fixed seed (`EVALUATION_MASK_SEED`).
    """
    was_training = model.training
    model.eval()
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    generator = torch.Generator().manual_seed(EVALUATION_MASK_SEED) if _is_masked(unwrapped) else None
    totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss x images, images, skipped
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        if not any_process(accelerator, batch is not None):
            break
        count = 0 if batch is None else int(batch["pixel_values"].shape[0])
        if batch is not None:
            totals[2] += batch["num_skipped"]
        pixel_values = (
            batch["pixel_values"].to(accelerator.device, non_blocking=True)
            if count
            else dummy_pixel_values(config, accelerator.device)
        )
        inputs = {"pixel_values": pixel_values}
        if generator is not None:
            inputs["bool_masked_pos"] = _evaluation_masks(unwrapped, pixel_values, generator)
        with accelerator.autocast():
            loss = model(**inputs).loss
        totals[0] += loss.double() * count
        totals[1] += count
    totals = accelerator.reduce(totals, reduction="sum") if accelerator.num_processes > 1 else totals
    model.train(was_training)
    images = int(totals[1].item())
    loss = float(totals[0].item() / images) if images else float("nan")
    return loss, images, int(totals[2].item())


@dataclass
class PredictionPanels:
    """Rows of images (N, C, H, W), all in the model's normalised patch space, for the evaluation grid.

    `rows` holds (label, images, grey) per row: `grey` (N, H, W) bool marks pixels drawn flat grey (the
    masked patches of a masked run's input), or is None.
    """

    rows: list[tuple[str, torch.Tensor, torch.Tensor | None]]


@torch.no_grad()
def predicted_images(accelerator, model, pixel_values: torch.Tensor) -> PredictionPanels:
    """The evaluation grid's rows: input and next-patch prediction, or (masked runs) the input with the
    masked patches greyed, its reconstruction and the truth.

    Inputs and predictions go back through the same un-ordering and un-patchifying, so they are directly
    comparable. Next-patch: the first patch has no prediction (nothing comes before it) and is shown as
    the input's own first patch. Masked: the reconstruction keeps the visible patches and fills the masked
    ones; with `norm_pix_loss` the model predicts standardised patches, which are put back on the true
    patch's mean and spread for display only.
    """
    was_training = model.training
    model.eval()
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    pixel_values = pixel_values.to(accelerator.device)
    masked = _is_masked(unwrapped)
    inputs = {"pixel_values": pixel_values}
    if masked:
        generator = torch.Generator().manual_seed(EVALUATION_MASK_SEED)
        inputs["bool_masked_pos"] = _evaluation_masks(unwrapped, pixel_values, generator)
    with accelerator.autocast():
        output = model(**inputs)
    model.train(was_training)
    targets = output.target_patches.float()
    to_image = unwrapped.patches_to_image
    if not masked:
        predictions = torch.cat([targets[:, :1], output.predictions[:, :-1].float()], dim=1)
        return PredictionPanels([("input", to_image(targets).cpu(), None),
                                 ("predicted", to_image(predictions).cpu(), None)])
    predictions = output.predictions.float()
    if unwrapped.config.norm_pix_loss:
        mean, var = targets.mean(-1, keepdim=True), targets.var(-1, keepdim=True)
        predictions = predictions * (var + 1e-6).sqrt() + mean
    mask = output.mask[..., None]
    filled = torch.where(mask, predictions, targets)
    grey = to_image(mask.expand_as(targets).float())[:, 0] > 0.5  # (N, H, W) pixels of masked patches
    return PredictionPanels([
        ("masked input", to_image(targets).cpu(), grey.cpu()),
        ("reconstructed", to_image(filled).cpu(), None),
        ("truth", to_image(targets).cpu(), None),
    ])


def input_description(processor, config) -> str:
    """What the grid's pixel values are: the processor's stretch, then the model's patch standardisation
    (the space the model reads and predicts in)."""
    stretch = getattr(processor, "stretch", "none")
    scale = getattr(processor, "asinh_scale", None)
    steps = [f"asinh(x / {scale:g})" if stretch == "asinh" else "fluxes as given"]
    norm = getattr(config, "patch_norm", "none")
    if norm == "per_image":
        steps.append("standardised per image")
    elif norm == "per_patch":
        steps.append("standardised per patch")
    return ", ".join(steps) + " (the model's input)"


def loss_description(config) -> str:
    """The loss curve's y label: which loss, and over which patches the objective counts it."""
    loss = "Huber loss" if config.loss == "huber" else "squared error"
    if getattr(config, "objective", "next_patch") == "masked_patch":
        return f"{loss} of masked patches"
    return f"next-patch {loss}"


def save_prediction_grid(panels: PredictionPanels, path: str | os.PathLike, ids: list, step: int,
                         stretch: str | None = None, title: str | None = None) -> Path:
    """PNG of the panels' rows (inputs on top), one galaxy per column captioned with its full id; the
    prediction row's label carries the step; `stretch` says what the pixel values are."""
    titles = [str(i) for i in ids] if ids else None
    (input_label, inputs, grey), (prediction_label, predictions, _) = panels.rows[:2]
    truths = panels.rows[2][1] if len(panels.rows) > 2 else None
    return plot_galaxy_grid(
        inputs, predictions, path, titles=titles, prediction_label=f"{prediction_label} (step {step})",
        truths=truths, input_label=input_label, stretch=stretch, title=title, input_masks=grey,
    )


__all__ = [
    "PredictionPanels", "dummy_pixel_values", "evaluate_loss", "input_description", "loss_description", "predicted_images",
    "save_prediction_grid",
]
