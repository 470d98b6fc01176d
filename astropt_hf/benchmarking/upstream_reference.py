"""The upstream astroPT side of the comparison: its PyPI model, and its per-image preprocessing.

The model is imported from the PyPI package `astropt` (install with
`pip install --no-deps astropt==2.0.9 loralib einops`; only `astropt.model` is imported, never
`astropt.local_datasets`, which needs torchvision).

The preprocessing is *reproduced here, for comparison only*: it is the reference being measured, not
code we use. It follows the path upstream's training script takes by default (Hugging Face images):
`np.array(image).swapaxes(0, 2)`, an einops patchify on the uint8 array, a per-patch normalisation in
float32 cast to float16, then the spiral order by a Python `sorted(zip(indices, patches))` over the
1024 patch rows with the spiral index rebuilt for every image, a `torch.stack`, and a cast to float32.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from .shapes import ModelShape

INSTALL_HINT = "pip install --no-deps astropt==2.0.9 loralib einops"


def require_upstream():
    """Import upstream's `astropt.model`, or raise ImportError saying how to install it."""
    try:
        return importlib.import_module("astropt.model")
    except ImportError as error:
        raise ImportError(
            f"the benchmark compares against upstream astroPT, which is not importable ({error}); "
            f"install it with: {INSTALL_HINT}"
        ) from error


def build_upstream_gpt(shape: ModelShape, device: str = "cpu") -> torch.nn.Module:
    """Upstream's GPT at `shape`, as its training script builds it (one "images" modality, learned
    positions, "aim" tokeniser, no biases, causal SDPA attention)."""
    upstream = require_upstream()
    registry = upstream.ModalityRegistry(
        [
            upstream.ModalityConfig(
                name="images", input_size=shape.patch_dim, pos_input_size=1, patch_size=shape.patch_size, embed_pos=True
            )
        ]
    )
    config = upstream.GPTConfig(
        block_size=shape.num_patches,
        n_layer=shape.num_hidden_layers,
        n_head=shape.num_attention_heads,
        n_embd=shape.hidden_size,
        n_chan=shape.num_channels,
        bias=False,
        tokeniser="aim",
    )
    return upstream.GPT(config, registry, master_process=False).to(device)


def upstream_inputs(sequence: torch.Tensor) -> dict[str, torch.Tensor]:
    """Upstream's input dict for a (B, T, P) patch sequence: the patches and their positions 0..T-1."""
    batch, length = sequence.shape[:2]
    positions = torch.arange(length, device=sequence.device).expand(batch, length)
    return {"images": sequence, "images_positions": positions}


def upstream_train_batch(sequence: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Upstream's (X, Y) for next-patch training on a (B, T, P) sequence: X is patches 0..T-2 with their
    positions, Y is patches 1..T-1 (as its `process_modes` does for a single modality)."""
    inputs = upstream_inputs(sequence[:, :-1])
    return inputs, {"images": sequence[:, 1:]}


def upstream_adamw(model: torch.nn.Module, device: str, learning_rate: float = 1e-3) -> torch.optim.Optimizer:
    """Upstream's own optimizer factory (AdamW (0.9, 0.95), decay 0.1 on >= 2-D weights, fused on CUDA)."""
    return model.configure_optimizers(0.1, learning_rate, (0.9, 0.95), torch.device(device).type)


# ------------------------------------------------------------------------------------------------
# Reference preprocessing (the upstream per-image path, reproduced for measurement only)
# ------------------------------------------------------------------------------------------------


def reference_spiral_rank(grid_size: int) -> np.ndarray:
    """(grid_size, grid_size) array giving each raster cell its position in upstream's spiral sequence.

    Built the way upstream builds it for every image: peel the grid ring by ring (clockwise from the
    top-left corner, outside in), concatenate the rings, invert the walk into ranks, and count from the
    end so that the centre comes first.
    """
    grid = np.arange(grid_size * grid_size).reshape(grid_size, grid_size)
    walk = None
    while grid.size:
        ring = (grid[0, :], grid[1:, -1], grid[-1, :-1][::-1], grid[1:-1, 0][::-1])
        walk = np.r_[walk, np.concatenate(ring)] if walk is not None else np.concatenate(ring)
        grid = grid[1:-1, 1:-1]
    rank = np.empty(grid_size * grid_size, dtype=np.int64)
    rank[list(walk)] = list(range(grid_size * grid_size))
    return np.abs(rank - grid_size * grid_size + 1).reshape(grid_size, grid_size)


def reference_preprocess(image_hwc: np.ndarray, patch_size: int = 16) -> torch.Tensor:
    """One (H, W, C) uint8 image -> (T, P) float32 normalised patches in spiral order, the upstream way.

    The reference being measured (see the module docstring); our own path is `AstroPTPatchify`.
    Like upstream it reads the image as (C, W, H), so its patch grid is the transpose of ours.
    """
    import einops  # upstream's dependency; only the reference needs it

    galaxy = image_hwc.swapaxes(0, 2)
    patches = einops.rearrange(galaxy, "c (h p1) (w p2) -> (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)
    patches = torch.from_numpy(patches).to(torch.float32)
    std, mean = torch.std_mean(patches, dim=1, keepdim=True)
    patches = ((patches - mean) / (std + 1e-8)).to(torch.float16)
    side = int(np.sqrt(len(patches)))
    indices = einops.rearrange(reference_spiral_rank(side), "h w -> (h w)")
    ordered = [row for _, row in sorted(zip(indices, patches))]
    return torch.stack(ordered).to(torch.float)
