"""Benchmark inputs: galaxy-like uint8 images (a noisy elliptical light profile per band) and PNG bytes."""

from __future__ import annotations

import io

import numpy as np
import torch


def synthetic_images(count: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """(count, size, size, channels) uint8 images: an off-centre exponential disc with per-band colour on a
    noisy sky, so PNGs compress and decode like real cutouts rather than like pure noise."""
    rng = np.random.default_rng(seed)
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    images = np.empty((count, size, size, channels), dtype=np.uint8)
    for index in range(count):  # a handful of images, built once outside any timed region
        dx, dy = rng.uniform(-0.1, 0.1, 2)
        angle, axis_ratio, scale = rng.uniform(0, np.pi), rng.uniform(0.3, 1.0), rng.uniform(0.05, 0.3)
        u = (x - dx) * np.cos(angle) + (y - dy) * np.sin(angle)
        v = ((y - dy) * np.cos(angle) - (x - dx) * np.sin(angle)) / axis_ratio
        profile = np.exp(-np.sqrt(u * u + v * v) / scale)
        colours = rng.uniform(0.5, 1.0, channels).astype(np.float32)
        light = 200.0 * profile[..., None] * colours + rng.normal(20.0, 6.0, (size, size, channels))
        images[index] = np.clip(light, 0, 255).astype(np.uint8)
    return images


def images_as_tensor(images_hwc: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """(N, H, W, C) uint8 array -> contiguous (N, C, H, W) uint8 tensor on `device`."""
    return torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous().to(device)


def png_bytes(images_hwc: np.ndarray) -> list[bytes]:
    """Encode each (H, W, C) uint8 image as PNG bytes in memory."""
    from PIL import Image

    blobs = []
    for image in images_hwc:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    return blobs


def decode_png(blob: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, C) uint8 array, as a data loader worker would decode a cutout."""
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as image:
        return np.array(image.convert("RGB"))  # a writable array (asarray would be a read-only view)
