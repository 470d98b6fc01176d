"""Imaging artefacts that real surveys have, injected into clean galaxy stamps.

Every function takes a (C, H, W) float image in flux units (the built-in synthetic galaxies are in
nanomaggies on a sky-subtracted background) and a `numpy.random.Generator`, and returns a damaged
copy with the same shape and dtype; the input is never modified. The same seed gives the same damage.

Amplitudes are in units of the image's own per-band sky noise, estimated from the pixels by
`sky_noise` (or passed as ``noise``), so the damage is as visible on a deep survey as on a shallow
one, and the same code serves as a robustness augmentation for any data in flux units. The defaults
are drawn from ranges that real artefacts span: faint enough that some are subtle, bright enough to
be seen.

Kinds (``ARTEFACT_KINDS``, name -> function):

* ``satellite_trail``: a straight line across the whole stamp with a Gaussian PSF-wide profile,
  in a random subset of bands (a satellite or aircraft crosses one exposure, i.e. one band or a few);
* ``cosmic_rays``: a few sharp hits, single pixels or short tracks, each in one band (cosmic rays
  hit one exposure and are not blurred by the PSF);
* ``saturated_star``: a bright Moffat star in every band whose core is clipped at the saturation
  level, with a vertical bleed column of saturated pixels (charge overflows along the readout
  direction);
* ``dead_column`` / ``hot_column``: one detector column in one band reading a constant low value
  (zero counts before sky subtraction) or an excess;
* ``blend``: a second galaxy added at an offset (a noiseless model image, rendered at the offset by
  default, so the blend does not also add a second noise field);
* ``bad_sky``: a wrong sky level, an offset plus a gradient plane, in every band.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "ARTEFACT_KINDS",
    "bad_sky",
    "blend",
    "cosmic_rays",
    "dead_column",
    "hot_column",
    "inject_artefact",
    "satellite_trail",
    "saturated_star",
    "sky_noise",
]

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
_MAD_TO_SIGMA = 1.4826


def sky_noise(image: np.ndarray) -> np.ndarray:
    """Per-band standard deviation of the pixel noise, estimated from the image itself: (C,) for a
    (C, H, W) image, (..., C) for a stack of them.

    Uses the median absolute second difference along rows, x[i-1] - 2 x[i] + x[i+1], scaled to a
    Gaussian sigma (its variance is 6 sigma^2 for white noise), over the fainter half of each band's
    pixels (ranked by a 5x5 box-smoothed image, so the choice hardly depends on the noise being
    measured). The second difference removes the sky offset and any gradient; keeping the faint half
    leaves out the galaxy's core, whose curvature would read as noise; the median ignores the few
    pixels an artefact or a star touches. A band whose differences are mostly zero (quantised or
    noiseless data) falls back to their root mean square.
    """
    from scipy.ndimage import uniform_filter

    array = np.asarray(image, dtype=np.float64)
    if array.ndim < 3 or array.shape[-1] < 3:
        raise ValueError(f"sky_noise needs (..., C, H, W) images at least 3 pixels wide; got shape {array.shape}")
    lead = array.shape[:-2]
    second = np.abs(array[..., :-2] - 2.0 * array[..., 1:-1] + array[..., 2:]).reshape(*lead, -1)
    smooth = uniform_filter(array, size=(1,) * len(lead) + (5, 5), mode="nearest")[..., 1:-1].reshape(*lead, -1)
    faint = smooth <= np.median(smooth, axis=-1, keepdims=True)
    sigma = _MAD_TO_SIGMA * np.nanmedian(np.where(faint, second, np.nan), axis=-1) / np.sqrt(6.0)
    rms = np.sqrt(np.mean(second**2, axis=-1) / 6.0)
    return np.where(sigma > 0, sigma, rms)


def _as_chw(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image; got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected a float image in flux units; got dtype {array.dtype}")
    return array


def _noise(image: np.ndarray, noise: float | Sequence[float] | None) -> np.ndarray:
    """(C,) noise level: the given one (a scalar applies to every band) or the image's own."""
    if noise is None:
        sigma = sky_noise(image)
    else:
        sigma = np.broadcast_to(np.asarray(noise, dtype=np.float64), (image.shape[0],)).copy()
    # a noiseless image still gets visible damage: one part in a thousand of its brightest pixel
    fallback = max(float(np.nanmax(np.abs(image))) * 1e-3, 1e-12)
    return np.where(sigma > 0, sigma, fallback)


def _psf_fwhm(fwhm: float | None) -> float:
    """The given PSF FWHM in pixels, or the built-in synthetic set's r-band one."""
    if fwhm is not None:
        return float(fwhm)
    from astropt_hf.data.synthetic import PIXEL_SCALE, PSF_FWHM

    return PSF_FWHM["r"] / PIXEL_SCALE


def _pick_bands(rng: np.random.Generator, num_bands: int, bands: Sequence[int] | None, at_most: int) -> np.ndarray:
    """The given bands, or a random non-empty subset of at most `at_most` of them."""
    if bands is not None:
        return np.asarray(list(bands), dtype=np.int64)
    count = int(rng.integers(1, min(at_most, num_bands) + 1))
    return np.sort(rng.choice(num_bands, size=count, replace=False))


def _value(rng: np.random.Generator, value: float | tuple[float, float]) -> float:
    """A fixed value, or one drawn uniformly from a (low, high) range."""
    if isinstance(value, tuple):
        return float(rng.uniform(*value))
    return float(value)


def satellite_trail(
    image: np.ndarray,
    rng: np.random.Generator,
    amplitude: float | tuple[float, float] = (5.0, 20.0),
    fwhm: float | None = None,
    bands: Sequence[int] | None = None,
    noise: float | Sequence[float] | None = None,
) -> np.ndarray:
    """A straight trail across the stamp: peak `amplitude` sky sigmas, Gaussian profile of `fwhm` pixels
    (default: the built-in synthetic set's r-band PSF).

    The line passes through a random point of the central half of the stamp at a random angle; the
    profile is cut at 3 sigma of its width, so pixels farther from the line are untouched.
    """
    out = _as_chw(image).copy()
    sigma = _noise(out, noise)
    _, height, width = out.shape
    peak = _value(rng, amplitude)
    centre = np.array([height, width]) * (0.25 + 0.5 * rng.uniform(size=2))
    angle = rng.uniform(0.0, np.pi)
    rows, cols = np.mgrid[0:height, 0:width]
    # perpendicular distance of each pixel centre from the line through `centre` along `angle`
    distance = np.abs((cols - centre[1]) * np.sin(angle) - (rows - centre[0]) * np.cos(angle))
    width_sigma = _psf_fwhm(fwhm) / _FWHM_PER_SIGMA
    profile = np.where(distance <= 3.0 * width_sigma, np.exp(-0.5 * (distance / width_sigma) ** 2), 0.0)
    for band in _pick_bands(rng, out.shape[0], bands, out.shape[0]):
        out[band] += (peak * sigma[band] * profile).astype(out.dtype)
    return out


def cosmic_rays(
    image: np.ndarray,
    rng: np.random.Generator,
    num_hits: int | tuple[int, int] = (1, 4),
    amplitude: float | tuple[float, float] = (20.0, 100.0),
    max_length: int = 4,
    noise: float | Sequence[float] | None = None,
) -> np.ndarray:
    """A few cosmic-ray hits, each in one band: a single pixel or a short straight track.

    Each hit deposits `amplitude` sky sigmas per pixel along a track of 1 to `max_length` pixels in one
    of the 8 directions, clipped at the stamp's edge. No PSF: the charge lands on the detector directly.
    """
    out = _as_chw(image).copy()
    sigma = _noise(out, noise)
    num_bands, height, width = out.shape
    count = int(rng.integers(num_hits[0], num_hits[1] + 1)) if isinstance(num_hits, tuple) else int(num_hits)
    directions = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for _ in range(count):
        band = int(rng.integers(num_bands))
        row, col = int(rng.integers(height)), int(rng.integers(width))
        dy, dx = directions[int(rng.integers(len(directions)))]
        length = int(rng.integers(1, max_length + 1))
        level = _value(rng, amplitude) * sigma[band]
        for step in range(length):
            r, c = row + step * dy, col + step * dx
            if 0 <= r < height and 0 <= c < width:
                out[band, r, c] += out.dtype.type(level)
    return out


def saturated_star(
    image: np.ndarray,
    rng: np.random.Generator,
    saturation: float = 300.0,
    overexposure: float | tuple[float, float] = (3.0, 30.0),
    fwhm: float | None = None,
    beta: float = 3.5,
    radius: float | None = None,
    bleed_length: int | tuple[int, int] | None = None,
    noise: float | Sequence[float] | None = None,
) -> np.ndarray:
    """A saturated star: a Moffat PSF (FWHM `fwhm` pixels, default: the built-in synthetic set's r band)
    peaking `overexposure` times above `saturation` (in sky sigmas), its core clipped at `saturation`,
    and a vertical bleed column of saturated pixels through it.

    The star sits at a random sub-pixel position away from the stamp's centre (a foreground star next
    to the galaxy). Its profile is cut at `radius` pixels (default: 3 FWHM) and the bleed column runs
    `bleed_length` pixels up and down from the star (default: from 2 pixels to a quarter of the
    stamp), so the rest of the stamp is untouched.
    """
    out = _as_chw(image).copy()
    sigma = _noise(out, noise)
    _, height, width = out.shape
    fwhm = _psf_fwhm(fwhm)
    radius = 3.0 * fwhm if radius is None else float(radius)
    # a random point at least a fifth of the stamp from the centre, inside the stamp
    angle = rng.uniform(0.0, 2.0 * np.pi)
    distance = rng.uniform(0.2, 0.4) * min(height, width)
    row = (height - 1) / 2.0 + distance * np.sin(angle)
    col = (width - 1) / 2.0 + distance * np.cos(angle)
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    rows, cols = np.mgrid[0:height, 0:width]
    r2 = (rows - row) ** 2 + (cols - col) ** 2
    profile = np.where(r2 <= radius**2, (1.0 + r2 / alpha**2) ** (-beta), 0.0)
    peak = _value(rng, overexposure) * saturation
    if bleed_length is None:
        bleed_length = (2, max(2, min(height, width) // 4))
    length = int(rng.integers(bleed_length[0], bleed_length[1] + 1)) if isinstance(bleed_length, tuple) else int(bleed_length)
    star_row, star_col = int(round(row)), int(np.clip(round(col), 0, width - 1))
    bleed = np.zeros((height, width), dtype=bool)
    bleed[max(0, star_row - length) : min(height, star_row + length + 1), star_col] = True
    for band in range(out.shape[0]):
        level = saturation * sigma[band]
        star = np.where(bleed, level, np.minimum(out[band] + peak * sigma[band] * profile, level))
        out[band] = np.where((profile > 0) | bleed, star, out[band])
    return out


def _column_defect(image, rng, value_sigma, bands, noise, additive: bool) -> np.ndarray:
    out = _as_chw(image).copy()
    sigma = _noise(out, noise)
    column = int(rng.integers(out.shape[2]))
    for band in _pick_bands(rng, out.shape[0], bands, 1):
        level = out.dtype.type(value_sigma * sigma[band])
        out[band, :, column] = out[band, :, column] + level if additive else level
    return out


def dead_column(
    image: np.ndarray,
    rng: np.random.Generator,
    level: float | tuple[float, float] = (-10.0, -3.0),
    bands: Sequence[int] | None = None,
    noise: float | Sequence[float] | None = None,
) -> np.ndarray:
    """One detector column in one band (or `bands`) reads a constant `level` sky sigmas, with no signal
    and no noise: a dead column reads zero counts, which after sky subtraction is below the sky."""
    return _column_defect(image, rng, _value(rng, level), bands, noise, additive=False)


def hot_column(
    image: np.ndarray,
    rng: np.random.Generator,
    excess: float | tuple[float, float] = (5.0, 30.0),
    bands: Sequence[int] | None = None,
    noise: float | Sequence[float] | None = None,
) -> np.ndarray:
    """One detector column in one band (or `bands`) reads `excess` sky sigmas too high (a hot column's
    dark current adds to whatever falls on it)."""
    return _column_defect(image, rng, _value(rng, excess), bands, noise, additive=True)


def blend(
    image: np.ndarray,
    rng: np.random.Generator,
    companion: np.ndarray | None = None,
    offset: float | tuple[float, float] = (0.15, 0.35),
    flux_ratio: float | tuple[float, float] = (0.5, 2.0),
) -> np.ndarray:
    """Add a second galaxy at a random offset in a random direction.

    Args:
        companion: a (C, H, W) stamp of the second galaxy, centred, ideally noiseless (a model image),
            since its noise would add to the stamp's. It is shifted by whole pixels; light shifted in
            from beyond its edge is zero, so pixels it does not cover stay untouched. ``None`` renders a
            noiseless synthetic grz galaxy directly at the offset (needs GalSim and a square 3-band image
            in nanomaggies, like the built-in set), so its light has no cut edge.
        offset: the distance as a fraction of the stamp's side (fixed or a (low, high) range).
        flux_ratio: the companion is scaled by this (fixed or a range).
    """
    out = _as_chw(image).copy()
    num_bands, height, width = out.shape
    angle = rng.uniform(0.0, 2.0 * np.pi)
    distance = _value(rng, offset) * min(height, width)
    dy, dx = distance * np.sin(angle), distance * np.cos(angle)
    if companion is None:
        shifted = _synthetic_companion(rng, num_bands, height, width, dy, dx)
    else:
        companion = np.asarray(companion, dtype=np.float64)
        if companion.shape != out.shape:
            raise ValueError(f"companion has shape {companion.shape}; expected the image's {out.shape}")
        dy, dx = int(round(dy)), int(round(dx))
        shifted = np.zeros_like(companion)
        src_rows, dst_rows = _shift_slices(height, dy)
        src_cols, dst_cols = _shift_slices(width, dx)
        shifted[:, dst_rows, dst_cols] = companion[:, src_rows, src_cols]
    out += (_value(rng, flux_ratio) * shifted).astype(out.dtype)
    return out


def _shift_slices(size: int, shift: int) -> tuple[slice, slice]:
    """(source, destination) slices that move a length-`size` axis by `shift` pixels."""
    if shift >= 0:
        return slice(0, size - shift), slice(shift, size)
    return slice(-shift, size), slice(0, size + shift)


def _synthetic_companion(rng: np.random.Generator, num_bands: int, height: int, width: int, dy: float, dx: float):
    """A noiseless synthetic galaxy drawn `dy` rows and `dx` columns away from the stamp's centre."""
    import dataclasses

    from astropt_hf.data.synthetic import BANDS, render_galaxy, sample_galaxy_params

    if num_bands != len(BANDS) or height != width:
        raise ValueError(
            f"blend without a companion renders a synthetic {''.join(BANDS)} galaxy, which needs a square "
            f"{len(BANDS)}-band image; got ({num_bands}, {height}, {width}): pass companion="
        )
    # GalSim's offset is (x, y) = (column, row) in pixels
    params = dataclasses.replace(sample_galaxy_params(rng), offset_x=float(dx), offset_y=float(dy))
    image, _ = render_galaxy(params, image_size=height, rng=None)
    return image


def bad_sky(
    image: np.ndarray,
    rng: np.random.Generator,
    offset: float | tuple[float, float] = (1.0, 3.0),
    gradient: float | tuple[float, float] = (1.0, 3.0),
    noise: float | Sequence[float] | None = None,
) -> np.ndarray:
    """A badly subtracted sky: in every band, a plane with an `offset` (sky sigmas, random sign) at the
    centre and a `gradient` (sky sigmas from the centre to the edge, random direction)."""
    out = _as_chw(image).copy()
    sigma = _noise(out, noise)
    num_bands, height, width = out.shape
    rows, cols = np.mgrid[0:height, 0:width]
    y = (rows - (height - 1) / 2.0) / (height / 2.0)
    x = (cols - (width - 1) / 2.0) / (width / 2.0)
    for band in range(num_bands):
        angle = rng.uniform(0.0, 2.0 * np.pi)
        level = rng.choice([-1.0, 1.0]) * _value(rng, offset)
        slope = _value(rng, gradient)
        plane = level + slope * (x * np.cos(angle) + y * np.sin(angle))
        out[band] += (plane * sigma[band]).astype(out.dtype)
    return out


#: name -> function(image, rng, **options) returning the damaged copy.
ARTEFACT_KINDS: dict[str, Callable[..., np.ndarray]] = {
    "satellite_trail": satellite_trail,
    "cosmic_rays": cosmic_rays,
    "saturated_star": saturated_star,
    "dead_column": dead_column,
    "hot_column": hot_column,
    "blend": blend,
    "bad_sky": bad_sky,
}


def inject_artefact(image: np.ndarray, kind: str, rng: np.random.Generator, **options) -> np.ndarray:
    """Damage `image` with the artefact `kind` (a key of `ARTEFACT_KINDS`); returns a new array."""
    if kind not in ARTEFACT_KINDS:
        raise ValueError(f"unknown artefact kind {kind!r}; expected one of {sorted(ARTEFACT_KINDS)}")
    return ARTEFACT_KINDS[kind](image, rng, **options)
