"""Multimodal Universe layouts as `--dataset` sources: Legacy Survey image structs (band selection, masked and
zero-ivar pixels), DESI spectrum structs, and a cross-matched images+spectra set, built locally in the hub's
layout (features as MMU's dataset builders declare them) and saved to disk or parquet."""

import logging
import warnings

import datasets
import numpy as np
import pytest
import torch
from datasets import Array2D, Array3D, Features, List, Sequence, Value

from astropt_hf import AstroPTImageProcessor, AstroPTSpectrumFeatureExtractor
from astropt_hf.data import GalaxyCollator, load_galaxy_dataset
from astropt_hf.data.arguments import DataArguments, open_dataset
from astropt_hf.data.decoding import decode_image
from astropt_hf.data.multimodal_universe import decode_mmu_image, read_mmu_spectrum

SIZE, LENGTH = 16, 40
BANDS = ["DES-G", "DES-R", "DES-I", "DES-Z"]


def legacy_survey_features(band_struct=Sequence):
    """MMU legacysurvey's `image` feature: per band (H, W) flux, clean-pixel mask, ivar, psf_fwhm, scale."""
    band = {"band": Value("string"), "flux": Array2D((SIZE, SIZE), "float32"), "mask": Array2D((SIZE, SIZE), "bool"),
            "ivar": Array2D((SIZE, SIZE), "float32"), "psf_fwhm": Value("float32"), "scale": Value("float32")}
    return band_struct(band) if band_struct is List else Sequence(feature=band)


DESI_SPECTRUM = {"flux": Sequence(Value("float32")), "ivar": Sequence(Value("float32")),
                 "lsf_sigma": Sequence(Value("float32")), "lambda": Sequence(Value("float32")),
                 "mask": Sequence(Value("bool"))}  # MMU desi's `spectrum` (its mask: True = bad)


def galaxy_bands(seed):
    """(4, H, W) flux with a distinct level per band (band b near 10 * (b + 1)), its clean mask and ivar,
    with one masked pixel and one zero-ivar pixel per band."""
    rng = np.random.default_rng(seed)
    flux = (np.arange(1, 5)[:, None, None] * 10 + rng.random((4, SIZE, SIZE))).astype(np.float32)
    clean = np.ones((4, SIZE, SIZE), bool)
    clean[:, 2, 3] = False
    ivar = np.full((4, SIZE, SIZE), 4.0, np.float32)
    ivar[:, 5, 7] = 0.0
    return flux, clean, ivar


def image_struct(seed, per_band_dicts=False):
    flux, clean, ivar = galaxy_bands(seed)
    bands = [{"band": name, "flux": flux[b], "mask": clean[b], "ivar": ivar[b], "psf_fwhm": 1.3, "scale": 0.262}
             for b, name in enumerate(BANDS)]
    if per_band_dicts:
        return bands
    return {key: [band[key] for band in bands] for key in bands[0]}


def desi_spectrum(seed):
    rng = np.random.default_rng(seed)
    flux = rng.normal(5, 1, LENGTH).astype(np.float32)
    flux[30] = np.nan
    ivar = np.ones(LENGTH, np.float32)
    ivar[10] = 0.0
    mask = np.zeros(LENGTH, bool)
    mask[20] = True
    return {"flux": flux, "ivar": ivar, "lsf_sigma": np.ones(LENGTH, np.float32),
            "lambda": np.linspace(3600, 9824, LENGTH).astype(np.float32), "mask": mask}


def legacy_survey_set(path, count=3, per_band_dicts=False):
    features = Features({"image": legacy_survey_features(List if per_band_dicts else Sequence),
                         "object_id": Value("string"), "EBV": Value("float32")})
    rows = {"image": [image_struct(i, per_band_dicts) for i in range(count)],
            "object_id": [f"ls{i}" for i in range(count)], "EBV": [0.01 * i for i in range(count)]}
    dataset = datasets.Dataset.from_dict(rows, features=features)
    if per_band_dicts:
        dataset.to_parquet(str(path))
    else:
        datasets.DatasetDict({"train": dataset, "test": dataset}).save_to_disk(str(path))
    return path


def cross_matched_set(path, count=4):
    """Legacy Survey images and DESI spectra in one row (MMU's cross_match_datasets); row 1 has no spectrum."""
    features = Features({"image": legacy_survey_features(), "spectrum": DESI_SPECTRUM, "object_id": Value("string"),
                         "z": Value("float32")})
    rows = {"image": [image_struct(i) for i in range(count)],
            "spectrum": [None if i == 1 else desi_spectrum(i) for i in range(count)],
            "object_id": [f"obj{i}" for i in range(count)], "z": [0.1 * i for i in range(count)]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def expected_image(seed, bands, masked_value=0.0):
    flux, clean, ivar = galaxy_bands(seed)
    chosen = [BANDS.index(f"DES-{b.upper()}") for b in bands]
    image = flux[chosen].copy()
    image[~(clean[chosen] & (ivar[chosen] > 0))] = masked_value
    return image


def test_legacy_survey_images_load_with_the_bands_asked_for(tmp_path):
    path = legacy_survey_set(tmp_path / "legacysurvey")
    source = open_dataset(DataArguments(dataset=str(path), bands="g,r,z").spec("test"))
    assert source.image_column == "image" and source.id_column == "object_id" and source.bands == ("g", "r", "z")
    assert source.spectrum_column is None and source.catalogue_columns == ("EBV",)
    row = source.dataset[1]
    assert isinstance(row["image"], np.ndarray) and row["image"].shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(row["image"], expected_image(1, "grz"))
    assert row["object_id"] == "ls1" and row["EBV"] == pytest.approx(0.01)
    # the bands come in the order asked for, matched by the part after "DES-" or whole
    reordered = load_galaxy_dataset(str(path), split="test", bands=["z", "DES-G"]).dataset[0]["image"]
    np.testing.assert_array_equal(reordered, expected_image(0, "zg"))


def test_masked_and_zero_ivar_pixels_reach_the_model_as_zero(tmp_path):
    source = load_galaxy_dataset(str(legacy_survey_set(tmp_path / "ls")), split="test", bands="g,r,z")
    processor = AstroPTImageProcessor(image_size=SIZE, num_channels=3, resize_mode="none")
    collator = GalaxyCollator(processor, source.image_column, source.id_column, keep_columns=source.catalogue_columns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN-fill warning for every cutout with masked pixels
        batch = collator([source.dataset[i] for i in range(3)])
    assert batch["num_skipped"] == 0 and batch["pixel_values"].shape == (3, 3, SIZE, SIZE)
    pixels = batch["pixel_values"]
    assert pixels[:, :, 2, 3].eq(0).all() and pixels[:, :, 5, 7].eq(0).all()  # masked, zero ivar
    flux = torch.from_numpy(galaxy_bands(2)[0][[0, 1, 3]])
    good = torch.ones(SIZE, SIZE, dtype=torch.bool)
    good[2, 3] = good[5, 7] = False
    torch.testing.assert_close(pixels[2][:, good], flux[:, good])  # every other pixel is the flux as stored


def test_a_band_the_image_lacks_is_a_skipped_sample_naming_it(tmp_path, caplog):
    source = load_galaxy_dataset(str(legacy_survey_set(tmp_path / "ls")), split="test", bands="g,w1")
    collator = GalaxyCollator(AstroPTImageProcessor(image_size=SIZE, num_channels=2), "image", "object_id")
    with caplog.at_level(logging.WARNING, logger="astropt_hf.data.collate"):
        batch = collator([source.dataset[0]])
    assert batch["num_skipped"] == 1
    assert "ls0" in caplog.text and "band 'w1' is not among the image's bands" in caplog.text
    with pytest.raises(ValueError, match="bands=.*is not valid"):
        load_galaxy_dataset(str(tmp_path / "ls"), split="test", bands="g,g")


def test_per_band_dicts_and_a_band_cube_decode_alike(tmp_path):
    path = legacy_survey_set(tmp_path / "ls.parquet", per_band_dicts=True)
    source = load_galaxy_dataset(str(path), split="all", bands="i")
    np.testing.assert_array_equal(source.dataset[2]["image"], expected_image(2, "i"))
    # a (C, H, W) flux cube with per-band lists beside it (as crossmatched pilot shards store it)
    flux, clean, ivar = galaxy_bands(0)
    cube = {"flux": flux, "band": BANDS, "mask": clean, "ivar": ivar, "psf_fwhm": [1.0] * 4, "scale": [0.262] * 4}
    np.testing.assert_array_equal(decode_mmu_image(cube, ["r", "z"]), expected_image(0, "rz", np.nan))
    # decode_image reads a struct as well (every band, bad pixels NaN for the image processor to fill)
    np.testing.assert_array_equal(decode_image(image_struct(0)), expected_image(0, "griz", np.nan))
    with pytest.raises(ValueError, match="needs Multimodal Universe images"):
        images = datasets.Dataset.from_dict({"image": [np.zeros((3, 4, 4), np.float32)]},
                                            features=Features({"image": Array3D((3, 4, 4), "float32")}))
        images.save_to_disk(str(tmp_path / "plain"))
        load_galaxy_dataset(str(tmp_path / "plain"), split="all", bands="g")


def test_desi_spectra_alone_load_with_bad_samples_masked(tmp_path):
    features = Features({"spectrum": DESI_SPECTRUM, "object_id": Value("string"), "z": Value("float32")})
    rows = {"spectrum": [desi_spectrum(i) for i in range(3)], "object_id": ["a", "b", "c"], "z": [0.1, 0.2, 0.3]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "desi.parquet"))
    source = load_galaxy_dataset(str(tmp_path / "desi.parquet"), split="all")
    assert source.image_column is None and source.spectrum_column == "spectrum" and source.catalogue_columns == ("z",)
    spectrum = source.dataset[0]["spectrum"]
    assert set(spectrum) == {"flux", "ivar", "lambda", "mask"} and spectrum["flux"].dtype == np.float32
    assert np.flatnonzero(spectrum["mask"]).tolist() == [10, 20, 30]  # zero ivar, DESI's mask, NaN flux
    expected = desi_spectrum(0)
    np.testing.assert_array_equal(spectrum["lambda"], expected["lambda"])
    extracted = AstroPTSpectrumFeatureExtractor(normalisation="none")(
        spectrum["flux"], spectrum["lambda"], ivar=spectrum["ivar"], mask=spectrum["mask"])
    good = extracted["spectrum_mask"][0]
    assert (~good).nonzero().flatten().tolist() == [10, 20, 30]
    assert extracted["spectrum_values"][0, [10, 20, 30]].eq(0).all()  # bad samples never reach the loss as signal
    torch.testing.assert_close(extracted["spectrum_values"][0, :10], torch.from_numpy(expected["flux"][:10]))


@pytest.mark.parametrize("streaming", [False, True])
def test_cross_matched_images_and_spectra(tmp_path, streaming):
    path = cross_matched_set(tmp_path / "crossmatch.parquet")
    source = load_galaxy_dataset(str(path), split="all", streaming=streaming, bands="g,r,z")
    assert (source.image_column, source.spectrum_column, source.catalogue_columns) == ("image", "spectrum", ("z",))
    rows = list(source.dataset) if streaming else [source.dataset[i] for i in range(4)]
    assert [str(row["object_id"]) for row in rows] == ["obj0", "obj1", "obj2", "obj3"]
    for index, row in enumerate(rows):
        np.testing.assert_array_equal(row["image"], expected_image(index, "grz"))
    assert rows[1]["spectrum"] is None  # no DESI counterpart
    spectrum = rows[3]["spectrum"]
    np.testing.assert_array_equal(spectrum["flux"][:5], desi_spectrum(3)["flux"][:5])
    assert np.flatnonzero(spectrum["mask"]).tolist() == [10, 20, 30]


def test_spectrum_fields_must_line_up():
    bad = desi_spectrum(0)
    bad["ivar"] = bad["ivar"][:-1]
    with pytest.raises(ValueError, match="spectrum fields differ in shape"):
        read_mmu_spectrum(bad, "x")
    assert read_mmu_spectrum({"flux": [], "lambda": [], "ivar": [], "mask": []}) is None


def test_pretraining_sources_keep_the_decoded_images_and_the_bands(tmp_path):
    from types import SimpleNamespace

    from accelerate import Accelerator

    from astropt_hf.training.data_streams import load_pretraining_sources

    path = legacy_survey_set(tmp_path / "ls.parquet", per_band_dicts=True)  # a List feature: the numpy fast path
    args = SimpleNamespace(dataset=str(path), streaming=False, image_column=None, id_column=None, data_cache_dir=None,
                           bands="r,z")
    train, validation = load_pretraining_sources(args, Accelerator(cpu=True))
    assert train.bands == ("r", "z")
    rows = [train.dataset[i] for i in range(len(train.dataset))] + [validation.dataset[i] for i in range(len(validation.dataset))]
    assert len(rows) == 3 and all(row["image"].shape == (2, SIZE, SIZE) for row in rows)
