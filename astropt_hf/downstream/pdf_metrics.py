"""Scores of per-galaxy probability densities (`BinnedPDF`) against the true values, and their calibration.

* CRPS: the integral of (F(x) - 1[x >= y])², exact for a piecewise-constant density (its CDF is
  piecewise linear, so each bin's part is a quadratic integrated in closed form), in the target's units.
* PIT: F(y) of each galaxy; for calibrated PDFs the PIT values are uniform on [0, 1]. Their distance from
  uniform is given as the Kolmogorov-Smirnov statistic (`pit_ks`: the largest gap between their
  empirical CDF and the diagonal) and the Cramér-von Mises statistic (`pit_cvm`).
* Coverage: the fraction of true values inside the central 68% and 95% intervals.
* Point metrics of the PDF median through `astropt_hf.metrics.compute_regression_metrics`, and the bias:
  the mean of (median - true) / (1 + true) for redshifts (the usual photo-z bias), of median - true otherwise.
* Temperature scaling: one scalar T with p ∝ p_raw^(1/T), fitted to minimise the NLL of a validation
  split (T > 1 widens over-confident PDFs, T < 1 narrows timid ones); scores are reported raw and calibrated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from astropt_hf.downstream.binned_pdf import BinnedPDF

__all__ = [
    "PDFCalibration",
    "calibrate_and_score",
    "coverage",
    "crps",
    "fit_temperature",
    "mean_nll",
    "pit_distance",
    "pit_values",
    "score_pdfs",
]

COVERAGE_LEVELS = (0.68, 0.95)
TEMPERATURE_RANGE = (0.02, 50.0)


def _truth(values: Any, pdfs: BinnedPDF) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) != len(pdfs):
        raise ValueError(f"{len(values)} true values for {len(pdfs)} PDFs")
    if not np.all(np.isfinite(values)):
        raise ValueError("true values must be finite; drop the missing ones first")
    return values


def crps(pdfs: BinnedPDF, truth: Any) -> np.ndarray:
    """Continuous ranked probability score of each PDF, (N,), in the target's units (lower is better).

    Below the first edge F = 0 and above the last F = 1, so a true value outside the range adds its
    distance to the range. For a PDF concentrated in one narrow bin around x the score tends to |x - y|.
    """
    y = _truth(truth, pdfs)[:, None]
    low, high = pdfs.edges[None, :-1], pdfs.edges[None, 1:]
    cdf = pdfs.cdf_at_edges()
    f_low, f_high = cdf[:, :-1], cdf[:, 1:]
    cut = np.clip(y, low, high)  # where the step 1[x >= y] switches on inside each bin
    f_cut = f_low + (f_high - f_low) * (cut - low) / (high - low)
    # ∫ over a segment where F runs linearly from a to b of F² is length * (a² + ab + b²) / 3
    below = (cut - low) * (f_low**2 + f_low * f_cut + f_cut**2) / 3.0
    above_a, above_b = 1.0 - f_cut, 1.0 - f_high
    above = (high - cut) * (above_a**2 + above_a * above_b + above_b**2) / 3.0
    outside = np.maximum(pdfs.edges[0] - y[:, 0], 0.0) + np.maximum(y[:, 0] - pdfs.edges[-1], 0.0)
    return (below + above).sum(axis=1) + outside


def pit_values(pdfs: BinnedPDF, truth: Any) -> np.ndarray:
    """Probability integral transform F_i(y_i) of each galaxy, (N,)."""
    return pdfs.cdf(_truth(truth, pdfs))


def pit_distance(pit: Any) -> dict[str, float]:
    """How far PIT values are from uniform: {"pit_ks": KS statistic, "pit_cvm": Cramér-von Mises statistic}."""
    from scipy import stats

    pit = np.asarray(pit, dtype=np.float64).reshape(-1)
    if pit.size == 0:
        raise ValueError("no PIT values")
    return {
        "pit_ks": float(stats.kstest(pit, "uniform").statistic),
        "pit_cvm": float(stats.cramervonmises(pit, "uniform").statistic),
    }


def coverage(pdfs: BinnedPDF, truth: Any, level: float) -> float:
    """Fraction of true values inside the central `level` interval (`level` for calibrated PDFs)."""
    y = _truth(truth, pdfs)
    low, high = pdfs.interval(level)
    return float(np.mean((y >= low) & (y <= high)))


def mean_nll(pdfs: BinnedPDF, truth: Any) -> float:
    """Mean of -log p(y) (the density in the target's units), the quantity the heads are trained on."""
    return float(-np.mean(pdfs.log_density(_truth(truth, pdfs))))


def _bias(median: np.ndarray, truth: np.ndarray, photo_z: bool) -> float:
    error = median - truth
    return float(np.mean(error / (1.0 + truth) if photo_z else error))


def score_pdfs(pdfs: BinnedPDF, truth: Any, photo_z: bool = False) -> dict[str, float]:
    """CRPS (mean), NLL, PIT distance, coverage of the 68% and 95% intervals and the median's point metrics."""
    from astropt_hf.metrics import compute_regression_metrics

    y = _truth(truth, pdfs)
    median = pdfs.median()
    scores = {"crps": float(np.mean(crps(pdfs, y))), "nll": mean_nll(pdfs, y)}
    scores.update(pit_distance(pit_values(pdfs, y)))
    for level in COVERAGE_LEVELS:
        scores[f"coverage_{round(100 * level)}"] = coverage(pdfs, y, level)
    scores.update(compute_regression_metrics(median, y, photo_z=photo_z))
    scores["bias"] = _bias(median, y, photo_z)
    return scores


def fit_temperature(log_probabilities: Any, edges: Any, truth: Any) -> float:
    """The T in `TEMPERATURE_RANGE` that minimises the mean NLL of `truth` under p ∝ exp(log_p / T)."""
    from scipy.optimize import minimize_scalar

    log_probabilities = np.asarray(log_probabilities, dtype=np.float64)

    def objective(log_temperature: float) -> float:
        pdfs = BinnedPDF.from_log_probabilities(log_probabilities, edges, math.exp(log_temperature))
        return mean_nll(pdfs, truth)

    bounds = tuple(math.log(t) for t in TEMPERATURE_RANGE)
    return float(math.exp(minimize_scalar(objective, bounds=bounds, method="bounded").x))


@dataclass
class PDFCalibration:
    """Scores of the test PDFs before and after temperature scaling fitted on a validation split."""

    temperature: float
    raw: dict[str, float]
    calibrated: dict[str, float]
    validation_size: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "validation_size": self.validation_size,
                "raw": self.raw, "calibrated": self.calibrated, "notes": self.notes}  # fmt: skip


def calibrate_and_score(
    test_log_probabilities: Any,
    test_truth: Any,
    edges: Any,
    validation_log_probabilities: Any | None = None,
    validation_truth: Any | None = None,
    photo_z: bool = False,
) -> PDFCalibration:
    """Fit T on the validation PDFs and score the test PDFs raw and tempered.

    Without a validation split T stays 1 (calibrated = raw) and a note says so: fitting T on the test
    rows would flatter the calibrated scores.
    """
    notes = []
    if validation_log_probabilities is None or validation_truth is None or len(validation_truth) == 0:
        temperature, size = 1.0, 0
        notes.append("no validation split: temperature left at 1")
    else:
        temperature = fit_temperature(validation_log_probabilities, edges, validation_truth)
        size = len(validation_truth)
    raw = score_pdfs(BinnedPDF.from_log_probabilities(test_log_probabilities, edges), test_truth, photo_z)
    tempered = BinnedPDF.from_log_probabilities(test_log_probabilities, edges, temperature)
    return PDFCalibration(temperature, raw, score_pdfs(tempered, test_truth, photo_z), size, notes)
