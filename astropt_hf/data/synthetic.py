"""Synthetic DESI-like galaxies rendered with GalSim: the built-in, offline pretraining set.

Each galaxy is a de Vaucouleurs bulge (Sersic n=4) plus an exponential disk, sharing one axis
ratio and position angle. The bulge shines with an elliptical-galaxy spectrum (CWW E) and the
disk with a star-forming one (CWW Scd); both spectra ship with GalSim. The galaxy is placed at a
redshift in a flat LambdaCDM cosmology (H0=70, Om0=0.3), so its apparent magnitudes follow from
its rest-frame luminosity, the distance modulus and the redshifted spectra (K-corrections come
out of the integration through the bandpasses, not from a fit). It is convolved with a Moffat PSF
per band, drawn through the g, r, z bandpasses and given Gaussian sky noise. Who the galaxies are
(redshifts, luminosities, the Shen et al. 2003 size-luminosity relation, shapes) is the population
model of ``galaxy_population``.

Pixels are Legacy Surveys pixels (0.262") binned 2x2: ``PIXEL_SCALE`` = 0.524"/pixel, so a 32-pixel
stamp spans 16.8" and an r < 19.5 galaxy sits inside it with sky around it, as in survey cutouts
scaled to the galaxy, while the model still reads 32x32 pixels. GalSim integrates the PSF-convolved
profile over each binned pixel, which is what summing 2x2 native pixels gives; the PSF FWHM stays
about 2.4 binned pixels, still sampled.

Pixel units are **nanomaggies** (flux of an AB magnitude m is 10**(-0.4 (m - 22.5))), on a
sky-subtracted background, as in Legacy Surveys cutouts: an image summed over its pixels gives the
band's flux (minus what falls outside the stamp), and blank sky is zero-mean noise with the
per-pixel standard deviations in ``SKY_NOISE_NMGY``: twice the native-pixel ones of
``NATIVE_SKY_NOISE_NMGY`` (roughly DECaLS DR8 depths), since a binned pixel sums four independent
native pixels.

Colours depend on redshift and bulge fraction and sizes shrink on the sky with distance: linear
probes of an embedding have something to find. ``edge_flux_fraction`` measures how much of a
stamp's flux lies in its outer ring (how well the galaxies fit their stamps).

Every galaxy is generated from its own seed, ``SeedSequence([seed, split_code, index])``, so the
set is identical whatever the number of worker processes or the order of generation.

Each galaxy also has the spectrum its model implies, as a DESI fibre on its centre records it
(``synthetic_spectra``: the same SEDs, luminosity split and distance, observed-frame 3600-9824 Å binned
to 4 Å, in 1e-17 erg/s/cm²/Å with sky-limited noise): the columns ``SPECTRUM_COLUMNS``. Its noise is
drawn after the image's, from the same generator, so adding spectra changed no image.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import synthetic_spectra
from .galaxy_population import (
    GalaxyParams,
    arcsec_per_kpc,
    composite_half_light_radius,
    distance_modulus,
    sample_galaxy_params,
)

logger = logging.getLogger(__name__)

#: Bump when the generator's output changes, so stale caches are not reused.
GENERATOR_VERSION = 3

BANDS: tuple[str, ...] = ("g", "r", "z")
NATIVE_PIXEL_SCALE = 0.262  # arcsec / pixel, DESI Legacy Imaging Surveys
PIXEL_BINNING = 2  # native pixels per stamp pixel along each axis
PIXEL_SCALE = NATIVE_PIXEL_SCALE * PIXEL_BINNING  # arcsec / stamp pixel
#: Moffat (beta=3.5) PSF full width at half maximum per band, arcsec (typical DECaLS seeing).
PSF_FWHM = {"g": 1.35, "r": 1.25, "z": 1.15}
PSF_MOFFAT_BETA = 3.5
#: Sky noise standard deviation per native 0.262" pixel and band, nanomaggies.
NATIVE_SKY_NOISE_NMGY = {"g": 0.005, "r": 0.007, "z": 0.017}
#: Sky noise standard deviation per stamp pixel: a sum of PIXEL_BINNING**2 native pixels.
SKY_NOISE_NMGY = {band: sigma * PIXEL_BINNING for band, sigma in NATIVE_SKY_NOISE_NMGY.items()}
NANOMAGGY_ZEROPOINT = 22.5  # AB magnitude of 1 nanomaggy

BULGE_SED_FILE = "CWW_E_ext.sed"  # early type
DISK_SED_FILE = "CWW_Scd_ext.sed"  # star forming
BANDPASS_FILES = {"g": "LSST_g.dat", "r": "LSST_r.dat", "z": "LSST_z.dat"}  # GalSim ships no DECam curves

SPLITS = ("train", "validation", "test")
_SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}

#: Names of the per-galaxy truth columns, in the order they are stored.
TRUTH_COLUMNS: tuple[str, ...] = (
    "redshift",
    "mag_g",
    "mag_r",
    "mag_z",
    "g_r",
    "r_z",
    "bulge_fraction",
    "half_light_radius",
    "axis_ratio",
    "position_angle",
)

#: The spectrum columns, after the truth: flux and inverse variance (1e-17 erg/s/cm²/Å and its inverse
#: square), the observed wavelengths (Å, the same grid in every row) and the share of the galaxy's r-band
#: flux inside the fibre.
SPECTRUM_COLUMNS: tuple[str, ...] = ("spectrum", "spectrum_ivar", "spectrum_wavelength", "fibre_flux_fraction")

# Demo defaults: small enough that generation takes well under a minute on 2 CPU cores.
DEFAULT_IMAGE_SIZE = 32
DEFAULT_NUM_TRAIN = 3000
DEFAULT_NUM_VALIDATION = 256
DEFAULT_NUM_TEST = 512


def galaxy_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of one galaxy: independent of every other galaxy and of run order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODES[split], int(index)]))


@functools.lru_cache(maxsize=1)
def _bandpasses() -> dict:
    import galsim

    return {b: galsim.Bandpass(BANDPASS_FILES[b], wave_type="nm").withZeropoint("AB") for b in BANDS}


@functools.lru_cache(maxsize=1)
def _rest_frame_seds() -> tuple:
    """Bulge and disk SEDs, each scaled to absolute magnitude 0 in the rest-frame r band."""
    import galsim

    r_band = _bandpasses()["r"]
    seds = []
    for name in (BULGE_SED_FILE, DISK_SED_FILE):
        sed = galsim.SED(name, wave_type="Ang", flux_type="flambda")
        seds.append(sed.withMagnitude(0.0, r_band))
    return tuple(seds)


def component_fluxes(params: GalaxyParams) -> dict[str, tuple[float, float]]:
    """Observed (bulge, disk) fluxes in nanomaggies per band.

    GalSim's ``SED.atRedshift`` keeps the photon spectrum's shape, which in f_nu terms is
    (1+z) L_nu(nu (1+z)): exactly the observed spectrum up to the inverse-square dimming, so the
    apparent magnitude is the redshifted SED's magnitude plus the distance modulus.
    """
    bulge_sed, disk_sed = _rest_frame_seds()
    dist_mod = distance_modulus(params.redshift)
    # Luminosity split in the rest-frame r band; a share of zero contributes no flux.
    shares = (params.bulge_fraction, 1.0 - params.bulge_fraction)
    fluxes: dict[str, list[float]] = {b: [] for b in BANDS}
    for sed, share in zip((bulge_sed, disk_sed), shares):
        shifted = sed.atRedshift(params.redshift)
        for band, bandpass in _bandpasses().items():
            if share <= 0.0:
                fluxes[band].append(0.0)
                continue
            mag = shifted.calculateMagnitude(bandpass) + params.abs_mag_r - 2.5 * np.log10(share) + dist_mod
            fluxes[band].append(10 ** (-0.4 * (mag - NANOMAGGY_ZEROPOINT)))
    return {band: (pair[0], pair[1]) for band, pair in fluxes.items()}


def render_galaxy(
    params: GalaxyParams, image_size: int = DEFAULT_IMAGE_SIZE, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """Draw one galaxy in g, r, z and compute its truth.

    Args:
        params: the galaxy's intrinsic properties.
        image_size: side of the square stamp in pixels.
        rng: source of the sky noise; ``None`` draws the noiseless model.

    Returns:
        ``(image, truth)``: image is float32 (3, image_size, image_size) in nanomaggies; truth maps
        each name in ``TRUTH_COLUMNS`` to a float. Magnitudes are the model's total AB magnitudes;
        ``half_light_radius`` is the circularised (sqrt(a*b)) half-light radius of the PSF-free
        model in the r band, arcsec; ``position_angle`` is in degrees.
    """
    import galsim

    fluxes = component_fluxes(params)
    scale = arcsec_per_kpc(params.redshift)
    bulge_hlr, disk_hlr = params.bulge_radius_kpc * scale, params.disk_radius_kpc * scale
    gsparams = galsim.GSParams(folding_threshold=1e-2)  # 2x faster for big galaxies, ~1e-6 change
    bulge = galsim.DeVaucouleurs(half_light_radius=bulge_hlr, gsparams=gsparams)
    disk = galsim.Exponential(half_light_radius=disk_hlr, gsparams=gsparams)
    shear = galsim.Shear(q=params.axis_ratio, beta=params.position_angle * galsim.degrees)

    image = np.empty((len(BANDS), image_size, image_size), dtype=np.float32)
    for i, band in enumerate(BANDS):
        bulge_flux, disk_flux = fluxes[band]
        galaxy = (bulge.withFlux(bulge_flux) + disk.withFlux(disk_flux)).shear(shear)
        psf = galsim.Moffat(beta=PSF_MOFFAT_BETA, fwhm=PSF_FWHM[band], gsparams=gsparams)
        drawn = galsim.Convolve(galaxy, psf).drawImage(
            nx=image_size, ny=image_size, scale=PIXEL_SCALE, offset=(params.offset_x, params.offset_y)
        )
        image[i] = drawn.array
        if rng is not None:
            image[i] += rng.normal(0.0, SKY_NOISE_NMGY[band], size=(image_size, image_size)).astype(
                np.float32
            )

    # Colours are differences of the stored float32 magnitudes, so g_r == mag_g - mag_r exactly.
    mags = {b: np.float32(NANOMAGGY_ZEROPOINT - 2.5 * np.log10(sum(fluxes[b]))) for b in BANDS}
    truth = {
        "redshift": params.redshift,
        "mag_g": float(mags["g"]),
        "mag_r": float(mags["r"]),
        "mag_z": float(mags["z"]),
        "g_r": float(mags["g"] - mags["r"]),
        "r_z": float(mags["r"] - mags["z"]),
        "bulge_fraction": params.bulge_fraction,
        "half_light_radius": composite_half_light_radius(*fluxes["r"], bulge_hlr, disk_hlr),
        "axis_ratio": params.axis_ratio,
        "position_angle": params.position_angle,
    }
    return image, truth


def make_galaxy_row(
    seed: int, split: str, index: int, image_size: int = DEFAULT_IMAGE_SIZE, noise: bool = True,
    spectrum_aperture: str = "fibre",
) -> dict:
    """One dataset row (``image``, ``id``, the truth and the spectrum columns) for galaxy ``index`` of
    ``split``.

    ``noise=False`` gives the same galaxy without sky noise in its image and spectrum (the model the
    dataset's row is drawn from), for measurements that noise would blur. ``spectrum_aperture="total"``
    gives the spectrum of all of the galaxy's light instead of what the fibre sees (the set uses "fibre").
    """
    rng = galaxy_rng(seed, split, index)
    params = sample_galaxy_params(rng)
    image, truth = render_galaxy(params, image_size, rng if noise else None)
    spectrum = synthetic_spectra.galaxy_spectrum(params, rng if noise else None, spectrum_aperture)
    return {"image": image, "id": f"synthetic-s{seed}-{split}-{index:07d}", **truth, **spectrum}


def edge_flux_fraction(images, ring: int = 3) -> np.ndarray:
    """Share of each image's flux that lies in the outer ``ring`` pixels of its stamp.

    Args:
        images: (N, C, H, W), (C, H, W) or (H, W) fluxes on a zero-mean sky (all bands are summed).
            Noise-free renders (``make_galaxy_row(..., noise=False)``) give the exact share.
        ring: width of the outer ring in pixels.

    Returns:
        (N,) fractions (a 0-d array for one image). A galaxy that fits its stamp with sky around it
        has a few per cent at most; one cut off by the stamp edge has much more.
    """
    array = np.asarray(images, dtype=np.float64)
    if array.ndim < 2 or min(array.shape[-2:]) <= 2 * ring or ring < 1:
        raise ValueError(f"edge_flux_fraction: need ring >= 1 and images wider than 2 * ring; got {array.shape}")
    single = array.ndim <= 3
    array = array.reshape((1 if single else array.shape[0], -1, *array.shape[-2:]))
    total = array.sum(axis=(1, 2, 3))
    inner = array[..., ring:-ring, ring:-ring].sum(axis=(1, 2, 3))
    fractions = (total - inner) / total
    return fractions[0] if single else fractions


def synthetic_features(image_size: int):
    """The ``datasets.Features`` of the synthetic set."""
    import datasets

    features = {
        "image": datasets.Array3D(shape=(len(BANDS), image_size, image_size), dtype="float32"),
        "id": datasets.Value("string"),
    }
    features.update({name: datasets.Value("float32") for name in TRUTH_COLUMNS})
    samples = len(synthetic_spectra.SPECTRUM_WAVELENGTHS)
    for name in SPECTRUM_COLUMNS[:3]:
        features[name] = datasets.Sequence(datasets.Value("float32"), length=samples)
    features["fibre_flux_fraction"] = datasets.Value("float32")
    return datasets.Features(features)


def _generate_rows(tasks: list[tuple[int, str, int, int, int]]) -> Iterator[dict]:
    """Yield rows for chunks ``(seed, split, start, stop, image_size)``; datasets shards the list."""
    for seed, split, start, stop, image_size in tasks:
        for index in range(start, stop):
            yield make_galaxy_row(seed, split, index, image_size)


def synthetic_cache_name(
    num_train: int, num_validation: int, num_test: int, image_size: int, seed: int
) -> str:
    """Folder name that identifies a synthetic set by everything that changes its content."""
    return (
        f"galsim-v{GENERATOR_VERSION}-{image_size}px-train{num_train}-val{num_validation}"
        f"-test{num_test}-seed{seed}"
    )


def default_cache_root() -> Path:
    """``$ASTROPT_HF_CACHE/synthetic`` if set, else ``~/.cache/astropt_hf/synthetic``."""
    root = os.environ.get("ASTROPT_HF_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "astropt_hf"
    return base / "synthetic"


def load_synthetic_galaxies(
    num_train: int = DEFAULT_NUM_TRAIN,
    num_validation: int = DEFAULT_NUM_VALIDATION,
    num_test: int = DEFAULT_NUM_TEST,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
):
    """Load the synthetic galaxy set, generating and caching it on first use.

    Args:
        num_train, num_validation, num_test: galaxies per split.
        image_size: stamp side in pixels (``PIXEL_SCALE`` = 0.524"/pixel).
        seed: master seed; galaxy i of a split is the same for any ``num_*`` and ``num_proc``.
        cache_dir: folder that holds generated sets (one subfolder per parameter set); default
            ``$ASTROPT_HF_CACHE/synthetic`` or ``~/.cache/astropt_hf/synthetic``.
        num_proc: generation processes; ``None`` uses up to 2 cores per 1000 galaxies, at most all.

    Returns:
        ``datasets.DatasetDict`` with ``train``, ``validation`` and ``test`` splits; columns
        ``image`` (float32 Array3D (3, H, W), nanomaggies, bands g, r, z), ``id``, ``TRUTH_COLUMNS`` and
        ``SPECTRUM_COLUMNS`` (``spectrum``, ``spectrum_ivar``, ``spectrum_wavelength``: float32 sequences
        on the 4 Å grid of ``synthetic_spectra.SPECTRUM_WAVELENGTHS``; ``fibre_flux_fraction``).

    The set is written to a temporary folder beside its final place and renamed into place when
    complete, so an interrupted generation never leaves a half set. A lock file beside it makes
    processes that ask for the same set at once (e.g. all ranks of a distributed run) wait for one
    generation instead of each generating it.
    """
    import datasets

    for name, value in (("num_train", num_train), ("num_validation", num_validation), ("num_test", num_test)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if int(image_size) < 4:
        raise ValueError(f"image_size must be >= 4 pixels, got {image_size}")

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    target = root / synthetic_cache_name(num_train, num_validation, num_test, image_size, seed)
    if not (target / "dataset_dict.json").is_file():
        from filelock import FileLock

        target.parent.mkdir(parents=True, exist_ok=True)
        # One process generates while the others (e.g. the other ranks of a distributed run) wait;
        # the OS releases the lock if its holder dies.
        with FileLock(str(target.parent / f".{target.name}.lock")):
            if not (target / "dataset_dict.json").is_file():
                with _dataset_progress_bars_only_in_a_terminal():
                    _generate_to(
                        target,
                        {"train": num_train, "validation": num_validation, "test": num_test},
                        image_size,
                        seed,
                        num_proc,
                    )
    return datasets.load_from_disk(str(target))


@contextmanager
def _dataset_progress_bars_only_in_a_terminal():
    """Turn off datasets' progress bars for the block when stderr is not a terminal.

    In a log file a bar is not redrawn in place: every refresh of the per-split "Generating ... split"
    and "Saving the dataset" bars becomes a line of its own, hundreds for the default set. The start
    and end of the generation are logged (INFO) either way. An explicit
    ``HF_DATASETS_DISABLE_PROGRESS_BARS`` setting is left to win.
    """
    import datasets

    in_terminal = sys.stderr is not None and sys.stderr.isatty()
    user_choice = datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is not None
    if in_terminal or user_choice or datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def _dataset_info(sizes: dict[str, int], image_size: int, seed: int) -> dict:
    """What the set holds and how it was made, for synthetic_info.json."""
    wavelengths = synthetic_spectra.SPECTRUM_WAVELENGTHS
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "split_sizes": sizes,
        "bands": list(BANDS),
        "pixel_scale_arcsec": PIXEL_SCALE,
        "pixel_binning": PIXEL_BINNING,
        "native_pixel_scale_arcsec": NATIVE_PIXEL_SCALE,
        "pixel_unit": "nanomaggy",
        "sky_noise_nmgy": SKY_NOISE_NMGY,
        "psf_fwhm_arcsec": PSF_FWHM,
        "spectrum_wavelength_angstrom": {"first": float(wavelengths[0]), "last": float(wavelengths[-1]),
                                         "step": synthetic_spectra.SPECTRUM_BIN, "samples": len(wavelengths)},
        "spectrum_flux_unit": synthetic_spectra.SPECTRUM_FLUX_UNIT,
        "spectrum_noise_sigma_per_0.8A_pixel": [list(node) for node in synthetic_spectra.SPECTRUM_NOISE_NODES],
        "spectrum_aperture": f"fibre of {synthetic_spectra.FIBRE_DIAMETER} arcsec diameter on the galaxy's centre, "
        f"after the {synthetic_spectra.FIBRE_PSF_BAND}-band PSF",
    }


def _generate_to(
    target: Path, sizes: dict[str, int], image_size: int, seed: int, num_proc: int | None
) -> None:
    import datasets

    target.parent.mkdir(parents=True, exist_ok=True)
    total = sum(sizes.values())
    if num_proc is None:
        num_proc = max(1, min(os.cpu_count() or 1, 1 + total // 500))
    logger.info(
        "Generating %d synthetic galaxies (%d px) into %s with %d process(es)",
        total,
        image_size,
        target,
        num_proc,
    )
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        splits = {}
        for split, count in sizes.items():
            # Small enough chunks that every process gets work, large enough to amortise overhead.
            chunk = max(1, min(32, -(-count // (4 * num_proc))))
            tasks = [(seed, split, s, min(s + chunk, count), image_size) for s in range(0, count, chunk)]
            procs = max(1, min(num_proc, len(tasks)))
            if count == 0:
                splits[split] = datasets.Dataset.from_dict(
                    {name: [] for name in synthetic_features(image_size)},
                    features=synthetic_features(image_size),
                )
                continue
            splits[split] = datasets.Dataset.from_generator(
                _generate_rows,
                features=synthetic_features(image_size),
                gen_kwargs={"tasks": tasks},
                num_proc=procs if procs > 1 else None,
                cache_dir=str(work / "build"),
                split=datasets.NamedSplit(split),
                fingerprint=f"{target.name}-{split}",
            )
        dataset = datasets.DatasetDict(splits)
        # An empty split must still get one (empty) shard, or load_from_disk fails on it.
        samples = 3 * len(synthetic_spectra.SPECTRUM_WAVELENGTHS) + 1
        bytes_per_row = 4 * (len(BANDS) * image_size**2 + len(TRUTH_COLUMNS) + samples) + 32
        num_shards = {
            split: max(1, -(-count * bytes_per_row // 500_000_000)) for split, count in sizes.items()
        }
        dataset.save_to_disk(str(work / "data"), num_shards=num_shards)
        seconds = time.perf_counter() - started
        info = {**_dataset_info(sizes, image_size, seed), "generation_seconds": round(seconds, 2), "num_proc": num_proc}
        (work / "data" / "synthetic_info.json").write_text(json.dumps(info, indent=2))
        del dataset, splits  # release the memory maps of the build folder before deleting it
        try:
            os.rename(work / "data", target)
        except OSError:
            # Another process finished the same set first; theirs is complete, keep it.
            if not (target / "dataset_dict.json").is_file():
                raise
        logger.info(
            "Generated %d synthetic galaxies in %.1f s (%.1f ms each)",
            total,
            seconds,
            1000 * seconds / max(total, 1),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
