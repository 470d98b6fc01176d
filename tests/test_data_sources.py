"""Decoding, dataset sources (folders, FITS, parquet, saved datasets, streaming) and the collator."""

import io
import logging
import pickle

import datasets
import numpy as np
import pytest
import torch
from astropy.io import fits
from PIL import Image

from astropt_hf import AstroPTImageProcessor
from astropt_hf.data import (
    TRUTH_COLUMNS,
    CorruptSampleError,
    GalaxyCollator,
    decode_image,
    load_galaxy_dataset,
)
from astropt_hf.data.synthetic import SPECTRUM_COLUMNS

SIZE = 32
RNG = np.random.default_rng(0)


def _rgb(size=40) -> np.ndarray:
    return RNG.integers(0, 255, size=(size, size, 3), dtype=np.uint8)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_fits_cube(path, cube):
    fits.PrimaryHDU(cube).writeto(path)


def _write_fits_mef(path, planes):
    fits.HDUList([fits.PrimaryHDU(), *[fits.ImageHDU(p) for p in planes]]).writeto(path)


GOOD = ["a_png", "b_jpg", "c_cube", "d_mef"]
BAD = ["e_truncated", "f_empty", "g_twoband"]


@pytest.fixture
def mixed_folder(tmp_path):
    """Four good images in four formats and three bad ones."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(_rgb()).save(folder / "a_png.png")
    Image.fromarray(_rgb()).save(folder / "b_jpg.jpg", quality=90)
    _write_fits_cube(folder / "c_cube.fits", RNG.normal(size=(3, 40, 40)).astype(">f4"))
    _write_fits_mef(folder / "d_mef.fits", [RNG.normal(size=(40, 40)).astype(np.float32) for _ in range(3)])
    data = _png_bytes(_rgb(64))
    (folder / "e_truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "f_empty.png").write_bytes(b"")
    _write_fits_cube(folder / "g_twoband.fits", np.zeros((2, 40, 40), np.float32))
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def processor():
    return AstroPTImageProcessor(image_size=SIZE, num_channels=3)


# ------------------------------------------------------------------------------------------ decoding


def test_decode_every_supported_form(mixed_folder):
    rgb = _rgb()
    assert decode_image(rgb).shape == (40, 40, 3)
    assert decode_image(rgb.tolist()).shape == (40, 40, 3)
    assert decode_image(torch.from_numpy(rgb)).shape == (40, 40, 3)
    assert decode_image(Image.fromarray(rgb)).shape == (40, 40, 3)
    np.testing.assert_array_equal(decode_image(_png_bytes(rgb)), rgb)
    np.testing.assert_array_equal(decode_image({"bytes": _png_bytes(rgb), "path": None}), rgb)
    png_path = str(mixed_folder / "a_png.png")
    assert decode_image({"bytes": None, "path": png_path}).shape == (40, 40, 3)
    assert decode_image(png_path).dtype == np.uint8
    cube = decode_image(mixed_folder / "c_cube.fits")
    assert cube.shape == (3, 40, 40) and cube.dtype.isnative
    assert decode_image(mixed_folder / "d_mef.fits").shape == (3, 40, 40)
    assert decode_image((mixed_folder / "c_cube.fits").read_bytes()).shape == (3, 40, 40)


def test_multi_extension_fits_keeps_file_order(tmp_path):
    planes = [np.full((8, 8), value, np.float32) for value in (1.0, 2.0, 3.0)]
    _write_fits_mef(tmp_path / "m.fits", planes)
    np.testing.assert_array_equal(decode_image(tmp_path / "m.fits")[:, 0, 0], [1.0, 2.0, 3.0])


def test_multipage_tiff_pages_become_bands(tmp_path):
    pages = [Image.fromarray(np.full((8, 8), v, np.uint16)) for v in (10, 20, 30)]
    pages[0].save(tmp_path / "t.tiff", save_all=True, append_images=pages[1:])
    np.testing.assert_array_equal(decode_image(tmp_path / "t.tiff")[:, 0, 0], [10, 20, 30])


@pytest.mark.parametrize(
    "name, reason",
    [
        ("e_truncated.png", "truncated|not a readable image"),
        ("f_empty.png", "empty"),
        ("missing.png", "not found"),
    ],
)
def test_undecodable_files_raise_corrupt_sample_error_naming_the_file(mixed_folder, name, reason):
    with pytest.raises(CorruptSampleError, match=reason) as info:
        decode_image(str(mixed_folder / name))
    assert name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_undecodable_values_raise_corrupt_sample_error(tmp_path):
    fits_bytes = io.BytesIO()
    fits.PrimaryHDU(np.zeros((3, 40, 40), np.float32)).writeto(fits_bytes)
    (tmp_path / "cut.fits").write_bytes(fits_bytes.getvalue()[:4000])
    cases = [
        (tmp_path / "cut.fits", "cut.fits"),
        (b"\x89PNG\r\n\x1a\n garbage", "obj-1"),
        ([[1, 2], [3]], "obj-1"),
        ({"bytes": None, "path": None}, "obj-1"),
        (None, "obj-1"),
        (np.zeros(5), "obj-1"),
    ]
    for value, name in cases:
        with pytest.raises(CorruptSampleError) as info:
            decode_image(value, source="obj-1" if name == "obj-1" else None)
        assert name in str(info.value)


def test_corrupt_sample_error_survives_pickling():
    error = pickle.loads(pickle.dumps(CorruptSampleError("x.png", "truncated")))
    assert (error.source, error.reason) == ("x.png", "truncated")
    assert str(error) == "cannot decode x.png: truncated"


# ------------------------------------------------------------------------------------------ folders


def test_folder_loads_and_collator_skips_exactly_the_bad_files(mixed_folder, processor, caplog):
    source = load_galaxy_dataset(str(mixed_folder), split="all")
    assert (source.image_column, source.id_column) == ("image", "id")
    assert sorted(source.dataset["id"]) == sorted(GOOD + BAD)  # the .txt file is not an image

    collator = pickle.loads(pickle.dumps(GalaxyCollator(processor, source.image_column, source.id_column)))
    with caplog.at_level(logging.WARNING, logger="astropt_hf.data.collate"):
        batch = collator(list(source.dataset))
    assert batch["pixel_values"].shape == (len(GOOD), 3, SIZE, SIZE)
    assert batch["pixel_values"].dtype == torch.float32
    assert sorted(batch["ids"]) == GOOD
    assert batch["num_skipped"] == len(BAD)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == len(BAD)
    for name in BAD:
        assert sum(name in message for message in warned) == 1
    assert any("2 bands" in message for message in warned)  # the reason is in the log


def test_all_bad_batch_is_empty_with_the_right_shape(mixed_folder, processor):
    source = load_galaxy_dataset(str(mixed_folder), split="all")
    bad = [row for row in source.dataset if row["id"] in BAD]
    batch = GalaxyCollator(processor, "image", "id", keep_columns=("id",))(bad)
    assert batch["pixel_values"].shape == (0, 3, SIZE, SIZE)
    assert batch["num_skipped"] == len(BAD) and batch["ids"] == []


def test_collator_works_as_dataloader_collate_fn_in_a_worker(mixed_folder, processor):
    source = load_galaxy_dataset(str(mixed_folder), split="all")
    loader = torch.utils.data.DataLoader(
        source.dataset, batch_size=3, num_workers=1, collate_fn=GalaxyCollator(processor, "image", "id")
    )
    batches = list(loader)
    assert sum(len(b["ids"]) for b in batches) == len(GOOD)
    assert sum(b["num_skipped"] for b in batches) == len(BAD)
    assert all(b["pixel_values"].shape[1:] == (3, SIZE, SIZE) for b in batches)


def _npy_folder(root, count):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        np.save(root / f"obj{i:03d}.npy", np.full((3, 8, 8), i, np.float32))


def test_flat_folder_is_split_deterministically(tmp_path):
    _npy_folder(tmp_path / "flat", 60)
    train = load_galaxy_dataset(str(tmp_path / "flat"), split="train").dataset
    validation = load_galaxy_dataset(str(tmp_path / "flat"), split="validation").dataset
    train_ids, validation_ids = set(train["id"]), set(validation["id"])
    assert not train_ids & validation_ids
    assert train_ids | validation_ids == {f"obj{i:03d}" for i in range(60)}
    assert 0 < len(validation_ids) < 20
    assert (
        set(load_galaxy_dataset(str(tmp_path / "flat"), split="validation").dataset["id"]) == validation_ids
    )
    with pytest.raises(ValueError, match="no split 'test'.*available splits"):
        load_galaxy_dataset(str(tmp_path / "flat"), split="test")


def test_folder_with_split_subfolders_uses_them(tmp_path):
    _npy_folder(tmp_path / "root" / "train", 5)
    _npy_folder(tmp_path / "root" / "val", 2)
    assert len(load_galaxy_dataset(str(tmp_path / "root"), split="train").dataset) == 5
    assert len(load_galaxy_dataset(str(tmp_path / "root"), split="validation").dataset) == 2


# ------------------------------------------------------------------------------------------ parquet


@pytest.fixture
def smith42_parquet(tmp_path):
    """The upstream Smith42/galaxies schema: ``image`` (datasets Image) and ``dr8_id``; one corrupt."""
    images = [{"bytes": _png_bytes(_rgb(48)), "path": None} for _ in range(9)]
    images.append({"bytes": _png_bytes(_rgb(48))[:100], "path": None})
    ids = [f"{1000 + i}_{i}" for i in range(10)]
    features = datasets.Features({"image": datasets.Image(), "dr8_id": datasets.Value("string")})
    path = tmp_path / "galaxies.parquet"
    datasets.Dataset.from_dict({"image": images, "dr8_id": ids}, features=features).to_parquet(str(path))
    return path


def test_parquet_with_the_smith42_schema(smith42_parquet, processor, tmp_path):
    source = load_galaxy_dataset(str(smith42_parquet), split="all", cache_dir=tmp_path / "hf")
    assert (source.image_column, source.id_column) == ("image", "dr8_id")
    assert len(source.dataset) == 10
    # Images stay encoded, so the corrupt one fails in the collator instead of in the dataset.
    assert source.dataset.features["image"].decode is False
    batch = GalaxyCollator(processor, "image", "dr8_id")(list(source.dataset))
    assert batch["pixel_values"].shape == (9, 3, SIZE, SIZE)
    assert batch["num_skipped"] == 1 and "1009_9" not in batch["ids"]


def test_streaming_a_parquet_file(smith42_parquet, processor, tmp_path):
    source = load_galaxy_dataset(str(smith42_parquet), split="all", streaming=True, cache_dir=tmp_path / "hf")
    assert isinstance(source.dataset, datasets.IterableDataset)
    assert source.id_column == "dr8_id"
    loader = torch.utils.data.DataLoader(
        source.dataset, batch_size=4, collate_fn=GalaxyCollator(processor, "image", "dr8_id")
    )
    batches = list(loader)
    assert sum(len(b["ids"]) for b in batches) == 9 and sum(b["num_skipped"] for b in batches) == 1

    streamed = {
        split: [
            row["dr8_id"]
            for row in load_galaxy_dataset(
                str(smith42_parquet), split=split, streaming=True, cache_dir=tmp_path / "hf"
            ).dataset
        ]
        for split in ("train", "validation")
    }
    in_memory = {
        split: list(
            load_galaxy_dataset(str(smith42_parquet), split=split, cache_dir=tmp_path / "hf").dataset[
                "dr8_id"
            ]
        )
        for split in ("train", "validation")
    }
    assert streamed == in_memory  # the carve is the same streaming or not
    assert sorted(streamed["train"] + streamed["validation"]) == sorted(f"{1000 + i}_{i}" for i in range(10))


def test_saved_to_disk_dataset_dict(tmp_path, processor):
    rows = {"pixel_values": [np.zeros((3, 40, 40), np.float32).tolist()] * 3, "objid": ["x", "y", "z"]}
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "test": datasets.Dataset.from_dict(rows)}
    ).save_to_disk(str(tmp_path / "saved"))
    source = load_galaxy_dataset(str(tmp_path / "saved"), split="test")
    assert (source.image_column, source.id_column) == ("pixel_values", "objid")
    assert GalaxyCollator(processor, "pixel_values", "objid")(list(source.dataset))["pixel_values"].shape == (
        3,
        3,
        SIZE,
        SIZE,
    )


# ------------------------------------------------------------------------------------------ synthetic + errors


def test_synthetic_spec_carries_truth_into_batches(tmp_path):
    source = load_galaxy_dataset(
        "synthetic",
        split="validation",
        cache_dir=tmp_path,
        num_train=2,
        num_validation=3,
        num_test=1,
        image_size=16,
    )
    assert source.catalogue_columns == (*TRUTH_COLUMNS, *SPECTRUM_COLUMNS)
    first = source.dataset[0]  # pixel arrays come as numpy (fast), ids and truth as Python values
    assert isinstance(first["image"], np.ndarray) and first["image"].shape == (3, 16, 16)
    assert isinstance(first["id"], str) and isinstance(first["redshift"], float)
    processor = AstroPTImageProcessor(image_size=16, num_channels=3)
    batch = GalaxyCollator(
        processor, source.image_column, source.id_column, keep_columns=("redshift", "mag_r")
    )(list(source.dataset))
    assert batch["pixel_values"].shape == (3, 3, 16, 16)
    assert batch["redshift"].shape == (3,) and batch["redshift"].dtype == torch.float32
    np.testing.assert_allclose(batch["mag_r"].numpy(), np.asarray(source.dataset["mag_r"]))
    stream = load_galaxy_dataset(
        "synthetic",
        split="test",
        streaming=True,
        cache_dir=tmp_path,
        num_train=2,
        num_validation=3,
        num_test=1,
        image_size=16,
    )
    streamed_batch = GalaxyCollator(processor, stream.image_column, stream.id_column)(list(stream.dataset))
    assert streamed_batch["pixel_values"].shape == (1, 3, 16, 16)
    assert all(type(item) is str for item in streamed_batch["ids"])
    assert [row["id"] for row in stream.dataset] == list(
        load_galaxy_dataset(
            "synthetic",
            split="test",
            cache_dir=tmp_path,
            num_train=2,
            num_validation=3,
            num_test=1,
            image_size=16,
        ).dataset["id"]
    )


def test_clear_errors(tmp_path, smith42_parquet):
    with pytest.raises(ValueError, match="unknown dataset spec 'no/such-dataset'.*not 'synthetic'"):
        load_galaxy_dataset("no/such-dataset", cache_dir=tmp_path / "hf")
    with pytest.raises(ValueError, match="looks like a path, but no such file"):
        load_galaxy_dataset(str(tmp_path / "missing.parquet"))
    with pytest.raises(
        ValueError, match=r"no image column 'pixels'; available columns: \['image', 'dr8_id'\]"
    ):
        load_galaxy_dataset(
            str(smith42_parquet), split="all", image_column="pixels", cache_dir=tmp_path / "hf"
        )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_galaxy_dataset(str(empty))
    with pytest.raises(ValueError, match="split must be"):
        load_galaxy_dataset(str(smith42_parquet), split="dev")
    with pytest.raises(ValueError, match="only apply to spec='synthetic'"):
        load_galaxy_dataset(str(smith42_parquet), num_train=3)
