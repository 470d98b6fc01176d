"""Galaxy pictures: colour composites of multi-band cutouts, input-against-prediction grids, nearest neighbours."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .style import column_caption, save_figure, to_numpy, wrap_label

__all__ = ["DISPLAY_STRETCH", "galaxy_rgb", "plot_galaxy_grid", "plot_neighbours"]

#: How `galaxy_rgb` stretches each picture, in words, for figure captions.
DISPLAY_STRETCH = "each panel asinh-stretched from its sky level to its 99.5th percentile"

# Catalogue columns shown under each galaxy of a neighbour grid, when the caller has them.
NEIGHBOUR_CAPTION_COLUMNS = ("redshift", "mag_r")


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


def _show(ax, image: np.ndarray, title: str | None, fontsize: float = 7, grey: np.ndarray | None = None) -> None:
    rgb = galaxy_rgb(image)
    if grey is not None:
        rgb[grey] = 0.5
    ax.imshow(rgb, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def _caption(stretch: str | None, num_bands: int) -> str:
    colours = "bands 3, 2, 1 as R, G, B (z, r, g of grz); " if num_bands == 3 else ""
    return f"Display: {colours}{DISPLAY_STRETCH}." + (f" Pixel values: {stretch}." if stretch else "")


def plot_galaxy_grid(
    inputs: Any,
    predictions: Any,
    path: str | Path,
    titles: Sequence[str] | None = None,
    max_columns: int = 8,
    prediction_label: str = "prediction",
    truths: Any | None = None,
    input_label: str = "input",
    truth_label: str = "truth",
    stretch: str | None = None,
    title: str | None = None,
    input_masks: Any | None = None,
) -> Path:
    """Input images above the model's predictions put back into images (and the truth below, if given).

    Args:
        inputs, predictions (and `truths`): (N, C, H, W) arrays (or tensors) of the same shape. Each
            image is stretched on its own (`galaxy_rgb`), so the prediction's colours are comparable
            in band ratios, not in absolute level.
        titles: N captions for the input panels (e.g. ids); long ones are wrapped at their
            separators, never cut.
        input_label, prediction_label, truth_label: the row labels, on the left of each row.
        stretch: what the pixel values are before display (e.g. "asinh(x / 0.02), per-image
            standardised, the model's input"), named in the caption under the figure with the display stretch.
        title: figure title.
        input_masks: optional (N, H, W) booleans: pixels drawn grey in the input row (the masked patches
            of a masked-patch model).
    Galaxies run across, wrapping every `max_columns`; each block of rows is input, prediction(, truth).
    """
    rows = [(input_label, _image_stack(inputs, "inputs")), (prediction_label, _image_stack(predictions, "predictions"))]
    if truths is not None:
        rows.append((truth_label, _image_stack(truths, "truths")))
    shape = rows[0][1].shape
    for label, images in rows[1:]:
        if images.shape != shape:
            raise ValueError(f"inputs and {label} differ in shape: {shape} vs {images.shape}")
    count = shape[0]
    greys = None if input_masks is None else np.asarray(to_numpy(input_masks), dtype=bool)
    if greys is not None and greys.shape != (count, *shape[2:]):
        raise ValueError(f"input_masks: expected shape {(count, *shape[2:])}; got {greys.shape}")
    if titles is not None and len(titles) != count:
        raise ValueError(f"titles: expected {count} captions; got {len(titles)}")
    wrapped = [wrap_label(t) for t in titles] if titles is not None else None
    title_lines = max((t.count("\n") + 1 for t in wrapped), default=0) if wrapped else 0
    ncols = max(1, min(max_columns, count))
    blocks = math.ceil(count / ncols)
    fig = Figure(figsize=(1.6 * ncols + 0.4, (1.65 * len(rows) + 0.18 * title_lines) * blocks + 0.6))
    axes = fig.subplots(len(rows) * blocks, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for index in range(count):
        block, column = divmod(index, ncols)
        for row, (label, images) in enumerate(rows):
            ax = axes[len(rows) * block + row, column]
            ax.set_axis_on()
            grey = greys[index] if (row == 0 and greys is not None) else None
            _show(ax, images[index], wrapped[index] if (row == 0 and wrapped) else None, fontsize=6, grey=grey)
            if column == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.text(0.5, 0.005, wrap_label(_caption(stretch, shape[1]), width=110), ha="center", va="bottom", fontsize=6.5)
    return save_figure(fig, path)


def _neighbour_layout(neighbours: int, max_columns: int) -> tuple[int, int]:
    """(rows, columns) of the neighbour block: one row when it fits in `max_columns`, else rows of
    equal length (the last one at most one shorter)."""
    rows = max(1, math.ceil(neighbours / max(1, max_columns)))
    return rows, max(1, math.ceil(neighbours / rows))


def _properties_caption(properties: Mapping[str, float] | None, columns: Sequence[str]) -> str:
    if not properties:
        return ""
    parts = [column_caption(c, float(properties[c])) for c in columns if properties.get(c) is not None]
    return "  ".join(parts)


def plot_neighbours(
    query_image: Any,
    neighbour_images: Any,
    scores: Sequence[float],
    path: str | Path,
    query_title: str = "query",
    neighbour_titles: Sequence[str] | None = None,
    max_columns: int = 6,
    query_properties: Mapping[str, float] | None = None,
    neighbour_properties: Sequence[Mapping[str, float] | None] | None = None,
    caption_columns: Sequence[str] = NEIGHBOUR_CAPTION_COLUMNS,
    score_name: str = "cosine",
    title: str | None = None,
) -> Path:
    """The query galaxy (large, on the left) and its nearest neighbours, each captioned with its catalogue
    properties (when given) and its similarity score.

    Args:
        query_image: (C, H, W). neighbour_images: (K, C, H, W). scores: K similarities (e.g. cosine).
        neighbour_titles: optional K captions (e.g. ids), shown above the properties and the score.
        max_columns: the neighbours fill one row up to this many, else two or more rows of equal length.
        query_properties, neighbour_properties: catalogue rows ({column: value}) of the query and of each
            neighbour; the `caption_columns` among them (default redshift and r magnitude) are captioned
            with their units ("z = 0.123  r = 17.85 mag").
        score_name: what the scores are, for the captions.
    """
    query = to_numpy(query_image)
    neighbours = _image_stack(neighbour_images, "neighbour_images")
    scores = [float(score) for score in to_numpy(scores).ravel()]
    count = neighbours.shape[0]
    if len(scores) != count:
        raise ValueError(f"scores: expected {count} (one per neighbour); got {len(scores)}")
    if neighbour_titles is not None and len(neighbour_titles) != count:
        raise ValueError(f"neighbour_titles: expected {count} captions; got {len(neighbour_titles)}")
    if neighbour_properties is not None and len(neighbour_properties) != count:
        raise ValueError(f"neighbour_properties: expected {count} rows; got {len(neighbour_properties)}")
    # Scores that agree to two decimals (0.998 against 0.999) get four.
    decimals = 4 if scores and max(scores) - min(scores) < 0.01 else 3
    captions = []
    for i, score in enumerate(scores):
        lines = [wrap_label(neighbour_titles[i], width=20)] if neighbour_titles is not None else []
        lines.append(_properties_caption(neighbour_properties[i] if neighbour_properties else None, caption_columns))
        lines.append(f"{i + 1}: {score_name} {score:.{decimals}f}")
        captions.append("\n".join(line for line in lines if line))
    query_caption = "\n".join(
        line for line in (query_title, _properties_caption(query_properties, caption_columns)) if line
    )
    rows, columns = _neighbour_layout(count, max_columns)
    lines = max(c.count("\n") + 1 for c in captions + [query_caption])
    query_span = min(rows, 2)
    fig = Figure(figsize=(1.9 * (columns + query_span) + 0.3, (1.9 + 0.16 * lines) * rows + 0.3))
    grid = fig.add_gridspec(rows, columns + query_span)
    query_ax = fig.add_subplot(grid[:, :query_span])
    _show(query_ax, query, query_caption, fontsize=7.5)
    for spine in query_ax.spines.values():
        spine.set_edgecolor("red")
        spine.set_linewidth(2.0)
    for index, (image, caption) in enumerate(zip(neighbours, captions)):
        row, column = divmod(index, columns)
        _show(fig.add_subplot(grid[row, query_span + column]), image, caption, fontsize=6.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
