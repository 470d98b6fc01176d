"""Layer-wise linear probes: the same k-fold ridge / logistic probes as `run_linear_probes`, on every layer.

The best layer for a property is rarely the last one, so probing studies read every block. Features
of all layers come from one forward pass per batch (`astropt_hf.downstream.layer_features`, which also
documents the layer numbering: 0 is the patch embeddings, L the last block after the final LayerNorm).
A randomly initialised model of the same architecture, probed layer by layer the same way, is the
baseline: what depth alone gives without training.

Results merge into ``probe_results.json`` next to what `run_linear_probes` wrote there:

    "layers": {TARGET: {LAYER: {"r2": ..., "mae": ..., "n_samples": ...}}},   # the trained model
    "random_init_layers": {TARGET: {LAYER: {...}}},                            # the baseline
    "best_layer": {TARGET: LAYER},   "layer_metric": {TARGET: "r2" | "accuracy"}

with a heat map (``probe_layers.png``) and one line panel per target (``probe_layers_by_target.png``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from astropt_hf.downstream.layer_features import compute_layer_features, load_backbone, resolve_layers

logger = logging.getLogger(__name__)

RESULTS_NAME = "probe_results.json"
HEATMAP_NAME = "probe_layers.png"
LINES_NAME = "probe_layers_by_target.png"

__all__ = ["LayerProbeOptions", "LayerProbeResult", "best_layers", "merge_probe_results", "open_probe_dataset",
           "probe_layer_features", "run_layer_probes"]  # fmt: skip


@dataclass
class LayerProbeOptions:
    """How the layer features are computed and probed (the probes are `linear_probe_cv`'s)."""

    n_folds: int = 5
    seed: int = 0
    batch_size: int = 64
    pooling: str | None = None
    pooling_num_patches: int | None = None
    bf16: bool = False
    random_init_baseline: bool = True
    robust_normalisation: bool = False
    target_clip: float | None = None
    device: str | None = None
    num_workers: int = 0


@dataclass
class LayerProbeResult:
    """What `run_layer_probes` computed and wrote (`results` is the part merged into probe_results.json)."""

    results: dict[str, Any]
    json_path: Path
    heatmap: Path
    line_plot: Path


def _main_metric(scores: Mapping[str, float]) -> str:
    return "r2" if "r2" in scores else "accuracy"


def best_layers(layer_scores: Mapping[str, Mapping[Any, Mapping[str, float]]]) -> tuple[dict[str, int], dict[str, str]]:
    """{TARGET: layer with the highest R² (regression) or accuracy}, and the metric used per target.

    Ties go to the shallower layer (cheaper to compute).
    """
    best, metrics = {}, {}
    for target, by_layer in layer_scores.items():
        metric = _main_metric(next(iter(by_layer.values())))
        best[target] = int(max(by_layer, key=lambda layer: (by_layer[layer][metric], -int(layer))))
        metrics[target] = metric
    return best, metrics


def probe_layer_features(
    layer_features: Mapping[int, np.ndarray],
    targets: Mapping[str, Any],
    options: LayerProbeOptions | None = None,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, Any]]:
    """k-fold probes of every target from every layer's (N, D) features, all with the same folds.

    Returns ({TARGET: {"LAYER": metrics}}, the suite's settings). Layer keys are strings (JSON keys).
    """
    from astropt_hf.downstream.probes import run_probe_suite

    options = options or LayerProbeOptions()
    scores: dict[str, dict[str, dict[str, float]]] = {name: {} for name in targets}
    settings: dict[str, Any] = {}
    for layer, features in sorted(layer_features.items()):
        suite = run_probe_suite(
            {"layer": features}, targets, n_folds=options.n_folds, seed=options.seed,
            robust_normalisation=options.robust_normalisation, target_clip=options.target_clip,
        )  # fmt: skip
        settings = suite.results["settings"]
        for target, by_features in suite.results["targets"].items():
            scores[target][str(layer)] = by_features["layer"]
    return scores, settings


def open_probe_dataset(dataset, split: str | None = None):
    """(map-style dataset, image column, id column) from a dataset spec dict, a `GalaxySource` or a dataset."""
    if isinstance(dataset, Mapping):
        from astropt_hf.data.arguments import open_dataset

        dataset = open_dataset(dict(dataset), split=split)
    if hasattr(dataset, "dataset") and hasattr(dataset, "image_column"):
        return dataset.dataset, dataset.image_column, dataset.id_column
    return dataset, "image", "id" if "id" in (dataset.column_names or []) else None


def _readable(*feature_sets: Mapping[int, np.ndarray]) -> np.ndarray:
    masks = [np.isfinite(f).all(axis=1) for features in feature_sets for f in features.values()]
    return np.all(masks, axis=0)


def merge_probe_results(path: str | os.PathLike, extra: Mapping[str, Any]) -> Path:
    """Add `extra`'s keys to the JSON object in `path` (created if missing), keeping everything else."""
    path = Path(path)
    stored = json.loads(path.read_text()) if path.is_file() else {}
    for key, value in extra.items():
        if key == "targets" and isinstance(stored.get("targets"), dict):
            for target, by_features in value.items():
                stored["targets"].setdefault(target, {}).update(by_features)
        else:
            stored[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(stored, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def run_layer_probes(
    model_name_or_path: str | os.PathLike,
    dataset,
    targets: Sequence[str],
    output_dir: str | os.PathLike,
    layers: str | Sequence[int] | None = "all",
    split: str | None = None,
    options: LayerProbeOptions | None = None,
) -> LayerProbeResult:
    """Probe `targets` from every layer in `layers` of a model and of its random-init twin.

    Args:
        dataset: a dataset spec dict (`astropt_hf.data.arguments.dataset_spec`, opened on `split`), a
            `GalaxySource`, or a map-style dataset with an "image" column.
        layers: "all", "0,2,4" or a list of layer numbers (0: patch embeddings; L: last block after the
            final LayerNorm).
    Returns:
        `LayerProbeResult`; ``output_dir/probe_results.json`` gains "layers", "random_init_layers",
        "best_layer" and "layer_metric" (anything already there, e.g. `run_linear_probes`' "targets", stays).
    """
    from astropt_hf.downstream.linear_probe import random_init_like
    from astropt_hf.plotting.layers import plot_layer_heatmap, plot_layer_lines

    options = options or LayerProbeOptions()
    data, image_column, _ = open_probe_dataset(dataset, split)
    missing = [t for t in targets if t not in data.column_names]
    if missing or not targets:
        raise ValueError(f"targets {missing or list(targets)} are not columns of the dataset: {data.column_names}")
    model, processor = load_backbone(model_name_or_path, device=options.device)
    chosen = resolve_layers(layers, model.config.num_hidden_layers)
    embed = dict(batch_size=options.batch_size, pooling=options.pooling, pooling_num_patches=options.pooling_num_patches,
                 bf16=options.bf16, image_column=image_column, num_workers=options.num_workers)  # fmt: skip
    trained = compute_layer_features(model, data, processor, chosen, **embed)
    random = (compute_layer_features(random_init_like(model, options.seed), data, processor, chosen, **embed)
              if options.random_init_baseline else {})  # fmt: skip
    keep = _readable(trained, random)
    if not keep.all():
        logger.warning("layer probes without %d rows whose image could not be read", int((~keep).sum()))
    values = {name: np.asarray(data[name])[keep] for name in targets}
    scores, settings = probe_layer_features({k: v[keep] for k, v in trained.items()}, values, options)
    best, metric = best_layers(scores)
    results: dict[str, Any] = {"layers": scores, "best_layer": best, "layer_metric": metric}
    if random:
        results["random_init_layers"], _ = probe_layer_features({k: v[keep] for k, v in random.items()}, values, options)
    results["layer_settings"] = {
        "model": str(model_name_or_path), "layers": chosen, "num_hidden_layers": model.config.num_hidden_layers,
        "num_rows": int(keep.sum()), "pooling": options.pooling or model.config.pooling,
        "layer_numbering": "0 = patch embeddings before the first block; k = output of block k; "
                           f"{model.config.num_hidden_layers} = last block after the final LayerNorm",
        "n_folds": settings.get("n_folds"), "seed": settings.get("seed"), "tasks": settings.get("tasks"),
    }  # fmt: skip
    output_dir = Path(output_dir)
    json_path = merge_probe_results(output_dir / RESULTS_NAME, results)
    title = f"Layer-wise linear probes ({options.n_folds}-fold CV, {int(keep.sum())} galaxies)"
    heatmap = plot_layer_heatmap(results, output_dir / HEATMAP_NAME, title=title)
    lines = plot_layer_lines(results, output_dir / LINES_NAME, title=title)
    return LayerProbeResult(results=results, json_path=json_path, heatmap=heatmap, line_plot=lines)
