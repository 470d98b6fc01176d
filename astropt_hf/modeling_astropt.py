"""AstroPT: a transformer that reads a galaxy image (and optionally its spectrum: image patches, then
spectrum patches, as upstream) as a sequence of patches and regresses patches. Two objectives share one
backbone: `next_patch` (a GPT: each position predicts the next patch, with causal or prefix attention) and
`masked_patch` (BERT-style: a learned mask token replaces some patch embeddings, attention is
bidirectional, and every position is reconstructed).

Read top to bottom: patch geometry (cut, order, normalise, and back; spectra), the tokenisers and embeddings
(with the mask token), attention (masks for each pattern, one dispatch through transformers' registry),
the transformer block, the backbone, then the heads (pretraining for both objectives, with generation and
inpainting; image classification). A "remote code" file copied next to every checkpoint: it imports only
torch, numpy, transformers and its siblings, so `AutoModel.from_pretrained(..., trust_remote_code=True)`
works without `astropt_hf` installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_astropt import AstroPTConfig

# ------------------------------------------------------------------------------------------------
# Patch geometry: image <-> sequence of patch vectors. The model owns it because the learned
# positions only make sense in the order the patches were cut and ordered.


def spiral_order(grid_size: int) -> np.ndarray:
    """Raster indices of a `grid_size` x `grid_size` grid in spiral order, from the centre outwards: the
    clockwise outside-in walk from the top-left corner, reversed, which is the order upstream astroPT trains
    in. `order[k]` is the raster index of sequence position `k`."""
    top, bottom, left, right = 0, grid_size - 1, 0, grid_size - 1
    walk: list[int] = []
    while top <= bottom and left <= right:
        walk += [top * grid_size + c for c in range(left, right + 1)]
        walk += [r * grid_size + right for r in range(top + 1, bottom + 1)]
        if top < bottom:
            walk += [bottom * grid_size + c for c in range(right - 1, left - 1, -1)]
        if left < right:
            walk += [r * grid_size + left for r in range(bottom - 1, top, -1)]
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return np.asarray(walk[::-1], dtype=np.int64)


def patch_order(config: AstroPTConfig) -> np.ndarray:
    """Raster index of every sequence position for the config's `patch_order`."""
    if config.patch_order == "spiral":
        return spiral_order(config.grid_size)
    return np.arange(config.num_patches, dtype=np.int64)


class AstroPTPatchify(nn.Module):
    """Cuts images into ordered, normalised patch vectors (laid out (p1 p2 c): pixel rows, pixel columns,
    bands) and puts patch sequences back; the two speed helpers are marked as such, the rest is geometry."""

    def __init__(self, config: AstroPTConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.grid_size = config.grid_size
        self.num_channels = config.num_channels
        self.patch_norm = config.patch_norm
        self.patch_norm_eps = config.patch_norm_eps
        self.transpose_patch_grid = config.transpose_patch_grid
        self._order = patch_order(config)
        # Index tensors are built lazily per device, never as buffers: buffers would be created on the meta
        # device by from_pretrained and are not part of the checkpoint anyway.
        self._index_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _grid_index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(order, rows, cols) on `device`: the raster index of each sequence position, and its grid cell."""
        if device not in self._index_cache:
            order = torch.as_tensor(self._order, device=device)
            self._index_cache[device] = (order, order // self.grid_size, order % self.grid_size)
        return self._index_cache[device]

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        expected = (self.num_channels, self.grid_size * self.patch_size, self.grid_size * self.patch_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; expected (batch, "
                             f"{', '.join(map(str, expected))}) as set by the config's num_channels and image_size")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float or uint8 -> (B, T, P) float32 patches in sequence order, normalised."""
        self.check_pixel_values(pixel_values)
        patches = self._cut_and_order(pixel_values)
        # `patches` is a fresh tensor: normalise it in place unless autograd needs it as it is
        return self.normalise(patches, inplace=not patches.requires_grad)

    # --- speed helpers: the same result as a plain reshape / gather / std_mean, with less memory traffic ---
    def _cut_and_order(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Speed helper. (B, C, H, W) -> (B, T, P) float32 patches in sequence order, not normalised. Cut and
        ordered in the input dtype (uint8: a quarter of the float32 traffic) by two copies of contiguous runs:
        to pixel-interleaved (B, rows, cols, C) (free for channels-last input), then whole patch rows;
        cutting from (C, H, W) would gather every value from C planes. Then one gather, one cast to float."""
        batch, g, p, c = pixel_values.shape[0], self.grid_size, self.patch_size, self.num_channels
        # upstream reads (C, W, H): transposing the image transposes both the grid and each patch
        dims = (0, 3, 2, 1) if self.transpose_patch_grid else (0, 2, 3, 1)
        interleaved = pixel_values.permute(*dims).contiguous()
        grid = interleaved.view(batch, g, p, g, p * c).transpose(2, 3)  # (B, grid row, grid col, p1, p2 * C)
        order = self._grid_index(pixel_values.device)[0]
        patches = grid.reshape(batch, g * g, p * p * c).index_select(1, order)
        if not patches.is_floating_point():
            scale = 1.0 / 255.0 if patches.dtype == torch.uint8 else 1.0
            patches = patches.float().mul_(scale)
        elif patches.dtype == torch.float64:
            patches = patches.float()
        return patches

    def normalise(self, patches: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Speed helper. Per-patch (or per-image) standardisation as upstream: minus the mean, over the unbiased
        std + eps, in vectorised passes instead of `torch.std_mean` (a double-precision Welford kernel, much
        slower on CPUs). Shifting by each patch's first value keeps the float32 mean accurate far from zero
        (e.g. a sky level of 1000). `inplace` overwrites `patches` instead of allocating."""
        if self.patch_norm == "none":
            return patches
        dims = (-1,) if self.patch_norm == "per_patch" else (-2, -1)
        count = math.prod(patches.shape[d] for d in dims)
        # the result does not depend on the shift, so it takes no part in autograd (and is copied before the
        # in-place subtraction overwrites it)
        shift = (patches[..., :1] if self.patch_norm == "per_patch" else patches[..., :1, :1]).detach().clone()
        centred = patches.sub_(shift) if inplace else patches - shift
        centred.sub_(centred.mean(dim=dims, keepdim=True))
        std = torch.linalg.vector_norm(centred, dim=dims, keepdim=True) / math.sqrt(count - 1)
        return centred.div_(std + self.patch_norm_eps) if inplace else centred / (std + self.patch_norm_eps)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, T, P) in sequence order -> (B, C, H, W); the inverse of ordering and cutting."""
        batch, g, p, c = patches.shape[0], self.grid_size, self.patch_size, self.num_channels
        _, rows, cols = self._grid_index(patches.device)
        grid = patches.new_empty(batch, g, g, p, p, c)
        grid[:, rows, cols] = patches.reshape(batch, -1, p, p, c)
        dims = (0, 5, 2, 4, 1, 3) if self.transpose_patch_grid else (0, 5, 1, 3, 2, 4)
        return grid.permute(*dims).reshape(batch, c, g * p, g * p)


@dataclass
class AstroPTSpectrumPatches:
    """A spectrum as the model's patches of `spectrum_patch_size` samples (zero-padded at the end, as upstream),
    each (B, S, size): `values` (bad and padded samples zeroed), `positions` (wavelength position input, 0 where
    padded; None if learned), `valid` (the good samples, the only ones in the loss); `start`: first patch index."""

    values: torch.Tensor
    positions: torch.Tensor | None
    valid: torch.Tensor | None = None
    start: int = 0


def patches_to_spectrum(patches: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """(B, S, spectrum_patch_size) -> (B, length): the inverse of the spectrum patching, padding dropped."""
    return patches.flatten(-2)[:, :length]


def spectrum_to_patches(config: AstroPTConfig, values: torch.Tensor, wavelengths: torch.Tensor | None = None,
                        mask: torch.Tensor | None = None) -> AstroPTSpectrumPatches:
    """(B, L) flux, (B, L) or (L,) wavelengths in Angstrom as observed, and an optional (B, L) mask (nonzero =
    good, as `AstroPTProcessor`'s `spectrum_mask`) -> the model's spectrum patches. Masked or non-finite
    samples are zeroed and never count in the loss; wavelengths <= 0 (padding) get position input 0."""
    size, length, encoding = config.spectrum_patch_size, values.shape[-1], config.spectrum_position_encoding
    if wavelengths is not None and wavelengths.dim() == 1:
        wavelengths = wavelengths.expand(len(values), -1)
    shapes = [tuple(tensor.shape) for tensor in (values, wavelengths, mask) if tensor is not None]
    if values.dim() != 2 or len(set(shapes)) > 1 or length > config.spectrum_max_patches * size:
        raise ValueError("spectrum_values, spectrum_wavelengths and spectrum_mask must be (batch, samples) alike, of "
                         f"at most spectrum_max_patches * spectrum_patch_size = {config.spectrum_max_patches * size} "
                         f"samples; got shapes {shapes}")
    if wavelengths is None and encoding == "wavelength":
        raise ValueError("this model places spectrum patches by wavelength: pass spectrum_wavelengths (Angstrom)")
    valid = torch.isfinite(values) if mask is None else torch.isfinite(values) & mask.bool()
    dtype = values.dtype if values.dtype in (torch.float16, torch.bfloat16) else torch.float32

    def cut(samples: torch.Tensor) -> torch.Tensor:
        return F.pad(samples, (0, -length % size)).unflatten(-1, (-1, size))

    positions = None
    if encoding == "wavelength":
        scaled = (wavelengths - config.spectrum_wavelength_offset) / config.spectrum_wavelength_scale
        positions = cut(torch.where(wavelengths > 0, scaled, 0).to(dtype))
    values = cut(torch.where(valid, values, 0).to(dtype))
    return AstroPTSpectrumPatches(values, positions, cut(valid.to(torch.uint8)).bool())


# ------------------------------------------------------------------------------------------------
# Patch tokeniser (patch vector -> hidden) and its mirror, the patch head (hidden -> patch).


class AstroPTPatchMLP(nn.Module):
    """A tokeniser (`encoder=True`: a patch of `size` values -> hidden) or its mirror, a head (hidden -> patch)."""

    def __init__(self, config: AstroPTConfig, size: int, encoder: bool):
        super().__init__()
        width, bias = config.hidden_size, config.use_bias
        inputs, outputs = (size, width) if encoder else (width, size)
        if config.patch_embedding == "relu_mlp" and encoder:  # upstream v1: always with biases
            layers = [nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()]
        elif config.patch_embedding == "relu_mlp":
            layers = [nn.Linear(inputs, 2 * width), nn.ReLU(), nn.Linear(2 * width, width), nn.ReLU(),
                      nn.Linear(width, outputs)]
        elif config.patch_embedding == "gelu_mlp":  # upstream v2 "aim"
            layers = [nn.Linear(inputs, 4 * width, bias=bias), nn.GELU(approximate="tanh"),
                      nn.Linear(4 * width, outputs, bias=bias)]
        else:  # upstream "affine"
            layers = [nn.Linear(inputs, outputs, bias=bias)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.mlp(inputs)


class AstroPTEmbeddings(nn.Module):
    """Patch tokeniser plus learned positions (counted along the sequence, not the image). A `masked_patch`
    model's `mask_token` replaces the embedding of every masked patch; positions are added to every token,
    masked or not, so the model knows where the patch it reconstructs sits. Spectrum tokens (after the image's)
    have their own tokeniser and positions: an MLP of each patch's wavelengths (upstream) or a table by index."""

    def __init__(self, config: AstroPTConfig):
        super().__init__()
        self.patch_embeddings = AstroPTPatchMLP(config, config.patch_dim, encoder=True)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        masked, width = config.objective == "masked_patch", config.hidden_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width)) if masked else None
        if config.has_spectra:
            self.spectrum_embeddings = AstroPTPatchMLP(config, config.spectrum_patch_size, encoder=True)
            by_wavelength = config.spectrum_position_encoding == "wavelength"
            self.spectrum_position_embeddings = (AstroPTPatchMLP(config, config.spectrum_patch_size, encoder=True)
                                                 if by_wavelength else nn.Embedding(config.spectrum_max_patches, width))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, patches: torch.Tensor | None, position_offset: int = 0, bool_masked_pos: torch.Tensor | None = None,
        spectrum: AstroPTSpectrumPatches | None = None,
    ) -> torch.Tensor:
        parts = [] if patches is None else [self._embed_image(patches, position_offset, bool_masked_pos)]
        parts += [] if spectrum is None else [self._embed_spectrum(spectrum)]
        return self.dropout(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])

    def _embed_image(self, patches: torch.Tensor, position_offset: int, bool_masked_pos: torch.Tensor | None):
        length = patches.shape[1]
        if position_offset + length > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence of {position_offset + length} patches is longer than max_position_embeddings="
                             f"{self.position_embeddings.num_embeddings}")
        tokens = self.patch_embeddings(patches)
        if bool_masked_pos is not None:
            tokens = torch.where(bool_masked_pos[..., None], self.mask_token.to(tokens.dtype), tokens)
        positions = torch.arange(position_offset, position_offset + length, device=patches.device)
        return tokens + self.position_embeddings(positions)

    def _embed_spectrum(self, spectrum: AstroPTSpectrumPatches) -> torch.Tensor:
        tokens = self.spectrum_embeddings(spectrum.values)
        if spectrum.positions is not None:
            return tokens + self.spectrum_position_embeddings(spectrum.positions)
        indices = torch.arange(spectrum.start, spectrum.start + tokens.shape[1], device=tokens.device)
        return tokens + self.spectrum_position_embeddings(indices)


# ------------------------------------------------------------------------------------------------
# Attention. The pattern becomes a boolean mask (True = may attend) or, where a kernel can do it
# without one, `is_causal` / no mask; the backend comes from transformers' attention registry.


def _causal_mask(query_length: int, key_length: int, device: torch.device) -> torch.Tensor:
    """Boolean mask for queries that are the last `query_length` of the keys."""
    return torch.ones(query_length, key_length, dtype=torch.bool, device=device).tril(key_length - query_length)


def attention_mask_for(
    pattern: str, query_length: int, key_length: int, prefix_length: int | torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """(mask, is_causal) for queries that are the last `query_length` of `key_length` positions. No mask where
    none is needed: bidirectional attention, a single query (the last position sees every key), a square
    causal pattern (`is_causal` lets SDPA use its fast kernels), a prefix covering every key (or None). A
    prefix mask shows each query the prefix and its past; a (B,) `prefix_length` gives (B, 1, Tq, Tk)."""
    if pattern == "bidirectional" or query_length == 1:
        return None, False
    if pattern == "causal":
        if query_length == key_length:
            return None, True
        return _causal_mask(query_length, key_length, device), False
    if prefix_length is None or (not torch.is_tensor(prefix_length) and prefix_length >= key_length):
        return None, False  # the whole sequence is the prefix
    causal = _causal_mask(query_length, key_length, device)
    keys = torch.arange(key_length, device=device)
    if torch.is_tensor(prefix_length):
        inside = keys < prefix_length.to(device).view(-1, 1, 1, 1)  # (B, 1, 1, Tk)
        return causal | inside, False
    return causal | (keys < prefix_length), False


def eager_attention_forward(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, with transformers' signature: (B, heads, T, head_dim) queries, keys and values
    and a boolean mask (or `is_causal=True` without one) in; (B, T, heads, head_dim) and the weights out."""
    if attention_mask is None and kwargs.get("is_causal") and query.shape[2] > 1:
        attention_mask = _causal_mask(query.shape[2], key.shape[2], query.device)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def attention_function(implementation: str | None):
    """The attention backend for `config._attn_implementation`; an unknown name raises (no silent fallback)."""
    if implementation in (None, "eager"):
        return eager_attention_forward
    if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):
        return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    if implementation not in ALL_ATTENTION_FUNCTIONS:  # transformers before get_interface
        raise KeyError(f"`{implementation}` is not an attention implementation registered with transformers")
    return ALL_ATTENTION_FUNCTIONS[implementation]


class AstroPTLayerCache:
    """One block's keys and values for incremental decoding, preallocated for `max_length` positions: each
    step writes its keys and values into the next free slots instead of concatenating (copying) the whole
    history, so a step costs the same at position 600 as at position 1."""

    def __init__(self, max_length: int):
        self.max_length, self.length = max_length, 0
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def append(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, heads, t, head_dim) keys and values after the cached ones; return all keys and values."""
        start, end = self.length, self.length + key.shape[2]
        if end > self.max_length:
            raise ValueError(f"key/value cache holds {self.max_length} positions; {end} were requested")
        if self.keys is None:
            shape = (*key.shape[:2], self.max_length, key.shape[-1])
            self.keys, self.values = key.new_empty(shape), value.new_empty(shape)
        self.keys[:, :, start:end] = key
        self.values[:, :, start:end] = value
        self.length = end
        if start == 0:  # nothing cached before: attend over the new keys as they are
            return key, value
        return self.keys[:, :, :end], self.values[:, :, :end]


class AstroPTAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection and an optional key/value cache."""

    def __init__(self, config: AstroPTConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        self.is_causal = config.attention_pattern == "causal"
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.use_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.out_proj._is_residual_projection = True  # GPT-2 scaled init
        self.resid_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, is_causal: bool = False,
        layer_cache: AstroPTLayerCache | None = None, output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, width = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
        if layer_cache is not None:
            key, value = layer_cache.append(key, value)
        implementation = self.config._attn_implementation
        attention = attention_function(implementation)
        if output_attentions:  # only the written-out attention returns its weights
            attention = eager_attention_forward
        elif attention_mask is not None and attention is not eager_attention_forward and implementation != "sdpa":
            raise ValueError(f"attn_implementation={implementation!r} takes no boolean attention mask; the "
                             f"{self.config.attention_pattern!r} pattern here needs 'sdpa' or 'eager'")
        attended, weights = attention(
            self, query, key, value, attention_mask, scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0, is_causal=is_causal,
        )
        attended = attended.reshape(batch, length, width)
        return self.resid_dropout(self.out_proj(attended)), (weights if output_attentions else None)


class AstroPTMLP(nn.Module):
    def __init__(self, config: AstroPTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.use_bias)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.use_bias)
        self.fc2._is_residual_projection = True
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # the fused tanh GELU is upstream's "new_gelu", in one kernel instead of six
        return self.dropout(self.fc2(F.gelu(self.fc1(hidden_states), approximate="tanh")))


# ------------------------------------------------------------------------------------------------
# Transformer block: pre-LayerNorm self-attention and GELU MLP (as GPT-2 / nanoGPT).


class AstroPTBlock(nn.Module):
    def __init__(self, config: AstroPTConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.use_bias)
        self.attention = AstroPTAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.use_bias)
        self.mlp = AstroPTMLP(config)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, is_causal: bool = False,
        layer_cache: AstroPTLayerCache | None = None, output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attention(
            self.layernorm_before(hidden_states), attention_mask, is_causal, layer_cache, output_attentions
        )
        hidden_states = hidden_states + attended
        hidden_states = hidden_states + self.mlp(self.layernorm_after(hidden_states))
        return hidden_states, weights


# ------------------------------------------------------------------------------------------------
# Backbone


class AstroPTPreTrainedModel(PreTrainedModel):
    config_class = AstroPTConfig
    base_model_prefix = "astropt"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["AstroPTBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: AstroPTConfig, *inputs, **kwargs):
        config.validate_astropt()  # keyword overrides to from_pretrained skip the config's own checks
        super().__init__(config, *inputs, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, initializer_range), residual projections scaled by 1/sqrt(2 * layers); the mask
        token N(0, initializer_range) as upstream."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "_is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, AstroPTEmbeddings) and module.mask_token is not None:
            nn.init.normal_(module.mask_token, mean=0.0, std=std)
        if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is not None:
            nn.init.zeros_(module.bias)


def pool_patch_embeddings(hidden_states: torch.Tensor, pooling: str, num_patches: int) -> torch.Tensor:
    """(B, T, D) -> (B, D) by the config's pooling."""
    if pooling == "mean":
        return hidden_states.mean(dim=1)
    if pooling == "mean_first_k":
        return hidden_states[:, :num_patches].mean(dim=1)
    if pooling == "last":
        return hidden_states[:, -1]
    raise ValueError(f"pooling={pooling!r} is not valid; expected 'mean', 'mean_first_k' or 'last'")


@dataclass
class _BlockOutputs:
    hidden: torch.Tensor  # after the final LayerNorm, or the raw output of the last block run
    kept: torch.Tensor | None  # the output of block `keep_block` (the pooling source), if asked
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None


class AstroPTModel(AstroPTPreTrainedModel):
    """The astroPT backbone: pixels (and spectra) -> ordered patch sequence -> transformer -> patch embeddings.
    Attention follows `config.attention_pattern`; a `prefix` model's features default to the whole image as
    prefix (every patch sees every patch), AIM's recipe for downstream use; pass `prefix_length` otherwise."""

    _keys_to_ignore_on_load_unexpected = [r"patch_head\.", r"spectrum_head\."]  # loading a pretraining checkpoint

    def __init__(self, config: AstroPTConfig):
        super().__init__(config)
        self.patchify = AstroPTPatchify(config)
        self.embeddings = AstroPTEmbeddings(config)
        self.layers = nn.ModuleList([AstroPTBlock(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.use_bias)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def image_to_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.patchify(pixel_values)

    def patch_sequence(self, pixel_values: torch.Tensor | None = None,
                       input_patches: torch.Tensor | None = None) -> torch.Tensor:
        """The ordered, normalised (B, T, P) sequence of whichever input was given."""
        if (pixel_values is None) == (input_patches is None):
            raise ValueError("pass exactly one of pixel_values (B, C, H, W) or input_patches (B, T, P)")
        return self.patchify(pixel_values) if input_patches is None else input_patches

    def model_inputs(self, pixel_values=None, input_patches=None, spectrum_values=None, spectrum_wavelengths=None,
                     spectrum_mask=None, spectrum_patches=None) -> tuple:
        """(image patch sequence or None, spectrum patches or None) from whichever inputs were given."""
        has_image = pixel_values is not None or input_patches is not None
        sequence = self.patch_sequence(pixel_values, input_patches) if has_image else None  # (B, T, P)
        if spectrum_values is not None:
            if spectrum_patches is not None or not self.config.has_spectra:
                raise ValueError(f"spectrum_values need a model with spectra, without spectrum_patches as well "
                                 f"(this model's modalities: {self.config.modalities})")
            spectrum_patches = spectrum_to_patches(self.config, spectrum_values, spectrum_wavelengths, spectrum_mask)
        elif spectrum_wavelengths is not None or spectrum_mask is not None:
            raise ValueError("spectrum_wavelengths and spectrum_mask need spectrum_values (B, L)")
        if sequence is None and spectrum_patches is None:
            raise ValueError("pass pixel_values (B, C, H, W) or input_patches (B, T, P), spectrum_values (B, L), "
                             "or images and spectra together")
        return sequence, spectrum_patches

    def pool(self, hidden: torch.Tensor, num_image_patches: int, modality: str | None = None,
             pooling: str | None = None, pooling_num_patches: int | None = None) -> torch.Tensor:
        """(B, T + S, D) -> (B, D) by the pooling over the image patches (`modality="images"`), the spectrum
        patches (`"spectra"`) or `"both"` (default: all present): the mean of the pooled embeddings, so each
        modality counts equally whatever its length."""
        spans = {"images": hidden[:, :num_image_patches], "spectra": hidden[:, num_image_patches:]}
        present = [name for name, span in spans.items() if span.shape[1] > 0]
        names = present if modality in (None, "both") else [modality]
        if not set(names) <= set(present) or (modality == "both" and len(present) < 2):
            raise ValueError(f"modality={modality!r} is not valid here; expected 'images', 'spectra' or 'both' "
                             f"among the inputs given ({', '.join(present)})")
        count = pooling_num_patches if pooling_num_patches is not None else self.config.pooling_num_patches
        pooled = [pool_patch_embeddings(spans[name], pooling or self.config.pooling, count) for name in names]
        return pooled[0] if len(pooled) == 1 else (pooled[0] + pooled[1]) / 2

    def _check_pattern_inputs(self, bool_masked_pos, prefix_length, sequence: torch.Tensor) -> None:
        if bool_masked_pos is not None:
            if self.config.objective != "masked_patch":
                raise ValueError(f"bool_masked_pos needs objective='masked_patch'; this model is "
                                 f"{self.config.objective!r}")
            if bool_masked_pos.shape != sequence.shape[:2] or bool_masked_pos.dtype != torch.bool:
                raise ValueError(f"bool_masked_pos must be a bool tensor of shape {tuple(sequence.shape[:2])} (batch, "
                                 f"patches); got {bool_masked_pos.dtype} {tuple(bool_masked_pos.shape)}")
        if prefix_length is not None:
            if self.config.attention_pattern != "prefix":
                raise ValueError(f"prefix_length needs attention_pattern='prefix'; this model is "
                                 f"{self.config.attention_pattern!r}")
            # tensors are checked by shape only: reading their values would synchronise with the GPU
            if (prefix_length.dim() > 1 or prefix_length.numel() not in (1, sequence.shape[0])
                    if torch.is_tensor(prefix_length) else
                    isinstance(prefix_length, bool) or not isinstance(prefix_length, int) or prefix_length < 0):
                raise ValueError(f"prefix_length must be an int >= 0, or a tensor of one length or of one per image "
                                 f"({sequence.shape[0]}); got {prefix_length!r}")

    def _run_blocks(
        self, sequence: torch.Tensor | None, *, spectrum: AstroPTSpectrumPatches | None = None,
        bool_masked_pos: torch.Tensor | None = None, prefix_length: int | torch.Tensor | None = None,
        past_key_values: list[AstroPTLayerCache] | None = None, num_blocks: int | None = None,
        keep_block: int | None = None, output_hidden_states: bool = False, output_attentions: bool = False,
    ) -> _BlockOutputs:
        """Embed and run the first `num_blocks` blocks (by default all of them, then the final LayerNorm; an
        explicit `num_blocks` returns that block's raw output). Stopping early is what makes middle-block
        embeddings cheap: upstream runs every block even when it keeps the middle one."""
        if sequence is not None:
            self._check_pattern_inputs(bool_masked_pos, prefix_length, sequence)
        offset = past_key_values[0].length if past_key_values else 0
        hidden = self.embeddings(sequence, offset, bool_masked_pos, spectrum)
        length = hidden.shape[1]
        mask, is_causal = attention_mask_for(self.config.attention_pattern, length, offset + length, prefix_length,
                                             hidden.device)
        all_hidden, attentions, kept = [hidden] if output_hidden_states else [], [], None
        for index, block in enumerate(self.layers[:num_blocks]):
            layer_cache = past_key_values[index] if past_key_values is not None else None
            if self.gradient_checkpointing and self.training and layer_cache is None:
                hidden, weights = self._gradient_checkpointing_func(block.__call__, hidden, mask, is_causal, None,
                                                                    output_attentions)
            else:
                hidden, weights = block(hidden, mask, is_causal, layer_cache, output_attentions)
            if index == keep_block:
                kept = hidden
            if output_hidden_states:
                all_hidden.append(hidden)
            if output_attentions:
                attentions.append(weights)
        if num_blocks is None:
            hidden = self.layernorm(hidden)
        return _BlockOutputs(hidden, kept, tuple(all_hidden) if output_hidden_states else None,
                             tuple(attentions) if output_attentions else None)

    def forward(
        self, pixel_values: torch.Tensor | None = None, input_patches: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None, prefix_length: int | torch.Tensor | None = None,
        past_key_values: list[AstroPTLayerCache] | None = None, spectrum_values: torch.Tensor | None = None,
        spectrum_wavelengths: torch.Tensor | None = None, spectrum_mask: torch.Tensor | None = None,
        spectrum_patches: AstroPTSpectrumPatches | None = None, output_attentions: bool | None = None,
        output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        pixel_values (`torch.Tensor` of shape (B, C, H, W)): images from `AstroPTImageProcessor` (float) or
            raw uint8 images (scaled by 1/255 here).
        input_patches (`torch.Tensor` of shape (B, T, P)): an ordered, normalised patch sequence instead (e.g.
            from `image_to_patches`).
        bool_masked_pos (`torch.BoolTensor` of shape (B, T)): `masked_patch` models; True marks the positions
            whose embedding is replaced by the mask token.
        prefix_length (`int`, or `torch.LongTensor` of shape (B,) or (1,)): `prefix` models; the first
            `prefix_length` positions attend bidirectionally, later ones causally. Default: the whole sequence.
        past_key_values (list of `AstroPTLayerCache`, one per block): earlier positions' keys and values,
            extended in place; the new patches continue the cached sequence.
        spectrum_values, spectrum_wavelengths, spectrum_mask (`torch.Tensor` (B, L)): models with spectra, as for
            `spectrum_to_patches` (or its `spectrum_patches`). The sequence is the image's patches, then the
            spectrum's (either alone works); the pooled output covers every modality given (see `pool`).
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        layer = self.config.resolve_embedding_layer()
        sequence, spectrum = self.model_inputs(pixel_values, input_patches, spectrum_values, spectrum_wavelengths,
                                               spectrum_mask, spectrum_patches)
        run = self._run_blocks(
            sequence, spectrum=spectrum, bool_masked_pos=bool_masked_pos, prefix_length=prefix_length,
            past_key_values=past_key_values, keep_block=layer, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions)
        source = run.hidden if layer == self.config.num_hidden_layers else run.kept
        pooled = self.pool(source, 0 if sequence is None else sequence.shape[1])
        output = BaseModelOutputWithPooling(last_hidden_state=run.hidden, pooler_output=pooled,
                                            hidden_states=run.hidden_states, attentions=run.attentions)
        return output if return_dict else output.to_tuple()

    def get_image_embeddings(
        self, pixel_values: torch.Tensor | None = None, input_patches: torch.Tensor | None = None,
        layer: str | int | None = None, pooling: str | None = None, pooling_num_patches: int | None = None,
        prefix_length: int | torch.Tensor | None = None, spectrum_values: torch.Tensor | None = None,
        spectrum_wavelengths: torch.Tensor | None = None, spectrum_mask: torch.Tensor | None = None,
        modality: str | None = None,
    ) -> torch.Tensor:
        """One embedding per galaxy, (B, D), running only the blocks the chosen layer needs. `layer`, `pooling`
        and `pooling_num_patches` default to the config's (`embedding_layer`, ...), `prefix_length` (prefix
        models) to the whole image; `modality` picks the patches pooled (see `pool`)."""
        index = self.config.resolve_embedding_layer(layer)
        num_blocks = None if index == self.config.num_hidden_layers else index + 1
        sequence, spectrum = self.model_inputs(pixel_values, input_patches, spectrum_values, spectrum_wavelengths,
                                               spectrum_mask)
        run = self._run_blocks(sequence, spectrum=spectrum, prefix_length=prefix_length, num_blocks=num_blocks)
        return self.pool(run.hidden, 0 if sequence is None else sequence.shape[1], modality, pooling,
                         pooling_num_patches)


# ------------------------------------------------------------------------------------------------
# Heads


@dataclass
class AstroPTForPreTrainingOutput(ModelOutput):
    """
    loss: `next_patch`: the regression loss (Huber or MSE) of the predictions of patches 1..T-1 (for a prefix
        model, of the patches after the prefix); `masked_patch`: the loss over the masked positions.
    predictions (B, T, P): `next_patch`: `[:, t]` predicts sequence patch t + 1 (the last looks past the image);
        `masked_patch`: the reconstruction of every position (standardised patches with `norm_pix_loss`).
    target_patches (B, T, P): the ordered, normalised input sequence; mask (B, T): `masked_patch`'s masked positions.
    Models with spectra also report `image_loss`, `spectrum_loss` (unweighted; `loss` is their weighted sum over
    the number of modalities present), `spectrum_predictions` (B, S, spectrum_patch_size), `[:, s]` predicting
    spectrum patch s (patch 0 from the last image position; NaN without an image), `spectrum_target_patches` and
    `spectrum_valid` (the samples in the loss).
    """

    loss: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None
    target_patches: torch.FloatTensor | None = None
    mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_loss: torch.FloatTensor | None = None
    spectrum_loss: torch.FloatTensor | None = None
    spectrum_predictions: torch.FloatTensor | None = None
    spectrum_target_patches: torch.FloatTensor | None = None
    spectrum_valid: torch.BoolTensor | None = None


class AstroPTForPreTraining(AstroPTPreTrainedModel):
    """astroPT with its patch head (and spectrum head): the pretraining objective, patch completion and
    image-to-spectrum generation (next-patch models), inpainting (masked-patch models) and image round trips."""

    def __init__(self, config: AstroPTConfig):
        super().__init__(config)
        self.astropt = AstroPTModel(config)
        self.patch_head = AstroPTPatchMLP(config, config.patch_dim, encoder=False)
        if config.has_spectra:
            self.spectrum_head = AstroPTPatchMLP(config, config.spectrum_patch_size, encoder=False)
        self.post_init()

    def image_to_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, T, P): the model's own patchify, normalisation and ordering."""
        return self.astropt.patchify(pixel_values)

    def patches_to_image(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, T, P) in sequence order -> (B, C, H, W): order undone and patches put back."""
        return self.astropt.patchify.unpatchify(patches)

    def elementwise_loss(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The configured loss (Huber or MSE) of every value, unreduced."""
        if self.config.loss == "huber":
            return F.huber_loss(predictions, targets, delta=self.config.huber_delta, reduction="none")
        return F.mse_loss(predictions, targets, reduction="none")

    def _spectrum_outputs(self, hidden: torch.Tensor, num_image_patches: int, spectrum: AstroPTSpectrumPatches) -> dict:
        """Spectrum predictions and loss. After T image patches, position T - 1 + s predicts spectrum patch s
        (upstream's boundary); without an image, position s - 1 does, and patch 0 has no prediction (NaN)."""
        count, first, start = spectrum.values.shape[1], int(num_image_patches == 0), max(num_image_patches - 1, 0)
        decoded = self.spectrum_head(hidden[:, start : start + count - first])
        predictions = F.pad(decoded, (0, 0, first, 0), value=math.nan)  # (B, S, size)
        outputs = dict(spectrum_predictions=predictions, spectrum_target_patches=spectrum.values,
                       spectrum_valid=spectrum.valid)
        if count > first:
            valid = spectrum.valid[:, first:]
            elementwise = self.elementwise_loss(predictions[:, first:].float(), spectrum.values[:, first:].float())
            outputs["spectrum_loss"] = (elementwise * valid).sum() / valid.sum().clamp(min=1)
        return outputs

    def random_patch_mask(self, batch_size: int, device: torch.device | None = None,
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, T) bool: round(mask_ratio * T) masked positions per image (at least one), drawn independently."""
        length = self.config.num_patches
        count = max(1, round(self.config.mask_ratio * length))
        chosen = torch.rand(batch_size, length, device=device, generator=generator).argsort(dim=1)[:, :count]
        return torch.zeros(batch_size, length, dtype=torch.bool, device=device).scatter_(1, chosen, True)

    def _default_prefix_length(self, length: int, device: torch.device) -> int | torch.Tensor:
        """Training draws one prefix length per batch, uniform in [1, T-1] (AIM), as a (1,) tensor on the device
        (no host synchronisation; one torch.compile graph for every length); evaluation uses half the sequence,
        so validation losses compare. (Not the whole image, as for features: nothing would be left to predict.)"""
        if self.training:
            return torch.randint(1, max(length, 2), (1,), device=device)
        return max(1, length // 2)

    def _next_patch_loss(self, predictions, sequence, prefix_length) -> torch.Tensor | None:
        length = sequence.shape[1]
        if length <= 1:
            return None
        elementwise = self.elementwise_loss(predictions[:, :-1].float(), sequence[:, 1:].float())
        if prefix_length is None:
            return elementwise.mean()
        # prediction t is of patch t + 1: count the patches from index prefix_length on
        prefix = torch.as_tensor(prefix_length, device=sequence.device).reshape(-1, 1)
        counted = (torch.arange(1, length, device=sequence.device) >= prefix).expand(sequence.shape[0], -1)
        return (elementwise.mean(dim=-1) * counted).sum() / counted.sum().clamp(min=1)

    def _masked_patch_loss(self, predictions, sequence, mask) -> torch.Tensor:
        targets = sequence.float()
        if self.config.norm_pix_loss:
            mean, var = targets.mean(dim=-1, keepdim=True), targets.var(dim=-1, keepdim=True)
            targets = (targets - mean) / (var + 1e-6).sqrt()
        per_patch = self.elementwise_loss(predictions.float(), targets).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum().clamp(min=1)

    def forward(
        self, pixel_values: torch.Tensor | None = None, input_patches: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None, prefix_length: int | torch.Tensor | None = None,
        spectrum_values: torch.Tensor | None = None, spectrum_wavelengths: torch.Tensor | None = None,
        spectrum_mask: torch.Tensor | None = None, output_attentions: bool | None = None,
        output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs,
    ) -> AstroPTForPreTrainingOutput | tuple:
        r"""
        bool_masked_pos (`torch.BoolTensor` of shape (B, T)): `masked_patch` models; True marks a masked position
            (the BEiT/SimMIM convention). Default: a random mask of `mask_ratio` per image.
        prefix_length (`int` or `torch.LongTensor` of shape (B,)): `prefix` models; patches inside the prefix
            attend bidirectionally and are not predicted. Default: random per batch in training, else half.
        spectrum_values, spectrum_wavelengths, spectrum_mask: as for `AstroPTModel` (masked, non-finite and
            padded spectrum samples never count in the loss)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        sequence, spectrum = self.astropt.model_inputs(pixel_values, input_patches, spectrum_values,
                                                       spectrum_wavelengths, spectrum_mask)
        masked = self.config.objective == "masked_patch"
        if masked and bool_masked_pos is None:
            bool_masked_pos = self.random_patch_mask(sequence.shape[0], sequence.device)
        if not masked and self.config.attention_pattern == "prefix" and prefix_length is None:
            prefix_length = self._default_prefix_length(sequence.shape[1], sequence.device)
        outputs = self.astropt(input_patches=sequence, spectrum_patches=spectrum, bool_masked_pos=bool_masked_pos,
                               prefix_length=prefix_length, output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states, return_dict=True)
        hidden, length = outputs.last_hidden_state, 0 if sequence is None else sequence.shape[1]
        predictions = loss = None
        if sequence is not None:
            predictions = self.patch_head(hidden[:, :length])
            loss = (self._masked_patch_loss(predictions, sequence, bool_masked_pos) if masked
                    else self._next_patch_loss(predictions, sequence, prefix_length))
        extra = self._spectrum_outputs(hidden, length, spectrum) if spectrum is not None else {}
        if self.config.has_spectra:  # each modality's loss times its weight, over the number present (upstream)
            weighted = [part * weight for part, weight in ((loss, self.config.image_loss_weight),
                        (extra.get("spectrum_loss"), self.config.spectrum_loss_weight)) if part is not None]
            extra["image_loss"], loss = loss, sum(weighted) / len(weighted) if weighted else None
        output = AstroPTForPreTrainingOutput(
            loss=loss, predictions=predictions, target_patches=sequence, mask=bool_masked_pos if masked else None,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions, **extra)
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def fill_masked_patches(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
        """Inpainting (`masked_patch` models): (B, C, H, W) images with the patches marked in `bool_masked_pos`
        (B, T, sequence order) replaced by the reconstruction, in the model's patch space: unmasked patches are
        `patches_to_image(image_to_patches(pixel_values))` (`pixel_values` itself for `patch_norm="none"`). With
        `norm_pix_loss` reconstructions are standardised patches: a masked patch's mean and variance are unknown."""
        if self.config.objective != "masked_patch":
            raise ValueError(f"fill_masked_patches needs objective='masked_patch'; this model is "
                             f"{self.config.objective!r}")
        output = self(pixel_values=pixel_values, bool_masked_pos=bool_masked_pos, return_dict=True)
        filled = torch.where(output.mask[..., None], output.predictions.to(output.target_patches.dtype),
                             output.target_patches)
        return self.patches_to_image(filled)

    def _check_generation(self, prompt_length: int, total: int) -> None:
        if self.config.objective != "next_patch" or self.config.attention_pattern == "bidirectional":
            raise ValueError(
                "generate_patches needs objective='next_patch' with attention_pattern 'causal' or 'prefix'; this "
                f"model is {self.config.objective!r} with {self.config.attention_pattern!r} attention"
                + (" (use fill_masked_patches)" if self.config.objective == "masked_patch" else "")
            )
        if total - 1 > self.config.max_position_embeddings:
            raise ValueError(f"prompt of {prompt_length} patches plus {total - prompt_length} new ones exceeds "
                             f"max_position_embeddings={self.config.max_position_embeddings}")

    @staticmethod
    def _with_noise(patch: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
        if temperature > 0:  # a regression output plus Gaussian noise of std `temperature`, as upstream
            noise = torch.randn(patch.shape, generator=generator, device=patch.device, dtype=patch.dtype)
            patch = patch + temperature * noise
        return patch

    @torch.no_grad()
    def generate_patches(
        self, prompt_patches: torch.Tensor, num_new_patches: int, temperature: float = 0.0, use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue a (B, T0, P) prompt in sequence order by `num_new_patches`; returns (B, T0 + N, P). Each new
        patch is the head's output plus Gaussian noise of std `temperature` (0: none), as upstream. A prefix
        model reads the prompt as its prefix. `use_cache` keeps keys and values: one position per forward."""
        if num_new_patches <= 0:
            return prompt_patches
        prompt_length = prompt_patches.shape[1]
        total = prompt_length + num_new_patches
        self._check_generation(prompt_length, total)
        prefix_length = prompt_length if self.config.attention_pattern == "prefix" else None
        # the last new patch is never fed back, so the cache needs total - 1 positions
        cache = [AstroPTLayerCache(total - 1) for _ in self.astropt.layers] if use_cache else None
        sequence = None  # (B, total, P), allocated once the first patch shows the output dtype
        step_input = prompt_patches
        for position in range(prompt_length, total):
            step_prefix = prefix_length if cache is None or position == prompt_length else None
            hidden = self.astropt(input_patches=step_input, prefix_length=step_prefix, past_key_values=cache,
                                  return_dict=True, output_attentions=False,
                                  output_hidden_states=False).last_hidden_state
            new_patch = self._with_noise(self.patch_head(hidden[:, -1:]), temperature, generator)
            if sequence is None:  # the dtype a concatenation of prompt and patches would have
                dtype = torch.promote_types(prompt_patches.dtype, new_patch.dtype)
                sequence = prompt_patches.new_empty((prompt_patches.shape[0], total, prompt_patches.shape[2]), dtype=dtype)
                sequence[:, :prompt_length] = prompt_patches
            sequence[:, position : position + 1] = new_patch  # written in place: no copy of the history
            step_input = new_patch if use_cache else sequence[:, : position + 1]
        return sequence

    @torch.no_grad()
    def generate_spectrum(
        self, pixel_values: torch.Tensor | None = None, spectrum_wavelengths: torch.Tensor | None = None,
        num_patches: int | None = None, temperature: float = 0.0, use_cache: bool = True,
        generator: torch.Generator | None = None, input_patches: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Continue images into their spectra: (B, L) predicted flux on `spectrum_wavelengths` ((B, L) or (L,),
        Angstrom, as for `forward`). The last image position predicts spectrum patch 0; each new patch is fed
        back with its wavelengths to predict the next, with the key/value cache as in `generate_patches`
        (`temperature` likewise). `num_patches` stops early; without wavelengths (learned positions), it is due."""
        sequence, size = self.astropt.patch_sequence(pixel_values, input_patches), self.config.spectrum_patch_size
        positions = length = None  # every patch's position input (None if learned); samples in the spectrum
        if spectrum_wavelengths is not None:
            wavelengths = torch.as_tensor(spectrum_wavelengths, device=sequence.device).expand(len(sequence), -1)
            length = wavelengths.shape[1]
            positions = spectrum_to_patches(self.config, wavelengths * 0, wavelengths).positions
        available = self.config.spectrum_max_patches if length is None else -(-length // size)
        count = min(num_patches or available, available)
        if not self.config.has_spectra or (length is None and num_patches is None) or count <= 0:
            raise ValueError(f"generate_spectrum needs a model with spectra (modalities: {self.config.modalities}) "
                             f"and spectrum_wavelengths or num_patches in 1..{available}; got {num_patches!r}")
        patches = sequence.new_zeros(len(sequence), count, size, dtype=torch.float32)
        cache = [AstroPTLayerCache(sequence.shape[1] + count - 1) for _ in self.astropt.layers] if use_cache else None
        hidden = self.astropt(input_patches=sequence, past_key_values=cache, return_dict=True).last_hidden_state
        for index in range(count):
            new_patch = self._with_noise(self.spectrum_head(hidden[:, -1:]), temperature, generator)
            patches[:, index : index + 1] = new_patch
            if index + 1 < count:  # with the cache only the new patch is fed back, else the whole sequence
                fed = slice(index if use_cache else 0, index + 1)
                spectrum = AstroPTSpectrumPatches(patches[:, fed], None if positions is None else positions[:, fed],
                                                  start=fed.start)
                hidden = self.astropt(input_patches=None if use_cache else sequence, spectrum_patches=spectrum,
                                      past_key_values=cache, return_dict=True).last_hidden_state
        return patches_to_spectrum(patches, length)


def binned_pdf_nll(logits: torch.Tensor, labels: torch.Tensor, edges: torch.Tensor, smoothing: float = 0.0):
    """Mean of -log(p_bin / bin width): each label's likelihood under the piecewise-constant density that
    softmax(logits) puts on the bins `edges` (labels outside the range count in the end bins). With `smoothing`
    > 0 the one-hot target is a Gaussian of that many mean bin widths, so a label also teaches its neighbours."""
    widths = edges.diff()
    log_density = logits.float().log_softmax(-1) - widths.log()
    labels = labels.reshape(-1).float().clamp(edges[0], edges[-1])
    if smoothing > 0:
        target = torch.special.ndtr((edges - labels[:, None]) / (smoothing * widths.mean())).diff(dim=-1)
        target = target / target.sum(-1, keepdim=True)
    else:
        target = F.one_hot(torch.bucketize(labels, edges[1:-1], right=True), widths.numel()).float()
    return -(target * log_density).sum(-1).mean()


def gaussian_mixture_parameters(outputs: torch.Tensor, edges: torch.Tensor):
    """(log weights, means, widths) of the mixture head's outputs, each (B, K), in the target's units.
    The head works at unit scale: means and widths are in units of half the range of `edges`."""
    logits, means, log_widths = outputs.float().chunk(3, dim=-1)
    centre, half_range = (edges[0] + edges[-1]) / 2, (edges[-1] - edges[0]) / 2
    return logits.log_softmax(-1), centre + half_range * means, half_range * log_widths.clamp(-9.0, 2.0).exp()


def gaussian_mixture_nll(outputs: torch.Tensor, labels: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    log_weights, means, widths = gaussian_mixture_parameters(outputs, edges)
    log_prob = torch.distributions.Normal(means, widths).log_prob(labels.reshape(-1, 1).float())
    return -(log_weights + log_prob).logsumexp(-1).mean()


class AstroPTForImageClassification(AstroPTPreTrainedModel):
    """astroPT with a linear head on the pooled image embedding, for classification or regression
    (`config.problem_type` as in transformers' image classifiers), or a probability density of one continuous
    target (`config.head_type`: `"binned_pdf"` or `"gaussian_mixture"`, trained on its likelihood)."""

    # the pretraining heads of a checkpoint (images, and spectra for multimodal ones) beside its backbone
    _keys_to_ignore_on_load_unexpected = [r"patch_head\.", r"spectrum_head\."]

    def __init__(self, config: AstroPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.astropt = AstroPTModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        outputs = config.head_outputs
        self.classifier = nn.Linear(config.hidden_size, outputs) if outputs > 0 else nn.Identity()
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is getattr(self, "classifier", None) and self.config.head_type == "gaussian_mixture":
            # spread the components' means over the range so they do not start as one Gaussian
            count = self.config.pdf_num_components
            with torch.no_grad():
                module.bias[count : 2 * count].copy_(torch.linspace(-1, 1, count + 2)[1:-1])

    def forward(
        self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
        prefix_length: int | torch.Tensor | None = None, output_attentions: bool | None = None,
        output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        labels (`torch.Tensor` of shape (B,) or (B, num_labels)): class indices for single-label
            classification, floats for regression (`num_labels == 1` or `problem_type="regression"`) and
            multi-hot floats for multi-label classification; for the PDF heads, the target in its units.
        prefix_length: as for `AstroPTModel` (prefix models; default the whole image).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.astropt(pixel_values, prefix_length=prefix_length, output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None and self.config.head_type != "linear":
            edges = torch.tensor(self.config.pdf_bins, dtype=torch.float32, device=logits.device)
            loss = (binned_pdf_nll(logits, labels, edges, self.config.pdf_label_smoothing)
                    if self.config.head_type == "binned_pdf" else gaussian_mixture_nll(logits, labels, edges))
        elif labels is not None:
            # in float32 whatever the autocast dtype; float labels follow the logits' dtype
            labels = labels.float() if labels.is_floating_point() else labels
            loss = self.loss_function(labels, logits.float(), self.config)
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                       attentions=outputs.attentions)
        return output if return_dict else output.to_tuple()


__all__ = [
    "AstroPTForImageClassification", "AstroPTForPreTraining", "AstroPTForPreTrainingOutput", "AstroPTModel",
    "AstroPTPreTrainedModel", "AstroPTSpectrumPatches", "binned_pdf_nll", "gaussian_mixture_nll",
    "gaussian_mixture_parameters", "patches_to_spectrum", "spectrum_to_patches", "spiral_order",
]
