"""Mean absolute error as an offline `evaluate` metric (numpy only)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
MAE = mean(|y_pred - y_true|), in the units of the target.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): predicted values.
    references (list of float): true values.
Returns:
    mae (float)
Examples:
    >>> mae = evaluate.load("astropt_hf/metrics/mae")
    >>> mae.compute(predictions=[1.0, 2.0], references=[2.0, 2.0])
    {'mae': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Mae(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references) -> dict:
        pred = np.asarray(predictions, dtype=np.float64)
        true = np.asarray(references, dtype=np.float64)
        if pred.size == 0:
            raise ValueError("mae: got 0 predictions; need at least one")
        return {"mae": float(np.mean(np.abs(pred - true)))}
