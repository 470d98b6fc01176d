import json

import pytest

from astropt_hf import ASTROPT_PRESETS, AstroPTConfig


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
