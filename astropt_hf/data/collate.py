"""Batch assembly for DataLoaders: decode, process, skip and count bad samples; spectra beside the images."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .decoding import CorruptSampleError, DecodeLimits, decode_image

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SpectrumColumns:
    """Where a row keeps its spectrum: flux, observed wavelengths (Angstrom), and optionally the inverse
    variance and a mask (nonzero = bad sample). The built-in galaxies use the defaults. A ``flux`` column that
    holds a mapping (the Multimodal Universe layout of DESI spectra: ``flux``, ``lambda``, ``ivar``, ``mask``)
    is read from that mapping instead."""

    flux: str = "spectrum"
    wavelength: str = "spectrum_wavelength"
    ivar: str | None = "spectrum_ivar"
    mask: str | None = "spectrum_mask"

    def read(self, example: dict) -> tuple | None:
        """(flux, wavelength, ivar, mask) of one row (ivar and mask may be None), or None if it has none."""
        value = example.get(self.flux)
        if isinstance(value, dict):
            fields = (value.get("flux"), value.get("lambda", value.get("wavelength")), value.get("ivar"),
                      value.get("mask"))
        else:
            fields = (value, example.get(self.wavelength), example.get(self.ivar) if self.ivar else None,
                      example.get(self.mask) if self.mask else None)
        if fields[0] is None or fields[1] is None:
            return None
        return tuple(None if field is None else np.asarray(field) for field in fields)

    def present_in(self, column_names: Sequence[str]) -> bool:
        return self.flux in column_names


class GalaxyCollator:
    """``collate_fn`` that turns dataset rows into ``pixel_values`` with the image processor.

    Each example's image is decoded with ``decode_image`` and processed on its own. Examples that
    cannot be decoded (``CorruptSampleError``, which includes files whose headers declare more than
    ``decode_limits`` allow) or that the processor rejects (``ValueError``, e.g. a wrong band count;
    ``MemoryError``) are skipped with a ``logger.warning`` naming the item and the reason;
    their number travels in the batch as ``num_skipped`` so that DataLoader workers can report
    it. Every kept image comes out at the processor's size: a processed image of any other shape
    is skipped too, never reshaped.

    Returns (from ``__call__``) a dict with ``pixel_values`` (float32, (B, C, H, W), B may be 0),
    ``ids`` (list of the kept items' ids), one entry per ``keep_columns`` name (a tensor when the
    values are numbers or equal-shaped arrays, floats as torch's default float dtype, else a list),
    and ``num_skipped`` (int).

    Args:
        image_processor: an ``AstroPTImageProcessor`` (anything with the same call signature and
            ``image_size`` / ``num_channels`` attributes).
        image_column: the column holding the raw image.
        id_column: the column holding ids; without one, an item is named by its file path if
            known, else by its position in the batch.
        keep_columns: other columns to carry into the batch (e.g. truth for probes).
        decode_limits: largest declared image to decode; default
            ``DecodeLimits.for_image_size(image_size, num_channels)`` from the processor, i.e. planes
            up to 16 times the processor's side (``DEFAULT_MAX_SIDE_FACTOR``).
        spectrum_extractor: an ``AstroPTSpectrumFeatureExtractor``; with one, every batch also holds
            ``spectrum_values``, ``spectrum_wavelengths``, ``spectrum_mask`` (B, L; L the longest spectrum of
            the batch, at least 1) and ``spectrum_scale`` (B,), read from ``spectrum_columns``, and
            ``num_without_spectrum``. A kept image whose row has no spectrum, or one the extractor rejects
            (logged), gets an all-masked spectrum: it trains the image alone, and every batch still feeds
            both modalities (which distributed training needs: each parameter gets a gradient every step).
        spectrum_columns: where rows keep their spectra (default ``SpectrumColumns()``).
    """

    def __init__(
        self,
        image_processor: Any,
        image_column: str = "image",
        id_column: str | None = None,
        keep_columns: Sequence[str] = (),
        decode_limits: DecodeLimits | None = None,
        spectrum_extractor: Any = None,
        spectrum_columns: SpectrumColumns | None = None,
    ):
        self.image_processor = image_processor
        self.spectrum_extractor = spectrum_extractor
        self.spectrum_columns = spectrum_columns or SpectrumColumns()
        self.image_column = image_column
        self.id_column = id_column
        self.keep_columns = tuple(keep_columns)
        self.expected_shape = _processor_output_shape(image_processor)
        channels, height, width = self.expected_shape
        self.decode_limits = decode_limits or DecodeLimits.for_image_size(max(height, width), channels)

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        pixels: list[torch.Tensor] = []
        ids: list[Any] = []
        kept: dict[str, list[Any]] = {name: [] for name in self.keep_columns}
        spectra: list[dict | None] = []
        num_skipped = 0
        for position, example in enumerate(examples):
            item = self._item_name(example, position)
            try:
                image = self._process(example, item)
            except (CorruptSampleError, ValueError, MemoryError) as err:
                reason = err.reason if isinstance(err, CorruptSampleError) else str(err)
                if isinstance(err, MemoryError):
                    reason = f"out of memory while processing it ({reason})"
                logger.warning("Skipping sample %s: %s", item, reason)
                num_skipped += 1
                continue
            pixels.append(image)
            ids.append(item)
            for name in self.keep_columns:
                kept[name].append(example[name])
            if self.spectrum_extractor is not None:
                spectra.append(self._spectrum(example, item))

        if pixels:
            pixel_values = torch.stack(pixels)
        else:
            pixel_values = torch.zeros((0, *self.expected_shape), dtype=torch.float32)
        batch: dict[str, Any] = {"pixel_values": pixel_values, "ids": ids}
        for name, values in kept.items():
            batch[name] = _to_tensor_if_possible(values)
        batch["num_skipped"] = num_skipped
        if self.spectrum_extractor is not None:
            batch.update(_pad_spectra(spectra))
        return batch

    def _spectrum(self, example: dict, item: Any) -> dict | None:
        """One row's processed spectrum (1-D arrays), or None if it has none or the extractor rejects it."""
        fields = self.spectrum_columns.read(example)
        if fields is None:
            return None
        flux, wavelength, ivar, mask = fields
        try:
            out = self.spectrum_extractor(flux, wavelength, ivar=ivar, mask=mask, return_tensors=None)
        except ValueError as err:
            logger.warning("Sample %s: its spectrum is left out (%s); its image is kept", item, err)
            return None
        names = ("spectrum_values", "spectrum_wavelengths", "spectrum_mask")
        return {**{name: np.asarray(out[name][0]) for name in names}, "spectrum_scale": float(out["spectrum_scale"][0])}

    def _process(self, example: dict, item: Any) -> torch.Tensor:
        if self.image_column not in example:
            raise CorruptSampleError(item, f"no column {self.image_column!r} (has {sorted(example)})")
        array = decode_image(example[self.image_column], source=item, limits=self.decode_limits)
        processed = self.image_processor(array, return_tensors="pt")["pixel_values"]
        processed = torch.as_tensor(processed, dtype=torch.float32)
        if processed.ndim == 4 and processed.shape[0] == 1:
            processed = processed[0]
        if tuple(processed.shape) != self.expected_shape:
            raise ValueError(
                f"processed image has shape {tuple(processed.shape)}, expected {self.expected_shape} "
                f"(input shape {array.shape})"
            )
        return processed

    def _item_name(self, example: dict, position: int) -> Any:
        if self.id_column is not None and example.get(self.id_column) is not None:
            item = example[self.id_column]
            return item.item() if isinstance(item, np.generic) else item  # numpy-formatted streams
        value = example.get(self.image_column)
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and value.get("path"):
            return value["path"]
        return f"batch item {position}"


def _pad_spectra(spectra: list[dict | None]) -> dict[str, Any]:
    """The batch's spectrum tensors: rows padded to the longest spectrum with masked zeros; a row without a
    spectrum is all masked (wavelength 0, scale 1)."""
    length = max([len(s["spectrum_values"]) for s in spectra if s is not None], default=1)
    values = torch.zeros(len(spectra), length)
    wavelengths = torch.zeros(len(spectra), length)
    mask = torch.zeros(len(spectra), length, dtype=torch.bool)
    scale = torch.ones(len(spectra))
    for row, spectrum in enumerate(spectra):
        if spectrum is None:
            continue
        count = len(spectrum["spectrum_values"])
        values[row, :count] = torch.from_numpy(spectrum["spectrum_values"].astype(np.float32))
        wavelengths[row, :count] = torch.from_numpy(spectrum["spectrum_wavelengths"].astype(np.float32))
        mask[row, :count] = torch.from_numpy(spectrum["spectrum_mask"].astype(bool))
        scale[row] = spectrum["spectrum_scale"]
    return {"spectrum_values": values, "spectrum_wavelengths": wavelengths, "spectrum_mask": mask,
            "spectrum_scale": scale, "num_without_spectrum": sum(s is None for s in spectra)}


def _processor_output_shape(processor: Any) -> tuple[int, int, int]:
    """(C, H, W) that the processor produces, from its ``num_channels`` and ``image_size``."""
    channels = getattr(processor, "num_channels", None)
    size = getattr(processor, "image_size", None)
    if isinstance(size, dict):
        size = (size.get("height"), size.get("width"))
    elif isinstance(size, int):
        size = (size, size)
    if channels is None or size is None or None in tuple(size):
        raise ValueError(
            f"cannot tell the image processor's output shape: num_channels={channels!r}, image_size={size!r}"
        )
    return (int(channels), int(size[0]), int(size[1]))


def _to_tensor_if_possible(values: list[Any]) -> Any:
    """Numbers or equal-shaped arrays become one tensor; strings and ragged values stay a list."""
    if not values:
        return torch.zeros(0)
    try:
        array = np.asarray(values)
    except ValueError:
        return values
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    # Rows arrive as Python floats (float64 in numpy); follow torch's default float dtype instead.
    return tensor.to(torch.get_default_dtype()) if tensor.is_floating_point() else tensor
