"""Bias of redshift predictions, overall and in bins of true redshift.

σ_NMAD and the outlier fraction measure scatter around the truth; a model that regresses to the mean
of its training set (under-predicting the high-z tail, over-predicting the low-z end) can score well on
both while being biased at the ends. The bias Δz / (1 + z) = (z_pred - z_true) / (1 + z_true), as mean
and median in bins of true redshift, shows it.

Bins are ``width`` wide in true z (0-0.1, 0.1-0.2, ...) by default; a bin with fewer than ``min_count``
galaxies is merged into its neighbour (so a sparse tail becomes one "0.3+" bin), so every median rests
on enough galaxies to mean something.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["bias_bin_edges", "compute_redshift_bias", "normalised_redshift_error"]


def normalised_redshift_error(pred: Any, true: Any) -> np.ndarray:
    """Δz / (1 + z_true) of each galaxy (positive: over-predicted)."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    true = np.asarray(true, dtype=np.float64).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"predictions and references differ in length: {pred.size} vs {true.size}")
    return (pred - true) / (1.0 + true)


def bias_bin_edges(true: Any, width: float = 0.1, min_count: int = 20) -> np.ndarray:
    """Edges of bins `width` wide in `true`, with every bin holding at least `min_count` values.

    Sparse bins are merged into their neighbour, from the ends inwards (the tails are where the
    counts are low). With fewer than `min_count` values in all there is one bin.
    """
    true = np.asarray(true, dtype=np.float64).reshape(-1)
    if true.size == 0:
        raise ValueError("no values to bin")
    if not width > 0:
        raise ValueError(f"width must be positive; got {width}")
    low, high = float(true.min()), float(true.max())
    start = math.floor(low / width) * width
    count = max(1, math.ceil((high - start) / width - 1e-9))
    edges = [round(start + i * width, 10) for i in range(count + 1)]
    edges[-1] = max(edges[-1], high)
    edges = list(edges)
    while len(edges) > 2:
        counts = _counts(true, np.asarray(edges))
        if counts[-1] < min_count:
            del edges[-2]  # the top bin joins the one below it
        elif counts[0] < min_count:
            del edges[1]
        else:
            sparse = [i for i, c in enumerate(counts) if c < min_count]
            if not sparse:
                break
            inner = sparse[0]  # merge into the smaller neighbour
            del edges[inner if counts[inner - 1] <= counts[inner + 1] else inner + 1]
    return np.asarray(edges, dtype=np.float64)


def _counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.asarray([int(np.sum(_in_bin(values, edges, i))) for i in range(len(edges) - 1)])


def _in_bin(values: np.ndarray, edges: np.ndarray, index: int) -> np.ndarray:
    # [lo, hi) except the last bin, which includes its upper edge
    upper = values <= edges[index + 1] if index == len(edges) - 2 else values < edges[index + 1]
    return (values >= edges[index]) & upper


def _summary(errors: np.ndarray) -> dict[str, float]:
    return {"n": int(errors.size), "mean": float(np.mean(errors)), "median": float(np.median(errors))}


def compute_redshift_bias(pred: Any, true: Any, edges: Sequence[float] | None = None, width: float = 0.1,
                          min_count: int = 20) -> dict[str, Any]:
    """Mean and median Δz / (1 + z_true), overall and per bin of true redshift.

    Args:
        pred, true: predicted and true redshifts, (N,); non-finite pairs are left out.
        edges: bin edges in true z; default `bias_bin_edges(true, width, min_count)`. Values outside
            the edges are left out of the bins (not of "overall").
    Returns:
        {"overall": {"n", "mean", "median"}, "bins": [{"z_lo", "z_hi", "n", "mean", "median"}, ...]}
        (a bin without galaxies has n = 0 and NaN mean and median).
    """
    errors = normalised_redshift_error(pred, true)
    true = np.asarray(true, dtype=np.float64).reshape(-1)
    finite = np.isfinite(errors) & np.isfinite(true)
    if not finite.any():
        raise ValueError("no finite (prediction, true) pairs")
    errors, true = errors[finite], true[finite]
    edges = np.asarray(edges if edges is not None else bias_bin_edges(true, width, min_count), dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"edges must be at least 2 increasing values; got {edges.tolist()}")
    bins = []
    for index in range(edges.size - 1):
        chosen = errors[_in_bin(true, edges, index)]
        summary = _summary(chosen) if chosen.size else {"n": 0, "mean": math.nan, "median": math.nan}
        bins.append({"z_lo": float(edges[index]), "z_hi": float(edges[index + 1]), **summary})
    return {"overall": _summary(errors), "bins": bins}
