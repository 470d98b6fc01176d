"""Coefficient of determination (R²) as an offline `evaluate` metric (numpy only)."""

import evaluate
import numpy as np

from .metric_base import PairedMetric


class R2(PairedMetric, evaluate.Metric):
    """R² = 1 - sum((y_true - y_pred)^2) / sum((y_true - mean(y_true))^2).

    1 is a perfect prediction; predicting the mean of the references gives 0; worse
    than that is negative. When the references are constant the ratio is undefined:
    we then follow scikit-learn's convention and return 1.0 for an exact prediction
    and 0.0 otherwise.
    """

    key = "r2"
    example = ("predictions=[1.0, 2.0, 3.0], references=[1.0, 2.0, 3.0]", "{'r2': 1.0}")

    def score(self, pred: np.ndarray, true: np.ndarray) -> float:
        ss_res = float(np.sum((true - pred) ** 2))
        ss_tot = float(np.sum((true - true.mean()) ** 2))
        if ss_tot == 0.0:
            return 1.0 if ss_res == 0.0 else 0.0
        return 1.0 - ss_res / ss_tot
