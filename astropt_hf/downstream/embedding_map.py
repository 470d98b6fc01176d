"""A 2-D map of an embeddings file, coloured by a catalogue column, with galaxy thumbnails on it.

The projection is UMAP when `umap-learn` is installed (an optional extra), otherwise t-SNE from
scikit-learn; PCA is there for a quick, deterministic, linear view. UMAP and t-SNE run on the first
50 principal components of the centred embeddings, the usual way to make them fast and less noisy.
Thumbnails are drawn for a sample of galaxies spread over the map (farthest-point sampling, so dense
clumps do not take every thumbnail); their images are reopened from the dataset the embeddings file
records, passed through the model's image processor and colour-stretched, as the model saw them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from astropt_hf.data.catalogue_units import column_label

METHODS = ("auto", "umap", "tsne", "pca")
PRE_COMPONENTS = 50

__all__ = ["METHODS", "EmbeddingMap", "build_embedding_map", "map_columns", "project_2d", "spread_sample",
           "umap_available"]  # fmt: skip


def umap_available() -> bool:
    return importlib.util.find_spec("umap") is not None


def _principal_components(vectors: np.ndarray, n_components: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.decomposition import PCA

    n_components = max(1, min(n_components, vectors.shape[0] - 1, vectors.shape[1]))
    pca = PCA(n_components=n_components, random_state=seed)
    return pca.fit_transform(vectors), pca.explained_variance_ratio_


def project_2d(embeddings: Any, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str, dict[str, Any]]:
    """(N, D) -> ((N, 2) coordinates, the method used, details such as PCA's explained variance).

    "auto" is UMAP where `umap-learn` is importable, else t-SNE.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not valid; expected one of {list(METHODS)}")
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] < 3:
        raise ValueError(f"embeddings: need at least 3 rows of (N, D) to draw a map; got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("embeddings hold NaN or infinite values")
    vectors = vectors - vectors.mean(axis=0)
    if method == "auto":
        method = "umap" if umap_available() else "tsne"
    if method == "pca":
        coords, explained = _principal_components(vectors, 2, seed)
        if coords.shape[1] == 1:
            coords = np.concatenate([coords, np.zeros_like(coords)], axis=1)
        return coords, method, {"explained_variance": [float(v) for v in explained]}
    reduced, _ = _principal_components(vectors, PRE_COMPONENTS, seed)
    if method == "umap":
        if not umap_available():
            raise ImportError("method='umap' needs umap-learn, an optional extra: pip install umap-learn")
        import umap

        neighbours = min(15, vectors.shape[0] - 1)
        return umap.UMAP(n_components=2, n_neighbors=neighbours, random_state=seed).fit_transform(reduced), method, {}
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (vectors.shape[0] - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(reduced), method, {"perplexity": perplexity}


def spread_sample(coords: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Indices of `count` points spread over the map: each next point is the farthest from those chosen."""
    count = min(count, len(coords))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    scale = np.ptp(coords, axis=0)
    points = coords / np.where(scale > 0, scale, 1.0)
    chosen = [int(np.random.default_rng(seed).integers(len(points)))]
    distance = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(points - points[chosen[-1]], axis=1))
    return np.asarray(chosen, dtype=np.int64)


def map_columns(path: str | os.PathLike) -> list[str]:
    """The catalogue columns of an embeddings file a map can be coloured by."""
    import pyarrow.parquet as pq

    from astropt_hf.downstream.embeddings import EMBEDDING_COLUMN

    return [name for name in pq.read_schema(path).names if name not in ("id", EMBEDDING_COLUMN)]


@dataclass
class EmbeddingMap:
    """What `build_embedding_map` drew."""

    path: Path
    method: str
    coords: np.ndarray
    thumbnail_positions: np.ndarray


def _thumbnail_images(table, positions: np.ndarray, spec: Mapping[str, Any], processor=None) -> list[np.ndarray]:
    from transformers import AutoImageProcessor

    import astropt_hf  # noqa: F401  (Auto classes for local folders)
    from astropt_hf.data import decode_image
    from astropt_hf.data.arguments import open_dataset
    from astropt_hf.downstream.similarity import fetch_images
    from astropt_hf.plotting import galaxy_rgb

    source = open_dataset(dict(spec))
    ids = [str(table.ids[p]) for p in positions]
    rows = [int(table.columns["row"][p]) if "row" in table.columns else -1 for p in positions]
    raw = fetch_images(source.dataset, source.image_column, source.id_column, ids, rows)
    if processor is None:
        processor = AutoImageProcessor.from_pretrained(str(table.metadata.get("model", "")), trust_remote_code=True)
    pixels = processor([decode_image(image, source=row_id) for image, row_id in zip(raw, ids)],
                       return_tensors="np")["pixel_values"]  # fmt: skip
    return [galaxy_rgb(image) for image in pixels]


def build_embedding_map(
    embeddings_path: str | os.PathLike,
    color_by: str,
    output: str | os.PathLike,
    method: str = "auto",
    thumbnails: int = 60,
    dataset_spec: Mapping[str, Any] | None = None,
    seed: int = 0,
    title: str | None = None,
    processor=None,
) -> EmbeddingMap:
    """Project an embeddings Parquet file to 2-D and draw it coloured by `color_by`, with thumbnails.

    `dataset_spec` (default: the one the file records) reopens the images; `thumbnails=0` draws points
    only and needs no dataset.
    """
    from astropt_hf.downstream.embeddings import read_embeddings
    from astropt_hf.plotting.embedding_map import plot_embedding_map

    available = map_columns(embeddings_path)
    if color_by not in available:
        raise ValueError(f"color_by={color_by!r} is not a column of {embeddings_path}; available columns: {available}")
    table = read_embeddings(embeddings_path, columns=[color_by, "row"])
    coords, used, details = project_2d(table.embeddings, method, seed)
    positions = spread_sample(coords, thumbnails, seed)
    images = []
    if len(positions):
        spec = dataset_spec or table.metadata.get("dataset")
        if not spec:
            raise ValueError(f"{embeddings_path} records no dataset to draw thumbnails from; give a dataset spec "
                             "or thumbnails=0")  # fmt: skip
        images = _thumbnail_images(table, positions, spec, processor)
    path = plot_embedding_map(
        coords, table.columns[color_by], output, color_label=column_label(color_by), method=used,
        thumbnails=list(zip(positions.tolist(), images)), explained_variance=details.get("explained_variance"),
        title=title or f"astroPT embeddings of {len(table)} galaxies ({Path(str(table.metadata.get('model', ''))).name})",
    )  # fmt: skip
    return EmbeddingMap(path=path, method=used, coords=coords, thumbnail_positions=positions)
