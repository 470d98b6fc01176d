"""The spectra of the synthetic galaxies: what a DESI fibre on each galaxy's centre records.

A galaxy's spectrum is its model's: the bulge's CWW E and the disk's CWW Scd SEDs, redshifted and scaled
exactly as for the images (``synthetic.component_fluxes``: the same rest-frame r-band luminosity split by
the bulge fraction, the same distance modulus), so integrating the total-light spectrum through a band
gives the image's magnitude in that band. GalSim's SEDs hold photon flux densities (photons/s/cm²/nm,
with AB magnitudes from the bandpass zeropoints); each photon carries h c / lambda, which turns them into
DESI's unit, ``1e-17 erg/s/cm²/Å`` (``SPECTRUM_FLUX_UNIT``).

**Fibre.** DESI fibres are 1.5" across and sit on the target's centre. The spectrum weights the bulge
and disk spectra by the share of each component's light inside a circle of radius 0.75" on its centre
after the r-band PSF (Moffat, ``PSF_FWHM["r"]``, the same at every wavelength): compact bulges put more
of their light into the fibre than extended disks, so a fibre spectrum is redder than the galaxy's total
light, as in DESI. The shares come from the noise-free GalSim profiles in Fourier space (the profile's
transform times the transform of the disk-shaped aperture), with no pixel grid, and are stored as
``fibre_flux_fraction``: the share of the galaxy's r-band flux inside the fibre.

**Grid.** Observed-frame wavelengths from 3600 to 9824 Å, DESI's range, binned to 4 Å:
``SPECTRUM_WAVELENGTHS`` (1,557 samples) instead of DESI's 0.8 Å pixels (7,781). The CWW templates are
tabulated every 40-100 Å, so a finer grid would hold only interpolation between their points, at five
times the size and generation time. Each sample is the SED's value at the bin centre.

**Noise.** Sky-limited Gaussian noise, the same for every galaxy: per 0.8 Å DESI pixel a standard
deviation of ``SPECTRUM_NOISE_NODES`` (piecewise linear in wavelength; 0.5e-17 erg/s/cm²/Å across the
middle of the range, rising to 1.5e-17 at the blue end, where throughput drops, and to 1.0e-17 at the
red end, where the sky is bright), roughly what DESI's bright-time survey reaches on the sky. A 4 Å bin
averages five such pixels, so its standard deviation is ``1/sqrt(5)`` of that. ``spectrum_ivar`` is
``1 / sigma²`` of each bin (no bin is masked). There are no sky lines, emission lines or flux
calibration errors.
"""

from __future__ import annotations

import functools

import numpy as np

from .galaxy_population import GalaxyParams, arcsec_per_kpc

SPECTRUM_FLUX_UNIT = "1e-17 erg/s/cm^2/Angstrom"
SPECTRUM_WAVELENGTH_RANGE = (3600.0, 9824.0)  # Angstrom, observed frame (DESI's b, r and z arms together)
DESI_PIXEL = 0.8  # Angstrom
SPECTRUM_BIN = 4.0  # Angstrom: five DESI pixels per sample
SPECTRUM_WAVELENGTHS = np.linspace(
    *SPECTRUM_WAVELENGTH_RANGE, int(round(np.diff(SPECTRUM_WAVELENGTH_RANGE)[0] / SPECTRUM_BIN)) + 1
)
FIBRE_DIAMETER = 1.5  # arcsec
FIBRE_PSF_BAND = "r"
#: (wavelength in Angstrom, noise standard deviation per 0.8 Angstrom pixel in 1e-17 erg/s/cm^2/Angstrom).
SPECTRUM_NOISE_NODES = ((3600.0, 1.5), (4200.0, 0.6), (5000.0, 0.5), (7500.0, 0.5), (9824.0, 1.0))
SPECTRUM_APERTURES = ("fibre", "total")

# h c in erg nm: a photon of wavelength lambda (nm) carries H_C / lambda erg.
H_C_ERG_NM = 6.62607015e-27 * 2.99792458e17


def spectrum_noise_sigma(wavelengths: np.ndarray = SPECTRUM_WAVELENGTHS, bin_width: float = SPECTRUM_BIN) -> np.ndarray:
    """Noise standard deviation (1e-17 erg/s/cm²/Å) of samples that each average ``bin_width`` Å of DESI
    pixels, at ``wavelengths`` (Å)."""
    nodes, sigmas = zip(*SPECTRUM_NOISE_NODES)
    return np.interp(wavelengths, nodes, sigmas) * np.sqrt(DESI_PIXEL / bin_width)


def photons_to_flambda(photons_per_nm: np.ndarray, wavelength_nm: np.ndarray) -> np.ndarray:
    """Photon flux density (photons/s/cm²/nm, GalSim's SED unit) -> f_lambda in 1e-17 erg/s/cm²/Å."""
    return photons_per_nm * (H_C_ERG_NM / wavelength_nm) / 10.0 * 1e17


@functools.lru_cache(maxsize=1)
def _fibre_psf():
    import galsim

    from .synthetic import PSF_FWHM, PSF_MOFFAT_BETA

    return galsim.Moffat(beta=PSF_MOFFAT_BETA, fwhm=PSF_FWHM[FIBRE_PSF_BAND])


def aperture_flux_fraction(profile, half_light_radius: float, radius: float = FIBRE_DIAMETER / 2) -> float:
    """Share of a unit-flux GalSim ``profile``'s light (of about ``half_light_radius``, arcsec) inside a
    circle of ``radius`` (arcsec) on its centre, after the fibre PSF.

    The aperture flux is (1/(2π)²) ∫ Ĩ(k) Ã(k) d²k, with Ĩ the transform of the PSF-convolved profile and
    Ã(k) = 2π R J1(k R) / k that of the disk-shaped aperture. The k grid is fine enough for a period of
    10 half-light radii (at least 16"), so that neighbouring copies add no light, and reaches 1.5 times the
    PSF's ``maxk``.
    """
    import galsim
    from scipy.special import j1

    psf = _fibre_psf()
    size = max(16.0, 10.0 * half_light_radius)
    step = 2.0 * np.pi / size
    count = int(np.ceil(3.0 * psf.maxk / step))
    count += count % 2
    transform = galsim.Convolve(profile, psf).drawKImage(nx=count, ny=count, scale=step).array.real
    axis = (np.arange(count) - count // 2) * step
    k = np.hypot(*np.meshgrid(axis, axis))
    safe = np.where(k > 0, k, 1.0)
    aperture = np.where(k > 0, 2.0 * np.pi * radius * j1(k * radius) / safe, np.pi * radius**2)
    return float(np.clip((transform * aperture).sum() * step**2 / (2.0 * np.pi) ** 2, 0.0, 1.0))


def fibre_fractions(params: GalaxyParams) -> tuple[float, float]:
    """(bulge, disk): the share of each component's light that falls into a DESI fibre on the galaxy's
    centre (``aperture_flux_fraction`` of the sheared, unit-flux component)."""
    import galsim

    scale = arcsec_per_kpc(params.redshift)
    shear = galsim.Shear(q=params.axis_ratio, beta=params.position_angle * galsim.degrees)
    fractions = []
    for profile_class, radius_kpc in ((galsim.DeVaucouleurs, params.bulge_radius_kpc),
                                      (galsim.Exponential, params.disk_radius_kpc)):
        radius = radius_kpc * scale
        fractions.append(aperture_flux_fraction(profile_class(half_light_radius=radius).shear(shear), radius))
    return fractions[0], fractions[1]


def component_spectra(params: GalaxyParams, wavelengths: np.ndarray = SPECTRUM_WAVELENGTHS) -> np.ndarray:
    """(2, L): the observed total-light spectra of the bulge and of the disk at ``wavelengths`` (Å), in
    1e-17 erg/s/cm²/Å, normalised exactly as ``synthetic.component_fluxes`` normalises the images."""
    from .galaxy_population import distance_modulus
    from .synthetic import _rest_frame_seds

    wavelength_nm = np.asarray(wavelengths, dtype=np.float64) / 10.0
    dimming = 10 ** (-0.4 * (params.abs_mag_r + distance_modulus(params.redshift)))
    spectra = []
    for sed, share in zip(_rest_frame_seds(), (params.bulge_fraction, 1.0 - params.bulge_fraction)):
        photons = sed.atRedshift(params.redshift)(wavelength_nm) * share * dimming
        spectra.append(photons_to_flambda(photons, wavelength_nm))
    return np.stack(spectra)


def galaxy_spectrum(
    params: GalaxyParams, rng: np.random.Generator | None = None, aperture: str = "fibre",
) -> dict[str, np.ndarray | float]:
    """The spectrum a galaxy's model implies, on ``SPECTRUM_WAVELENGTHS``.

    Args:
        params: the galaxy.
        rng: source of the noise; ``None`` gives the noise-free spectrum (with the same ``spectrum_ivar``).
        aperture: ``"fibre"`` (what a DESI fibre on its centre sees) or ``"total"`` (all of its light).

    Returns:
        ``spectrum``, ``spectrum_ivar`` and ``spectrum_wavelength`` (float32 arrays; flux in
        1e-17 erg/s/cm²/Å, ivar its inverse square, wavelengths in Å) and ``fibre_flux_fraction`` (the
        share of the r-band flux inside the fibre; 1 for ``aperture="total"``).
    """
    from .synthetic import component_fluxes

    if aperture not in SPECTRUM_APERTURES:
        raise ValueError(f"aperture={aperture!r} is not valid; expected one of {list(SPECTRUM_APERTURES)}")
    bulge_share, disk_share = fibre_fractions(params) if aperture == "fibre" else (1.0, 1.0)
    wavelengths = SPECTRUM_WAVELENGTHS
    bulge, disk = component_spectra(params, wavelengths)
    flux = bulge_share * bulge + disk_share * disk
    sigma = spectrum_noise_sigma(wavelengths, SPECTRUM_BIN)
    if rng is not None:
        flux = flux + rng.normal(0.0, 1.0, size=flux.shape) * sigma
    bulge_r, disk_r = component_fluxes(params)["r"]
    total_r = bulge_r + disk_r
    return {
        "spectrum": flux.astype(np.float32),
        "spectrum_ivar": (1.0 / sigma**2).astype(np.float32),
        "spectrum_wavelength": wavelengths.astype(np.float32),
        "fibre_flux_fraction": float((bulge_share * bulge_r + disk_share * disk_r) / total_r) if total_r > 0 else 0.0,
    }


__all__ = [
    "FIBRE_DIAMETER",
    "SPECTRUM_APERTURES",
    "SPECTRUM_BIN",
    "SPECTRUM_FLUX_UNIT",
    "SPECTRUM_NOISE_NODES",
    "SPECTRUM_WAVELENGTHS",
    "aperture_flux_fraction",
    "component_spectra",
    "fibre_fractions",
    "galaxy_spectrum",
    "photons_to_flambda",
    "spectrum_noise_sigma",
]
