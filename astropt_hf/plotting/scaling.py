"""Scaling-sweep figures: final validation loss against model size with the fitted law, validation curves,
and probe scores against model size."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from astropt_hf.studies.common import probe_score
from astropt_hf.studies.scaling_laws import PowerLawFit, describe_fit, format_count

from .style import METRIC_LABELS, column_label, feature_label, plain_log_yaxis, save_figure

__all__ = ["plot_probe_scaling", "plot_scaling"]


def plot_scaling(
    sizes: Sequence[Mapping[str, Any]],
    fit: Mapping[str, Any],
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    path: str | Path,
    param_count: str = "non_embedding",
    loss_name: str = "Huber loss",
) -> Path:
    """Two panels: final validation loss against parameters (log-log, fit overlaid) and the validation
    curves of every size on one axis. `sizes` are scaling.json size entries, `fit` its fit entry;
    `loss_name` names the loss on the y axes."""
    figure = Figure(figsize=(11, 4.2))
    ax_law, ax_curves = figure.subplots(1, 2)
    done = [size for size in sizes if size.get("final_val_loss") is not None]
    colours = colormaps["viridis"](np.linspace(0.05, 0.9, max(len(sizes), 1)))
    colour_of = {size["name"]: colours[index] for index, size in enumerate(sizes)}
    if done:
        params = np.array([size["params"] for size in done], dtype=float)
        losses = np.array([size["final_val_loss"] for size in done], dtype=float)
        for size, n, loss in zip(done, params, losses):
            ax_law.scatter([n], [loss], color=colour_of[size["name"]], zorder=3, s=36)
            ax_law.annotate(size["name"], (n, loss), textcoords="offset points", xytext=(4, 5), fontsize=7)
        if fit.get("alpha") is not None and fit.get("log10_N_c") is not None:
            grid = np.logspace(np.log10(params.min()) - 0.3, np.log10(params.max()) + 0.3, 200)
            law = PowerLawFit(model=fit["model"], num_points=len(done), alpha=fit["alpha"],
                              L_inf=fit.get("L_inf"), log10_N_c=fit["log10_N_c"])
            ax_law.plot(grid, law.predict(grid), color="crimson", lw=1.5, label=describe_fit(fit))
            if fit.get("L_inf"):
                ax_law.axhline(fit["L_inf"], color="crimson", lw=0.8, ls=":")
            ax_law.legend(fontsize=8, loc="upper right")
    ax_law.set_xscale("log")
    plain_log_yaxis(ax_law)
    ax_law.set_xlabel(f"parameters ({param_count.replace('_', '-')})")
    ax_law.set_ylabel(f"final validation {loss_name}")
    ax_law.set_title("validation loss against model size")
    ax_law.grid(True, which="both", alpha=0.25)
    for size in sizes:
        steps, losses = curves.get(size["name"], ([], []))
        if steps:
            params_text = format_count(size["params"]) if size.get("params") else "?"
            ax_curves.plot(steps, losses, marker=".", color=colour_of[size["name"]],
                           label=f"{size['name']} ({params_text})")
    plain_log_yaxis(ax_curves)
    ax_curves.set_xlabel("optimiser step")
    ax_curves.set_ylabel(f"validation {loss_name}")
    ax_curves.set_title("validation curves (same data, schedule, tokens)")
    ax_curves.grid(True, which="both", alpha=0.25)
    if any(curves.values()):
        ax_curves.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path, dpi=90, bbox_inches=None)


def plot_probe_scaling(sizes: Sequence[Mapping[str, Any]], path: str | Path,
                       param_count: str = "non_embedding") -> Path | None:
    """Probe score against parameters, one panel per target, one line per feature set (astroPT,
    random init, pixel PCA). Reads each size's `probe` entry ({target: {feature_set: metrics}});
    returns None when no size has probes."""
    probed = [size for size in sizes if size.get("probe")]
    if not probed:
        return None
    targets = list(dict.fromkeys(target for size in probed for target in size["probe"]))
    columns = min(len(targets), 3)
    rows = math.ceil(len(targets) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    styles = {"astropt": dict(marker="o", color="C0"), "random_init": dict(marker="s", color="C7", ls="--"),
              "pixel_pca": dict(marker="^", color="C2", ls=":")}
    for ax, target in zip(axes.ravel(), targets):
        metric_name = None
        feature_sets = list(dict.fromkeys(fs for size in probed for fs in size["probe"].get(target, {})))
        for feature_set in feature_sets:
            xs, ys = [], []
            for size in probed:
                score = probe_score(size["probe"].get(target, {}).get(feature_set, {}))
                if score is not None:
                    metric_name = score[0]
                    xs.append(size["params"])
                    ys.append(score[1])
            if xs:
                ax.plot(xs, ys, label=feature_label(feature_set), **styles.get(feature_set, dict(marker="o")))
        ax.set_xscale("log")
        ax.set_title(column_label(target, unit=False))
        ax.set_xlabel(f"parameters ({param_count.replace('_', '-')})")
        ax.set_ylabel(METRIC_LABELS.get(metric_name, metric_name) + " (linear probe)" if metric_name else "score")
        ax.grid(True, alpha=0.25)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(targets):]:
        ax.set_visible(False)
    figure.suptitle("linear-probe score against model size")
    figure.tight_layout()
    return save_figure(figure, path, dpi=90, bbox_inches=None)
