"""Batch assembly for DataLoaders: decode, process, skip and count bad samples."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .decoding import CorruptSampleError, DecodeLimits, decode_image

logger = logging.getLogger(__name__)


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
    """

    def __init__(
        self,
        image_processor: Any,
        image_column: str = "image",
        id_column: str | None = None,
        keep_columns: Sequence[str] = (),
        decode_limits: DecodeLimits | None = None,
    ):
        self.image_processor = image_processor
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

        if pixels:
            pixel_values = torch.stack(pixels)
        else:
            pixel_values = torch.zeros((0, *self.expected_shape), dtype=torch.float32)
        batch: dict[str, Any] = {"pixel_values": pixel_values, "ids": ids}
        for name, values in kept.items():
            batch[name] = _to_tensor_if_possible(values)
        batch["num_skipped"] = num_skipped
        return batch

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
