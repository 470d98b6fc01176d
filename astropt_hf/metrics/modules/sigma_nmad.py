"""Photo-z normalised median absolute deviation (σ_NMAD) as an offline `evaluate` metric."""

import evaluate
import numpy as np

from .metric_base import PairedMetric


class SigmaNmad(PairedMetric, evaluate.Metric):
    """σ_NMAD, the robust scatter that photometric-redshift papers report.

        dz       = z_pred - z_true
        σ_NMAD   = 1.48 * median( |dz - median(dz)| / (1 + z_true) )

    This is the common convention (e.g. Brammer et al. 2008; Dahlen et al. 2013):
    the median bias is removed *before* dividing by (1 + z_true). 1.48 makes the
    statistic equal the standard deviation for Gaussian scatter. `scale` changes
    the constant (some authors use 1.4826).
    """

    key = "sigma_nmad"
    inputs = ("predicted redshifts", "true (spectroscopic) redshifts, all > -1")
    options = ("scale (float, default 1.48): the normalising constant.",)
    example = ("predictions=[0.1, 0.2, 0.3], references=[0.1, 0.2, 0.3]", "{'sigma_nmad': 0.0}")
    redshift_references = True

    def score(self, pred: np.ndarray, true: np.ndarray, scale: float = 1.48) -> float:
        dz = pred - true
        return scale * np.median(np.abs(dz - np.median(dz)) / (1.0 + true))
