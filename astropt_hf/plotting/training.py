"""Pretraining figures: training and validation loss curves from metrics.jsonl rows."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .style import save_figure

__all__ = ["plot_loss_curves"]


_TRAIN_KEYS = ("train_loss", "loss")
_VAL_KEYS = ("val_loss", "eval_loss")


def _read_records(source: Any) -> list[dict]:
    if isinstance(source, (str, Path)):
        with open(source) as handle:
            return [json.loads(line) for line in handle if line.strip()]
    return list(source)


def _series(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    steps, values = [], []
    for record in records:
        value = next((record[key] for key in keys if record.get(key) is not None), None)
        if value is not None and "step" in record:
            steps.append(float(record["step"]))
            values.append(float(value))
    order = np.argsort(steps, kind="stable")
    return np.asarray(steps)[order], np.asarray(values)[order]


def plot_loss_curves(
    metrics_records: Any,
    path: str | Path,
    log_y: bool | str = "auto",
    title: str = "Training",
) -> Path:
    """Training and validation loss against optimiser step.

    Args:
        metrics_records: the metrics.jsonl rows (dicts with "step" and "train_loss" and/or
            "val_loss"; Trainer's "loss" / "eval_loss" are accepted too), a path to such a .jsonl
            file, or {run_name: rows or path} to overlay several runs (one colour per run).
        log_y: True, False, or "auto" (log when the plotted losses span more than a factor 10).
    """
    runs = (
        {name: _read_records(rows) for name, rows in metrics_records.items()}
        if isinstance(metrics_records, Mapping)
        else {"": _read_records(metrics_records)}
    )
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    plotted: list[np.ndarray] = []
    for index, (run, records) in enumerate(runs.items()):
        colour = f"C{index}"
        for keys, style, label in ((_TRAIN_KEYS, "-", "train"), (_VAL_KEYS, "o--", "validation")):
            steps, values = _series(records, keys)
            if steps.size:
                name = f"{run} {label}".strip()
                ax.plot(steps, values, style, color=colour if run else None, label=name, markersize=3)
                plotted.append(values)
    if not plotted:
        raise ValueError(
            "no records with 'step' and a loss ('train_loss', 'loss', 'val_loss' or 'eval_loss')"
        )
    positive = np.concatenate(plotted)
    positive = positive[np.isfinite(positive) & (positive > 0)]
    if log_y == "auto":
        log_y = positive.size > 0 and positive.max() / positive.min() > 10.0
    if log_y and positive.size:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
