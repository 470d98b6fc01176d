"""Embedding extraction (forward only, mean-pooled), ours against upstream's `get_embeddings`."""

from __future__ import annotations

import torch

from ..modeling_astropt import AstroPTModel
from .inputs import images_as_tensor, synthetic_images
from .shapes import ModelShape, forward_flops_per_token
from .timing import autocast, interleaved
from .upstream_reference import build_upstream_gpt, upstream_inputs

LAYERS = ("last", "middle")


def measure_embeddings(
    shape: ModelShape,
    batch: int,
    precision: str,
    device: str,
    repeats: int,
    layers: tuple[str, ...] = LAYERS,
    warmup_batch: int = 1,
    upstream_precision: str | None = None,
) -> dict:
    """Seconds to embed `batch` images into one mean-pooled vector each, per layer ("last": after the final
    LayerNorm; "middle": block num_layers // 2, upstream v2's default).

    Ours: `get_image_embeddings` from uint8 pixels (patchify included), which stops at the block it needs.
    Upstream: `get_embeddings` on the prepared patch sequence (all blocks always run), then the mean over
    patches, as its `generate_embeddings` does. `upstream_precision` defaults to `precision`.
    """
    upstream_precision = upstream_precision or precision
    torch.manual_seed(0)
    pixels = images_as_tensor(synthetic_images(batch, shape.image_size, shape.num_channels), device)
    ours = AstroPTModel(shape.config()).to(device).eval()
    upstream = build_upstream_gpt(shape, device).eval()
    with torch.inference_mode():
        inputs = upstream_inputs(ours.image_to_patches(pixels))
    small = min(warmup_batch, batch)
    small_inputs = {key: value[:small] for key, value in inputs.items()}

    def ours_fn(layer: str, images: torch.Tensor):
        def run() -> torch.Tensor:
            with torch.inference_mode(), autocast(device, precision):
                return ours.get_image_embeddings(pixel_values=images, layer=layer, pooling="mean")

        return run

    def upstream_fn(layer: str, batch_inputs: dict):
        def run() -> torch.Tensor:
            with torch.inference_mode(), autocast(device, upstream_precision):
                hidden = upstream.get_embeddings(batch_inputs, draw_from_centre=layer == "middle")["images"]
                return hidden.mean(dim=1)

        return run

    results = {}
    for layer in layers:
        num_blocks = shape.num_hidden_layers if layer == "last" else shape.num_hidden_layers // 2 + 1
        timing = interleaved(
            ours_fn(layer, pixels),
            upstream_fn(layer, inputs),
            repeats,
            device,
            warmup=(ours_fn(layer, pixels[:small]), upstream_fn(layer, small_inputs)),
        )
        results[layer] = {
            "timing": timing,
            "images": batch,
            "precision": precision,
            "upstream_precision": upstream_precision,
            "blocks_run_ours": num_blocks,
            "blocks_run_upstream": shape.num_hidden_layers,
            "flops_per_image_ours": shape.num_patches
            * forward_flops_per_token(shape, shape.num_patches, num_blocks, include_head=False),
        }
    return results
