"""Figures of per-galaxy probability densities (`BinnedPDF`): the PIT histogram, the coverage of central
intervals, the PDF median with its 68% interval against the truth, and a few PDFs with the true value.

Each function takes PDFs "by name" (e.g. {"raw": pdfs, "calibrated (T=1.4)": tempered}) where comparing
them is the point, and `target_label` names the axis with its units (e.g. "redshift z").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .style import save_figure

__all__ = ["plot_pdf_examples", "plot_median_vs_true", "plot_pit_histogram", "plot_pdf_coverage"]

_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
_SCORE_LABELS = {"crps": "CRPS", "coverage_68": "68% coverage", "coverage_95": "95% coverage", "bias": "bias",
                 "pit_ks": "PIT KS"}  # fmt: skip


def plot_pit_histogram(pits: Mapping[str, Any], path: str | Path, num_bins: int = 10, scores=None) -> Path:
    """Histograms of PIT values (one step line per entry) with the uniform expectation and its ±1σ
    binomial band; `scores` maps an entry to its {"pit_ks": ...} for the legend."""
    fig = Figure(figsize=(5.4, 4.0))
    axis = fig.add_subplot()
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    sizes = {len(np.asarray(p).reshape(-1)) for p in pits.values()}
    size = max(sizes)
    expected, spread = size / num_bins, math.sqrt(size * (1 / num_bins) * (1 - 1 / num_bins))
    axis.axhspan(expected - spread, expected + spread, color="0.85", label="uniform ±1σ")
    axis.axhline(expected, color="0.3", lw=1, ls="--", label="uniform")
    for (name, pit), colour in zip(pits.items(), _COLOURS):
        counts, _ = np.histogram(np.asarray(pit, dtype=np.float64).reshape(-1), bins=edges)
        label = name if not scores or name not in scores else f"{name} (KS {scores[name]['pit_ks']:.3f})"
        axis.stairs(counts, edges, color=colour, lw=2, label=label)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, None)
    axis.set_xlabel("PIT = CDF(true value)")
    axis.set_ylabel(f"galaxies per bin (of {size})")
    axis.set_title("PIT histogram (flat when calibrated)")
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, frameon=False)
    return save_figure(fig, path)


def plot_pdf_coverage(pdfs: Mapping[str, Any], truth: Any, path: str | Path, scores=None) -> Path:
    """Observed fraction of true values inside the central interval of each nominal level, against
    that level, with the diagonal of perfect calibration."""
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    levels = np.linspace(0.05, 0.95, 19)
    fig = Figure(figsize=(4.6, 4.4))
    axis = fig.add_subplot()
    axis.plot([0, 1], [0, 1], color="0.3", lw=1, ls="--", label="calibrated")
    for (name, pdf), colour in zip(pdfs.items(), _COLOURS):
        observed = []
        for level in levels:
            low, high = pdf.interval(level)
            observed.append(np.mean((truth >= low) & (truth <= high)))
        label = name
        if scores and name in scores:
            label += f" (68%: {scores[name]['coverage_68']:.2f}, 95%: {scores[name]['coverage_95']:.2f})"
        axis.plot(levels, observed, "o-", ms=3, color=colour, label=label)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_aspect("equal")
    axis.set_xlabel("nominal coverage of the central interval")
    axis.set_ylabel("observed fraction of true values inside")
    axis.set_title("Interval coverage")
    axis.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


def plot_median_vs_true(
    summary: Mapping[str, Any], truth: Any, target_label: str, path: str | Path, metrics=None,
    label: str = "PDF median, 68% interval",
) -> Path:
    """PDF median with its central 68% interval as error bars against the true value, and the 1:1 line.
    `summary` holds "median", "lo68", "hi68"; `metrics` (e.g. sigma_nmad, coverage_68) go in a corner."""
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    median = np.asarray(summary["median"], dtype=np.float64)
    error = np.stack([median - np.asarray(summary["lo68"]), np.asarray(summary["hi68"]) - median])
    fig = Figure(figsize=(5.0, 4.6))
    axis = fig.add_subplot()
    low, high = min(truth.min(), summary["lo68"].min()), max(truth.max(), summary["hi68"].max())
    pad = 0.03 * (high - low or 1.0)
    axis.plot([low - pad, high + pad], [low - pad, high + pad], color="0.3", lw=1, ls="--", label="1:1")
    axis.errorbar(truth, median, yerr=np.maximum(error, 0), fmt="o", ms=3, lw=0.8, alpha=0.7,
                  color="tab:blue", label=label)  # fmt: skip
    axis.set_xlim(low - pad, high + pad)
    axis.set_ylim(low - pad, high + pad)
    axis.set_xlabel(f"true {target_label}")
    axis.set_ylabel(f"predicted {target_label}")
    if metrics:
        from .style import METRIC_LABELS

        names = {**METRIC_LABELS, **_SCORE_LABELS}
        text = "\n".join(f"{names.get(k, k.replace('_', ' '))} = {v:.3g}" for k, v in metrics.items())
        axis.text(0.97, 0.03, text, transform=axis.transAxes, ha="right", va="bottom", fontsize=8,
                  bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})  # fmt: skip
    axis.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


def plot_pdf_examples(
    pdfs: Mapping[str, Any],
    truth: Any,
    target_label: str,
    path: str | Path,
    indices: Sequence[int] | None = None,
    ids: Sequence[str] | None = None,
    ncols: int = 3,
) -> Path:
    """A few galaxies' PDFs (density per unit of the target, one line per entry of `pdfs`) with the
    true value marked, each panel zoomed on its central 99.8%; default: six galaxies spread over the
    range of true values."""
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    if indices is None:
        order = np.argsort(truth)
        indices = order[np.linspace(0, len(order) - 1, min(6, len(order))).round().astype(int)]
    nrows = math.ceil(len(indices) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.6 * nrows), layout="constrained")
    for panel, index in enumerate(indices):
        axis = fig.add_subplot(nrows, ncols, panel + 1)
        for (name, pdf), colour in zip(pdfs.items(), _COLOURS):
            axis.stairs(pdf.densities[index], pdf.edges, color=colour, lw=1.5, label=name)
        axis.axvline(truth[index], color="black", lw=1.5, ls="--", label="true value")
        # zoom on where the mass is (and the true value): a narrow PDF over a wide range is a spike
        low = min([truth[index]] + [pdf.quantile(0.001)[index] for pdf in pdfs.values()])
        high = max([truth[index]] + [pdf.quantile(0.999)[index] for pdf in pdfs.values()])
        pad = 0.1 * (high - low or 1.0)
        axis.set_xlim(low - pad, high + pad)
        axis.set_ylim(0, None)
        title = ids[index] if ids is not None else f"galaxy {index}"
        axis.set_title(f"{title}: true {truth[index]:.3g}", fontsize=8)
        axis.set_xlabel(target_label, fontsize=8)
        axis.set_ylabel("probability density", fontsize=8)
        axis.tick_params(labelsize=7)
        if panel == 0:
            axis.legend(fontsize=7)
    return save_figure(fig, path)
