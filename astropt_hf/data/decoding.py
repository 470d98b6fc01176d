"""Turn whatever a dataset row holds for an image into a numpy array.

Accepted values: numpy arrays, torch tensors and nested lists; PIL images; ``datasets`` Image
dicts ``{"bytes": ..., "path": ...}``; raw bytes of a PNG/JPEG/TIFF/FITS file; and file paths
(PNG, JPEG, TIFF through PIL; FITS through astropy; ``.npy`` without pickles).

FITS files give bands either as a cube in one HDU, shape (C, H, W), or as several 2-D image HDUs
(multi-extension files), stacked in file order. Multi-page TIFFs stack their pages the same way.

Everything that cannot be decoded (missing, empty, truncated or malformed input) raises
``CorruptSampleError``, so callers can skip the sample and count it instead of crashing.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fz")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
NUMPY_SUFFIXES = (".npy",)
#: Every file suffix ``decode_image`` understands (lower case).
IMAGE_SUFFIXES = FITS_SUFFIXES + PIL_SUFFIXES + NUMPY_SUFFIXES

_FITS_MAGIC = b"SIMPLE  ="


class CorruptSampleError(ValueError):
    """A sample that cannot be decoded; ``source`` names the file or id, ``reason`` says why."""

    def __init__(self, source: Any, reason: str):
        # Keeping both in args makes the exception picklable across DataLoader workers.
        super().__init__(source, reason)
        self.source = source
        self.reason = reason

    def __str__(self) -> str:
        name = "<unnamed sample>" if self.source is None else str(self.source)
        return f"cannot decode {name}: {self.reason}"


def has_suffix(path: str | os.PathLike, suffixes: tuple[str, ...]) -> bool:
    """Case-insensitive check of a file name's ending (handles double suffixes like .fits.gz)."""
    return str(path).lower().endswith(suffixes)


def decode_image(value: Any, source: Any = None) -> np.ndarray:
    """Decode one image value into an array of shape (H, W), (H, W, C) or (C, H, W).

    Args:
        value: the image as stored in a dataset row (see the module docstring for the forms).
        source: name used in error messages (file path or id); defaults to the path if known.

    Returns:
        A numpy array in native byte order, dtype as stored (uint8/uint16 for PNG/JPEG, float
        for FITS). Layout is left to the image processor, which knows how many bands to expect.

    Raises:
        CorruptSampleError: for missing, empty, truncated or otherwise undecodable input.
    """
    if value is None:
        raise CorruptSampleError(source, "the image value is missing (None)")
    if isinstance(value, np.ndarray):
        return _check_array(value, source)
    if _is_tensor(value):
        return _check_array(value.detach().cpu().numpy(), source)
    if isinstance(value, dict):
        return _decode_dict(value, source)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(value), source)
    if isinstance(value, (str, os.PathLike)):
        return _decode_path(Path(value), source if source is not None else str(value))
    if isinstance(value, (list, tuple)):
        return _decode_nested_list(value, source)
    from PIL import Image

    if isinstance(value, Image.Image):
        return _pil_to_array(value, source)
    raise CorruptSampleError(source, f"unsupported image value of type {type(value).__name__}")


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _check_array(array: np.ndarray, source: Any) -> np.ndarray:
    array = np.asarray(array)
    # Drop leading length-1 axes (e.g. FITS NAXIS4=1) but never the image axes themselves.
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim not in (2, 3):
        raise CorruptSampleError(source, f"expected a 2-D or 3-D image, got shape {array.shape}")
    if array.size == 0:
        raise CorruptSampleError(source, f"the image is empty (shape {array.shape})")
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise CorruptSampleError(source, f"expected numeric pixels, got dtype {array.dtype}")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _decode_nested_list(value: list | tuple, source: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError as err:  # ragged nesting
        raise CorruptSampleError(source, f"nested list is not rectangular ({err})") from err
    if array.dtype == object:
        raise CorruptSampleError(source, "nested list is not rectangular or holds non-numbers")
    return _check_array(array, source)


def _decode_dict(value: dict, source: Any) -> np.ndarray:
    data, path = value.get("bytes"), value.get("path")
    if source is None:
        source = path
    if data is not None:
        return _decode_bytes(bytes(data), source)
    if path:
        return _decode_path(Path(path), source)
    raise CorruptSampleError(source, f"image dict has neither bytes nor path (keys: {sorted(value)})")


def _decode_path(path: Path, source: Any) -> np.ndarray:
    if not path.is_file():
        raise CorruptSampleError(source, "file not found" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise CorruptSampleError(source, "the file is empty (0 bytes)")
    if has_suffix(path, NUMPY_SUFFIXES):
        try:
            return _check_array(np.load(path, allow_pickle=False), source)
        except (ValueError, OSError, EOFError) as err:
            raise CorruptSampleError(source, f"unreadable .npy file ({err})") from err
    if has_suffix(path, FITS_SUFFIXES):
        return _decode_fits(str(path), source)
    with open(path, "rb") as handle:
        head = handle.read(len(_FITS_MAGIC))
    if head == _FITS_MAGIC:  # a FITS file without a FITS suffix
        return _decode_fits(str(path), source)
    return _decode_pil(str(path), source)


def _decode_bytes(data: bytes, source: Any) -> np.ndarray:
    if not data:
        raise CorruptSampleError(source, "the image bytes are empty")
    if data.startswith(_FITS_MAGIC) or data.startswith(b"\x1f\x8b"):  # FITS, possibly gzipped
        return _decode_fits(io.BytesIO(data), source)
    return _decode_pil(io.BytesIO(data), source)


def _decode_pil(file: Any, source: Any) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(file) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1 and image.format == "TIFF":
                pages = []
                for page in range(frames):
                    image.seek(page)
                    pages.append(_pil_to_array(image, source))
                if len({p.shape for p in pages}) != 1:
                    raise CorruptSampleError(
                        source, f"TIFF pages differ in shape: {[p.shape for p in pages]}"
                    )
                return np.stack(pages)
            return _pil_to_array(image, source)
    except CorruptSampleError:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        raise CorruptSampleError(source, f"not a readable image ({type(err).__name__}: {err})") from err


def _pil_to_array(image: Any, source: Any) -> np.ndarray:
    try:
        image.load()  # decode now, so truncated files fail here rather than later
    except Exception as err:
        raise CorruptSampleError(
            source, f"truncated or corrupt image data ({type(err).__name__}: {err})"
        ) from err
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB")
    elif image.mode == "CMYK":
        image = image.convert("RGB")
    return _check_array(np.asarray(image), source)


def _decode_fits(file: Any, source: Any) -> np.ndarray:
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            # A short file still warns after the data is read; a short data block fails below.
            warnings.simplefilter("ignore")
            with fits.open(file, memmap=False) as hdus:
                planes = [np.asarray(hdu.data) for hdu in hdus if hdu.is_image and hdu.data is not None]
    except CorruptSampleError:
        raise
    except Exception as err:  # astropy raises OSError, TypeError, ValueError, ... on damage
        raise CorruptSampleError(source, f"not a readable FITS file ({type(err).__name__}: {err})") from err
    planes = [p for p in planes if p.size > 0]
    if not planes:
        raise CorruptSampleError(source, "the FITS file holds no image data")
    if len(planes) == 1:
        return _check_array(planes[0], source)
    planes = [_check_array(p, source) for p in planes]
    if any(p.ndim != 2 for p in planes) or len({p.shape for p in planes}) != 1:
        shapes = [p.shape for p in planes]
        raise CorruptSampleError(
            source, f"multi-extension FITS needs 2-D image HDUs of one shape to stack as bands, got {shapes}"
        )
    return np.stack(planes)
