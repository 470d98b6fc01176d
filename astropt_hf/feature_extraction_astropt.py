"""Spectrum feature extractor for astroPT: flux + wavelength (+ inverse variance, + mask) -> `spectrum_values`,
`spectrum_wavelengths` and `spectrum_mask` (B, L), in the transformers convention for 1-D signals
(`SequenceFeatureExtractor`, as audio models have).

It owns the *domain* side of spectra: which pixels are good (finite flux, ivar > 0, mask == 0), optional
resampling onto a wavelength grid, a per-spectrum flux scale, and padding a batch to one length. The model
owns the patching (cutting into patches of `spectrum_patch_size`, zero padding, the wavelength position
input), so a converted upstream checkpoint given plain flux and wavelengths reproduces upstream's numbers.

This is one of the "remote code" files copied next to a checkpoint with `AstroPTProcessor`: it imports only
numpy and transformers.
"""

from __future__ import annotations

import numbers

import numpy as np
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature

NORMALISATIONS = ("median_abs", "none")
PADDINGS = ("longest", "max_length")


def _as_spectra(name: str, values, count: int | None = None) -> list[np.ndarray] | None:
    """One spectrum (a 1-D array or list of numbers), a list of them, or a (batch, samples) array -> a list of
    float64 1-D arrays. `count` repeats a single spectrum (e.g. one shared wavelength grid) that many times."""
    if values is None:
        return None
    if isinstance(values, (list, tuple)) and not all(isinstance(v, numbers.Number) for v in values):
        spectra = [np.asarray(v) for v in values]
    else:
        array = np.asarray(values)
        spectra = [array] if array.ndim == 1 else list(array) if array.ndim == 2 else []
    if not spectra or any(s.ndim != 1 or s.size == 0 for s in spectra):
        raise ValueError(f"{name} must be one non-empty 1-D spectrum, a list of them or a (batch, samples) array")
    try:
        spectra = [s.astype(np.float64) for s in spectra]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must hold numbers: {error}") from None
    return spectra * count if count is not None and len(spectra) == 1 else spectra


def _check_lengths(flux: list[np.ndarray], **others: list[np.ndarray] | None) -> None:
    for name, spectra in others.items():
        if spectra is None:
            continue
        if len(spectra) != len(flux):
            raise ValueError(f"{len(flux)} flux spectra but {len(spectra)} {name} arrays")
        for index, (f, other) in enumerate(zip(flux, spectra)):
            if len(other) != len(f):
                raise ValueError(f"spectrum {index}: {name} has {len(other)} samples but flux has {len(f)}")


def _check_wavelengths(name: str, wavelength: np.ndarray) -> None:
    if not np.all(np.isfinite(wavelength)) or np.any(wavelength <= 0):
        raise ValueError(f"{name}: wavelengths must be finite and positive (Angstrom)")
    if wavelength.size > 1 and not np.all(np.diff(wavelength) > 0):
        step = int(np.argmin(np.diff(wavelength)))
        raise ValueError(f"{name}: wavelengths must increase strictly; sample {step + 1} ({wavelength[step + 1]!r}) "
                         f"follows {wavelength[step]!r}")


def resample(flux: np.ndarray, good: np.ndarray, wavelength: np.ndarray, grid: np.ndarray):
    """Linear interpolation of `flux` onto `grid`: a grid point is good only inside the observed range and
    between two good samples (or on one), so a bad pixel never leaks into its neighbours as signal."""
    values = np.interp(grid, wavelength, np.where(good, flux, 0.0))
    weight = np.interp(grid, wavelength, good.astype(np.float64), left=np.nan, right=np.nan)
    return np.where(weight >= 1.0 - 1e-9, values, 0.0), weight >= 1.0 - 1e-9


class AstroPTSpectrumFeatureExtractor(SequenceFeatureExtractor):
    r"""Turns galaxy spectra into astroPT's spectrum inputs.

    Args:
        normalisation (`str`): `"median_abs"` (default: each spectrum divided by the median absolute flux of
            its good pixels, returned as `spectrum_scale`; robust to emission lines and outliers) or `"none"`
            (flux as given, as upstream astroPT trains).
        wavelength_grid (`list[float]`, *optional*): resample every spectrum onto this grid (Angstrom,
            increasing) by linear interpolation; default keep each spectrum's own samples.
        padding_value (`float`): flux of the samples that pad a batch to one length (they are masked).
        feature_size, sampling_rate: `SequenceFeatureExtractor` fields (one value per sample; a spectrum has no
            sampling rate, kept at 1).

    A call returns `spectrum_values` (flux with bad samples zeroed), `spectrum_wavelengths` (Angstrom, 0 where
    padded) and `spectrum_mask` (True for a good sample), each (B, L), and `spectrum_scale` (B,).
    """

    model_input_names = ["spectrum_values", "spectrum_wavelengths", "spectrum_mask"]

    def __init__(self, normalisation: str = "median_abs", wavelength_grid: list[float] | None = None,
                 padding_value: float = 0.0, feature_size: int = 1, sampling_rate: int = 1, **kwargs):
        kwargs.pop("return_attention_mask", None)
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value,
                         return_attention_mask=False, **kwargs)
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation={normalisation!r} is not valid; expected one of {list(NORMALISATIONS)}")
        self.normalisation = normalisation
        self.wavelength_grid = None if wavelength_grid is None else [float(w) for w in wavelength_grid]
        if self.wavelength_grid is not None:
            _check_wavelengths("wavelength_grid", np.asarray(self.wavelength_grid))

    def _good_pixels(self, index: int, flux, ivar, mask) -> np.ndarray:
        good = np.isfinite(flux)
        if ivar is not None:
            good &= np.isfinite(ivar) & (ivar > 0)
        if mask is not None:
            good &= mask == 0
        if not good.any():
            raise ValueError(f"spectrum {index}: every sample is masked (NaN flux, ivar <= 0 or mask != 0)")
        return good

    def _scale(self, flux: np.ndarray, good: np.ndarray, normalisation: str) -> float:
        if normalisation == "none":
            return 1.0
        scale = float(np.median(np.abs(flux[good])))
        if not (np.isfinite(scale) and scale > 0):  # mostly zero flux: fall back to the mean
            scale = float(np.mean(np.abs(flux[good])))
        return scale if np.isfinite(scale) and scale > 0 else 1.0

    def __call__(self, flux, wavelength=None, ivar=None, mask=None, wavelength_grid=None,
                 normalisation: str | None = None, padding: str = "longest", max_length: int | None = None,
                 return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """`flux` (and `wavelength`, `ivar`, `mask` alike): one 1-D spectrum, a list of them (lengths may
        differ) or a (batch, samples) array; one `wavelength` array serves every spectrum. `wavelength` may be
        omitted only with a `wavelength_grid` of the same length as every spectrum (already on the grid).
        `padding="max_length"` pads to `max_length` samples instead of the longest spectrum."""
        normalisation = normalisation or self.normalisation
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation={normalisation!r} is not valid; expected one of {list(NORMALISATIONS)}")
        if padding not in PADDINGS:
            raise ValueError(f"padding={padding!r} is not valid; expected one of {list(PADDINGS)}")
        grid = wavelength_grid if wavelength_grid is not None else self.wavelength_grid
        grid = None if grid is None else np.asarray(grid, dtype=np.float64)
        if grid is not None:
            _check_wavelengths("wavelength_grid", grid)
        spectra = _as_spectra("flux", flux)
        if wavelength is None and grid is None:
            raise ValueError("pass the wavelengths (Angstrom) of the flux samples, or a wavelength_grid they are on")
        wavelengths = _as_spectra("wavelength", wavelength, len(spectra)) if wavelength is not None else [grid] * len(spectra)
        ivars, masks = _as_spectra("ivar", ivar, None), _as_spectra("mask", mask, None)
        _check_lengths(spectra, wavelength=wavelengths, ivar=ivars, mask=masks)
        rows = []
        for index, (values, waves) in enumerate(zip(spectra, wavelengths)):
            _check_wavelengths(f"spectrum {index}", waves)
            good = self._good_pixels(index, values, None if ivars is None else ivars[index],
                                     None if masks is None else masks[index])
            if grid is not None and not (len(waves) == len(grid) and np.array_equal(waves, grid)):
                values, good = resample(values, good, waves, grid)
                waves = grid
                if not good.any():
                    raise ValueError(f"spectrum {index}: no good sample falls inside the wavelength grid")
            scale = self._scale(values, good, normalisation)
            rows.append((np.where(good, values / scale, 0.0), waves, good, scale))
        return self._pad(rows, padding, max_length, return_tensors)

    def _pad(self, rows, padding: str, max_length: int | None, return_tensors) -> BatchFeature:
        longest = max(len(values) for values, *_ in rows)
        if padding == "max_length":
            if max_length is None or max_length < longest:
                raise ValueError(f"padding='max_length' needs max_length >= the longest spectrum ({longest}); "
                                 f"got {max_length!r}")
            longest = max_length
        batch = len(rows)
        values = np.full((batch, longest), self.padding_value, dtype=np.float32)
        wavelengths = np.zeros((batch, longest), dtype=np.float32)
        good = np.zeros((batch, longest), dtype=bool)
        for row, (flux, waves, mask, _) in enumerate(rows):
            values[row, : len(flux)], wavelengths[row, : len(flux)], good[row, : len(flux)] = flux, waves, mask
        data = {
            "spectrum_values": values, "spectrum_wavelengths": wavelengths, "spectrum_mask": good,
            "spectrum_scale": np.asarray([scale for *_, scale in rows], dtype=np.float32),
        }
        return BatchFeature(data, tensor_type=return_tensors)


__all__ = ["AstroPTSpectrumFeatureExtractor"]
