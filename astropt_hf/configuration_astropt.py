"""AstroPT model configuration.

This file is one of the three "remote code" files copied next to every checkpoint: it imports only
transformers and the standard library so that `AutoConfig.from_pretrained(..., trust_remote_code=True)`
works on a machine without `astropt_hf` installed.
"""

from __future__ import annotations

import inspect
import math
import numbers

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


def _plain(value):
    """A numpy scalar (or 0-d array) as the Python bool, int, float or str it holds; anything else as it is."""
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


class AstroPTConfigTypeError(TypeError, ValueError):
    """A setting of the wrong kind (a string or None where a number belongs, a number where a flag does). Also a
    `ValueError`, which is what every invalid setting raised before kinds and domains were told apart."""


def _shown(value) -> str:
    """`repr(value)`, except for integers too long to print (Python refuses over 4,300 digits)."""
    if isinstance(value, int) and value.bit_length() > 1024:
        return f"<an integer of {value.bit_length()} bits>"
    return repr(value)


def _invalid(field: str, value, expected: str, error: type[Exception] = ValueError) -> Exception:
    return error(f"AstroPTConfig.{field}={_shown(value)} is not valid; expected {expected}")


def _require_choice(field: str, value, choices) -> str:
    value = _plain(value)
    if not isinstance(value, str) or value not in choices:
        raise _invalid(field, value, f"one of {list(choices)}",
                       ValueError if isinstance(value, str) else AstroPTConfigTypeError)
    return value


def _integer(field: str, value, cap: int, low: int = 1) -> int:
    value = _plain(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _invalid(field, value, f"an integer >= {low}", AstroPTConfigTypeError)
    if value < low:
        raise _invalid(field, value, f"an integer >= {low}")
    if value > cap:
        raise ValueError(f"AstroPTConfig.{field}={_shown(value)} is over the limit; expected an integer in "
                         f"[{low}, {cap}] (the model is allocated at that size); raise "
                         f"AstroPTConfig.MAX_SIZES[{field!r}] to lift it")
    return int(value)


def _real(field: str, value, expected: str, within) -> float:
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _invalid(field, value, f"a real number {expected}".strip(), AstroPTConfigTypeError)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        number = math.inf
    if not (math.isfinite(number) and within(number)):
        raise _invalid(field, value, f"a finite number {expected}".strip())
    return number


def _flag(field: str, value) -> bool:
    value = _plain(value)
    if not isinstance(value, bool):
        raise _invalid(field, value, "True or False", AstroPTConfigTypeError)
    return value


_POSITIVE = ("> 0", lambda x: x > 0)
_PROBABILITY = ("in [0, 1)", lambda x: 0 <= x < 1)
# Every real-valued field and its domain (pdf_min and pdf_max may also be None: see _validate_head).
_REAL_FIELDS = {
    "layer_norm_eps": _POSITIVE, "initializer_range": _POSITIVE, "patch_norm_eps": _POSITIVE,
    "huber_delta": _POSITIVE, "hidden_dropout_prob": _PROBABILITY, "attention_probs_dropout_prob": _PROBABILITY,
    "spectrum_wavelength_offset": ("", lambda x: True), "spectrum_wavelength_scale": _POSITIVE,
    "image_loss_weight": _POSITIVE, "spectrum_loss_weight": _POSITIVE,
    "mask_ratio": ("in (0, 1)", lambda x: 0 < x < 1), "pdf_label_smoothing": (">= 0", lambda x: x >= 0),
}
_FLAG_FIELDS = ("use_bias", "transpose_patch_grid", "norm_pix_loss")
_CHOICE_FIELDS = {
    "patch_embedding": PATCH_EMBEDDINGS, "patch_order": PATCH_ORDERS, "patch_norm": PATCH_NORMS, "loss": LOSSES,
    "pooling": POOLINGS, "spectrum_position_encoding": SPECTRUM_POSITION_ENCODINGS, "objective": OBJECTIVES,
    "attention_pattern": ATTENTION_PATTERNS, "head_type": HEAD_TYPES,
}
# Integer sizes, in the order they are checked: the defaults of intermediate_size and max_position_embeddings
# read the shape before them.
_SHAPE_FIELDS = ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads")
_COUNT_FIELDS = ("intermediate_size", "max_position_embeddings", "pooling_num_patches", "spectrum_patch_size",
                 "spectrum_max_patches", "pdf_num_bins", "pdf_num_components")


class AstroPTConfig(PretrainedConfig):
    r"""Configuration of an astroPT model: a transformer over image patches that regresses the next patch
    (causal or prefix attention) or reconstructs masked patches (bidirectional attention).

    Every field is checked when the config is built and again when a model is built from it: a `TypeError`
    (a wrong kind) or `ValueError` (outside the domain) names the field, its domain and the value; numpy
    scalars are stored as Python numbers. Sizes are capped by `MAX_SIZES` and the approximate parameter count
    by `MAX_PARAMETERS` (class attributes; raise them to lift a cap).

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
        modalities (`list[str]`): what the sequence holds, in sequence order: `["images"]` (default) or
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
    # Limits checked before anything is allocated, so that a mistyped or hostile config.json fails at once
    # instead of exhausting memory; every preset is far inside them. Raise an entry (or MAX_PARAMETERS) on the
    # class to lift a limit.
    MAX_SIZES = {
        "image_size": 8192, "patch_size": 1024, "num_channels": 512, "hidden_size": 65536, "num_hidden_layers": 1024,
        "num_attention_heads": 1024, "intermediate_size": 262144, "max_position_embeddings": 65536,
        "num_patches": 65536, "patch_dim": 262144, "pooling_num_patches": 65536, "spectrum_patch_size": 65536,
        "spectrum_max_patches": 65536, "pdf_num_bins": 65536, "pdf_num_components": 1024,
    }
    MAX_PARAMETERS = 10_000_000_000

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
        # stored as given: validate_astropt checks them, converts numpy scalars and fills the None defaults
        self.image_size, self.patch_size, self.num_channels = image_size, patch_size, num_channels
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size, self.max_position_embeddings = intermediate_size, max_position_embeddings
        self.layer_norm_eps, self.initializer_range, self.use_bias = layer_norm_eps, initializer_range, use_bias
        self.hidden_dropout_prob, self.attention_probs_dropout_prob = hidden_dropout_prob, attention_probs_dropout_prob
        self.patch_embedding, self.patch_order, self.patch_norm = patch_embedding, patch_order, patch_norm
        self.patch_norm_eps, self.transpose_patch_grid = patch_norm_eps, transpose_patch_grid
        self.loss, self.huber_delta = loss, huber_delta
        self.pooling, self.pooling_num_patches, self.embedding_layer = pooling, pooling_num_patches, embedding_layer
        # --- modalities ---
        self.modalities = ["images"] if modalities is None else modalities
        self.spectrum_patch_size, self.spectrum_max_patches = spectrum_patch_size, spectrum_max_patches
        self.spectrum_position_encoding = spectrum_position_encoding
        self.spectrum_wavelength_offset = spectrum_wavelength_offset
        self.spectrum_wavelength_scale = spectrum_wavelength_scale
        self.image_loss_weight, self.spectrum_loss_weight = image_loss_weight, spectrum_loss_weight
        # --- objective, attention and the classification head ---
        self.objective, self.mask_ratio, self.norm_pix_loss = objective, mask_ratio, norm_pix_loss
        self.attention_pattern, self.head_type = attention_pattern, head_type
        self.pdf_bins, self.pdf_min, self.pdf_max, self.pdf_num_bins = pdf_bins, pdf_min, pdf_max, pdf_num_bins
        self.pdf_label_smoothing, self.pdf_num_components = pdf_label_smoothing, pdf_num_components
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

    @property
    def has_spectra(self) -> bool:
        return "spectra" in self.modalities

    def resolve_embedding_layer(self, layer: str | int | None = None) -> int:
        """Block index whose output feeds the pooling; `num_hidden_layers` means "after the final LayerNorm"."""
        layer = _plain(self.embedding_layer if layer is None else layer)
        if isinstance(layer, str) and layer in ("last", "middle"):
            return self.num_hidden_layers if layer == "last" else self.num_hidden_layers // 2
        if isinstance(layer, int) and not isinstance(layer, bool):
            index = layer + self.num_hidden_layers if layer < 0 else layer
            if 0 <= index < self.num_hidden_layers:
                return index
        raise ValueError(
            f"AstroPTConfig.embedding_layer={layer!r} is not valid; expected 'last', 'middle' or a block index "
            f"in [-{self.num_hidden_layers}, {self.num_hidden_layers - 1}] (num_hidden_layers={self.num_hidden_layers})"
        )

    # --- validation -------------------------------------------------------------------------------
    def validate_astropt(self) -> None:
        """The one validation path: every field's kind and domain, their combinations and the size limits.
        Raises `TypeError` (a wrong kind; also a `ValueError`) or `ValueError` naming the field, the expected
        domain and the value; stores numpy scalars as Python numbers and fills the None defaults. Idempotent:
        `from_pretrained` sets keyword overrides after the constructor, so every model calls it again."""
        self._check_sizes(_SHAPE_FIELDS)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self._validate_geometry()
        if self.max_position_embeddings is None:
            self.max_position_embeddings = self.num_patches
        self._check_sizes(_COUNT_FIELDS)
        if self.num_patches > self.max_position_embeddings:
            raise ValueError(
                f"AstroPTConfig.max_position_embeddings={self.max_position_embeddings} is smaller than the "
                f"number of patches {self.num_patches} (image_size={self.image_size}, patch_size={self.patch_size})"
            )
        for field, (expected, within) in _REAL_FIELDS.items():
            setattr(self, field, _real(field, getattr(self, field), expected, within))
        for field in _FLAG_FIELDS:
            setattr(self, field, _flag(field, getattr(self, field)))
        for field, choices in _CHOICE_FIELDS.items():
            setattr(self, field, _require_choice(field, getattr(self, field), choices))
        self._validate_modalities()
        self.embedding_layer = _plain(self.embedding_layer)
        self.resolve_embedding_layer()
        self._validate_objective()
        self._validate_head()
        self._check_parameter_count()

    def _check_sizes(self, fields) -> None:
        for field in fields:
            setattr(self, field, _integer(field, getattr(self, field), self.MAX_SIZES[field]))

    def _validate_geometry(self) -> None:
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"AstroPTConfig.image_size={self.image_size} is not divisible by patch_size={self.patch_size}"
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"AstroPTConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        for name, size in (("num_patches", self.num_patches), ("patch_dim", self.patch_dim)):
            if size > self.MAX_SIZES[name]:
                raise ValueError(
                    f"AstroPTConfig.image_size={self.image_size}, patch_size={self.patch_size} and num_channels="
                    f"{self.num_channels} give {name}={size}, over the limit of {self.MAX_SIZES[name]}; raise "
                    f"AstroPTConfig.MAX_SIZES[{name!r}] to lift it"
                )

    def approximate_num_parameters(self) -> int:
        """An upper estimate of the pretraining model's parameter count, from the config alone: the blocks with
        biases, the position table, and the patch tokeniser and head (and the spectrum's) as the widest kind."""
        width, inner = self.hidden_size, self.intermediate_size
        blocks = self.num_hidden_layers * (4 * width * width + 2 * width * inner + 9 * width + inner) + 2 * width
        tokenisers = 8 * width * (self.patch_dim + width + 2) + self.patch_dim + self.max_position_embeddings * width
        if self.has_spectra:  # tokeniser, position MLP and head, plus the learned position table
            size = self.spectrum_patch_size
            tokenisers += 12 * width * (size + width + 2) + 3 * size + self.spectrum_max_patches * width
        return blocks + tokenisers

    def _check_parameter_count(self) -> None:
        count = self.approximate_num_parameters()
        if count > self.MAX_PARAMETERS:
            fields = ["hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings",
                      "patch_size", "num_channels"] + (["spectrum_patch_size"] if self.has_spectra else [])
            sizes = ", ".join(f"{field}={getattr(self, field)}" for field in fields)
            raise ValueError(f"AstroPTConfig sizes {sizes} make a model of about {count:,} parameters, over the "
                             f"limit of {self.MAX_PARAMETERS:,}; raise AstroPTConfig.MAX_PARAMETERS to lift it")

    def _validate_modalities(self) -> None:
        names = list(self.modalities) if isinstance(self.modalities, tuple) else self.modalities
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise _invalid("modalities", names, "a list of distinct names",
                           ValueError if isinstance(names, list) else AstroPTConfigTypeError)
        for name in names:
            _require_choice("modalities", name, MODALITIES)
        if "images" not in names:
            raise ValueError(f"AstroPTConfig.modalities={names!r} is not valid; images are always a modality")
        self.modalities = [n for n in MODALITIES if n in names]  # sequence order, whatever order was given
        if self.has_spectra and (self.objective != "next_patch" or self.attention_pattern != "causal"):
            raise ValueError(
                "AstroPTConfig.modalities with 'spectra' needs objective='next_patch' and attention_pattern='causal' "
                f"(as upstream's multimodal models); got {self.objective!r} with {self.attention_pattern!r}"
            )

    def _validate_objective(self) -> None:
        if self.objective == "masked_patch" and self.attention_pattern == "causal":
            raise ValueError(
                "AstroPTConfig.objective='masked_patch' needs attention_pattern='bidirectional' or 'prefix' "
                "(a masked patch is reconstructed from the patches around it); got attention_pattern='causal'"
            )

    def _validate_head(self) -> None:
        """Also fills `pdf_bins` from `pdf_min`, `pdf_max` and `pdf_num_bins`."""
        for field in ("pdf_min", "pdf_max"):
            if getattr(self, field) is not None:
                setattr(self, field, _real(field, getattr(self, field), "(or None)", lambda x: True))
        if self.pdf_bins is None and self.pdf_min is not None and self.pdf_max is not None:
            low, high, count = self.pdf_min, self.pdf_max, self.pdf_num_bins
            self.pdf_bins = [low + (high - low) * i / count for i in range(count + 1)]
        if self.head_type == "linear" and self.pdf_bins is None:
            return
        edges = self.pdf_bins.tolist() if hasattr(self.pdf_bins, "tolist") else self.pdf_bins
        valid = isinstance(edges, (list, tuple)) and 2 <= len(edges) <= self.MAX_SIZES["pdf_num_bins"] + 1
        try:
            edges = [_real("pdf_bins", edge, "", lambda x: True) for edge in edges] if valid else edges
            valid = valid and all(high > low for low, high in zip(edges, edges[1:]))
        except ValueError:  # also the TypeError of a wrong kind
            valid = False
        if not valid:
            raise ValueError(
                f"AstroPTConfig.pdf_bins={self.pdf_bins!r} is not valid for head_type={self.head_type!r}; expected "
                f"2 to {self.MAX_SIZES['pdf_num_bins'] + 1} finite, increasing edges (or pdf_min < pdf_max and "
                "pdf_num_bins)"
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

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Keyword overrides of astroPT fields (as `from_pretrained` passes them) go through the constructor, so
        they are checked and converted before transformers uses the config; other keywords as transformers'."""
        fields = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in fields}
        return super().from_dict({**config_dict, **overrides}, **kwargs)

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
    "AstroPTConfig", "AstroPTConfigTypeError",
]
