"""Image processor for astroPT: survey cutouts in any common form -> `pixel_values` (B, C, H, W) float32.

It owns the *domain* transforms (layout, band count, NaN handling, crop/resize, stretch, scaling);
the model owns patch geometry (cutting, ordering, per-patch normalisation).

This is one of the three "remote code" files copied next to every checkpoint: it imports only numpy,
PIL, torch and transformers.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

try:
    from PIL import Image as PILImage
except ImportError:  # pragma: no cover - pillow is a transformers vision dependency
    PILImage = None

RESIZE_MODES = ("center_crop", "resize", "none")
STRETCHES = ("none", "asinh")
SETTINGS = ("image_size", "num_channels", "resize_mode", "stretch", "asinh_scale", "do_rescale", "nan_fill_value")
# PIL modes whose raw bytes are not the bands themselves: converted to RGB (RGBA for "PA") first.
_PIL_COLOUR_MODES = ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def _check_integer(name: str, value, low: int, high: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        if not (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and float(value).is_integer()):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < low:
        raise ValueError(f"{name}={value!r} is not valid; expected an integer >= {low}")
    if value > high:
        raise ValueError(
            f"{name}={value!r} is over the limit of {high} (each image would be allocated at that size); "
            f"raise AstroPTImageProcessor.MAX_{name.upper()} to lift it"
        )
    return value


def _check_real(name: str, value, positive: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        number = math.inf
    if not math.isfinite(number) or (positive and number <= 0):
        raise ValueError(f"{name}={value!r} is not valid; expected a finite number{' > 0' if positive else ''}")
    return number


def _check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; expected one of {list(choices)}")
    return value


def validate_settings(settings: dict, max_image_size: int, max_num_channels: int) -> dict:
    """The processor's settings (`SETTINGS`), checked and normalised (Python int/float/bool/str).

    The one validation path for constructor and per-call arguments: raises `TypeError` for a value of the
    wrong kind and `ValueError` for one outside its domain, each naming the field, the domain and the value.
    """
    do_rescale = settings["do_rescale"]
    if not isinstance(do_rescale, (bool, np.bool_)):
        raise TypeError(f"do_rescale must be True or False, got {type(do_rescale).__name__} {do_rescale!r}")
    return {
        "image_size": _check_integer("image_size", settings["image_size"], 1, max_image_size),
        "num_channels": _check_integer("num_channels", settings["num_channels"], 1, max_num_channels),
        "resize_mode": _check_choice("resize_mode", settings["resize_mode"], RESIZE_MODES),
        "stretch": _check_choice("stretch", settings["stretch"], STRETCHES),
        "asinh_scale": _check_real("asinh_scale", settings["asinh_scale"], positive=True),
        "do_rescale": bool(do_rescale),
        "nan_fill_value": _check_real("nan_fill_value", settings["nan_fill_value"]),
    }


class AstroPTImageProcessor(BaseImageProcessor):
    r"""Turns galaxy images into `pixel_values` for astroPT.

    Accepts PIL images, numpy arrays or torch tensors in HWC or CHW layout (uint8, uint16, float32/64 such
    as FITS data), 2-D single-band arrays, or lists of these. Steps, in order:

    1. layout: to (C, H, W); the band axis is the one whose length equals `num_channels`
       (`input_data_format="channels_first"|"channels_last"` settles ambiguous shapes);
    2. band check: a `ValueError` states the expected and actual band count;
    3. NaN/inf pixels are replaced by `nan_fill_value`, with a warning giving their count;
    4. integer images are rescaled to [0, 1] (by the dtype's maximum) when `do_rescale`;
    5. size: `resize_mode="center_crop"` crops larger images to `image_size` (smaller ones are resized up),
       `"resize"` resamples bilinearly (antialiased), `"none"` requires the exact size;
    6. stretch: `"asinh"` maps x -> asinh(x / asinh_scale), which compresses the bright cores of galaxies
       while keeping faint outskirts visible.

    PIL images in colour modes (P, CMYK, YCbCr, LAB, HSV) are converted to RGB (PA to RGBA); bilevel mode `1`
    images are read as greyscale 0 / 255 (so 0 / 1 after `do_rescale`); bf16 and other low-precision float
    tensors are read as float32.

    Every setting is checked when the processor is built and again when it is overridden for one call: a
    `TypeError` or `ValueError` names the field, its domain and the value. `image_size` is capped at
    `MAX_IMAGE_SIZE` and `num_channels` at `MAX_NUM_CHANNELS` (class attributes; raise them to lift the cap).

    Args:
        image_size (`int`): output side in pixels.
        num_channels (`int`): expected number of bands.
    """

    model_input_names = ["pixel_values"]
    MAX_IMAGE_SIZE = 4096
    MAX_NUM_CHANNELS = 512

    def __init__(
        self,
        image_size: int = 32,
        num_channels: int = 3,
        resize_mode: str = "center_crop",
        stretch: str = "none",
        asinh_scale: float = 1.0,
        do_rescale: bool = True,
        nan_fill_value: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        given = dict(image_size=image_size, num_channels=num_channels, resize_mode=resize_mode, stretch=stretch,
                     asinh_scale=asinh_scale, do_rescale=do_rescale, nan_fill_value=nan_fill_value)  # fmt: skip
        for name, value in self._validated(given).items():
            setattr(self, name, value)

    def _validated(self, settings: dict) -> dict:
        return validate_settings(settings, self.MAX_IMAGE_SIZE, self.MAX_NUM_CHANNELS)

    def _settings_for_call(self, overrides: dict) -> dict:
        """The constructor's settings with this call's overrides (None means "keep"), validated again."""
        unknown = sorted(set(overrides) - set(SETTINGS))
        if unknown:
            raise TypeError(f"unknown keyword argument(s) {unknown} for this image processor; expected {list(SETTINGS)}")
        settings = {name: getattr(self, name) for name in SETTINGS}
        settings.update({name: value for name, value in overrides.items() if value is not None})
        return self._validated(settings)

    # --- one image --------------------------------------------------------------------------------
    def _to_chw(self, image, input_data_format: str | None) -> np.ndarray:
        """Any supported image -> numpy (C, H, W) in its original dtype."""
        if PILImage is not None and isinstance(image, PILImage.Image):
            if image.mode in _PIL_COLOUR_MODES:
                image = image.convert("RGBA" if image.mode == "PA" else "RGB")
            elif image.mode == "1":
                image = image.convert("L")
            image = np.asarray(image)
            input_data_format = "channels_last"
        elif isinstance(image, torch.Tensor):
            image = image.detach().cpu()
            if image.is_floating_point() and image.dtype not in (torch.float16, torch.float32, torch.float64):
                image = image.float()  # bf16 and float8 have no numpy dtype
            image = image.numpy()
        image = np.asarray(image)
        if image.dtype == np.bool_ or image.dtype.kind not in "uif":
            raise ValueError(f"image has dtype {image.dtype}; expected an integer or floating point array")
        if image.size == 0:
            raise ValueError(f"image has no pixels (shape {image.shape})")
        if image.ndim == 2:
            return image[None]
        if image.ndim != 3:
            raise ValueError(f"image has shape {image.shape}; expected (H, W), (H, W, C) or (C, H, W)")
        if input_data_format == "channels_first":
            return image
        if input_data_format == "channels_last":
            return np.moveaxis(image, -1, 0)
        first, last = image.shape[0] == self.num_channels, image.shape[-1] == self.num_channels
        if first and not last:
            return image
        if last and not first:
            return np.moveaxis(image, -1, 0)
        if first and last:  # e.g. a 3x3x3 array: ambiguous, take the conventional channels-last
            return np.moveaxis(image, -1, 0)
        # Band count matches neither axis: say which axis looked like bands.
        bands = image.shape[0] if image.shape[0] < image.shape[-1] else image.shape[-1]
        raise ValueError(
            f"image has {bands} bands (shape {image.shape}); expected num_channels={self.num_channels}"
        )

    def _resize(self, image: torch.Tensor, resize_mode: str, size: int) -> torch.Tensor:
        height, width = image.shape[-2:]
        if (height, width) == (size, size):
            return image
        if resize_mode == "none":
            raise ValueError(f"image is {height}x{width} pixels; expected {size}x{size} (resize_mode='none')")
        if resize_mode == "center_crop" and height >= size and width >= size:
            top, left = (height - size) // 2, (width - size) // 2
            return image[:, top : top + size, left : left + size]
        if resize_mode == "center_crop":  # crop the longer side to a square first, then scale up
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            image = image[:, top : top + side, left : left + side]
        return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]

    def process_one(self, image, input_data_format: str | None = None, **overrides) -> torch.Tensor:
        """One image -> (C, H, W) float32 tensor."""
        settings = self._settings_for_call(overrides)
        array = self._to_chw(image, input_data_format)
        if array.shape[0] != settings["num_channels"]:
            raise ValueError(
                f"image has {array.shape[0]} bands (shape {array.shape}); expected num_channels={settings['num_channels']}"
            )
        scale = None
        if array.dtype.kind in "ui" and settings["do_rescale"]:
            scale = float(np.iinfo(array.dtype).max)
        array = array.astype(np.float32, copy=False)
        bad = ~np.isfinite(array)
        if bad.any():
            warnings.warn(
                f"image has {int(bad.sum())} NaN/inf pixels; replaced by nan_fill_value={settings['nan_fill_value']}",
                stacklevel=3,
            )
            array = np.where(bad, np.float32(settings["nan_fill_value"]), array)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if scale is not None:
            tensor = tensor / scale
        tensor = self._resize(tensor, settings["resize_mode"], settings["image_size"])
        if settings["stretch"] == "asinh":
            tensor = torch.asinh(tensor / settings["asinh_scale"])
        return tensor.contiguous()

    # --- batches ----------------------------------------------------------------------------------
    @staticmethod
    def _as_list(images) -> list:
        if isinstance(images, (list, tuple)):
            return list(images)
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            return list(images)
        return [images]

    def preprocess(self, images, return_tensors: str | None = "pt", input_data_format: str | None = None, **kwargs):
        """Images -> `BatchFeature({"pixel_values": (B, C, H, W) float32})`. Any constructor argument can be
        overridden for this call."""
        processed = [self.process_one(image, input_data_format, **kwargs) for image in self._as_list(images)]
        if not processed:
            raise ValueError("no images given")
        pixel_values = torch.stack(processed)
        if return_tensors in (None, "np"):
            pixel_values = pixel_values.numpy()
        elif return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; use 'pt' or 'np'")
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=None)

    def __call__(self, images, *args, **kwargs) -> BatchFeature:
        return self.preprocess(images, *args, **kwargs)


__all__ = ["AstroPTImageProcessor", "validate_settings"]
