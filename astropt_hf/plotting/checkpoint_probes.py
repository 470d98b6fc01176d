"""Probe scores across training: one panel per target, score against tokens seen, validation loss beside."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..data.catalogue_units import column_label
from .style import METRIC_LABELS, save_figure

__all__ = ["plot_checkpoint_probes"]


def _x(entries: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, bool]:
    """Tokens seen when every entry has them, else steps."""
    if all(e.get("tokens_seen") for e in entries):
        return np.array([e["tokens_seen"] for e in entries], dtype=np.float64), True
    return np.array([e["step"] for e in entries], dtype=np.float64), False


def plot_checkpoint_probes(
    entries: Sequence[Mapping[str, Any]],
    path: str | Path,
    targets: Sequence[str] | None = None,
    val_loss: tuple[np.ndarray, np.ndarray, bool] | None = None,
    title: str | None = None,
) -> Path:
    """Probe score of each target against tokens seen (log x), from checkpoint_probes.json entries.

    `val_loss` is (x, loss, x_is_tokens) as `validation_loss_curve` returns it; it is drawn on a
    second y-axis when its x is in the same unit as the probes'. Entries with layer-wise probes also
    get the best layer's score per checkpoint.
    """
    entries = sorted(entries, key=lambda e: e["step"])
    targets = list(targets or dict.fromkeys(t for e in entries for t in e.get("targets", {})))
    x, x_is_tokens = _x(entries)
    columns = min(3, len(targets))
    rows = math.ceil(len(targets) / columns)
    fig = Figure(figsize=(4.6 * columns, 3.4 * rows + 0.3))
    for index, target in enumerate(targets):
        ax = fig.add_subplot(rows, columns, index + 1)
        scores = [e.get("targets", {}).get(target, {}) for e in entries]
        metric = "r2" if any("r2" in s for s in scores) else "accuracy"
        label = METRIC_LABELS.get(metric, metric)
        ax.plot(x, [s.get(metric, np.nan) for s in scores], "o-", color="C0", label=f"{label}, embedding")
        if any(target in e.get("layers", {}) for e in entries):
            best = [max((v.get(metric, -np.inf) for v in e.get("layers", {}).get(target, {}).values()), default=np.nan)
                    for e in entries]  # fmt: skip
            ax.plot(x, best, "s--", color="C2", markersize=4, label=f"{label}, best layer")
        ax.set_xscale("log")
        ax.set_xlabel("tokens seen (patches)" if x_is_tokens else "optimizer step")
        ax.set_ylabel(f"{label} (probe)", color="C0")
        ax.set_title(column_label(target, unit=False))
        ax.grid(alpha=0.3, which="both")
        handles, names = ax.get_legend_handles_labels()
        if val_loss is not None and val_loss[0].size and val_loss[2] == x_is_tokens:
            positive = val_loss[0] > 0
            loss_ax = ax.twinx()
            loss_ax.plot(val_loss[0][positive], val_loss[1][positive], "-", color="C3", alpha=0.8,
                         label="validation loss")  # fmt: skip
            loss_ax.set_ylabel("validation loss", color="C3")
            more_handles, more_names = loss_ax.get_legend_handles_labels()
            handles, names = handles + more_handles, names + more_names
        ax.legend(handles, names, fontsize=7, frameon=False, loc="best")
    fig.suptitle(title or "Linear probes across training", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
