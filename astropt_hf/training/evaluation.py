"""Validation loss on the fixed subset (and, for images + spectra, each modality's part), the model inputs of
a batch, and the evaluation figures: the grid of inputs above next-patch predictions, or (masked runs) masked
inputs, reconstructions and truths; and for models with spectra, predicted against observed spectra."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..plotting import plot_galaxy_grid
from ..plotting.spectra import plot_spectrum_predictions
from .collectives import any_process
from .modalities import dummy_inputs, dummy_pixel_values, loss_part_names, model_inputs

# Masked runs draw their evaluation masks from this seed, so every evaluation masks the same patches and
# validation losses (and grids) are comparable from one evaluation to the next.
EVALUATION_MASK_SEED = 0


def _is_masked(model) -> bool:
    return getattr(model.config, "objective", "next_patch") == "masked_patch"


def _evaluation_masks(unwrapped, pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Masks for a batch, drawn on the CPU from `generator` (the same on every device)."""
    return unwrapped.random_patch_mask(pixel_values.shape[0], generator=generator).to(pixel_values.device)


@dataclass
class ValidationLosses:
    """The validation loss over `images` galaxies (`skipped` items left out), and for a multimodal model each
    modality's part (`parts`: "image_loss", "spectrum_loss"), averaged the same way."""

    loss: float
    images: int
    skipped: int
    parts: dict[str, float]


@torch.no_grad()
def evaluate_losses(accelerator, model, batches: Iterable[dict], config) -> ValidationLosses:
    """Mean validation loss (and its parts) over all images of all processes' batches.

    Processes with fewer batches (or empty ones, all items skipped) run a weight-zero forward on a blank
    galaxy, so every process runs the same number of forward passes. Masked-patch runs use masks from a
    fixed seed (`EVALUATION_MASK_SEED`). A part is averaged over the images of the batches that report it.
    """
    was_training = model.training
    model.eval()
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    generator = torch.Generator().manual_seed(EVALUATION_MASK_SEED) if _is_masked(unwrapped) else None
    parts = loss_part_names(config)
    # loss x images, images, skipped, then (part x images, images with that part) per part
    totals = torch.zeros(3 + 2 * len(parts), dtype=torch.float64, device=accelerator.device)
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        if not any_process(accelerator, batch is not None):
            break
        if batch is not None:
            totals[2] += batch["num_skipped"]
        inputs, count = model_inputs(batch, config, accelerator.device) if batch is not None else (
            dummy_inputs(config, accelerator.device), 0)
        if generator is not None:
            inputs["bool_masked_pos"] = _evaluation_masks(unwrapped, inputs["pixel_values"], generator)
        with accelerator.autocast():
            output = model(**inputs)
        totals[0] += output.loss.double() * count
        totals[1] += count
        for index, name in enumerate(parts):
            part = getattr(output, name, None)
            if part is not None:
                totals[3 + 2 * index] += part.double() * count
                totals[4 + 2 * index] += count
    totals = accelerator.reduce(totals, reduction="sum") if accelerator.num_processes > 1 else totals
    model.train(was_training)
    values = totals.tolist()
    images = int(values[1])
    means = {name: values[3 + 2 * i] / values[4 + 2 * i] if values[4 + 2 * i] else float("nan")
             for i, name in enumerate(parts)}
    return ValidationLosses(values[0] / images if images else float("nan"), images, int(values[2]), means)


def evaluate_loss(accelerator, model, batches: Iterable[dict], config) -> tuple[float, int, int]:
    """(loss, images, skipped) of `evaluate_losses`."""
    result = evaluate_losses(accelerator, model, batches, config)
    return result.loss, result.images, result.skipped


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


# With a per-spectrum flux scale the model never sees a spectrum's level, only its shape: the figure says so.
SCALED_PREDICTIONS_NOTE = ("The model reads and predicts each spectrum divided by its median |flux|; predictions are "
                           "shown times the observed spectrum's median |flux|: their shape is predicted, their level "
                           "is not.")


@dataclass
class SpectrumPanels:
    """Observed and predicted spectra of a few galaxies, in the data's flux unit (the normalisation undone),
    for `save_spectrum_panels`: `predictions` maps a legend label to (N, L) flux."""

    wavelengths: torch.Tensor
    observed: torch.Tensor
    mask: torch.Tensor
    predictions: dict[str, torch.Tensor]
    note: str | None = None


@torch.no_grad()
def predicted_spectra(accelerator, model, batch: dict) -> SpectrumPanels | None:
    """The spectra of the galaxies of `batch` (a collated batch with spectra), predicted two ways: from the
    image alone (`generate_spectrum`, each predicted patch fed back) and next-patch (each spectrum patch
    predicted from the image and the observed patches before it); None if the batch holds no spectra."""
    if "spectrum_values" not in batch or not bool(batch["spectrum_mask"].any()):
        return None
    was_training = model.training
    model.eval()
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    inputs, _ = model_inputs(batch, unwrapped.config, accelerator.device)
    length = inputs["spectrum_values"].shape[1]
    with accelerator.autocast():
        output = model(**inputs)
        generated = unwrapped.generate_spectrum(inputs["pixel_values"], inputs["spectrum_wavelengths"])
    model.train(was_training)
    scale = batch["spectrum_scale"].float()[:, None]
    next_patch = output.spectrum_predictions.float().flatten(1)[:, :length].cpu()
    return SpectrumPanels(
        wavelengths=batch["spectrum_wavelengths"].float(), observed=batch["spectrum_values"].float() * scale,
        mask=batch["spectrum_mask"].bool(),
        predictions={"from the image alone": generated.float().cpu() * scale,
                     "next-patch (observed patches before it)": next_patch * scale},
        note=None if bool((scale == 1).all()) else SCALED_PREDICTIONS_NOTE,
    )


def save_spectrum_panels(panels: SpectrumPanels, path: str | os.PathLike, ids: list, step: int,
                         title: str | None = None, count: int = 4) -> Path:
    """PNG of the first `count` galaxies' observed and predicted spectra, one panel each, captioned with the
    galaxy's id; the title carries the step."""
    count = min(count, len(panels.observed))
    heading = f"{title} (step {step})" if title else f"step {step}"
    return plot_spectrum_predictions(
        panels.wavelengths[:count], panels.observed[:count],
        {label: values[:count] for label, values in panels.predictions.items()}, path,
        masks=panels.mask[:count], titles=[str(i) for i in ids[:count]], title=heading, note=panels.note,
    )


def write_spectrum_panels(accelerator, model, batch: dict, output_dir: str | os.PathLike, step: int, write) -> None:
    """`output_dir/eval/spectra-step<N>.png` from `predicted_spectra` of `batch` (every process takes part in
    the forward passes; the main one writes, through `write(what, function, *args, **kwargs)`, the run's
    guarded writer)."""
    panels = predicted_spectra(accelerator, model, batch)
    if panels is not None and accelerator.is_main_process:
        path = Path(output_dir) / "eval" / f"spectra-step{step:06d}.png"
        write("the spectrum panels", save_spectrum_panels, panels, path, batch["ids"], step,
              title=f"astroPT spectra — {Path(output_dir).name}")


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
    "PredictionPanels", "SpectrumPanels", "ValidationLosses", "dummy_pixel_values", "evaluate_loss", "evaluate_losses",
    "input_description", "loss_description", "predicted_images", "predicted_spectra", "save_prediction_grid",
    "save_spectrum_panels", "write_spectrum_panels",
]
