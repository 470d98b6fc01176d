"""The parity check: the converted model against the independent re-implementation of upstream's forward.

Both sides get the same random images, each through its own pipeline (ours: the model's patchify and
order; upstream's: the reference's transposed reading, per-patch standardisation and spiral), so a wrong
flag shows as a difference. What is compared follows what upstream computed:

* next-patch, causal: predictions for patches 1..T-1 (ours runs all T; causality keeps the first T-1
  outputs exact) and the embedding;
* next-patch, non-causal (upstream `attn_type="full"` or `"prefix"`): both sides get upstream's input, the
  first T-1 patches, since with bidirectional attention the last patch would change every output; a
  kept `"prefix"` pattern runs with the whole input as prefix, which is what upstream computed;
* masked patches: the same mask, in sequence order, given to both sides; the reconstructions of every
  position and the masked loss, and the embedding of the unmasked image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .reference_forward import (
    upstream_embedding,
    upstream_masked_loss,
    upstream_patch_sequence,
    upstream_random_mask,
    upstream_reference_forward,
)
from .upstream_formats import UpstreamWeights

PARITY_TOLERANCE = 1e-4  # fp32; scaled by the size of the reference values when they exceed 1


@dataclass
class ParityResult:
    """Largest absolute differences between the converted model and the reference, and the allowed one."""

    prediction_diff: float
    embedding_diff: float
    allowed: float
    loss_diff: float | None = None  # masked models: the loss for the same mask

    @property
    def passed(self) -> bool:
        diffs = [self.prediction_diff, self.embedding_diff] + ([self.loss_diff] if self.loss_diff is not None else [])
        return max(diffs) <= self.allowed


def _allowed(*references: torch.Tensor) -> float:
    return PARITY_TOLERANCE * max(1.0, *(reference.abs().max().item() for reference in references))


def _max_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return (ours - reference).abs().max().item()


def _masked_parity(model, weights, num_heads, pixel_values, sequence, generator) -> ParityResult:
    config = model.config
    mask = upstream_random_mask(sequence.shape[0], sequence.shape[1], config.mask_ratio, generator)
    ours = model(pixel_values=pixel_values, bool_masked_pos=mask)
    ours_embedding = model.astropt.get_image_embeddings(pixel_values)
    state, fmt = weights.state_dict, weights.format
    reference = upstream_reference_forward(state, fmt, num_heads, sequence, causal=False, masked_positions=mask)
    reference_loss = upstream_masked_loss(reference.predictions, sequence, mask, config.norm_pix_loss)
    reference_embedding = upstream_embedding(upstream_reference_forward(state, fmt, num_heads, sequence, causal=False), fmt)
    return ParityResult(
        prediction_diff=_max_diff(ours.predictions, reference.predictions),
        embedding_diff=_max_diff(ours_embedding, reference_embedding),
        loss_diff=_max_diff(ours.loss, reference_loss),
        allowed=_allowed(reference.predictions, reference_embedding, reference_loss),
    )


def _next_patch_parity(model, weights, num_heads, pixel_values, sequence) -> ParityResult:
    causal = model.config.attention_pattern == "causal"
    if causal:
        ours = model(pixel_values=pixel_values).predictions[:, :-1]
        ours_embedding = model.astropt.get_image_embeddings(pixel_values)
    else:
        upstream_input = model.astropt.image_to_patches(pixel_values)[:, :-1]
        whole_prefix = {"prefix_length": upstream_input.shape[1]} if model.config.attention_pattern == "prefix" else {}
        ours = model(input_patches=upstream_input, **whole_prefix).predictions
        ours_embedding = model.astropt.get_image_embeddings(input_patches=upstream_input)
    reference = upstream_reference_forward(weights.state_dict, weights.format, num_heads, sequence[:, :-1], causal)
    reference_embedding = upstream_embedding(reference, weights.format)
    return ParityResult(
        prediction_diff=_max_diff(ours, reference.predictions),
        embedding_diff=_max_diff(ours_embedding, reference_embedding),
        allowed=_allowed(reference.predictions, reference_embedding),
    )


@torch.no_grad()
def check_parity(
    model: torch.nn.Module, weights: UpstreamWeights, num_heads: int, num_images: int = 2, seed: int = 0
) -> ParityResult:
    """Compare the converted model (in eval mode) with the upstream re-implementation on random images."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.rand(
        num_images, config.num_channels, config.image_size, config.image_size, generator=generator
    )
    sequence = upstream_patch_sequence(pixel_values, config.patch_size, spiral=config.patch_order == "spiral")
    if config.objective == "masked_patch":
        return _masked_parity(model, weights, num_heads, pixel_values, sequence, generator)
    return _next_patch_parity(model, weights, num_heads, pixel_values, sequence)
