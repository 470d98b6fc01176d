"""Spectrum figures: predicted against observed spectra of a few galaxies, flux against observed wavelength."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .style import save_figure, to_numpy

__all__ = ["FLUX_LABEL", "WAVELENGTH_LABEL", "plot_spectrum_predictions"]

FLUX_LABEL = "flux density f$_\\lambda$ [10$^{-17}$ erg s$^{-1}$ cm$^{-2}$ Å$^{-1}$]"
WAVELENGTH_LABEL = "observed wavelength [Å]"
_PREDICTION_STYLES = ({"color": "C3", "linewidth": 1.0}, {"color": "C0", "linewidth": 0.8, "linestyle": "--"},
                      {"color": "C2", "linewidth": 0.8, "linestyle": ":"})


def plot_spectrum_predictions(
    wavelengths: Any,
    observed: Any,
    predictions: Mapping[str, Any],
    path: str | Path,
    masks: Any = None,
    titles: Sequence[str] | None = None,
    title: str | None = None,
    flux_label: str = FLUX_LABEL,
    note: str | None = None,
) -> Path:
    """One panel per galaxy: the observed spectrum (grey) with each prediction on top, against wavelength.

    Args:
        wavelengths: (N, L) or (L,) observed wavelengths in Å.
        observed: (N, L) observed flux (in the unit ``flux_label`` names; DESI's 1e-17 erg/s/cm²/Å by default).
        predictions: {legend label: (N, L) predicted flux in the same unit}, drawn in order.
        masks: (N, L) True for the samples to draw (padding and bad samples are left out); default all.
        titles: one caption per panel (e.g. the galaxy's id and redshift).
        title: the figure's title.
        note: a line under the panels (e.g. how the predictions were put into flux units).
    """
    observed = to_numpy(observed).astype(np.float64)
    if observed.ndim != 2 or observed.shape[0] == 0:
        raise ValueError(f"observed must be (N, L) with N >= 1; got shape {observed.shape}")
    count, length = observed.shape
    waves = np.broadcast_to(to_numpy(wavelengths).astype(np.float64), (count, length))
    good = np.ones((count, length), bool) if masks is None else np.broadcast_to(to_numpy(masks).astype(bool),
                                                                                  (count, length))
    lines = {label: to_numpy(values).astype(np.float64) for label, values in predictions.items()}
    for label, values in lines.items():
        if values.shape != observed.shape:
            raise ValueError(f"prediction {label!r} has shape {values.shape}; observed is {observed.shape}")
    fig = Figure(figsize=(7.5, 1.9 * count + 0.6))
    axes = fig.subplots(count, 1, sharex=True, squeeze=False)[:, 0]
    for row, ax in enumerate(axes):
        keep = good[row] & np.isfinite(observed[row])
        ax.plot(waves[row, keep], observed[row, keep], color="0.6", linewidth=0.6, label="observed")
        for (label, values), style in zip(lines.items(), _PREDICTION_STYLES * (1 + len(lines) // 3)):
            shown = keep & np.isfinite(values[row])
            ax.plot(waves[row, shown], values[row, shown], label=label, **style)
        if titles is not None and row < len(titles):
            ax.set_title(str(titles[row]), fontsize=8, loc="left")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False, loc="upper right", ncol=len(lines) + 1)
    axes[-1].set_xlabel(WAVELENGTH_LABEL)
    fig.supylabel(flux_label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    if note:
        fig.text(0.5, 0.0, note, ha="center", va="top", fontsize=7, wrap=True)
    return save_figure(fig, path)
