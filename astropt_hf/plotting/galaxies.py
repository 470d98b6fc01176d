"""Galaxy pictures: colour composites of multi-band cutouts, input-against-prediction grids, nearest neighbours."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .style import save_figure, to_numpy

__all__ = ["galaxy_rgb", "plot_galaxy_grid", "plot_neighbours"]


def galaxy_rgb(
    image: Any,
    rgb_bands: Sequence[int] | None = None,
    softening: float = 10.0,
    percentiles: tuple[float, float] = (1.0, 99.5),
    black_point: str = "sky",
) -> np.ndarray:
    """Colour picture of a multi-band cutout: (C, H, W) -> (H, W, 3) floats in [0, 1].

    Band mapping (bands ordered blue to red, as in grz): 3 bands -> R = band 2 (z),
    G = band 1 (r), B = band 0 (g); 1 band (or a 2-D image) -> grey; 2 bands -> R = band 1,
    B = band 0, G = their mean. Other band counts need `rgb_bands` = (R, G, B) indices.

    Stretch: one linear scaling for all bands (so colours keep their ratios): the black point maps
    to 0 and the high percentile of the per-pixel brightest band maps to 1; then
    y = asinh(softening * x) / asinh(softening), clipped to [0, 1]. The asinh keeps faint outskirts
    visible next to a bright core. NaNs become black. `black_point="sky"` (default) is the median of
    the stamp's border pixels, so blank sky is dark and its noise does not fill the picture;
    `"percentile"` uses the low percentile of all pixels instead.
    """
    if black_point not in ("sky", "percentile"):
        raise ValueError(f"galaxy_rgb: black_point={black_point!r} is not valid; expected 'sky' or 'percentile'")
    array = to_numpy(image).astype(np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"galaxy_rgb: expected an image (C, H, W) or (H, W); got shape {array.shape}")
    n_bands = array.shape[0]
    array = np.where(np.isfinite(array), array, np.nan)
    if rgb_bands is not None:
        if len(rgb_bands) != 3 or not all(-n_bands <= band < n_bands for band in rgb_bands):
            raise ValueError(f"galaxy_rgb: rgb_bands must be 3 band indices below {n_bands}; got {rgb_bands}")
        rgb = array[list(rgb_bands)]
    elif n_bands == 3:
        rgb = array[::-1]
    elif n_bands == 1:
        rgb = np.repeat(array, 3, axis=0)
    elif n_bands == 2:
        rgb = np.stack([array[1], array.mean(axis=0), array[0]])
    else:
        raise ValueError(
            f"galaxy_rgb: no default colour mapping for {n_bands} bands; pass rgb_bands=(R, G, B)"
        )

    if np.all(np.isnan(rgb)):
        return np.zeros(rgb.shape[1:] + (3,))
    low = np.nanpercentile(rgb, percentiles[0])
    if black_point == "sky":
        width = max(1, min(rgb.shape[1:]) // 16)
        border = np.ones(rgb.shape[1:], dtype=bool)
        border[width:-width, width:-width] = False
        sky = rgb[:, border]
        if np.isfinite(sky).any():
            low = max(low, float(np.nanmedian(sky)))
    # The brightest band per pixel sets the white point, so a source bright in one band only
    # (a small red blob) is not pushed off the top of the scale.
    brightest = np.nanmax(rgb, axis=0)
    high = np.nanpercentile(brightest, percentiles[1])
    if high <= low:
        high = np.nanmax(brightest)
    if high <= low:
        return np.zeros(rgb.shape[1:] + (3,))
    scaled = np.clip((rgb - low) / (high - low), 0.0, None)
    stretched = np.arcsinh(softening * scaled) / np.arcsinh(softening)
    stretched = np.nan_to_num(stretched, nan=0.0)
    return np.clip(np.moveaxis(stretched, 0, -1), 0.0, 1.0)


def _image_stack(images: Any, what: str) -> np.ndarray:
    array = to_numpy(images)
    if array.ndim == 3:  # (N, H, W): one band
        array = array[:, None]
    if array.ndim != 4:
        raise ValueError(f"{what}: expected images (N, C, H, W); got shape {array.shape}")
    return array


def _show(ax, image: np.ndarray, title: str | None) -> None:
    ax.imshow(galaxy_rgb(image), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def plot_galaxy_grid(
    inputs: Any,
    predictions: Any,
    path: str | Path,
    titles: Sequence[str] | None = None,
    max_columns: int = 8,
    prediction_label: str = "prediction",
) -> Path:
    """Input images above the model's next-patch predictions put back into images.

    Args:
        inputs, predictions: (N, C, H, W) arrays (or tensors) of the same shape. Each image is
            stretched on its own (`galaxy_rgb`), so the prediction's colours are comparable in
            band ratios, not in absolute level.
        titles: N captions for the input panels (e.g. ids or redshifts).
    Galaxies run across, wrapping every `max_columns`; each block of two rows is input above prediction.
    """
    inputs = _image_stack(inputs, "inputs")
    predictions = _image_stack(predictions, "predictions")
    if inputs.shape != predictions.shape:
        raise ValueError(f"inputs and predictions differ in shape: {inputs.shape} vs {predictions.shape}")
    count = inputs.shape[0]
    if titles is not None and len(titles) != count:
        raise ValueError(f"titles: expected {count} captions; got {len(titles)}")
    ncols = max(1, min(max_columns, count))
    blocks = math.ceil(count / ncols)
    fig = Figure(figsize=(1.7 * ncols, 3.5 * blocks))
    axes = fig.subplots(2 * blocks, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for index in range(count):
        block, column = divmod(index, ncols)
        top, bottom = axes[2 * block, column], axes[2 * block + 1, column]
        top.set_axis_on()
        bottom.set_axis_on()
        _show(top, inputs[index], titles[index] if titles is not None else "input")
        _show(bottom, predictions[index], prediction_label)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_neighbours(
    query_image: Any,
    neighbour_images: Any,
    scores: Sequence[float],
    path: str | Path,
    query_title: str = "query",
    neighbour_titles: Sequence[str] | None = None,
    max_columns: int = 6,
) -> Path:
    """The query galaxy followed by its nearest neighbours, each captioned with its similarity score.

    Args:
        query_image: (C, H, W). neighbour_images: (K, C, H, W). scores: K similarities (e.g. cosine).
        neighbour_titles: optional K captions (e.g. ids), shown above the score.
    """
    query = to_numpy(query_image)
    neighbours = _image_stack(neighbour_images, "neighbour_images")
    scores = [float(score) for score in to_numpy(scores).ravel()]
    if len(scores) != neighbours.shape[0]:
        raise ValueError(f"scores: expected {neighbours.shape[0]} (one per neighbour); got {len(scores)}")
    if neighbour_titles is not None and len(neighbour_titles) != len(scores):
        raise ValueError(f"neighbour_titles: expected {len(scores)} captions; got {len(neighbour_titles)}")
    panels = [(query, query_title)] + [
        (
            image,
            (f"{neighbour_titles[i]}\n" if neighbour_titles is not None else "") + f"{i + 1}: {score:.3f}",
        )
        for i, (image, score) in enumerate(zip(neighbours, scores))
    ]
    ncols = max(1, min(max_columns, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(1.8 * ncols, 2.4 * nrows))  # room for two-line captions between rows
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for index, (image, title) in enumerate(panels):
        ax = axes.ravel()[index]
        ax.set_axis_on()
        _show(ax, image, title)
        if index == 0:
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2.0)
    fig.tight_layout()
    return save_figure(fig, path)
