"""The linear-probe workflow: astroPT embeddings against baselines, on the same rows, to JSON and plots.

For a model and a dataset with catalogue columns this computes three feature sets for the same rows:

* ``astropt``: the pretrained model's embeddings (or ones extracted earlier, read from Parquet);
* ``random_init``: a randomly initialised model of the same architecture, embedded the same way, which
  shows what the architecture alone gives (random projections of patches are not nothing);
* ``pixel_pca``: PCA of the pixels the model is fed (the processor's output), with as many dimensions
  as the embedding;
* ``spectrum_pca`` (when the embeddings are made from spectra): PCA of the normalised flux the model is
  fed (the spectrum extractor's output, masked samples zero), with as many dimensions as the embedding;

then probes every target from every feature set with the same cross-validation folds
(`astropt_hf.downstream.probes.run_probe_suite`) and writes ``probe_results.json``, a grouped bar chart and
predicted-vs-true hexbins (`astropt_hf.plotting`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astropt_hf.data.batching import pixel_batches
from astropt_hf.downstream.embedding_store import read_embeddings
from astropt_hf.downstream.embeddings import (
    INPUTS,
    Inputs,
    compute_embeddings,
    load_backbone,
    load_spectrum_extractor,
)

logger = logging.getLogger(__name__)

FEATURE_SETS = ("astropt", "random_init", "pixel_pca", "spectrum_pca")

__all__ = [
    "FEATURE_SETS",
    "LinearProbeOptions",
    "ProbeWorkflowResult",
    "collect_pixels",
    "collect_spectra",
    "default_baselines",
    "probe_trained_run",
    "random_init_like",
    "run_linear_probes",
]


@dataclass
class ProbeWorkflowResult:
    """Paths written and the suite's results (`suite.results` is what probe_results.json holds)."""

    suite: Any
    json_path: Path
    bar_chart: Path
    hexbin_paths: dict[str, Path]

    def summary_table(self) -> str:
        """Markdown table: one row per target, one column per feature set, the main score in each cell."""
        per_target = self.suite.results["targets"]
        feature_names = list(next(iter(per_target.values())))
        lines = ["| target | metric | " + " | ".join(feature_names) + " |", "|---" * (len(feature_names) + 2) + "|"]
        for target, by_feature in per_target.items():
            metric = "r2" if "r2" in by_feature[feature_names[0]] else "accuracy"
            cells = " | ".join(f"{by_feature[name][metric]:.3f}" for name in feature_names)
            lines.append(f"| {target} | {metric} | {cells} |")
        return "\n".join(lines)


def random_init_like(model, seed: int = 0):
    """A freshly initialised model with the same config (same class, same architecture)."""
    torch.manual_seed(seed)
    fresh = type(model)(model.config)
    return fresh.to(next(model.parameters()).device).eval()


def collect_pixels(dataset, processor, image_column: str = "image", batch_size: int = 256) -> np.ndarray:
    """The processor's pixel values for every row, flattened: (N, C * H * W) float32.

    Rows whose image cannot be decoded are NaN (like `compute_embeddings`), so rows stay aligned.
    """
    result = None
    for batch in pixel_batches(dataset, processor, image_column, None, batch_size, num_workers=0):
        flat = batch["pixel_values"].reshape(len(batch["rows"]), -1).numpy()
        if result is None:
            result = np.full((len(dataset), flat.shape[1]), np.nan, dtype=np.float32)
        result[batch["rows"]] = flat
    if result is None:
        raise ValueError("no image in the dataset could be decoded")
    return result


def collect_spectra(dataset, processor, spectrum_extractor, image_column: str = "image",
                    batch_size: int = 256) -> np.ndarray:
    """The spectrum extractor's normalised flux for every row (masked samples zero), zero-padded to the
    longest spectrum: (N, L) float32. Rows without a usable spectrum or image are NaN, so rows stay aligned."""
    rows, spectra = [], []
    for batch in pixel_batches(dataset, processor, image_column, None, batch_size, num_workers=0,
                               spectrum_extractor=spectrum_extractor):
        values = batch["spectrum_values"] * batch["spectrum_mask"]
        rows.extend(batch["rows"])
        spectra.extend(values.numpy())
    if not spectra:
        raise ValueError("no row of the dataset has a usable spectrum")
    result = np.full((len(dataset), max(len(s) for s in spectra)), np.nan, dtype=np.float32)
    for row, spectrum in zip(rows, spectra):
        result[row] = 0.0
        result[row, : len(spectrum)] = spectrum
    return result


def default_baselines(inputs: str) -> tuple[str, ...]:
    """random_init and pixel_pca, and spectrum_pca when the embeddings are made from spectra."""
    return ("random_init", "pixel_pca") + (("spectrum_pca",) if "spectra" in inputs else ())


def _aligned_embeddings(path: str | os.PathLike, dataset, id_column: str | None) -> np.ndarray:
    """Embeddings from Parquet reordered to the dataset's rows (matched by id); every row must be there."""
    table = read_embeddings(path, columns=[])
    dataset_ids = [str(v) for v in dataset[id_column]] if id_column else [str(i) for i in range(len(dataset))]
    position = {str(row_id): index for index, row_id in enumerate(table.ids)}
    missing = [row_id for row_id in dataset_ids if row_id not in position]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} of {len(dataset_ids)} dataset ids have no embedding (first: {missing[:3]}); "
            "extract them first or probe the same split"
        )
    return table.embeddings[[position[row_id] for row_id in dataset_ids]]


@dataclass
class LinearProbeOptions:
    """How `run_linear_probes` gets its features and fits its probes.

    Attributes:
        embeddings_path: reuse astroPT embeddings extracted by `extract_embeddings` (matched by id).
        inputs: embed from "images", "spectra" or "images+spectra" (spectra need a model that reads them).
        baselines: any of "random_init", "pixel_pca", "spectrum_pca" (None: `default_baselines(inputs)`).
        batch_size, layer, pooling, pooling_num_patches, bf16: embedding choices, also used for the
            random model.
        n_folds, seed: the cross-validation folds, shared by every feature set.
        robust_normalisation, target_clip: upstream-style robust target normalisation for ridge probes.
        image_column, id_column: the dataset's image and id columns (the ids match reused embeddings).
        device: where the models run (None: where they load).
        progress: progress bars while embedding.
    """

    embeddings_path: str | os.PathLike | None = None
    inputs: Inputs = "images"
    baselines: Sequence[str] | None = None
    batch_size: int = 64
    layer: str | int | None = None
    pooling: str | None = None
    pooling_num_patches: int | None = None
    bf16: bool = False
    n_folds: int = 5
    seed: int = 0
    robust_normalisation: bool = False
    target_clip: float | None = None
    image_column: str = "image"
    id_column: str | None = "id"
    device: str | None = None
    progress: bool = True


def run_linear_probes(
    model_name_or_path: str | os.PathLike,
    dataset,
    targets: Sequence[str],
    output_dir: str | os.PathLike,
    options: LinearProbeOptions | None = None,
) -> ProbeWorkflowResult:
    """Probe `targets` from astroPT embeddings and the baselines; write JSON and figures to `output_dir`.

    Args:
        dataset: a map-style dataset with the image column and the target columns.
        targets: column names; float columns get ridge probes, others logistic ones.
        options: `LinearProbeOptions` (default: all defaults).
    Returns:
        `ProbeWorkflowResult`.
    """
    from astropt_hf.downstream.probes import run_probe_suite

    options = options or LinearProbeOptions()
    if options.inputs not in INPUTS:
        raise ValueError(f"inputs={options.inputs!r} is not valid; expected one of {list(INPUTS)}")
    baselines = default_baselines(options.inputs) if options.baselines is None else tuple(options.baselines)
    unknown = [b for b in baselines if b not in FEATURE_SETS[1:]]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; expected any of {list(FEATURE_SETS[1:])}")
    missing = [t for t in targets if t not in dataset.column_names]
    if missing or not targets:
        raise ValueError(f"targets {missing or list(targets)} are not columns of the dataset: {dataset.column_names}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    model, processor = load_backbone(model_name_or_path, device=options.device)
    features, raw = _model_features(model, processor, dataset, model_name_or_path, options, baselines)
    target_values = {name: np.asarray(dataset[name]) for name in targets}
    features, target_values, num_rows = _readable_features(features, raw, target_values, options.seed)
    suite = run_probe_suite(
        features, target_values, n_folds=options.n_folds, seed=options.seed,
        robust_normalisation=options.robust_normalisation, target_clip=options.target_clip,
    )  # fmt: skip
    suite.results["settings"].update(
        {
            "model": str(model_name_or_path),
            "num_rows": num_rows,
            "layer": str(model.config.embedding_layer if options.layer is None else options.layer),
            "pooling": options.pooling or model.config.pooling,
            "pooling_num_patches": options.pooling_num_patches or model.config.pooling_num_patches,
            "embeddings_file": str(options.embeddings_path) if options.embeddings_path is not None else None,
            "inputs": options.inputs,
            "pixel_pca_input": "processor pixel values (what the model is fed)",
            **({"spectrum_pca_input": "spectrum extractor's normalised flux (what the model is fed)"}
               if "spectrum_pca" in baselines else {}),
        }
    )
    return _write_outputs(suite, list(features), output_dir, options.n_folds, len(dataset))


def _model_features(model, processor, dataset, model_name_or_path, options: LinearProbeOptions, baselines):
    """The astroPT (and random-init) embeddings, and the raw inputs the PCA baselines asked for need
    ({"pixel_pca": pixels, "spectrum_pca": spectra})."""
    if options.inputs != "images":
        extractor = load_spectrum_extractor(model, model_name_or_path, options.inputs)
    elif "spectrum_pca" in baselines:  # the spectra of an images-only model's data: the default extractor
        extractor = _default_extractor()
    else:
        extractor = None
    embed = dict(batch_size=options.batch_size, layer=options.layer, pooling=options.pooling,
                 pooling_num_patches=options.pooling_num_patches, bf16=options.bf16,
                 image_column=options.image_column, progress=options.progress, inputs=options.inputs,
                 spectrum_extractor=extractor)  # fmt: skip
    features: dict[str, np.ndarray] = {}
    if options.embeddings_path is not None:
        features["astropt"] = _aligned_embeddings(options.embeddings_path, dataset, options.id_column)
        if features["astropt"].shape[1] != model.config.hidden_size:
            raise ValueError(
                f"{options.embeddings_path}: embeddings have {features['astropt'].shape[1]} dimensions; "
                f"the model {model_name_or_path} has hidden_size={model.config.hidden_size}"
            )
    else:
        features["astropt"] = compute_embeddings(model, dataset, processor, **embed)
    if "random_init" in baselines:
        features["random_init"] = compute_embeddings(random_init_like(model, options.seed), dataset, processor, **embed)
    raw = {}
    if "pixel_pca" in baselines:
        raw["pixel_pca"] = collect_pixels(dataset, processor, options.image_column)
    if "spectrum_pca" in baselines:
        raw["spectrum_pca"] = collect_spectra(dataset, processor, extractor, options.image_column)
    return features, raw


def _default_extractor():
    from astropt_hf.feature_extraction_astropt import AstroPTSpectrumFeatureExtractor

    return AstroPTSpectrumFeatureExtractor()


def _readable_features(features: dict[str, np.ndarray], raw: dict[str, np.ndarray],
                       target_values: dict[str, np.ndarray], seed: int):
    """Drop rows whose image (or spectrum) could not be read from every feature set and target; add the PCA
    baselines of the raw inputs in `raw` (name -> (N, F)).

    Returns (features, target values, number of rows kept).
    """
    readable = np.all([np.isfinite(f).all(axis=1) for f in [*features.values(), *raw.values()]], axis=0)
    if not readable.all():
        logger.warning("probing without %d rows whose inputs could not be read", int((~readable).sum()))
        features = {name: f[readable] for name, f in features.items()}
        target_values = {name: values[readable] for name, values in target_values.items()}
    from astropt_hf.downstream.probes import pixel_pca_features

    for name, values in raw.items():  # PCA of flat vectors: pixels or normalised flux alike
        features[name] = pixel_pca_features(values[readable], n_components=features["astropt"].shape[1], seed=seed)
    return features, target_values, int(readable.sum())


def _write_outputs(suite, feature_names: list[str], output_dir: Path, n_folds: int, num_galaxies: int):
    """probe_results.json, the bar chart and one predicted-vs-true grid per feature set."""
    from astropt_hf.plotting import plot_pred_vs_true_grid, plot_probe_bars
    from astropt_hf.plotting.probes import pred_vs_true_limits
    from astropt_hf.plotting.style import feature_label

    json_path = suite.save_json(output_dir / "probe_results.json")
    bar_chart = plot_probe_bars(
        suite, output_dir / "probe_bars.png", metric=("r2", "accuracy"), feature_order=feature_names,
        title=f"Linear probes ({n_folds}-fold CV, {num_galaxies} galaxies)",
    )  # fmt: skip
    hexbins = {}
    by_feature_set = {
        feature_name: {target: probes[feature_name] for target, probes in suite.probes.items()}
        for feature_name in feature_names
    }
    limits = pred_vs_true_limits(by_feature_set)  # the same axes for every feature set of a target
    for feature_name, entries in by_feature_set.items():
        try:
            hexbins[feature_name] = plot_pred_vs_true_grid(
                entries, output_dir / f"pred_vs_true_{feature_name}.png", limits=limits,
                title=f"{feature_label(feature_name)}: linear probes ({n_folds}-fold CV, {num_galaxies} galaxies)",
            )
        except ValueError:  # only classification targets: nothing to hexbin
            pass
    return ProbeWorkflowResult(suite=suite, json_path=json_path, bar_chart=bar_chart, hexbin_paths=hexbins)


def probe_trained_run(run_dir: str | os.PathLike, source, targets: Sequence[str], batch_size: int = 64,
                      seed: int = 0, device: str | None = None, reuse: bool = True) -> dict[str, Any]:
    """Linear probes of the model a pretraining run saved in `run_dir`, written to `run_dir/probes`.

    `source` is a `GalaxySource` with the target columns. Returns {target: {feature_set: metrics}}. With
    `reuse`, an earlier probe_results.json there that covers every target is read back instead (sweeps
    pass False for runs they have just trained, whose old probes describe other weights).
    """
    probe_dir = Path(run_dir) / "probes"
    results_path = probe_dir / "probe_results.json"
    if reuse and results_path.is_file():
        stored = json.loads(results_path.read_text()).get("targets", {})
        if all(target in stored for target in targets):
            return {target: stored[target] for target in targets}
    options = LinearProbeOptions(batch_size=batch_size, seed=seed, image_column=source.image_column,
                                 id_column=source.id_column, device=device, progress=False)  # fmt: skip
    result = run_linear_probes(run_dir, source.dataset, list(targets), probe_dir, options)
    return result.suite.results["targets"]
