"""Linear-probe figures: score bars per target, predicted-against-true hexbins and confusion matrices."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from .style import METRIC_LABELS, save_figure, to_numpy

__all__ = ["plot_confusion_matrix", "plot_pred_vs_true", "plot_pred_vs_true_grid", "plot_probe_bars"]


def plot_probe_bars(
    results: Any,
    path: str | Path,
    metric: str | Sequence[str] = "r2",
    feature_order: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Grouped bar chart: one group per target, one bar per model / feature set.

    Args:
        results: {"targets": {TARGET: {MODEL: {metric: value}}}} (probe_results.json), its inner
            "targets" mapping, or a `ProbeSuiteResult`.
        metric: metric name, or several names tried in order per target (e.g. ("r2", "accuracy")
            to put regression and classification targets in one chart). Targets with none of
            them are left out.
        feature_order: order of the bars in each group (default: first-seen order).
    """
    results = getattr(results, "results", results)
    per_target = results.get("targets", results)
    metric_names = [metric] if isinstance(metric, str) else list(metric)

    chosen: dict[str, tuple[str, dict[str, float]]] = {}
    for target, by_model in per_target.items():
        for name in metric_names:
            values = {model: scores[name] for model, scores in by_model.items() if name in scores}
            if values:
                chosen[target] = (name, values)
                break
    if not chosen:
        raise ValueError(
            f"no target in the results has the metric {metric_names}; targets: {list(per_target)}"
        )
    models = (
        list(feature_order)
        if feature_order
        else list(dict.fromkeys(m for _, v in chosen.values() for m in v))
    )

    fig = Figure(figsize=(max(5.0, 1.0 + 0.45 * len(chosen) * (len(models) + 1)), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / len(models)
    positions = np.arange(len(chosen))
    for index, model in enumerate(models):
        heights = [values.get(model, np.nan) for _, values in chosen.values()]
        bars = ax.bar(positions + (index - (len(models) - 1) / 2) * width, heights, width, label=model)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    labels = [
        target if len(metric_names) == 1 else f"{target}\n({METRIC_LABELS.get(name, name)})"
        for target, (name, _) in chosen.items()
    ]
    ax.set_xticks(
        positions, labels, rotation=30 if len(chosen) > 4 else 0, ha="right" if len(chosen) > 4 else "center"
    )
    ax.set_ylabel(" / ".join(METRIC_LABELS.get(name, name) for name in metric_names))
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title or "Linear probes")
    return save_figure(fig, path)


def _format_metrics(metrics: Mapping[str, float]) -> str:
    return "\n".join(
        f"{METRIC_LABELS.get(name, name)} = {value:.3f}"
        for name, value in metrics.items()
        if isinstance(value, float)
    )


def _draw_pred_vs_true(
    ax, pred: np.ndarray, true: np.ndarray, title: str, metrics: Mapping[str, float]
) -> None:
    low = float(min(np.min(pred), np.min(true)))
    high = float(max(np.max(pred), np.max(true)))
    if high == low:
        low, high = low - 0.5, high + 0.5
    padding = 0.02 * (high - low)
    extent = (low - padding, high + padding, low - padding, high + padding)
    hexes = ax.hexbin(true, pred, gridsize=40, extent=extent, mincnt=1, norm=LogNorm(), cmap="viridis")
    ax.figure.colorbar(hexes, ax=ax, label="galaxies")
    ax.plot(extent[:2], extent[:2], color="red", linewidth=1.0, linestyle="--", label="1:1")
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    ax.set_aspect("equal")
    ax.set_xlabel(f"true {title}")
    ax.set_ylabel(f"predicted {title}")
    ax.set_title(title)
    text = _format_metrics(metrics)
    if text:
        ax.text(
            0.03, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
        )  # fmt: skip


def _regression_pair(pred: Any, true: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    pred = to_numpy(pred).astype(np.float64).ravel()
    true = to_numpy(true).astype(np.float64).ravel()
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(
            f"{what}: predictions and true values must be equal-length and non-empty; got {pred.shape}, {true.shape}"
        )
    finite = np.isfinite(pred) & np.isfinite(true)
    if not finite.any():
        raise ValueError(f"{what}: no finite (prediction, true) pairs to plot")
    return pred[finite], true[finite]


def plot_pred_vs_true(
    pred: Any,
    true: Any,
    target_name: str,
    path: str | Path,
    metrics: Mapping[str, float] | None = None,
    photo_z: bool = False,
) -> Path:
    """Hexbin of predicted against true values with the 1:1 line and the metrics in a corner.

    `metrics` defaults to `compute_regression_metrics(pred, true, photo_z)` (non-finite pairs dropped).
    """
    pred, true = _regression_pair(pred, true, target_name)
    if metrics is None:
        from astropt_hf.metrics import compute_regression_metrics

        metrics = compute_regression_metrics(pred, true, photo_z=photo_z)
    fig = Figure(figsize=(5.0, 4.4))
    _draw_pred_vs_true(fig.add_subplot(), pred, true, target_name, metrics)
    return save_figure(fig, path)


def plot_pred_vs_true_grid(
    entries: Mapping[str, Any],
    path: str | Path,
    ncols: int = 3,
    photo_z_targets: Sequence[str] = (),
    title: str | None = None,
) -> Path:
    """Several predicted-vs-true hexbins in one figure, one panel per target.

    Args:
        entries: target name -> a `ProbeResult` (its `.predictions`, `.true`, `.metrics` are used)
            or a (pred, true) pair (metrics then computed, with photo-z ones for `photo_z_targets`).
            Entries with non-numeric values (classification labels) are skipped.
    """
    panels = []
    for name, entry in entries.items():
        if hasattr(entry, "predictions"):
            pred, true, metrics = entry.predictions, entry.true, entry.metrics
        else:
            (pred, true), metrics = entry, None
        if not (
            np.issubdtype(np.asarray(pred).dtype, np.number)
            and np.issubdtype(np.asarray(true).dtype, np.number)
        ):
            continue
        pred, true = _regression_pair(pred, true, name)
        if metrics is None:
            from astropt_hf.metrics import compute_regression_metrics

            metrics = compute_regression_metrics(pred, true, photo_z=name in photo_z_targets)
        panels.append((name, pred, true, metrics))
    if not panels:
        raise ValueError(f"no numeric (regression) entries to plot among {list(entries)}")
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 4.2 * nrows))
    for index, (name, pred, true, metrics) in enumerate(panels):
        _draw_pred_vs_true(fig.add_subplot(nrows, ncols, index + 1), pred, true, name, metrics)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion_matrix(pred_labels: Any, true_labels: Any, path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: true label, columns: predicted) with counts."""
    pred = to_numpy(pred_labels).ravel()
    true = to_numpy(true_labels).ravel()
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(
            f"confusion matrix: labels must be equal-length and non-empty; got {pred.shape}, {true.shape}"
        )
    classes, codes = np.unique(np.concatenate([true, pred]), return_inverse=True)
    true_codes, pred_codes = codes[: true.size], codes[true.size :]
    counts = np.zeros((classes.size, classes.size), dtype=np.int64)
    np.add.at(counts, (true_codes, pred_codes), 1)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.5 + 0.6 * classes.size
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    image = ax.imshow(fractions, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(image, ax=ax, label="fraction of true class")
    for row in range(classes.size):
        for column in range(classes.size):
            colour = "white" if fractions[row, column] > 0.5 else "black"
            ax.text(column, row, str(counts[row, column]), ha="center", va="center", fontsize=8, color=colour)
    labels = [str(label) for label in classes]
    ax.set_xticks(range(classes.size), labels, rotation=45, ha="right")
    ax.set_yticks(range(classes.size), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, path)
