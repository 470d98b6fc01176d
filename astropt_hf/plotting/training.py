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
    run_name: str | None = None,
    loss_name: str = "Huber loss",
    loss_target: str = "normalised patches",
    tail_fraction: float | None = 0.25,
    log_x: bool = False,
    parts: Sequence[str] = (),
) -> Path:
    """Training and validation loss against optimiser step.

    Args:
        metrics_records: the metrics.jsonl rows (dicts with "step" and "train_loss" and/or
            "val_loss"; Trainer's "loss" / "eval_loss" are accepted too), a path to such a .jsonl
            file, or {run_name: rows or path} to overlay several runs (one colour per run).
        log_y: True, False, or "auto" (log when the plotted losses span more than a factor 10).
        title, run_name: the title reads "<title> — <run_name>" (e.g. the run's output folder name).
        loss_name, loss_target: the y label reads "<loss_name> on <loss_target>".
        tail_fraction: an inset shows the last this-fraction of the steps on its own y range, so the
            end of a run is not squashed against the early drop; None (or a run of a few steps) draws none.
        log_x: a log-scaled step axis instead (step 0 is left out); the inset is then not drawn.
        parts: loss parts logged beside the totals (e.g. "image_loss", "spectrum_loss" of a model with
            spectra: records with "train_<part>" and "val_<part>"), drawn as thinner extra curves.
    """
    runs = (
        {name: _read_records(rows) for name, rows in metrics_records.items()}
        if isinstance(metrics_records, Mapping)
        else {"": _read_records(metrics_records)}
    )
    curves = [(_TRAIN_KEYS, "-", "train"), (_VAL_KEYS, "o--", "validation")]
    for part in parts:
        name = part.replace("_", " ")
        curves += [((f"train_{part}",), ":", f"train {name}"), ((f"val_{part}",), "s:", f"validation {name}")]
    series = []
    for index, (run, records) in enumerate(runs.items()):
        for keys, style, label in curves:
            steps, values = _series(records, keys)
            if log_x:
                steps, values = steps[steps > 0], values[steps > 0]
            if steps.size:
                series.append((steps, values, style, f"C{index}" if run else None, f"{run} {label}".strip()))
    if not series:
        raise ValueError(
            "no records with 'step' and a loss ('train_loss', 'loss', 'val_loss' or 'eval_loss')"
        )
    fig = Figure(figsize=(6.8, 4.4))
    ax = fig.add_subplot()
    for steps, values, style, colour, name in series:
        ax.plot(steps, values, style, color=colour, label=name, markersize=3, linewidth=1.5 if ":" not in style else 1)
    positive = np.concatenate([values for _, values, *_ in series])
    positive = positive[np.isfinite(positive) & (positive > 0)]
    if log_y == "auto":
        log_y = positive.size > 0 and positive.max() / positive.min() > 10.0
    if log_y and positive.size:
        ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("optimiser step" + (" (log scale)" if log_x else ""))
    ax.set_ylabel(f"{loss_name} on {loss_target}" if loss_target else loss_name)
    ax.set_title(f"{title} — {run_name}" if run_name else title)
    ax.legend(fontsize=8, frameon=False, loc="lower left")
    ax.grid(alpha=0.3)
    if tail_fraction and not log_x:
        _tail_inset(ax, series, tail_fraction)
    return save_figure(fig, path)


def _tail_inset(ax, series, tail_fraction: float) -> None:
    """Zoom on the last `tail_fraction` of the steps in the upper right, where a falling loss leaves room."""
    last = max(float(steps.max()) for steps, *_ in series)
    first = min(float(steps.min()) for steps, *_ in series)
    start = last - tail_fraction * (last - first)
    tails = [(steps[steps >= start], values[steps >= start]) for steps, values, *_ in series]
    if max(len(steps) for steps, _ in tails) < 3:
        return
    inset = ax.inset_axes((0.52, 0.5, 0.45, 0.4))
    for (steps, values), (_, _, style, colour, _) in zip(tails, series):
        if steps.size:
            inset.plot(steps, values, style, color=colour, markersize=2, linewidth=1)
    values = np.concatenate([v for _, v in tails if v.size])
    values = values[np.isfinite(values)]
    if values.size:
        low, high = float(values.min()), float(values.max())
        margin = 0.05 * (high - low) if high > low else 0.05 * abs(high) or 0.05
        inset.set_ylim(low - margin, high + margin)
    inset.set_xlim(start, last)
    inset.tick_params(labelsize=6)
    inset.set_title(f"last {tail_fraction:.0%} of the steps", fontsize=7)
    inset.grid(alpha=0.3)
