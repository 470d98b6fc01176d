"""Per-galaxy probability densities of a continuous target, as the PDF heads of
`AstroPTForImageClassification` give them: probabilities over bins, read as a piecewise-constant density.

    pdfs = BinnedPDF.from_outputs(logits, model.config)      # either PDF head
    pdfs.median(), pdfs.mode(), pdfs.mean(), pdfs.interval(0.68)
    pdfs.cdf(z_true)                                          # the PIT values

Quantiles (the median and the central intervals) are interpolated linearly within a bin, which is exact
for a density that is constant inside each bin. A temperature T > 1 widens every PDF (p ∝ p_raw^(1/T)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import log_softmax, ndtr

__all__ = ["BinnedPDF", "bin_log_probabilities"]


def bin_log_probabilities(outputs: Any, config) -> np.ndarray:
    """Log-probability of each bin of `config.pdf_bins`, (N, num_bins), from the head's outputs (numpy or
    torch). The mixture head's mass outside the bins' range is dropped and the rest renormalised."""
    if hasattr(outputs, "detach"):
        outputs = outputs.detach().double().cpu().numpy()
    outputs = np.asarray(outputs, dtype=np.float64)
    if config.head_type == "binned_pdf":
        return log_softmax(outputs, axis=-1)
    if config.head_type != "gaussian_mixture":
        raise ValueError(f"head_type={config.head_type!r} has no PDF; expected 'binned_pdf' or 'gaussian_mixture'")
    import torch

    from astropt_hf.modeling_astropt import gaussian_mixture_parameters

    edges = np.asarray(config.pdf_bins, dtype=np.float64)
    parameters = gaussian_mixture_parameters(torch.from_numpy(outputs), torch.from_numpy(edges))
    log_weights, means, widths = (value.double().numpy() for value in parameters)
    cdf = ndtr((edges[None, :, None] - means[:, None, :]) / widths[:, None, :])  # (N, M + 1, K)
    mass = np.maximum((np.diff(cdf, axis=1) * np.exp(log_weights)[:, None, :]).sum(-1), 1e-300)
    return np.log(mass / mass.sum(-1, keepdims=True))


@dataclass(frozen=True)
class BinnedPDF:
    """N densities over the same M bins: `edges` (M + 1,) increasing, `probabilities` (N, M), rows summing to 1."""

    edges: np.ndarray
    probabilities: np.ndarray

    def __post_init__(self):
        edges, probabilities = np.asarray(self.edges, np.float64), np.atleast_2d(np.asarray(self.probabilities, np.float64))
        if edges.ndim != 1 or len(edges) < 2 or not np.all(np.diff(edges) > 0):
            raise ValueError(f"edges must be at least 2 increasing values; got {edges}")
        if probabilities.shape[-1] != len(edges) - 1:
            raise ValueError(f"probabilities have {probabilities.shape[-1]} bins; edges give {len(edges) - 1}")
        total = probabilities.sum(axis=1, keepdims=True)
        if np.any(probabilities < 0) or not np.all(np.isfinite(total)) or np.any(total <= 0):
            raise ValueError("probabilities must be finite, non-negative and not all zero in a row")
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "probabilities", probabilities / total)

    @classmethod
    def from_log_probabilities(cls, log_probabilities: Any, edges: Any, temperature: float = 1.0) -> BinnedPDF:
        """Densities from (unnormalised) log-probabilities per bin, tempered by `temperature`."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        tempered = log_softmax(np.asarray(log_probabilities, dtype=np.float64) / temperature, axis=-1)
        return cls(np.asarray(edges, dtype=np.float64), np.exp(tempered))

    @classmethod
    def from_outputs(cls, outputs: Any, config, temperature: float = 1.0) -> BinnedPDF:
        """Densities from a PDF head's outputs (`logits`) and its config (head type and `pdf_bins`)."""
        return cls.from_log_probabilities(bin_log_probabilities(outputs, config), config.pdf_bins, temperature)

    def __len__(self) -> int:
        return len(self.probabilities)

    @property
    def widths(self) -> np.ndarray:
        return np.diff(self.edges)

    @property
    def centres(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2

    @property
    def densities(self) -> np.ndarray:
        """Probability per unit of the target in each bin, (N, M); it integrates to 1 over the range."""
        return self.probabilities / self.widths

    def cdf_at_edges(self) -> np.ndarray:
        """(N, M + 1): 0 at the first edge, 1 at the last."""
        cumulative = np.cumsum(self.probabilities, axis=1)
        return np.concatenate([np.zeros((len(self), 1)), cumulative / cumulative[:, -1:]], axis=1)  # exact 1 at the end

    def cdf(self, values: Any) -> np.ndarray:
        """F_i(values_i), (N,): 0 below the range, 1 above it (the PIT values of the true targets)."""
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        rows = np.arange(len(self))
        index = np.clip(np.searchsorted(self.edges, values, side="right") - 1, 0, len(self.widths) - 1)
        inside = np.clip((values - self.edges[index]) / self.widths[index], 0.0, 1.0)
        result = self.cdf_at_edges()[rows, index] + inside * self.probabilities[rows, index]
        return np.clip(result, 0.0, 1.0)

    def log_density(self, values: Any) -> np.ndarray:
        """log p_i(values_i), (N,); values outside the range count in the end bins (as the training loss).
        An empty bin reads as the smallest positive float, so a mean over galaxies stays finite."""
        values = np.clip(np.asarray(values, dtype=np.float64).reshape(-1), self.edges[0], self.edges[-1])
        index = np.clip(np.searchsorted(self.edges, values, side="right") - 1, 0, len(self.widths) - 1)
        return np.log(np.maximum(self.densities[np.arange(len(self)), index], np.finfo(np.float64).tiny))

    def quantile(self, q: float) -> np.ndarray:
        """The value below which each PDF puts a fraction `q` of its mass, (N,)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1]; got {q}")
        cumulative = self.cdf_at_edges()
        # the bin where the CDF reaches q: every earlier bin ends below q, so this one has mass > 0
        index = np.minimum((cumulative[:, 1:] < q).sum(axis=1), len(self.widths) - 1)
        rows = np.arange(len(self))
        mass = cumulative[rows, index + 1] - cumulative[rows, index]
        fraction = np.clip((q - cumulative[rows, index]) / np.maximum(mass, 1e-300), 0.0, 1.0)
        return self.edges[index] + fraction * self.widths[index]

    def median(self) -> np.ndarray:
        return self.quantile(0.5)

    def mode(self) -> np.ndarray:
        """Centre of the bin of highest density."""
        return self.centres[np.argmax(self.densities, axis=1)]

    def mean(self) -> np.ndarray:
        return (self.probabilities * self.centres).sum(axis=1)

    def interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Central interval holding `level` of the mass: the (1 - level) / 2 and (1 + level) / 2 quantiles."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1); got {level}")
        return self.quantile((1.0 - level) / 2.0), self.quantile((1.0 + level) / 2.0)

    def summary(self) -> dict[str, np.ndarray]:
        """Median, mode, mean and the central 68% and 95% intervals, each (N,)."""
        lo68, hi68 = self.interval(0.68)
        lo95, hi95 = self.interval(0.95)
        return {"median": self.median(), "mode": self.mode(), "mean": self.mean(),
                "lo68": lo68, "hi68": hi68, "lo95": lo95, "hi95": hi95}  # fmt: skip
