"""Validation loss on the fixed subset, and the picture of inputs beside next-patch predictions."""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from ..plotting import plot_galaxy_grid
from .collectives import any_process


def dummy_pixel_values(config, device) -> torch.Tensor:
    """One blank image: stands in for an empty batch so that every process still runs a forward pass."""
    size = config.image_size
    return torch.zeros(1, config.num_channels, size, size, device=device)


@torch.no_grad()
def evaluate_loss(accelerator, model, batches: Iterable[dict], config) -> tuple[float, int, int]:
    """Mean validation loss over all images of all processes' batches.

    Returns (loss, images, skipped). Processes with fewer batches (or empty ones, all items skipped) run
    a weight-zero forward on a blank image, so every process runs the same number of forward passes.
    """
    was_training = model.training
    model.eval()
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
        with accelerator.autocast():
            loss = model(pixel_values=pixel_values).loss
        totals[0] += loss.double() * count
        totals[1] += count
    totals = accelerator.reduce(totals, reduction="sum") if accelerator.num_processes > 1 else totals
    model.train(was_training)
    images = int(totals[1].item())
    loss = float(totals[0].item() / images) if images else float("nan")
    return loss, images, int(totals[2].item())


@torch.no_grad()
def predicted_images(accelerator, model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, predictions) as images, both in the model's normalised patch space.

    The input sequence and the next-patch predictions go back through the same un-ordering and
    un-patchifying, so they are directly comparable. The first patch has no prediction (nothing comes
    before it): it is shown as the input's own first patch.
    """
    was_training = model.training
    model.eval()
    with accelerator.autocast():
        output = model(pixel_values=pixel_values.to(accelerator.device))
    model.train(was_training)
    targets = output.target_patches.float()
    predictions = torch.cat([targets[:, :1], output.predictions[:, :-1].float()], dim=1)
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    return unwrapped.patches_to_image(targets).cpu(), unwrapped.patches_to_image(predictions).cpu()


def _short(name: str, width: int = 16) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def save_prediction_grid(
    inputs: torch.Tensor, predictions: torch.Tensor, path: str | os.PathLike, ids: list, step: int
) -> None:
    """PNG of input galaxies (top) and their next-patch predictions (below), bands as RGB with an asinh stretch."""
    titles = [_short(str(i)) for i in ids] if ids else None
    plot_galaxy_grid(inputs, predictions, path, titles=titles, prediction_label=f"predicted (step {step})")


__all__ = ["dummy_pixel_values", "evaluate_loss", "predicted_images", "save_prediction_grid"]
