"""The embedding map figure: points coloured by a catalogue column, galaxy thumbnails at their positions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, OffsetImage

from .style import save_figure

__all__ = ["plot_embedding_map"]

_AXIS_NAMES = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PC"}


def _colours(values: Any):
    """(numbers to colour by, norm, colormap, category names or None) for numeric or label columns."""
    array = np.asarray(values)
    if np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.bool_):
        numbers = array.astype(np.float64)
        finite = numbers[np.isfinite(numbers)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        return numbers, Normalize(low, high if high > low else low + 1.0), colormaps["viridis"], None
    names, codes = np.unique(array.astype(str), return_inverse=True)
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"].resampled(len(names))
    norm = BoundaryNorm(np.arange(len(names) + 1) - 0.5, len(names))
    return codes.astype(np.float64), norm, cmap, [str(n) for n in names]


def plot_embedding_map(
    coords: Any,
    values: Any,
    path: str | Path,
    color_label: str,
    method: str = "tsne",
    thumbnails: Sequence[tuple[int, np.ndarray]] = (),
    explained_variance: Sequence[float] | None = None,
    title: str | None = None,
    thumbnail_inches: float = 0.38,
) -> Path:
    """Scatter of 2-D `coords` coloured by `values` (numbers: continuous colour bar; labels: one colour
    each), with thumbnails (index into coords, (H, W, 3) RGB image) framed in their point's colour."""
    coords = np.asarray(coords, dtype=np.float64)
    numbers, norm, cmap, categories = _colours(values)
    fig = Figure(figsize=(9.0, 7.5))
    ax = fig.add_subplot()
    finite = np.isfinite(numbers)
    if (~finite).any():
        ax.scatter(*coords[~finite].T, s=6, color="0.75", label="no value", zorder=1)
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    points = ax.scatter(*coords[finite].T, c=numbers[finite], cmap=cmap, norm=norm, s=10, linewidths=0, zorder=2)
    bar = fig.colorbar(points, ax=ax, label=color_label, fraction=0.046, pad=0.02)
    if categories is not None:
        bar.set_ticks(np.arange(len(categories)), labels=categories)
    for index, image in thumbnails:
        zoom = thumbnail_inches * 72 / max(image.shape[:2])  # offset images are sized in points
        colour = cmap(norm(numbers[index])) if np.isfinite(numbers[index]) else "0.6"
        box = AnnotationBbox(OffsetImage(image, zoom=zoom, interpolation="nearest"), tuple(coords[index]),
                             frameon=True, pad=0.08, bboxprops={"edgecolor": colour, "linewidth": 1.5}, zorder=3)  # fmt: skip
        ax.add_artist(box)
    name = _AXIS_NAMES.get(method, method)
    labels = [f"{name} {axis}" for axis in (1, 2)]
    if method == "pca" and explained_variance is not None:
        labels = [f"{label} ({100 * share:.1f}% of variance)" for label, share in zip(labels, explained_variance)]
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    if method != "pca":  # UMAP / t-SNE axes have no units worth reading
        ax.set_xticks([])
        ax.set_yticks([])
    ax.margins(0.08)  # room for the thumbnails of the outermost galaxies
    ax.set_title(title or f"Embedding map ({name})", fontsize=10)
    return save_figure(fig, path)
