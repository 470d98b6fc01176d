"""Linear probes on image embeddings, and the pixel-PCA baseline they are compared with.

A linear probe asks how much of a physical property (redshift, magnitude, morphology
label) can be read off an embedding with a linear map. We fit ridge regression for
continuous targets and multinomial logistic regression for labels, on standardised
features, k-fold cross-validated so that every galaxy gets an out-of-fold prediction.
Scores go through the metric modules shipped in `astropt_hf.metrics`.

Pure numpy / scikit-learn: no model code here, so it is fast to test and can run on
embeddings extracted anywhere.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from astropt_hf.metrics import compute_classification_metrics, compute_regression_metrics, encode_labels

logger = logging.getLogger(__name__)

TASKS = ("regression", "classification")
# Ridge strengths to choose from (features are standardised, so these are on a common scale).
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 6, 10))
# MAD -> standard deviation for Gaussian data.
MAD_TO_SIGMA = 1.4826
# Target names that get the photo-z metrics (sigma_nmad, outlier fraction) unless told otherwise.
REDSHIFT_NAMES = frozenset(
    {"z", "redshift", "z_spec", "zspec", "specz", "z_true", "photo_z", "photoz", "zphot"}
)

__all__ = [
    "DEFAULT_ALPHAS",
    "ProbeResult",
    "ProbeSuiteResult",
    "RobustNormaliser",
    "infer_task",
    "is_redshift_like",
    "linear_probe_cv",
    "pixel_pca_features",
    "robust_denormalise",
    "robust_normalise",
    "run_probe_suite",
]


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class RobustNormaliser:
    """Affine map y -> (y - median) / scale with scale = 1.4826 * MAD (a robust sigma)."""

    median: float
    scale: float

    @classmethod
    def fit(cls, y: Any) -> RobustNormaliser:
        """Median and robust scale of the finite values of `y`.

        The scale is 1.4826 * median(|y - median(y)|). When more than half of the values are
        equal the MAD is 0; we then fall back to IQR / 1.349, then to the standard deviation,
        then to 1, so the map stays invertible.
        """
        values = np.asarray(y, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("robust_normalise: no finite values to fit the median and scale on")
        median = float(np.median(values))
        scale = MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
        if scale == 0.0:
            q25, q75 = np.percentile(values, [25, 75])
            scale = float(q75 - q25) / 1.349
        if scale == 0.0:
            scale = float(np.std(values))
        if scale == 0.0:
            scale = 1.0
        return cls(median=median, scale=scale)

    def transform(self, y: Any) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) - self.median) / self.scale

    def inverse(self, z: Any) -> np.ndarray:
        return np.asarray(z, dtype=np.float64) * self.scale + self.median


def robust_normalise(y: Any) -> tuple[np.ndarray, RobustNormaliser]:
    """Robustly standardise a target: (y - median) / (1.4826 * MAD).

    Upstream astroPT's probe scripts (not part of its pip package) offer a robust target
    normalisation; we use the median and the MAD scaled to a Gaussian sigma, which outliers
    (catastrophic photo-z, bad photometry) barely move. NaNs pass through as NaN.
    Returns (normalised values, the fitted `RobustNormaliser`); undo with `robust_denormalise`.
    """
    normaliser = RobustNormaliser.fit(y)
    return normaliser.transform(y), normaliser


def robust_denormalise(z: Any, normaliser: RobustNormaliser) -> np.ndarray:
    """Inverse of `robust_normalise`: z * scale + median."""
    return normaliser.inverse(z)


def is_redshift_like(name: str) -> bool:
    """Whether a target name looks like a redshift (gets sigma_nmad and the outlier fraction)."""
    lowered = name.lower()
    return lowered in REDSHIFT_NAMES or "redshift" in lowered


def infer_task(values: Any) -> str:
    """ "classification" for integer, boolean, string or object columns; "regression" for floats."""
    array = np.asarray(values)
    return "regression" if np.issubdtype(array.dtype, np.floating) else "classification"


def _missing_mask(values: np.ndarray) -> np.ndarray:
    """True where a target is missing: NaN / inf for numbers, None or NaN in object columns."""
    if np.issubdtype(values.dtype, np.number):
        return ~np.isfinite(values.astype(np.float64))
    if values.dtype == object:
        return np.array(
            [v is None or (isinstance(v, float) and not np.isfinite(v)) for v in values], dtype=bool
        )
    return np.zeros(values.shape, dtype=bool)


# --------------------------------------------------------------------------- probes


@dataclass
class ProbeResult:
    """Outcome of one cross-validated probe.

    Attributes:
        metrics: scores of the out-of-fold predictions ({"r2", "mae", ...} or {"accuracy", "f1_macro"}).
        predictions: out-of-fold prediction for every kept row, in the original target units/labels.
        true: the kept targets, aligned with `predictions`.
        kept: (N,) boolean mask of the input rows that had a target (the others were dropped).
        n_dropped: number of rows dropped for a missing (NaN / None) target.
        task: "regression" or "classification".
        fold_alphas: ridge strength chosen in each fold (regression only).
    """

    metrics: dict[str, float]
    predictions: np.ndarray
    true: np.ndarray
    kept: np.ndarray
    n_dropped: int
    task: str
    fold_alphas: list[float] = field(default_factory=list)


def _check_features(embeddings: Any, what: str = "embeddings") -> np.ndarray:
    features = np.asarray(embeddings)
    if features.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (N, D); got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        features = features.astype(np.float32)
    bad = int(np.sum(~np.isfinite(features)))
    if bad:
        raise ValueError(f"{what}: {bad} values are NaN or infinite; embeddings must be finite")
    return features


def linear_probe_cv(
    embeddings: Any,
    targets: Any,
    task: str = "regression",
    n_folds: int = 5,
    seed: int = 0,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    robust_normalisation: bool = False,
    target_clip: float | None = None,
    photo_z: bool = False,
    logistic_c: float = 1.0,
    max_iter: int = 1000,
) -> ProbeResult:
    """k-fold cross-validated linear probe of `targets` from `embeddings`.

    Regression: StandardScaler + RidgeCV(alphas) fitted on each training fold (RidgeCV picks
    alpha by efficient leave-one-out inside the fold). Classification: StandardScaler +
    multinomial LogisticRegression(C=logistic_c), StratifiedKFold. Rows whose target is NaN
    or None are dropped (counted in `n_dropped`). Folds are shuffled with `seed`.

    Args:
        embeddings: (N, D) finite features.
        targets: (N,) numbers (regression) or labels of any type (classification).
        robust_normalisation: fit the ridge on (y - median) / (1.4826 MAD) of the training fold
            and map predictions back. Ridge is equivariant to affine changes of y, so on its own
            this does not change the predictions; it matters together with `target_clip`.
        target_clip: with robust_normalisation, clip the normalised training targets to
            [-target_clip, target_clip] robust sigmas so extreme outliers cannot drag the fit.
        photo_z: also report sigma_nmad and the outlier fraction (for redshift targets).
    Returns:
        `ProbeResult` with metrics computed on all out-of-fold predictions at once.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    features = _check_features(embeddings)
    values = np.asarray(targets)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or values.shape[0] != features.shape[0]:
        raise ValueError(
            f"targets: expected shape ({features.shape[0]},) to match the embeddings; got {values.shape}"
        )
    if target_clip is not None and not robust_normalisation:
        raise ValueError("target_clip only applies with robust_normalisation=True")

    kept = ~_missing_mask(values)
    n_dropped = int(np.sum(~kept))
    if n_dropped:
        logger.info("linear_probe_cv: dropped %d of %d rows with a missing target", n_dropped, values.size)
    features, values = features[kept], values[kept]
    n_rows = values.shape[0]
    if not 2 <= n_folds <= n_rows:
        raise ValueError(
            f"n_folds must be between 2 and the number of rows with a target ({n_rows}); got {n_folds}"
        )

    if task == "regression":
        true = values.astype(np.float64)
        predictions, fold_alphas = _ridge_out_of_fold(
            features, true, n_folds, seed, alphas, robust_normalisation, target_clip
        )
        metrics = compute_regression_metrics(predictions, true, photo_z=photo_z)
        return ProbeResult(metrics, predictions, true, kept, n_dropped, task, fold_alphas)

    (codes,), classes = encode_labels(values)
    if classes.size < 2:
        raise ValueError(f"classification probe needs at least 2 classes; got {classes.tolist()}")
    predicted_codes = _logistic_out_of_fold(features, codes, n_folds, seed, logistic_c, max_iter)
    metrics = compute_classification_metrics(predicted_codes, codes)
    return ProbeResult(metrics, classes[predicted_codes], values, kept, n_dropped, task)


def _ridge_out_of_fold(
    features: np.ndarray,
    true: np.ndarray,
    n_folds: int,
    seed: int,
    alphas: Sequence[float],
    robust_normalisation: bool,
    target_clip: float | None,
) -> tuple[np.ndarray, list[float]]:
    predictions = np.empty_like(true)
    fold_alphas: list[float] = []
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for train, test in folds.split(features):
        y_train = true[train]
        normaliser = RobustNormaliser.fit(y_train) if robust_normalisation else None
        if normaliser is not None:
            y_train = normaliser.transform(y_train)
            if target_clip is not None:
                y_train = np.clip(y_train, -target_clip, target_clip)
        probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.asarray(alphas, dtype=np.float64)))
        probe.fit(features[train], y_train)
        fold_prediction = probe.predict(features[test])
        predictions[test] = normaliser.inverse(fold_prediction) if normaliser is not None else fold_prediction
        fold_alphas.append(float(probe[-1].alpha_))
    if any(alpha in (min(alphas), max(alphas)) for alpha in fold_alphas):
        logger.info(
            "ridge alpha hit the edge of the grid %s in some folds: %s",
            (min(alphas), max(alphas)),
            fold_alphas,
        )
    return predictions, fold_alphas


def _logistic_out_of_fold(
    features: np.ndarray, codes: np.ndarray, n_folds: int, seed: int, logistic_c: float, max_iter: int
) -> np.ndarray:
    predictions = np.empty_like(codes)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A class rarer than n_folds only makes sklearn warn; the probe still runs.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(folds.split(features, codes))
    for train, test in splits:
        if np.unique(codes[train]).size < 2:
            raise ValueError("a training fold holds a single class; use fewer folds or more rows per class")
        # lbfgs fits the multinomial (softmax) model for more than two classes.
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=logistic_c, max_iter=max_iter))
        probe.fit(features[train], codes[train])
        predictions[test] = probe.predict(features[test])
    return predictions


# --------------------------------------------------------------------------- baseline


def pixel_pca_features(
    images: Any, n_components: int, seed: int = 0, max_fit_samples: int | None = None
) -> np.ndarray:
    """Baseline features: PCA of the raw flattened pixels.

    Args:
        images: (N, C, H, W) images or (N, F) already flat vectors.
        n_components: output dimension (usually the embedding size of the model compared with).
            Capped at min(N - 1, F) with a warning.
        max_fit_samples: fit the PCA on at most this many randomly chosen rows (then project all),
            to bound memory and time on large catalogues. None fits on all rows.
    Returns:
        (N, n_components) float32. PCA uses no targets, so fitting it on every row leaks nothing
        into the probes' test folds (the embeddings are likewise computed for every row).
    """
    array = np.asarray(images)
    if array.ndim < 2:
        raise ValueError(f"images: expected (N, C, H, W) or (N, F); got shape {array.shape}")
    flat = array.reshape(array.shape[0], -1).astype(np.float32, copy=False)
    bad = int(np.sum(~np.isfinite(flat)))
    if bad:
        raise ValueError(f"images: {bad} pixel values are NaN or infinite; fill them before the PCA baseline")
    n_rows, n_pixels = flat.shape
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1; got {n_components}")
    fit_rows = flat
    if max_fit_samples is not None and max_fit_samples < n_rows:
        chosen = np.random.default_rng(seed).choice(n_rows, size=max_fit_samples, replace=False)
        fit_rows = flat[np.sort(chosen)]
    limit = min(fit_rows.shape[0] - 1, n_pixels)
    if limit < 1:
        raise ValueError(f"pixel PCA needs at least 2 rows; got {fit_rows.shape[0]}")
    if n_components > limit:
        warnings.warn(
            f"pixel_pca_features: n_components={n_components} capped at {limit} "
            f"(min(rows - 1, pixels) with {fit_rows.shape[0]} rows, {n_pixels} pixels); "
            "the baseline then has fewer dimensions than asked for",
            stacklevel=2,
        )
        n_components = limit
    # The randomized solver is much faster when only a few components of a big matrix are wanted.
    solver = (
        "randomized" if min(fit_rows.shape) > 500 and n_components < 0.8 * min(fit_rows.shape) else "full"
    )
    pca = PCA(n_components=n_components, svd_solver=solver, random_state=seed)
    pca.fit(fit_rows)
    return pca.transform(flat).astype(np.float32)


# --------------------------------------------------------------------------- suite


@dataclass
class ProbeSuiteResult:
    """All probes of a suite.

    Attributes:
        results: JSON-ready {"targets": {TARGET: {FEATURE_SET: {metric: value, ..., "n_samples": n}}},
            "settings": {...}}.
        probes: {TARGET: {FEATURE_SET: ProbeResult}} with the out-of-fold predictions for plots.
    """

    results: dict[str, Any]
    probes: dict[str, dict[str, ProbeResult]]

    def save_json(self, path: str | Path) -> Path:
        """Write `results` as indented JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.results, indent=2) + "\n")
        return path


def run_probe_suite(
    feature_sets: Mapping[str, Any],
    targets: Mapping[str, Any],
    tasks: Mapping[str, str] | None = None,
    n_folds: int = 5,
    seed: int = 0,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    robust_normalisation: bool = False,
    target_clip: float | None = None,
    photo_z_targets: Iterable[str] | None = None,
    logistic_c: float = 1.0,
) -> ProbeSuiteResult:
    """Probe every target from every feature set with the same folds.

    Args:
        feature_sets: name -> (N, D) features, e.g. {"astropt": emb, "random_init": emb0,
            "pixel_pca": pca}. All must have the same N, rows aligned with the targets.
        targets: name -> (N,) values (NaN / None rows are dropped per target).
        tasks: name -> "regression" | "classification"; missing names are inferred
            (float columns -> regression, everything else -> classification).
        photo_z_targets: targets that also get sigma_nmad and the outlier fraction; None picks
            redshift-like names ("redshift", "z", "z_spec", ...).
        The other arguments go to `linear_probe_cv`.
    Returns:
        `ProbeSuiteResult` (`.results` for probe_results.json, `.probes` for plots).
    """
    tasks = dict(tasks or {})
    checked = _checked_inputs(feature_sets, targets, tasks)
    photo_z_set = (
        {name for name in targets if is_redshift_like(name)}
        if photo_z_targets is None
        else set(photo_z_targets)
    )

    results: dict[str, Any] = {"targets": {}}
    probes: dict[str, dict[str, ProbeResult]] = {}
    for target_name, values in targets.items():
        task = tasks.get(target_name) or infer_task(values)
        results["targets"][target_name] = {}
        probes[target_name] = {}
        for feature_name, features in checked.items():
            probe = linear_probe_cv(
                features,
                values,
                task=task,
                n_folds=n_folds,
                seed=seed,
                alphas=alphas,
                robust_normalisation=robust_normalisation and task == "regression",
                target_clip=target_clip if task == "regression" else None,
                photo_z=target_name in photo_z_set and task == "regression",
                logistic_c=logistic_c,
            )
            probes[target_name][feature_name] = probe
            results["targets"][target_name][feature_name] = {
                **probe.metrics,
                "n_samples": int(probe.true.size),
                "n_dropped": probe.n_dropped,
            }
            logger.info("probe %s <- %s: %s", target_name, feature_name, probe.metrics)
        tasks[target_name] = task
    results["settings"] = {
        "n_folds": n_folds,
        "seed": seed,
        "alphas": [float(a) for a in alphas],
        "robust_normalisation": robust_normalisation,
        "target_clip": target_clip,
        "logistic_c": logistic_c,
        "tasks": tasks,
        "photo_z_targets": sorted(photo_z_set & set(targets)),
        "feature_dims": {name: int(features.shape[1]) for name, features in checked.items()},
    }
    return ProbeSuiteResult(results=results, probes=probes)


def _checked_inputs(
    feature_sets: Mapping[str, Any], targets: Mapping[str, Any], tasks: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """The feature sets as checked 2-D arrays, after checking every input has the same rows."""
    if not feature_sets:
        raise ValueError("feature_sets is empty; give at least one name -> (N, D) array")
    if not targets:
        raise ValueError("targets is empty; give at least one name -> (N,) array")
    unknown = sorted(set(tasks) - set(targets))
    if unknown:
        raise ValueError(f"tasks names targets that were not given: {unknown}")
    checked = {
        name: _check_features(features, f"feature set {name!r}") for name, features in feature_sets.items()
    }
    n_rows = {name: features.shape[0] for name, features in checked.items()}
    for name, values in targets.items():
        n_rows[f"target {name!r}"] = len(values)
    if len(set(n_rows.values())) != 1:
        raise ValueError(f"feature sets and targets must have the same number of rows; got {n_rows}")
    return checked
