"""Recognise the layout of an upstream astroPT state dict and rename its weights to ours.

Upstream has used three layouts (all nanoGPT-style blocks `transformer.h.{i}.*` and `transformer.ln_f`):

* **v1** (May 2024 release): `transformer.wte.{0,2}` (Linear-ReLU-Linear-ReLU tokeniser),
  `transformer.wpe.weight`, `lm_head.{0,2,4}` (Linear-ReLU-Linear-ReLU-Linear head).
* **v2** (PyPI `astropt` 2.0.x): modality-keyed `transformer.wte.{mod}.c_fc/c_proj`,
  `transformer.wpe.{mod}.wpe.weight`, `lm_head.{mod}.c_fc/c_proj` ("aim": Linear-GELU-Linear, or
  "affine": a single `c_fc` Linear).
* **v3** (current upstream `main`): the modality modules moved out of `transformer`:
  `encoders.{mod}.*`, `embedders.{mod}.wpe.weight`, `decoders.{mod}.*`.

An images+spectra checkpoint (PyPI `astropt` 2.0.9's multimodal GPT) holds the same three modules for
`spectra` beside those for `images`: its tokeniser and decoder (same kind as the images'), and as
`wpe.spectra` either a learned position table (`.wpe.weight`, upstream `embed_pos=True`) or an encoder of
the same kind reading each patch's wavelengths (`.c_fc`/`.c_proj`, `embed_pos=False`, upstream's default).

A masked-autoencoder checkpoint (upstream `objective="mae"`) also holds the learned `mask_token`,
shape (1, 1, n_embd).

Any of them may carry the `_orig_mod.` prefix that `torch.compile` adds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

COMPILE_PREFIX = "_orig_mod."
IMAGE_MODALITY = "images"
SPECTRUM_MODALITY = "spectra"
# The modality sets that convert, in upstream's sequence order (by name).
SUPPORTED_MODALITIES = ([IMAGE_MODALITY], [IMAGE_MODALITY, SPECTRUM_MODALITY])

FORMAT_V1 = "v1"
FORMAT_V2 = "v2"
FORMAT_V3 = "v3"
FORMAT_DESCRIPTIONS = {
    FORMAT_V1: "v1 (original 2024 release: transformer.wte.0/2, lm_head.0/2/4)",
    FORMAT_V2: "v2.x (PyPI astropt 2.0.x: transformer.wte.images, transformer.wpe.images, lm_head.images)",
    FORMAT_V3: "v3 (current upstream: encoders.images, embedders.images, decoders.images)",
}

# --- key renaming rules: (upstream pattern, our name template) --------------------------------------
_BLOCK_RULES = [
    (r"transformer\.h\.(\d+)\.ln_1\.(weight|bias)", r"astropt.layers.\1.layernorm_before.\2"),
    (r"transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)", r"astropt.layers.\1.attention.qkv.\2"),
    (r"transformer\.h\.(\d+)\.attn\.c_proj\.(weight|bias)", r"astropt.layers.\1.attention.out_proj.\2"),
    (r"transformer\.h\.(\d+)\.ln_2\.(weight|bias)", r"astropt.layers.\1.layernorm_after.\2"),
    (r"transformer\.h\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"astropt.layers.\1.mlp.fc1.\2"),
    (r"transformer\.h\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"astropt.layers.\1.mlp.fc2.\2"),
    (r"transformer\.ln_f\.(weight|bias)", r"astropt.layernorm.\1"),
]
_PATCH_EMBED = "astropt.embeddings.patch_embeddings.mlp"
_MASK_TOKEN = "astropt.embeddings.mask_token"
_POSITIONS = "astropt.embeddings.position_embeddings.weight"
_HEAD = "patch_head.mlp"
_SPECTRUM_EMBED = "astropt.embeddings.spectrum_embeddings"
_SPECTRUM_POSITIONS = "astropt.embeddings.spectrum_position_embeddings"
_SPECTRUM_HEAD = "spectrum_head.mlp"


def _modality_rules(encoder: str, positions: str, decoder: str) -> list[tuple[str, str]]:
    """Rules for the v2/v3 tokeniser (`c_fc` then optionally `c_proj`) and its mirrored decoder."""
    return [
        (rf"{encoder}\.c_fc\.(weight|bias)", rf"{_PATCH_EMBED}.0.\1"),
        (rf"{encoder}\.c_proj\.(weight|bias)", rf"{_PATCH_EMBED}.2.\1"),
        (rf"{positions}\.wpe\.weight", _POSITIONS),
        (rf"{decoder}\.c_fc\.(weight|bias)", rf"{_HEAD}.0.\1"),
        (rf"{decoder}\.c_proj\.(weight|bias)", rf"{_HEAD}.2.\1"),
        (r"mask_token", _MASK_TOKEN),
    ]


def _spectrum_rules(encoder: str, positions: str, decoder: str) -> list[tuple[str, str]]:
    """Rules for the spectra modules: tokeniser, position table or wavelength encoder, and decoder."""
    return [
        (rf"{encoder}\.c_fc\.(weight|bias)", rf"{_SPECTRUM_EMBED}.mlp.0.\1"),
        (rf"{encoder}\.c_proj\.(weight|bias)", rf"{_SPECTRUM_EMBED}.mlp.2.\1"),
        (rf"{positions}\.wpe\.weight", f"{_SPECTRUM_POSITIONS}.weight"),
        (rf"{positions}\.c_fc\.(weight|bias)", rf"{_SPECTRUM_POSITIONS}.mlp.0.\1"),
        (rf"{positions}\.c_proj\.(weight|bias)", rf"{_SPECTRUM_POSITIONS}.mlp.2.\1"),
        (rf"{decoder}\.c_fc\.(weight|bias)", rf"{_SPECTRUM_HEAD}.0.\1"),
        (rf"{decoder}\.c_proj\.(weight|bias)", rf"{_SPECTRUM_HEAD}.2.\1"),
    ]


def modality_prefixes(fmt: str, modality: str) -> tuple[str, str, str]:
    """(tokeniser, position module, decoder) key prefixes of a v2/v3 modality."""
    if fmt == FORMAT_V2:
        return f"transformer.wte.{modality}", f"transformer.wpe.{modality}", f"lm_head.{modality}"
    return f"encoders.{modality}", f"embedders.{modality}", f"decoders.{modality}"


_FORMAT_RULES = {
    FORMAT_V1: [
        (r"transformer\.wte\.(0|2)\.(weight|bias)", rf"{_PATCH_EMBED}.\1.\2"),
        (r"transformer\.wpe\.weight", _POSITIONS),
        (r"lm_head\.(0|2|4)\.(weight|bias)", rf"{_HEAD}.\1.\2"),
    ],
    FORMAT_V2: _modality_rules(r"transformer\.wte\.images", r"transformer\.wpe\.images", r"lm_head\.images")
    + _spectrum_rules(r"transformer\.wte\.spectra", r"transformer\.wpe\.spectra", r"lm_head\.spectra"),
    FORMAT_V3: _modality_rules(r"encoders\.images", r"embedders\.images", r"decoders\.images")
    + _spectrum_rules(r"encoders\.spectra", r"embedders\.spectra", r"decoders\.spectra"),
}

# Keys that carry no weights we need: the causal-mask buffer that upstream registers when flash attention
# is unavailable (`attn.bias`, 4-D), and an optional fine-tuning head.
_DROPPED = [
    (r"transformer\.h\.\d+\.attn\.bias", "causal mask buffer (rebuilt by the model)"),
    (r"task_head\..*", "upstream fine-tuning head (not part of the pretrained model)"),
]

# Where each layout keeps its modality modules: used to list the modalities a checkpoint holds.
_MODALITY_KEY = {
    FORMAT_V2: re.compile(r"^(?:transformer\.wte|transformer\.wpe|lm_head)\.([^.]+)\."),
    FORMAT_V3: re.compile(r"^(?:encoders|embedders|decoders)\.([^.]+)\."),
}


@dataclass
class SpectrumModules:
    """What the weights say about an images+spectra checkpoint's spectra modules."""

    patch_dim: int  # samples per spectrum patch the tokeniser reads
    position_encoding: str  # "wavelength" (an encoder of each patch's wavelengths) or "learned" (a table)
    position_input_size: int | None  # wavelengths the position encoder reads; None for a table
    position_table_size: int | None  # rows of the learned table; None for the wavelength encoder


@dataclass
class UpstreamWeights:
    """An upstream state dict with its layout recognised and its architecture read off the tensor shapes."""

    format: str
    state_dict: dict[str, torch.Tensor]  # upstream names, `_orig_mod.` removed
    had_compile_prefix: bool
    modalities: list[str]
    tokeniser: str  # "relu_mlp" (v1), "aim" or "affine"
    num_layers: int
    hidden_size: int
    intermediate_size: int
    patch_dim: int
    block_size: int
    use_bias: bool
    has_mask_token: bool = False  # upstream's masked-autoencoder objective ("mae")
    spectra: SpectrumModules | None = None  # images+spectra checkpoints
    dropped_keys: dict[str, str] = field(default_factory=dict)  # key -> why it is not converted

    @property
    def format_description(self) -> str:
        return FORMAT_DESCRIPTIONS[self.format]


def strip_compile_prefix(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Remove the `_orig_mod.` prefix `torch.compile` leaves on keys; also report whether any had it."""
    had_prefix = any(key.startswith(COMPILE_PREFIX) for key in state_dict)
    stripped = {key.removeprefix(COMPILE_PREFIX): value for key, value in state_dict.items()}
    return stripped, had_prefix


def detect_upstream_format(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """Return `"v1"`, `"v2"` or `"v3"` for a (prefix-free) upstream state dict; raise `ValueError` otherwise."""
    keys = set(state_dict)
    if any(key.startswith(("encoders.", "embedders.", "decoders.")) for key in keys):
        return FORMAT_V3
    if "transformer.wte.0.weight" in keys and "lm_head.0.weight" in keys:
        return FORMAT_V1
    if any(_MODALITY_KEY[FORMAT_V2].match(key) for key in keys):
        return FORMAT_V2
    sample = sorted(keys)[:8]
    raise ValueError(
        f"{source}: 'model' is not a recognised upstream astroPT state dict; expected one of the layouts "
        f"{list(FORMAT_DESCRIPTIONS.values())}, found keys such as {sample}"
    )


def list_modalities(state_dict: dict[str, torch.Tensor], fmt: str) -> list[str]:
    """Modality names present in the weights (v1 is images-only by construction)."""
    if fmt == FORMAT_V1:
        return [IMAGE_MODALITY]
    names = {match.group(1) for key in state_dict if (match := _MODALITY_KEY[fmt].match(key))}
    return sorted(names)


def _require_key(state_dict: dict[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"{source}: the upstream state dict lacks the expected weight {key!r}")
    return state_dict[key]


def has_internal_overlap(tensor: torch.Tensor) -> bool:
    """True when two elements of `tensor` share memory (a stride-0 / expanded or otherwise overlapping view).

    Sorted by stride, each dimension must step past everything the smaller-stride dimensions span.
    """
    span = 0
    dims = sorted((stride, size) for size, stride in zip(tensor.shape, tensor.stride()) if size > 1)
    for stride, size in dims:
        if stride <= span:
            return True
        span += stride * (size - 1)
    return False


def check_weights_are_plain(state_dict: dict, source: str = "checkpoint") -> None:
    """Refuse entries that are not tensors, and views whose elements share memory: a 12 KB file of stride-0
    expanded tensors would otherwise be materialised (and a model built) at gigabytes."""
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{source}: state dict entry {key!r} is a {type(tensor).__name__}, not a tensor")
        if has_internal_overlap(tensor):
            raise ValueError(
                f"{source}: weight {key!r} is a stride-0 or overlapping view (shape {tuple(tensor.shape)}, strides "
                f"{tensor.stride()}) over {tensor.untyped_storage().nbytes():,} bytes; a saved model stores every "
                "value of every weight, so this file is malformed (refusing to materialise it)"
            )


def check_supported_modalities(names: list[str], source: str = "checkpoint") -> None:
    """Refuse any modality set but images, or images and spectra, naming what is not supported."""
    if list(names) in SUPPORTED_MODALITIES:
        return
    unknown = [name for name in names if name not in (IMAGE_MODALITY, SPECTRUM_MODALITY)]
    why = (f"{unknown} (photometry time series, AION tokens and other modalities have no counterpart here)"
           if unknown else f"no '{IMAGE_MODALITY}' modality")
    raise ValueError(
        f"{source}: not supported: modalities {list(names)}: {why}. Checkpoints with '{IMAGE_MODALITY}', or "
        f"'{IMAGE_MODALITY}' and '{SPECTRUM_MODALITY}', can be converted"
    )


def _read_spectrum_modules(state_dict: dict[str, torch.Tensor], fmt: str, tokeniser: str, source: str) -> SpectrumModules:
    """The spectra tokeniser's patch length and its kind of positions, checked against the images' tokeniser."""
    encoder, positions, decoder = modality_prefixes(fmt, SPECTRUM_MODALITY)
    first = _require_key(state_dict, f"{encoder}.c_fc.weight", source)
    _require_key(state_dict, f"{decoder}.c_fc.weight", source)
    if (f"{encoder}.c_proj.weight" in state_dict) != (tokeniser == "aim"):
        raise ValueError(f"{source}: the spectra tokeniser is not of the images' kind ({tokeniser!r})")
    if f"{positions}.wpe.weight" in state_dict:
        table = state_dict[f"{positions}.wpe.weight"]
        return SpectrumModules(int(first.shape[1]), "learned", None, int(table.shape[0]))
    position_encoder = _require_key(state_dict, f"{positions}.c_fc.weight", source)
    return SpectrumModules(int(first.shape[1]), "wavelength", int(position_encoder.shape[1]), None)


def read_upstream_weights(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> UpstreamWeights:
    """Recognise the layout of `state_dict` and read the architecture off its tensor shapes.

    Raises `ValueError` for entries that are not tensors or are stride-0 / overlapping views, unknown layouts,
    for checkpoints whose modalities are anything but `images` or `images` and `spectra` ("not supported:
    modalities [...]", naming the others), for LoRA weights and for continuous (non-embedding) image positions.
    """
    state_dict, had_prefix = strip_compile_prefix(state_dict)
    check_weights_are_plain(state_dict, source)
    fmt = detect_upstream_format(state_dict, source)
    modalities = list_modalities(state_dict, fmt)
    check_supported_modalities(modalities, source)
    lora_keys = sorted(key for key in state_dict if "lora_" in key)
    if lora_keys:
        raise ValueError(
            f"{source}: not supported: LoRA adapter weights {lora_keys[:4]}; merge them into the base weights "
            "upstream (e.g. with loralib's merge on model.eval()) and save the merged state dict first"
        )

    if fmt == FORMAT_V1:
        first_embed = _require_key(state_dict, "transformer.wte.0.weight", source)
        positions = _require_key(state_dict, "transformer.wpe.weight", source)
        tokeniser = "relu_mlp"
    else:
        encoder, embedder, _ = modality_prefixes(fmt, IMAGE_MODALITY)
        if f"{embedder}.c_fc.weight" in state_dict:
            raise ValueError(
                f"{source}: not supported: the images modality embeds continuous positions "
                f"({embedder}.c_fc, upstream embed_pos=False); only learned position tables convert"
            )
        first_embed = _require_key(state_dict, f"{encoder}.c_fc.weight", source)
        positions = _require_key(state_dict, f"{embedder}.wpe.weight", source)
        tokeniser = "aim" if f"{encoder}.c_proj.weight" in state_dict else "affine"

    block_indices = {int(m.group(1)) for key in state_dict if (m := re.match(r"^transformer\.h\.(\d+)\.", key))}
    if not block_indices or block_indices != set(range(max(block_indices) + 1)):
        raise ValueError(f"{source}: transformer blocks are missing or not numbered 0..n-1: {sorted(block_indices)}")
    final_norm = _require_key(state_dict, "transformer.ln_f.weight", source)
    fc1 = _require_key(state_dict, "transformer.h.0.mlp.c_fc.weight", source)
    mask_token = state_dict.get("mask_token")
    if mask_token is not None and tuple(mask_token.shape) != (1, 1, final_norm.shape[0]):
        raise ValueError(
            f"{source}: mask_token has shape {tuple(mask_token.shape)}; expected (1, 1, {final_norm.shape[0]})"
        )

    weights = UpstreamWeights(
        format=fmt,
        state_dict=state_dict,
        had_compile_prefix=had_prefix,
        modalities=modalities,
        tokeniser=tokeniser,
        num_layers=len(block_indices),
        hidden_size=int(final_norm.shape[0]),
        intermediate_size=int(fc1.shape[0]),
        patch_dim=int(first_embed.shape[1]),
        block_size=int(positions.shape[0]),
        use_bias="transformer.h.0.ln_1.bias" in state_dict,
        has_mask_token=mask_token is not None,
        spectra=_read_spectrum_modules(state_dict, fmt, tokeniser, source) if SPECTRUM_MODALITY in modalities else None,
    )
    return weights


def rename_to_astropt_hf(weights: UpstreamWeights, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Our state dict (names of `AstroPTForPreTraining`) from the upstream weights, as float32 tensors.

    Keys without a counterpart are either dropped with a reason (recorded in `weights.dropped_keys`) or,
    if unknown, reported in a `ValueError` so nothing is silently lost.
    """
    rules = [(re.compile(rf"^{pattern}$"), template) for pattern, template in _BLOCK_RULES + _FORMAT_RULES[weights.format]]
    dropped = [(re.compile(rf"^{pattern}$"), why) for pattern, why in _DROPPED]
    renamed: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in weights.state_dict.items():
        for pattern, template in rules:
            if pattern.match(key):
                renamed[pattern.sub(template, key)] = tensor.detach().to(torch.float32).contiguous()
                break
        else:
            reason = next((why for pattern, why in dropped if pattern.match(key)), None)
            if reason is None:
                unknown.append(key)
            else:
                weights.dropped_keys[key] = reason
    if unknown:
        raise ValueError(
            f"{source}: the {weights.format} state dict has weights this converter does not know how to map: "
            f"{sorted(unknown)[:10]}{' ...' if len(unknown) > 10 else ''}"
        )
    return renamed
