"""AstroPT: a GPT that reads a galaxy image as a sequence of patches and regresses the next patch.

Read top to bottom: patch geometry (cut, order, normalise, and back), the patch tokeniser, the
transformer block, the backbone, then the heads (next-patch pretraining, image classification).

This is one of the three "remote code" files copied next to every checkpoint: it imports only torch,
numpy, transformers and its two siblings, so `AutoModel.from_pretrained(..., trust_remote_code=True)`
works without `astropt_hf` installed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput

from .configuration_astropt import AstroPTConfig
from .image_processing_astropt import AstroPTImageProcessor

try:  # flash-attention and other kernels registered with transformers (>= 4.48)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
except ImportError:  # pragma: no cover - older transformers
    ALL_ATTENTION_FUNCTIONS = {}


# ------------------------------------------------------------------------------------------------
# Patch geometry: image <-> sequence of patch vectors. The model owns it because the learned
# positions only make sense in the order the patches were cut and ordered.
# ------------------------------------------------------------------------------------------------


def spiral_order(grid_size: int) -> np.ndarray:
    """Raster indices of a `grid_size` x `grid_size` grid in spiral order, from the centre outwards.

    The spiral is the clockwise outside-in walk that starts at the top-left corner, reversed, which is the
    order upstream astroPT trains in. `order[k]` is the raster index of sequence position `k`.
    """
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
    """Cuts images into ordered, normalised patch vectors and puts patch sequences back into images.

    A patch vector is laid out (p1 p2 c), i.e. pixel rows, then pixel columns, then bands. Ordering and
    cutting are one gather with a precomputed index, done while the data is still in its input dtype
    (uint8 images are converted to float only once, after the copy).
    """

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

    def _raster_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, T, P) patch vectors in raster order, still in the input dtype.

        Two copies that each move contiguous runs: first to pixel-interleaved (B, rows, cols, C) (a no-op for
        channels-last input), then whole patch rows of patch_size * C values. Cutting straight from (C, H, W)
        would gather every value from C separate planes, which is about twice as slow.
        """
        batch, g, p, c = pixel_values.shape[0], self.grid_size, self.patch_size, self.num_channels
        # upstream reads (C, W, H): transposing the image transposes both the grid and each patch
        dims = (0, 3, 2, 1) if self.transpose_patch_grid else (0, 2, 3, 1)
        interleaved = pixel_values.permute(*dims).contiguous()
        grid = interleaved.view(batch, g, p, g, p * c).transpose(2, 3)  # (B, grid row, grid col, p1, p2 * C)
        return grid.reshape(batch, g * g, p * p * c)

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        expected = (self.num_channels, self.grid_size * self.patch_size, self.grid_size * self.patch_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; expected (batch, {', '.join(map(str, expected))})"
                " as set by the config's num_channels and image_size"
            )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float or uint8 -> (B, T, P) float32 patches in sequence order, normalised."""
        self.check_pixel_values(pixel_values)
        order = self._grid_index(pixel_values.device)[0]
        # Cut, then order (one gather of whole patch rows), both still in the input dtype: for uint8 images
        # a quarter of the float32 memory traffic. Converted to float once, afterwards.
        patches = self._raster_patches(pixel_values).index_select(1, order)
        if not patches.is_floating_point():
            scale = 1.0 / 255.0 if patches.dtype == torch.uint8 else 1.0
            patches = patches.float().mul_(scale)
        elif patches.dtype == torch.float64:
            patches = patches.float()
        # `patches` is a fresh tensor: normalise it in place unless autograd needs it as it is
        return self.normalise(patches, inplace=not patches.requires_grad)

    def normalise(self, patches: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Per-patch (or per-image) standardisation, as upstream: minus the mean, over the unbiased std + eps.

        Vectorised passes (shift, mean, then the norm of the centred values) instead of `torch.std_mean`,
        whose double-precision Welford kernel is ~10x slower on CPUs. Shifting by each patch's first value
        first keeps the float32 mean accurate for data far from zero (e.g. a sky level of 1000), so the two
        agree to float32 rounding. `inplace` overwrites `patches` instead of allocating new tensors.
        """
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


# ------------------------------------------------------------------------------------------------
# Patch tokeniser (patch vector -> hidden) and its mirror, the next-patch head (hidden -> patch).
# ------------------------------------------------------------------------------------------------


def _patch_mlp(config: AstroPTConfig, inputs: int, outputs: int, encoder: bool) -> nn.Sequential:
    width, bias = config.hidden_size, config.use_bias
    if config.patch_embedding == "relu_mlp":  # upstream v1: always with biases
        if encoder:
            return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        return nn.Sequential(
            nn.Linear(inputs, 2 * width), nn.ReLU(), nn.Linear(2 * width, width), nn.ReLU(), nn.Linear(width, outputs)
        )
    if config.patch_embedding == "gelu_mlp":  # upstream v2 "aim"
        return nn.Sequential(
            nn.Linear(inputs, 4 * width, bias=bias), nn.GELU(approximate="tanh"), nn.Linear(4 * width, outputs, bias=bias)
        )
    return nn.Sequential(nn.Linear(inputs, outputs, bias=bias))  # upstream "affine"


class AstroPTPatchEncoder(nn.Module):
    def __init__(self, config: AstroPTConfig):
        super().__init__()
        self.mlp = _patch_mlp(config, config.patch_dim, config.hidden_size, encoder=True)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.mlp(patches)


class AstroPTPatchDecoder(nn.Module):
    def __init__(self, config: AstroPTConfig):
        super().__init__()
        self.mlp = _patch_mlp(config, config.hidden_size, config.patch_dim, encoder=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.mlp(hidden_states)


class AstroPTEmbeddings(nn.Module):
    """Patch tokeniser plus learned positions (positions count along the sequence, not the image)."""

    def __init__(self, config: AstroPTConfig):
        super().__init__()
        self.patch_embeddings = AstroPTPatchEncoder(config)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, patches: torch.Tensor, position_offset: int = 0) -> torch.Tensor:
        length = patches.shape[1]
        if position_offset + length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence of {position_offset + length} patches is longer than max_position_embeddings="
                f"{self.position_embeddings.num_embeddings}"
            )
        positions = torch.arange(position_offset, position_offset + length, device=patches.device)
        return self.dropout(self.patch_embeddings(patches) + self.position_embeddings(positions))


# ------------------------------------------------------------------------------------------------
# Transformer block: pre-LayerNorm, causal self-attention, GELU MLP (as GPT-2 / nanoGPT).
# ------------------------------------------------------------------------------------------------


def _causal_mask(query_length: int, key_length: int, device: torch.device) -> torch.Tensor | None:
    """Boolean mask (True = may attend) for queries that are the last `query_length` of the keys."""
    if query_length == 1:
        return None
    return torch.ones(query_length, key_length, dtype=torch.bool, device=device).tril(key_length - query_length)


def eager_attention(query, key, value, mask, dropout: float, scaling: float, training: bool):
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=training)
    return torch.matmul(weights, value), weights


class AstroPTLayerCache:
    """One block's keys and values for incremental decoding, preallocated for `max_length` positions: each
    step writes its keys and values into the next free slots instead of concatenating (copying) the whole
    history, so a step costs the same at position 600 as at position 1."""

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.length = 0
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
    """Causal multi-head self-attention with one fused QKV projection and an optional key/value cache."""

    def __init__(self, config: AstroPTConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        self.is_causal = True
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.use_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.out_proj._is_residual_projection = True  # GPT-2 scaled init
        self.resid_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states, layer_cache: AstroPTLayerCache | None = None, output_attentions: bool = False
    ):
        batch, length, width = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
        if layer_cache is not None:
            key, value = layer_cache.append(key, value)
        key_length = key.shape[2]
        dropout = self.dropout if self.training else 0.0
        implementation = getattr(self.config, "_attn_implementation", None) or "sdpa"
        weights = None
        if output_attentions or implementation == "eager":
            mask = _causal_mask(length, key_length, hidden_states.device)
            attended, weights = eager_attention(query, key, value, mask, dropout, self.scaling, self.training)
            attended = attended.transpose(1, 2)
        elif implementation == "sdpa" or implementation not in ALL_ATTENTION_FUNCTIONS:
            # Square attention is plain causal (fast kernels); a cached step of one query sees every key.
            square = length == key_length
            mask = None if square else _causal_mask(length, key_length, hidden_states.device)
            attended = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=square and length > 1
            ).transpose(1, 2)
        else:  # flash-attention & co., through transformers' registry: (B, T, heads, head_dim) out
            attended, _ = ALL_ATTENTION_FUNCTIONS[implementation](
                self, query, key, value, None, dropout=dropout, scaling=self.scaling, is_causal=True
            )
        attended = attended.reshape(batch, length, width)
        return self.resid_dropout(self.out_proj(attended)), weights


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


class AstroPTBlock(nn.Module):
    def __init__(self, config: AstroPTConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.use_bias)
        self.attention = AstroPTAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.use_bias)
        self.mlp = AstroPTMLP(config)

    def forward(
        self, hidden_states, layer_cache: AstroPTLayerCache | None = None, output_attentions: bool = False
    ):
        attended, weights = self.attention(self.layernorm_before(hidden_states), layer_cache, output_attentions)
        hidden_states = hidden_states + attended
        hidden_states = hidden_states + self.mlp(self.layernorm_after(hidden_states))
        return hidden_states, weights


# ------------------------------------------------------------------------------------------------
# Backbone
# ------------------------------------------------------------------------------------------------


class AstroPTPreTrainedModel(PreTrainedModel):
    config_class = AstroPTConfig
    base_model_prefix = "astropt"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["AstroPTBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, initializer_range), residual projections scaled by 1/sqrt(2 * layers)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "_is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual, and add the image processor the config implies when none was saved yet, so that
        every checkpoint directory loads with `AutoImageProcessor` too."""
        super().save_pretrained(save_directory, *args, **kwargs)
        is_main_process = kwargs.get("is_main_process", True)
        if is_main_process and not os.path.exists(os.path.join(save_directory, "preprocessor_config.json")):
            processor = AstroPTImageProcessor(image_size=self.config.image_size, num_channels=self.config.num_channels)
            processor.save_pretrained(save_directory)


def pool_patch_embeddings(hidden_states: torch.Tensor, pooling: str, num_patches: int) -> torch.Tensor:
    """(B, T, D) -> (B, D) by the config's pooling."""
    if pooling == "mean":
        return hidden_states.mean(dim=1)
    if pooling == "mean_first_k":
        return hidden_states[:, :num_patches].mean(dim=1)
    if pooling == "last":
        return hidden_states[:, -1]
    raise ValueError(f"pooling={pooling!r} is not valid; expected 'mean', 'mean_first_k' or 'last'")


class AstroPTModel(AstroPTPreTrainedModel):
    """The astroPT backbone: pixels -> ordered patch sequence -> causal transformer -> patch embeddings."""

    _keys_to_ignore_on_load_unexpected = [r"patch_head\."]  # loading a pretraining checkpoint

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

    def run_blocks(
        self,
        patches: torch.Tensor,
        *,
        num_blocks: int | None = None,
        position_offset: int = 0,
        cache: list[AstroPTLayerCache] | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):
        """Run the first `num_blocks` blocks on a patch sequence (by default all of them, then the final
        LayerNorm; an explicit `num_blocks` returns that block's raw output).

        Returns (hidden, all_hidden_states or None, attentions or None). Stopping early is what makes
        middle-block embeddings cheap: upstream runs every block even when it keeps the middle one.
        """
        final_layernorm = num_blocks is None
        num_blocks = len(self.layers) if num_blocks is None else num_blocks
        hidden = self.embeddings(patches, position_offset)
        all_hidden = [hidden] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for index, block in enumerate(self.layers[:num_blocks]):
            layer_cache = cache[index] if cache is not None else None
            if self.gradient_checkpointing and self.training and layer_cache is None:
                hidden, weights = self._gradient_checkpointing_func(block.__call__, hidden, None, output_attentions)
            else:
                hidden, weights = block(hidden, layer_cache, output_attentions)
            if all_hidden is not None:
                all_hidden.append(hidden)
            if attentions is not None:
                attentions.append(weights)
        if final_layernorm:
            hidden = self.layernorm(hidden)
        return hidden, (tuple(all_hidden) if all_hidden is not None else None), (
            tuple(attentions) if attentions is not None else None
        )

    def _sequence(self, pixel_values, input_patches) -> torch.Tensor:
        if (pixel_values is None) == (input_patches is None):
            raise ValueError("pass exactly one of pixel_values (B, C, H, W) or input_patches (B, T, P)")
        return self.patchify(pixel_values) if input_patches is None else input_patches

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_patches: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        pixel_values (`torch.Tensor` of shape (B, C, H, W)): images from `AstroPTImageProcessor` (float) or
            raw uint8 images (scaled by 1/255 here).
        input_patches (`torch.Tensor` of shape (B, T, P)): an already ordered and normalised patch sequence,
            e.g. from `image_to_patches`, instead of `pixel_values`.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        sequence = self._sequence(pixel_values, input_patches)
        last_hidden, all_hidden, attentions = self.run_blocks(
            sequence, output_hidden_states=True, output_attentions=output_attentions
        )
        layer = self.config.resolve_embedding_layer()
        source = last_hidden if layer == self.config.num_hidden_layers else all_hidden[layer + 1]
        pooled = pool_patch_embeddings(source, self.config.pooling, self.config.pooling_num_patches)
        all_hidden = all_hidden if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (last_hidden, pooled, all_hidden, attentions) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden, pooler_output=pooled, hidden_states=all_hidden, attentions=attentions
        )

    def get_image_embeddings(
        self,
        pixel_values: torch.Tensor | None = None,
        input_patches: torch.Tensor | None = None,
        layer: str | int | None = None,
        pooling: str | None = None,
        pooling_num_patches: int | None = None,
    ) -> torch.Tensor:
        """One embedding per image, (B, D), running only the blocks the chosen layer needs.

        `layer`, `pooling` and `pooling_num_patches` default to the config's `embedding_layer`, `pooling`
        and `pooling_num_patches`.
        """
        index = self.config.resolve_embedding_layer(layer)
        num_blocks = None if index == self.config.num_hidden_layers else index + 1
        hidden, _, _ = self.run_blocks(self._sequence(pixel_values, input_patches), num_blocks=num_blocks)
        return pool_patch_embeddings(
            hidden,
            pooling or self.config.pooling,
            pooling_num_patches if pooling_num_patches is not None else self.config.pooling_num_patches,
        )


# ------------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------------


@dataclass
class AstroPTForPreTrainingOutput(ModelOutput):
    """
    loss: next-patch regression loss (Huber or MSE) over positions 0..T-2.
    predictions (B, T, P): `predictions[:, t]` predicts sequence patch t + 1 (the last one looks past the image).
    target_patches (B, T, P): the ordered, normalised input sequence the predictions are compared against.
    """

    loss: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None
    target_patches: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class AstroPTForPreTraining(AstroPTPreTrainedModel):
    """astroPT with its next-patch head: the pretraining objective, patch completion and image round trips."""

    def __init__(self, config: AstroPTConfig):
        super().__init__(config)
        self.astropt = AstroPTModel(config)
        self.patch_head = AstroPTPatchDecoder(config)
        self.post_init()

    def image_to_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, T, P): the model's own patchify, normalisation and ordering."""
        return self.astropt.patchify(pixel_values)

    def patches_to_image(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, T, P) in sequence order -> (B, C, H, W): order undone and patches put back."""
        return self.astropt.patchify.unpatchify(patches)

    def patch_loss(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.config.loss == "huber":
            return F.huber_loss(predictions, targets, delta=self.config.huber_delta)
        return F.mse_loss(predictions, targets)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_patches: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> AstroPTForPreTrainingOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        sequence = self.astropt._sequence(pixel_values, input_patches)
        hidden, all_hidden, attentions = self.astropt.run_blocks(
            sequence,
            output_hidden_states=bool(output_hidden_states or self.config.output_hidden_states),
            output_attentions=bool(output_attentions or self.config.output_attentions),
        )
        predictions = self.patch_head(hidden)
        loss = self.patch_loss(predictions[:, :-1].float(), sequence[:, 1:].float()) if sequence.shape[1] > 1 else None
        if not return_dict:
            return tuple(v for v in (loss, predictions, sequence, all_hidden, attentions) if v is not None)
        return AstroPTForPreTrainingOutput(
            loss=loss, predictions=predictions, target_patches=sequence, hidden_states=all_hidden, attentions=attentions
        )

    @torch.no_grad()
    def generate_patches(
        self,
        prompt_patches: torch.Tensor,
        num_new_patches: int,
        temperature: float = 0.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue a (B, T0, P) prompt in sequence order by `num_new_patches`; returns (B, T0 + N, P).

        Each new patch is the head's regression output plus Gaussian noise of std `temperature` (0: none),
        as upstream. With `use_cache`, keys and values are kept, so each new patch costs one single-position
        forward instead of re-running the whole sequence.
        """
        if num_new_patches <= 0:
            return prompt_patches
        prompt_length = prompt_patches.shape[1]
        total = prompt_length + num_new_patches
        if total - 1 > self.config.max_position_embeddings:
            raise ValueError(
                f"prompt of {prompt_length} patches plus {num_new_patches} new ones exceeds "
                f"max_position_embeddings={self.config.max_position_embeddings}"
            )
        # the last new patch is never fed back, so the cache needs total - 1 positions
        cache = [AstroPTLayerCache(total - 1) for _ in self.astropt.layers] if use_cache else None
        sequence = None  # (B, total, P), allocated once the first patch shows the output dtype
        step_input, offset = prompt_patches, 0
        for position in range(prompt_length, total):
            hidden, _, _ = self.astropt.run_blocks(step_input, position_offset=offset, cache=cache)
            new_patch = self.patch_head(hidden[:, -1:])
            if temperature > 0:
                noise = torch.randn(new_patch.shape, generator=generator, device=new_patch.device, dtype=new_patch.dtype)
                new_patch = new_patch + temperature * noise
            if sequence is None:  # the dtype a concatenation of prompt and patches would have
                dtype = torch.promote_types(prompt_patches.dtype, new_patch.dtype)
                sequence = prompt_patches.new_empty((prompt_patches.shape[0], total, prompt_patches.shape[2]), dtype=dtype)
                sequence[:, :prompt_length] = prompt_patches
            sequence[:, position : position + 1] = new_patch  # written in place: no copy of the history
            if use_cache:
                step_input, offset = new_patch, position
            else:
                step_input = sequence[:, : position + 1]
        return sequence


class AstroPTForImageClassification(AstroPTPreTrainedModel):
    """astroPT with a linear head on the pooled image embedding, for classification or regression
    (`config.problem_type` as in transformers' image classifiers)."""

    _keys_to_ignore_on_load_unexpected = [r"patch_head\."]  # the backbone of a pretraining checkpoint

    def __init__(self, config: AstroPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.astropt = AstroPTModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def _classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(logits.device)
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif self.num_labels > 1 and labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1).float(), labels.squeeze(-1).float())
            return F.mse_loss(logits.float(), labels.float())
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        labels (`torch.Tensor` of shape (B,) or (B, num_labels)): class indices for single-label
            classification, floats for regression (`num_labels == 1` or `problem_type="regression"`) and
            multi-hot floats for multi-label classification.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden_states = attentions = None
        if output_attentions or output_hidden_states:
            outputs = self.astropt(
                pixel_values, output_attentions=output_attentions, output_hidden_states=output_hidden_states
            )
            pooled, hidden_states, attentions = outputs.pooler_output, outputs.hidden_states, outputs.attentions
        else:  # only the blocks the embedding layer needs
            pooled = self.astropt.get_image_embeddings(pixel_values)
        logits = self.classifier(self.dropout(pooled))
        loss = self._classification_loss(logits, labels) if labels is not None else None
        if not return_dict:
            return tuple(v for v in (loss, logits, hidden_states, attentions) if v is not None)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions)


__all__ = [
    "AstroPTForImageClassification",
    "AstroPTForPreTraining",
    "AstroPTForPreTrainingOutput",
    "AstroPTModel",
    "AstroPTPreTrainedModel",
    "spiral_order",
]
