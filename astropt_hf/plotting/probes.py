"""Linear-probe figures: score bars per target, predicted-against-true hexbins and confusion matrices."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from .style import (
    METRIC_LABELS,
    column_label,
    column_unit,
    feature_label,
    metric_axis_label,
    plain_count_colorbar,
    save_figure,
    to_numpy,
)

__all__ = [
    "plot_confusion_matrix",
    "plot_pred_vs_true",
    "plot_pred_vs_true_grid",
    "plot_probe_bars",
    "pred_vs_true_limits",
]

# Bars that differ by less than this are labelled with three decimals, so their gap shows.
_SMALL_GAP = 0.05


def plot_probe_bars(
    results: Any,
    path: str | Path,
    metric: str | Sequence[str] = "r2",
    feature_order: Sequence[str] | None = None,
    title: str | None = None,
    feature_labels: Mapping[str, str] | None = None,
) -> Path:
    """Grouped bar chart: one group per target, one bar per model / feature set.

    Args:
        results: {"targets": {TARGET: {MODEL: {metric: value}}}} (probe_results.json), its inner
            "targets" mapping, or a `ProbeSuiteResult`.
        metric: metric name, or several names tried in order per target (e.g. ("r2", "accuracy")
            to put regression and classification targets in one chart). Targets with none of
            them are left out. The y axis names the metrics the bars show ("R²" when all are R²).
        feature_order: order of the bars in each group (default: first-seen order).
        feature_labels: legend names of the feature sets (default: `style.FEATURE_SET_LABELS`,
            e.g. "random init (same architecture)"; others by their own name).
    Bars are labelled with two decimals, or three when two bars of one group differ by less than 0.05.
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
    shown_metrics = [name for name, _ in chosen.values()]
    mixed = len(set(shown_metrics)) > 1

    fig = Figure(figsize=(max(5.0, 1.0 + 0.5 * len(chosen) * (len(models) + 1)), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / len(models)
    positions = np.arange(len(chosen))
    # One precision for the whole chart: three decimals as soon as one group has bars closer than 0.05.
    decimals = max(_bar_decimals(values.values()) for _, values in chosen.values())
    for index, model in enumerate(models):
        heights = [values.get(model, np.nan) for _, values in chosen.values()]
        name = (feature_labels or {}).get(model, feature_label(model))
        bars = ax.bar(positions + (index - (len(models) - 1) / 2) * width, heights, width, label=name)
        labels = ["" if not np.isfinite(h) else f"{h:.{decimals}f}" for h in heights]
        ax.bar_label(bars, labels=labels, fontsize=7 if decimals < 3 else 6, padding=1)
    labels = [
        column_label(target, unit=False) + (f"\n({METRIC_LABELS.get(name, name)})" if mixed else "")
        for target, (name, _) in chosen.items()
    ]
    ax.set_xticks(
        positions, labels, rotation=30 if len(chosen) > 4 else 0, ha="right" if len(chosen) > 4 else "center"
    )
    ax.set_ylabel(metric_axis_label(shown_metrics) + ("\n" if mixed else " ") + "(linear probe, held-out galaxies)")
    ax.axhline(0.0, color="black", linewidth=0.8)
    top = max((v for _, values in chosen.values() for v in values.values() if np.isfinite(v)), default=1.0)
    ax.set_ylim(top=max(ax.get_ylim()[1], top * 1.08 if top > 0 else 0.1))
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title or "Linear probes")
    return save_figure(fig, path)


def _bar_decimals(values) -> int:
    finite = np.sort([float(v) for v in values if np.isfinite(v)])
    if finite.size > 1 and np.min(np.diff(finite)) < _SMALL_GAP:
        return 3
    return 2


def _format_metrics(metrics: Mapping[str, float], unit: str = "") -> str:
    # MAE is in the target's unit; R², σ_NMAD and the outlier fraction are dimensionless.
    return "\n".join(
        f"{METRIC_LABELS.get(name, name)} = {value:.3f}" + (f" {unit}" if name == "mae" and unit else "")
        for name, value in metrics.items()
        if isinstance(value, float)
    )


def _draw_pred_vs_true(
    ax,
    pred: np.ndarray,
    true: np.ndarray,
    target: str,
    metrics: Mapping[str, float],
    title: str | None = None,
    limits: tuple[float, float] | None = None,
) -> None:
    low, high = limits if limits is not None else _data_limits([(pred, true)])
    extent = (low, high, low, high)
    hexes = ax.hexbin(true, pred, gridsize=40, extent=extent, mincnt=1, norm=LogNorm(), cmap="viridis")
    plain_count_colorbar(ax.figure.colorbar(hexes, ax=ax, label="galaxies per hexagon"))
    ax.plot(extent[:2], extent[:2], color="red", linewidth=1.0, linestyle="--", label="1:1")
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    ax.set_aspect("equal")
    label = column_label(target)
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.set_title(title if title is not None else column_label(target, unit=False))
    text = _format_metrics(metrics, column_unit(target))
    if text:
        ax.text(
            0.03, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
        )  # fmt: skip


def _data_limits(pairs) -> tuple[float, float]:
    low = float(min(min(np.min(pred), np.min(true)) for pred, true in pairs))
    high = float(max(max(np.max(pred), np.max(true)) for pred, true in pairs))
    if high == low:
        low, high = low - 0.5, high + 0.5
    padding = 0.02 * (high - low)
    return low - padding, high + padding


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
    model_description: str | None = None,
    title: str | None = None,
    bias: Mapping[str, Any] | bool | None = None,
) -> Path:
    """Hexbin of predicted against true values with the 1:1 line and the named metrics in a corner.

    `metrics` defaults to `compute_regression_metrics(pred, true, photo_z)` (non-finite pairs dropped).
    Axes carry the column's label and unit (`astropt_hf.data.catalogue_units`). The title is `title`
    if given, else the column's name followed by `model_description` (e.g. "fine-tuned astroPT (LoRA)":
    "redshift z — fine-tuned astroPT (LoRA)").

    `bias` (redshifts): a lower panel of Δz / (1 + z) against true z for every galaxy, with the binned
    medians and means of `astropt_hf.metrics.compute_redshift_bias` (pass its result, or True to compute
    it here), on the upper panel's x axis.
    """
    pred, true = _regression_pair(pred, true, target_name)
    if metrics is None:
        from astropt_hf.metrics import compute_regression_metrics

        metrics = compute_regression_metrics(pred, true, photo_z=photo_z)
    if title is None:
        title = column_label(target_name, unit=False)
        if model_description:
            title = f"{title} — {model_description}"
    if not bias:
        fig = Figure(figsize=(5.2, 4.6))
        _draw_pred_vs_true(fig.add_subplot(), pred, true, target_name, metrics, title=title)
        return save_figure(fig, path)
    if not isinstance(bias, Mapping):
        from astropt_hf.metrics import compute_redshift_bias

        bias = compute_redshift_bias(pred, true)
    fig = Figure(figsize=(5.2, 6.6))
    grid = fig.add_gridspec(2, 1, height_ratios=(3.4, 1.5), hspace=0.08)
    top = fig.add_subplot(grid[0])
    _draw_pred_vs_true(top, pred, true, target_name, metrics, title=title)
    top.tick_params(labelbottom=False)
    top.set_xlabel("")
    bottom = fig.add_subplot(grid[1])
    _draw_bias_panel(bottom, pred, true, target_name, bias, top.get_xlim())
    top.apply_aspect()  # the square upper panel is narrower than its slot: give the lower one its width
    upper, lower = top.get_position(), bottom.get_position()
    bottom.set_position([upper.x0, lower.y0, upper.width, lower.height])
    return save_figure(fig, path)


def _draw_bias_panel(ax, pred: np.ndarray, true: np.ndarray, target: str, bias: Mapping[str, Any],
                     xlim: tuple[float, float]) -> None:
    """Δz / (1 + z) of each galaxy against true z, with the binned medians and means and a zero line."""
    from astropt_hf.metrics import normalised_redshift_error

    errors = normalised_redshift_error(pred, true)
    ax.scatter(true, errors, s=3, color="0.6", alpha=0.5, linewidths=0, label="galaxies", rasterized=True)
    ax.axhline(0.0, color="red", linewidth=1.0, linestyle="--")
    bins = [b for b in bias.get("bins", []) if b["n"] > 0]
    centres = np.asarray([(b["z_lo"] + b["z_hi"]) / 2 for b in bins])
    half_widths = np.asarray([(b["z_hi"] - b["z_lo"]) / 2 for b in bins])
    ax.errorbar(centres, [b["median"] for b in bins], xerr=half_widths, fmt="o", color="black", markersize=4,
                capsize=0, linewidth=1.2, label="median per bin")  # fmt: skip
    ax.plot(centres, [b["mean"] for b in bins], "s", markerfacecolor="none", markeredgecolor="tab:blue",
            markersize=5, label="mean per bin")  # fmt: skip
    for centre, entry in zip(centres, bins):
        ax.text(centre, 0.96, f"n={entry['n']}", transform=ax.get_xaxis_transform(), ha="center", va="top",
                fontsize=6, color="0.3")  # fmt: skip
    spread = np.percentile(np.abs(errors), 99) if errors.size else 0.1
    limit = max(spread, *(abs(b["median"]) for b in bins), *(abs(b["mean"]) for b in bins), 1e-3) * 1.15
    ax.set_xlim(xlim)
    ax.set_ylim(-limit, limit)
    ax.set_xlabel(f"true {column_label(target)}")
    ax.set_ylabel("Δz / (1 + z)")
    ax.legend(fontsize=6, frameon=False, loc="lower left", ncol=3)


def _grid_panels(entries: Mapping[str, Any], photo_z_targets: Sequence[str], with_metrics: bool = True) -> list:
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
        if metrics is None and with_metrics:
            from astropt_hf.metrics import compute_regression_metrics

            metrics = compute_regression_metrics(pred, true, photo_z=name in photo_z_targets)
        panels.append((name, pred, true, metrics))
    return panels


def pred_vs_true_limits(entries_by_feature_set: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[float, float]]:
    """One axis range per target covering every feature set's predictions and the true values, so the
    predicted-vs-true grids of several feature sets (astroPT, random init, pixel PCA) can be compared
    panel by panel: pass the result as `limits` to each `plot_pred_vs_true_grid` call.

    Args:
        entries_by_feature_set: {feature set: {target: ProbeResult or (pred, true)}}.
    """
    pairs: dict[str, list] = {}
    for entries in entries_by_feature_set.values():
        for name, pred, true, _ in _grid_panels(entries, (), with_metrics=False):
            pairs.setdefault(name, []).append((pred, true))
    return {name: _data_limits(found) for name, found in pairs.items()}


def plot_pred_vs_true_grid(
    entries: Mapping[str, Any],
    path: str | Path,
    ncols: int = 3,
    photo_z_targets: Sequence[str] = (),
    title: str | None = None,
    limits: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Several predicted-vs-true hexbins in one figure, one panel per target.

    Args:
        entries: target name -> a `ProbeResult` (its `.predictions`, `.true`, `.metrics` are used)
            or a (pred, true) pair (metrics then computed, with photo-z ones for `photo_z_targets`).
            Entries with non-numeric values (classification labels) are skipped.
        limits: target -> (low, high) axis range, e.g. from `pred_vs_true_limits` so that the grids
            of several feature sets share their ranges; targets missing here fit their own data.
    """
    panels = _grid_panels(entries, photo_z_targets)
    if not panels:
        raise ValueError(f"no numeric (regression) entries to plot among {list(entries)}")
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.8 * ncols, 4.4 * nrows))
    for index, (name, pred, true, metrics) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, index + 1)
        _draw_pred_vs_true(ax, pred, true, name, metrics, limits=(limits or {}).get(name))
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
