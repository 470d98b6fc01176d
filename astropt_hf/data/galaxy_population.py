"""The population model of the synthetic galaxies: who they are, before anyone observes them.

Redshifts follow p(z) ~ z^2 exp(-(z/z0)^1.5), the classic shape of a magnitude-limited survey.
Rest-frame r-band absolute magnitudes are a normal (brighter for bulge-dominated galaxies) cut at
the survey limit r < 19.5 (like DESI BGS / Galaxy Zoo DESI), so brighter galaxies reach higher
redshift (Malmquist bias).

Sizes follow the SDSS size-luminosity fits of Shen et al. (2003, MNRAS 343, 978; r band,
h = 0.7, half-light radii R50 in kpc): for early types log R50 = -0.4 a M + b (a = 0.65,
b = -5.06); for late types log R50 = -0.4 alpha M + (beta - alpha) log10(1 + 10^(-0.4 (M - M0)))
+ gamma (alpha = 0.21, beta = 0.53, gamma = -1.31, M0 = -20.52); both log-normal with
sigma_lnR = sigma2 + (sigma1 - sigma2) / (1 + 10^(-0.8 (M - M0))) (sigma1 = 0.48,
sigma2 = 0.25; the paper finds the early-type scatter relation similar to the late-type one, so
one is used for both). A galaxy's median radius is interpolated in log R between the two
relations by its bulge fraction B/T. At r < 19.5 this puts most galaxies at half-light radii of
1-3" on the sky, with nearby bright ones up to ~8".

Each galaxy is a de Vaucouleurs bulge plus an exponential disk sharing one axis ratio and position
angle; the bulge is more compact than the disk, and the two radii are scaled together so that the
sum's rest-frame r-band half-light radius is the drawn R50.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

# Redshift distribution p(z) ~ z^2 exp(-(z/z0)^1.5) and absolute magnitudes (see the docstring).
REDSHIFT_SCALE = 0.1
REDSHIFT_RANGE = (0.03, 0.8)
MAGNITUDE_LIMIT_R = 19.5
ABS_MAG_MEAN, ABS_MAG_SIGMA = -20.6, 1.0
# Size-luminosity fits of Shen et al. (2003) (r band, h = 0.7; see the module docstring).
SHEN_EARLY_A, SHEN_EARLY_B = 0.65, -5.06
SHEN_LATE_ALPHA, SHEN_LATE_BETA, SHEN_LATE_GAMMA, SHEN_M0 = 0.21, 0.53, -1.31, -20.52
SHEN_SIGMA1, SHEN_SIGMA2 = 0.48, 0.25
HUBBLE_CONSTANT, OMEGA_MATTER = 70.0, 0.3


@dataclasses.dataclass(frozen=True)
class GalaxyParams:
    """Intrinsic properties of one synthetic galaxy (what the renderer needs, nothing observed).

    Attributes:
        redshift: cosmological redshift.
        abs_mag_r: rest-frame absolute AB magnitude in the r band.
        bulge_fraction: bulge share of the rest-frame r-band luminosity (B/T), in [0, 1].
        disk_radius_kpc: half-light radius of the exponential disk, proper kpc.
        bulge_radius_kpc: half-light radius of the de Vaucouleurs bulge, proper kpc.
        axis_ratio: minor/major axis ratio b/a shared by bulge and disk, in (0, 1].
        position_angle: major-axis angle in degrees, [0, 180), counter-clockwise from the +x axis.
        offset_x, offset_y: sub-pixel shift of the centre from the stamp centre, pixels.
    """

    redshift: float
    abs_mag_r: float
    bulge_fraction: float
    disk_radius_kpc: float
    bulge_radius_kpc: float
    axis_ratio: float
    position_angle: float
    offset_x: float = 0.0
    offset_y: float = 0.0


def shen_half_light_radius_kpc(abs_mag_r: float, early_type: bool) -> tuple[float, float]:
    """Median half-light radius (proper kpc) and log-normal scatter sigma_lnR of SDSS galaxies of
    rest-frame r-band absolute magnitude ``abs_mag_r``, early or late type, from the Shen et al.
    (2003) fits written out in the module docstring."""
    if early_type:
        log_radius = -0.4 * SHEN_EARLY_A * abs_mag_r + SHEN_EARLY_B
    else:
        alpha, beta, gamma, m0 = SHEN_LATE_ALPHA, SHEN_LATE_BETA, SHEN_LATE_GAMMA, SHEN_M0
        log_radius = -0.4 * alpha * abs_mag_r + (beta - alpha) * np.log10(1 + 10 ** (-0.4 * (abs_mag_r - m0))) + gamma
    sigma1, sigma2 = SHEN_SIGMA1, SHEN_SIGMA2
    sigma_ln = sigma2 + (sigma1 - sigma2) / (1 + 10 ** (-0.8 * (abs_mag_r - SHEN_M0)))
    return float(10**log_radius), float(sigma_ln)


def sample_galaxy_params(rng: np.random.Generator) -> GalaxyParams:
    """Draw one galaxy from the population model (see the module docstring)."""
    from scipy.stats import norm

    # z = z0 * y^(2/3) with y ~ Gamma(2) gives p(z) ~ z^2 exp(-(z/z0)^1.5).
    redshift = float(np.clip(REDSHIFT_SCALE * rng.gamma(2.0) ** (2.0 / 3.0), *REDSHIFT_RANGE))
    bulge_fraction = float(rng.beta(0.8, 1.2))
    # Bulge-dominated galaxies are brighter on average; the survey limit truncates the faint end
    # (ignoring the K-correction, so the limit is approximate). Sampled by inverse CDF: no loop.
    mean = ABS_MAG_MEAN - 0.6 * bulge_fraction
    faintest = MAGNITUDE_LIMIT_R - distance_modulus(redshift)
    upper = norm.cdf((faintest - mean) / ABS_MAG_SIGMA)
    abs_mag_r = float(mean + ABS_MAG_SIGMA * norm.ppf(max(rng.uniform() * upper, 1e-300)))
    # Whole-galaxy half-light radius from Shen et al. (2003): the median is interpolated in log R
    # between their late- and early-type relations by B/T, with their log-normal scatter.
    late, sigma_ln = shen_half_light_radius_kpc(abs_mag_r, early_type=False)
    early, _ = shen_half_light_radius_kpc(abs_mag_r, early_type=True)
    median = late ** (1.0 - bulge_fraction) * early**bulge_fraction
    radius_kpc = median * float(np.exp(rng.normal(0.0, sigma_ln)))
    # Bulges are more compact than their disks; the two radii are scaled together so that the sum's
    # rest-frame r-band half-light radius is the drawn one.
    bulge_to_disk_radius = 0.3 + 0.5 * bulge_fraction
    unit = composite_half_light_radius(bulge_fraction, 1.0 - bulge_fraction, bulge_to_disk_radius, 1.0)
    disk_radius_kpc = radius_kpc / unit
    bulge_radius_kpc = disk_radius_kpc * bulge_to_disk_radius
    # Disks can be seen edge-on; bulge-dominated systems stay rounder.
    flattest = 0.15 + 0.45 * bulge_fraction
    axis_ratio = float(1.0 - (1.0 - flattest) * rng.uniform())
    position_angle = float(rng.uniform(0.0, 180.0))
    offset_x, offset_y = (float(v) for v in rng.uniform(-0.5, 0.5, size=2))
    return GalaxyParams(
        redshift=redshift,
        abs_mag_r=abs_mag_r,
        bulge_fraction=bulge_fraction,
        disk_radius_kpc=disk_radius_kpc,
        bulge_radius_kpc=bulge_radius_kpc,
        axis_ratio=axis_ratio,
        position_angle=position_angle,
        offset_x=offset_x,
        offset_y=offset_y,
    )


@functools.lru_cache(maxsize=1)
def _cosmology():
    from astropy.cosmology import FlatLambdaCDM

    return FlatLambdaCDM(H0=HUBBLE_CONSTANT, Om0=OMEGA_MATTER)


def distance_modulus(redshift: float) -> float:
    return float(_cosmology().distmod(redshift).value)


def arcsec_per_kpc(redshift: float) -> float:
    return float(_cosmology().arcsec_per_kpc_proper(redshift).value)


def composite_half_light_radius(
    bulge_flux: float, disk_flux: float, bulge_hlr: float, disk_hlr: float
) -> float:
    """Radius enclosing half the light of a de Vaucouleurs + exponential sum (same units as input)."""
    from scipy.optimize import brentq
    from scipy.special import gammainc, gammaincinv

    total = bulge_flux + disk_flux
    if disk_flux <= 0.0 or bulge_flux <= 0.0:
        return bulge_hlr if disk_flux <= 0.0 else disk_hlr
    b4, b1 = gammaincinv(8.0, 0.5), gammaincinv(2.0, 0.5)

    def excess(radius: float) -> float:
        bulge = bulge_flux * gammainc(8.0, b4 * (radius / bulge_hlr) ** 0.25)
        disk = disk_flux * gammainc(2.0, b1 * radius / disk_hlr)
        return (bulge + disk) / total - 0.5

    return float(brentq(excess, min(bulge_hlr, disk_hlr), max(bulge_hlr, disk_hlr), xtol=1e-6))
