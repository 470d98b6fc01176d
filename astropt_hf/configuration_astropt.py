"""AstroPT model configuration.

This file is one of the three "remote code" files copied next to every checkpoint: it imports only
transformers and the standard library so that `AutoConfig.from_pretrained(..., trust_remote_code=True)`
works on a machine without `astropt_hf` installed.
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig

# Upstream astroPT sizes (layers, heads, width) and the peak learning rate each was trained with.
ASTROPT_PRESETS: dict[str, dict] = {
    "astropt-001M": {"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 128, "learning_rate": 1e-3},
    "astropt-005M": {"num_hidden_layers": 6, "num_attention_heads": 8, "hidden_size": 256, "learning_rate": 1e-3},
    "astropt-012M": {"num_hidden_layers": 6, "num_attention_heads": 8, "hidden_size": 384, "learning_rate": 1e-3},
    "astropt-021M": {"num_hidden_layers": 6, "num_attention_heads": 8, "hidden_size": 512, "learning_rate": 1e-3},
    "astropt-089M": {"num_hidden_layers": 12, "num_attention_heads": 12, "hidden_size": 768, "learning_rate": 6e-4},
    "astropt-309M": {"num_hidden_layers": 24, "num_attention_heads": 16, "hidden_size": 1024, "learning_rate": 3e-4},
    "astropt-830M": {"num_hidden_layers": 16, "num_attention_heads": 8, "hidden_size": 2048, "learning_rate": 3e-4},
    "astropt-2100M": {"num_hidden_layers": 26, "num_attention_heads": 32, "hidden_size": 2560, "learning_rate": 1.6e-4},
}

PATCH_EMBEDDINGS = ("gelu_mlp", "relu_mlp", "linear")
PATCH_ORDERS = ("spiral", "raster")
PATCH_NORMS = ("per_patch", "per_image", "none")
LOSSES = ("huber", "mse")
POOLINGS = ("mean", "mean_first_k", "last")
OBJECTIVES = ("next_patch", "masked_patch")
ATTENTION_PATTERNS = ("causal", "prefix", "bidirectional")
HEAD_TYPES = ("linear", "binned_pdf", "gaussian_mixture")
# Modalities in sequence order: upstream orders them by name, so images come before spectra.
MODALITIES = ("images", "spectra")
SPECTRUM_POSITION_ENCODINGS = ("wavelength", "learned")

# One checkpoint serves all three heads: save_pretrained adds the saving class's entry on top of these.
DEFAULT_AUTO_MAP = {
    "AutoConfig": "configuration_astropt.AstroPTConfig",
    "AutoModel": "modeling_astropt.AstroPTModel",
    "AutoModelForPreTraining": "modeling_astropt.AstroPTForPreTraining",
    "AutoModelForImageClassification": "modeling_astropt.AstroPTForImageClassification",
}


def _require_choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"AstroPTConfig.{field}={value!r} is not valid; expected one of {list(choices)}")


def _require_positive_int(field: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"AstroPTConfig.{field}={value!r} is not valid; expected a positive integer")


class AstroPTConfig(PretrainedConfig):
    r"""Configuration of an astroPT model: a transformer over image patches that regresses the next patch
    (causal or prefix attention) or reconstructs masked patches (bidirectional attention).

    Args:
        image_size (`int`): side of the square input image in pixels.
        patch_size (`int`): side of a square patch; `image_size` must be a multiple of it.
        num_channels (`int`): number of bands (3 for DESI grz).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: transformer shape
            (`intermediate_size` defaults to `4 * hidden_size`, as upstream).
        max_position_embeddings (`int`): rows of the learned position table; defaults to the number of
            patches. Upstream's `block_size`.
        layer_norm_eps, initializer_range: LayerNorm epsilon and the std of the GPT-2 style init.
        hidden_dropout_prob, attention_probs_dropout_prob: dropout probabilities.
        use_bias (`bool`): biases in the transformer's linears and LayerNorms (upstream default False).
        patch_embedding (`str`): the patch "tokeniser" and its mirrored decoder head:
            `"gelu_mlp"` (upstream v2 "aim"), `"relu_mlp"` (upstream v1) or `"linear"` (upstream "affine").
        patch_order (`str`): `"spiral"` (centre outwards, upstream) or `"raster"`.
        patch_norm (`str`): `"per_patch"` (upstream: each patch vector standardised on its own),
            `"per_image"` (each image standardised as a whole, keeping colours and brightness contrasts)
            or `"none"`.
        patch_norm_eps (`float`): added to the std in the normalisation (upstream 1e-8).
        transpose_patch_grid (`bool`): read images as (C, W, H) like upstream's
            `np.array(img).swapaxes(0, 2)`; set by the upstream converter so plain images give upstream's numbers.
        loss (`str`): `"huber"` (with `huber_delta`) or `"mse"`.
        pooling (`str`): how patch embeddings become one image embedding: `"mean"` over all patches,
            `"mean_first_k"` over the first `pooling_num_patches` in sequence order (the central ones with
            spiral order), or `"last"`.
        modalities (`list[str]`, *optional*): what the sequence holds, in sequence order: `["images"]` (default) or
            `["images", "spectra"]` (image patches, then spectrum patches; upstream orders modalities by name).
        spectrum_patch_size (`int`): samples per spectrum patch (upstream 256); spectra are zero-padded at the
            end to whole patches.
        spectrum_position_encoding (`str`): `"wavelength"` (upstream: a position MLP of the same kind as the
            tokeniser reads each patch's `spectrum_patch_size` wavelengths, as
            `(wavelength - spectrum_wavelength_offset) / spectrum_wavelength_scale`, zero where padded) or
            `"learned"` (a table indexed by the patch's place in the spectrum).
        spectrum_wavelength_offset, spectrum_wavelength_scale (`float`): in Angstrom; upstream's 3000 and
            7000 map its 3000-10000 A range onto [0, 1].
        spectrum_max_patches (`int`): the most spectrum patches in one sequence (rows of the learned table);
            31 holds a DESI spectrum (7,781 samples) in patches of 256.
        image_loss_weight, spectrum_loss_weight (`float`): each modality's weight in the next-patch loss (sum of
            weighted losses over the number of modalities present, as upstream; upstream's spectra weigh 0.5).
        embedding_layer (`str` or `int`): which block's output feeds the pooling: `"last"` (after the final
            LayerNorm), `"middle"` (block `num_hidden_layers // 2`, as upstream v2) or a block index.
        objective (`str`): `"next_patch"` (regress each patch from the ones before it; upstream `"ar"`) or
            `"masked_patch"` (replace a random `mask_ratio` of the patch embeddings with a learned mask token
            and reconstruct them, BERT-style; upstream `"mae"`).
        mask_ratio (`float`): fraction of patches masked per image for `"masked_patch"`, in (0, 1).
        norm_pix_loss (`bool`): for `"masked_patch"`, standardise each target patch (its mean and unbiased
            variance + 1e-6) before the loss, as in MAE.
        attention_pattern (`str`): `"causal"` (each patch sees the ones before it), `"prefix"` (bidirectional
            inside a prefix, causal after it, as AIM; features default to the whole image as prefix) or
            `"bidirectional"` (every patch sees every patch). `"masked_patch"` needs a non-causal pattern.
        head_type (`str`): the image-classification head: `"linear"` (logits or a point regression),
            `"binned_pdf"` (a softmax over the bins `pdf_bins` of one continuous target, read as a
            piecewise-constant density) or `"gaussian_mixture"` (`pdf_num_components` Gaussians; their
            means and widths are scaled by the range of `pdf_bins`, over which the PDF is also evaluated).
        pdf_bins (`list[float]`): increasing bin edges of the PDF heads, in the target's units; default
            `pdf_num_bins` equal bins from `pdf_min` to `pdf_max`.
        pdf_label_smoothing (`float`): for `"binned_pdf"`, the width (in mean bin widths) of a Gaussian that
            spreads each training target over neighbouring bins; 0 trains on the exact likelihood.
    """

    model_type = "astropt"

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 8,
        num_channels: int = 3,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 8,
        intermediate_size: int | None = None,
        max_position_embeddings: int | None = None,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        use_bias: bool = False,
        patch_embedding: str = "gelu_mlp",
        patch_order: str = "spiral",
        patch_norm: str = "per_patch",
        patch_norm_eps: float = 1e-8,
        transpose_patch_grid: bool = False,
        loss: str = "huber",
        huber_delta: float = 1.0,
        pooling: str = "mean",
        pooling_num_patches: int = 64,
        embedding_layer: str | int = "last",
        modalities: list[str] | None = None,
        spectrum_patch_size: int = 256,
        spectrum_position_encoding: str = "wavelength",
        spectrum_wavelength_offset: float = 3000.0,
        spectrum_wavelength_scale: float = 7000.0,
        spectrum_max_patches: int = 31,
        image_loss_weight: float = 1.0,
        spectrum_loss_weight: float = 0.5,
        objective: str = "next_patch",
        mask_ratio: float = 0.5,
        norm_pix_loss: bool = False,
        attention_pattern: str = "causal",
        head_type: str = "linear",
        pdf_bins: list[float] | None = None,
        pdf_min: float | None = None,
        pdf_max: float | None = None,
        pdf_num_bins: int = 64,
        pdf_label_smoothing: float = 0.0,
        pdf_num_components: int = 5,
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else 4 * hidden_size
        num_patches = (image_size // patch_size) ** 2 if patch_size else 0
        self.max_position_embeddings = max_position_embeddings if max_position_embeddings is not None else num_patches
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.use_bias = use_bias
        self.patch_embedding = patch_embedding
        self.patch_order = patch_order
        self.patch_norm = patch_norm
        self.patch_norm_eps = patch_norm_eps
        self.transpose_patch_grid = transpose_patch_grid
        self.loss = loss
        self.huber_delta = huber_delta
        self.pooling = pooling
        self.pooling_num_patches = pooling_num_patches
        self.embedding_layer = embedding_layer
        # --- modalities ---
        if modalities is None:
            modalities = ["images"]
        self.modalities = list(modalities) if isinstance(modalities, (list, tuple)) else modalities
        self.spectrum_patch_size = spectrum_patch_size
        self.spectrum_position_encoding = spectrum_position_encoding
        self.spectrum_wavelength_offset = spectrum_wavelength_offset
        self.spectrum_wavelength_scale = spectrum_wavelength_scale
        self.spectrum_max_patches = spectrum_max_patches
        self.image_loss_weight = image_loss_weight
        self.spectrum_loss_weight = spectrum_loss_weight
        # ---
        self.objective = objective
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.attention_pattern = attention_pattern
        self.head_type = head_type
        self.pdf_bins = pdf_bins
        self.pdf_min, self.pdf_max, self.pdf_num_bins = pdf_min, pdf_max, pdf_num_bins
        self.pdf_label_smoothing = pdf_label_smoothing
        self.pdf_num_components = pdf_num_components
        kwargs.setdefault("auto_map", dict(DEFAULT_AUTO_MAP))
        super().__init__(**kwargs)
        self.validate_astropt()

    # --- derived geometry -------------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        """Patches along one side of the image."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch vector, P = patch_size * patch_size * num_channels."""
        return self.patch_size * self.patch_size * self.num_channels

    def resolve_embedding_layer(self, layer: str | int | None = None) -> int:
        """Block index whose output feeds the pooling; `num_hidden_layers` means "after the final LayerNorm"."""
        layer = self.embedding_layer if layer is None else layer
        if layer == "last":
            return self.num_hidden_layers
        if layer == "middle":
            return self.num_hidden_layers // 2
        if isinstance(layer, int) and not isinstance(layer, bool):
            index = layer + self.num_hidden_layers if layer < 0 else layer
            if 0 <= index < self.num_hidden_layers:
                return index
        raise ValueError(
            f"AstroPTConfig.embedding_layer={layer!r} is not valid; expected 'last', 'middle' or a block index "
            f"in [-{self.num_hidden_layers}, {self.num_hidden_layers - 1}]"
        )

    # --- validation -------------------------------------------------------------------------------
    def validate_astropt(self) -> None:
        """Raise `ValueError` naming the field and value of any invalid setting or combination."""
        for field in ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                      "num_attention_heads", "intermediate_size", "max_position_embeddings", "pooling_num_patches"):
            _require_positive_int(field, getattr(self, field))
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"AstroPTConfig.image_size={self.image_size} is not divisible by patch_size={self.patch_size}"
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"AstroPTConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.num_patches > self.max_position_embeddings:
            raise ValueError(
                f"AstroPTConfig.max_position_embeddings={self.max_position_embeddings} is smaller than the "
                f"number of patches {self.num_patches} (image_size={self.image_size}, patch_size={self.patch_size})"
            )
        _require_choice("patch_embedding", self.patch_embedding, PATCH_EMBEDDINGS)
        _require_choice("patch_order", self.patch_order, PATCH_ORDERS)
        _require_choice("patch_norm", self.patch_norm, PATCH_NORMS)
        _require_choice("loss", self.loss, LOSSES)
        _require_choice("pooling", self.pooling, POOLINGS)
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"AstroPTConfig.{field}={value!r} is not valid; expected a value in [0, 1)")
        if not (self.huber_delta > 0 and math.isfinite(self.huber_delta)):
            raise ValueError(f"AstroPTConfig.huber_delta={self.huber_delta!r} is not valid; expected > 0")
        self._validate_modalities()
        self.resolve_embedding_layer()
        self._validate_objective()
        self._validate_head()

    @property
    def has_spectra(self) -> bool:
        return "spectra" in self.modalities

    def _validate_modalities(self) -> None:
        names = self.modalities
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ValueError(f"AstroPTConfig.modalities={names!r} is not valid; expected a list of distinct names")
        for name in names:
            _require_choice("modalities", name, MODALITIES)
        if "images" not in names:
            raise ValueError(f"AstroPTConfig.modalities={names!r} is not valid; images are always a modality")
        self.modalities = [n for n in MODALITIES if n in names]  # sequence order, whatever order was given
        _require_positive_int("spectrum_patch_size", self.spectrum_patch_size)
        _require_positive_int("spectrum_max_patches", self.spectrum_max_patches)
        _require_choice("spectrum_position_encoding", self.spectrum_position_encoding, SPECTRUM_POSITION_ENCODINGS)
        for field in ("spectrum_wavelength_offset", "spectrum_wavelength_scale", "image_loss_weight",
                      "spectrum_loss_weight"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                field != "spectrum_wavelength_offset" and value <= 0
            ):
                raise ValueError(f"AstroPTConfig.{field}={value!r} is not valid; expected a finite number"
                                 + ("" if field == "spectrum_wavelength_offset" else " > 0"))
        if self.has_spectra and (self.objective != "next_patch" or self.attention_pattern != "causal"):
            raise ValueError(
                "AstroPTConfig.modalities with 'spectra' needs objective='next_patch' and attention_pattern='causal' "
                f"(as upstream's multimodal models); got {self.objective!r} with {self.attention_pattern!r}"
            )

    def _validate_objective(self) -> None:
        _require_choice("objective", self.objective, OBJECTIVES)
        _require_choice("attention_pattern", self.attention_pattern, ATTENTION_PATTERNS)
        if isinstance(self.mask_ratio, bool) or not isinstance(self.mask_ratio, (int, float)) or not (
            0.0 < self.mask_ratio < 1.0
        ):
            raise ValueError(f"AstroPTConfig.mask_ratio={self.mask_ratio!r} is not valid; expected a value in (0, 1)")
        if not isinstance(self.norm_pix_loss, bool):
            raise ValueError(f"AstroPTConfig.norm_pix_loss={self.norm_pix_loss!r} is not valid; expected True or False")
        if self.objective == "masked_patch" and self.attention_pattern == "causal":
            raise ValueError(
                "AstroPTConfig.objective='masked_patch' needs attention_pattern='bidirectional' or 'prefix' "
                "(a masked patch is reconstructed from the patches around it); got attention_pattern='causal'"
            )

    def _validate_head(self) -> None:
        """Also fills `pdf_bins` from `pdf_min`, `pdf_max` and `pdf_num_bins`: `from_pretrained` sets keyword
        overrides after the constructor, so the model calls this again before building its head."""
        _require_choice("head_type", self.head_type, HEAD_TYPES)
        _require_positive_int("pdf_num_bins", self.pdf_num_bins)
        if self.pdf_bins is None and self.pdf_min is not None and self.pdf_max is not None:
            low, high, count = float(self.pdf_min), float(self.pdf_max), self.pdf_num_bins
            self.pdf_bins = [low + (high - low) * i / count for i in range(count + 1)]
        _require_positive_int("pdf_num_components", self.pdf_num_components)
        smoothing = self.pdf_label_smoothing
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing < math.inf:
            raise ValueError(f"AstroPTConfig.pdf_label_smoothing={smoothing!r} is not valid; expected >= 0")
        if self.head_type == "linear" and self.pdf_bins is None:
            return
        edges = self.pdf_bins
        try:
            edges = [float(edge) for edge in edges]
            valid = len(edges) >= 2 and all(math.isfinite(e) for e in edges) and all(
                high > low for low, high in zip(edges, edges[1:])
            )
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ValueError(
                f"AstroPTConfig.pdf_bins={self.pdf_bins!r} is not valid for head_type={self.head_type!r}; expected "
                "at least 2 finite, increasing edges (or pdf_min < pdf_max and pdf_num_bins)"
            )
        self.pdf_bins = edges

    @property
    def head_outputs(self) -> int:
        """Width of the image-classification head's output: one logit per label, per PDF bin, or
        (weight logit, mean, log width) per mixture component."""
        if self.head_type == "binned_pdf":
            return len(self.pdf_bins) - 1
        if self.head_type == "gaussian_mixture":
            return 3 * self.pdf_num_components
        return self.num_labels

    # --- presets ----------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> AstroPTConfig:
        """An upstream size by name (e.g. `"astropt-089M"`), defaulting to upstream's 512px grz images in
        16px patches; any field can be overridden."""
        if name not in ASTROPT_PRESETS:
            raise ValueError(f"unknown astroPT preset {name!r}; expected one of {sorted(ASTROPT_PRESETS)}")
        shape = {k: v for k, v in ASTROPT_PRESETS[name].items() if k != "learning_rate"}
        kwargs = {"image_size": 512, "patch_size": 16, "num_channels": 3, **shape, **overrides}
        return cls(**kwargs)


__all__ = [
    "ASTROPT_PRESETS", "ATTENTION_PATTERNS", "DEFAULT_AUTO_MAP", "HEAD_TYPES", "MODALITIES", "OBJECTIVES",
    "AstroPTConfig",
]
