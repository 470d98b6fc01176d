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
  position and the masked loss, and the embedding of the unmasked image;
* images + spectra: the same images and the same spectra (flux and wavelengths in Angstrom, one patch short
  of whole so the zero padding is exercised; ours through `spectrum_to_patches`, upstream's through its
  dataset's scaling and padding), predictions of both modalities, the embedding of each, and the loss on
  spectra of whole patches (upstream counts its zero padding in the loss; ours leaves padding out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .reference_forward import (
    upstream_embedding,
    upstream_masked_loss,
    upstream_multimodal_embeddings,
    upstream_multimodal_forward,
    upstream_multimodal_loss,
    upstream_patch_sequence,
    upstream_random_mask,
    upstream_reference_forward,
    upstream_spectrum_patches,
)
from .upstream_formats import UpstreamWeights

PARITY_TOLERANCE = 1e-4  # fp32; scaled by the size of the reference values when they exceed 1


@dataclass
class ParityResult:
    """Largest absolute differences between the converted model and the reference, and the allowed one."""

    prediction_diff: float
    embedding_diff: float
    allowed: float
    loss_diff: float | None = None  # masked models: the loss for the same mask; multimodal: the loss
    spectrum_prediction_diff: float | None = None  # images+spectra models

    @property
    def passed(self) -> bool:
        optional = [diff for diff in (self.loss_diff, self.spectrum_prediction_diff) if diff is not None]
        return max([self.prediction_diff, self.embedding_diff, *optional]) <= self.allowed


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


def _parity_spectra(config, batch: int, generator: torch.Generator, whole_patches: bool):
    """Random flux (a few units, as DESI's 1e-17 erg/s/cm2/A) on a DESI-like wavelength range, filling the
    spectrum room left after the image: one patch short of whole unless `whole_patches`."""
    size = config.spectrum_patch_size
    room = min(config.spectrum_max_patches, config.max_position_embeddings - config.num_patches)
    length = room * size - (0 if whole_patches or size == 1 else size // 2)
    flux = torch.randn(batch, length, generator=generator) * 3.0
    wavelengths = torch.linspace(3600.0, 9824.0, length).expand(batch, -1).contiguous()
    return flux, wavelengths


def _multimodal_parity(model, weights, num_heads, pixel_values, sequence, generator) -> ParityResult:
    config, state, fmt = model.config, weights.state_dict, weights.format
    batch = pixel_values.shape[0]
    diffs, references = {}, []
    for whole_patches in (False, True):
        flux, wavelengths = _parity_spectra(config, batch, generator, whole_patches)
        values, positions = upstream_spectrum_patches(flux, wavelengths, config.spectrum_patch_size,
                                                      config.spectrum_wavelength_offset,
                                                      config.spectrum_wavelength_scale)
        reference = upstream_multimodal_forward(state, fmt, num_heads, sequence, values, positions)
        spectra = {"spectrum_values": flux, "spectrum_wavelengths": wavelengths}
        ours = model(pixel_values=pixel_values, **spectra)
        if whole_patches:
            loss = upstream_multimodal_loss(reference, sequence, values, config.image_loss_weight,
                                            config.spectrum_loss_weight)
            diffs["loss"], references = _max_diff(ours.loss, loss), references + [loss]
            continue
        reference_embeddings = upstream_multimodal_embeddings(reference)
        ours_embeddings = [model.astropt.get_image_embeddings(pixel_values, **spectra, modality=name)
                           for name in ("images", "spectra")]
        diffs["images"] = _max_diff(ours.predictions[:, :-1], reference.image_predictions)
        diffs["spectra"] = _max_diff(ours.spectrum_predictions, reference.spectrum_predictions)
        diffs["embedding"] = max(_max_diff(a, b) for a, b in zip(ours_embeddings, reference_embeddings))
        references += [reference.image_predictions, reference.spectrum_predictions, *reference_embeddings]
    return ParityResult(prediction_diff=diffs["images"], embedding_diff=diffs["embedding"], loss_diff=diffs["loss"],
                        spectrum_prediction_diff=diffs["spectra"], allowed=_allowed(*references))


@torch.no_grad()
def check_parity(
    model: torch.nn.Module, weights: UpstreamWeights, num_heads: int, num_images: int = 2, seed: int = 0
) -> ParityResult:
    """Compare the converted model (in eval mode) with the upstream re-implementation on random images (and,
    for images+spectra models, random spectra)."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.rand(
        num_images, config.num_channels, config.image_size, config.image_size, generator=generator
    )
    sequence = upstream_patch_sequence(pixel_values, config.patch_size, spiral=config.patch_order == "spiral")
    if config.has_spectra:
        return _multimodal_parity(model, weights, num_heads, pixel_values, sequence, generator)
    if config.objective == "masked_patch":
        return _masked_parity(model, weights, num_heads, pixel_values, sequence, generator)
    return _next_patch_parity(model, weights, num_heads, pixel_values, sequence)
