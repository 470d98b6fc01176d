"""The synthetic GalSim galaxy set: schema, determinism, caching, atomic writes, physical sense, and the
spectra: units, grid, noise and fibre."""

import dataclasses
import json
import threading

import numpy as np
import pytest

from astropt_hf.data import synthetic
from astropt_hf.data.galaxy_population import shen_half_light_radius_kpc
from astropt_hf.data.synthetic import (
    BANDS,
    NATIVE_SKY_NOISE_NMGY,
    PIXEL_SCALE,
    SKY_NOISE_NMGY,
    SPECTRUM_COLUMNS,
    TRUTH_COLUMNS,
    edge_flux_fraction,
    galaxy_rng,
    load_synthetic_galaxies,
    make_galaxy_row,
    render_galaxy,
    sample_galaxy_params,
)
from astropt_hf.data.synthetic_spectra import (
    SPECTRUM_WAVELENGTHS,
    aperture_flux_fraction,
    fibre_fractions,
    spectrum_noise_sigma,
)

TINY = dict(num_train=8, num_validation=4, num_test=4, image_size=24)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_synthetic_galaxies(**TINY, seed=0, cache_dir=tiny_dir, num_proc=1)


def _images(split) -> np.ndarray:
    return np.asarray(split.with_format("numpy")[:]["image"])


def test_schema_shapes_and_dtypes(tiny):
    assert set(tiny) == {"train", "validation", "test"}
    assert [len(tiny[s]) for s in ("train", "validation", "test")] == [8, 4, 4]
    train = tiny["train"]
    assert train.column_names == ["image", "id", *TRUTH_COLUMNS, *SPECTRUM_COLUMNS]
    assert train.features["image"].shape == (len(BANDS), 24, 24)
    images = _images(train)
    assert images.shape == (8, 3, 24, 24) and images.dtype == np.float32
    assert np.isfinite(images).all()
    ids = [i for s in ("train", "validation", "test") for i in tiny[s]["id"]]
    assert len(set(ids)) == 16
    for name in TRUTH_COLUMNS:
        assert train.features[name].dtype == "float32"


def test_same_seed_same_data_different_seed_different_data(tiny, tmp_path):
    again = load_synthetic_galaxies(**TINY, seed=0, cache_dir=tmp_path / "again", num_proc=2)
    other = load_synthetic_galaxies(**TINY, seed=1, cache_dir=tmp_path / "other", num_proc=1)
    for split in ("train", "validation", "test"):
        # Two worker processes give the same rows in the same order as one.
        np.testing.assert_array_equal(_images(tiny[split]), _images(again[split]))
        assert list(tiny[split]["redshift"]) == list(again[split]["redshift"])
        assert not np.allclose(_images(tiny[split]), _images(other[split]))
    assert list(tiny["train"]["redshift"]) != list(other["train"]["redshift"])


def test_each_galaxy_is_independent_of_the_set_size(tiny):
    # Galaxy 5 of train is rendered from its own seed, whatever else is generated.
    row = make_galaxy_row(0, "train", 5, image_size=24)
    stored = tiny["train"].with_format("numpy")[5]
    np.testing.assert_array_equal(row["image"], stored["image"])
    assert row["id"] == stored["id"]


def test_second_call_reads_the_cache(tiny, tiny_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the cached set was generated again")

    monkeypatch.setattr(synthetic, "_generate_to", fail)
    cached = load_synthetic_galaxies(**TINY, seed=0, cache_dir=tiny_dir)
    np.testing.assert_array_equal(_images(cached["train"]), _images(tiny["train"]))
    folders = [p for p in tiny_dir.iterdir() if p.is_dir()]
    assert len(folders) == 1  # no temporary folders left behind
    info = json.loads((folders[0] / "synthetic_info.json").read_text())
    assert info["split_sizes"] == {"train": 8, "validation": 4, "test": 4}
    assert info["pixel_unit"] == "nanomaggy"
    assert info["pixel_scale_arcsec"] == pytest.approx(0.524) == PIXEL_SCALE
    assert info["pixel_binning"] == 2
    assert info["generator_version"] == synthetic.GENERATOR_VERSION == 3
    assert info["spectrum_wavelength_angstrom"] == {"first": 3600.0, "last": 9824.0, "step": 4.0, "samples": 1557}
    assert info["spectrum_flux_unit"] == "1e-17 erg/s/cm^2/Angstrom"


def test_interrupted_generation_leaves_no_dataset(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.make_galaxy_row

    def dies_after_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "make_galaxy_row", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        load_synthetic_galaxies(
            num_train=6, num_validation=0, num_test=0, image_size=16, cache_dir=tmp_path, num_proc=1
        )
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []  # neither a half set nor a temporary folder

    monkeypatch.setattr(synthetic, "make_galaxy_row", real)
    complete = load_synthetic_galaxies(
        num_train=6, num_validation=0, num_test=0, image_size=16, cache_dir=tmp_path
    )
    assert len(complete["train"]) == 6 and len(complete["validation"]) == 0


def test_colours_are_magnitude_differences(tiny):
    for split in tiny.values():
        table = split.remove_columns(["image"]).with_format("numpy")[:]
        np.testing.assert_array_equal(table["g_r"], table["mag_g"] - table["mag_r"])
        np.testing.assert_array_equal(table["r_z"], table["mag_r"] - table["mag_z"])
        assert ((table["bulge_fraction"] >= 0) & (table["bulge_fraction"] <= 1)).all()
        assert ((table["axis_ratio"] > 0) & (table["axis_ratio"] <= 1)).all()
        assert ((table["position_angle"] >= 0) & (table["position_angle"] < 180)).all()
        assert (table["half_light_radius"] > 0).all()


@pytest.mark.parametrize("index", range(4))
def test_same_galaxy_further_away_is_fainter_redder_and_smaller(index):
    params = sample_galaxy_params(galaxy_rng(3, "train", index))
    _, near = render_galaxy(dataclasses.replace(params, redshift=0.1), image_size=16)
    _, far = render_galaxy(dataclasses.replace(params, redshift=0.3), image_size=16)
    assert far["mag_r"] > near["mag_r"] + 2.0  # distance modulus alone adds ~2.5 mag
    assert far["g_r"] > near["g_r"]
    assert far["half_light_radius"] < near["half_light_radius"]


def test_bulges_are_redder_than_disks():
    params = sample_galaxy_params(galaxy_rng(0, "test", 0))
    _, disky = render_galaxy(dataclasses.replace(params, bulge_fraction=0.05), image_size=16)
    _, bulgy = render_galaxy(dataclasses.replace(params, bulge_fraction=0.95), image_size=16)
    assert bulgy["g_r"] > disky["g_r"] + 0.2
    assert bulgy["r_z"] > disky["r_z"]


def test_pixels_are_nanomaggies_with_the_documented_sky_noise():
    params = sample_galaxy_params(galaxy_rng(0, "train", 1))
    compact = dataclasses.replace(params, disk_radius_kpc=1.0, bulge_radius_kpc=0.5, redshift=0.2)
    clean, truth = render_galaxy(compact, image_size=64)
    noisy, _ = render_galaxy(compact, image_size=64, rng=np.random.default_rng(0))
    for i, band in enumerate(BANDS):
        expected_flux = 10 ** (-0.4 * (truth[f"mag_{band}"] - 22.5))
        assert clean[i].sum() == pytest.approx(expected_flux, rel=0.03)
        assert (noisy[i] - clean[i]).std() == pytest.approx(SKY_NOISE_NMGY[band], rel=0.1)


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        load_synthetic_galaxies(num_train=-1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        load_synthetic_galaxies(image_size=2, cache_dir=tmp_path)


def test_concurrent_requests_generate_once(tmp_path, monkeypatch):
    calls = []
    real = synthetic._generate_to

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_generate_to", counting)
    results = [None, None]

    def load(slot):
        results[slot] = load_synthetic_galaxies(
            num_train=4, num_validation=0, num_test=0, image_size=16, cache_dir=tmp_path, num_proc=1
        )

    threads = [threading.Thread(target=load, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    np.testing.assert_array_equal(_images(results[0]["train"]), _images(results[1]["train"]))


def test_binned_pixels_carry_twice_the_native_sky_noise():
    # A 2x2-binned pixel sums four independent native pixels: sigma doubles.
    for band in BANDS:
        assert SKY_NOISE_NMGY[band] == pytest.approx(2 * NATIVE_SKY_NOISE_NMGY[band])
    noisy = make_galaxy_row(0, "test", 3, image_size=32)
    clean = make_galaxy_row(0, "test", 3, image_size=32, noise=False)
    assert clean["id"] == noisy["id"] and clean["redshift"] == noisy["redshift"]
    for i, band in enumerate(BANDS):
        residual = noisy["image"][i] - clean["image"][i]
        assert residual.std() == pytest.approx(SKY_NOISE_NMGY[band], rel=0.15)
        assert abs(residual.mean()) < 4 * SKY_NOISE_NMGY[band] / 32


def test_edge_flux_fraction_of_simple_images():
    point = np.zeros((3, 32, 32))
    point[:, 16, 16] = 1.0
    flat = np.ones((2, 3, 32, 32))
    assert edge_flux_fraction(point) == pytest.approx(0.0)
    np.testing.assert_allclose(edge_flux_fraction(flat), 1 - (26 / 32) ** 2)
    assert edge_flux_fraction(flat, ring=1) == pytest.approx(1 - (30 / 32) ** 2)
    with pytest.raises(ValueError, match="ring"):
        edge_flux_fraction(np.ones((3, 6, 6)), ring=3)


def test_demo_galaxies_sit_inside_their_stamps_with_plausible_sizes():
    rows = [make_galaxy_row(0, "test", index, image_size=32, noise=False) for index in range(100)]
    fractions = edge_flux_fraction(np.stack([row["image"] for row in rows]), ring=3)
    assert np.median(fractions) <= 0.03
    assert np.percentile(fractions, 90) <= 0.10
    radii = np.array([row["half_light_radius"] for row in rows])  # arcsec
    assert 1.0 <= np.median(radii) <= 3.0
    assert 2.0 <= np.percentile(radii, 90) <= 8.0


def test_size_luminosity_relations_follow_shen_2003():
    late_bright, late_scatter_bright = shen_half_light_radius_kpc(-22.0, early_type=False)
    late_faint, late_scatter_faint = shen_half_light_radius_kpc(-19.0, early_type=False)
    early_bright, _ = shen_half_light_radius_kpc(-22.0, early_type=True)
    early_faint, _ = shen_half_light_radius_kpc(-19.0, early_type=True)
    assert late_bright > late_faint and early_bright > early_faint  # brighter galaxies are larger
    # Early types follow a steeper relation (R ~ L^0.65 against ~L^0.21-0.53) and are more compact.
    assert np.log10(early_bright / early_faint) > np.log10(late_bright / late_faint)
    assert early_faint < late_faint
    assert 2.0 < late_bright < 8.0  # kpc: an L* disk
    assert late_scatter_faint > late_scatter_bright  # faint galaxies scatter more in size


# --- spectra ----------------------------------------------------------------------------------------------
C_ANGSTROM_PER_S = 2.99792458e18


def ab_magnitude(wavelengths, flux, band: str) -> float:
    """AB magnitude of f_lambda (1e-17 erg/s/cm²/Å) through a band, photon-counting, written out independently
    of GalSim's SED machinery: m = -2.5 log10(∫ f_λ T λ dλ / ∫ T c/λ dλ) - 48.60."""
    wavelengths = np.asarray(wavelengths, dtype=np.float64)
    throughput = synthetic._bandpasses()[band](wavelengths / 10.0)
    numerator = np.trapezoid(np.asarray(flux, dtype=np.float64) * 1e-17 * throughput * wavelengths, wavelengths)
    denominator = np.trapezoid(throughput * C_ANGSTROM_PER_S / wavelengths, wavelengths)
    return float(-2.5 * np.log10(numerator / denominator) - 48.60)


def test_spectrum_columns_grid_units_and_ivar(tiny):
    rows = tiny["validation"].with_format("numpy")[:]
    assert rows["spectrum"].shape == rows["spectrum_ivar"].shape == rows["spectrum_wavelength"].shape == (4, 1557)
    assert rows["spectrum"].dtype == np.float32
    np.testing.assert_array_equal(rows["spectrum_wavelength"][0], np.arange(3600.0, 9824.1, 4.0))
    np.testing.assert_array_equal(rows["spectrum_wavelength"], np.broadcast_to(SPECTRUM_WAVELENGTHS, (4, 1557)))
    assert np.isfinite(rows["spectrum"]).all() and (rows["spectrum_ivar"] > 0).all()
    assert ((rows["fibre_flux_fraction"] > 0.02) & (rows["fibre_flux_fraction"] < 1)).all()
    # r <= 19.5 galaxies through a 1.5" fibre: a few 1e-17 erg/s/cm²/Å, as DESI's bright-time spectra
    assert 0.2 < np.median(rows["spectrum"]) < 30


@pytest.mark.parametrize("index", range(3))
def test_total_light_spectrum_reproduces_the_image_magnitudes(index):
    row = make_galaxy_row(0, "test", index, noise=False, spectrum_aperture="total")
    assert row["fibre_flux_fraction"] == 1.0
    for band in ("g", "r"):  # the z band reaches past the spectrum's red end
        assert ab_magnitude(row["spectrum_wavelength"], row["spectrum"], band) == pytest.approx(row[f"mag_{band}"],
                                                                                                 abs=0.01)


@pytest.mark.parametrize("index", range(3))
def test_fibre_spectrum_holds_the_fibre_share_of_the_light(index):
    row = make_galaxy_row(0, "test", index, noise=False)
    fibre_mag = row["mag_r"] - 2.5 * np.log10(row["fibre_flux_fraction"])
    assert ab_magnitude(row["spectrum_wavelength"], row["spectrum"], "r") == pytest.approx(fibre_mag, abs=0.01)
    total = make_galaxy_row(0, "test", index, noise=False, spectrum_aperture="total")
    assert np.all(row["spectrum"] < total["spectrum"])
    np.testing.assert_array_equal(row["image"], total["image"])  # the aperture changes the spectrum only


def test_fibre_fractions_follow_the_profiles_and_the_psf():
    import galsim

    # a point source: the Moffat PSF's own enclosed flux inside 0.75", 1 - (1 + (R/r_d)^2)^(1 - beta)
    fwhm, beta = synthetic.PSF_FWHM["r"], synthetic.PSF_MOFFAT_BETA
    scale_radius = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    expected = 1 - (1 + (0.75 / scale_radius) ** 2) ** (1 - beta)
    assert aperture_flux_fraction(galsim.Gaussian(sigma=1e-3), 1e-3) == pytest.approx(expected, abs=1e-4)
    # bigger galaxies put less of their light into the fibre; the compact bulge more than its disk
    sizes = [aperture_flux_fraction(galsim.Exponential(half_light_radius=r), r) for r in (0.5, 1.0, 2.0, 4.0)]
    assert sizes == sorted(sizes, reverse=True)
    params = sample_galaxy_params(galaxy_rng(0, "train", 2))
    bulge, disk = fibre_fractions(params)
    assert 0 < disk < bulge < expected
    near, far = fibre_fractions(dataclasses.replace(params, redshift=0.1)), fibre_fractions(
        dataclasses.replace(params, redshift=0.4))
    assert far[1] > near[1]  # the same disk further away looks smaller


def test_spectrum_noise_matches_its_inverse_variance():
    noisy = make_galaxy_row(0, "test", 5)
    clean = make_galaxy_row(0, "test", 5, noise=False)
    sigma = 1 / np.sqrt(noisy["spectrum_ivar"].astype(np.float64))
    np.testing.assert_allclose(sigma, spectrum_noise_sigma(), rtol=1e-5)
    pulls = (noisy["spectrum"] - clean["spectrum"]) / sigma
    assert pulls.std() == pytest.approx(1.0, abs=0.06) and abs(pulls.mean()) < 0.1
    # a 4 Å bin averages five 0.8 Å DESI pixels: sigma falls by sqrt(5)
    assert spectrum_noise_sigma(bin_width=0.8)[800] == pytest.approx(np.sqrt(5) * sigma[800], rel=1e-5)
