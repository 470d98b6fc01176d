"""Classification accuracy as an offline `evaluate` metric (numpy only)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy = fraction of predictions equal to the reference label.
Labels are integers (map string labels to codes first).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
Returns:
    accuracy (float) in [0, 1]
Examples:
    >>> acc = evaluate.load("astropt_hf/metrics/accuracy")
    >>> acc.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    {'accuracy': 0.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references) -> dict:
        pred = np.asarray(predictions)
        true = np.asarray(references)
        if pred.size == 0:
            raise ValueError("accuracy: got 0 predictions; need at least one")
        return {"accuracy": float(np.mean(pred == true))}
