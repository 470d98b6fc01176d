"""Turn an upstream checkpoint's `model_args` (and modality registry) into `AstroPTConfig` arguments.

Everything upstream did implicitly is written into the config here, so a converted model reproduces
upstream's numbers from a plain image: spiral order, per-patch standardisation (unbiased std + 1e-8),
the transposed (C, W, H) reading of images, the Huber loss, and the layer upstream drew embeddings from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .upstream_formats import (
    FORMAT_V1,
    FORMAT_V2,
    IMAGE_MODALITY,
    SPECTRUM_MODALITY,
    UpstreamWeights,
    check_supported_modalities,
)
from .upstream_objective import ObjectiveMapping, map_objective
from .upstream_spectra import choose_multimodal_image_size, spectrum_config_kwargs

# Upstream's tokeniser names -> our `patch_embedding` values.
PATCH_EMBEDDING_FOR_TOKENISER = {"relu_mlp": "relu_mlp", "aim": "gelu_mlp", "affine": "linear"}

V1_RELEASE_IMAGE_SIZE = 512  # DESI Legacy Survey grz cutouts of the May 2024 release
V2_0_RELEASE_IMAGE_SIZE = 256  # the `image_crop` column that astroPT v2.0 trained on


@dataclass
class ConfigMapping:
    """The `AstroPTConfig` keyword arguments for a checkpoint, and where the less obvious ones came from."""

    config_kwargs: dict[str, Any]
    image_size_source: str
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # upstream computed something other than it says


def _field(model_args: dict, name: str, source: str, expected_from_weights: int | None = None):
    """`model_args[name]`, cross-checked against the value the tensor shapes imply."""
    value = model_args.get(name, expected_from_weights)
    if value is None:
        raise ValueError(f"{source}: model_args lacks {name!r} and it cannot be read off the weights")
    if expected_from_weights is not None and value != expected_from_weights:
        raise ValueError(
            f"{source}: model_args[{name!r}]={value!r} disagrees with the weights, which imply {expected_from_weights}"
        )
    return value


def registry_modalities(checkpoint: dict, model_args: dict) -> dict[str, Any] | None:
    """Name -> ModalityConfig stand-in, from the pickled registry or else `model_args['modalities']`."""
    registry = checkpoint.get("modality_registry")
    modalities = getattr(registry, "modalities", None)
    if isinstance(modalities, dict):
        return dict(modalities)
    listed = {getattr(entry, "name", None): entry for entry in model_args.get("modalities") or []}
    listed.pop(None, None)
    return listed or None


def _image_modality_config(checkpoint: dict, model_args: dict) -> Any | None:
    """The `images` ModalityConfig stand-in, if the checkpoint records one."""
    return (registry_modalities(checkpoint, model_args) or {}).get(IMAGE_MODALITY)


def _looks_like_v2_0_release(weights: UpstreamWeights, patch_size: int, num_channels: int) -> bool:
    """Heuristic for the `Smith42/astroPT_v2.0` checkpoints, which do not record their image size.

    Upstream's v2 training script defaults (used for that release) are: aim tokeniser, 16 px patches, three
    bands, block_size 1024, no biases, on 256 px crops; a v2-layout checkpoint with exactly that shape is
    taken to be from the release. `--image_size` overrides this.
    """
    return (
        weights.format == FORMAT_V2
        and weights.tokeniser == "aim"
        and patch_size == 16
        and num_channels == 3
        and weights.block_size == 1024
        and not weights.use_bias
    )


def _fits_block(image_size: int, patch_size: int, block_size: int, unfed: int = 1) -> bool:
    """Whether an image of this size can be fed: next-patch upstream feeds all patches but the last one
    (`unfed=1`), masked upstream feeds them all (`unfed=0`)."""
    return image_size % patch_size == 0 and (image_size // patch_size) ** 2 - unfed <= block_size


def choose_image_size(
    weights: UpstreamWeights,
    training_config: dict,
    patch_size: int,
    num_channels: int,
    requested: int | None,
    source: str,
    unfed: int = 1,
) -> tuple[int, str]:
    """The image size to record in the config, and a short phrase saying where it came from.

    `unfed` is how many patches of an image upstream did not feed: 1 for next-patch models, 0 for masked ones.
    """
    limit = weights.block_size + unfed
    if requested is not None:
        if not _fits_block(requested, patch_size, weights.block_size, unfed):
            raise ValueError(
                f"{source}: --image_size={requested} does not fit: it must be a multiple of patch_size={patch_size} "
                f"with at most {'block_size+1' if unfed else 'block_size'}={limit} patches"
            )
        return requested, "given with --image_size"
    if weights.format == FORMAT_V1 and _fits_block(V1_RELEASE_IMAGE_SIZE, patch_size, weights.block_size, unfed):
        return V1_RELEASE_IMAGE_SIZE, "v1 release default (512 px DESI cutouts)"
    recorded = training_config.get("image_size")
    if isinstance(recorded, int) and _fits_block(recorded, patch_size, weights.block_size, unfed):
        return recorded, "config['image_size'] saved in the checkpoint"
    if _looks_like_v2_0_release(weights, patch_size, num_channels):
        return V2_0_RELEASE_IMAGE_SIZE, "v2.0 release default (256 px crops; detected from its shape)"
    # Next-patch upstream feeds T-1 of an image's T patches, so block_size may be T or T-1: the largest square
    # grid with at most block_size + 1 patches (block_size for masked models, which feed all T).
    grid = math.isqrt(limit)
    return grid * patch_size, f"sqrt(block_size{' + 1' if unfed else ''}) * patch_size"


def _check_model_args(model_args: dict, weights: UpstreamWeights, source: str) -> tuple[int, int, int, int]:
    """(n_layer, n_embd, n_head, block_size), after checking `model_args` against the weights and our support."""
    num_layers = _field(model_args, "n_layer", source, weights.num_layers)
    hidden_size = _field(model_args, "n_embd", source, weights.hidden_size)
    num_heads = _field(model_args, "n_head", source)
    block_size = _field(model_args, "block_size", source, weights.block_size)
    if hidden_size % num_heads:
        raise ValueError(f"{source}: model_args n_embd={hidden_size} is not divisible by n_head={num_heads}")
    if "bias" in model_args and bool(model_args["bias"]) != weights.use_bias:
        raise ValueError(
            f"{source}: model_args['bias']={model_args['bias']!r} disagrees with the weights "
            f"(LayerNorm biases {'present' if weights.use_bias else 'absent'})"
        )
    if weights.format != FORMAT_V1:
        declared = model_args.get("tokeniser", "aim")
        if declared != weights.tokeniser:
            raise ValueError(
                f"{source}: model_args['tokeniser']={declared!r} disagrees with the weights, which hold an "
                f"{weights.tokeniser!r} tokeniser"
            )
    if model_args.get("backbone", "native") != "native":
        raise ValueError(f"{source}: not supported: model_args['backbone']={model_args['backbone']!r} (LLM backbone)")
    return num_layers, hidden_size, num_heads, block_size


def _modality_patch_geometry(
    checkpoint: dict, model_args: dict, weights: UpstreamWeights, source: str, notes: list[str]
) -> tuple[int, int]:
    """(patch_size, num_channels) of a v2/v3 checkpoint, from its images ModalityConfig and the weights."""
    modality = _image_modality_config(checkpoint, model_args)
    if modality is not None:
        patch_size = modality.patch_size
        if getattr(modality, "embed_pos", True) is False:
            raise ValueError(f"{source}: not supported: images modality with embed_pos=False")
    else:
        patch_size = None
        notes.append("no images ModalityConfig found; patch size inferred from the weights and n_chan")
    num_channels = model_args.get("n_chan")
    if patch_size is None:
        if num_channels is None:
            raise ValueError(f"{source}: neither a modality registry nor model_args['n_chan'] is present")
        patch_size = math.isqrt(weights.patch_dim // num_channels)
    if num_channels is None or num_channels * patch_size**2 != weights.patch_dim:
        # GPTConfig.n_chan defaults to 1 upstream and v2 scripts do not always pass it; trust the weights.
        inferred = weights.patch_dim // patch_size**2
        if num_channels is not None:
            notes.append(f"model_args n_chan={num_channels} ignored; the weights hold {inferred} bands")
        num_channels = inferred
    return patch_size, num_channels


def _patch_geometry(
    checkpoint: dict, model_args: dict, weights: UpstreamWeights, source: str, notes: list[str]
) -> tuple[int, int]:
    """(patch_size, num_channels): v1 keeps them in model_args, later versions in the images ModalityConfig."""
    if weights.format == FORMAT_V1:
        patch_size = model_args.get("patch_size", 16)
        num_channels = model_args.get("n_chan", weights.patch_dim // patch_size**2)
    else:
        patch_size, num_channels = _modality_patch_geometry(checkpoint, model_args, weights, source, notes)
    if num_channels * patch_size**2 != weights.patch_dim:
        raise ValueError(
            f"{source}: patch_size={patch_size} and n_chan={num_channels} give patches of "
            f"{num_channels * patch_size**2} values, but the tokeniser takes {weights.patch_dim}"
        )
    return patch_size, num_channels


def _pooling(objective: ObjectiveMapping, num_patches: int) -> dict[str, Any]:
    """How upstream's embedding averaged the positions it saw."""
    if objective.config_kwargs["attention_pattern"] == "causal":
        # Upstream embeds the model input, i.e. the sequence without its last patch, and averages over it.
        # Our model runs all T patches; causality makes the first T-1 hidden states identical, so the mean
        # over the first T-1 positions is exactly upstream's embedding.
        return {"pooling": "mean_first_k", "pooling_num_patches": max(1, num_patches - 1)}
    # Bidirectional: every position sees every patch, so the mean over all of them is the natural embedding
    # (exactly upstream's for a masked model, which fed all T patches).
    return {"pooling": "mean", "pooling_num_patches": num_patches}


def _loss_weight_note(checkpoint: dict, model_args: dict, objective: ObjectiveMapping) -> list[str]:
    modality = _image_modality_config(checkpoint, model_args)
    weight = getattr(modality, "loss_weight", 1.0)
    if objective.feeds_whole_sequence and isinstance(weight, (int, float)) and weight != 1.0:
        return [f"upstream scaled the masked loss by the images loss_weight={weight}; the converted loss is unscaled"]
    return []


@dataclass
class MappingOptions:
    """Choices the checkpoint cannot record: see `map_upstream_config`."""

    image_size: int | None = None
    keep_prefix_attention: bool = False
    spectrum_wavelength_scale: float | None = None


def _check_recorded_modalities(checkpoint: dict, model_args: dict, weights: UpstreamWeights, source: str) -> None:
    """The registry's modalities must convert and agree with the modules the weights hold."""
    recorded = registry_modalities(checkpoint, model_args)
    if recorded is None:
        return
    check_supported_modalities(sorted(recorded), source)
    if weights.format != FORMAT_V1 and sorted(recorded) != weights.modalities:
        raise ValueError(
            f"{source}: the modality registry lists {sorted(recorded)} but the weights hold modules for "
            f"{weights.modalities}"
        )


def _multimodal_kwargs(
    checkpoint: dict, model_args: dict, weights: UpstreamWeights, objective: ObjectiveMapping,
    options: MappingOptions, patch_size: int, source: str, notes: list[str],
) -> tuple[dict[str, Any], str]:
    """(config arguments, image size source) for an images+spectra checkpoint."""
    if objective.config_kwargs["objective"] != "next_patch" or objective.config_kwargs["attention_pattern"] != "causal":
        raise ValueError(
            f"{source}: not supported: images+spectra with objective={model_args.get('objective', 'ar')!r} and "
            f"attn_type={model_args.get('attn_type', 'causal')!r}; multimodal checkpoints convert with causal "
            "next-patch attention"
        )
    training_config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    image_size, size_source = choose_multimodal_image_size(
        weights.block_size, training_config, patch_size, options.image_size, source
    )
    num_patches = (image_size // patch_size) ** 2
    modalities = registry_modalities(checkpoint, model_args) or {}
    kwargs = spectrum_config_kwargs(
        modalities.get(SPECTRUM_MODALITY), weights, num_patches, options.spectrum_wavelength_scale, source, notes
    )
    kwargs["image_loss_weight"] = float(getattr(modalities.get(IMAGE_MODALITY), "loss_weight", 1.0))
    kwargs["image_size"] = image_size
    # Upstream feeds the whole image before the spectrum and embeds each modality as the mean over all of
    # its positions; causality keeps the image's hidden states free of the spectrum.
    kwargs.update(pooling="mean", pooling_num_patches=num_patches)
    return kwargs, size_source


def map_upstream_config(
    checkpoint: dict,
    weights: UpstreamWeights,
    image_size: int | None = None,
    source: str = "checkpoint",
    keep_prefix_attention: bool = False,
    spectrum_wavelength_scale: float | None = None,
) -> ConfigMapping:
    """`AstroPTConfig` keyword arguments that reproduce the upstream model in `checkpoint`.

    `keep_prefix_attention`: for an upstream `attn_type="prefix"` checkpoint, record `"prefix"` instead of
    the `"bidirectional"` attention upstream actually computed (see `upstream_objective`).
    `spectrum_wavelength_scale`: images+spectra checkpoints, the Angstrom scale their training data divided
    `wavelength - 3000` by (default 7000, astropt 2.0.9's dataset).
    """
    options = MappingOptions(image_size, keep_prefix_attention, spectrum_wavelength_scale)
    model_args = checkpoint.get("model_args")
    if not isinstance(model_args, dict):
        raise ValueError(f"{source}: expected a dict under 'model_args', found {type(model_args).__name__}")
    training_config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    notes: list[str] = []
    num_layers, hidden_size, num_heads, block_size = _check_model_args(model_args, weights, source)
    _check_recorded_modalities(checkpoint, model_args, weights, source)
    objective = map_objective(model_args, weights, source, keep_prefix_attention)
    patch_size, num_channels = _patch_geometry(checkpoint, model_args, weights, source, notes)
    if weights.spectra is not None:
        modality_kwargs, size_source = _multimodal_kwargs(
            checkpoint, model_args, weights, objective, options, patch_size, source, notes
        )
    else:
        if spectrum_wavelength_scale is not None:
            raise ValueError(f"{source}: spectrum_wavelength_scale needs a checkpoint with spectra")
        chosen_size, size_source = choose_image_size(
            weights, training_config, patch_size, num_channels, image_size, source,
            unfed=0 if objective.feeds_whole_sequence else 1,
        )
        modality_kwargs = {"image_size": chosen_size, **_pooling(objective, (chosen_size // patch_size) ** 2)}
    dropout = float(model_args.get("dropout", 0.0) or 0.0)
    spiral = training_config.get("spiral", True)
    config_kwargs = {
        "image_size": modality_kwargs.pop("image_size"),
        "patch_size": patch_size,
        "num_channels": num_channels,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": weights.intermediate_size,
        "max_position_embeddings": block_size,
        "layer_norm_eps": 1e-5,
        "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": dropout,
        "use_bias": weights.use_bias,
        "patch_embedding": PATCH_EMBEDDING_FOR_TOKENISER[weights.tokeniser],
        "patch_order": "spiral" if spiral else "raster",
        "patch_norm": "per_patch",
        "patch_norm_eps": 1e-8,
        "transpose_patch_grid": True,
        "loss": "huber",
        "huber_delta": 1.0,
        # v1's get_embeddings returns the last block's output (no final LayerNorm); v2 and later draw
        # from the centre: the output of block n_layer // 2.
        "embedding_layer": num_layers - 1 if weights.format == FORMAT_V1 else "middle",
        **objective.config_kwargs,
        **modality_kwargs,
    }
    if not spiral:
        notes.append("the training config says spiral=False: patches in raster order")
    notes += objective.notes + _loss_weight_note(checkpoint, model_args, objective)
    return ConfigMapping(
        config_kwargs=config_kwargs, image_size_source=size_source, notes=notes, warnings=objective.warnings
    )
