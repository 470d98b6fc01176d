"""The image processor on the inputs astronomers actually have."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from astropt_hf import AstroPTImageProcessor


@pytest.fixture
def processor():
    return AstroPTImageProcessor(image_size=16, num_channels=3)


def test_uint8_hwc_is_rescaled_and_transposed(processor):
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 16, 16) and pixel_values.dtype == torch.float32
    torch.testing.assert_close(pixel_values[0], torch.from_numpy(image).permute(2, 0, 1).float() / 255)


def test_uint16_is_rescaled_by_its_own_range(processor):
    image = np.full((3, 16, 16), 65535, dtype=np.uint16)
    image[0] = 0
    pixel_values = processor(image)["pixel_values"]
    assert pixel_values[0, 0].max() == 0 and torch.all(pixel_values[0, 1:] == 1)


def test_float_channel_first_passes_through(processor):
    image = np.random.default_rng(1).normal(size=(3, 16, 16))  # float64, like FITS data
    pixel_values = processor(image)["pixel_values"]
    torch.testing.assert_close(pixel_values[0], torch.from_numpy(image).float())


def test_pil_and_lists_batch(processor):
    rng = np.random.default_rng(2)
    arrays = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    pixel_values = processor([Image.fromarray(a) for a in arrays])["pixel_values"]
    assert pixel_values.shape == (3, 3, 16, 16)
    torch.testing.assert_close(pixel_values[2], torch.from_numpy(arrays[2]).permute(2, 0, 1).float() / 255)


def test_nan_pixels_are_filled_with_a_warning():
    processor = AstroPTImageProcessor(image_size=16, num_channels=3, nan_fill_value=-1.0)
    image = np.ones((3, 16, 16), dtype=np.float32)
    image[0, 0, :3] = np.nan
    image[2, 5, 5] = np.inf
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pixel_values = processor(image)["pixel_values"]
    assert any("4 NaN/inf pixels" in str(w.message) for w in caught)
    assert torch.isfinite(pixel_values).all()
    assert pixel_values[0, 0, 0, :3].tolist() == [-1.0] * 3 and pixel_values[0, 2, 5, 5] == -1.0


@pytest.mark.parametrize("shape", [(16, 16, 4), (5, 16, 16), (16, 16)])
def test_wrong_band_count_names_both(processor, shape):
    with pytest.raises(ValueError, match=r"expected num_channels=3") as info:
        processor(np.zeros(shape, dtype=np.float32))
    assert str(shape[0] if shape[0] < shape[-1] else shape[-1]) in str(info.value) or "1 bands" in str(info.value)


def test_single_band_processor_accepts_2d_images():
    processor = AstroPTImageProcessor(image_size=8, num_channels=1)
    assert processor(np.zeros((8, 8), dtype=np.float32))["pixel_values"].shape == (1, 1, 8, 8)


def test_centre_crop_and_resize(processor):
    image = np.zeros((3, 20, 24), dtype=np.float32)
    image[:, 2:18, 4:20] = 1.0  # the central 16x16
    cropped = processor(image)["pixel_values"]
    assert cropped.shape == (1, 3, 16, 16) and torch.all(cropped == 1)
    resized = processor(np.ones((3, 32, 32), dtype=np.float32), resize_mode="resize")["pixel_values"]
    assert resized.shape == (1, 3, 16, 16)
    torch.testing.assert_close(resized, torch.ones(1, 3, 16, 16))
    small = processor(np.ones((3, 8, 12), dtype=np.float32))["pixel_values"]
    assert small.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="expected 16x16"):
        processor(np.ones((3, 8, 8), dtype=np.float32), resize_mode="none")


def test_asinh_stretch():
    processor = AstroPTImageProcessor(image_size=4, num_channels=1, stretch="asinh", asinh_scale=0.1)
    image = np.linspace(-1, 10, 16, dtype=np.float32).reshape(4, 4)
    torch.testing.assert_close(processor(image)["pixel_values"][0, 0], torch.asinh(torch.from_numpy(image) / 0.1))


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="stretch='log'"):
        AstroPTImageProcessor(stretch="log")
    with pytest.raises(ValueError, match="resize_mode='pad'"):
        AstroPTImageProcessor(resize_mode="pad")


def test_round_trips_through_save_pretrained(tmp_path):
    processor = AstroPTImageProcessor(image_size=24, num_channels=1, stretch="asinh", asinh_scale=0.5)
    processor.save_pretrained(tmp_path)
    loaded = AstroPTImageProcessor.from_pretrained(tmp_path)
    assert (loaded.image_size, loaded.num_channels, loaded.stretch, loaded.asinh_scale) == (24, 1, "asinh", 0.5)
