"""Anomaly scores for a galaxy catalogue: how surprised the pretrained model is by each image, and how far
its embedding lies from everything else.

**Surprise.** An `AstroPTForPreTraining` model predicts every patch from the ones before it
(``predictions[:, t]`` predicts sequence patch ``t + 1``), so its per-patch loss says how unexpected each
part of the image is. Raw losses mix two things: the model's error and the pixel noise, which no
prediction can foresee. A sky-dominated patch has a large loss on every image, and how large depends on
the depth, the stretch and the normalisation. Each patch's loss is therefore divided by its **noise
floor**, the loss a perfect predictor of the noiseless image would still make:

1. the sky noise of each band is estimated from the image (`astropt_hf.data.artefacts.sky_noise`, after
   undoing the processor's asinh stretch, so in flux units);
2. it is carried through the stretch (times its local slope) and the model's patch normalisation
   (divided by the same per-patch or per-image scale), giving each target pixel's noise sigma in the
   units the loss is computed in;
3. the expected loss of Gaussian noise of that sigma is taken in closed form (MSE: sigma^2; Huber with
   delta d: 0.5 sigma^2 (2 Phi(a) - 1) + d sigma phi(a) - d^2 (1 - Phi(a)), a = d / sigma) and averaged
   over the patch.

The log of loss / floor still depends on where the patch sits (the model predicts a galaxy's core
better than its outskirts), so it is standardised **per sequence position** against a clean reference
set: z = (log excess - median) / (1.4826 MAD) of the reference images at that position. A patch's z
says how many robust sigmas it is stranger than reference patches at the same place. Per image:
``surprise`` is the mean z over the predicted patches (the whole image is odd), ``surprise_worst`` the
mean of its `worst_patches` largest z (a small artefact barely moves the mean).

**Embedding outlier.** The mean Euclidean distance from the image's embedding to its `neighbours`
nearest reference embeddings (features standardised on the reference), or an isolation forest's score.
An image never counts as its own neighbour (matched by id), so a catalogue can be its own reference.

**Combined score.** Each part is rank-normalised against the same part on the reference images: its
upper-tail p-value p = (1 + #reference >= x) / (1 + n_reference); beyond the largest reference value,
where that count runs out, p keeps falling along an exponential tail fitted to the reference's top
decile, so images stranger than anything in the reference still rank among themselves.
``anomaly_score`` is the mean of -ln p over the parts (Fisher's method up to a constant), so one very
strange part is enough to rank an image high, and the parts, whose scales differ, are put on one
footing.

Memory stays bounded: the reference keeps at most `max_reference` images' per-patch numbers and
embeddings; the catalogue is streamed, keeping per-image numbers and the `top_k` strangest images.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PART_COLUMNS",
    "AnomalyOptions",
    "AnomalyReference",
    "RawScores",
    "StrangeImage",
    "array_batches",
    "collect_scores",
    "fit_reference",
    "load_pretraining_model",
    "patch_noise_floor",
    "score_catalogue",
    "score_pixel_batch",
    "surprise_maps",
    "tail_scale",
    "write_scores",
]

#: The parts that make up anomaly_score, in the order they are written.
PART_COLUMNS = ("surprise", "surprise_worst", "embedding_outlier")
_TINY = 1e-12


@dataclass
class AnomalyOptions:
    """How to score. `outlier` is ``"knn"`` (mean distance to `neighbours` reference embeddings) or
    ``"isolation_forest"``; `max_reference` caps the reference images used to fit (a random subset of a
    map-style dataset, the first ones of a stream); `seed` fixes that subset and the forest."""

    batch_size: int = 64
    worst_patches: int = 3
    neighbours: int = 10
    outlier: str = "knn"
    max_reference: int | None = 20000
    top_k: int = 16
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.outlier not in ("knn", "isolation_forest"):
            raise ValueError(f"outlier={self.outlier!r}; expected 'knn' or 'isolation_forest'")
        if self.worst_patches < 1 or self.neighbours < 1 or self.batch_size < 1:
            raise ValueError("worst_patches, neighbours and batch_size must be at least 1")


def load_pretraining_model(path: str | os.PathLike, device: str | torch.device | None = None):
    """Load an `AstroPTForPreTraining` with its next-patch head, and its processor; (model, processor).

    A checkpoint without the head (a backbone or a fine-tuned classifier) is refused: its surprise would
    come from an untrained head.
    """
    from transformers import AutoImageProcessor

    from astropt_hf import AstroPTForPreTraining

    model, info = AstroPTForPreTraining.from_pretrained(str(path), output_loading_info=True)
    missing = [key for key in info.get("missing_keys", []) if "patch_head" in key]
    if missing:
        raise ValueError(
            f"{path} has no next-patch head ({len(missing)} patch_head weights missing): anomaly scores need a "
            "pretraining checkpoint (AstroPTForPreTraining), not a backbone or a fine-tuned model"
        )
    processor = AutoImageProcessor.from_pretrained(str(path), trust_remote_code=True)
    if device is not None:
        model.to(device)
    return model.eval(), processor


# --------------------------------------------------------------------------- per-patch surprise


def _unstretch(processor, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flux, slope): the processor's stretch undone, and d(pixel value)/d(flux) at each pixel."""
    if getattr(processor, "stretch", "none") == "asinh":
        scale = float(processor.asinh_scale)
        return scale * torch.sinh(pixel_values), 1.0 / (scale * torch.cosh(pixel_values))
    return pixel_values, torch.ones_like(pixel_values)


def _expected_noise_loss(sigma: torch.Tensor, loss: str, delta: float) -> torch.Tensor:
    """Mean loss of zero-mean Gaussian noise of std `sigma` against a perfect prediction."""
    if loss != "huber":
        return sigma**2
    sigma = sigma.clamp_min(_TINY)
    a = delta / sigma
    normal = torch.distributions.Normal(0.0, 1.0)
    cdf, pdf = normal.cdf(a), normal.log_prob(a).exp()
    return 0.5 * sigma**2 * (2 * cdf - 1) + delta * sigma * pdf - delta**2 * (1 - cdf)


def patch_noise_floor(model, processor, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, T): each sequence patch's expected loss from pixel noise alone (see the module docstring)."""
    from astropt_hf.data.artefacts import sky_noise
    from astropt_hf.modeling_astropt import AstroPTPatchify

    config = model.config
    flux, slope = _unstretch(processor, pixel_values.float())
    band_sigma = torch.as_tensor(sky_noise(flux.cpu().numpy()), dtype=flux.dtype, device=flux.device)
    pixel_sigma = slope * band_sigma[:, :, None, None]
    unnormalised = copy.deepcopy(config)
    unnormalised.patch_norm = "none"
    cut = AstroPTPatchify(unnormalised)
    values, sigmas = cut(pixel_values.float()), cut(pixel_sigma)
    # the same scale the model divides each patch (or image) by: unbiased std + eps
    if config.patch_norm == "per_patch":
        scale = values.std(dim=-1, keepdim=True) + config.patch_norm_eps
    elif config.patch_norm == "per_image":
        scale = values.flatten(1).std(dim=-1)[:, None, None] + config.patch_norm_eps
    else:
        scale = torch.ones_like(values[..., :1])
    return _expected_noise_loss(sigmas / scale, config.loss, float(config.huber_delta)).mean(dim=-1)


@dataclass
class BatchScores:
    """One batch's numbers: `loss` and `noise_floor` (B, T - 1) for the predicted patches 1..T-1 and the
    pooled `embeddings` (B, D)."""

    loss: np.ndarray
    noise_floor: np.ndarray
    embeddings: np.ndarray


@torch.no_grad()
def score_pixel_batch(model, processor, pixel_values: torch.Tensor) -> BatchScores:
    """Per-patch next-patch loss, its noise floor and the embedding of each image, in one forward pass."""
    device = next(model.parameters()).device
    pixel_values = pixel_values.to(device)
    outputs = model.astropt(pixel_values=pixel_values)
    predictions = model.patch_head(outputs.last_hidden_state)[:, :-1].float()
    targets = model.image_to_patches(pixel_values)[:, 1:].float()
    if model.config.loss == "huber":
        loss = F.huber_loss(predictions, targets, reduction="none", delta=model.config.huber_delta)
    else:
        loss = F.mse_loss(predictions, targets, reduction="none")
    floor = patch_noise_floor(model, processor, pixel_values)[:, 1:]
    return BatchScores(
        loss=loss.mean(dim=-1).cpu().numpy(),
        noise_floor=floor.cpu().numpy(),
        embeddings=outputs.pooler_output.float().cpu().numpy(),
    )


@dataclass
class RawScores:
    """The model's numbers for a set of images, before any reference: ids, per-patch log(loss / noise
    floor) (N, T - 1), mean loss and mean noise floor (N,), embeddings (N, D)."""

    ids: np.ndarray
    log_excess: np.ndarray
    loss: np.ndarray
    noise_floor: np.ndarray
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_batch(cls, ids, scores: BatchScores) -> RawScores:
        log_excess = np.log(np.maximum(scores.loss, _TINY) / np.maximum(scores.noise_floor, _TINY))
        return cls(np.asarray(ids, dtype=object), log_excess.astype(np.float32), scores.loss.mean(axis=1),
                   scores.noise_floor.mean(axis=1), scores.embeddings)  # fmt: skip

    @classmethod
    def concatenate(cls, parts: list[RawScores]) -> RawScores:
        if not parts:
            raise ValueError("no images were scored (empty dataset, or every image unreadable)")
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in
                     ("ids", "log_excess", "loss", "noise_floor", "embeddings")))  # fmt: skip


def array_batches(images: np.ndarray, processor, batch_size: int = 64, ids: Iterable[str] | None = None) -> Iterator[dict]:
    """Batches ``{"ids", "pixel_values"}`` of in-memory (N, C, H, W) flux images, through the processor."""
    ids = [str(i) for i in (range(len(images)) if ids is None else ids)]
    for start in range(0, len(images), batch_size):
        chunk = [np.asarray(image, dtype=np.float32) for image in images[start : start + batch_size]]
        pixels = processor(chunk, return_tensors="pt", input_data_format="channels_first")["pixel_values"]
        yield {"ids": ids[start : start + batch_size], "pixel_values": pixels}


def collect_scores(model, processor, batches: Iterable[dict]) -> RawScores:
    """Score every batch of `batches` (dicts with "ids" and "pixel_values") and keep all the numbers."""
    parts = [RawScores.from_batch(b["ids"], score_pixel_batch(model, processor, b["pixel_values"]))
             for b in batches if len(b["ids"])]  # fmt: skip
    return RawScores.concatenate(parts)


# --------------------------------------------------------------------------- reference


def tail_scale(sorted_values: np.ndarray) -> float:
    """Scale of an exponential tail fitted to the top decile of `sorted_values`: the mean excess over the
    90th percentile (the maximum-likelihood scale of a peaks-over-threshold fit with shape 0)."""
    threshold = np.quantile(sorted_values, 0.9)
    excess = sorted_values[sorted_values > threshold] - threshold
    scale = float(excess.mean()) if excess.size else 0.0
    spread = float(sorted_values[-1] - sorted_values[0])
    return scale if scale > 0 else (spread if spread > 0 else 1.0)


@dataclass
class AnomalyReference:
    """What the scores are measured against, fitted on clean (or typical) images.

    Attributes:
        position_median, position_scale: (T - 1,) robust centre and scale of log(loss / noise floor) at
            each sequence position.
        part_values: name -> sorted (n,) values of each part on the reference images, for the p-values.
    """

    options: AnomalyOptions
    position_median: np.ndarray
    position_scale: np.ndarray
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    ids: np.ndarray
    outlier_model: object
    part_values: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def fit(cls, raw: RawScores, options: AnomalyOptions | None = None) -> AnomalyReference:
        options = options or AnomalyOptions()
        if len(raw) < 2:
            raise ValueError(f"the reference needs at least 2 images; got {len(raw)}")
        median = np.median(raw.log_excess, axis=0)
        scale = 1.4826 * np.median(np.abs(raw.log_excess - median), axis=0)
        mean, spread = raw.embeddings.mean(axis=0), raw.embeddings.std(axis=0)
        spread = np.where(spread > 0, spread, 1.0)
        features = (raw.embeddings - mean) / spread
        if options.outlier == "knn":
            from sklearn.neighbors import NearestNeighbors

            neighbours = min(options.neighbours + 1, len(raw))
            model = NearestNeighbors(n_neighbors=neighbours).fit(features)
        else:
            from sklearn.ensemble import IsolationForest

            model = IsolationForest(n_estimators=200, random_state=options.seed).fit(features)
        reference = cls(options, median.astype(np.float32), np.maximum(scale, 1e-6).astype(np.float32),
                        mean, spread, raw.ids, model)  # fmt: skip
        parts = reference.parts(raw)
        reference.part_values = {name: np.sort(values) for name, values in parts.items()}
        return reference

    def patch_surprise(self, raw: RawScores) -> np.ndarray:
        """(N, T - 1) z of every predicted patch against the reference patches at the same position."""
        return (raw.log_excess - self.position_median) / self.position_scale

    def _outlier(self, raw: RawScores) -> np.ndarray:
        features = (raw.embeddings - self.feature_mean) / self.feature_scale
        if self.options.outlier == "isolation_forest":
            return -self.outlier_model.score_samples(features)
        distances, index = self.outlier_model.kneighbors(features)
        is_self = self.ids[index] == raw.ids[:, None]
        # drop the image itself when it is in the reference, else the farthest of the k + 1 neighbours
        drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), distances.shape[1] - 1)
        keep = np.ones_like(distances, dtype=bool)
        keep[np.arange(len(distances)), drop] = False
        return distances[keep].reshape(len(distances), -1).mean(axis=1)

    def parts(self, raw: RawScores) -> dict[str, np.ndarray]:
        z = self.patch_surprise(raw)
        worst = np.sort(z, axis=1)[:, -min(self.options.worst_patches, z.shape[1]) :]
        return {"surprise": z.mean(axis=1), "surprise_worst": worst.mean(axis=1),
                "embedding_outlier": self._outlier(raw)}  # fmt: skip

    def log_p_values(self, parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """ln of each part's upper-tail p-value against the reference: (1 + #ref >= x) / (1 + n_ref), and
        beyond the reference's largest value an exponential tail (`tail_scale`), so the strangest still
        rank. Logarithms, because far in the tail p underflows."""
        result = {}
        for name, values in parts.items():
            reference = self.part_values[name]
            at_least = len(reference) - np.searchsorted(reference, values, side="left")
            beyond = np.maximum(values - reference[-1], 0.0) / tail_scale(reference)
            result[name] = np.log((1.0 + at_least) / (1.0 + len(reference))) - beyond
        return result

    def p_values(self, parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each part's upper-tail p-value against the reference (see `log_p_values`)."""
        return {name: np.exp(values) for name, values in self.log_p_values(parts).items()}

    def score(self, raw: RawScores) -> dict[str, np.ndarray]:
        """Columns for `raw`: id, anomaly_score, the parts, their p-values, loss and noise_loss."""
        parts = self.parts(raw)
        log_p = self.log_p_values(parts)
        combined = np.mean([-log_p[name] for name in PART_COLUMNS], axis=0)
        columns = {"id": raw.ids.astype(str), "anomaly_score": combined, **parts}
        columns.update({f"p_{name}": np.exp(log_p[name]) for name in PART_COLUMNS})
        columns.update({"loss": raw.loss, "noise_loss": raw.noise_floor})
        return columns


# --------------------------------------------------------------------------- catalogue


@dataclass(order=True)
class StrangeImage:
    """One of the top-k: its score, id, flux image (C, H, W) and per-pixel map of its patches' z."""

    anomaly_score: float
    order: int
    id: str = field(compare=False)
    image: np.ndarray = field(compare=False, repr=False)
    surprise_map: np.ndarray = field(compare=False, repr=False)


def surprise_maps(model, z: np.ndarray) -> np.ndarray:
    """(B, T - 1) patch z -> (B, H, W) images, each patch's pixels set to its z (the first patch, which
    nothing predicts, is NaN)."""
    config = model.config
    per_patch = np.concatenate([np.full((len(z), 1), np.nan, dtype=np.float32), z.astype(np.float32)], axis=1)
    size = config.patch_size * config.patch_size * config.num_channels
    patches = torch.from_numpy(np.repeat(per_patch[:, :, None], size, axis=2))
    return model.patches_to_image(patches)[:, 0].numpy()


def _reference_batches(source, processor, options: AnomalyOptions):
    import datasets

    from astropt_hf.downstream.embeddings import pixel_batches

    dataset = source.dataset
    length = None if isinstance(dataset, datasets.IterableDataset) else len(dataset)
    indices = None
    if options.max_reference is not None:
        if length is None:
            dataset = dataset.take(options.max_reference)
        elif length > options.max_reference:
            rng = np.random.default_rng(options.seed)
            indices = np.sort(rng.choice(length, size=options.max_reference, replace=False)).tolist()
    return pixel_batches(dataset, processor, source.image_column, source.id_column, options.batch_size,
                         options.num_workers, indices=indices)  # fmt: skip


def fit_reference(model, processor, source, options: AnomalyOptions | None = None) -> AnomalyReference:
    """Score (up to `max_reference` of) a `GalaxySource`'s images and fit an `AnomalyReference` on them."""
    options = options or AnomalyOptions()
    return AnomalyReference.fit(collect_scores(model, processor, _reference_batches(source, processor, options)), options)


def score_catalogue(model, processor, source, reference: AnomalyReference, options: AnomalyOptions | None = None):
    """Stream a `GalaxySource` through the model; returns (columns, the top-k `StrangeImage`s, strangest first).

    `columns` maps each output column to a (N,) array in dataset order; unreadable images are skipped.
    """
    from astropt_hf.downstream.embeddings import pixel_batches

    options = options or reference.options
    loader = pixel_batches(source.dataset, processor, source.image_column, source.id_column, options.batch_size,
                           options.num_workers)  # fmt: skip
    chunks: list[dict[str, np.ndarray]] = []
    top: list[StrangeImage] = []
    counter = itertools.count()
    for batch in loader:
        if not batch["ids"]:
            continue
        raw = RawScores.from_batch(batch["ids"], score_pixel_batch(model, processor, batch["pixel_values"]))
        columns = reference.score(raw)
        chunks.append(columns)
        _keep_strangest(top, options.top_k, model, processor, batch["pixel_values"], raw, columns, reference, counter)
    if not chunks:
        raise ValueError(f"no images of {source.origin} could be scored")
    table = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
    return table, sorted(top, reverse=True)


def _keep_strangest(top, k, model, processor, pixel_values, raw, columns, reference, counter) -> None:
    """Push this batch's strangest images into the size-k min-heap `top` (images only for those kept)."""
    if k <= 0:
        return
    scores = columns["anomaly_score"]
    threshold = top[0].anomaly_score if len(top) >= k else -np.inf
    candidates = [i for i in np.argsort(-scores)[:k] if scores[i] > threshold or len(top) < k]
    if not candidates:
        return
    flux, _ = _unstretch(processor, pixel_values[candidates].float())
    maps = surprise_maps(model, reference.patch_surprise(raw)[candidates])
    for j, i in enumerate(candidates):
        item = StrangeImage(float(scores[i]), -next(counter), str(raw.ids[i]), flux[j].numpy(), maps[j])
        if len(top) < k:
            heapq.heappush(top, item)
        elif item > top[0]:
            heapq.heapreplace(top, item)


def write_scores(columns: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write the score columns to Parquet, highest anomaly_score first, with `metadata` as JSON."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    order = np.argsort(-columns["anomaly_score"], kind="stable")
    table = pa.table({name: values[order] for name, values in columns.items()})
    if metadata is not None:
        table = table.replace_schema_metadata({b"astropt_hf.anomaly": json.dumps(metadata, default=str).encode()})
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pq.write_table(table, path)
