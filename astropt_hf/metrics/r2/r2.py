"""Coefficient of determination (R²) as an offline `evaluate` metric.

Shipped with astropt_hf and loaded by path (``evaluate.load(".../metrics/r2")``),
so it needs no network. Self-contained: numpy only.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
R² = 1 - sum((y_true - y_pred)^2) / sum((y_true - mean(y_true))^2).
1 is a perfect prediction; predicting the mean of the references gives 0; worse
than that is negative. When the references are constant the ratio is undefined:
we then follow scikit-learn's convention and return 1.0 for an exact prediction
and 0.0 otherwise.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): predicted values.
    references (list of float): true values.
Returns:
    r2 (float)
Examples:
    >>> r2 = evaluate.load("astropt_hf/metrics/r2")
    >>> r2.compute(predictions=[1.0, 2.0, 3.0], references=[1.0, 2.0, 3.0])
    {'r2': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class R2(evaluate.Metric):
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
            raise ValueError("r2: got 0 predictions; need at least one")
        ss_res = float(np.sum((true - pred) ** 2))
        ss_tot = float(np.sum((true - true.mean()) ** 2))
        if ss_tot == 0.0:
            return {"r2": 1.0 if ss_res == 0.0 else 0.0}
        return {"r2": 1.0 - ss_res / ss_tot}
