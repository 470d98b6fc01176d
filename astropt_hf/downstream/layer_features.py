"""Pooled features of every layer of an astroPT backbone, from one forward pass per batch.

Layers are numbered as probing studies number them:

* layer 0: the patch embeddings (patch projection plus positions) before the first block;
* layer k, 1 <= k < L: the raw output of block k (the same as ``embedding_layer=k - 1`` in the config,
  whose block indices start at 0);
* layer L = ``num_hidden_layers``: the last block's output after the final LayerNorm, i.e. the
  ``embedding_layer="last"`` embedding every other workflow uses by default.

So the deepest layer of a layer-wise probe is exactly the default embedding, and every layer is read
from the ``hidden_states`` the backbone returns with ``output_hidden_states=True``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from astropt_hf.downstream.embeddings import load_backbone, pixel_batches

__all__ = [
    "backbone_of",
    "compute_layer_features",
    "compute_patch_features",
    "default_layer_number",
    "iter_layer_features",
    "layer_hidden_states",
    "layer_pixel_features",
    "load_backbone",
    "resolve_layers",
]


def backbone_of(model):
    """The `AstroPTModel` inside any astroPT head (or the model itself)."""
    if hasattr(model, "get_image_embeddings"):
        return model
    inner = getattr(model, "astropt", None)
    if inner is None or not hasattr(inner, "get_image_embeddings"):
        raise TypeError(f"{type(model).__name__} is not an astroPT model: it has no get_image_embeddings")
    return inner


def resolve_layers(layers: str | int | Sequence[int] | None, num_hidden_layers: int) -> list[int]:
    """``"all"`` / None -> [0, ..., L]; ``"0,2,4"`` or a list -> those layers (sorted, each once).

    Negative numbers count from the end (-1 is layer L).
    """
    if layers is None or (isinstance(layers, str) and layers.strip().lower() == "all"):
        return list(range(num_hidden_layers + 1))
    if isinstance(layers, str):
        parts = [part.strip() for part in layers.split(",") if part.strip()]
        try:
            layers = [int(part) for part in parts]
        except ValueError:
            raise ValueError(f"layers={layers!r}: expected 'all' or comma-separated layer numbers") from None
    elif isinstance(layers, int):
        layers = [layers]
    chosen = []
    for layer in layers:
        number = int(layer) + (num_hidden_layers + 1 if int(layer) < 0 else 0)
        if not 0 <= number <= num_hidden_layers:
            raise ValueError(
                f"layer {layer} is out of range: layers are 0 (patch embeddings) to {num_hidden_layers} "
                "(last block, after the final LayerNorm)"
            )
        chosen.append(number)
    if not chosen:
        raise ValueError("no layers given")
    return sorted(set(chosen))


def default_layer_number(config) -> int | None:
    """The layer number of the config's `embedding_layer`, or None when it has none.

    Block index i (0-based) is layer i + 1 and "last" is layer L; only the raw output of the last
    block (``embedding_layer=num_hidden_layers - 1``) has no number, since layer L carries the LayerNorm.
    """
    index = config.resolve_embedding_layer()
    if index == config.num_hidden_layers:
        return index
    return None if index == config.num_hidden_layers - 1 else index + 1


@torch.no_grad()
def layer_hidden_states(model, pixel_values: torch.Tensor, layers: Sequence[int], bf16: bool = False) -> dict[int, torch.Tensor]:
    """One forward pass -> {layer: (B, T, D) patch features} for each of `layers` (numbered as above)."""
    backbone = backbone_of(model)
    device = next(backbone.parameters()).device
    pixel_values = pixel_values.to(device, non_blocking=True)
    num_layers = backbone.config.num_hidden_layers
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        outputs = backbone(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
    # hidden_states holds the embeddings and each block's raw output; the final LayerNorm is only in
    # last_hidden_state.
    return {
        layer: outputs.last_hidden_state if layer == num_layers else outputs.hidden_states[layer]
        for layer in layers
    }


def layer_pixel_features(
    model,
    pixel_values: torch.Tensor,
    layers: Sequence[int],
    pooling: str | None = None,
    pooling_num_patches: int | None = None,
    bf16: bool = False,
) -> dict[int, np.ndarray]:
    """(B, C, H, W) pixels -> {layer: (B, D) float32 pooled features}, all layers from one pass.

    `pooling` ("mean", "mean_first_k", "last") and `pooling_num_patches` default to the config's.
    """
    from astropt_hf.modeling_astropt import pool_patch_embeddings

    config = backbone_of(model).config
    pooling = pooling or config.pooling
    num_patches = pooling_num_patches if pooling_num_patches is not None else config.pooling_num_patches
    hidden = layer_hidden_states(model, pixel_values, layers, bf16)
    return {
        layer: pool_patch_embeddings(states, pooling, num_patches).float().cpu().numpy()
        for layer, states in hidden.items()
    }


def iter_layer_features(
    model,
    dataset,
    processor,
    layers: Sequence[int],
    batch_size: int = 64,
    pooling: str | None = None,
    pooling_num_patches: int | None = None,
    bf16: bool = False,
    image_column: str = "image",
    id_column: str | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[list[str], list[int], dict[int, np.ndarray]]]:
    """Yield (ids, dataset rows, {layer: (B, D) features}) per batch; unreadable images are left out."""
    loader = pixel_batches(dataset, processor, image_column, id_column, batch_size, num_workers)
    for batch in loader:
        if batch["rows"]:
            features = layer_pixel_features(model, batch["pixel_values"], layers, pooling, pooling_num_patches, bf16)
            yield batch["ids"], batch["rows"], features


def compute_layer_features(
    model,
    dataset,
    processor,
    layers: Sequence[int],
    batch_size: int = 64,
    pooling: str | None = None,
    pooling_num_patches: int | None = None,
    bf16: bool = False,
    image_column: str = "image",
    num_workers: int = 0,
) -> dict[int, np.ndarray]:
    """{layer: (N, D) float32} for every row of a map-style dataset, in order (NaN rows where an image
    could not be read, as `compute_embeddings` does)."""
    width = backbone_of(model).config.hidden_size
    result = {layer: np.full((len(dataset), width), np.nan, dtype=np.float32) for layer in layers}
    for _, rows, features in iter_layer_features(model, dataset, processor, layers, batch_size, pooling,
                                                 pooling_num_patches, bf16, image_column, None, num_workers):
        for layer, values in features.items():
            result[layer][rows] = values
    return result


def compute_patch_features(
    model,
    dataset,
    processor,
    layer: int,
    batch_size: int = 64,
    dtype=np.float16,
    bf16: bool = False,
    image_column: str = "image",
) -> tuple[np.ndarray, np.ndarray]:
    """Unpooled (N, T, D) features of one layer for every row, in `dtype` (float16 halves the memory),
    and the (N,) mask of rows whose image could be read (the others are zeros)."""
    config = backbone_of(model).config
    result = np.zeros((len(dataset), config.num_patches, config.hidden_size), dtype=dtype)
    readable = np.zeros(len(dataset), dtype=bool)
    for batch in pixel_batches(dataset, processor, image_column, None, batch_size, num_workers=0):
        if batch["rows"]:
            states = layer_hidden_states(model, batch["pixel_values"], [layer], bf16)[layer]
            result[batch["rows"]] = states.float().cpu().numpy().astype(dtype)
            readable[batch["rows"]] = True
    return result, readable
