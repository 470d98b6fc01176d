"""Photo-z catastrophic outlier fraction as an offline `evaluate` metric (numpy only)."""

import evaluate
import numpy as np

from .metric_base import PairedMetric


class OutlierFraction(PairedMetric, evaluate.Metric):
    """Fraction of objects whose normalised redshift error exceeds a threshold.

        outlier_fraction = mean( |z_pred - z_true| / (1 + z_true) > threshold )

    with threshold 0.15 by default (the usual photo-z "catastrophic outlier" cut).
    """

    key = "outlier_fraction"
    inputs = ("predicted redshifts", "true redshifts, all > -1")
    options = ("threshold (float, default 0.15): the cut on |dz| / (1 + z_true); strictly greater counts.",)
    returns = "(float) in [0, 1]"
    example = ("predictions=[0.1, 1.0], references=[0.1, 0.2]", "{'outlier_fraction': 0.5}")
    redshift_references = True

    def score(self, pred: np.ndarray, true: np.ndarray, threshold: float = 0.15) -> float:
        if threshold < 0:
            raise ValueError(f"outlier_fraction: threshold must be >= 0; got {threshold}")
        return np.mean(np.abs(pred - true) / (1.0 + true) > threshold)
