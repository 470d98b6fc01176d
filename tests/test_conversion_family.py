"""Converting upstream's model family: masked (objective="mae") and non-causal checkpoints, and hub references.

Masked checkpoints are built by hand in upstream's v3 layout (the masked objective is not on PyPI), and
checked against the independent reference in `conversion/reference_forward.py` and against PyPI astropt's
own modules run as upstream's masked forward runs them. Prefix checkpoints come from PyPI astropt itself.
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_conversion_parity import scramble, upstream_patchify, upstream_spiralise, v3_names, write_galaxy_png
from transformers import AutoImageProcessor, AutoModelForPreTraining

from astropt_hf.conversion import (
    CheckpointReferenceError,
    UpstreamPrefixAttentionWarning,
    convert_upstream_checkpoint,
    resolve_checkpoint,
)
from astropt_hf.conversion.reference_forward import (
    upstream_masked_loss,
    upstream_random_mask,
    upstream_reference_forward,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# --- hand-built upstream v3 checkpoints ----------------------------------------------------------------------
def v3_state_dict(n_layer=2, width=16, patch_dim=48, block_size=16, tokeniser="aim", mask_token=True, seed=0):
    """Upstream v3 names and shapes (no biases), random values large enough that a wrong mapping shows."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"transformer.ln_f.weight": (width,), "embedders.images.wpe.weight": (block_size, width)}
    for i in range(n_layer):
        shapes.update({f"transformer.h.{i}.ln_1.weight": (width,), f"transformer.h.{i}.ln_2.weight": (width,),
                       f"transformer.h.{i}.attn.c_attn.weight": (3 * width, width),
                       f"transformer.h.{i}.attn.c_proj.weight": (width, width),
                       f"transformer.h.{i}.mlp.c_fc.weight": (4 * width, width),
                       f"transformer.h.{i}.mlp.c_proj.weight": (width, 4 * width)})  # fmt: skip
    if tokeniser == "aim":
        shapes.update({"encoders.images.c_fc.weight": (4 * width, patch_dim), "encoders.images.c_proj.weight": (width, 4 * width),
                       "decoders.images.c_fc.weight": (4 * width, width), "decoders.images.c_proj.weight": (patch_dim, 4 * width)})  # fmt: skip
    else:
        shapes.update({"encoders.images.c_fc.weight": (width, patch_dim), "decoders.images.c_fc.weight": (patch_dim, width)})
    if mask_token:
        shapes["mask_token"] = (1, 1, width)
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        state[key] = 1.0 + 0.1 * noise if key.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.3 * noise
    return state


def v3_checkpoint(path, classes, objective="mae", attn_type="full", mask_ratio=0.5, norm_pix_loss=False, image_size=16,
                  state=None, **state_kwargs):  # fmt: skip
    """Write an upstream-v3-format checkpoint (16 px images of 4 px patches, 3 bands) and return its path.

    `classes`: astropt's (ModalityConfig, ModalityRegistry), or look-alikes pickled under the same names.
    """
    state = v3_state_dict(mask_token=objective == "mae", **state_kwargs) if state is None else state
    block_size = state["embedders.images.wpe.weight"].shape[0]
    model_args = {"n_layer": 2, "n_head": 2, "n_embd": 16, "n_chan": 3, "block_size": block_size, "dropout": 0.0,
                  "bias": False, "tokeniser": state_kwargs.get("tokeniser", "aim"), "objective": objective,
                  "attn_type": attn_type, "mae_mask_ratio": mask_ratio, "norm_pix_loss": norm_pix_loss}  # fmt: skip
    modality_config, modality_registry = classes
    images = modality_config(name="images", input_size=48, pos_input_size=1, patch_size=4, embed_pos=True)
    registry = modality_registry([images])
    model_args["modalities"] = [images]
    torch.save({"model": state, "model_args": model_args, "modality_registry": registry, "iter_num": 3,
                "config": {"image_size": image_size, "spiral": True}, "best_val_loss": torch.tensor(0.4)}, path)  # fmt: skip
    return path


def upstream_full_sequence(png_path, patch_size):
    """Upstream's masked-objective input for one image file: every patch, (1, T, P), and positions 0..T-1."""
    raw = np.array(Image.open(png_path)).swapaxes(0, 2)
    patches = torch.from_numpy(upstream_patchify(raw, patch_size).astype(np.float32))
    std, mean = torch.std_mean(patches, dim=1, keepdim=True)
    sequence = upstream_spiralise((patches - mean) / (std + 1e-8))
    return sequence[None], torch.arange(len(sequence))[None]


# --- masked checkpoints ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tokeniser,norm_pix_loss", [("aim", False), ("affine", True)])
def test_masked_checkpoint_round_trips_with_parity(tmp_path, upstream_modality_classes, tokeniser, norm_pix_loss):
    path = v3_checkpoint(tmp_path / "ckpt.pt", upstream_modality_classes(), tokeniser=tokeniser, norm_pix_loss=norm_pix_loss, mask_ratio=0.4)

    report = convert_upstream_checkpoint(path, tmp_path / "out")

    config = report.config
    assert (config["objective"], config["attention_pattern"]) == ("masked_patch", "bidirectional")
    assert (config["mask_ratio"], config["norm_pix_loss"], config["pooling"]) == (0.4, norm_pix_loss, "mean")
    assert report.parity_passed and report.loss_max_abs_diff < TOLERANCE and report.prediction_max_abs_diff < TOLERANCE
    assert "reconstructions (the same mask on both sides)" in report.parity_summary() and not report.warnings

    # the saved model, loaded as users load it, reconstructs what upstream reconstructs for the same mask
    png = write_galaxy_png(tmp_path / "galaxy.png", 16, seed=4)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out", trust_remote_code=True)
    model = AutoModelForPreTraining.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    pixel_values = processor(Image.open(png), return_tensors="pt")["pixel_values"]
    sequence, _ = upstream_full_sequence(png, 4)
    mask = upstream_random_mask(1, 16, 0.4, torch.Generator().manual_seed(5))
    state = v3_state_dict(tokeniser=tokeniser)
    with torch.no_grad():
        ours = model(pixel_values=pixel_values, bool_masked_pos=mask)
        reference = upstream_reference_forward(state, "v3", 2, sequence, causal=False, masked_positions=mask)
        shuffled = model(pixel_values=pixel_values, bool_masked_pos=mask.flip(1))
    reference_loss = upstream_masked_loss(reference.predictions, sequence, mask, norm_pix_loss)
    torch.testing.assert_close(ours.predictions, reference.predictions, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(ours.loss, reference_loss, atol=TOLERANCE, rtol=0)
    assert torch.equal(ours.mask, mask)
    # the mask must be in sequence order on both sides: the same mask read in another order breaks parity
    assert (shuffled.predictions - reference.predictions).abs().max() > 100 * TOLERANCE


def upstream_masked_forward(model, mask_token, inputs, positions, mask, norm_pix_loss):
    """Upstream's masked forward, run on PyPI astropt's own modules (its prefix blocks attend bidirectionally)."""
    tokens = model.transformer.wte["images"](inputs)
    tokens = torch.where(mask[..., None], mask_token, tokens)
    hidden = model.transformer.drop(tokens + model.transformer.wpe["images"](positions))
    for block in model.transformer.h:
        hidden = block(hidden)
    predictions = model.lm_head["images"](model.transformer.ln_f(hidden))
    target = inputs
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = F.huber_loss(predictions, target, reduction="none").mean(dim=-1)
    return predictions, (per_patch * mask).sum() / mask.sum()


def pypi_astropt_model(attn_type="prefix", tokeniser="aim", block_size=16, n_layer=2):
    """PyPI astropt's GPT over 16 px images of 4 px patches; flex attention runs uncompiled (CPU tests)."""
    astropt_model = pytest.importorskip("astropt.model", exc_type=ImportError)
    if not getattr(astropt_model, "flex_attention_avail", False):
        pytest.skip("this torch has no flex attention, which astropt's prefix attention needs")
    images = astropt_model.ModalityConfig(name="images", input_size=48, pos_input_size=1, patch_size=4, embed_pos=True)
    registry = astropt_model.ModalityRegistry([images])
    model_args = dict(n_layer=n_layer, n_head=2, n_embd=16, n_chan=3, block_size=block_size, dropout=0.0, bias=False,
                      modalities=[images], attn_type=attn_type, tokeniser=tokeniser)  # fmt: skip
    model = astropt_model.GPT(astropt_model.GPTConfig(**model_args), registry, master_process=False).eval()
    for block in model.transformer.h:
        block.attn.flex_attention = astropt_model.flex_attention
    scramble(model, torch.Generator().manual_seed(7))
    return model, model_args, registry


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_masked_parity_against_pypi_astropt_modules(tmp_path, norm_pix_loss):
    model, model_args, registry = pypi_astropt_model()
    mask_token = 0.3 * torch.randn(1, 1, 16, generator=torch.Generator().manual_seed(8))
    state = {**v3_names(model.state_dict()), "mask_token": mask_token}
    model_args.update(attn_type="full", objective="mae", mae_mask_ratio=0.5, norm_pix_loss=norm_pix_loss)
    torch.save({"model": state, "model_args": model_args, "modality_registry": registry,
                "config": {"image_size": 16, "spiral": True}}, tmp_path / "ckpt.pt")  # fmt: skip

    report = convert_upstream_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")

    assert report.parity_passed and report.config["objective"] == "masked_patch"
    png = write_galaxy_png(tmp_path / "galaxy.png", 16, seed=9)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out", trust_remote_code=True)
    ours = AutoModelForPreTraining.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    pixel_values = processor(Image.open(png), return_tensors="pt")["pixel_values"]
    inputs, positions = upstream_full_sequence(png, 4)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [0, 3, 4, 9, 15]] = True
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex attention's "running uncompiled" notice
        predictions, loss = upstream_masked_forward(model, mask_token, inputs, positions, mask, norm_pix_loss)
        output = ours(pixel_values=pixel_values, bool_masked_pos=mask)
    assert predictions.std() > 0.05
    torch.testing.assert_close(output.predictions, predictions, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(output.loss, loss, atol=TOLERANCE, rtol=0)


# --- prefix and bidirectional next-patch checkpoints ---------------------------------------------------------
@pytest.mark.parametrize("keep_prefix_attention", [False, True])
def test_pypi_prefix_checkpoint_converts_with_the_warning(tmp_path, keep_prefix_attention):
    model, model_args, registry = pypi_astropt_model(attn_type="prefix")
    torch.save({"model": model.state_dict(), "model_args": model_args, "modality_registry": registry,
                "config": {"image_size": 16, "spiral": True}}, tmp_path / "ckpt.pt")  # fmt: skip

    with pytest.warns(UpstreamPrefixAttentionWarning, match="block_mask=None") as caught:
        report = convert_upstream_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out",
                                             keep_prefix_attention=keep_prefix_attention)  # fmt: skip

    pattern = "prefix" if keep_prefix_attention else "bidirectional"
    assert (report.config["objective"], report.config["attention_pattern"]) == ("next_patch", pattern)
    assert "full bidirectional attention" in str(caught[0].message) and report.warnings == [str(caught[0].message)]
    assert report.parity_passed
    assert "## Warning" in (tmp_path / "out" / "README.md").read_text() and "warning:     " in report.summary()

    png = write_galaxy_png(tmp_path / "galaxy.png", 16, seed=2)
    inputs, positions = upstream_full_sequence(png, 4)
    inputs, positions = inputs[:, :-1], positions[:, :-1]  # upstream's next-patch input
    ours = AutoModelForPreTraining.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out", trust_remote_code=True)
    our_input = ours.image_to_patches(processor(Image.open(png), return_tensors="pt")["pixel_values"])[:, :-1]
    whole = {"prefix_length": 15} if keep_prefix_attention else {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        upstream, _ = model({"images": inputs, "images_positions": positions}, prefix_len=3)
        upstream_other_prefix, _ = model({"images": inputs, "images_positions": positions}, prefix_len=12)
        predictions = ours(input_patches=our_input, **whole).predictions
        short_prefix = ours(input_patches=our_input, prefix_length=3).predictions if keep_prefix_attention else None
    # what the warning says: upstream's output does not depend on the prefix length it was given
    torch.testing.assert_close(upstream["images"], upstream_other_prefix["images"], atol=1e-6, rtol=0)
    torch.testing.assert_close(predictions, upstream["images"], atol=TOLERANCE, rtol=0)
    if keep_prefix_attention:  # the kept pattern really masks, unlike upstream
        assert (short_prefix - upstream["images"]).abs().max() > 100 * TOLERANCE


@pytest.mark.parametrize("attn_type,objective", [("prefix", "ar"), ("full", "ar"), ("prefix", "mae")])
def test_non_causal_checkpoints_convert_with_parity(tmp_path, upstream_modality_classes, attn_type, objective):
    path = v3_checkpoint(tmp_path / "ckpt.pt", upstream_modality_classes(), objective=objective, attn_type=attn_type, image_size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = convert_upstream_checkpoint(path, None)
    expected = "masked_patch" if objective == "mae" else "next_patch"
    assert (report.config["objective"], report.config["attention_pattern"]) == (expected, "bidirectional")
    assert report.parity_passed
    prefix_warnings = [w for w in caught if issubclass(w.category, UpstreamPrefixAttentionWarning)]
    assert len(prefix_warnings) == (attn_type == "prefix") and len(report.warnings) == (attn_type == "prefix")
    if objective == "ar":
        assert any("input_patches=model.image_to_patches(pixel_values)[:, :-1]" in note for note in report.notes)


def test_masked_image_size_needs_every_patch_in_the_position_table(tmp_path, upstream_modality_classes):
    # a next-patch model feeds T - 1 patches (block_size 15 holds a 16-patch image); a masked one feeds all T
    state = v3_state_dict(block_size=15)
    path = v3_checkpoint(tmp_path / "ckpt.pt", upstream_modality_classes(), state=state, image_size=None)
    with pytest.raises(ValueError, match="--image_size=16 does not fit: .* at most block_size=15 patches"):
        convert_upstream_checkpoint(path, None, image_size=16)
    assert convert_upstream_checkpoint(path, None).image_size == 12  # sqrt(15) * 4


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(attn_type="causal"), "objective='mae' with attn_type='causal', a combination upstream refuses"),
        (dict(mask_ratio=1.0), r"mae_mask_ratio'\]=1.0; expected a value in \(0, 1\)"),
        (dict(attn_type="sliding"), r"not supported: model_args\['attn_type'\]='sliding'"),
        (dict(objective="ar", state=v3_state_dict(mask_token=True)), "disagrees with the weights, which hold a mask_token"),
        (dict(state=v3_state_dict(mask_token=False)), "disagrees with the weights, which hold no mask_token"),
        (dict(objective="jepa"), r"not supported: model_args\['objective'\]='jepa'"),
    ],
)
def test_inconsistent_objective_settings_are_named(tmp_path, upstream_modality_classes, changes, message):
    path = v3_checkpoint(tmp_path / "ckpt.pt", upstream_modality_classes(), **changes)
    with pytest.raises(ValueError, match=message):
        convert_upstream_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- hub references --------------------------------------------------------------------------------------------
def hub_cache(root, classes, repo_id="Smith42/astroPT_v2.0", filename="astropt/095M/ckpt.pt"):
    """A hub cache laid out as huggingface_hub writes it, holding one masked checkpoint at `filename`."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    target = repo / "snapshots" / COMMIT / filename
    target.parent.mkdir(parents=True)
    v3_checkpoint(target, classes)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


def test_hub_reference_converts_offline_end_to_end(tmp_path, upstream_modality_classes):
    cache, output_dir = hub_cache(tmp_path / "hub", upstream_modality_classes()), tmp_path / "converted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "convert_astropt_checkpoint.py"), "--checkpoint",
         "Smith42/astroPT_v2.0", "--checkpoint_file", "astropt/095M/ckpt.pt", "--output_dir", str(output_dir)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    reference = f"Smith42/astroPT_v2.0/astropt/095M/ckpt.pt@{COMMIT}"
    assert f"source:      {reference}" in run.stdout and "parity:      passed" in run.stdout
    assert "objective:   masked_patch, attention bidirectional, mask ratio 0.5" in run.stdout
    assert json.loads((output_dir / "conversion_report.json").read_text())["source"] == reference
    assert reference in (output_dir / "README.md").read_text()

    load = (
        "import sys, torch; from transformers import AutoModelForPreTraining\n"
        f"m = AutoModelForPreTraining.from_pretrained({str(output_dir)!r}, trust_remote_code=True).eval()\n"
        "assert 'astropt_hf' not in sys.modules, 'loading needed the astropt_hf package'\n"
        "mask = torch.zeros(1, 16, dtype=torch.bool); mask[0, :5] = True\n"
        "out = m(pixel_values=torch.rand(1, 3, 16, 16), bool_masked_pos=mask)\n"
        "print(m.config.objective, m.config.attention_pattern, tuple(out.predictions.shape), int(out.mask.sum()))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["masked_patch", "bidirectional", "(1,", "16,", "48)", "5"]


def test_hub_reference_resolves_from_the_cache_by_branch_or_commit(tmp_path, upstream_modality_classes):
    cache = hub_cache(tmp_path / "hub", upstream_modality_classes())
    expected = cache / "models--Smith42--astroPT_v2.0" / "snapshots" / COMMIT / "astropt" / "095M" / "ckpt.pt"
    assert resolve_checkpoint("Smith42/astroPT_v2.0", "astropt/095M/ckpt.pt", cache_dir=cache) == expected
    assert resolve_checkpoint("Smith42/astroPT_v2.0", "astropt/095M/ckpt.pt", revision=COMMIT, cache_dir=cache) == expected
    snapshot = expected.parents[2]  # a local folder with the file inside it works the same way
    assert resolve_checkpoint(snapshot, "astropt/095M/ckpt.pt") == expected
    assert resolve_checkpoint(expected) == expected


@pytest.mark.parametrize(
    "checkpoint,checkpoint_file,revision,message",
    [
        ("Smith42/astroPT_v2.0", "astropt/999M/ckpt.pt", None,
         "Smith42/astroPT_v2.0: astropt/999M/ckpt.pt: not in the local hub cache and HF_HUB_OFFLINE=1"),
        ("Smith42/missing", "ckpt.pt", None, "Smith42/missing: ckpt.pt: not in the local hub cache"),
        ("Smith42/astroPT_v2.0", "astropt/095M/ckpt.pt", "v9",
         "Smith42/astroPT_v2.0: astropt/095M/ckpt.pt at revision v9: not in the local hub cache"),
        ("Smith42/astroPT_v2.0", None, None, "Smith42/astroPT_v2.0: not a local file; as a hub repository it needs"),
        ("not//a/repo", "ckpt.pt", None, "not//a/repo: ckpt.pt: neither a local folder nor a hub repository id"),
    ],
)  # fmt: skip
def test_bad_references_give_one_line_naming_repo_and_file(
    tmp_path, upstream_modality_classes, checkpoint, checkpoint_file, revision, message
):
    cache = hub_cache(tmp_path / "hub", upstream_modality_classes())
    with pytest.raises(CheckpointReferenceError) as error:
        resolve_checkpoint(checkpoint, checkpoint_file, revision=revision, cache_dir=cache)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_script_reports_a_bad_reference_in_one_line(tmp_path, upstream_modality_classes):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache(tmp_path / "hub", upstream_modality_classes()))}
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "convert_astropt_checkpoint.py"), "--checkpoint",
         "Smith42/astroPT_v2.0", "--checkpoint_file", "astropt/001M/ckpt.pt", "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Smith42/astroPT_v2.0: astropt/001M/ckpt.pt: not in the")
    assert not (tmp_path / "out").exists()
