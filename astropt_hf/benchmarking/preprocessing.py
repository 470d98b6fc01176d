"""Preprocessing: uint8 images -> normalised patches in spiral order, ours (one batched gather on the
device) against upstream's per-image path (reproduced in `upstream_reference`)."""

from __future__ import annotations

import torch

from ..modeling_astropt import AstroPTForPreTraining
from .inputs import images_as_tensor, synthetic_images
from .shapes import ModelShape
from .timing import interleaved
from .upstream_reference import reference_preprocess


def check_same_patches(shape: ModelShape, image_hwc) -> float:
    """Largest difference between upstream's reference and our patchify (configured to read images the way
    upstream does) on one image: proof that both sides do the same work. Upstream rounds to float16."""
    ours = AstroPTForPreTraining(shape.config(transpose_patch_grid=True))
    mine = ours.image_to_patches(torch.from_numpy(image_hwc).permute(2, 0, 1)[None])[0]
    return (mine - reference_preprocess(image_hwc, shape.patch_size)).abs().max().item()


def measure_preprocessing(shape: ModelShape, num_images: int, device: str, repeats: int) -> dict:
    """Seconds to turn `num_images` uint8 images into (T, P) normalised spiral-ordered patches.

    Ours starts from a (N, C, H, W) uint8 batch in host memory and includes the copy to `device`; upstream
    starts from the (H, W, C) uint8 arrays an image decoder returns and runs on the CPU, one image at a time.
    """
    images = synthetic_images(num_images, shape.image_size, shape.num_channels)
    host_batch = images_as_tensor(images)
    if device.startswith("cuda"):
        host_batch = host_batch.pin_memory()
    model = AstroPTForPreTraining(shape.config()).to(device)

    def ours() -> torch.Tensor:
        return model.image_to_patches(host_batch.to(device, non_blocking=True))

    def upstream() -> list[torch.Tensor]:
        return [reference_preprocess(image, shape.patch_size) for image in images]

    with torch.inference_mode():
        timing = interleaved(ours, upstream, repeats, device)
    return {"timing": timing, "images": num_images, "max_abs_difference": check_same_patches(shape, images[0])}
