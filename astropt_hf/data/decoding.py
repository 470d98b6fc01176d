"""Turn whatever a dataset row holds for an image into a numpy array.

Accepted values: numpy arrays, torch tensors and nested lists; PIL images; ``datasets`` Image
dicts ``{"bytes": ..., "path": ...}``; raw bytes of a PNG/JPEG/TIFF/FITS file; file paths
(PNG, JPEG, TIFF through PIL; FITS through astropy; ``.npy`` without pickles); and Multimodal Universe
image structs (per-band ``flux``, ``ivar``, ``mask``, ...: every band, bad pixels NaN; see
``astropt_hf.data.multimodal_universe``, which also selects bands).

FITS files give bands either as a cube in one HDU, shape (C, H, W), or as several 2-D image HDUs
(multi-extension files), stacked in file order. Multi-page TIFFs stack their pages the same way.

Everything that cannot be decoded (missing, empty, truncated or malformed input) raises
``CorruptSampleError``, so callers can skip the sample and count it instead of crashing.

**Bounded memory.** A file of a few hundred bytes can declare an array of hundreds of GiB (a
``.npy`` header, a FITS header, a PNG's width and height, a TIFF with thousands of pages). Before
anything is allocated, the declared size is compared with ``DecodeLimits`` (pixels per plane,
bytes in all, number of planes); a file over a limit is a ``CorruptSampleError`` like any other
bad sample. ``GalaxyCollator`` derives the limits from the image processor's ``image_size`` and
band count (``DecodeLimits.for_image_size``); ``decode_image`` without limits uses
``DEFAULT_DECODE_LIMITS``. A ``MemoryError`` while decoding is reported the same way.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import stat
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
#: Default for ``DecodeLimits.for_image_size``: images up to this many times the configured side.
DEFAULT_MAX_SIDE_FACTOR = 16
# FITS integers with BSCALE/BZERO come out as floats; count every value at float64 to be safe.
_FITS_BYTES_PER_VALUE = 8


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """Largest input ``decode_image`` will allocate for, checked from headers before reading data.

    Attributes:
        max_pixels: pixels per plane (width * height) of a PIL image, TIFF page or FITS plane.
        max_bytes: bytes of the whole decoded array (a ``.npy`` at its stored dtype, FITS at
            8 bytes per value).
        max_planes: pages of a multi-page TIFF, image HDUs of a FITS file.
    """

    max_pixels: int
    max_bytes: int
    max_planes: int

    def __post_init__(self):
        for name in ("max_pixels", "max_bytes", "max_planes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DecodeLimits.{name} must be a positive integer, got {value!r}")

    @classmethod
    def for_image_size(
        cls, image_size: int, num_channels: int, max_side_factor: int = DEFAULT_MAX_SIDE_FACTOR
    ) -> DecodeLimits:
        """Limits for a model that sees ``image_size`` pixels square with ``num_channels`` bands:
        planes of up to ``(max_side_factor * image_size)**2`` pixels, the bytes of that many float64
        values per band (at least 4 bands, so RGBA inputs fit), and up to 16 planes (or 4 per band)."""
        max_pixels = (int(max_side_factor) * int(image_size)) ** 2
        bands = max(int(num_channels), 4)
        return cls(max_pixels=max_pixels, max_bytes=max_pixels * bands * 8, max_planes=max(16, 4 * bands))


#: Limits of ``decode_image`` when none are given: 8192 x 8192 pixels, 2 GiB, 64 planes.
DEFAULT_DECODE_LIMITS = DecodeLimits(max_pixels=8192**2, max_bytes=2 * 2**30, max_planes=64)


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


def printable_path(path: str | os.PathLike) -> str:
    """``path`` as a string that is valid UTF-8: bytes of a file name that are not (kept by Python as
    lone surrogates) are written as ``\\xNN`` escapes. Equal to ``str(path)`` for ordinary names."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def has_suffix(path: str | os.PathLike, suffixes: tuple[str, ...]) -> bool:
    """Case-insensitive check of a file name's ending (handles double suffixes like .fits.gz)."""
    return str(path).lower().endswith(suffixes)


def decode_image(value: Any, source: Any = None, limits: DecodeLimits | None = None) -> np.ndarray:
    """Decode one image value into an array of shape (H, W), (H, W, C) or (C, H, W).

    Args:
        value: the image as stored in a dataset row (see the module docstring for the forms).
        source: name used in error messages (file path or id); defaults to the path if known.
        limits: largest declared size to decode (``DEFAULT_DECODE_LIMITS`` when ``None``).

    Returns:
        A numpy array in native byte order, dtype as stored (uint8/uint16 for PNG/JPEG, float
        for FITS). Layout is left to the image processor, which knows how many bands to expect.

    Raises:
        CorruptSampleError: for missing, empty, truncated or otherwise undecodable input, and for
            input whose declared size exceeds ``limits``.
    """
    limits = DEFAULT_DECODE_LIMITS if limits is None else limits
    try:
        return _decode_value(value, source, limits)
    except MemoryError as err:
        raise CorruptSampleError(source, f"not enough memory to decode it ({err})") from err


def _decode_value(value: Any, source: Any, limits: DecodeLimits) -> np.ndarray:
    if value is None:
        raise CorruptSampleError(source, "the image value is missing (None)")
    if isinstance(value, CorruptSampleError):  # a row that failed to decode earlier (MMURowDecoder)
        raise CorruptSampleError(source if source is not None else value.source, value.reason)
    if isinstance(value, np.ndarray):
        return _check_array(value, source)
    if _is_tensor(value):
        return _check_array(value.detach().cpu().numpy(), source)
    if isinstance(value, dict):
        return _decode_dict(value, source, limits)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(value), source, limits)
    if isinstance(value, (str, os.PathLike)):
        return _decode_path(Path(value), source if source is not None else str(value), limits)
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], dict):
            return _decode_mmu(value, source)
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


def _decode_mmu(value: Any, source: Any) -> np.ndarray:
    from .multimodal_universe import decode_mmu_image, is_mmu_image

    if not is_mmu_image(value):
        raise CorruptSampleError(source, "a list of dicts that is not a Multimodal Universe image (per-band flux)")
    return _check_array(decode_mmu_image(value, source=source), source)


def _decode_dict(value: dict, source: Any, limits: DecodeLimits) -> np.ndarray:
    if "flux" in value and "bytes" not in value:
        return _decode_mmu(value, source)
    data, path = value.get("bytes"), value.get("path")
    if source is None:
        source = path
    if data is not None:
        return _decode_bytes(bytes(data), source, limits)
    if path:
        return _decode_path(Path(path), source, limits)
    raise CorruptSampleError(source, f"image dict has neither bytes nor path (keys: {sorted(value)})")


def _decode_path(path: Path, source: Any, limits: DecodeLimits) -> np.ndarray:
    if not path.is_file():
        raise CorruptSampleError(source, _why_not_a_file(path))
    size = path.stat().st_size
    if size == 0:
        raise CorruptSampleError(source, "the file is empty (0 bytes)")
    if has_suffix(path, NUMPY_SUFFIXES):
        return _decode_npy(path, size, source, limits)
    if has_suffix(path, FITS_SUFFIXES):
        return _decode_fits(str(path), source, limits)
    with open(path, "rb") as handle:
        head = handle.read(len(_FITS_MAGIC))
    if head == _FITS_MAGIC:  # a FITS file without a FITS suffix
        return _decode_fits(str(path), source, limits)
    return _decode_pil(str(path), source, limits)


def _why_not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as an image file, for the skip message."""
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                return "symbolic link loop"
            return f"dangling symbolic link (to {printable_path(os.readlink(path))})"
    if path.is_dir():
        return "a directory, not an image file"
    if path.exists():
        kind = "a FIFO" if stat.S_ISFIFO(path.stat().st_mode) else "a socket or device"
        return f"not a regular file ({kind})"
    if _has_undecodable_sibling(path):
        return "the file name is not valid UTF-8 (shown with \\xNN escapes); rename the file to read it"
    return "file not found"


def _has_undecodable_sibling(path: Path) -> bool:
    """True when the folder holds a file whose name is not valid UTF-8 and prints as ``path.name``."""
    try:
        names = os.listdir(os.fsencode(path.parent))
    except OSError:
        return False
    return any(name.decode("utf-8", "backslashreplace") == path.name for name in names if not _is_utf8(name))


def _is_utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode_npy(path: Path, file_size: int, source: Any, limits: DecodeLimits) -> np.ndarray:
    """A ``.npy`` file, its header checked first: the declared array must fit the limits and the file."""
    from numpy.lib import format as npy_format

    try:
        with open(path, "rb") as handle:
            version = npy_format.read_magic(handle)
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            data_bytes = file_size - handle.tell()
        declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if declared > limits.max_bytes:
            raise CorruptSampleError(
                source, f".npy header declares shape {shape} of {dtype} ({declared:,} bytes), over the decode "
                f"limit of {limits.max_bytes:,} bytes"
            )
        if declared > data_bytes:
            raise CorruptSampleError(
                source, f"truncated .npy file: header declares {declared:,} bytes of data, the file holds {data_bytes:,}"
            )
        return _check_array(np.load(path, allow_pickle=False), source)
    except CorruptSampleError:
        raise
    except (ValueError, OSError, EOFError, TypeError) as err:
        raise CorruptSampleError(source, f"unreadable .npy file ({err})") from err


def _decode_bytes(data: bytes, source: Any, limits: DecodeLimits) -> np.ndarray:
    if not data:
        raise CorruptSampleError(source, "the image bytes are empty")
    if data.startswith(_FITS_MAGIC) or data.startswith(b"\x1f\x8b"):  # FITS, possibly gzipped
        return _decode_fits(io.BytesIO(data), source, limits)
    return _decode_pil(io.BytesIO(data), source, limits)


def _check_pil_size(image: Any, source: Any, limits: DecodeLimits, page: int | None = None) -> None:
    """Refuse a PIL image whose header declares more pixels than the limit (nothing decoded yet)."""
    width, height = image.size
    if width * height > limits.max_pixels:
        where = "" if page is None else f" (TIFF page {page})"
        raise CorruptSampleError(
            source, f"image is {width}x{height} pixels{where}, over the decode limit of {limits.max_pixels:,} "
            "pixels per plane"
        )


def _count_tiff_pages(image: Any, source: Any, limits: DecodeLimits) -> int:
    """Number of pages, found by seeking (headers only) and stopping past ``limits.max_planes``."""
    pages = 1
    while True:
        try:
            image.seek(pages)
        except EOFError:
            break
        pages += 1
        if pages > limits.max_planes:
            raise CorruptSampleError(source, f"TIFF has more than {limits.max_planes} pages (the decode limit)")
    image.seek(0)
    return pages


def _decode_pil(file: Any, source: Any, limits: DecodeLimits) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            if Image.MAX_IMAGE_PIXELS is None or limits.max_pixels <= Image.MAX_IMAGE_PIXELS:
                # PIL warns from the header alone; the stricter limit below refuses such an image anyway.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
        with image:
            _check_pil_size(image, source, limits)
            frames = _count_tiff_pages(image, source, limits) if image.format == "TIFF" else 1
            if frames > 1:
                pages = []
                for page in range(frames):
                    image.seek(page)
                    _check_pil_size(image, source, limits, page)
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
    elif image.mode in ("CMYK", "LAB", "HSV", "YCbCr"):  # colour spaces whose raw bytes are not RGB
        image = image.convert("RGB")
    elif image.mode == "1":  # bilevel: 0 / 255 greyscale, as PIL converts it
        image = image.convert("L")
    return _check_array(np.asarray(image), source)


def _decode_fits(file: Any, source: Any, limits: DecodeLimits) -> np.ndarray:
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            # A short file still warns after the data is read; a short data block fails below.
            warnings.simplefilter("ignore")
            with fits.open(file, memmap=False, lazy_load_hdus=True) as hdus:
                planes = [np.asarray(hdu.data) for hdu in _fits_image_hdus(hdus, source, limits)]
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


def _fits_image_hdus(hdus: Any, source: Any, limits: DecodeLimits) -> list:
    """The image HDUs with data, their declared sizes (NAXISn) checked before any data is read."""
    images, total_bytes = [], 0
    for index, hdu in enumerate(hdus):  # lazily loaded: only headers are read while iterating
        if index >= limits.max_planes * 2:  # room for a primary HDU and tables next to the images
            raise CorruptSampleError(source, f"FITS file has more than {index} HDUs (the decode limit)")
        shape = tuple(int(n) for n in hdu.shape) if hdu.is_image else ()
        if not shape or 0 in shape:
            continue
        images.append(hdu)
        values = int(np.prod(shape, dtype=object))
        total_bytes += values * _FITS_BYTES_PER_VALUE
        plane_pixels = shape[-1] * (shape[-2] if len(shape) > 1 else 1)
        if len(images) > limits.max_planes:
            raise CorruptSampleError(source, f"FITS file has more than {limits.max_planes} image HDUs (the decode limit)")
        if plane_pixels > limits.max_pixels or total_bytes > limits.max_bytes:
            raise CorruptSampleError(
                source, f"FITS HDU {index} declares shape {shape} ({total_bytes:,} bytes so far), over the decode "
                f"limits of {limits.max_pixels:,} pixels per plane and {limits.max_bytes:,} bytes"
            )
    return images
