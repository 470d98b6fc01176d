"""Classification accuracy as an offline `evaluate` metric (numpy only)."""

import evaluate
import numpy as np

from .metric_base import PairedMetric


class Accuracy(PairedMetric, evaluate.Metric):
    """Accuracy = fraction of predictions equal to the reference label.

    Labels are integers (map string labels to codes first).
    """

    key = "accuracy"
    value_type = "int"
    inputs = ("predicted labels", "true labels")
    returns = "(float) in [0, 1]"
    example = ("predictions=[0, 1, 1, 2], references=[0, 1, 2, 2]", "{'accuracy': 0.75}")

    def score(self, pred: np.ndarray, true: np.ndarray) -> float:
        return np.mean(pred == true)
