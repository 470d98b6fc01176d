"""The Multimodal Universe (MMU) layouts on the hub, decoded into what the collator consumes.

**Images** (e.g. ``MultimodalUniverse/legacysurvey``, HSC): an ``image`` struct per row with per-band
``band`` (names such as ``"DES-G"``), ``flux`` (each band (H, W); or one (C, H, W) array), ``ivar``,
``mask``, ``psf_fwhm`` and ``scale``. ``datasets`` hands it over either as a dict of per-band lists
(a ``Sequence`` of a struct) or as a list of per-band dicts (a ``List`` of a struct); both are read. In
MMU's image builders ``mask`` is True where a pixel is *clean* (none of the survey's bad-pixel bits set).

**Spectra** (e.g. ``MultimodalUniverse/desi``): a ``spectrum`` struct with ``flux``, ``ivar``,
``lambda`` (Angstrom) and ``mask`` (and ``lsf_sigma``, not used). In MMU's DESI builder ``mask`` is True
where a sample is *bad* (a DESI mask bit set, or ivar < 1e-6).

**Cross-matched** images + spectra (MMU's ``cross_match_datasets``): both structs side by side in one
row; an object without a counterpart has a null (or empty) ``spectrum``.

What reaches the loss: an image pixel that is masked, has ``ivar <= 0`` or is not finite is set to
``MASKED_PIXEL_VALUE`` (0, the image processor's default ``nan_fill_value``) as rows are read, so it
enters the patches as that constant, not as signal (``decode_mmu_image`` alone gives NaN there). It is
set here rather than left NaN for the processor because the processor warns for every image holding NaN,
and nearly every survey cutout has masked pixels. The image loss has no per-pixel mask, so such pixels are
not left out of it. A spectrum sample that is masked, has ``ivar <= 0`` or is not finite is marked bad in
``mask`` (True = bad, what ``AstroPTSpectrumFeatureExtractor`` reads), which zeroes it and leaves it out
of the spectrum loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .decoding import CorruptSampleError

IMAGE_KEYS = ("band", "flux", "ivar", "mask", "psf_fwhm", "scale")
SPECTRUM_KEYS = ("flux", "ivar", "lambda", "mask")
SPECTRUM_COLUMN_CANDIDATES = ("spectrum",)
MASKED_PIXEL_VALUE = 0.0


def is_mmu_image(value: Any) -> bool:
    """True for an MMU image struct: a dict with per-band ``flux``, or a list of such per-band dicts."""
    if isinstance(value, dict):
        return "flux" in value and "bytes" not in value
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(band, dict) and "flux" in band for band in value
    )


def is_mmu_spectrum(value: Any) -> bool:
    """True for an MMU spectrum struct (a dict with ``flux`` and ``lambda``)."""
    return isinstance(value, dict) and "flux" in value and "lambda" in value


def _band_columns(value: Any) -> dict[str, list]:
    """Per-band lists of every field, from either the dict-of-lists or the list-of-dicts form."""
    if isinstance(value, dict):
        flux = value["flux"]
        num_bands = len(flux)
        columns = {}
        for key in IMAGE_KEYS:
            field = value.get(key)
            if field is None:
                continue
            field = list(field) if not isinstance(field, (str, bytes)) and np.ndim(field) > 0 else [field] * num_bands
            columns[key] = field
        return columns
    return {key: [band.get(key) for band in value] for key in IMAGE_KEYS if any(key in band for band in value)}


def _band_name(name: Any) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def select_bands(available: Sequence[str], requested: Sequence[str] | None, source: Any = None) -> list[int]:
    """Indices of the `requested` bands among `available`, in the requested order (all if None).

    A requested name matches a stored one case-insensitively, whole (``"DES-G"``) or as the part after its
    last ``-`` (``"g"`` for ``"DES-G"``)."""
    if not requested:
        return list(range(len(available)))
    names = [_band_name(name).lower() for name in available]
    indices = []
    for band in requested:
        wanted = band.strip().lower()
        matches = [i for i, name in enumerate(names) if name == wanted or name.rsplit("-", 1)[-1] == wanted]
        if len(matches) != 1:
            problem = "is not among" if not matches else "matches more than one of"
            raise CorruptSampleError(source, f"band {band!r} {problem} the image's bands {list(available)}")
        indices.append(matches[0])
    return indices


def decode_mmu_image(value: Any, bands: Sequence[str] | None = None, source: Any = None,
                     masked_value: float = np.nan) -> np.ndarray:
    """An MMU image struct -> (C, H, W) float32 flux of the chosen `bands` (default all, in stored order),
    `masked_value` wherever a pixel is masked (``mask`` False), has ``ivar <= 0`` or is not finite.

    Raises ``CorruptSampleError`` for a struct without bands, bands of different shapes, or a band that is
    not there (``bands``)."""
    columns = _band_columns(value)
    if not columns.get("flux"):
        raise CorruptSampleError(source, "the image struct holds no bands")
    available = [_band_name(name) for name in columns.get("band") or range(len(columns["flux"]))]
    chosen = select_bands(available, bands, source)
    try:
        flux = np.stack([np.asarray(columns["flux"][i], dtype=np.float32) for i in chosen])
        bad = ~np.isfinite(flux)
        if "ivar" in columns:
            ivar = np.stack([np.asarray(columns["ivar"][i], dtype=np.float32) for i in chosen])
            bad |= ~(ivar > 0)
        if "mask" in columns:
            clean = np.stack([np.asarray(columns["mask"][i]).astype(bool) for i in chosen])
            bad |= ~clean
    except ValueError as err:  # ragged bands, or a mask / ivar of another shape
        raise CorruptSampleError(source, f"the image struct's bands do not line up ({err})") from err
    if flux.ndim != 3:
        raise CorruptSampleError(source, f"expected (H, W) per band, got flux of shape {flux.shape}")
    flux[bad] = masked_value
    return flux


def read_mmu_spectrum(value: Any, source: Any = None) -> dict[str, np.ndarray] | None:
    """An MMU spectrum struct -> ``{"flux", "ivar", "lambda", "mask"}`` numpy arrays (float32; ``mask`` bool,
    True = bad: DESI's mask, ``ivar <= 0`` or a non-finite flux), or None for a null or empty spectrum
    (a cross-matched object without one)."""
    if value is None or len(value.get("flux") if value.get("flux") is not None else ()) == 0:
        return None
    flux = np.asarray(value["flux"], dtype=np.float32)
    wavelength = np.asarray(value["lambda"], dtype=np.float32)
    ivar = np.asarray(value["ivar"], dtype=np.float32) if value.get("ivar") is not None else np.ones_like(flux)
    mask = np.asarray(value["mask"]).astype(bool) if value.get("mask") is not None else np.zeros(flux.shape, bool)
    if not flux.shape == wavelength.shape == ivar.shape == mask.shape or flux.ndim != 1:
        raise CorruptSampleError(
            source, f"spectrum fields differ in shape: flux {flux.shape}, lambda {wavelength.shape}, ivar "
            f"{ivar.shape}, mask {mask.shape}"
        )
    mask = mask | ~(ivar > 0) | ~np.isfinite(flux)
    return {"flux": flux, "ivar": ivar, "lambda": wavelength, "mask": mask}


class MMURowDecoder:
    """Decodes the MMU columns of dataset rows (picklable, for DataLoader workers).

    ``image_column`` becomes a (C, H, W) float32 array (``decode_mmu_image`` with ``bands``, bad pixels
    ``MASKED_PIXEL_VALUE``), or, for a row
    that cannot be decoded, the ``CorruptSampleError`` itself, which ``decode_image`` raises again so that
    the collator skips and counts the row. ``spectrum_column`` (if any) becomes ``read_mmu_spectrum``'s dict
    or None.
    """

    def __init__(self, image_column: str | None, spectrum_column: str | None, bands: Sequence[str] | None = None):
        self.image_column = image_column
        self.spectrum_column = spectrum_column
        self.bands = list(bands) if bands else None

    def example(self, row: dict) -> dict:
        row = dict(row)
        source = row.get("object_id")
        if self.image_column is not None:
            try:
                row[self.image_column] = decode_mmu_image(row[self.image_column], self.bands, source,
                                                          MASKED_PIXEL_VALUE)
            except CorruptSampleError as err:
                row[self.image_column] = err
        if self.spectrum_column is not None:
            try:
                row[self.spectrum_column] = read_mmu_spectrum(row[self.spectrum_column], source)
            except CorruptSampleError:
                row[self.spectrum_column] = None
        return row

    def batch(self, batch: dict[str, list]) -> dict[str, list]:
        size = len(next(iter(batch.values())))
        rows = [self.example({key: values[i] for key, values in batch.items()}) for i in range(size)]
        return {key: [row[key] for row in rows] for key in batch}


def _feature_is_mmu_image(feature: Any) -> bool:
    import datasets

    if isinstance(feature, dict):
        return "flux" in feature
    inner = getattr(feature, "feature", None)
    return isinstance(feature, (datasets.List, datasets.Sequence)) and isinstance(inner, dict) and "flux" in inner


def mmu_columns(dataset: Any, image_column: str, first_row: dict | None = None) -> tuple[bool, str | None]:
    """(whether ``image_column`` holds MMU image structs, the MMU spectrum column or None), from the
    dataset's features, or from `first_row` when a stream does not know its features."""
    features = dataset.features
    if features is not None:
        image = image_column in features and _feature_is_mmu_image(features[image_column])
        spectra = [name for name in SPECTRUM_COLUMN_CANDIDATES
                   if isinstance(features.get(name), dict) and {"flux", "lambda"} <= set(features[name])]
        return image, spectra[0] if spectra else None
    row = first_row or {}
    spectra = [name for name in SPECTRUM_COLUMN_CANDIDATES if is_mmu_spectrum(row.get(name))]
    return is_mmu_image(row.get(image_column)), spectra[0] if spectra else None


def apply_mmu_decoding(dataset: Any, decoder: MMURowDecoder) -> Any:
    """`dataset` with its MMU columns decoded lazily, as rows are read (map-style or streaming)."""
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        # the decoded rows no longer fit the stored features; without them nothing re-encodes the rows
        return dataset.map(decoder.example, features=None).with_format(None)
    columns = [c for c in (decoder.image_column, decoder.spectrum_column) if c is not None]
    return dataset.with_transform(decoder.batch, columns=columns, output_all_columns=True)
