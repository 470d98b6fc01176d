"""Layout detection, weight renaming and config mapping for upstream astroPT checkpoints."""

import pytest
import torch

from astropt_hf import AstroPTConfig, AstroPTForPreTraining
from astropt_hf.conversion import map_upstream_config, read_upstream_weights, rename_to_astropt_hf
from astropt_hf.conversion.reference_forward import upstream_patch_sequence
from astropt_hf.conversion.upstream_classes import UpstreamModalityConfig, UpstreamModalityRegistry

V2_TO_V3 = {"transformer.wte.": "encoders.", "transformer.wpe.": "embedders.", "lm_head.": "decoders."}


def upstream_state_dict(fmt, n_layer=2, width=16, patch_dim=48, block_size=16, bias=False, tokeniser="aim",
                        prefix=False, modalities=("images",)):
    """Random tensors with the names and shapes of an upstream state dict in layout `fmt`."""
    shapes = {}

    def linear(name, out_features, in_features, with_bias):
        shapes[f"{name}.weight"] = (out_features, in_features)
        if with_bias:
            shapes[f"{name}.bias"] = (out_features,)

    def norm(name):
        shapes[f"{name}.weight"] = (width,)
        if bias:
            shapes[f"{name}.bias"] = (width,)

    for i in range(n_layer):
        norm(f"transformer.h.{i}.ln_1")
        linear(f"transformer.h.{i}.attn.c_attn", 3 * width, width, bias)
        linear(f"transformer.h.{i}.attn.c_proj", width, width, bias)
        norm(f"transformer.h.{i}.ln_2")
        linear(f"transformer.h.{i}.mlp.c_fc", 4 * width, width, bias)
        linear(f"transformer.h.{i}.mlp.c_proj", width, 4 * width, bias)
    norm("transformer.ln_f")
    if fmt == "v1":
        linear("transformer.wte.0", width, patch_dim, True)
        linear("transformer.wte.2", width, width, True)
        shapes["transformer.wpe.weight"] = (block_size, width)
        linear("lm_head.0", 2 * width, width, True)
        linear("lm_head.2", width, 2 * width, True)
        linear("lm_head.4", patch_dim, width, True)
    else:
        for modality in modalities:
            if tokeniser == "aim":
                linear(f"transformer.wte.{modality}.c_fc", 4 * width, patch_dim, bias)
                linear(f"transformer.wte.{modality}.c_proj", width, 4 * width, bias)
                linear(f"lm_head.{modality}.c_fc", 4 * width, width, bias)
                linear(f"lm_head.{modality}.c_proj", patch_dim, 4 * width, bias)
            else:
                linear(f"transformer.wte.{modality}.c_fc", width, patch_dim, bias)
                linear(f"lm_head.{modality}.c_fc", patch_dim, width, bias)
            shapes[f"transformer.wpe.{modality}.wpe.weight"] = (block_size, width)
    if fmt == "v3":
        renamed = {}
        for key, shape in shapes.items():
            for old, new in V2_TO_V3.items():
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
            renamed[key] = shape
        shapes = renamed
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    return {f"_orig_mod.{k}": v for k, v in state.items()} if prefix else state


def upstream_checkpoint(fmt, patch_size=4, n_chan=3, block_size=16, image_size=None, **kwargs):
    state = upstream_state_dict(fmt, patch_dim=patch_size * patch_size * n_chan, block_size=block_size, **kwargs)
    model_args = {"n_layer": 2, "n_head": 2, "n_embd": 16, "n_chan": n_chan, "block_size": block_size, "dropout": 0.0}
    checkpoint = {"model": state, "model_args": model_args, "config": {"spiral": True}}
    if fmt == "v1":
        model_args["patch_size"] = patch_size
    else:
        model_args["tokeniser"] = kwargs.get("tokeniser", "aim")
        images = UpstreamModalityConfig()
        images.__setstate__({"name": "images", "input_size": patch_size**2 * n_chan, "pos_input_size": 1,
                             "patch_size": patch_size, "embed_pos": True, "loss_weight": 1.0})
        registry = UpstreamModalityRegistry()
        registry.__setstate__({"modalities": {"images": images}})
        checkpoint["modality_registry"] = registry
    if image_size is not None:
        checkpoint["config"]["image_size"] = image_size
    return checkpoint


@pytest.mark.parametrize("prefix", [False, True])
@pytest.mark.parametrize("fmt", ["v1", "v2", "v3"])
def test_layouts_are_detected_with_or_without_compile_prefix(fmt, prefix):
    weights = read_upstream_weights(upstream_state_dict(fmt, prefix=prefix))
    assert weights.format == fmt
    assert weights.had_compile_prefix is prefix
    assert (weights.num_layers, weights.hidden_size, weights.patch_dim, weights.block_size) == (2, 16, 48, 16)
    assert weights.tokeniser == ("relu_mlp" if fmt == "v1" else "aim")


@pytest.mark.parametrize(
    "fmt,tokeniser,bias",
    [("v1", "aim", False), ("v2", "aim", False), ("v2", "affine", True), ("v3", "aim", True), ("v3", "affine", False)],
)
def test_renamed_weights_are_exactly_our_parameters(fmt, tokeniser, bias):
    checkpoint = upstream_checkpoint(fmt, tokeniser=tokeniser, bias=bias, image_size=16)
    weights = read_upstream_weights(checkpoint["model"])
    config = AstroPTConfig(**map_upstream_config(checkpoint, weights).config_kwargs)
    ours = AstroPTForPreTraining(config).state_dict()
    renamed = rename_to_astropt_hf(weights)
    assert set(renamed) == set(ours)
    for key, tensor in renamed.items():
        assert tensor.shape == ours[key].shape, key
    # values travel unchanged (qkv keeps upstream's q, k, v stacking)
    upstream_qkv = weights.state_dict["transformer.h.1.attn.c_attn.weight"]
    torch.testing.assert_close(renamed["astropt.layers.1.attention.qkv.weight"], upstream_qkv)


def test_config_mapping_records_upstream_behaviour():
    v1 = upstream_checkpoint("v1")
    kwargs = map_upstream_config(v1, read_upstream_weights(v1["model"]), image_size=16).config_kwargs
    assert kwargs["patch_embedding"] == "relu_mlp" and kwargs["embedding_layer"] == 1
    assert (kwargs["patch_order"], kwargs["patch_norm"], kwargs["transpose_patch_grid"]) == ("spiral", "per_patch", True)
    assert (kwargs["loss"], kwargs["max_position_embeddings"], kwargs["use_bias"]) == ("huber", 16, False)
    assert (kwargs["pooling"], kwargs["pooling_num_patches"]) == ("mean_first_k", 15)  # upstream never sees patch T

    v2 = upstream_checkpoint("v2", tokeniser="affine", bias=True, image_size=16)
    kwargs = map_upstream_config(v2, read_upstream_weights(v2["model"])).config_kwargs
    assert (kwargs["patch_embedding"], kwargs["embedding_layer"], kwargs["use_bias"]) == ("linear", "middle", True)
    assert (kwargs["num_channels"], kwargs["patch_size"], kwargs["num_attention_heads"]) == (3, 4, 2)


def test_image_size_defaults():
    def size(checkpoint, requested=None):
        mapping = map_upstream_config(checkpoint, read_upstream_weights(checkpoint["model"]), image_size=requested)
        return mapping.config_kwargs["image_size"], mapping.image_size_source

    assert size(upstream_checkpoint("v1", block_size=1024, patch_size=16))[0] == 512
    assert size(upstream_checkpoint("v1", block_size=16), requested=12) == (12, "given with --image_size")
    assert size(upstream_checkpoint("v3", image_size=12))[0] == 12
    # v2.0 release shape: aim, 16 px patches, 3 bands, block_size 1024, no biases
    assert size(upstream_checkpoint("v2", patch_size=16, block_size=1024))[0] == 256
    assert size(upstream_checkpoint("v3", patch_size=16, block_size=1024))[0] == 512
    # upstream feeds T - 1 patches, so block_size T - 1 still means a T-patch image
    assert size(upstream_checkpoint("v3", patch_size=4, block_size=63))[0] == 32
    with pytest.raises(ValueError, match="--image_size=20 does not fit"):
        size(upstream_checkpoint("v1", block_size=16), requested=20)


def test_multi_modality_and_foreign_keys_are_refused():
    with pytest.raises(ValueError, match=r"not supported: modalities \['images', 'photometry'\]"):
        read_upstream_weights(upstream_state_dict("v2", modalities=("images", "photometry")))
    with pytest.raises(ValueError, match="not a recognised upstream astroPT state dict"):
        read_upstream_weights({"encoder.layer.0.weight": torch.zeros(1)})
    lora = upstream_state_dict("v2")
    lora["transformer.h.0.attn.c_attn.lora_A"] = torch.zeros(4, 16)
    with pytest.raises(ValueError, match="LoRA"):
        read_upstream_weights(lora)
    stray = upstream_state_dict("v1")
    stray["transformer.h.0.attn.rotary.inv_freq"] = torch.zeros(4)
    with pytest.raises(ValueError, match="rotary.inv_freq"):
        rename_to_astropt_hf(read_upstream_weights(stray))


def test_mask_buffer_and_task_head_are_dropped_with_a_reason():
    state = upstream_state_dict("v2")
    state["transformer.h.0.attn.bias"] = torch.ones(1, 1, 16, 16).tril()
    state["task_head.head.0.weight"] = torch.zeros(8, 16)
    weights = read_upstream_weights(state)
    renamed = rename_to_astropt_hf(weights)
    assert not any("task_head" in key for key in renamed)
    assert set(weights.dropped_keys) == {"transformer.h.0.attn.bias", "task_head.head.0.weight"}


def test_model_args_that_contradict_the_weights_are_named():
    checkpoint = upstream_checkpoint("v2", image_size=16)
    checkpoint["model_args"]["n_embd"] = 32
    with pytest.raises(ValueError, match=r"model_args\['n_embd'\]=32 disagrees with the weights, which imply 16"):
        map_upstream_config(checkpoint, read_upstream_weights(checkpoint["model"]))
    checkpoint = upstream_checkpoint("v2", image_size=16)
    checkpoint["model_args"]["tokeniser"] = "affine"
    with pytest.raises(ValueError, match="tokeniser"):
        map_upstream_config(checkpoint, read_upstream_weights(checkpoint["model"]))


def test_reference_patchify_matches_upstreams_einops_pattern():
    einops = pytest.importorskip("einops")
    image = torch.rand(2, 3, 12, 12)  # (B, C, H, W)
    upstream_view = image.transpose(-1, -2)  # np.array(pil).swapaxes(0, 2) gives (C, W, H)
    expected = einops.rearrange(upstream_view, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=4, p2=4)
    std, mean = torch.std_mean(expected, dim=-1, keepdim=True)
    expected = (expected - mean) / (std + 1e-8)
    torch.testing.assert_close(upstream_patch_sequence(image, 4, spiral=False), expected)
