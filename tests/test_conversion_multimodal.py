"""Images+spectra upstream checkpoints (PyPI astropt 2.0.9's multimodal GPT, v2.x and v3 layouts) convert with
parity on both modalities, load through remote code with their processor, and other modalities are refused.

The reference is astropt's own `GPT` fed as its `GalaxyImageDataset` feeds it (every image patch, normalised
per patch and spiralled; the spectrum zero-padded into patches, placed by (wavelength - 3000) / 7000),
reproduced here step by step; our side gets the image file and the plain flux and wavelengths.
"""

import json
import re
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fresh_process import run_without_astropt_hf
from PIL import Image
from test_conversion_parity import (
    load_script,
    scramble,
    upstream_patchify,
    upstream_spiralise,
    v3_names,
    write_galaxy_png,
)
from transformers import AutoModelForPreTraining, AutoProcessor

from astropt_hf.conversion import convert_upstream_checkpoint

TOLERANCE = 1e-4
PATCH, CHANNELS, IMAGE_SIZE, SPECTRUM_PATCH = 4, 3, 16, 32  # 16 image patches
NUM_IMAGE_PATCHES = (IMAGE_SIZE // PATCH) ** 2


def build_upstream(tokeniser="aim", embed_pos=False, spectra_weight=0.5, images_weight=1.0, num_spectrum=3,
                   extra=(), bias=False):
    """astropt 2.0.9's multimodal GPT with weights far from its init, its model_args and its registry."""
    upstream = pytest.importorskip("astropt.model", exc_type=ImportError)
    modalities = [
        upstream.ModalityConfig("spectra", SPECTRUM_PATCH, 1 if embed_pos else SPECTRUM_PATCH, SPECTRUM_PATCH,
                                embed_pos, spectra_weight),
        upstream.ModalityConfig("images", PATCH * PATCH * CHANNELS, 1, PATCH, True, images_weight),
        *extra,
    ]
    registry = upstream.ModalityRegistry(modalities)
    model_args = dict(n_layer=3, n_head=2, n_embd=32, n_chan=CHANNELS, block_size=NUM_IMAGE_PATCHES + num_spectrum,
                      dropout=0.0, bias=bias, attn_type="causal", tokeniser=tokeniser, modalities=modalities)
    model = upstream.GPT(upstream.GPTConfig(**model_args), registry, master_process=False).eval()
    scramble(model, torch.Generator().manual_seed(4))
    return model, model_args, registry


def save_checkpoint(path, model, model_args, registry, fmt="v2", image_size=IMAGE_SIZE):
    state = v3_names(model.state_dict()) if fmt == "v3" else model.state_dict()
    config = {"spiral": True, **({"image_size": image_size} if image_size else {})}
    torch.save({"model": state, "model_args": model_args, "modality_registry": registry, "config": config,
                "iter_num": 7, "best_val_loss": torch.tensor(0.4)}, path)
    return path


def galaxy_spectrum(length, seed=0):
    """A DESI-like spectrum: flux of a few units on a 3600-9824 Angstrom grid, with a line and noise."""
    rng = np.random.default_rng(seed)
    wavelengths = np.linspace(3600.0, 9824.0, length).astype(np.float32)
    flux = 2.0 + np.exp(-0.5 * ((wavelengths - 6563.0) / 40.0) ** 2) * 5 + rng.normal(0, 0.5, length)
    return flux.astype(np.float32), wavelengths


def upstream_inputs(png_path, flux, wavelengths, registry, scale=7000.0):
    """What astropt's GalaxyImageDataset and process_modes feed the multimodal GPT for one galaxy."""
    raw = np.array(Image.open(png_path)).swapaxes(0, 2)  # (C, W, H)
    patches = torch.from_numpy(upstream_patchify(raw, PATCH).astype(np.float32))
    std, mean = torch.std_mean(patches, dim=1, keepdim=True)
    images = upstream_spiralise((patches - mean) / (std + 1e-8))  # every patch: the spectrum follows
    size = registry.get_config("spectra").patch_size
    pad = (size - len(flux) % size) % size
    spectra = F.pad(torch.from_numpy(flux), (0, pad)).reshape(-1, size)
    positions = F.pad((torch.from_numpy(wavelengths) - 3000) / scale, (0, pad)).reshape(-1, size)
    if registry.get_config("spectra").embed_pos:
        positions = torch.arange(len(spectra))
    inputs = {"images": images[None], "images_positions": torch.arange(len(images))[None],
              "spectra": spectra[None], "spectra_positions": positions[None]}
    return inputs, {"images": images[None, 1:], "spectra": spectra[None]}


def upstream_outputs(model, inputs, targets):
    with torch.no_grad():
        outputs, loss = model(inputs, targets)
        embeddings = model.get_embeddings(inputs)
    return outputs, loss, {name: value.mean(dim=1) for name, value in embeddings.items()}


def ours(output_dir, png_path, flux, wavelengths):
    processor = AutoProcessor.from_pretrained(output_dir, trust_remote_code=True)
    model = AutoModelForPreTraining.from_pretrained(output_dir, trust_remote_code=True).eval()
    inputs = processor(images=Image.open(png_path), spectra=flux, wavelengths=wavelengths)
    with torch.no_grad():
        out = model(**inputs)
        backbone = model.astropt
        spectra = {k: v for k, v in inputs.items() if k.startswith("spectrum_") and k != "spectrum_scale"}
        embeddings = {name: backbone.get_image_embeddings(inputs["pixel_values"], **spectra, modality=name)
                      for name in ("images", "spectra")}
    return model, out, embeddings


def assert_both_modalities_match(out, embeddings, expected, expected_embeddings):
    assert expected["spectra"].std() > 0.05 and expected["images"].std() > 0.05
    torch.testing.assert_close(out.predictions[:, :-1], expected["images"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(out.spectrum_predictions, expected["spectra"], atol=TOLERANCE, rtol=0)
    for name in ("images", "spectra"):
        torch.testing.assert_close(embeddings[name], expected_embeddings[name], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    "fmt, tokeniser, embed_pos, bias",
    [("v2", "aim", False, False), ("v2", "affine", False, True), ("v3", "aim", False, True), ("v3", "aim", True, False),
     ("v2", "affine", True, False)],
)
def test_images_and_spectra_convert_with_parity_on_both(tmp_path, fmt, tokeniser, embed_pos, bias):
    model, model_args, registry = build_upstream(tokeniser, embed_pos, spectra_weight=0.25, images_weight=2.0,
                                                 bias=bias)
    checkpoint = save_checkpoint(tmp_path / "ckpt.pt", model, model_args, registry, fmt)

    report = convert_upstream_checkpoint(checkpoint, tmp_path / "out")

    assert report.detected_format == fmt and report.parity_passed
    assert max(report.prediction_max_abs_diff, report.spectrum_prediction_max_abs_diff,
               report.embedding_max_abs_diff, report.loss_max_abs_diff) < TOLERANCE
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["modalities"] == ["images", "spectra"] and config["spectrum_patch_size"] == SPECTRUM_PATCH
    assert config["max_position_embeddings"] == NUM_IMAGE_PATCHES + 3 and config["image_size"] == IMAGE_SIZE
    assert (config["image_loss_weight"], config["spectrum_loss_weight"]) == (2.0, 0.25)
    assert config["spectrum_position_encoding"] == ("learned" if embed_pos else "wavelength")
    assert (config["spectrum_wavelength_offset"], config["spectrum_wavelength_scale"]) == (3000.0, 7000.0)
    assert "spectrum predictions" in report.summary()
    preprocessor = json.loads((tmp_path / "out" / "processor_config.json").read_text())
    assert preprocessor["feature_extractor"]["normalisation"] == "none"

    png = write_galaxy_png(tmp_path / "galaxy.png", IMAGE_SIZE, seed=5)
    flux, wavelengths = galaxy_spectrum(3 * SPECTRUM_PATCH - 11)  # the last patch zero-padded, as upstream pads
    inputs, targets = upstream_inputs(png, flux, wavelengths, registry)
    expected, _, expected_embeddings = upstream_outputs(model, inputs, targets)
    _, out, embeddings = ours(tmp_path / "out", png, flux, wavelengths)
    assert_both_modalities_match(out, embeddings, expected, expected_embeddings)


def test_loss_matches_upstream_on_whole_patches(tmp_path):
    model, model_args, registry = build_upstream(spectra_weight=0.5)
    report = convert_upstream_checkpoint(save_checkpoint(tmp_path / "ckpt.pt", model, model_args, registry),
                                         tmp_path / "out")
    png = write_galaxy_png(tmp_path / "galaxy.png", IMAGE_SIZE, seed=6)
    flux, wavelengths = galaxy_spectrum(3 * SPECTRUM_PATCH, seed=2)  # no padding: upstream's loss counts padding
    _, expected_loss, _ = upstream_outputs(model, *upstream_inputs(png, flux, wavelengths, registry))
    _, out, _ = ours(tmp_path / "out", png, flux, wavelengths)
    assert report.loss_max_abs_diff < TOLERANCE
    torch.testing.assert_close(out.loss, expected_loss, atol=TOLERANCE, rtol=0)


def test_another_wavelength_scale_is_recorded_and_reproduced(tmp_path):
    model, model_args, registry = build_upstream()
    checkpoint = save_checkpoint(tmp_path / "ckpt.pt", model, model_args, registry)
    report = convert_upstream_checkpoint(checkpoint, tmp_path / "out", spectrum_wavelength_scale=5000.0)
    assert report.config["spectrum_wavelength_scale"] == 5000.0 and report.parity_passed
    assert any("given with spectrum_wavelength_scale" in note for note in report.notes)
    png = write_galaxy_png(tmp_path / "galaxy.png", IMAGE_SIZE, seed=7)
    flux, wavelengths = galaxy_spectrum(80, seed=3)
    expected, _, _ = upstream_outputs(model, *upstream_inputs(png, flux, wavelengths, registry, scale=5000.0))
    _, out, _ = ours(tmp_path / "out", png, flux, wavelengths)
    torch.testing.assert_close(out.spectrum_predictions, expected["spectra"], atol=TOLERANCE, rtol=0)
    # the scale matters: the default one does not reproduce a model trained on another
    convert_upstream_checkpoint(checkpoint, tmp_path / "default")
    _, default, _ = ours(tmp_path / "default", png, flux, wavelengths)
    assert (default.spectrum_predictions - expected["spectra"]).abs().max() > 100 * TOLERANCE


def test_image_size_without_a_record_leaves_room_for_the_spectrum(tmp_path):
    model, model_args, registry = build_upstream(num_spectrum=5)
    checkpoint = save_checkpoint(tmp_path / "ckpt.pt", model, model_args, registry, image_size=None)
    report = convert_upstream_checkpoint(checkpoint, None)
    assert report.image_size == IMAGE_SIZE and "room for at least one spectrum patch" in report.image_size_source
    assert report.config["spectrum_max_patches"] == 5 and report.parity_passed
    with pytest.raises(ValueError, match="--image_size=20 does not fit"):
        convert_upstream_checkpoint(checkpoint, None, image_size=20)
    images_only = {k: v for k, v in model.state_dict().items() if ".spectra." not in k}
    torch.save({"model": images_only, "model_args": {**model_args, "modalities": None},
                "config": {"image_size": IMAGE_SIZE}}, tmp_path / "images.pt")
    with pytest.raises(ValueError, match="spectrum_wavelength_scale needs a checkpoint with spectra"):
        convert_upstream_checkpoint(tmp_path / "images.pt", None, spectrum_wavelength_scale=5000.0)


@pytest.mark.parametrize("name", ["photometry", "tok_image_hsc"])  # a time series; an AION token stream
def test_other_modalities_are_refused_by_name(tmp_path, name):
    upstream = pytest.importorskip("astropt.model", exc_type=ImportError)
    other = upstream.ModalityConfig(name, 8, 1, 8, True, 1.0)
    model, model_args, registry = build_upstream(extra=[other])
    checkpoint = save_checkpoint(tmp_path / "ckpt.pt", model, model_args, registry)
    listed = re.escape(str(sorted(["images", "spectra", name])))
    with pytest.raises(ValueError, match=rf"not supported: modalities {listed}: \['{name}'\] \(photometry time"):
        convert_upstream_checkpoint(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # the weights alone name it too, in either layout
    for fmt in ("v2", "v3"):
        state = v3_names(model.state_dict()) if fmt == "v3" else model.state_dict()
        torch.save({"model": state, "model_args": {**model_args, "modalities": None}}, tmp_path / f"{fmt}.pt")
        with pytest.raises(ValueError, match=rf"not supported: modalities .*'{name}'"):
            convert_upstream_checkpoint(tmp_path / f"{fmt}.pt", None)


def test_registry_and_weights_must_agree(tmp_path):
    model, model_args, registry = build_upstream()
    state = {k: v for k, v in model.state_dict().items() if ".spectra." not in k}
    torch.save({"model": state, "model_args": model_args, "modality_registry": registry,
                "config": {"image_size": IMAGE_SIZE}}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"registry lists \['images', 'spectra'\] but the weights hold modules for "
                                         r"\['images'\]"):
        convert_upstream_checkpoint(tmp_path / "ckpt.pt", None)


LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModelForPreTraining, AutoProcessor
    checkpoint, png, data_path, out_path = sys.argv[1:5]
    data = np.load(data_path)
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    model = AutoModelForPreTraining.from_pretrained(checkpoint, trust_remote_code=True).eval()
    inputs = processor(images=Image.open(png), spectra=data["flux"], wavelengths=data["wavelengths"])
    with torch.no_grad():
        out = model(**inputs)
    json.dump({"classes": [type(processor).__name__, type(model).__name__],
               "modules": [type(processor).__module__, type(model).__module__],
               "predictions": out.predictions[:, :-1].tolist(),
               "spectrum_predictions": out.spectrum_predictions.tolist()}, open(out_path, "w"))
    """
)


def test_converted_checkpoint_loads_in_a_fresh_process_without_astropt_hf(tmp_path):
    model, model_args, registry = build_upstream()
    convert_upstream_checkpoint(save_checkpoint(tmp_path / "ckpt.pt", model, model_args, registry, "v3"),
                                tmp_path / "out")
    png = write_galaxy_png(tmp_path / "galaxy.png", IMAGE_SIZE, seed=8)
    flux, wavelengths = galaxy_spectrum(90, seed=4)
    np.savez(tmp_path / "spectrum.npz", flux=flux, wavelengths=wavelengths)
    completed = run_without_astropt_hf(LOADER, tmp_path, tmp_path / "out", png, tmp_path / "spectrum.npz",
                                       tmp_path / "result.json")
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["classes"] == ["AstroPTProcessor", "AstroPTForPreTraining"]
    assert all(module.startswith("transformers_modules.") for module in result["modules"])
    expected, _, _ = upstream_outputs(model, *upstream_inputs(png, flux, wavelengths, registry))
    torch.testing.assert_close(torch.tensor(result["predictions"]), expected["images"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(torch.tensor(result["spectrum_predictions"]), expected["spectra"], atol=TOLERANCE,
                               rtol=0)


def test_convert_script_takes_the_wavelength_scale(tmp_path, capsys):
    model, model_args, registry = build_upstream()
    checkpoint = save_checkpoint(tmp_path / "ckpt.pt", model, model_args, registry)
    script = load_script()
    assert script.main(["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "out"),
                        "--spectrum_wavelength_scale", "5000"]) == 0
    printed = capsys.readouterr().out
    assert "modalities images + spectra" in printed and "parity:      passed" in printed
    assert json.loads((tmp_path / "out" / "config.json").read_text())["spectrum_wavelength_scale"] == 5000.0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "`(wavelength - 3000) / 5000` (Angstrom)" in card and "spectrum_predictions[:, s]" in card
