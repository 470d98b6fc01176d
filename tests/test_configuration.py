import json
import re
import time

import numpy as np
import pytest

from astropt_hf import (
    ASTROPT_PRESETS,
    AstroPTConfig,
    AstroPTForImageClassification,
    AstroPTForPreTraining,
    AstroPTModel,
)


@pytest.mark.parametrize(
    "overrides, field, value",
    [
        ({"image_size": 30, "patch_size": 8}, "image_size", "30"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size", "30"),
        ({"image_size": 64, "patch_size": 8, "max_position_embeddings": 32}, "max_position_embeddings", "32"),
        ({"patch_embedding": "conv"}, "patch_embedding", "'conv'"),
        ({"patch_order": "zigzag"}, "patch_order", "'zigzag'"),
        ({"patch_norm": "global"}, "patch_norm", "'global'"),
        ({"loss": "l1"}, "loss", "'l1'"),
        ({"pooling": "max"}, "pooling", "'max'"),
        ({"embedding_layer": 7}, "embedding_layer", "7"),
        ({"embedding_layer": "first"}, "embedding_layer", "'first'"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob", "1.5"),
        ({"num_hidden_layers": 0}, "num_hidden_layers", "0"),
        ({"objective": "mae"}, "objective", "'mae'"),
        ({"attention_pattern": "full"}, "attention_pattern", "'full'"),
        ({"mask_ratio": 0.0, "objective": "masked_patch", "attention_pattern": "bidirectional"}, "mask_ratio", "0.0"),
        ({"mask_ratio": 1.0}, "mask_ratio", "1.0"),
        ({"norm_pix_loss": "yes"}, "norm_pix_loss", "'yes'"),
        ({"objective": "masked_patch"}, "attention_pattern", "'causal'"),
    ],
)
def test_invalid_values_name_field_and_value(overrides, field, value):
    kwargs = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    kwargs.update(overrides)
    with pytest.raises(ValueError) as info:
        AstroPTConfig(**kwargs)
    assert field in str(info.value) and value in str(info.value)


def test_defaults_follow_upstream_conventions():
    config = AstroPTConfig(image_size=64, patch_size=8, hidden_size=64, num_attention_heads=4)
    assert config.intermediate_size == 4 * 64
    assert config.max_position_embeddings == config.num_patches == 64
    assert config.patch_dim == 8 * 8 * 3
    assert config.use_bias is False
    assert config.resolve_embedding_layer("middle") == config.num_hidden_layers // 2
    assert config.resolve_embedding_layer("last") == config.num_hidden_layers
    assert config.resolve_embedding_layer(-1) == config.num_hidden_layers - 1


def test_presets_match_upstream_table():
    expected = {
        "astropt-001M": (4, 8, 128, 1e-3),
        "astropt-005M": (6, 8, 256, 1e-3),
        "astropt-012M": (6, 8, 384, 1e-3),
        "astropt-021M": (6, 8, 512, 1e-3),
        "astropt-089M": (12, 12, 768, 6e-4),
        "astropt-309M": (24, 16, 1024, 3e-4),
        "astropt-830M": (16, 8, 2048, 3e-4),
        "astropt-2100M": (26, 32, 2560, 1.6e-4),
    }
    assert set(ASTROPT_PRESETS) == set(expected)
    for name, (layers, heads, width, lr) in expected.items():
        config = AstroPTConfig.from_preset(name)
        assert (config.num_hidden_layers, config.num_attention_heads, config.hidden_size) == (layers, heads, width)
        assert ASTROPT_PRESETS[name]["learning_rate"] == lr
        assert config.num_patches == 1024 and config.image_size == 512
    assert AstroPTConfig.from_preset("astropt-001M", image_size=64).image_size == 64
    with pytest.raises(ValueError, match="astropt-3M"):
        AstroPTConfig.from_preset("astropt-3M")


def test_config_round_trips_through_json(tmp_path):
    config = AstroPTConfig(image_size=32, patch_size=8, hidden_size=32, num_attention_heads=4, embedding_layer="middle")
    config.save_pretrained(tmp_path)
    loaded = AstroPTConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert set(loaded.auto_map) >= {"AutoConfig", "AutoModel", "AutoModelForPreTraining", "AutoModelForImageClassification"}


def test_config_json_without_the_family_fields_loads_as_next_patch_causal(tmp_path):
    config = AstroPTConfig(image_size=32, patch_size=8, hidden_size=32, num_attention_heads=4)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("objective", "mask_ratio", "norm_pix_loss", "attention_pattern"):
        del saved[key]  # as written before these fields existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = AstroPTConfig.from_pretrained(tmp_path)
    assert (loaded.objective, loaded.attention_pattern, loaded.norm_pix_loss) == ("next_patch", "causal", False)
    assert 0 < loaded.mask_ratio < 1


@pytest.mark.parametrize("pattern", ["bidirectional", "prefix"])
def test_masked_patch_with_a_non_causal_pattern(pattern):
    config = AstroPTConfig(image_size=32, patch_size=8, hidden_size=32, num_attention_heads=4,
                           objective="masked_patch", attention_pattern=pattern, mask_ratio=0.75, norm_pix_loss=True)
    assert (config.objective, config.attention_pattern, config.mask_ratio) == ("masked_patch", pattern, 0.75)


SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)


@pytest.mark.parametrize(
    "overrides, field, error",
    [
        ({"layer_norm_eps": -1.0}, "layer_norm_eps", ValueError),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps", ValueError),
        ({"layer_norm_eps": 10**400}, "layer_norm_eps", ValueError),  # beyond float range: not an OverflowError
        ({"hidden_size": 10**5000}, "hidden_size", ValueError),  # too long for Python to print
        ({"use_bias": 10**5000}, "use_bias", TypeError),
        ({"layer_norm_eps": True}, "layer_norm_eps", TypeError),
        ({"initializer_range": -0.02}, "initializer_range", ValueError),
        ({"initializer_range": 0}, "initializer_range", ValueError),
        ({"patch_norm_eps": -1e-8}, "patch_norm_eps", ValueError),
        ({"attention_probs_dropout_prob": 1.0}, "attention_probs_dropout_prob", ValueError),
        ({"hidden_dropout_prob": -0.1}, "hidden_dropout_prob", ValueError),
        ({"huber_delta": "1"}, "huber_delta", TypeError),
        ({"use_bias": "no"}, "use_bias", TypeError),
        ({"use_bias": 1}, "use_bias", TypeError),
        ({"hidden_size": "32"}, "hidden_size", TypeError),
        ({"hidden_size": None}, "hidden_size", TypeError),
        ({"num_hidden_layers": True}, "num_hidden_layers", TypeError),
        ({"image_size": float("inf")}, "image_size", TypeError),
        ({"image_size": 32.5}, "image_size", TypeError),
        ({"hidden_size": 1e300}, "hidden_size", ValueError),
        ({"patch_order": 3}, "patch_order", TypeError),
        ({"pdf_min": "a", "pdf_max": 1.0, "head_type": "binned_pdf"}, "pdf_min", TypeError),
        ({"pdf_bins": [0.0, float("nan"), 1.0], "head_type": "binned_pdf"}, "pdf_bins", ValueError),
    ],
)
def test_kinds_and_domains_are_checked_with_the_field_and_domain_named(overrides, field, error):
    with pytest.raises(error) as info:
        AstroPTConfig(**{**SMALL, **overrides})
    message = str(info.value)
    assert f"AstroPTConfig.{field}=" in message and "expected" in message, message
    assert isinstance(info.value, ValueError)  # a wrong kind is also a ValueError, as every config error was


@pytest.mark.parametrize(
    "overrides, limit",
    [
        ({"hidden_size": 2**20}, "MAX_SIZES['hidden_size']"),
        ({"num_hidden_layers": 10**6}, "MAX_SIZES['num_hidden_layers']"),
        ({"image_size": 2**16}, "MAX_SIZES['image_size']"),
        ({"image_size": 4096, "patch_size": 2}, "MAX_SIZES['num_patches']"),
        ({"patch_size": 512, "image_size": 1024, "num_channels": 3}, "MAX_SIZES['patch_dim']"),
        ({"intermediate_size": 10**9}, "MAX_SIZES['intermediate_size']"),
        ({"max_position_embeddings": 10**8}, "MAX_SIZES['max_position_embeddings']"),
        ({"spectrum_max_patches": 10**7}, "MAX_SIZES['spectrum_max_patches']"),
        ({"pdf_num_bins": 10**9, "pdf_min": 0.0, "pdf_max": 1.0}, "MAX_SIZES['pdf_num_bins']"),
        ({"hidden_size": 16384, "num_hidden_layers": 64, "num_attention_heads": 16}, "MAX_PARAMETERS"),
    ],
)
def test_giant_sizes_are_refused_at_once_saying_how_to_lift_the_limit(overrides, limit):
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        AstroPTConfig(**{**SMALL, **overrides})
    assert f"raise AstroPTConfig.{limit} to lift it" in str(info.value)
    assert any(field in str(info.value) for field in overrides)
    assert time.perf_counter() - start < 1.0


def test_raising_the_limits_lets_a_larger_config_through(monkeypatch):
    shape = dict(image_size=1024, patch_size=2, hidden_size=32, num_attention_heads=4)
    with pytest.raises(ValueError, match=re.escape("MAX_SIZES['num_patches']")):
        AstroPTConfig(**shape)
    monkeypatch.setitem(AstroPTConfig.MAX_SIZES, "num_patches", 2**18)
    monkeypatch.setitem(AstroPTConfig.MAX_SIZES, "max_position_embeddings", 2**18)
    assert AstroPTConfig(**shape).max_position_embeddings == 2**18
    monkeypatch.setattr(AstroPTConfig, "MAX_PARAMETERS", 1000)
    with pytest.raises(ValueError, match="MAX_PARAMETERS"):
        AstroPTConfig(**SMALL)


def test_every_preset_is_inside_the_limits_and_its_size_is_estimated_from_above():
    for name in ASTROPT_PRESETS:
        config = AstroPTConfig.from_preset(name)
        assert config.approximate_num_parameters() < AstroPTConfig.MAX_PARAMETERS
    assert 2.0e9 < AstroPTConfig.from_preset("astropt-2100M").approximate_num_parameters() < 2.3e9
    config = AstroPTConfig(**SMALL, patch_embedding="relu_mlp", use_bias=True)
    assert sum(p.numel() for p in AstroPTForPreTraining(config).parameters()) <= config.approximate_num_parameters()


def test_numpy_scalars_are_accepted_and_stored_as_python_values(tmp_path):
    config = AstroPTConfig(
        image_size=np.int64(32), patch_size=np.int32(8), hidden_size=np.uint16(32), num_attention_heads=np.int8(4),
        num_hidden_layers=np.int64(2), layer_norm_eps=np.float32(1e-6), hidden_dropout_prob=np.float64(0.25),
        use_bias=np.bool_(True), embedding_layer=np.int64(-1), patch_order=np.str_("raster"),
    )
    names = ("image_size", "hidden_size", "layer_norm_eps", "use_bias", "embedding_layer", "patch_order")
    assert [type(getattr(config, name)) for name in names] == [int, int, float, bool, int, str]
    assert config.hidden_dropout_prob == 0.25 and config.resolve_embedding_layer() == 1
    config.save_pretrained(tmp_path)  # JSON takes only Python values
    assert AstroPTConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    model = AstroPTModel(config)
    assert model.layers[0].attention.qkv.bias is not None and model.layernorm.bias is not None


def test_use_bias_false_builds_no_biases_in_the_transformer():
    model = AstroPTModel(AstroPTConfig(**SMALL, use_bias=False))
    assert model.layers[0].attention.qkv.bias is None and model.layers[0].mlp.fc1.bias is None


@pytest.mark.parametrize("head", [AstroPTModel, AstroPTForPreTraining, AstroPTForImageClassification])
def test_from_pretrained_overrides_are_validated_when_the_model_is_built(tmp_path, head):
    AstroPTForPreTraining(AstroPTConfig(**SMALL)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=re.escape("AstroPTConfig.layer_norm_eps=-1.0")):
        head.from_pretrained(tmp_path, layer_norm_eps=-1.0)
    with pytest.raises(TypeError, match=re.escape("AstroPTConfig.use_bias='no'")):
        head.from_pretrained(tmp_path, use_bias="no")
    model = head.from_pretrained(tmp_path, hidden_dropout_prob=np.float32(0.25))
    assert type(model.config.hidden_dropout_prob) is float and model.config.hidden_dropout_prob == 0.25


def test_a_config_changed_by_hand_is_checked_again_when_a_model_is_built():
    config = AstroPTConfig(**SMALL)
    config.layer_norm_eps = -1.0
    for head in (AstroPTModel, AstroPTForPreTraining, AstroPTForImageClassification):
        with pytest.raises(ValueError, match=re.escape("AstroPTConfig.layer_norm_eps=-1.0")):
            head(config)
