"""An independent, functional re-implementation of upstream astroPT's input pipeline and forward pass.

It runs straight off the ORIGINAL upstream state dict (upstream names, any of the v1/v2/v3 layouts), and
shares no code with `modeling_astropt.py` (not even the spiral order, computed here by another method), so
agreement between the two is evidence that the weight renaming and the config flags are right. Written
from the layouts and upstream's documented behaviour; no upstream code is imported.

Upstream's pipeline for one image file (and, for images+spectra models, `upstream_multimodal_forward`
below):
    np.array(pil_image).swapaxes(0, 2)              -> (C, W, H): the patch grid is the image's transpose
    "c (h p1) (w p2) -> (h w) (p1 p2 c)"           -> patches in raster order of that grid
    (x - mean) / (unbiased std + 1e-8), per patch   -> standardised patch vectors
    spiral order                                     -> the sequence
    model input = the sequence without its last patch, positions 0..T-2 (next-patch objective "ar"),
                  or the whole sequence, positions 0..T-1 (masked objective "mae")

The masked forward (upstream `objective="mae"`): the tokeniser embeds every patch, a learned mask token
replaces the embedding at the masked positions, the position embedding is added to every token, all
blocks attend bidirectionally, and the decoder maps every position back to a patch; the loss is the
Huber loss averaged over each patch's values, then over the masked positions only, against targets that
`norm_pix_loss` standardises per patch (mean, unbiased variance + 1e-6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .upstream_formats import FORMAT_V1, FORMAT_V2


def upstream_spiral_order(grid: int) -> torch.Tensor:
    """Raster indices of a `grid` x `grid` patch grid in upstream's spiral sequence order.

    Upstream's spiral is its clockwise walk from the top-left corner, ring by ring inwards, played
    backwards, so the sequence starts at the centre and winds outwards. Rather than walking the grid (as
    `modeling_astropt.spiral_order` does), this ranks every cell by where that walk would meet it, ring
    first, then the distance along its ring, and sorts on that rank, so the two orders come from
    different computations and a mistake in either shows as a disagreement.
    """

    def walk_rank(cell: int) -> tuple[int, int]:
        row, col = divmod(cell, grid)
        ring = min(row, col, grid - 1 - row, grid - 1 - col)
        first, last = ring, grid - 1 - ring  # the ring's first and last row (and column)
        side = last - first  # steps along one side of the ring
        if row == first:
            along = col - first  # top side, left to right
        elif col == last:
            along = side + row - first  # right side, downwards
        elif row == last:
            along = 2 * side + last - col  # bottom side, right to left
        else:
            along = 3 * side + last - row  # left side, upwards
        return ring, along

    return torch.tensor(sorted(range(grid * grid), key=walk_rank, reverse=True), dtype=torch.long)


def upstream_patch_sequence(pixel_values: torch.Tensor, patch_size: int, spiral: bool = True) -> torch.Tensor:
    """Upstream's full patch sequence (B, T, P) for images given as our `pixel_values` (B, C, H, W).

    `pixel_values` is the image in its natural orientation; upstream reads it transposed, (C, W, H).
    Scaling (e.g. /255) does not matter beyond the 1e-8 in the normalisation.
    """
    batch, channels, height, width = pixel_values.shape
    upstream_view = pixel_values.to(torch.float32).transpose(-1, -2)  # (B, C, W, H)
    rows, cols = width // patch_size, height // patch_size
    patches = (
        upstream_view.reshape(batch, channels, rows, patch_size, cols, patch_size)
        .permute(0, 2, 4, 3, 5, 1)  # b h w p1 p2 c
        .reshape(batch, rows * cols, patch_size * patch_size * channels)
    )
    std, mean = torch.std_mean(patches, dim=-1, keepdim=True)  # unbiased, as torch.std_mean defaults
    patches = (patches - mean) / (std + 1e-8)
    if spiral:
        if rows != cols:
            raise ValueError(f"spiral order needs a square patch grid, got {rows} x {cols}")
        patches = patches[:, upstream_spiral_order(rows)]
    return patches


@dataclass
class ReferenceOutputs:
    """Next-patch predictions (B, T, P) and the output of every block (before the final LayerNorm)."""

    predictions: torch.Tensor
    block_outputs: list[torch.Tensor]


def _linear(state: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, state[f"{name}.weight"].float(), _maybe(state, f"{name}.bias"))


def _maybe(state: dict[str, torch.Tensor], key: str) -> torch.Tensor | None:
    return state[key].float() if key in state else None


def _layer_norm(state: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    weight = state[f"{name}.weight"].float()
    return F.layer_norm(x, weight.shape, weight, _maybe(state, f"{name}.bias"), 1e-5)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # the tanh approximation upstream (and GPT-2) use, written out
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _attention(
    state: dict[str, torch.Tensor], name: str, x: torch.Tensor, num_heads: int, causal: bool = True
) -> torch.Tensor:
    batch, length, width = x.shape
    head_dim = width // num_heads
    q, k, v = _linear(state, f"{name}.c_attn", x).split(width, dim=-1)
    q, k, v = (t.view(batch, length, num_heads, head_dim).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(head_dim)
    if causal:
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    weights = scores.softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, length, width)
    return _linear(state, f"{name}.c_proj", out)


def _modality_prefixes(fmt: str, modality: str = "images") -> tuple[str, str, str]:
    """(tokeniser, position table weight, decoder) names of a v2/v3 modality."""
    if fmt == FORMAT_V2:
        return f"transformer.wte.{modality}", f"transformer.wpe.{modality}.wpe.weight", f"lm_head.{modality}"
    return f"encoders.{modality}", f"embedders.{modality}.wpe.weight", f"decoders.{modality}"


def _mirrored_mlp(state: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    """v2/v3 tokeniser or decoder: "aim" (c_fc, GELU, c_proj) or "affine" (c_fc only)."""
    x = _linear(state, f"{name}.c_fc", x)
    if f"{name}.c_proj.weight" in state:
        x = _linear(state, f"{name}.c_proj", _gelu_tanh(x))
    return x


def _image_tokens(state: dict[str, torch.Tensor], fmt: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(token embeddings, position table) of the image tokeniser in layout `fmt`."""
    if fmt == FORMAT_V1:
        tokens = F.relu(_linear(state, "transformer.wte.2", F.relu(_linear(state, "transformer.wte.0", x))))
        return tokens, state["transformer.wpe.weight"].float()
    encoder, position_key, _ = _modality_prefixes(fmt)
    return _mirrored_mlp(state, encoder, x), state[position_key].float()


def _blocks(state: dict[str, torch.Tensor], hidden: torch.Tensor, num_heads: int, causal: bool):
    """Every transformer block, then the final LayerNorm: (normed output, list of block outputs)."""
    block_outputs = []
    num_layers = 1 + max(int(key.split(".")[2]) for key in state if key.startswith("transformer.h."))
    for index in range(num_layers):
        name = f"transformer.h.{index}"
        attention_in = _layer_norm(state, f"{name}.ln_1", hidden)
        hidden = hidden + _attention(state, f"{name}.attn", attention_in, num_heads, causal)
        mlp_in = _layer_norm(state, f"{name}.ln_2", hidden)
        hidden = hidden + _linear(state, f"{name}.mlp.c_proj", _gelu_tanh(_linear(state, f"{name}.mlp.c_fc", mlp_in)))
        block_outputs.append(hidden)
    return _layer_norm(state, "transformer.ln_f", hidden), block_outputs


@torch.no_grad()
def upstream_reference_forward(
    state_dict: dict[str, torch.Tensor],
    fmt: str,
    num_heads: int,
    inputs: torch.Tensor,
    causal: bool = True,
    masked_positions: torch.Tensor | None = None,
) -> ReferenceOutputs:
    """Upstream's forward for `inputs` (B, T, P): predictions for every position and all block outputs.

    `state_dict` uses upstream names without the `_orig_mod.` prefix; `fmt` is "v1", "v2" or "v3".
    `causal=False` runs the blocks bidirectionally (upstream's `attn_type="full"`, and what its `"prefix"`
    models computed); `masked_positions` (B, T) bool puts the state dict's `mask_token` in place of the
    token embedding wherever it is True (upstream's masked objective), before the positions are added.
    """
    state = state_dict
    x = inputs.to(torch.float32)
    tokens, position_table = _image_tokens(state, fmt, x)
    if masked_positions is not None:
        mask_token = state["mask_token"].float().reshape(1, 1, -1)
        tokens = tokens * (~masked_positions)[..., None] + mask_token * masked_positions[..., None]
    hidden, block_outputs = _blocks(state, tokens + position_table[: x.shape[1]], num_heads, causal)

    if fmt == FORMAT_V1:
        head = F.relu(_linear(state, "lm_head.0", hidden))
        head = F.relu(_linear(state, "lm_head.2", head))
        predictions = _linear(state, "lm_head.4", head)
    else:
        predictions = _mirrored_mlp(state, _modality_prefixes(fmt)[2], hidden)
    return ReferenceOutputs(predictions=predictions, block_outputs=block_outputs)


def upstream_embedding(outputs: ReferenceOutputs, fmt: str) -> torch.Tensor:
    """Upstream's default image embedding: the mean over positions of the layer its `get_embeddings` uses.

    v1 returns the last block's output; v2 and later `draw_from_centre`, the output of block n_layer // 2.
    Neither applies the final LayerNorm.
    """
    blocks = outputs.block_outputs
    chosen = blocks[-1] if fmt == FORMAT_V1 else blocks[len(blocks) // 2]
    return chosen.mean(dim=1)


def _huber(predictions: torch.Tensor, targets: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Elementwise Huber loss, written out: quadratic within `delta`, linear outside."""
    error = (predictions - targets).abs()
    return torch.where(error < delta, 0.5 * error**2, delta * (error - 0.5 * delta))


def upstream_masked_loss(
    predictions: torch.Tensor, sequence: torch.Tensor, masked_positions: torch.Tensor, norm_pix_loss: bool = False
) -> torch.Tensor:
    """Upstream's masked-objective loss: per-patch mean Huber, averaged over the masked positions only.

    With `norm_pix_loss` each target patch is first standardised by its mean and unbiased variance + 1e-6.
    """
    targets = sequence.to(torch.float32)
    if norm_pix_loss:
        count = targets.shape[-1]
        mean = targets.sum(dim=-1, keepdim=True) / count
        variance = ((targets - mean) ** 2).sum(dim=-1, keepdim=True) / (count - 1)
        targets = (targets - mean) / torch.sqrt(variance + 1e-6)
    per_patch = _huber(predictions.float(), targets).mean(dim=-1)
    weights = masked_positions.to(per_patch.dtype)
    return (per_patch * weights).sum() / weights.sum()


def upstream_random_mask(
    batch: int, length: int, mask_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, T) bool, upstream's rule: each position masked with probability `mask_ratio`, and one random
    position of any image left without a masked one."""
    mask = torch.rand(batch, length, generator=generator) < mask_ratio
    for row in (~mask.any(dim=1)).nonzero().flatten().tolist():
        mask[row, torch.randint(length, (1,), generator=generator)] = True
    return mask


# --- images + spectra (PyPI astropt 2.0.9's multimodal GPT) --------------------------------------------------
def upstream_spectrum_patches(
    flux: torch.Tensor, wavelengths: torch.Tensor, patch_size: int, offset: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's dataset for (B, L) flux and wavelengths (Angstrom): the wavelengths are scaled to
    `(wavelength - offset) / scale` first, then both are zero-padded at the end to whole patches and cut into
    runs of `patch_size` consecutive samples -> (values, position inputs), each (B, S, patch_size)."""
    batch, length = flux.shape
    num_patches = -(-length // patch_size)
    values = flux.new_zeros(batch, num_patches * patch_size)
    positions = flux.new_zeros(batch, num_patches * patch_size)
    values[:, :length] = flux
    positions[:, :length] = (wavelengths.to(flux.dtype) - offset) / scale
    return values.view(batch, num_patches, patch_size), positions.view(batch, num_patches, patch_size)


@dataclass
class MultimodalReferenceOutputs:
    """Upstream's multimodal outputs: image predictions (B, T-1, P) for image patches 1..T-1, spectrum
    predictions (B, S, p) for spectrum patches 0..S-1, every block's output, and T."""

    image_predictions: torch.Tensor
    spectrum_predictions: torch.Tensor
    block_outputs: list[torch.Tensor]
    num_image_patches: int


@torch.no_grad()
def upstream_multimodal_forward(
    state_dict: dict[str, torch.Tensor],
    fmt: str,
    num_heads: int,
    image_sequence: torch.Tensor,
    spectrum_values: torch.Tensor,
    spectrum_positions: torch.Tensor | None,
) -> MultimodalReferenceOutputs:
    """Upstream's forward over every image patch (B, T, P) and then every spectrum patch (B, S, p).

    Each modality has its tokeniser; the images add rows 0..T-1 of their table; the spectra add their
    position encoder's reading of `spectrum_positions` (upstream `embed_pos=False`) or, when the state dict
    holds a spectra table, rows 0..S-1 of it. The blocks run causally over the whole sequence; the image
    decoder reads positions 0..T-2 and the spectrum decoder positions T-1..T+S-2 (so the last image position
    predicts the first spectrum patch).
    """
    state = state_dict
    image_sequence = image_sequence.to(torch.float32)
    num_image, num_spectrum = image_sequence.shape[1], spectrum_values.shape[1]
    image_tokens, image_table = _image_tokens(state, fmt, image_sequence)
    encoder, table_key, decoder = _modality_prefixes(fmt, "spectra")
    spectrum_tokens = _mirrored_mlp(state, encoder, spectrum_values.to(torch.float32))
    if table_key in state:
        spectrum_places = state[table_key].float()[:num_spectrum].expand(len(spectrum_values), -1, -1)
    else:
        position_encoder = table_key.removesuffix(".wpe.weight")
        spectrum_places = _mirrored_mlp(state, position_encoder, spectrum_positions.to(torch.float32))
    hidden = torch.cat([image_tokens + image_table[:num_image], spectrum_tokens + spectrum_places], dim=1)
    hidden, block_outputs = _blocks(state, hidden, num_heads, causal=True)
    image_decoder = _modality_prefixes(fmt)[2]
    return MultimodalReferenceOutputs(
        image_predictions=_mirrored_mlp(state, image_decoder, hidden[:, : num_image - 1]),
        spectrum_predictions=_mirrored_mlp(state, decoder, hidden[:, num_image - 1 : num_image - 1 + num_spectrum]),
        block_outputs=block_outputs,
        num_image_patches=num_image,
    )


def upstream_multimodal_embeddings(outputs: MultimodalReferenceOutputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's `get_embeddings` (draw_from_centre): block n_layer // 2, split by modality, each averaged
    over its positions -> (image embedding, spectrum embedding), each (B, D)."""
    centre = outputs.block_outputs[len(outputs.block_outputs) // 2]
    split = outputs.num_image_patches
    return centre[:, :split].mean(dim=1), centre[:, split:].mean(dim=1)


def upstream_multimodal_loss(
    outputs: MultimodalReferenceOutputs,
    image_sequence: torch.Tensor,
    spectrum_values: torch.Tensor,
    image_weight: float,
    spectrum_weight: float,
) -> torch.Tensor:
    """Upstream's loss: the mean Huber loss of each modality against its targets (the image without its
    first patch, the spectrum whole) times its weight, summed and divided by the number of modalities."""
    image_loss = _huber(outputs.image_predictions, image_sequence[:, 1:].float()).mean()
    spectrum_loss = _huber(outputs.spectrum_predictions, spectrum_values.float()).mean()
    return (image_weight * image_loss + spectrum_weight * spectrum_loss) / 2
