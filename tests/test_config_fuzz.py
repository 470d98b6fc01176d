"""Property-based checks of AstroPTConfig's validation: any mix of field values either gives a config (whose
small instances build models that run) or raises TypeError / ValueError naming one of the fields it was given,
never another exception and never a hang."""

import json
import signal
from contextlib import contextmanager

import numpy as np
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from astropt_hf import AstroPTConfig, AstroPTForImageClassification, AstroPTForPreTraining

BASE = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
INTEGER_FIELDS = [
    "image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "max_position_embeddings", "pooling_num_patches", "spectrum_patch_size",
    "spectrum_max_patches", "pdf_num_bins", "pdf_num_components",
]
REAL_FIELDS = [
    "layer_norm_eps", "initializer_range", "hidden_dropout_prob", "attention_probs_dropout_prob", "patch_norm_eps",
    "huber_delta", "spectrum_wavelength_offset", "spectrum_wavelength_scale", "image_loss_weight",
    "spectrum_loss_weight", "mask_ratio", "pdf_label_smoothing", "pdf_min", "pdf_max",
]
FLAG_FIELDS = ["use_bias", "transpose_patch_grid", "norm_pix_loss"]
CHOICES = {
    "patch_embedding": ["gelu_mlp", "relu_mlp", "linear"], "patch_order": ["spiral", "raster"],
    "patch_norm": ["per_patch", "per_image", "none"], "loss": ["huber", "mse"],
    "pooling": ["mean", "mean_first_k", "last"], "objective": ["next_patch", "masked_patch"],
    "attention_pattern": ["causal", "prefix", "bidirectional"],
    "head_type": ["linear", "binned_pdf", "gaussian_mixture"],
    "spectrum_position_encoding": ["wavelength", "learned"], "embedding_layer": ["last", "middle", 0, 1, -1, 5],
    "modalities": [["images"], ["images", "spectra"], ("spectra", "images"), ["spectra"], "images", []],
}
FIELDS = INTEGER_FIELDS + REAL_FIELDS + FLAG_FIELDS + list(CHOICES) + ["pdf_bins"]

# Values of every kind, whatever the field: wrong kinds, numpy scalars, huge and non-finite numbers.
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.sampled_from([10**400, -(10**400), 2**63]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.sampled_from(["32", "no", "1e-5", ""]),
    st.integers(-4, 64).map(np.int64), st.floats(-2, 2, width=32).map(np.float32), st.booleans().map(np.bool_),
    st.lists(st.integers(0, 4), max_size=3), st.just({}),
)
FIELD_VALUES = {
    **{field: st.one_of(st.integers(-2, 70), st.sampled_from([2**20, 10**9, 10**18]), st.integers(0, 64).map(np.int64))
       for field in INTEGER_FIELDS},
    **{field: st.one_of(st.floats(-1, 2), st.sampled_from([0.0, 1.0, 1e-12, 1e300])) for field in REAL_FIELDS},
    **{field: st.sampled_from([True, False, np.bool_(True)]) for field in FLAG_FIELDS},
    **{field: st.sampled_from(values) for field, values in CHOICES.items()},
    "pdf_bins": st.one_of(st.none(), st.lists(st.floats(-5, 5), max_size=6), st.just(np.linspace(0, 1, 5))),
}


@contextmanager
def time_limit(seconds: int):
    """A hang becomes a failure: SIGALRM interrupts the example."""

    def interrupt(signum, frame):
        raise AssertionError(f"took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def is_small(config: AstroPTConfig) -> bool:
    return (config.approximate_num_parameters() < 400_000 and config.num_patches <= 64
            and config.spectrum_patch_size * config.spectrum_max_patches <= 8192 and config.head_outputs <= 4096)


def run_tiny_models(config: AstroPTConfig) -> None:
    torch.manual_seed(0)
    pretraining = AstroPTForPreTraining(config).eval()
    assert sum(p.numel() for p in pretraining.parameters()) <= config.approximate_num_parameters()
    inputs = {"pixel_values": torch.rand(2, config.num_channels, config.image_size, config.image_size)}
    if config.has_spectra:
        length = min(config.spectrum_patch_size * config.spectrum_max_patches, 300)
        inputs.update(spectrum_values=torch.randn(2, length), spectrum_wavelengths=torch.linspace(3600, 9800, length))
    with torch.no_grad():
        output = pretraining(**inputs)
        assert output.predictions.shape == (2, config.num_patches, config.patch_dim)
        classifier = AstroPTForImageClassification(config).eval()
        assert classifier(inputs["pixel_values"]).logits.shape == (2, config.head_outputs)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.data())
def test_any_settings_give_a_config_or_an_error_naming_a_field(data):
    count = data.draw(st.integers(1, 3), label="count")
    fields = data.draw(st.permutations(FIELDS), label="fields")[:count]
    # mostly values of the field's own kind, so that valid configs (and their models) come up too
    overrides = {field: data.draw(ANY_VALUE if data.draw(st.integers(0, 3)) == 0 else FIELD_VALUES[field],
                                  label=field) for field in fields}
    with time_limit(20):
        try:
            config = AstroPTConfig(**{**BASE, **overrides})
        except (TypeError, ValueError) as error:
            assert any(field in str(error) for field in fields), (overrides, error)
            event(type(error).__name__)
            return
        # what is stored is plain Python: it writes to JSON and reads back as the same config
        assert AstroPTConfig.from_dict(json.loads(config.to_json_string())).to_dict() == config.to_dict()
        event("valid config, models run" if is_small(config) else "valid config, too big to build here")
        if is_small(config):
            run_tiny_models(config)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.sampled_from(INTEGER_FIELDS + REAL_FIELDS), ANY_VALUE)
def test_a_wrong_kind_is_a_type_error_and_a_bad_value_a_value_error(field, value):
    """Both name the field and the value; a wrong kind (str, None, bool, list) is a TypeError."""
    try:
        AstroPTConfig(**{**BASE, field: value})
    except (TypeError, ValueError) as error:
        assert f"AstroPTConfig.{field}=" in str(error) or field in str(error), error
        wrong_kind = value is None or isinstance(value, (str, bool, np.bool_, list, dict))
        assert not wrong_kind or isinstance(error, TypeError), (field, value, error)
        if wrong_kind:  # (numbers are shown as the Python number they were converted to)
            assert repr(value.item() if isinstance(value, np.generic) else value) in str(error), error
