"""Figures of layer-wise probes: a layers x targets heat map and one score-against-depth panel per target.

Both read the "layers" / "random_init_layers" / "best_layer" / "layer_metric" part of probe_results.json
(`astropt_hf.downstream.layer_probes`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..data.catalogue_units import column_label
from .style import METRIC_LABELS, save_figure

__all__ = ["layer_score_matrix", "plot_layer_heatmap", "plot_layer_lines"]

LAYER_AXIS_LABEL = "layer (0 = patch embeddings; last = final block + LayerNorm)"


def _metric_of(results: Mapping[str, Any], target: str) -> str:
    metric = (results.get("layer_metric") or {}).get(target)
    if metric:
        return metric
    first = next(iter(results["layers"][target].values()))
    return "r2" if "r2" in first else "accuracy"


def layer_score_matrix(results: Mapping[str, Any], key: str = "layers") -> tuple[list[int], list[str], np.ndarray]:
    """(layers, targets, (n_layers, n_targets) scores) of `results[key]`, each target in its main metric."""
    per_target = results[key]
    targets = list(per_target)
    layers = sorted({int(layer) for by_layer in per_target.values() for layer in by_layer})
    scores = np.full((len(layers), len(targets)), np.nan)
    for column, target in enumerate(targets):
        metric = _metric_of(results, target)
        for row, layer in enumerate(layers):
            entry = per_target[target].get(str(layer), per_target[target].get(layer))
            if entry is not None and entry.get(metric) is not None:
                scores[row, column] = entry[metric]
    return layers, targets, scores


def _colour_label(results: Mapping[str, Any], targets: list[str]) -> str:
    names = list(dict.fromkeys(_metric_of(results, t) for t in targets))
    kinds = {"r2": "regression", "accuracy": "classification"}
    if len(names) == 1:
        return f"{METRIC_LABELS.get(names[0], names[0])} (out-of-fold)"
    return " / ".join(f"{METRIC_LABELS.get(n, n)} ({kinds.get(n, n)})" for n in names) + ", out-of-fold"


def plot_layer_heatmap(results: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Heat map of the trained model's probe score per layer (rows) and target (columns).

    Each cell shows its score to three decimals; the best layer of each target is outlined.
    """
    layers, targets, scores = layer_score_matrix(results)
    finite = scores[np.isfinite(scores)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    fig = Figure(figsize=(max(4.5, 1.3 * len(targets) + 2.5), max(3.0, 0.42 * len(layers) + 1.6)))
    ax = fig.add_subplot()
    image = ax.imshow(scores, cmap="viridis", vmin=low, vmax=high, aspect="auto")
    fig.colorbar(image, ax=ax, label=_colour_label(results, targets))
    for row in range(len(layers)):
        for column in range(len(targets)):
            value = scores[row, column]
            if np.isfinite(value):
                dark = (value - low) / (high - low) < 0.55
                ax.text(column, row, f"{value:.3f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")  # fmt: skip
    best = results.get("best_layer") or {}
    for column, target in enumerate(targets):
        if target in best and int(best[target]) in layers:
            row = layers.index(int(best[target]))
            ax.add_patch(Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(targets)), [column_label(t, unit=False) for t in targets], rotation=30 if len(targets) > 4 else 0,
                  ha="right" if len(targets) > 4 else "center")  # fmt: skip
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_ylabel(LAYER_AXIS_LABEL, fontsize=8)
    ax.set_xlabel("target (red box: best layer)")
    ax.set_title(title or "Layer-wise linear probes", fontsize=10)
    return save_figure(fig, path)


def plot_layer_lines(results: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """One panel per target: probe score against layer for the trained model and the random-init model."""
    layers, targets, scores = layer_score_matrix(results)
    baseline = layer_score_matrix(results, "random_init_layers")[2] if results.get("random_init_layers") else None
    columns = min(3, len(targets))
    rows = math.ceil(len(targets) / columns)
    fig = Figure(figsize=(4.0 * columns, 3.2 * rows + 0.4))
    for index, target in enumerate(targets):
        ax = fig.add_subplot(rows, columns, index + 1)
        metric = _metric_of(results, target)
        ax.plot(layers, scores[:, index], "o-", label="astroPT")
        if baseline is not None:
            ax.plot(layers, baseline[:, index], "s--", color="0.5", label="random init")
        best = (results.get("best_layer") or {}).get(target)
        if best is not None and int(best) in layers:
            ax.plot([int(best)], [scores[layers.index(int(best)), index]], "*", color="red", markersize=12,
                    label=f"best: layer {int(best)}")  # fmt: skip
        ax.set_xticks(layers)
        ax.set_title(column_label(target, unit=False))
        ax.set_xlabel("layer")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(title or "Layer-wise linear probes", fontsize=10)
    fig.text(0.5, -0.01, LAYER_AXIS_LABEL, ha="center", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
