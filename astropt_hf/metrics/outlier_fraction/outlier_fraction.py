"""Photo-z catastrophic outlier fraction as an offline `evaluate` metric (numpy only)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Fraction of objects whose normalised redshift error exceeds a threshold:

    outlier_fraction = mean( |z_pred - z_true| / (1 + z_true) > threshold )

with threshold 0.15 by default (the usual photo-z "catastrophic outlier" cut).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): predicted redshifts.
    references (list of float): true redshifts, all > -1.
    threshold (float, default 0.15): the cut on |dz| / (1 + z_true); strictly greater counts.
Returns:
    outlier_fraction (float) in [0, 1]
Examples:
    >>> m = evaluate.load("astropt_hf/metrics/outlier_fraction")
    >>> m.compute(predictions=[0.1, 1.0], references=[0.1, 0.2])
    {'outlier_fraction': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class OutlierFraction(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references, threshold: float = 0.15) -> dict:
        pred = np.asarray(predictions, dtype=np.float64)
        true = np.asarray(references, dtype=np.float64)
        if pred.size == 0:
            raise ValueError("outlier_fraction: got 0 predictions; need at least one")
        if np.any(true <= -1.0):
            raise ValueError(f"outlier_fraction: references must be redshifts > -1; got minimum {true.min()}")
        if threshold < 0:
            raise ValueError(f"outlier_fraction: threshold must be >= 0; got {threshold}")
        return {"outlier_fraction": float(np.mean(np.abs(pred - true) / (1.0 + true) > threshold))}
