"""Helpers the figures share: metric labels, array conversion without torch, saving, a readable log loss axis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

__all__ = ["METRIC_LABELS", "plain_log_yaxis", "save_figure", "to_numpy"]


# How metric keys are written on axes and in legends.
METRIC_LABELS = {
    "r2": "R²",
    "mae": "MAE",
    "sigma_nmad": "σ_NMAD",
    "outlier_fraction": "outlier fraction",
    "accuracy": "accuracy",
    "f1_macro": "F1 (macro)",
}


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
