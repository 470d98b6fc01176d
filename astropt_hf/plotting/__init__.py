"""Figures for probes, training curves, galaxy images and similarity search.

Everything draws on a bare `matplotlib.figure.Figure` (rendered by Agg), never through
pyplot, so importing this module changes no global backend, needs no display and leaks
no open figures. Each `plot_*` function writes one PNG and returns its path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from .scaling import plot_probe_scaling, plot_scaling

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

_METRIC_LABELS = {
    "r2": "R²",
    "mae": "MAE",
    "sigma_nmad": "σ_NMAD",
    "outlier_fraction": "outlier fraction",
    "accuracy": "accuracy",
    "f1_macro": "F1 (macro)",
}


def _to_numpy(array: Any) -> np.ndarray:
    """numpy view of an array or a (possibly bf16, GPU) torch tensor, without importing torch."""
    if hasattr(array, "detach"):
        array = array.detach().float().cpu().numpy()
    return np.asarray(array)


def _save(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


# --------------------------------------------------------------------------- probes


def plot_probe_bars(
    results: Any,
    path: str | Path,
    metric: str | Sequence[str] = "r2",
    feature_order: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Grouped bar chart: one group per target, one bar per model / feature set.

    Args:
        results: {"targets": {TARGET: {MODEL: {metric: value}}}} (probe_results.json), its inner
            "targets" mapping, or a `ProbeSuiteResult`.
        metric: metric name, or several names tried in order per target (e.g. ("r2", "accuracy")
            to put regression and classification targets in one chart). Targets with none of
            them are left out.
        feature_order: order of the bars in each group (default: first-seen order).
    """
    results = getattr(results, "results", results)
    per_target = results.get("targets", results)
    metric_names = [metric] if isinstance(metric, str) else list(metric)

    chosen: dict[str, tuple[str, dict[str, float]]] = {}
    for target, by_model in per_target.items():
        for name in metric_names:
            values = {model: scores[name] for model, scores in by_model.items() if name in scores}
            if values:
                chosen[target] = (name, values)
                break
    if not chosen:
        raise ValueError(
            f"no target in the results has the metric {metric_names}; targets: {list(per_target)}"
        )
    models = (
        list(feature_order)
        if feature_order
        else list(dict.fromkeys(m for _, v in chosen.values() for m in v))
    )

    fig = Figure(figsize=(max(5.0, 1.0 + 0.45 * len(chosen) * (len(models) + 1)), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / len(models)
    positions = np.arange(len(chosen))
    for index, model in enumerate(models):
        heights = [values.get(model, np.nan) for _, values in chosen.values()]
        bars = ax.bar(positions + (index - (len(models) - 1) / 2) * width, heights, width, label=model)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    labels = [
        target if len(metric_names) == 1 else f"{target}\n({_METRIC_LABELS.get(name, name)})"
        for target, (name, _) in chosen.items()
    ]
    ax.set_xticks(
        positions, labels, rotation=30 if len(chosen) > 4 else 0, ha="right" if len(chosen) > 4 else "center"
    )
    ax.set_ylabel(" / ".join(_METRIC_LABELS.get(name, name) for name in metric_names))
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title or "Linear probes")
    return _save(fig, path)


def plot_normalisation_study(variants: Sequence[Mapping[str, Any]], targets: Sequence[str], path: str | Path,
                             metric: str = "r2") -> Path:
    """Grouped bars of astroPT's probe score per target, one bar per normalisation variant, with the
    random-init model (black bar) and pixel PCA (grey cross) under the same normalisation marked on each.

    Args:
        variants: [{"name": ..., "probe": {TARGET: {"astropt": {metric: v}, "random_init": ..., "pixel_pca": ...}}}]
            (the "variants" of normalisations.json).
    """
    fig = Figure(figsize=(max(6.0, 1.4 * len(targets) * max(1, len(variants)) / 2 + 2), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(variants))
    positions = np.arange(len(targets))
    for index, variant in enumerate(variants):
        x = positions + (index - (len(variants) - 1) / 2) * width
        scores = {name: [variant["probe"][t].get(name, {}).get(metric, np.nan) for t in targets]
                  for name in ("astropt", "random_init", "pixel_pca")}
        bars = ax.bar(x, scores["astropt"], width * 0.92, label=f"astroPT, {variant['name']}", color=f"C{index}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
        ax.plot(x, scores["random_init"], linestyle="none", marker="_", markersize=14 * width / 0.2, color="black",
                markeredgewidth=2, label="random init (same input)" if index == 0 else None)
        ax.plot(x, scores["pixel_pca"], linestyle="none", marker="x", markersize=5, color="0.45",
                label="pixel PCA (same input)" if index == 0 else None)
    ax.set_xticks(positions, list(targets))
    ax.set_ylabel(_METRIC_LABELS.get(metric, metric) + " (linear probe, held-out galaxies)")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.08)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.legend(fontsize=7, frameon=False, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.set_title("Input normalisation: astroPT probes (bars) against baselines on the same input (markers)")
    return _save(fig, path)


def _format_metrics(metrics: Mapping[str, float]) -> str:
    return "\n".join(
        f"{_METRIC_LABELS.get(name, name)} = {value:.3f}"
        for name, value in metrics.items()
        if isinstance(value, float)
    )


def _draw_pred_vs_true(
    ax, pred: np.ndarray, true: np.ndarray, title: str, metrics: Mapping[str, float]
) -> None:
    low = float(min(np.min(pred), np.min(true)))
    high = float(max(np.max(pred), np.max(true)))
    if high == low:
        low, high = low - 0.5, high + 0.5
    padding = 0.02 * (high - low)
    extent = (low - padding, high + padding, low - padding, high + padding)
    hexes = ax.hexbin(true, pred, gridsize=40, extent=extent, mincnt=1, norm=LogNorm(), cmap="viridis")
    ax.figure.colorbar(hexes, ax=ax, label="galaxies")
    ax.plot(extent[:2], extent[:2], color="red", linewidth=1.0, linestyle="--", label="1:1")
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    ax.set_aspect("equal")
    ax.set_xlabel(f"true {title}")
    ax.set_ylabel(f"predicted {title}")
    ax.set_title(title)
    text = _format_metrics(metrics)
    if text:
        ax.text(
            0.03, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
        )  # fmt: skip


def _regression_pair(pred: Any, true: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    pred = _to_numpy(pred).astype(np.float64).ravel()
    true = _to_numpy(true).astype(np.float64).ravel()
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(
            f"{what}: predictions and true values must be equal-length and non-empty; got {pred.shape}, {true.shape}"
        )
    finite = np.isfinite(pred) & np.isfinite(true)
    if not finite.any():
        raise ValueError(f"{what}: no finite (prediction, true) pairs to plot")
    return pred[finite], true[finite]


def plot_pred_vs_true(
    pred: Any,
    true: Any,
    target_name: str,
    path: str | Path,
    metrics: Mapping[str, float] | None = None,
    photo_z: bool = False,
) -> Path:
    """Hexbin of predicted against true values with the 1:1 line and the metrics in a corner.

    `metrics` defaults to `compute_regression_metrics(pred, true, photo_z)` (non-finite pairs dropped).
    """
    pred, true = _regression_pair(pred, true, target_name)
    if metrics is None:
        from astropt_hf.metrics import compute_regression_metrics

        metrics = compute_regression_metrics(pred, true, photo_z=photo_z)
    fig = Figure(figsize=(5.0, 4.4))
    _draw_pred_vs_true(fig.add_subplot(), pred, true, target_name, metrics)
    return _save(fig, path)


def plot_pred_vs_true_grid(
    entries: Mapping[str, Any],
    path: str | Path,
    ncols: int = 3,
    photo_z_targets: Sequence[str] = (),
    title: str | None = None,
) -> Path:
    """Several predicted-vs-true hexbins in one figure, one panel per target.

    Args:
        entries: target name -> a `ProbeResult` (its `.predictions`, `.true`, `.metrics` are used)
            or a (pred, true) pair (metrics then computed, with photo-z ones for `photo_z_targets`).
            Entries with non-numeric values (classification labels) are skipped.
    """
    panels = []
    for name, entry in entries.items():
        if hasattr(entry, "predictions"):
            pred, true, metrics = entry.predictions, entry.true, entry.metrics
        else:
            (pred, true), metrics = entry, None
        if not (
            np.issubdtype(np.asarray(pred).dtype, np.number)
            and np.issubdtype(np.asarray(true).dtype, np.number)
        ):
            continue
        pred, true = _regression_pair(pred, true, name)
        if metrics is None:
            from astropt_hf.metrics import compute_regression_metrics

            metrics = compute_regression_metrics(pred, true, photo_z=name in photo_z_targets)
        panels.append((name, pred, true, metrics))
    if not panels:
        raise ValueError(f"no numeric (regression) entries to plot among {list(entries)}")
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 4.2 * nrows))
    for index, (name, pred, true, metrics) in enumerate(panels):
        _draw_pred_vs_true(fig.add_subplot(nrows, ncols, index + 1), pred, true, name, metrics)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(pred_labels: Any, true_labels: Any, path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: true label, columns: predicted) with counts."""
    pred = _to_numpy(pred_labels).ravel()
    true = _to_numpy(true_labels).ravel()
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(
            f"confusion matrix: labels must be equal-length and non-empty; got {pred.shape}, {true.shape}"
        )
    classes, codes = np.unique(np.concatenate([true, pred]), return_inverse=True)
    true_codes, pred_codes = codes[: true.size], codes[true.size :]
    counts = np.zeros((classes.size, classes.size), dtype=np.int64)
    np.add.at(counts, (true_codes, pred_codes), 1)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.5 + 0.6 * classes.size
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    image = ax.imshow(fractions, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(image, ax=ax, label="fraction of true class")
    for row in range(classes.size):
        for column in range(classes.size):
            colour = "white" if fractions[row, column] > 0.5 else "black"
            ax.text(column, row, str(counts[row, column]), ha="center", va="center", fontsize=8, color=colour)
    labels = [str(label) for label in classes]
    ax.set_xticks(range(classes.size), labels, rotation=45, ha="right")
    ax.set_yticks(range(classes.size), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


# --------------------------------------------------------------------------- training


_TRAIN_KEYS = ("train_loss", "loss")
_VAL_KEYS = ("val_loss", "eval_loss")


def _read_records(source: Any) -> list[dict]:
    if isinstance(source, (str, Path)):
        with open(source) as handle:
            return [json.loads(line) for line in handle if line.strip()]
    return list(source)


def _series(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    steps, values = [], []
    for record in records:
        value = next((record[key] for key in keys if record.get(key) is not None), None)
        if value is not None and "step" in record:
            steps.append(float(record["step"]))
            values.append(float(value))
    order = np.argsort(steps, kind="stable")
    return np.asarray(steps)[order], np.asarray(values)[order]


def plot_loss_curves(
    metrics_records: Any,
    path: str | Path,
    log_y: bool | str = "auto",
    title: str = "Training",
) -> Path:
    """Training and validation loss against optimiser step.

    Args:
        metrics_records: the metrics.jsonl rows (dicts with "step" and "train_loss" and/or
            "val_loss"; Trainer's "loss" / "eval_loss" are accepted too), a path to such a .jsonl
            file, or {run_name: rows or path} to overlay several runs (one colour per run).
        log_y: True, False, or "auto" (log when the plotted losses span more than a factor 10).
    """
    runs = (
        {name: _read_records(rows) for name, rows in metrics_records.items()}
        if isinstance(metrics_records, Mapping)
        else {"": _read_records(metrics_records)}
    )
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    plotted: list[np.ndarray] = []
    for index, (run, records) in enumerate(runs.items()):
        colour = f"C{index}"
        for keys, style, label in ((_TRAIN_KEYS, "-", "train"), (_VAL_KEYS, "o--", "validation")):
            steps, values = _series(records, keys)
            if steps.size:
                name = f"{run} {label}".strip()
                ax.plot(steps, values, style, color=colour if run else None, label=name, markersize=3)
                plotted.append(values)
    if not plotted:
        raise ValueError(
            "no records with 'step' and a loss ('train_loss', 'loss', 'val_loss' or 'eval_loss')"
        )
    positive = np.concatenate(plotted)
    positive = positive[np.isfinite(positive) & (positive > 0)]
    if log_y == "auto":
        log_y = positive.size > 0 and positive.max() / positive.min() > 10.0
    if log_y and positive.size:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------- images


def galaxy_rgb(
    image: Any,
    rgb_bands: Sequence[int] | None = None,
    softening: float = 10.0,
    percentiles: tuple[float, float] = (1.0, 99.5),
    black_point: str = "sky",
) -> np.ndarray:
    """Colour picture of a multi-band cutout: (C, H, W) -> (H, W, 3) floats in [0, 1].

    Band mapping (bands ordered blue to red, as in grz): 3 bands -> R = band 2 (z),
    G = band 1 (r), B = band 0 (g); 1 band (or a 2-D image) -> grey; 2 bands -> R = band 1,
    B = band 0, G = their mean. Other band counts need `rgb_bands` = (R, G, B) indices.

    Stretch: one linear scaling for all bands (so colours keep their ratios): the black point maps
    to 0 and the high percentile of the per-pixel brightest band maps to 1; then
    y = asinh(softening * x) / asinh(softening), clipped to [0, 1]. The asinh keeps faint outskirts
    visible next to a bright core. NaNs become black. `black_point="sky"` (default) is the median of
    the stamp's border pixels, so blank sky is dark and its noise does not fill the picture;
    `"percentile"` uses the low percentile of all pixels instead.
    """
    if black_point not in ("sky", "percentile"):
        raise ValueError(f"galaxy_rgb: black_point={black_point!r} is not valid; expected 'sky' or 'percentile'")
    array = _to_numpy(image).astype(np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"galaxy_rgb: expected an image (C, H, W) or (H, W); got shape {array.shape}")
    n_bands = array.shape[0]
    array = np.where(np.isfinite(array), array, np.nan)
    if rgb_bands is not None:
        if len(rgb_bands) != 3 or not all(-n_bands <= band < n_bands for band in rgb_bands):
            raise ValueError(f"galaxy_rgb: rgb_bands must be 3 band indices below {n_bands}; got {rgb_bands}")
        rgb = array[list(rgb_bands)]
    elif n_bands == 3:
        rgb = array[::-1]
    elif n_bands == 1:
        rgb = np.repeat(array, 3, axis=0)
    elif n_bands == 2:
        rgb = np.stack([array[1], array.mean(axis=0), array[0]])
    else:
        raise ValueError(
            f"galaxy_rgb: no default colour mapping for {n_bands} bands; pass rgb_bands=(R, G, B)"
        )

    if np.all(np.isnan(rgb)):
        return np.zeros(rgb.shape[1:] + (3,))
    low = np.nanpercentile(rgb, percentiles[0])
    if black_point == "sky":
        width = max(1, min(rgb.shape[1:]) // 16)
        border = np.ones(rgb.shape[1:], dtype=bool)
        border[width:-width, width:-width] = False
        sky = rgb[:, border]
        if np.isfinite(sky).any():
            low = max(low, float(np.nanmedian(sky)))
    # The brightest band per pixel sets the white point, so a source bright in one band only
    # (a small red blob) is not pushed off the top of the scale.
    brightest = np.nanmax(rgb, axis=0)
    high = np.nanpercentile(brightest, percentiles[1])
    if high <= low:
        high = np.nanmax(brightest)
    if high <= low:
        return np.zeros(rgb.shape[1:] + (3,))
    scaled = np.clip((rgb - low) / (high - low), 0.0, None)
    stretched = np.arcsinh(softening * scaled) / np.arcsinh(softening)
    stretched = np.nan_to_num(stretched, nan=0.0)
    return np.clip(np.moveaxis(stretched, 0, -1), 0.0, 1.0)


def _image_stack(images: Any, what: str) -> np.ndarray:
    array = _to_numpy(images)
    if array.ndim == 3:  # (N, H, W): one band
        array = array[:, None]
    if array.ndim != 4:
        raise ValueError(f"{what}: expected images (N, C, H, W); got shape {array.shape}")
    return array


def _show(ax, image: np.ndarray, title: str | None) -> None:
    ax.imshow(galaxy_rgb(image), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def plot_galaxy_grid(
    inputs: Any,
    predictions: Any,
    path: str | Path,
    titles: Sequence[str] | None = None,
    max_columns: int = 8,
    prediction_label: str = "prediction",
) -> Path:
    """Input images above the model's next-patch predictions put back into images.

    Args:
        inputs, predictions: (N, C, H, W) arrays (or tensors) of the same shape. Each image is
            stretched on its own (`galaxy_rgb`), so the prediction's colours are comparable in
            band ratios, not in absolute level.
        titles: N captions for the input panels (e.g. ids or redshifts).
    Galaxies run across, wrapping every `max_columns`; each block of two rows is input above prediction.
    """
    inputs = _image_stack(inputs, "inputs")
    predictions = _image_stack(predictions, "predictions")
    if inputs.shape != predictions.shape:
        raise ValueError(f"inputs and predictions differ in shape: {inputs.shape} vs {predictions.shape}")
    count = inputs.shape[0]
    if titles is not None and len(titles) != count:
        raise ValueError(f"titles: expected {count} captions; got {len(titles)}")
    ncols = max(1, min(max_columns, count))
    blocks = math.ceil(count / ncols)
    fig = Figure(figsize=(1.7 * ncols, 3.5 * blocks))
    axes = fig.subplots(2 * blocks, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for index in range(count):
        block, column = divmod(index, ncols)
        top, bottom = axes[2 * block, column], axes[2 * block + 1, column]
        top.set_axis_on()
        bottom.set_axis_on()
        _show(top, inputs[index], titles[index] if titles is not None else "input")
        _show(bottom, predictions[index], prediction_label)
    fig.tight_layout()
    return _save(fig, path)


def plot_neighbours(
    query_image: Any,
    neighbour_images: Any,
    scores: Sequence[float],
    path: str | Path,
    query_title: str = "query",
    neighbour_titles: Sequence[str] | None = None,
    max_columns: int = 6,
) -> Path:
    """The query galaxy followed by its nearest neighbours, each captioned with its similarity score.

    Args:
        query_image: (C, H, W). neighbour_images: (K, C, H, W). scores: K similarities (e.g. cosine).
        neighbour_titles: optional K captions (e.g. ids), shown above the score.
    """
    query = _to_numpy(query_image)
    neighbours = _image_stack(neighbour_images, "neighbour_images")
    scores = [float(score) for score in _to_numpy(scores).ravel()]
    if len(scores) != neighbours.shape[0]:
        raise ValueError(f"scores: expected {neighbours.shape[0]} (one per neighbour); got {len(scores)}")
    if neighbour_titles is not None and len(neighbour_titles) != len(scores):
        raise ValueError(f"neighbour_titles: expected {len(scores)} captions; got {len(neighbour_titles)}")
    panels = [(query, query_title)] + [
        (
            image,
            (f"{neighbour_titles[i]}\n" if neighbour_titles is not None else "") + f"{i + 1}: {score:.3f}",
        )
        for i, (image, score) in enumerate(zip(neighbours, scores))
    ]
    ncols = max(1, min(max_columns, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(1.8 * ncols, 2.4 * nrows))  # room for two-line captions between rows
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for index, (image, title) in enumerate(panels):
        ax = axes.ravel()[index]
        ax.set_axis_on()
        _show(ax, image, title)
        if index == 0:
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2.0)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- similarity-search benchmark


def plot_knn_benchmark(rows: Sequence[Mapping[str, Any]], path: str | Path, crossover: int | None = None) -> Path:
    """Two log-log panels from `benchmark_knn` rows: time per query (asked alone: solid; in a batch: dashed)
    and index build time against catalogue size, one colour per backend; `crossover` (the catalogue size from
    which the graph index answers batched queries faster) is marked if given."""
    fig = Figure(figsize=(10.0, 4.0))
    query_ax, build_ax = fig.subplots(1, 2)
    backends = list(dict.fromkeys(row["backend"] for row in rows))
    for index, backend in enumerate(backends):
        mine = sorted((row for row in rows if row["backend"] == backend), key=lambda row: row["size"])
        sizes = [row["size"] for row in mine]
        colour = f"C{index}"
        query_ax.plot(sizes, [1e3 * row["query_seconds"] for row in mine], "o-", color=colour, label=f"{backend}, one query")
        query_ax.plot(sizes, [1e3 * row["batched_query_seconds"] for row in mine], "s--", color=colour,
                      label=f"{backend}, batch", alpha=0.7)
        if backend != "exact":
            build_ax.plot(sizes, [max(row["build_seconds"], 1e-6) for row in mine], "o-", color=colour, label=backend)
    if crossover is not None:
        for ax in (query_ax, build_ax):
            ax.axvline(crossover, color="grey", linestyle=":", linewidth=1)
        query_ax.annotate(f"HNSW faster in batches from {crossover:,}", (crossover, query_ax.get_ylim()[1]), fontsize=8,
                          ha="left", va="top", xytext=(4, -4), textcoords="offset points")
    for ax, label in ((query_ax, "ms per query"), (build_ax, "index build time (s)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalogue size (embeddings)")
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    query_ax.set_title("Cosine k-NN query time (k = 10)")
    build_ax.set_title("Index build time")
    return _save(fig, path)
