"""What a pretraining run does per modality: the model inputs of a batch (images, and spectra for a model
that reads them), the inputs of a blank galaxy for an empty batch, each modality's part of the logged
training loss, and the check that a model with spectra gets data with spectra.

Every batch of a run with spectra feeds both modalities (a galaxy without a spectrum gets a fully masked
one), so every parameter has a gradient at every step and distributed training needs no search for unused
parameters."""

from __future__ import annotations

import torch

from ..data import SpectrumColumns
from .arguments import ConfigError

SPECTRUM_INPUTS = ("spectrum_values", "spectrum_wavelengths", "spectrum_mask")
#: The per-modality parts of a multimodal model's loss, as its output names them.
LOSS_PARTS = ("image_loss", "spectrum_loss")


def dummy_pixel_values(config, device) -> torch.Tensor:
    """One blank image: stands in for an empty batch so that every process still runs a forward pass."""
    size = config.image_size
    return torch.zeros(1, config.num_channels, size, size, device=device)


def dummy_inputs(config, device) -> dict[str, torch.Tensor]:
    """Inputs of one blank galaxy (with a fully masked one-patch spectrum if the model reads spectra): every
    parameter takes part, as in a real batch, so distributed gradient reduction finds every gradient."""
    inputs = {"pixel_values": dummy_pixel_values(config, device)}
    if getattr(config, "has_spectra", False):
        size = config.spectrum_patch_size
        inputs.update(spectrum_values=torch.zeros(1, size, device=device),
                      spectrum_wavelengths=torch.zeros(1, size, device=device),
                      spectrum_mask=torch.zeros(1, size, dtype=torch.bool, device=device))
    return inputs


def model_inputs(batch: dict, config, device) -> tuple[dict[str, torch.Tensor], int]:
    """(the model's inputs from a collated batch, on `device`; the number of galaxies in it). A batch whose
    items were all skipped gives `dummy_inputs` and 0. Spectra go in when the model reads them."""
    count = int(batch["pixel_values"].shape[0])
    if not count:
        return dummy_inputs(config, device), 0
    inputs = {"pixel_values": batch["pixel_values"].to(device, non_blocking=True)}
    if getattr(config, "has_spectra", False) and "spectrum_values" in batch:
        inputs.update({name: batch[name].to(device, non_blocking=True) for name in SPECTRUM_INPUTS})
    return inputs, count


def loss_part_names(config) -> tuple[str, ...]:
    """The loss parts a model of `config` reports (none for an images-only model)."""
    return LOSS_PARTS if getattr(config, "has_spectra", False) else ()


def loss_values(output, loss: torch.Tensor) -> dict[str, float]:
    """`loss` and the output's loss parts (those it has) as floats, in one device-to-host copy."""
    parts = [name for name in LOSS_PARTS if getattr(output, name, None) is not None]
    stacked = torch.stack([loss.detach().float()] + [getattr(output, name).detach().float() for name in parts])
    values = stacked.tolist()
    return {"loss": values[0], **dict(zip(parts, values[1:]))}


class LossParts:
    """Each modality's part of the training loss over the window of steps since the last log.

    The sums live in the run's `data_state` (checkpointed with it, so a resumed run logs what an uninterrupted
    one would): `window_<part>_sum` (part x galaxies) and `window_<part>_images` (galaxies counted: for the
    spectrum part, those with a spectrum). An images-only model has no parts, and nothing is added.
    """

    def __init__(self, config):
        self.names = loss_part_names(config)

    def initial_state(self) -> dict[str, float]:
        return {f"window_{name}_{kind}": 0.0 for name in self.names for kind in ("sum", "images")}

    def add(self, data_state: dict, batch: dict, output, loss: torch.Tensor, count: int) -> float:
        """Add one micro-batch of `count` galaxies; returns its total loss as a float (the one host sync)."""
        values = loss_values(output, loss)
        for name in self.names:
            counted = count - int(batch.get("num_without_spectrum", 0)) if name == "spectrum_loss" else count
            data_state[f"window_{name}_sum"] += values.get(name, 0.0) * counted
            data_state[f"window_{name}_images"] += counted
        return values["loss"]

    def local_sums(self, data_state: dict) -> list[float]:
        """This process's sums, in the order `take` expects them summed over processes."""
        return [data_state[key] for key in self.initial_state()]

    def take(self, data_state: dict, summed: list[float]) -> dict[str, float]:
        """`train_<part>` means from `summed` (`local_sums` added over processes); restarts the window."""
        data_state.update(self.initial_state())
        pairs = zip(summed[0::2], summed[1::2])
        return {f"train_{name}": total / images if images else float("nan") for name, (total, images) in
                zip(self.names, pairs)}


def spectrum_extractor_for(source, extractor):
    """The spectrum extractor a collator of `source` uses: None for an images-only model (`extractor` None);
    refuses a model with spectra on data without a spectrum column, which would leave its spectrum
    weights untrained (and unused, which distributed training does not allow)."""
    if extractor is None:
        return None
    columns = SpectrumColumns()
    if not columns.present_in(source.catalogue_columns):
        raise ConfigError(f"the model reads spectra (modalities [images, spectra]) but {source.origin} has no "
                          f"{columns.flux!r} column (it has {list(source.catalogue_columns)})")
    return extractor


__all__ = [
    "LOSS_PARTS", "SPECTRUM_INPUTS", "LossParts", "dummy_inputs", "dummy_pixel_values", "loss_part_names",
    "loss_values", "model_inputs", "spectrum_extractor_for",
]
