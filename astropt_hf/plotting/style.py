"""Helpers the figures share: metric, feature-set and catalogue-column labels, array conversion without torch,
saving, a readable log loss axis, plain colour-bar ticks and wrapped galaxy ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from astropt_hf.data.catalogue_units import column_caption, column_label, column_unit

__all__ = [
    "FEATURE_SET_LABELS",
    "METRIC_LABELS",
    "column_caption",
    "column_label",
    "column_unit",
    "feature_label",
    "metric_axis_label",
    "plain_count_colorbar",
    "plain_log_yaxis",
    "save_figure",
    "to_numpy",
    "wrap_label",
]


# How metric keys are written on axes and in legends.
METRIC_LABELS = {
    "r2": "R²",
    "mae": "MAE",
    "sigma_nmad": "σ_NMAD",
    "outlier_fraction": "outlier fraction",
    "accuracy": "accuracy",
    "f1_macro": "F1 (macro)",
}

# What each metric is computed for, where a chart mixes them.
_METRIC_TASKS = {"r2": "regression", "mae": "regression", "accuracy": "classification", "f1_macro": "classification"}

# How the probes' feature sets are named in legends.
FEATURE_SET_LABELS = {
    "astropt": "astroPT",
    "random_init": "random init (same architecture)",
    "pixel_pca": "pixel PCA",
}


def feature_label(feature_set: str) -> str:
    """Legend name of a feature set ("random_init" -> "random init (same architecture)")."""
    return FEATURE_SET_LABELS.get(feature_set, feature_set)


def metric_axis_label(metric_names) -> str:
    """Axis label for the metrics a chart shows: "R²" when there is one, "R² (regression) / accuracy
    (classification)" when regression and classification scores share the axis."""
    names = list(dict.fromkeys(metric_names))
    if len(names) == 1:
        return METRIC_LABELS.get(names[0], names[0])
    return " / ".join(
        METRIC_LABELS.get(name, name) + (f" ({_METRIC_TASKS[name]})" if name in _METRIC_TASKS else "")
        for name in names
    )


def wrap_label(text: str, width: int = 18) -> str:
    """Break a long id over lines at its separators ("-", "_", "/", " "), never dropping characters. Lines
    are filled from the end, where ids keep what tells them apart: "synthetic-s0-validation-0000001" reads
    "synthetic-s0-" above "validation-0000001"."""
    text = str(text)
    if len(text) <= width:
        return text
    pieces, current = [], ""
    for token in reversed(_split_keeping_separators(text)):
        if current and len(current) + len(token) > width:
            pieces.append(current)
            current = ""
        current = token + current
    pieces.append(current)
    return "\n".join(reversed(pieces))


def _split_keeping_separators(text: str) -> list[str]:
    tokens, current = [], ""
    for char in text:
        current += char
        if char in "-_/ ":
            tokens.append(current)
            current = ""
    return tokens + ([current] if current else [])


def plain_count_colorbar(colorbar) -> None:
    """Ticks of a log-scaled count colour bar at 1, 2, 5, 10, 20, ... written as plain integers, instead of
    matplotlib's `6×10⁰`-style minor labels."""
    low, high = colorbar.mappable.norm.vmin, colorbar.mappable.norm.vmax
    if low is None or high is None or not (high > 0):
        return
    low = max(low, 1.0)
    ticks = [t for t in LogLocator(subs=(1, 2, 5)).tick_values(low, high) if low <= t <= high]
    if len(ticks) < 2:
        ticks = sorted({low, high})
    colorbar.set_ticks(ticks)
    colorbar.set_ticklabels([f"{t:g}" for t in ticks])
    colorbar.ax.yaxis.set_minor_formatter(NullFormatter())


def to_numpy(array: Any) -> np.ndarray:
    """numpy view of an array or a (possibly bf16, GPU) torch tensor, without importing torch."""
    if hasattr(array, "detach"):
        array = array.detach().float().cpu().numpy()
    return np.asarray(array)


def save_figure(fig: Figure, path: str | Path, dpi: int = 120, bbox_inches: str | None = "tight") -> Path:
    """Write `fig` as an image at `path` (folders made as needed) and return the path. By default the image
    is cropped to what is drawn; `bbox_inches=None` keeps the figure's own size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches=bbox_inches)
    return path


def plain_log_yaxis(axis) -> None:
    """Log y scale with four to eight plain decimal ticks: a loss axis often spans less than a decade,
    where the default log ticks leave one or two labels. Call after plotting."""
    axis.set_yscale("log")
    low, high = axis.get_ylim()
    candidates = (LogLocator(subs=(1, 2, 5)), LogLocator(subs=(1, 2, 3, 5, 7)), MaxNLocator(6))
    for locator in candidates:
        ticks = [t for t in locator.tick_values(low, high) if low <= t <= high and t > 0]
        if 4 <= len(ticks) <= 8:
            axis.yaxis.set_major_locator(FixedLocator(ticks))
            axis.yaxis.set_major_formatter(FormatStrFormatter("%.4g"))
            axis.yaxis.set_minor_formatter(NullFormatter())
            return
