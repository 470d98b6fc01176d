"""Images and spectra in one sequence: config, spectrum feature extractor and processor, patching, the loss
across the modality boundary, causality, cached generation, embeddings, upstream parity, remote code."""

import json
import math
import re
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fresh_process import LOAD_MULTIMODAL_CHECKPOINT, run_without_astropt_hf

from astropt_hf import (
    AstroPTConfig,
    AstroPTForPreTraining,
    AstroPTImageProcessor,
    AstroPTModel,
    AstroPTProcessor,
    AstroPTSpectrumFeatureExtractor,
    patches_to_spectrum,
    spectrum_to_patches,
)

SIZE = 16  # spectrum patch length in the tiny models


@pytest.fixture
def multimodal_config(tiny_config):
    def make(**overrides):
        kwargs = dict(modalities=["images", "spectra"], spectrum_patch_size=SIZE, spectrum_max_patches=8)
        kwargs.update(overrides)
        return tiny_config(**kwargs)

    return make


def galaxies(batch=2, length=100, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, 16, 16, generator=generator)
    flux = torch.randn(batch, length, generator=generator)
    wavelengths = torch.linspace(3600.0, 9800.0, length).expand(batch, -1).clone()
    return images, flux, wavelengths


def randomise(model, std=0.2, seed=1):
    """Weights well away from the tiny GPT-2 init, so that every layer shapes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std + (1.0 if parameter.dim() == 1 else 0))
    return model.eval()


# --- config -------------------------------------------------------------------------------------------
def test_config_defaults_to_images_and_orders_modalities_by_name(multimodal_config, tiny_config):
    assert tiny_config().modalities == ["images"] and not tiny_config().has_spectra
    config = multimodal_config(modalities=["spectra", "images"])
    assert config.modalities == ["images", "spectra"]
    assert (config.spectrum_wavelength_offset, config.spectrum_wavelength_scale, config.spectrum_loss_weight) == (
        3000.0, 7000.0, 0.5)
    reloaded = AstroPTConfig.from_dict(json.loads(config.to_json_string()))
    assert reloaded.modalities == ["images", "spectra"] and reloaded.spectrum_patch_size == SIZE


def test_old_single_modality_config_loads_unchanged(tiny_config):
    old = {k: v for k, v in tiny_config().to_dict().items() if not k.startswith(("spectrum_", "modalities", "image_loss"))}
    config = AstroPTConfig.from_dict(old)
    assert config.modalities == ["images"]
    model = AstroPTForPreTraining(config)
    assert not any("spectrum" in key for key in model.state_dict())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(modalities=["spectra"]), "images are always"),
        (dict(modalities=["images", "images"]), "distinct"),
        (dict(modalities=["images", "photometry"]), "modalities='photometry'"),
        (dict(spectrum_position_encoding="index"), "spectrum_position_encoding"),
        (dict(spectrum_patch_size=0), "spectrum_patch_size"),
        (dict(spectrum_loss_weight=-1.0), "spectrum_loss_weight"),
        (dict(spectrum_wavelength_scale=0.0), "spectrum_wavelength_scale"),
        (dict(objective="masked_patch", attention_pattern="bidirectional"), "needs objective='next_patch'"),
        (dict(attention_pattern="prefix"), "attention_pattern='causal'"),
    ],
)
def test_config_rejects_invalid_modalities_by_name(multimodal_config, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        multimodal_config(**overrides)


# --- feature extractor and processor ------------------------------------------------------------------
def test_extractor_masks_bad_pixels_and_zeroes_them():
    flux = np.arange(1.0, 11.0)
    flux[2] = np.nan
    ivar = np.ones(10)
    ivar[5] = 0.0
    mask = np.zeros(10, dtype=np.int32)
    mask[7] = 4  # a bitmask flag, as in DESI
    out = AstroPTSpectrumFeatureExtractor(normalisation="none")(flux, np.linspace(4000, 5000, 10), ivar=ivar, mask=mask)
    good = out["spectrum_mask"][0]
    assert good.dtype == torch.bool and good.tolist() == [i not in (2, 5, 7) for i in range(10)]
    values = out["spectrum_values"][0]
    assert torch.isfinite(values).all() and values[[2, 5, 7]].eq(0).all()
    torch.testing.assert_close(values[good], torch.tensor(flux[good.numpy()], dtype=torch.float32))


def test_extractor_median_scale_is_recorded_and_none_keeps_flux():
    flux = [np.array([1.0, -2.0, 3.0, 100.0, np.nan]), np.array([0.5, 0.5, 0.5])]
    waves = [np.linspace(4000, 5000, 5), np.linspace(4000, 5000, 3)]
    out = AstroPTSpectrumFeatureExtractor()(flux, waves)
    torch.testing.assert_close(out["spectrum_scale"], torch.tensor([2.5, 0.5]))  # median |flux| of good pixels
    torch.testing.assert_close(out["spectrum_values"][0, :4], torch.tensor([0.4, -0.8, 1.2, 40.0]))
    raw = AstroPTSpectrumFeatureExtractor(normalisation="none")(flux, waves)
    torch.testing.assert_close(raw["spectrum_values"][1, :3], torch.full((3,), 0.5))
    assert raw["spectrum_scale"].tolist() == [1.0, 1.0]


def test_extractor_pads_a_batch_with_masked_zero_wavelength_samples():
    out = AstroPTSpectrumFeatureExtractor(normalisation="none")(
        [np.ones(7), np.ones(4)], [np.linspace(4000, 5000, 7), np.linspace(6000, 7000, 4)])
    assert out["spectrum_values"].shape == (2, 7)
    assert out["spectrum_mask"][1].tolist() == [True] * 4 + [False] * 3
    assert out["spectrum_wavelengths"][1, 4:].eq(0).all() and out["spectrum_wavelengths"][1, 3] == 7000
    padded = AstroPTSpectrumFeatureExtractor()(np.ones(7), np.linspace(4000, 5000, 7), padding="max_length",
                                               max_length=10)
    assert padded["spectrum_values"].shape == (1, 10) and not padded["spectrum_mask"][0, 7:].any()


def test_extractor_resamples_linearly_and_masks_what_a_bad_pixel_touches():
    wavelength = np.array([4000.0, 4010.0, 4020.0, 4030.0, 4040.0])
    flux = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    ivar = np.array([1.0, 1.0, 1.0, 0.0, 1.0])
    grid = np.array([3990.0, 4005.0, 4015.0, 4020.0, 4025.0, 4040.0, 4050.0])
    out = AstroPTSpectrumFeatureExtractor(normalisation="none")(flux, wavelength, ivar=ivar, wavelength_grid=grid)
    assert out["spectrum_mask"][0].tolist() == [False, True, True, True, False, True, False]
    torch.testing.assert_close(out["spectrum_values"][0], torch.tensor([0, 1.5, 2.5, 3.0, 0, 5.0, 0]))
    torch.testing.assert_close(out["spectrum_wavelengths"][0], torch.tensor(grid, dtype=torch.float32))
    # a grid in the extractor's settings applies to every call, and wavelengths can then be omitted
    on_grid = AstroPTSpectrumFeatureExtractor(wavelength_grid=grid.tolist(), normalisation="none")(np.ones(7))
    assert on_grid["spectrum_mask"].all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(flux=np.ones(5), wavelength=np.linspace(4000, 5000, 6)), "wavelength has 6 samples but flux has 5"),
        (dict(flux=np.ones(5), wavelength=np.linspace(4000, 5000, 5), ivar=np.ones(4)), "ivar has 4 samples"),
        (dict(flux=np.ones(5), wavelength=np.linspace(4000, 5000, 5), mask=np.zeros(6)), "mask has 6 samples"),
        (dict(flux=[np.ones(5)] * 2, wavelength=[np.linspace(4000, 5000, 5)] * 3), "2 flux spectra but 3 wavelength"),
        (dict(flux=np.ones(4), wavelength=np.array([4000.0, 4010.0, 4005.0, 4020.0])), "must increase strictly"),
        (dict(flux=np.ones(3), wavelength=np.array([4000.0, np.nan, 4020.0])), "spectrum 0: wavelengths must be finite"),
        (dict(flux=np.ones(2), wavelength_grid=[5000.0, 4000.0]), "wavelength_grid: wavelengths must increase"),
        (dict(flux=np.full(3, np.nan), wavelength=np.array([4000.0, 4010.0, 4020.0])), "spectrum 0: every sample is masked"),
        (dict(flux=[np.ones(3), np.ones(3)], wavelength=np.array([4000.0, 4010.0, 4020.0]), ivar=[np.ones(3), np.zeros(3)]),
         "spectrum 1: every sample is masked"),
        (dict(flux=np.ones(3)), "pass the wavelengths"),
        (dict(flux=np.ones((2, 2, 2)), wavelength=np.ones(2)), "1-D spectrum"),
        (dict(flux=np.ones(3), wavelength=np.linspace(4000, 5000, 3), normalisation="max"), "normalisation='max'"),
        (dict(flux=np.ones(3), wavelength=np.linspace(4000, 5000, 3), padding="max_length", max_length=2), "max_length"),
        (dict(flux=np.ones(3), wavelength=np.linspace(4000, 5000, 3), wavelength_grid=[6000.0, 6100.0]),
         "no good sample falls inside the wavelength grid"),
    ],
)
def test_extractor_raises_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AstroPTSpectrumFeatureExtractor()(**kwargs)


def test_processor_combines_images_and_spectra_and_checks_the_batch():
    processor = AstroPTProcessor(AstroPTImageProcessor(image_size=16, num_channels=3),
                                 AstroPTSpectrumFeatureExtractor(normalisation="none"))
    images = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    waves = [np.linspace(4000, 5000, 20), np.linspace(4000, 5000, 12)]
    out = processor(images=list(images), spectra=[np.ones(20), np.ones(12)], wavelengths=waves)
    assert out["pixel_values"].shape == (2, 3, 16, 16) and out["spectrum_values"].shape == (2, 20)
    assert set(processor(images=list(images)).keys()) == {"pixel_values"}
    with pytest.raises(ValueError, match="2 images but 1 spectra"):
        processor(images=list(images), spectra=np.ones(20), wavelengths=np.linspace(4000, 5000, 20))
    with pytest.raises(ValueError, match="pass the flux as spectra"):
        processor(images=list(images), wavelengths=np.linspace(4000, 5000, 20))
    with pytest.raises(ValueError, match="pass images, spectra"):
        processor()


# --- spectrum patching ----------------------------------------------------------------------------------
def test_spectrum_patching_pads_at_the_end_and_inverts(multimodal_config):
    config = multimodal_config()
    _, flux, wavelengths = galaxies(length=40)
    patches = spectrum_to_patches(config, flux, wavelengths)
    assert patches.values.shape == patches.positions.shape == patches.valid.shape == (2, 3, SIZE)
    torch.testing.assert_close(patches_to_spectrum(patches.values, 40), flux)
    torch.testing.assert_close(patches.values[:, 0], flux[:, :SIZE])  # consecutive samples, in order
    assert patches.values[:, 2, 8:].eq(0).all() and not patches.valid[:, 2, 8:].any() and patches.valid[:, 2, :8].all()
    expected = (wavelengths - 3000.0) / 7000.0
    torch.testing.assert_close(patches_to_spectrum(patches.positions, 40), expected)
    assert patches.positions[:, 2, 8:].eq(0).all()  # upstream zero-pads the position input
    shared = spectrum_to_patches(config, flux, wavelengths[0])  # one (L,) grid; then padding wavelengths of 0
    torch.testing.assert_close(shared.positions, patches.positions)
    zero_padded = wavelengths.clone()
    zero_padded[:, 30:] = 0
    assert spectrum_to_patches(config, flux, zero_padded).positions[:, 1, 14:].eq(0).all()


def test_spectrum_patching_errors(multimodal_config):
    config = multimodal_config()
    _, flux, wavelengths = galaxies(length=40)
    with pytest.raises(ValueError, match="pass spectrum_wavelengths"):
        spectrum_to_patches(config, flux)
    with pytest.raises(ValueError, match="alike"):
        spectrum_to_patches(config, flux, wavelengths[:, :30])
    with pytest.raises(ValueError, match=r"at most spectrum_max_patches \* spectrum_patch_size = 128"):
        spectrum_to_patches(config, torch.zeros(2, 129), torch.ones(2, 129))
    with pytest.raises(ValueError, match="takes no spectra|need a model with spectra"):
        AstroPTModel(AstroPTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=4))(spectrum_values=flux, spectrum_wavelengths=wavelengths)


# --- loss and outputs -------------------------------------------------------------------------------------
def test_loss_is_weighted_per_modality_across_the_boundary(multimodal_config):
    model = randomise(AstroPTForPreTraining(multimodal_config(spectrum_loss_weight=0.25, image_loss_weight=2.0)))
    images, flux, wavelengths = galaxies(length=64)
    out = model(pixel_values=images, spectrum_values=flux, spectrum_wavelengths=wavelengths)
    sequence = model.image_to_patches(images)
    length = sequence.shape[1]
    hidden = model.astropt(pixel_values=images, spectrum_values=flux, spectrum_wavelengths=wavelengths).last_hidden_state
    assert hidden.shape[1] == length + 4  # image patches, then the spectrum's
    # boundary: the last image position predicts spectrum patch 0, and so on
    torch.testing.assert_close(out.spectrum_predictions, model.spectrum_head(hidden[:, length - 1 : length + 3]))
    torch.testing.assert_close(out.predictions, model.patch_head(hidden[:, :length]))
    image_loss = F.huber_loss(out.predictions[:, :-1], sequence[:, 1:])
    spectrum_loss = F.huber_loss(out.spectrum_predictions, flux.reshape(2, 4, SIZE))
    torch.testing.assert_close(out.image_loss, image_loss)
    torch.testing.assert_close(out.spectrum_loss, spectrum_loss)
    torch.testing.assert_close(out.loss, (2.0 * image_loss + 0.25 * spectrum_loss) / 2)
    assert out.spectrum_predictions.shape == out.spectrum_target_patches.shape == (2, 4, SIZE)


def test_spectrum_only_and_image_only_inputs(multimodal_config):
    model = randomise(AstroPTForPreTraining(multimodal_config()))
    images, flux, wavelengths = galaxies(length=48)
    spectra_only = model(spectrum_values=flux, spectrum_wavelengths=wavelengths)
    assert spectra_only.predictions is None and spectra_only.image_loss is None
    assert torch.isnan(spectra_only.spectrum_predictions[:, 0]).all()  # nothing before patch 0 predicts it
    targets = flux.reshape(2, 3, SIZE)
    torch.testing.assert_close(spectra_only.spectrum_loss, F.huber_loss(spectra_only.spectrum_predictions[:, 1:], targets[:, 1:]))
    torch.testing.assert_close(spectra_only.loss, 0.5 * spectra_only.spectrum_loss)
    hidden = model.astropt(spectrum_values=flux, spectrum_wavelengths=wavelengths).last_hidden_state
    torch.testing.assert_close(spectra_only.spectrum_predictions[:, 1:], model.spectrum_head(hidden[:, :2]))
    images_only = model(pixel_values=images)
    assert images_only.spectrum_predictions is None and images_only.spectrum_loss is None
    torch.testing.assert_close(images_only.loss, images_only.image_loss)
    assert len(images_only.to_tuple()) == 4  # loss, predictions, targets, image_loss


def test_masked_and_padded_spectrum_samples_never_count(multimodal_config):
    model = randomise(AstroPTForPreTraining(multimodal_config()))
    images, flux, wavelengths = galaxies(length=40)  # 40 samples: 24 padded in the last patch
    mask = torch.ones_like(flux, dtype=torch.bool)
    mask[0, 5] = mask[1, 20:23] = False
    out = model(pixel_values=images, spectrum_values=flux, spectrum_wavelengths=wavelengths, spectrum_mask=mask)
    corrupted = flux.clone()
    corrupted[~mask] = 1e6
    corrupted[0, 7] = float("nan")
    mask_with_nan = mask.clone()
    mask_with_nan[0, 7] = False
    flux_with_gap = flux.clone()
    flux_with_gap[0, 7] = 123.0
    reference = model(pixel_values=images, spectrum_values=flux_with_gap, spectrum_wavelengths=wavelengths,
                      spectrum_mask=mask_with_nan)
    again = model(pixel_values=images, spectrum_values=corrupted, spectrum_wavelengths=wavelengths, spectrum_mask=mask)
    torch.testing.assert_close(again.loss, reference.loss)  # NaN is masked like an explicit mask
    torch.testing.assert_close(again.spectrum_predictions, reference.spectrum_predictions)  # zeroed in the input
    valid = out.spectrum_valid
    assert valid.sum() == 2 * 40 - 4
    by_hand = (F.huber_loss(out.spectrum_predictions, out.spectrum_target_patches, reduction="none") * valid).sum() / valid.sum()
    torch.testing.assert_close(out.spectrum_loss, by_hand)


def test_causal_across_the_modality_boundary(multimodal_config):
    model = randomise(AstroPTForPreTraining(multimodal_config()))
    images, flux, wavelengths = galaxies(length=64)
    base = model(pixel_values=images, spectrum_values=flux, spectrum_wavelengths=wavelengths)
    for k in range(4):
        changed = flux.clone()
        changed[:, k * SIZE : (k + 1) * SIZE] += 3.0
        out = model(pixel_values=images, spectrum_values=changed, spectrum_wavelengths=wavelengths)
        torch.testing.assert_close(out.predictions, base.predictions, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.spectrum_predictions[:, : k + 1], base.spectrum_predictions[:, : k + 1],
                                   rtol=0, atol=1e-6)
        if k < 3:
            assert (out.spectrum_predictions[:, k + 1] - base.spectrum_predictions[:, k + 1]).abs().max() > 1e-3
    # and the spectrum does read the image
    other = model(pixel_values=images.flip(-1), spectrum_values=flux, spectrum_wavelengths=wavelengths)
    assert (other.spectrum_predictions - base.spectrum_predictions).abs().max() > 1e-3


def test_learned_positions_by_index(multimodal_config):
    model = randomise(AstroPTForPreTraining(multimodal_config(spectrum_position_encoding="learned")))
    images, flux, wavelengths = galaxies(length=64)
    assert isinstance(model.astropt.embeddings.spectrum_position_embeddings, torch.nn.Embedding)
    out = model(pixel_values=images, spectrum_values=flux)
    torch.testing.assert_close(out.loss, model(pixel_values=images, spectrum_values=flux,
                                               spectrum_wavelengths=wavelengths * 2).loss)  # wavelengths unused
    with pytest.raises(ValueError, match="num_patches"):
        model.generate_spectrum(images)
    generated = model.generate_spectrum(images, num_patches=4)
    assert model.generate_spectrum(images, wavelengths[0, :50]).shape == (2, 50)  # the grid sets the length
    torch.testing.assert_close(generated.reshape(2, 4, SIZE)[:, 0], out.spectrum_predictions[:, 0])


# --- embeddings -------------------------------------------------------------------------------------------
def test_embeddings_per_modality_and_joint(multimodal_config):
    model = randomise(AstroPTForPreTraining(multimodal_config())).astropt
    images, flux, wavelengths = galaxies(length=64)
    spectra = dict(spectrum_values=flux, spectrum_wavelengths=wavelengths)
    image_only = model.get_image_embeddings(images)
    from_joint = model.get_image_embeddings(images, **spectra, modality="images")
    torch.testing.assert_close(from_joint, image_only, rtol=0, atol=1e-6)  # causal: the image saw no spectrum
    spectra_part = model.get_image_embeddings(images, **spectra, modality="spectra")
    both = model.get_image_embeddings(images, **spectra)
    torch.testing.assert_close(both, (from_joint + spectra_part) / 2)
    torch.testing.assert_close(model(images, **spectra).pooler_output, both)
    hidden = model(images, **spectra).last_hidden_state
    torch.testing.assert_close(spectra_part, hidden[:, -4:].mean(dim=1))
    assert model.get_image_embeddings(**spectra).shape == (2, 32)
    with pytest.raises(ValueError, match="modality='both'"):
        model.get_image_embeddings(images, modality="both")
    with pytest.raises(ValueError, match="modality='spectrum'"):
        model.get_image_embeddings(images, **spectra, modality="spectrum")


# --- generation -------------------------------------------------------------------------------------------
def test_generated_spectrum_cached_equals_uncached_and_teacher_forcing(multimodal_config):
    model = randomise(AstroPTForPreTraining(multimodal_config()), std=0.1)
    images, _, wavelengths = galaxies(length=60)
    cached = model.generate_spectrum(images, wavelengths)
    uncached = model.generate_spectrum(images, wavelengths, use_cache=False)
    assert cached.shape == (2, 60)
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)
    # fed back as the spectrum, each generated patch is what the model predicts at its place
    out = model(pixel_values=images, spectrum_values=cached, spectrum_wavelengths=wavelengths)
    torch.testing.assert_close(patches_to_spectrum(out.spectrum_predictions, 60), cached, rtol=1e-5, atol=1e-5)
    early = model.generate_spectrum(images, wavelengths[0], num_patches=2)
    torch.testing.assert_close(early, cached[:, : 2 * SIZE], rtol=1e-5, atol=1e-5)
    noisy = model.generate_spectrum(images, wavelengths, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert (noisy - cached).abs().max() > 0.1
    with pytest.raises(ValueError, match="generate_spectrum needs a model with spectra"):
        AstroPTForPreTraining(AstroPTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=4)).generate_spectrum(images, wavelengths)


# --- parity with PyPI astropt's multimodal GPT ------------------------------------------------------------
def _upstream_state_to_ours(state: dict) -> dict:
    names = {"transformer.wte.images.": "astropt.embeddings.patch_embeddings.mlp.",
             "transformer.wte.spectra.": "astropt.embeddings.spectrum_embeddings.mlp.",
             "transformer.wpe.spectra.": "astropt.embeddings.spectrum_position_embeddings.mlp.",
             "lm_head.images.": "patch_head.mlp.", "lm_head.spectra.": "spectrum_head.mlp."}
    layers = {"ln_1": "layernorm_before", "attn.c_attn": "attention.qkv", "attn.c_proj": "attention.out_proj",
              "ln_2": "layernorm_after", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    ours = {}
    for key, value in state.items():
        if key == "transformer.wpe.images.wpe.weight":
            ours["astropt.embeddings.position_embeddings.weight"] = value
        elif key == "transformer.ln_f.weight":
            ours["astropt.layernorm.weight"] = value
        elif key.startswith("transformer.h."):
            index, rest = key[len("transformer.h."):].split(".", 1)
            module, leaf = rest.rsplit(".", 1)
            ours[f"astropt.layers.{index}.{layers[module]}.{leaf}"] = value
        else:
            prefix = next(p for p in names if key.startswith(p))
            module, leaf = key[len(prefix):].rsplit(".", 1)
            ours[names[prefix] + {"c_fc": "0", "c_proj": "2"}[module] + "." + leaf] = value
    return ours


@pytest.mark.parametrize("tokeniser, length", [("aim", 512), ("aim", 300), ("affine", 512)])
def test_parity_with_upstream_multimodal_gpt(tokeniser, length):
    upstream = pytest.importorskip("astropt.model")
    patch, channels, grid, spectrum_patch = 4, 3, 4, 256
    num_patches, num_spectrum = grid * grid, math.ceil(length / spectrum_patch)
    gpt_config = upstream.GPTConfig(block_size=num_patches + num_spectrum, n_layer=2, n_head=4, n_embd=32,
                                    n_chan=channels, bias=False, tokeniser=tokeniser, dropout=0.0)
    registry = upstream.ModalityRegistry([
        upstream.ModalityConfig("spectra", spectrum_patch, spectrum_patch, spectrum_patch, False, 0.5),
        upstream.ModalityConfig("images", patch * patch * channels, 1, patch, True, 1.0),
    ])
    reference = randomise(upstream.GPT(gpt_config, registry, master_process=False), std=0.1)
    config = AstroPTConfig(
        image_size=patch * grid, patch_size=patch, num_channels=channels, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=num_patches + num_spectrum,
        patch_embedding="gelu_mlp" if tokeniser == "aim" else "linear", modalities=["images", "spectra"],
        spectrum_patch_size=spectrum_patch, spectrum_max_patches=num_spectrum,
    )
    ours = AstroPTForPreTraining(config).eval()
    ours.load_state_dict(_upstream_state_to_ours(reference.state_dict()), strict=True)

    generator = torch.Generator().manual_seed(0)
    sequence = torch.randn(2, num_patches, patch * patch * channels, generator=generator)
    flux = torch.randn(2, length, generator=generator) * 3.0
    wavelengths = torch.linspace(3600.0, 9824.0, length).expand(2, -1)
    pad = num_spectrum * spectrum_patch - length
    inputs = {  # upstream's dataset: spectra and (wavelength - 3000) / 7000 zero-padded into patches
        "images": sequence, "images_positions": torch.arange(num_patches).expand(2, -1),
        "spectra": F.pad(flux, (0, pad)).reshape(2, num_spectrum, spectrum_patch),
        "spectra_positions": F.pad((wavelengths - 3000) / 7000, (0, pad)).reshape(2, num_spectrum, spectrum_patch),
    }
    targets = {"images": sequence[:, 1:], "spectra": inputs["spectra"]}
    with torch.no_grad():
        expected, expected_loss = reference(inputs, targets)
        out = ours(input_patches=sequence, spectrum_values=flux, spectrum_wavelengths=wavelengths)
    torch.testing.assert_close(out.predictions[:, :-1], expected["images"], rtol=0, atol=1e-4)
    torch.testing.assert_close(out.spectrum_predictions, expected["spectra"], rtol=0, atol=1e-4)
    if pad == 0:  # upstream counts its zero padding in the loss; ours leaves padding out
        torch.testing.assert_close(out.loss, expected_loss, rtol=0, atol=1e-4)


# --- remote code ------------------------------------------------------------------------------------------
LOADER = LOAD_MULTIMODAL_CHECKPOINT + textwrap.dedent(
    """
    backbone = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    with torch.no_grad():
        out = model(**inputs)
        result = {
            "modules": [type(m).__module__ for m in (processor, processor.feature_extractor, model, backbone)],
            "classes": [type(m).__name__ for m in (processor, processor.feature_extractor, model, backbone)],
            "spectrum_values": inputs["spectrum_values"].tolist(),
            "spectrum_mask": inputs["spectrum_mask"].tolist(),
            "spectrum_predictions": out.spectrum_predictions.tolist(),
            "loss": out.loss.item(),
            "generated": model.generate_spectrum(inputs["pixel_values"], inputs["spectrum_wavelengths"]).tolist(),
            "embedding": backbone.get_image_embeddings(inputs["pixel_values"], modality="images").tolist(),
        }
    json.dump(result, open(out_path, "w"))
    """
)


def test_multimodal_checkpoint_and_processor_load_as_remote_code(tmp_path, multimodal_config):
    model = randomise(AstroPTForPreTraining(multimodal_config()), std=0.1)
    processor = AstroPTProcessor(AstroPTImageProcessor(image_size=16, num_channels=3),
                                 AstroPTSpectrumFeatureExtractor())
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    files = {p.name for p in checkpoint.iterdir()}
    remote = {"configuration_astropt.py", "modeling_astropt.py", "image_processing_astropt.py",
              "feature_extraction_astropt.py", "processing_astropt.py"}
    assert remote <= files
    assert json.loads((checkpoint / "processor_config.json").read_text())["auto_map"]["AutoProcessor"] == (
        "processing_astropt.AstroPTProcessor")
    for name in remote:
        assert not re.search(r"^\s*(from|import)\s+astropt_hf", (checkpoint / name).read_text(), re.M), name

    rng = np.random.default_rng(0)
    data = {"images": rng.random((2, 16, 16, 3)).astype(np.float32), "flux": rng.normal(size=(2, 50)) * 10,
            "wavelengths": np.linspace(3600, 9800, 50), "ivar": rng.random((2, 50)) + (rng.random((2, 50)) > 0.1)}
    data["ivar"][data["ivar"] < 1] = 0.0
    np.savez(tmp_path / "data.npz", **data)
    completed = run_without_astropt_hf(LOADER, tmp_path, checkpoint, tmp_path / "data.npz", tmp_path / "out.json")
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert all(m.startswith("transformers_modules.") for m in result["modules"]), result["modules"]
    assert result["classes"] == ["AstroPTProcessor", "AstroPTSpectrumFeatureExtractor", "AstroPTForPreTraining",
                                 "AstroPTModel"]
    inputs = processor(images=list(data["images"]), spectra=list(data["flux"]), wavelengths=data["wavelengths"],
                       ivar=list(data["ivar"]))
    assert torch.equal(torch.tensor(result["spectrum_mask"]), inputs["spectrum_mask"])
    assert not inputs["spectrum_mask"].all()
    torch.testing.assert_close(torch.tensor(result["spectrum_values"]), inputs["spectrum_values"])
    with torch.no_grad():
        out = model(**inputs)
        generated = model.generate_spectrum(inputs["pixel_values"], inputs["spectrum_wavelengths"])
        embedding = model.astropt.get_image_embeddings(inputs["pixel_values"], modality="images")
    torch.testing.assert_close(torch.tensor(result["spectrum_predictions"]), out.spectrum_predictions, rtol=0, atol=0)
    assert result["loss"] == pytest.approx(out.loss.item(), abs=0)
    torch.testing.assert_close(torch.tensor(result["generated"]), generated, rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor(result["embedding"]), embedding, rtol=0, atol=0)
