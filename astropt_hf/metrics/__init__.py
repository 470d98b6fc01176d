"""Evaluation metrics shipped as `evaluate` modules, loaded offline by path.

`evaluate.load("r2")` would fetch a script from the Hugging Face Hub; the scripts
in `modules/` (one per metric, each a thin class over the shared `modules/metric_base.py`)
load from disk instead, so probes and fine-tuning work with HF_HUB_OFFLINE=1 and no network.
evaluate copies each script, with the shared file it imports, into its module cache
(~/.cache/huggingface/modules) the first time; nothing is written next to the scripts.

    from astropt_hf.metrics import load_metric, compute_regression_metrics
    r2 = load_metric("r2")
    r2.compute(predictions=[...], references=[...])
    compute_regression_metrics(pred, true, photo_z=True)
    # {"r2": ..., "mae": ..., "sigma_nmad": ..., "outlier_fraction": ...}
    compute_redshift_bias(pred, true)   # mean / median dz/(1+z), overall and in bins of true z
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .redshift_bias import bias_bin_edges, compute_redshift_bias, normalised_redshift_error

METRICS_DIR = Path(__file__).resolve().parent
MODULES_DIR = METRICS_DIR / "modules"
AVAILABLE_METRICS = ("r2", "mae", "sigma_nmad", "outlier_fraction", "accuracy", "f1")
REGRESSION_METRICS = ("r2", "mae")
PHOTO_Z_METRICS = ("sigma_nmad", "outlier_fraction")

__all__ = [
    "AVAILABLE_METRICS",
    "METRICS_DIR",
    "MODULES_DIR",
    "bias_bin_edges",
    "compute_classification_metrics",
    "compute_redshift_bias",
    "compute_regression_metrics",
    "encode_labels",
    "load_metric",
    "make_trainer_compute_metrics",
    "metric_path",
    "normalised_redshift_error",
]


def metric_path(name: str) -> str:
    """Absolute path of the shipped metric script `name` (what `evaluate.load` takes)."""
    if name not in AVAILABLE_METRICS:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(AVAILABLE_METRICS)}")
    script = MODULES_DIR / f"{name}.py"
    if not script.is_file():
        raise FileNotFoundError(
            f"metric script {script} is missing; is the package installed with its package_data "
            "(setup.cfg: astropt_hf = metrics/*/*.py)?"
        )
    return str(script)


def load_metric(name: str, **kwargs: Any):
    """Load the shipped metric `name` with `evaluate.load`, offline, as a fresh module.

    Defaults to ``keep_in_memory=True`` so evaluate keeps predictions in RAM instead of
    Arrow files and lock files under ~/.cache (safe when several processes compute metrics at once).
    Extra keyword arguments go to `evaluate.load`.
    """
    import evaluate  # imported here: it pulls in `datasets`, which takes a second

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(metric_path(name), **kwargs)


@functools.cache
def _cached_metric(name: str):
    # compute(predictions=..., references=...) leaves no state behind, so one instance per process is enough.
    return load_metric(name)


def _as_1d(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array (N,) or (N, 1); got shape {array.shape}")
    return array


def _check_pair(pred: np.ndarray, true: np.ndarray) -> None:
    if pred.shape != true.shape:
        raise ValueError(f"predictions and references differ in length: {pred.shape[0]} vs {true.shape[0]}")
    if pred.size == 0:
        raise ValueError("predictions and references are empty; need at least one row")


def compute_regression_metrics(
    pred: Any, true: Any, photo_z: bool = False, outlier_threshold: float = 0.15
) -> dict[str, float]:
    """R² and MAE of continuous predictions; with `photo_z` also σ_NMAD and the outlier fraction.

    Args:
        pred, true: (N,) or (N, 1) arrays of finite numbers.
        photo_z: the target is a redshift: add "sigma_nmad" and "outlier_fraction"
            (|dz| / (1 + z_true) > `outlier_threshold`).
    Returns:
        {"r2", "mae"[, "sigma_nmad", "outlier_fraction"]} as Python floats.
    """
    pred = _as_1d(pred, "predictions").astype(np.float64)
    true = _as_1d(true, "references").astype(np.float64)
    _check_pair(pred, true)
    for array, what in ((pred, "predictions"), (true, "references")):
        bad = int(np.sum(~np.isfinite(array)))
        if bad:
            raise ValueError(f"{what}: {bad} of {array.size} values are NaN or infinite; drop them first")
    results: dict[str, float] = {}
    for name in REGRESSION_METRICS:
        results.update(_cached_metric(name).compute(predictions=pred, references=true))
    if photo_z:
        results.update(_cached_metric("sigma_nmad").compute(predictions=pred, references=true))
        results.update(
            _cached_metric("outlier_fraction").compute(
                predictions=pred, references=true, threshold=outlier_threshold
            )
        )
    return {key: float(value) for key, value in results.items()}


def encode_labels(*label_arrays: Any) -> tuple[list[np.ndarray], np.ndarray]:
    """Map labels of any type (ints, strings) to integer codes shared across the arrays.

    Returns (codes per array, the sorted unique labels, so ``classes[code]`` is the label).
    """
    arrays = [_as_1d(labels, "labels") for labels in label_arrays]
    classes, codes = np.unique(np.concatenate(arrays), return_inverse=True)
    splits = np.cumsum([len(array) for array in arrays])[:-1]
    return [part.astype(np.int64) for part in np.split(codes, splits)], classes


def compute_classification_metrics(
    pred_labels: Any, true_labels: Any, f1_average: str = "macro"
) -> dict[str, float]:
    """Accuracy and F1 of predicted labels (ints or strings).

    Returns {"accuracy": ..., f"f1_{f1_average}": ...}; `f1_average` is "macro" (default),
    "micro", "weighted" or "binary" (labels must then be 0/1; class 1 is positive).
    """
    pred = _as_1d(pred_labels, "predicted labels")
    true = _as_1d(true_labels, "true labels")
    _check_pair(pred, true)
    if f1_average == "binary":
        # Keep the caller's 0/1 meaning: re-coding could swap which class is "positive".
        pred_codes, true_codes = pred.astype(np.int64), true.astype(np.int64)
    else:
        (pred_codes, true_codes), _ = encode_labels(pred, true)
    results = dict(_cached_metric("accuracy").compute(predictions=pred_codes, references=true_codes))
    f1 = _cached_metric("f1").compute(predictions=pred_codes, references=true_codes, average=f1_average)
    results[f"f1_{f1_average}"] = f1["f1"]
    return {key: float(value) for key, value in results.items()}


def make_trainer_compute_metrics(
    task: str, photo_z: bool = False, outlier_threshold: float = 0.15
) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for `transformers.Trainer` that goes through the shipped metrics.

    task="regression": predictions (N,) or (N, 1) are compared with label_ids as numbers.
    task="classification": predictions are logits (N, num_labels); the arg-max is the label.
    """
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification'; got {task!r}")

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        predictions, label_ids = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):  # models may return (logits, hidden_states, ...)
            predictions = predictions[0]
        if task == "classification":
            return compute_classification_metrics(np.argmax(predictions, axis=-1), label_ids)
        return compute_regression_metrics(
            predictions, label_ids, photo_z=photo_z, outlier_threshold=outlier_threshold
        )

    return compute_metrics
