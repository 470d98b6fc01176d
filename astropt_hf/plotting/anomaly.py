"""Figures for anomaly scores: the strangest galaxies with where the model's surprise sits, and the
artefact benchmark's ROC AUC per kind and method.

Drawn on bare `matplotlib.figure.Figure` objects (Agg), like the rest of `astropt_hf.plotting`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from astropt_hf.plotting import galaxy_rgb

__all__ = ["SURPRISE_LABEL", "plot_anomaly_grid", "plot_benchmark_auc"]

SURPRISE_LABEL = "patch surprise z\n(robust σ above reference patches\nat the same position)"


def _save(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def plot_anomaly_grid(strangest: Sequence, path: str | Path, max_columns: int = 4, title: str | None = None) -> Path:
    """The top-k strangest galaxies: each as a colour picture beside a heat map of its per-patch surprise.

    Args:
        strangest: `StrangeImage`s (or objects with `anomaly_score`, `id`, `image` (C, H, W) flux and
            `surprise_map` (H, W)), strangest first.
        max_columns: galaxies per row (each takes two panels).
    All heat maps share one colour scale, from 0 to the largest z shown (at least 3), so they compare; the
    first patch of the sequence, which nothing predicts, is grey.
    """
    count = len(strangest)
    if count == 0:
        raise ValueError("plot_anomaly_grid: nothing to plot")
    ncols = max(1, min(max_columns, count))
    nrows = math.ceil(count / ncols)
    maps = [np.asarray(item.surprise_map, dtype=np.float64) for item in strangest]
    finite = np.concatenate([m[np.isfinite(m)] for m in maps]) if maps else np.zeros(1)
    vmax = max(3.0, float(finite.max()) if finite.size else 3.0)
    fig = Figure(figsize=(3.3 * ncols + 1.2, 2.0 * nrows + (0.5 if title else 0.2)))
    axes = fig.subplots(nrows, 2 * ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    colours = matplotlib.colormaps["magma"].with_extremes(bad="0.6")  # grey: the first patch, never predicted
    image = None
    for index, (item, surprise) in enumerate(zip(strangest, maps)):
        row, column = divmod(index, ncols)
        picture, heat = axes[row, 2 * column], axes[row, 2 * column + 1]
        picture.imshow(galaxy_rgb(item.image), interpolation="nearest")
        name = str(item.id)
        name = name if len(name) <= 22 else "…" + name[-21:]
        picture.set_title(f"#{index + 1}  score {item.anomaly_score:.2f}\n{name}", fontsize=7.5)
        image = heat.imshow(surprise, cmap=colours, vmin=0.0, vmax=vmax, interpolation="nearest")
        heat.set_title("where surprised", fontsize=7.5)
    fig.subplots_adjust(left=0.01, right=0.88, bottom=0.02, top=0.9 if title else 0.93, wspace=0.08, hspace=0.35)
    colour_axes = fig.add_axes([0.9, 0.1, 0.015, 0.75])
    bar = fig.colorbar(image, cax=colour_axes)
    bar.set_label(SURPRISE_LABEL, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_benchmark_auc(results: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | Path,
                       methods: Sequence[str] | None = None, labels: Mapping[str, str] | None = None,
                       title: str | None = None) -> Path:  # fmt: skip
    """Grouped bars of ROC AUC: one group per artefact kind (and "overall"), one bar per method.

    Args:
        results: kind -> method -> {"roc_auc": ..., ...} (as written by the anomaly benchmark).
        methods: the methods to draw, in order (default: those of the first kind).
        labels: legend text per method (default: the method's name).
    """
    kinds = list(results)
    if not kinds:
        raise ValueError("plot_benchmark_auc: no results")
    methods = list(methods or results[kinds[0]])
    width = 0.8 / len(methods)
    fig = Figure(figsize=(max(6.0, 1.1 * len(kinds) + 2.5), 4.0))
    ax = fig.subplots()
    positions = np.arange(len(kinds))
    labels = labels or {}
    for index, method in enumerate(methods):
        values = [results[kind][method]["roc_auc"] for kind in kinds]
        offset = (index - (len(methods) - 1) / 2) * width
        ax.bar(positions + offset, values, width, label=labels.get(method, method))
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(positions)
    ax.set_xticklabels([kind.replace("_", " ") for kind in kinds], rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("ROC AUC (injected vs clean)")
    ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
