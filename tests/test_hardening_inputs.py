"""Hostile and careless inputs to the data layer and the image processor: bounded memory, skipped and
counted items, and validation errors that name the field, the expected domain and the value."""

import logging
import os
import sys
import time
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.lib import format as npy_format
from PIL import Image

from astropt_hf import AstroPTImageProcessor
from astropt_hf.data import (
    CorruptSampleError,
    DecodeLimits,
    GalaxyCollator,
    decode_image,
    load_galaxy_dataset,
)

SIZE = 32
LIMITS = DecodeLimits.for_image_size(SIZE, 3)  # planes up to 512 x 512 pixels


@pytest.fixture
def processor():
    return AstroPTImageProcessor(image_size=SIZE, num_channels=3)


def _huge_npy(path, shape=(100_000, 100_000, 3)):
    """A .npy file of a few hundred bytes whose header declares a 224 GiB float64 array."""
    with open(path, "wb") as handle:
        npy_format.write_array_header_1_0(handle, {"descr": "<f8", "fortran_order": False, "shape": shape})
        handle.write(b"\0" * 64)


def _fits_header(*cards: str) -> bytes:
    return b"".join(card.ljust(80).encode() for card in (*cards, "END")).ljust(2880, b" ")


def _huge_fits(path, side=100_000):
    header = _fits_header(
        "SIMPLE  =                    T", "BITPIX  =                  -64", "NAXIS   =                    2",
        f"NAXIS1  = {side:20d}", f"NAXIS2  = {side:20d}",
    )
    path.write_bytes(header + b"\0" * 2880)


def _peak_bytes(function):
    tracemalloc.start()
    try:
        function()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# ------------------------------------------------------------------------------------------ declared sizes


def test_npy_declaring_a_huge_array_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.npy"
    _huge_npy(path)
    assert path.stat().st_size < 1024
    with pytest.raises(CorruptSampleError, match="header declares") as info:
        decode_image(path)
    assert "bomb.npy" in str(info.value)
    # a moderately large one (fits in RAM) is also refused before allocating, under the model's limits
    _huge_npy(path, shape=(3, 2048, 2048))
    peak = _peak_bytes(lambda: pytest.raises(CorruptSampleError, decode_image, path, limits=LIMITS))
    assert peak < 10 * 2**20


def test_truncated_npy_is_refused_before_reading(tmp_path):
    path = tmp_path / "short.npy"
    _huge_npy(path, shape=(3, 40, 40))
    with pytest.raises(CorruptSampleError, match="truncated"):
        decode_image(path)


def test_large_png_is_refused_from_its_header_not_decoded(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (2000, 2000)).save(path)  # a few KB on disk, 4 MB decoded
    assert decode_image(path).shape == (2000, 2000)  # the default limits let it through
    start = time.perf_counter()
    peak = _peak_bytes(lambda: pytest.raises(CorruptSampleError, decode_image, path, limits=LIMITS))
    assert peak < 2**20 and time.perf_counter() - start < 1.0
    with pytest.raises(CorruptSampleError, match="2000x2000 pixels.*decode limit"):
        decode_image(path, limits=LIMITS)


def test_png_declaring_12000_squared_pixels_is_refused_cheaply():
    # A PNG header (IHDR) declaring 12000 x 12000 pixels, under PIL's own bomb limit; the data is never read.
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 12000, 12000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 12001)) + chunk(b"IEND", b"")
    with pytest.raises(CorruptSampleError, match="12000x12000 pixels"):
        decode_image(data, source="bomb.png", limits=LIMITS)


def test_tiff_with_too_many_pages_is_refused_before_reading_them(tmp_path):
    path = tmp_path / "pages.tiff"
    pages = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in range(40)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert decode_image(path).shape == (40, 8, 8)  # within the default 64 planes
    with pytest.raises(CorruptSampleError, match="more than 16 pages"):
        decode_image(path, limits=DecodeLimits(max_pixels=10**6, max_bytes=10**8, max_planes=16))


def test_fits_declaring_a_huge_image_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.fits"
    _huge_fits(path)
    with pytest.raises(CorruptSampleError, match="declares shape \\(100000, 100000\\)"):
        decode_image(path)
    _huge_fits(path, side=4096)  # 128 MB declared: allocatable, but over the model's limits
    peak = _peak_bytes(lambda: pytest.raises(CorruptSampleError, decode_image, path, limits=LIMITS))
    assert peak < 10 * 2**20


def test_decode_limits_reject_nonsense():
    with pytest.raises(ValueError, match="max_pixels"):
        DecodeLimits(max_pixels=0, max_bytes=1, max_planes=1)
    assert DecodeLimits.for_image_size(32, 3, max_side_factor=2).max_pixels == 64 * 64


def test_collator_skips_and_counts_oversized_items(tmp_path, processor, caplog):
    _huge_npy(tmp_path / "bomb.npy")
    _huge_fits(tmp_path / "bomb.fits")
    Image.new("RGB", (600, 600)).save(tmp_path / "wide.png")  # over 16 x 32 on a side
    Image.new("RGB", (100, 100)).save(tmp_path / "fine.png")
    rows = [{"image": str(tmp_path / name)} for name in ("bomb.npy", "bomb.fits", "wide.png", "fine.png")]
    with caplog.at_level(logging.WARNING, logger="astropt_hf.data.collate"):
        batch = GalaxyCollator(processor)(rows)
    assert batch["num_skipped"] == 3 and batch["ids"] == [str(tmp_path / "fine.png")]
    assert sum("decode limit" in r.getMessage() for r in caplog.records) == 3
    # the limit follows the collator's option
    generous = DecodeLimits.for_image_size(SIZE, 3, max_side_factor=20)
    assert GalaxyCollator(processor, decode_limits=generous)(rows[2:])["num_skipped"] == 0


def test_declared_size_within_limits_but_unallocatable_is_a_skipped_sample(tmp_path, processor):
    # 72 TB declared, under deliberately huge limits: the failed allocation is a skip, not a crash.
    path = tmp_path / "big.fits"
    _huge_fits(path, side=3_000_000)
    limits = DecodeLimits(max_pixels=10**16, max_bytes=10**17, max_planes=4)
    with pytest.raises(CorruptSampleError):
        decode_image(path, limits=limits)
    batch = GalaxyCollator(processor, decode_limits=limits)([{"image": str(path)}])
    assert batch["num_skipped"] == 1


# ------------------------------------------------------------------------------------------ data folders


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that stores raw bytes in names")
def test_odd_folder_entries_are_skipped_and_counted_with_a_reason(tmp_path, processor, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 40)).save(folder / name)
    Image.new("RGB", (40, 40)).save(os.path.join(os.fsencode(folder), b"bad\xff.png"))  # not UTF-8
    os.mkfifo(folder / "fifo.png")
    (folder / "dir.png").mkdir()
    os.symlink("loop.png", folder / "loop.png")
    os.symlink("nowhere.png", folder / "dangling.png")

    source = load_galaxy_dataset(str(folder), split="all")
    assert len(source.dataset) == 7
    with caplog.at_level(logging.WARNING, logger="astropt_hf.data.collate"):
        batch = GalaxyCollator(processor, source.image_column, source.id_column)(list(source.dataset))
    assert sorted(batch["ids"]) == ["a", "b"] and batch["num_skipped"] == 5
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for reason in ("bad\\xff: the file name is not valid UTF-8", "fifo: not a regular file (a FIFO)",
                   "dir: a directory", "loop: symbolic link loop", "dangling: dangling symbolic link"):
        assert reason in warned


# ------------------------------------------------------------------------------------------ image processor


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FIELDS = ("image_size", "num_channels", "resize_mode", "stretch", "asinh_scale", "do_rescale", "nan_fill_value")
ANY_VALUE = st.one_of(
    st.integers(-3, 24),
    st.integers(5_000, 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([np.int64(8), np.float32(0.5), np.bool_(True), 8.0]),
    st.text(max_size=6),
    st.sampled_from(["none", "asinh", "resize", "center_crop", "8"]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


def _plausible_count(value):
    """int(value) when it is a whole number from 1 to 24 (not a bool), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value) if 1 <= value <= 24 else None
    if not np.isfinite(value) or float(value) != int(value) or not 1 <= value <= 24:
        return None
    return int(value)


def _bands(count, side=12):
    image = np.random.default_rng(0).uniform(0, 5, size=(count, side, side)).astype(np.float32)
    image[0, 0, 0] = np.nan
    return image


@FUZZ
@given(field=st.sampled_from(FIELDS), value=ANY_VALUE)
def test_fuzzed_settings_work_or_name_the_field(field, value):
    """Constructor and per-call: either a finite float32 batch of the right shape, or an error naming the field."""
    side = 8 if (field, value) == ("resize_mode", "none") else 12  # "none" needs the exact size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            processor = AstroPTImageProcessor(**{"image_size": 8, "num_channels": 3, field: value})
        except (TypeError, ValueError) as err:
            assert field in str(err)
        else:
            pixel_values = processor(_bands(processor.num_channels, side))["pixel_values"]
            assert pixel_values.shape == (1, processor.num_channels, processor.image_size, processor.image_size)
            assert pixel_values.dtype == torch.float32 and torch.isfinite(pixel_values).all()

        count = (_plausible_count(value) if field == "num_channels" else None) or 3
        try:
            pixel_values = AstroPTImageProcessor(image_size=8, num_channels=3)(_bands(count, side), **{field: value})
        except (TypeError, ValueError) as err:
            assert field in str(err)
            return
    size = (_plausible_count(value) if field == "image_size" else None) or 8
    assert pixel_values["pixel_values"].shape == (1, count, size, size)
    assert torch.isfinite(pixel_values["pixel_values"]).all()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_size": 0}, "image_size=0 is not valid; expected an integer >= 1"),
        ({"asinh_scale": 2**1100}, "asinh_scale=.* is not valid; expected a finite number > 0"),
        ({"nan_fill_value": -(10**400)}, "nan_fill_value=.* is not valid; expected a finite number"),
        ({"num_channels": 2**64}, "num_channels=18446744073709551616 is over the limit"),
        ({"stretch": "log"}, "stretch='log' is not valid; expected one of"),
        ({"resize_mode": "pad"}, "resize_mode='pad' is not valid; expected one of"),
        ({"asinh_scale": 0}, "asinh_scale=0 is not valid; expected a finite number > 0"),
        ({"asinh_scale": -1.0}, "asinh_scale=-1.0 is not valid"),
        ({"nan_fill_value": float("nan")}, "nan_fill_value=nan is not valid; expected a finite number"),
        ({"image_size": 100_000}, "image_size=100000 is over the limit of 4096.*MAX_IMAGE_SIZE to lift it"),
        ({"num_channels": "3"}, "num_channels must be an integer, got str '3'"),
        ({"strech": "asinh"}, "unknown keyword argument.*strech"),
    ],
)
def test_per_call_overrides_are_validated_like_the_constructor(overrides, message):
    processor = AstroPTImageProcessor(image_size=8, num_channels=3)
    with pytest.raises((TypeError, ValueError), match=message):
        processor(np.ones((3, 8, 8), np.float32), **overrides)
    known = {k: v for k, v in overrides.items() if k in FIELDS}
    if known:
        with pytest.raises((TypeError, ValueError), match=message):
            AstroPTImageProcessor(**{"image_size": 8, "num_channels": 3, **known})


def test_size_cap_can_be_lifted():
    class Bigger(AstroPTImageProcessor):
        MAX_IMAGE_SIZE = 10_000

    assert Bigger(image_size=5000).image_size == 5000
    with pytest.raises(ValueError, match="MAX_IMAGE_SIZE"):
        AstroPTImageProcessor(image_size=5000)


@st.composite
def image_arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(["uint8", "uint16", "int32", "int64", "float16", "float32", "float64", "bool"])))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=14))
    if dtype.kind == "f":
        elements = st.floats(-1e4, 1e4, width=16) | st.sampled_from([np.nan, np.inf, -np.inf])
    else:
        elements = None
    return draw(hnp.arrays(dtype=dtype, shape=shape, elements=elements))


@FUZZ
@given(array=image_arrays(), resize_mode=st.sampled_from(["center_crop", "resize", "none"]))
def test_fuzzed_arrays_give_a_batch_or_a_value_error(array, resize_mode):
    processor = AstroPTImageProcessor(image_size=8, num_channels=3, resize_mode=resize_mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pixel_values = processor(array)["pixel_values"]
        except ValueError:
            return
    assert pixel_values.shape[1:] == (3, 8, 8) and pixel_values.dtype == torch.float32
    assert torch.isfinite(pixel_values).all()


@pytest.mark.parametrize("shape", [(3, 0, 8), (0, 8, 3), (3, 8, 0), (0, 0)])
def test_zero_size_images_are_refused_clearly(shape):
    with pytest.raises(ValueError, match="no pixels"):
        AstroPTImageProcessor(image_size=8, num_channels=3 if len(shape) == 3 else 1)(np.zeros(shape, np.float32))


def test_bf16_tensors_are_read_as_float32():
    image = torch.rand(3, 8, 8)
    pixel_values = AstroPTImageProcessor(image_size=8, num_channels=3)(image.to(torch.bfloat16))["pixel_values"]
    torch.testing.assert_close(pixel_values[0], image.to(torch.bfloat16).float())


def test_pil_lab_image_is_converted_to_rgb_not_read_as_rgba():
    lab = Image.new("LAB", (8, 8), (128, 180, 100))
    pixel_values = AstroPTImageProcessor(image_size=8, num_channels=3)(lab)["pixel_values"]
    expected = torch.from_numpy(np.array(lab.convert("RGB"))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(pixel_values[0], expected)
    assert decode_image(lab).shape == (8, 8, 3)  # the data layer converts the same way


def test_pil_mode_1_is_greyscale_0_or_1_after_rescaling():
    bilevel = Image.fromarray(np.eye(8, dtype=bool))
    assert bilevel.mode == "1"
    pixel_values = AstroPTImageProcessor(image_size=8, num_channels=1)(bilevel)["pixel_values"]
    torch.testing.assert_close(pixel_values[0, 0], torch.eye(8))
    assert decode_image(bilevel).dtype == np.uint8


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16", "LA", "PA"])
def test_every_pil_mode_gives_a_batch_or_a_band_count_error(mode):
    image = Image.new(mode, (8, 8))
    for channels in (1, 3):
        try:
            pixel_values = AstroPTImageProcessor(image_size=8, num_channels=channels)(image)["pixel_values"]
        except ValueError as err:
            assert "expected num_channels" in str(err)
            continue
        assert pixel_values.shape == (1, channels, 8, 8) and torch.isfinite(pixel_values).all()
