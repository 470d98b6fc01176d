"""Mean absolute error as an offline `evaluate` metric (numpy only)."""

import evaluate
import numpy as np

from .metric_base import PairedMetric


class Mae(PairedMetric, evaluate.Metric):
    """MAE = mean(|y_pred - y_true|), in the units of the target."""

    key = "mae"
    example = ("predictions=[1.0, 2.0], references=[2.0, 2.0]", "{'mae': 0.5}")

    def score(self, pred: np.ndarray, true: np.ndarray) -> float:
        return np.mean(np.abs(pred - true))
