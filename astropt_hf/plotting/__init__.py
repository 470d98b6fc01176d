"""Every figure of the package, one module per subject: `galaxies` (colour composites, prediction grids,
neighbours), `training` (loss curves), `probes` (probe bars, predicted against true, confusion matrices),
`scaling` and `normalisation` (the two studies), `similarity` (k-NN benchmark); `style` holds what they share.

Everything draws on a bare `matplotlib.figure.Figure` (rendered by Agg), never through
pyplot, so importing this package changes no global backend, needs no display and leaks
no open figures. Each `plot_*` function writes one PNG and returns its path.
"""

from .galaxies import galaxy_rgb, plot_galaxy_grid, plot_neighbours
from .normalisation import plot_normalisation_study
from .probes import plot_confusion_matrix, plot_pred_vs_true, plot_pred_vs_true_grid, plot_probe_bars
from .scaling import plot_probe_scaling, plot_scaling
from .similarity import plot_knn_benchmark
from .training import plot_loss_curves

__all__ = [
    "galaxy_rgb",
    "plot_confusion_matrix",
    "plot_galaxy_grid",
    "plot_knn_benchmark",
    "plot_loss_curves",
    "plot_neighbours",
    "plot_normalisation_study",
    "plot_pred_vs_true",
    "plot_pred_vs_true_grid",
    "plot_probe_bars",
    "plot_probe_scaling",
    "plot_scaling",
]
