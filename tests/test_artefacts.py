"""Artefact injection: each kind damages the stamp where it should, nowhere else, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from astropt_hf.data.artefacts import (
    ARTEFACT_KINDS,
    bad_sky,
    blend,
    cosmic_rays,
    dead_column,
    hot_column,
    inject_artefact,
    satellite_trail,
    saturated_star,
    sky_noise,
)

NOISE = np.array([0.005, 0.007, 0.017])  # the synthetic set's grz sky noise, nanomaggies
SIZE = 32


def _stamp(seed: int = 0) -> np.ndarray:
    """A round Gaussian 'galaxy' on white sky noise, float32 (3, 32, 32), in nanomaggies."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    galaxy = 0.5 * np.exp(-((rows - 15.5) ** 2 + (cols - 15.5) ** 2) / (2 * 3.0**2))
    image = galaxy[None] * np.array([0.5, 1.0, 1.5])[:, None, None]
    return (image + rng.normal(0.0, NOISE[:, None, None], size=(3, SIZE, SIZE))).astype(np.float32)


def _companion() -> np.ndarray:
    """A compact noiseless companion: non-zero only in a 5x5 box at the centre."""
    companion = np.zeros((3, SIZE, SIZE))
    companion[:, 14:19, 14:19] = 1.0
    return companion


def test_sky_noise_recovers_the_noise_under_a_galaxy():
    estimate = np.mean([sky_noise(_stamp(seed)) for seed in range(8)], axis=0)
    np.testing.assert_allclose(estimate, NOISE, rtol=0.1)


@pytest.mark.parametrize("kind", sorted(ARTEFACT_KINDS))
def test_every_kind_keeps_shape_dtype_and_input_and_is_deterministic(kind):
    image = _stamp()
    before = image.copy()
    options = {"companion": _companion()} if kind == "blend" else {}
    first = inject_artefact(image, kind, np.random.default_rng(3), **options)
    second = inject_artefact(image, kind, np.random.default_rng(3), **options)
    other = inject_artefact(image, kind, np.random.default_rng(4), **options)
    assert first.shape == image.shape and first.dtype == image.dtype
    np.testing.assert_array_equal(image, before)  # the input is never modified
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, image)
    assert not np.array_equal(first, other)


def test_unknown_kind_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="satellite_trail"):
        inject_artefact(_stamp(), "meteor", np.random.default_rng(0))


def test_satellite_trail_is_a_straight_band_in_the_chosen_band_only():
    image = _stamp()
    damaged = satellite_trail(image, np.random.default_rng(0), amplitude=10.0, bands=[1], noise=NOISE)
    change = damaged - image
    assert np.all(change[[0, 2]] == 0)
    touched = change[1] > 0
    # a line crosses the stamp: many pixels, but far fewer than the whole stamp
    assert 2 * SIZE <= touched.sum() <= SIZE * SIZE // 2
    # the brightest added pixels reach the requested peak (10 sigma) within a pixel-sampling factor
    assert 0.7 * 10 * NOISE[1] <= change[1].max() <= 10 * NOISE[1] * 1.0001
    # every touched pixel lies within 3 profile sigmas (+ rounding) of one straight line: fit it
    rows, cols = np.nonzero(change[1] > 0.5 * change[1].max())
    points = np.stack([rows, cols], axis=1).astype(float)
    centred = points - points.mean(axis=0)
    spread = np.linalg.svd(centred, compute_uv=False)
    assert spread[1] / spread[0] < 0.25


def test_cosmic_rays_touch_a_few_pixels_each_in_one_band():
    image = _stamp()
    damaged = cosmic_rays(image, np.random.default_rng(5), num_hits=3, amplitude=50.0, max_length=3, noise=NOISE)
    change = damaged - image
    touched = np.argwhere(change != 0)
    assert 1 <= len(touched) <= 9
    for band, row, col in touched:
        # each hit adds 50 sigma of its band (overlapping hits add up): a whole, positive multiple
        hits = change[band, row, col] / (50.0 * NOISE[band])
        assert hits >= 0.999 and abs(hits - round(hits)) < 1e-3


def test_saturated_star_clips_its_core_and_bleeds_along_one_column():
    image = _stamp()
    damaged = saturated_star(image, np.random.default_rng(2), saturation=100.0, overexposure=5.0, radius=6.0, bleed_length=10,
                             noise=NOISE)  # fmt: skip
    change = damaged - image
    for band in range(3):
        level = 100.0 * NOISE[band]
        assert damaged[band].max() == pytest.approx(level, rel=1e-5)  # clipped, never above saturation
        per_column = np.isclose(damaged[band], level, rtol=1e-5).sum(axis=0)
        # the bleed column is saturated over >= 10 + 1 + 3 pixels (the star sits >= 3 px from an edge),
        # far longer than the clipped core (about 8 px across) in the neighbouring columns
        bleed = int(np.argmax(per_column))
        assert per_column[bleed] >= 14
        assert np.delete(per_column, bleed).max() <= per_column[bleed] - 4
    # off the bleed column, only pixels within the 6-pixel radius of the star changed
    off_column = np.delete(change, bleed, axis=2)
    rows, cols = np.nonzero(np.any(off_column != 0, axis=0))
    assert rows.max() - rows.min() <= 12 and cols.max() - cols.min() <= 12


@pytest.mark.parametrize("defect", [dead_column, hot_column])
def test_column_defects_change_one_column_of_one_band(defect):
    image = _stamp()
    damaged = defect(image, np.random.default_rng(1), noise=NOISE)
    band_changed, _, cols_changed = np.nonzero(damaged != image)
    assert len(set(band_changed)) == 1 and len(set(cols_changed)) == 1
    band, col = band_changed[0], cols_changed[0]
    assert np.count_nonzero(damaged[band, :, col] != image[band, :, col]) == SIZE
    if defect is dead_column:
        assert np.all(damaged[band, :, col] == damaged[band, 0, col])  # flat: no signal, no noise
        assert damaged[band, 0, col] < -2.9 * NOISE[band]
    else:
        excess = damaged[band, :, col] - image[band, :, col]
        np.testing.assert_allclose(excess, excess[0], rtol=1e-4)
        assert excess[0] > 4.9 * NOISE[band]


def test_blend_adds_the_shifted_companion_and_nothing_else():
    image = _stamp()
    damaged = blend(image, np.random.default_rng(0), companion=_companion(), offset=0.25, flux_ratio=1.0)
    change = damaged - image
    touched = np.argwhere(np.abs(change[0]) > 1e-6)
    assert len(touched) == 25  # the whole 5x5 box, moved inside the stamp
    rows, cols = touched[:, 0], touched[:, 1]
    shift = np.hypot(rows.mean() - 16, cols.mean() - 16)
    assert 0.25 * SIZE - 1 <= shift <= 0.25 * SIZE + 1
    np.testing.assert_allclose(change[:, rows, cols], 1.0, atol=1e-6)


def test_blend_refuses_a_companion_of_another_shape():
    with pytest.raises(ValueError, match="companion"):
        blend(_stamp(), np.random.default_rng(0), companion=np.zeros((3, 8, 8)))


def test_bad_sky_adds_a_plane_of_a_few_sigma_to_every_band():
    image = _stamp()
    damaged = bad_sky(image, np.random.default_rng(0), noise=NOISE)
    change = (damaged - image).astype(np.float64)
    for band in range(3):
        # a plane: zero second differences along both axes (up to float32 rounding)
        scale = NOISE[band]
        assert np.abs(np.diff(change[band], n=2, axis=0)).max() < 1e-3 * scale + 1e-6
        assert np.abs(np.diff(change[band], n=2, axis=1)).max() < 1e-3 * scale + 1e-6
        centre = change[band, 15:17, 15:17].mean() / scale
        assert 0.9 <= abs(centre) <= 3.1


def test_blend_without_a_companion_draws_a_synthetic_galaxy_at_the_offset():
    image = np.zeros((3, SIZE, SIZE), dtype=np.float32)
    damaged = blend(image, np.random.default_rng(2), offset=0.3, flux_ratio=1.0)
    light = damaged[1].astype(np.float64)
    peak = np.unravel_index(np.argmax(light), light.shape)
    distance = np.hypot(peak[0] - (SIZE - 1) / 2, peak[1] - (SIZE - 1) / 2)
    assert 0.3 * SIZE - 1.5 <= distance <= 0.3 * SIZE + 1.5
    # drawn in place, not a shifted stamp: a shifted stamp leaves the rows and columns it moved away
    # from exactly empty (about 10 of each here), while a drawn galaxy's wings reach every pixel
    assert np.all(damaged != 0)
