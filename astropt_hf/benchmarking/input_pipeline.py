"""The whole input pipeline: PNG bytes decoded and preprocessed by a DataLoader's workers.

Ours: workers decode to uint8 and the batch is patchified by the model on the training device (the model
owns patch geometry). Upstream: workers decode and run the per-image reference preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from ..modeling_astropt import AstroPTForPreTraining
from .inputs import decode_png, png_bytes, synthetic_images
from .shapes import ModelShape
from .timing import interleaved
from .upstream_reference import reference_preprocess


class PngDataset(Dataset):
    """In-memory PNG cutouts, decoded (and transformed) on access."""

    def __init__(self, blobs: list[bytes], transform: Callable):
        self.blobs = blobs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(decode_png(self.blobs[index]))


def decode_to_chw_uint8(image_hwc) -> torch.Tensor:
    """Our worker transform: no float work in the worker, just the uint8 image as (C, H, W)."""
    return torch.from_numpy(image_hwc).permute(2, 0, 1)


class UpstreamTransform:
    """Upstream's worker transform (picklable for spawn-based workers)."""

    def __init__(self, patch_size: int):
        self.patch_size = patch_size

    def __call__(self, image_hwc) -> torch.Tensor:
        return reference_preprocess(image_hwc, self.patch_size)


def measure_input_pipeline(
    shape: ModelShape, num_images: int, batch_size: int, workers: int, device: str, repeats: int
) -> dict:
    """Seconds for one pass over `num_images` PNGs through a DataLoader with `workers` workers, ours
    (decode in workers, patchify on `device`) against upstream (decode + reference preprocessing in workers)."""
    blobs = png_bytes(synthetic_images(num_images, shape.image_size, shape.num_channels, seed=1))
    model = AstroPTForPreTraining(shape.config()).to(device)
    pin = device.startswith("cuda")

    def loader(transform: Callable) -> DataLoader:
        return DataLoader(
            PngDataset(blobs, transform),
            batch_size=batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,  # worker start-up is paid once, in the warm-up pass
            pin_memory=pin,
        )

    ours_loader = loader(decode_to_chw_uint8)
    upstream_loader = loader(UpstreamTransform(shape.patch_size))

    def ours() -> None:
        for batch in ours_loader:
            model.image_to_patches(batch.to(device, non_blocking=True))

    def upstream() -> None:
        for batch in upstream_loader:
            batch.to(device, non_blocking=True)

    with torch.inference_mode():
        timing = interleaved(ours, upstream, repeats, device)
    return {"timing": timing, "images": num_images, "workers": workers, "batch_size": batch_size}
