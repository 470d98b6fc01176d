"""The input-normalisation study's figure: astroPT's probe scores per variant against its baselines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .style import METRIC_LABELS, column_label, feature_label, save_figure

__all__ = ["plot_normalisation_study"]


def plot_normalisation_study(variants: Sequence[Mapping[str, Any]], targets: Sequence[str], path: str | Path,
                             metric: str = "r2") -> Path:
    """Grouped bars of astroPT's probe score per target, one bar per normalisation variant, with the
    random-init model (black bar) and pixel PCA (grey cross) under the same normalisation marked on each.

    Args:
        variants: [{"name": ..., "probe": {TARGET: {"astropt": {metric: v}, "random_init": ..., "pixel_pca": ...}}}]
            (the "variants" of normalisations.json).
    """
    fig = Figure(figsize=(max(6.0, 1.4 * len(targets) * max(1, len(variants)) / 2 + 2), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(variants))
    positions = np.arange(len(targets))
    # Three decimals when two variants of one target are closer than 0.05, so the gap shows.
    by_target = [[v["probe"][t].get("astropt", {}).get(metric, np.nan) for v in variants] for t in targets]
    gaps = [np.diff(np.sort([x for x in values if np.isfinite(x)])) for values in by_target]
    decimals = 3 if any(gap.size and gap.min() < 0.05 for gap in gaps) else 2
    for index, variant in enumerate(variants):
        x = positions + (index - (len(variants) - 1) / 2) * width
        scores = {name: [variant["probe"][t].get(name, {}).get(metric, np.nan) for t in targets]
                  for name in ("astropt", "random_init", "pixel_pca")}
        bars = ax.bar(x, scores["astropt"], width * 0.92, label=f"astroPT, {variant['name']}", color=f"C{index}")
        ax.bar_label(bars, fmt=f"%.{decimals}f", fontsize=7 if decimals == 2 else 6, padding=2)
        ax.plot(x, scores["random_init"], linestyle="none", marker="_", markersize=14 * width / 0.2, color="black",
                markeredgewidth=2, label=f"{feature_label('random_init')}, same input" if index == 0 else None)
        ax.plot(x, scores["pixel_pca"], linestyle="none", marker="x", markersize=5, color="0.45",
                label=f"{feature_label('pixel_pca')}, same input" if index == 0 else None)
    ax.set_xticks(positions, [column_label(t, unit=False) for t in targets])
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + " (linear probe, held-out galaxies)")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.08)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.legend(fontsize=7, frameon=False, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.set_title("Input normalisation: astroPT probes (bars) against baselines on the same input (markers)")
    return save_figure(fig, path)
