"""Behaviour of the astroPT backbone and heads on tiny configs."""

import io
import logging
import re

import numpy as np
import pytest
import torch

from astropt_hf import AstroPTForImageClassification, AstroPTForPreTraining, AstroPTModel, spiral_order


def upstream_spiral_rank(n: int) -> np.ndarray:
    """Reference: upstream astroPT's spiral definition, rewritten from its description. Each raster cell
    gets its rank counted backwards along the clockwise outside-in walk from the top-left corner, so
    the centre has rank 0; upstream sorts patches by this rank."""
    grid = np.arange(n * n).reshape(n, n)
    walk = []
    while grid.size:
        walk.extend(grid[0])  # top row, then rotate the rest anticlockwise: the next edge comes on top
        grid = np.rot90(grid[1:])
    rank = np.empty(n * n, dtype=np.int64)
    rank[np.asarray(walk)] = np.arange(n * n)[::-1]
    return rank


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 32])
def test_spiral_is_a_permutation_from_the_centre_matching_upstream(n):
    order = spiral_order(n)
    assert sorted(order.tolist()) == list(range(n * n))
    centre_row, centre_col = divmod(int(order[0]), n)
    assert abs(centre_row - (n - 1) / 2) <= 0.5 and abs(centre_col - (n - 1) / 2) <= 0.5
    np.testing.assert_array_equal(order, np.argsort(upstream_spiral_rank(n)))
    # consecutive patches are neighbours: it really is a spiral
    rows, cols = np.divmod(order, n)
    assert np.all(np.abs(np.diff(rows)) + np.abs(np.diff(cols)) == 1)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("order", ["spiral", "raster"])
def test_patches_to_image_inverts_image_to_patches(tiny_config, order, transpose):
    model = AstroPTForPreTraining(tiny_config(patch_norm="none", patch_order=order, transpose_patch_grid=transpose))
    images = torch.randn(2, 3, 16, 16)
    patches = model.image_to_patches(images)
    assert patches.shape == (2, 16, 4 * 4 * 3)
    torch.testing.assert_close(model.patches_to_image(patches), images, rtol=0, atol=0)


def test_patch_layout_order_and_transpose(tiny_config):
    images = torch.randn(1, 3, 16, 16)
    raster = AstroPTForPreTraining(tiny_config(patch_norm="none", patch_order="raster"))
    patches = raster.image_to_patches(images)
    # patch (row 1, col 2) is raster index 1*4+2; its vector is laid out (p1 p2 c)
    expected = images[0, :, 4:8, 8:12].permute(1, 2, 0).reshape(-1)
    torch.testing.assert_close(patches[0, 6], expected)
    spiral = AstroPTForPreTraining(tiny_config(patch_norm="none"))
    order = torch.as_tensor(spiral_order(4))
    torch.testing.assert_close(spiral.image_to_patches(images), patches[:, order])
    # upstream reads (C, W, H): transposing the grid equals transposing the image
    transposed = AstroPTForPreTraining(tiny_config(patch_norm="none", patch_order="raster", transpose_patch_grid=True))
    torch.testing.assert_close(transposed.image_to_patches(images), raster.image_to_patches(images.transpose(-1, -2)))


def test_per_patch_normalisation_matches_formula(tiny_config):
    images = torch.rand(2, 3, 16, 16) * 5 + 2
    normalised = AstroPTForPreTraining(tiny_config()).image_to_patches(images)
    raw = AstroPTForPreTraining(tiny_config(patch_norm="none")).image_to_patches(images)
    mean = raw.mean(-1, keepdim=True)
    std = raw.std(-1, keepdim=True)  # unbiased
    torch.testing.assert_close(normalised, (raw - mean) / (std + 1e-8))
    per_image = AstroPTForPreTraining(tiny_config(patch_norm="per_image")).image_to_patches(images)
    flat = raw.reshape(2, -1)
    expected = (raw - flat.mean(1)[:, None, None]) / (flat.std(1)[:, None, None] + 1e-8)
    torch.testing.assert_close(per_image, expected)


def test_uint8_input_equals_rescaled_float(tiny_config):
    model = AstroPTForPreTraining(tiny_config(patch_norm="none"))
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(model.image_to_patches(images), model.image_to_patches(images.float() / 255))


def test_wrong_pixel_shape_is_a_clear_error(tiny_config):
    model = AstroPTModel(tiny_config())
    with pytest.raises(ValueError, match=r"\(2, 1, 16, 16\).*\(batch, 3, 16, 16\)"):
        model(torch.randn(2, 1, 16, 16))


@pytest.mark.parametrize("embedding", ["gelu_mlp", "relu_mlp", "linear"])
def test_causality(tiny_config, embedding):
    model = AstroPTForPreTraining(tiny_config(patch_embedding=embedding)).eval()
    sequence = torch.randn(2, 16, 48)
    changed = sequence.clone()
    k = 9
    changed[:, k] += 3.0
    before = model(input_patches=sequence).predictions
    after = model(input_patches=changed).predictions
    torch.testing.assert_close(before[:, :k], after[:, :k])
    assert not torch.allclose(before[:, k:], after[:, k:])


def test_predictions_target_the_next_patch(tiny_config):
    model = AstroPTForPreTraining(tiny_config(loss="mse")).eval()
    images = torch.randn(2, 3, 16, 16)
    out = model(images)
    assert out.predictions.shape == (2, 16, 48)
    expected = torch.mean((out.predictions[:, :-1] - model.image_to_patches(images)[:, 1:]) ** 2)
    torch.testing.assert_close(out.loss, expected)


def test_tiny_model_overfits_one_batch(tiny_config):
    torch.manual_seed(0)
    model = AstroPTForPreTraining(tiny_config(hidden_size=64))
    images = torch.randn(2, 3, 16, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(400):  # stops as soon as the loss has fallen 10x
        loss = model(images).loss
        losses.append(loss.item())
        if losses[-1] < losses[0] / 10:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] / 10, f"loss went from {losses[0]:.4f} to {losses[-1]:.4f}"


def test_eager_equals_sdpa(tiny_config):
    config = tiny_config()
    sdpa = AstroPTForPreTraining(config).eval()
    eager = AstroPTForPreTraining(tiny_config(attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    images = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(sdpa(images).predictions, eager(images).predictions, atol=1e-5, rtol=0)


def test_attentions_and_hidden_states_on_request(tiny_config):
    model = AstroPTModel(tiny_config()).eval()
    out = model(torch.randn(2, 3, 16, 16), output_attentions=True, output_hidden_states=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    attention = out.attentions[0]
    assert attention.shape == (2, 4, 16, 16)
    assert torch.all(attention.triu(1) == 0)  # causal
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 4, 16))
    assert out.last_hidden_state.shape == (2, 16, 32) and out.pooler_output.shape == (2, 32)


def test_gradient_checkpointing_gives_same_gradients(tiny_config):
    images = torch.randn(2, 3, 16, 16)
    reference = AstroPTForPreTraining(tiny_config()).train()
    checkpointed = AstroPTForPreTraining(tiny_config()).train()
    checkpointed.load_state_dict(reference.state_dict())
    enable = getattr(checkpointed, "activation_checkpointing_enable", None) or checkpointed.gradient_checkpointing_enable
    enable()
    assert checkpointed.astropt.gradient_checkpointing
    reference(images).loss.backward()
    checkpointed(images).loss.backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_cached_generation_equals_uncached(tiny_config, temperature):
    model = AstroPTForPreTraining(tiny_config()).eval()
    prompt = model.image_to_patches(torch.randn(2, 3, 16, 16))[:, :5]
    runs = {}
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(1)
        runs[use_cache] = model.generate_patches(prompt, 11, temperature=temperature, use_cache=use_cache, generator=generator)
    assert runs[True].shape == (2, 16, 48)
    torch.testing.assert_close(runs[True][:, :5], prompt)
    torch.testing.assert_close(runs[True], runs[False], atol=1e-5, rtol=0)
    # greedy generation continues exactly as the full forward predicts
    if temperature == 0:
        full = model(input_patches=runs[True]).predictions
        torch.testing.assert_close(full[:, 4:-1], runs[True][:, 5:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate_patches(prompt, 13)


@pytest.mark.parametrize("layer", ["last", "middle", 0, -1])
@pytest.mark.parametrize("pooling", ["mean", "mean_first_k", "last"])
def test_image_embeddings_match_hidden_states(tiny_config, layer, pooling):
    model = AstroPTModel(tiny_config(num_hidden_layers=3, embedding_layer=layer, pooling=pooling, pooling_num_patches=4))
    model.eval()
    images = torch.randn(2, 3, 16, 16)
    out = model(images, output_hidden_states=True)
    index = model.config.resolve_embedding_layer()
    source = out.last_hidden_state if index == 3 else out.hidden_states[index + 1]
    expected = {"mean": source.mean(1), "mean_first_k": source[:, :4].mean(1), "last": source[:, -1]}[pooling]
    torch.testing.assert_close(out.pooler_output, expected)
    torch.testing.assert_close(model.get_image_embeddings(images), expected)


def test_gpt2_style_init(tiny_config):
    model = AstroPTForPreTraining(tiny_config(hidden_size=256, num_hidden_layers=8, num_attention_heads=8))
    std = model.config.initializer_range
    assert model.astropt.layers[0].attention.qkv.weight.std().item() == pytest.approx(std, rel=0.05)
    scaled = std / np.sqrt(2 * 8)
    assert model.astropt.layers[0].attention.out_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert model.astropt.layers[0].mlp.fc2.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert torch.all(model.astropt.layernorm.weight == 1)


@pytest.mark.parametrize(
    "num_labels, labels, problem_type",
    [
        (1, torch.randn(4), "regression"),
        (3, torch.tensor([0, 2, 1, 1]), "single_label_classification"),
        (3, torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]]), "multi_label_classification"),
    ],
)
def test_classifier_problem_types(tiny_config, num_labels, labels, problem_type):
    model = AstroPTForImageClassification(tiny_config(num_labels=num_labels)).eval()
    out = model(torch.randn(4, 3, 16, 16), labels=labels)
    assert model.config.problem_type == problem_type
    assert out.logits.shape == (4, num_labels)
    if problem_type == "regression":
        expected = torch.nn.functional.mse_loss(out.logits.squeeze(-1), labels)
    elif problem_type == "single_label_classification":
        expected = torch.nn.functional.cross_entropy(out.logits, labels)
    else:
        expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels)
    torch.testing.assert_close(out.loss, expected)


def test_classifier_reuses_pretrained_backbone(tiny_config, tmp_path):
    pretrained = AstroPTForPreTraining(tiny_config())
    pretrained.save_pretrained(tmp_path)
    classifier = AstroPTForImageClassification.from_pretrained(tmp_path, num_labels=2)
    for name, tensor in pretrained.astropt.state_dict().items():
        torch.testing.assert_close(classifier.astropt.state_dict()[name], tensor, msg=name)
    assert classifier.classifier.weight.shape == (2, 32)
    assert classifier.classifier.weight.abs().sum() > 0


@pytest.mark.parametrize("head", [AstroPTForImageClassification, AstroPTModel])
def test_multimodal_pretraining_checkpoint_loads_without_unexpected_keys(tiny_config, tmp_path, head):
    """The pretraining heads (the image patch head and the spectrum head) are left out silently; the spectrum
    tokeniser and its positions belong to the backbone and load."""
    config = tiny_config(modalities=["images", "spectra"], spectrum_patch_size=8, spectrum_max_patches=4)
    pretrained = AstroPTForPreTraining(config)
    assert any(name.startswith("spectrum_head.") for name in pretrained.state_dict())
    pretrained.save_pretrained(tmp_path)
    log_file = io.StringIO()
    handler = logging.StreamHandler(log_file)
    logging.getLogger("transformers").addHandler(handler)
    try:
        loaded, info = head.from_pretrained(tmp_path, num_labels=2, output_loading_info=True)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not info["unexpected_keys"], info
    logged = log_file.getvalue()
    assert "UNEXPECTED" not in logged and "spectrum_head" not in logged and "patch_head" not in logged, logged
    # transformers before 5 reads only the loading class's own patterns, not those of its backbone
    own_patterns = type(loaded)._keys_to_ignore_on_load_unexpected
    prefix = "" if head is AstroPTForImageClassification else "astropt."
    left_out = {name.removeprefix(prefix) for name in pretrained.state_dict()} - set(loaded.state_dict())
    assert left_out and all(any(re.search(p, name) for p in own_patterns) for name in left_out), left_out
    backbone = loaded.astropt if head is AstroPTForImageClassification else loaded
    for name, tensor in pretrained.astropt.state_dict().items():
        torch.testing.assert_close(backbone.state_dict()[name], tensor, msg=name)
