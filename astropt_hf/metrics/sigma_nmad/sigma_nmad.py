"""Photo-z normalised median absolute deviation (σ_NMAD) as an offline `evaluate` metric."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
σ_NMAD, the robust scatter that photometric-redshift papers report:

    dz       = z_pred - z_true
    σ_NMAD   = 1.48 * median( |dz - median(dz)| / (1 + z_true) )

This is the common convention (e.g. Brammer et al. 2008; Dahlen et al. 2013):
the median bias is removed *before* dividing by (1 + z_true). 1.48 makes the
statistic equal the standard deviation for Gaussian scatter. `scale` changes
the constant (some authors use 1.4826).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): predicted redshifts.
    references (list of float): true (spectroscopic) redshifts, all > -1.
    scale (float, default 1.48): the normalising constant.
Returns:
    sigma_nmad (float)
Examples:
    >>> m = evaluate.load("astropt_hf/metrics/sigma_nmad")
    >>> m.compute(predictions=[0.1, 0.2, 0.3], references=[0.1, 0.2, 0.3])
    {'sigma_nmad': 0.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SigmaNmad(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references, scale: float = 1.48) -> dict:
        pred = np.asarray(predictions, dtype=np.float64)
        true = np.asarray(references, dtype=np.float64)
        if pred.size == 0:
            raise ValueError("sigma_nmad: got 0 predictions; need at least one")
        if np.any(true <= -1.0):
            raise ValueError(f"sigma_nmad: references must be redshifts > -1; got minimum {true.min()}")
        dz = pred - true
        return {"sigma_nmad": float(scale * np.median(np.abs(dz - np.median(dz)) / (1.0 + true)))}
