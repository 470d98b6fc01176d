"""How well do the anomaly scores find real survey artefacts? Inject them and measure.

Held-out clean galaxies form the catalogue; for each artefact kind of `astropt_hf.data.artefacts`, a
random `fraction` of them is replaced by a damaged copy, and every method scores the whole catalogue.
The damaged ones are the positives: ROC AUC and precision at k (k = the number of damaged images, so
a perfect ranking scores 1) measure how well each method puts them on top. An ``overall`` catalogue
damages the same fraction with a random kind each.

Methods: the combined ``anomaly_score`` and its parts alone (``surprise``, ``surprise_worst``,
``embedding_outlier``), against model-free baselines fitted on the same clean reference images:

* ``max_pixel``: the brightest pixel in units of its band's sky noise (the reference's median, so an
  artefact cannot inflate its own yardstick);
* ``total_flux``: the distance of the summed flux from the reference median, in robust sigmas (two
  sided: a dead column removes flux, a star adds it);
* ``pca_error``: the mean squared error of reconstructing the processed pixels (what the model sees)
  from the reference's leading principal components.

Nothing is tuned on the damaged images: the reference is a separate clean split, and a catalogue's
scores do not depend on the other images in it, so clean images are scored once and each kind only
scores its damaged copies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from astropt_hf.data.artefacts import ARTEFACT_KINDS, inject_artefact, sky_noise
from astropt_hf.downstream.anomaly import (
    AnomalyOptions,
    AnomalyReference,
    StrangeImage,
    array_batches,
    collect_scores,
    surprise_maps,
)

__all__ = ["BASELINES", "METHODS", "BenchmarkOptions", "PixelBaselines", "run_anomaly_benchmark",
           "write_benchmark_report"]  # fmt: skip

BASELINES = ("max_pixel", "total_flux", "pca_error")
METHODS = ("anomaly_score", "surprise", "surprise_worst", "embedding_outlier", *BASELINES)
OVERALL = "overall"


@dataclass
class BenchmarkOptions:
    """`fraction` of the catalogue damaged per kind; `kinds` (default: every kind); `pca_components` of
    the PCA baseline; `anomaly`: how the model's scores are made."""

    fraction: float = 0.1
    kinds: Sequence[str] = tuple(ARTEFACT_KINDS)
    seed: int = 0
    pca_components: int = 16
    anomaly: AnomalyOptions = field(default_factory=AnomalyOptions)

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1); got {self.fraction}")
        unknown = [kind for kind in self.kinds if kind not in ARTEFACT_KINDS]
        if unknown:
            raise ValueError(f"unknown artefact kinds {unknown}; expected some of {sorted(ARTEFACT_KINDS)}")


def _processed(processor, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([b["pixel_values"].numpy() for b in array_batches(images, processor, batch_size)])


@dataclass
class PixelBaselines:
    """Model-free scores fitted on clean reference images (see the module docstring)."""

    band_noise: np.ndarray
    flux_median: float
    flux_scale: float
    pca: object

    @classmethod
    def fit(cls, images: np.ndarray, processor, components: int = 16, batch_size: int = 64) -> PixelBaselines:
        from sklearn.decomposition import PCA

        flux = images.reshape(len(images), -1).sum(axis=1)
        median = float(np.median(flux))
        scale = float(1.4826 * np.median(np.abs(flux - median))) or 1.0
        pixels = _processed(processor, images, batch_size).reshape(len(images), -1)
        pca = PCA(n_components=min(components, len(images) - 1, pixels.shape[1])).fit(pixels)
        return cls(np.median(sky_noise(images), axis=0), median, scale, pca)

    def score(self, images: np.ndarray, processor, batch_size: int = 64) -> dict[str, np.ndarray]:
        max_pixel = (images / self.band_noise[:, None, None]).reshape(len(images), -1).max(axis=1)
        flux = images.reshape(len(images), -1).sum(axis=1)
        pixels = _processed(processor, images, batch_size).reshape(len(images), -1)
        error = ((self.pca.inverse_transform(self.pca.transform(pixels)) - pixels) ** 2).mean(axis=1)
        return {"max_pixel": max_pixel, "total_flux": np.abs(flux - self.flux_median) / self.flux_scale,
                "pca_error": error}  # fmt: skip


class _Scorer:
    """Every method's score of a stack of images, against one clean reference."""

    def __init__(self, model, processor, reference_images: np.ndarray, options: BenchmarkOptions):
        self.model, self.processor, self.options = model, processor, options
        batch = options.anomaly.batch_size
        raw = collect_scores(model, processor, array_batches(reference_images, processor, batch, _ids("ref", len(reference_images))))
        self.reference = AnomalyReference.fit(raw, options.anomaly)
        self.baselines = PixelBaselines.fit(reference_images, processor, options.pca_components, batch)

    def __call__(self, images: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
        batch = self.options.anomaly.batch_size
        raw = collect_scores(self.model, self.processor, array_batches(images, self.processor, batch, _ids(prefix, len(images))))
        columns = self.reference.score(raw)
        scores = {name: np.asarray(columns[name], dtype=np.float64) for name in METHODS if name in columns}
        scores.update(self.baselines.score(images, self.processor, batch))
        return scores

    def strangest(self, images: np.ndarray, names: Sequence[str], count: int) -> list[StrangeImage]:
        """The `count` images with the highest anomaly_score, strangest first, with their surprise maps."""
        batch = self.options.anomaly.batch_size
        raw = collect_scores(self.model, self.processor, array_batches(images, self.processor, batch, names))
        scores = self.reference.score(raw)["anomaly_score"]
        top = np.argsort(-scores, kind="stable")[:count]
        maps = surprise_maps(self.model, self.reference.patch_surprise(raw)[top])
        return [StrangeImage(float(scores[i]), -rank, str(names[i]), images[i], maps[rank]) for rank, i in enumerate(top)]


def _ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC AUC and precision at k = number of positives (ties in the score broken by catalogue order)."""
    from sklearn.metrics import roc_auc_score

    k = int(labels.sum())
    top = np.argsort(-scores, kind="stable")[:k]
    return {"roc_auc": float(roc_auc_score(labels, scores)), "precision_at_k": float(labels[top].mean()), "k": k}


def _damage(images: np.ndarray, chosen: np.ndarray, kinds: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """Damaged copies of images[chosen], the i-th with kinds[i], each from its own child generator."""
    children = rng.spawn(len(chosen))
    return np.stack([inject_artefact(images[i], kind, child) for i, kind, child in zip(chosen, kinds, children)])


def run_anomaly_benchmark(model, processor, catalogue: np.ndarray, reference: np.ndarray,
                          options: BenchmarkOptions | None = None, strangest: int = 0) -> dict:  # fmt: skip
    """Score clean and damaged versions of `catalogue` (N, C, H, W flux images) against the clean
    `reference` images; returns {"settings", "results": kind -> method -> metrics}.

    With `strangest` > 0 the result also holds "strangest": that many `StrangeImage`s, the top of the
    ``overall`` catalogue (named by their catalogue index and artefact kind, or "clean"), for a figure.
    """
    options = options or BenchmarkOptions()
    catalogue = np.asarray(catalogue, dtype=np.float32)
    scorer = _Scorer(model, processor, np.asarray(reference, dtype=np.float32), options)
    clean = scorer(catalogue, "clean")
    count = max(1, int(round(options.fraction * len(catalogue))))
    report: dict = {"results": {}}
    plans = [(kind, None) for kind in options.kinds] + [(OVERALL, list(options.kinds))]
    for index, (name, mixture) in enumerate(plans):
        rng = np.random.default_rng([options.seed, index])
        chosen = np.sort(rng.choice(len(catalogue), size=count, replace=False))
        kinds = [name] * count if mixture is None else [str(k) for k in rng.choice(mixture, size=count)]
        damaged_images = _damage(catalogue, chosen, kinds, rng)
        damaged = scorer(damaged_images, f"damaged-{name}")
        labels = np.zeros(len(catalogue), dtype=np.int64)
        labels[chosen] = 1
        report["results"][name] = {}
        for method in METHODS:
            scores = clean[method].copy()
            scores[chosen] = damaged[method]
            report["results"][name][method] = ranking_metrics(labels, scores)
        if mixture is not None and strangest > 0:
            mixed = catalogue.copy()
            mixed[chosen] = damaged_images
            names = [f"{i}: clean" for i in range(len(catalogue))]
            for i, kind in zip(chosen, kinds):
                names[i] = f"{i}: {kind.replace('_', ' ')}"
            report["strangest"] = scorer.strangest(mixed, names, strangest)
    report["settings"] = {"num_catalogue": len(catalogue), "num_reference": len(reference), "num_damaged": count,
                          **{k: v for k, v in asdict(options).items() if k != "anomaly"},
                          "kinds": list(options.kinds), "anomaly": asdict(options.anomaly)}  # fmt: skip
    return report


def benchmark_markdown(report: dict) -> str:
    """Two markdown tables, ROC AUC and precision at k: one row per artefact kind, one column per method."""
    results = report["results"]
    lines = []
    for metric, label in (("roc_auc", "ROC AUC"), ("precision_at_k", "precision at k")):
        k = next(iter(results.values()))[METHODS[0]]["k"]
        lines.append(f"{label}" + (f" (k = {k} damaged of {report['settings']['num_catalogue']})" if metric != "roc_auc" else ""))
        lines.append("")
        lines.append("| artefact | " + " | ".join(METHODS) + " |")
        lines.append("|---" * (len(METHODS) + 1) + "|")
        for kind, methods in results.items():
            values = [f"{methods[m][metric]:.2f}" for m in METHODS]
            best = max(values, key=float)
            cells = [f"**{v}**" if v == best else v for v in values]  # every method that ties for best
            lines.append(f"| {kind.replace('_', ' ')} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_benchmark_report(report: dict, output_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write anomaly_benchmark.json, anomaly_benchmark.md and anomaly_benchmark_auc.png into `output_dir`,
    and anomaly_benchmark_strangest.png when the report holds "strangest"."""
    from astropt_hf.plotting.anomaly import plot_anomaly_grid, plot_benchmark_auc

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "anomaly_benchmark.json", "markdown": output_dir / "anomaly_benchmark.md",
             "figure": output_dir / "anomaly_benchmark_auc.png"}  # fmt: skip
    serialisable = {key: value for key, value in report.items() if key != "strangest"}
    paths["json"].write_text(json.dumps(serialisable, indent=2))
    paths["markdown"].write_text(benchmark_markdown(report))
    labels = {method: f"{method} (baseline)" if method in BASELINES else method for method in METHODS}
    plot_benchmark_auc(report["results"], paths["figure"], methods=METHODS, labels=labels, title=title)
    if report.get("strangest"):
        paths["strangest"] = output_dir / "anomaly_benchmark_strangest.png"
        damaged = report["settings"]["num_damaged"]
        plot_anomaly_grid(report["strangest"], paths["strangest"],
                          title=f"strangest of {report['settings']['num_catalogue']} galaxies, {damaged} with a random "
                                "artefact each (title: catalogue index and what was injected)")  # fmt: skip
    return paths
