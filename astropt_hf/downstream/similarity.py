"""Cosine nearest neighbours in an embedding catalogue: exact by default, faiss for large catalogues.

Exact search is one matrix product of unit vectors, done in blocks with torch so memory stays bounded
however large the catalogue. faiss-cpu (optional: ``pip install astropt-hf[faiss]``) adds a graph
index (HNSW) whose queries cost far less than a full scan once it is built; `benchmark_knn` measures
where that starts to pay (the README records the numbers measured on the reference machine).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data import is_streaming_dataset

BACKENDS = ("exact", "faiss_flat", "faiss_hnsw")

__all__ = [
    "BACKENDS",
    "CosineIndex",
    "Neighbours",
    "benchmark_knn",
    "exact_cosine_knn",
    "find_neighbours",
    "knn_crossover",
    "neighbour_images",
    "normalise_rows",
    "require_faiss",
]


def require_faiss():
    """Import faiss, or raise an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - exercised only without faiss
        raise ImportError(
            "this search backend needs faiss, an optional extra: pip install 'astropt-hf[faiss]' (or faiss-cpu); "
            "use backend='exact' to search without it"
        ) from error
    return faiss


def normalise_rows(vectors: Any) -> np.ndarray:
    """(N, D) -> float32 rows of unit length (all-zero rows stay zero, so they match nothing)."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"embeddings: expected a 2-D array (N, D); got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"embeddings: {int(np.sum(~np.isfinite(array)))} values are NaN or infinite")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.where(norms > 0, norms, 1.0))


def exact_cosine_knn(
    catalogue: np.ndarray,
    queries: np.ndarray,
    k: int,
    query_block: int = 256,
    catalogue_block: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine similarity of unit-norm `queries` (Q, D) against unit-norm `catalogue` (N, D).

    Blocks of queries x catalogue rows keep memory at query_block * catalogue_block floats.
    Returns (indices (Q, k) int64, similarities (Q, k) float32), best first; ties keep the lower index.
    """
    k = min(k, catalogue.shape[0])
    table = torch.from_numpy(catalogue)
    out_index = np.empty((queries.shape[0], k), dtype=np.int64)
    out_score = np.empty((queries.shape[0], k), dtype=np.float32)
    for q_start in range(0, queries.shape[0], query_block):
        query = torch.from_numpy(queries[q_start : q_start + query_block])
        best_score = best_index = None
        for c_start in range(0, table.shape[0], catalogue_block):
            scores = query @ table[c_start : c_start + catalogue_block].T
            top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            index = top.indices + c_start
            if best_score is None:
                best_score, best_index = top.values, index
            else:
                merged_score = torch.cat([best_score, top.values], dim=1)
                merged_index = torch.cat([best_index, index], dim=1)
                keep = torch.topk(merged_score, k, dim=1).indices
                best_score, best_index = merged_score.gather(1, keep), merged_index.gather(1, keep)
        # topk does not promise an order among equal scores: sort by (-score, index) for stable output.
        order = np.lexsort((best_index.numpy(), -best_score.numpy()), axis=1)
        out_index[q_start : q_start + len(query)] = np.take_along_axis(best_index.numpy(), order, axis=1)
        out_score[q_start : q_start + len(query)] = np.take_along_axis(best_score.numpy(), order, axis=1)
    return out_index, out_score


@dataclass
class CosineIndex:
    """A searchable catalogue of embeddings.

    Build with `CosineIndex.build(embeddings, backend)`; `search(queries, k)` gives the k most similar
    catalogue rows per query, most similar first. Backends: "exact" (torch, no extra dependency),
    "faiss_flat" (faiss's exact inner-product scan) and "faiss_hnsw" (approximate graph index:
    costs a build, then answers each query without scanning the catalogue).
    """

    backend: str
    vectors: np.ndarray
    faiss_index: Any = None
    build_seconds: float = 0.0

    @classmethod
    def build(
        cls, embeddings: Any, backend: str = "exact", hnsw_neighbours: int = 32, hnsw_ef_search: int = 64
    ) -> CosineIndex:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not valid; expected one of {list(BACKENDS)}")
        started = time.perf_counter()
        vectors = normalise_rows(embeddings)
        if vectors.shape[0] == 0:
            raise ValueError("embeddings: the catalogue is empty")
        index = None
        if backend != "exact":
            faiss = require_faiss()
            dim = vectors.shape[1]
            if backend == "faiss_flat":
                index = faiss.IndexFlatIP(dim)
            else:
                index = faiss.IndexHNSWFlat(dim, hnsw_neighbours, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efSearch = hnsw_ef_search
            index.add(vectors)
        return cls(backend, vectors, index, time.perf_counter() - started)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k catalogue rows for each query vector (Q, D) or (D,): (indices, cosine similarities)."""
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        queries = np.asarray(queries, dtype=np.float32)
        queries = normalise_rows(queries[None] if queries.ndim == 1 else queries)
        if queries.shape[1] != self.vectors.shape[1]:
            raise ValueError(
                f"queries have {queries.shape[1]} dimensions; the catalogue has {self.vectors.shape[1]}"
            )
        k = min(k, len(self))
        if self.faiss_index is None:
            return exact_cosine_knn(self.vectors, queries, k)
        scores, indices = self.faiss_index.search(queries, k)
        return indices.astype(np.int64), scores.astype(np.float32)

    def neighbours_of(self, rows: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for catalogue rows themselves (each row normally finds itself first)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"query rows {rows.tolist()} out of range for a catalogue of {len(self)} rows")
        return self.search(self.vectors[rows], k)


def _time_queries(index: CosineIndex, queries: np.ndarray, k: int, single: int = 20) -> tuple[float, float, np.ndarray]:
    """(seconds for one query asked alone, seconds per query in one batch, the batch's answers)."""
    index.search(queries[:1], k)  # warm-up (thread pools, lazy allocations)
    started = time.perf_counter()
    for query in queries[:single]:
        index.search(query, k)
    alone = (time.perf_counter() - started) / min(single, len(queries))
    started = time.perf_counter()
    found, _ = index.search(queries, k)
    return alone, (time.perf_counter() - started) / len(queries), found


def benchmark_knn(
    sizes: Sequence[int] = (1_000, 10_000, 100_000, 1_000_000),
    dim: int = 128,
    num_queries: int = 200,
    k: int = 10,
    backends: Sequence[str] = BACKENDS,
    seed: int = 0,
    clusters: int = 256,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Time each backend on random clustered catalogues of each size.

    For every (size, backend): build seconds, seconds for one query asked alone, seconds per query when
    `num_queries` come in one batch, and recall@k against exact search. Vectors are Gaussian blobs around `clusters` random
    centres, which is closer to real embeddings than uniform noise (where any index struggles).
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    rows: list[dict[str, float]] = []
    bar = tqdm(total=len(sizes) * len(backends), desc="k-NN benchmark", unit="index", disable=not progress)
    for size in sizes:
        labels = rng.integers(0, clusters, size=size)
        catalogue = centres[labels] + 0.5 * rng.normal(size=(size, dim)).astype(np.float32)
        queries = catalogue[rng.choice(size, size=min(num_queries, size), replace=False)]
        truth = None
        for backend in backends:
            index = CosineIndex.build(catalogue, backend)
            alone, batched, found = _time_queries(index, queries, k)
            if truth is None and backend == "exact":
                truth = found
            recall = (
                float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))
                if truth is not None
                else float("nan")
            )
            rows.append(
                {
                    "size": int(size),
                    "dim": int(dim),
                    "backend": backend,
                    "build_seconds": index.build_seconds,
                    "query_seconds": alone,
                    "batched_query_seconds": batched,
                    f"recall_at_{k}": recall,
                }
            )
            del index
            bar.set_postfix_str(f"{size:,} {backend}")
            bar.update()
    bar.close()
    return rows


def knn_crossover(rows: Sequence[Mapping[str, Any]], backend: str = "faiss_hnsw", timing: str = "query_seconds") -> dict:
    """Where `backend` starts to pay against exact search, from `benchmark_knn` rows.

    Returns {"size": the smallest benchmarked catalogue from which on `backend` answers a query faster than
    exact search (None if it never does), "break_even_queries": {size: queries after which its build time
    is paid back (None where it is not faster)}}. `timing` is "query_seconds" (queries asked one at a time)
    or "batched_query_seconds".
    """
    by_size: dict[int, dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        by_size.setdefault(int(row["size"]), {})[row["backend"]] = row
    faster, break_even = [], {}
    for size in sorted(by_size):
        pair = by_size[size]
        if "exact" not in pair or backend not in pair:
            continue
        saved = pair["exact"][timing] - pair[backend][timing]
        faster.append((size, saved > 0))
        break_even[size] = math.ceil(pair[backend]["build_seconds"] / saved) if saved > 0 else None
    crossover = None
    for size, wins in reversed(faster):  # the smallest size from which on every larger one wins
        if not wins:
            break
        crossover = size
    return {"backend": backend, "timing": timing, "size": crossover, "break_even_queries": break_even}


# --------------------------------------------------------------------------- search in an embeddings file


@dataclass
class Neighbours:
    """Result of `find_neighbours`: the query first, then its neighbours, most similar first.

    `positions` index the embeddings table, `rows` are dataset rows (-1 when unknown), `ids` the ids.
    """

    positions: np.ndarray
    ids: list[str]
    rows: list[int]
    scores: np.ndarray
    model: str


def find_neighbours(
    table, k: int, query_index: int | None = None, query_id: str | None = None, backend: str = "exact",
    centre: bool = True,
) -> Neighbours:
    """The `k` galaxies of an `EmbeddingTable` most similar to one of its rows (given by position or id).

    The query itself is always returned first (similarity 1), even if the catalogue holds an exact
    duplicate of it, and is never counted among the `k`. With `centre` (default) the similarity is the
    cosine of the embeddings minus the catalogue's mean embedding: pooled transformer embeddings share
    a large common direction, so raw cosines crowd towards 1 (on the demo's test galaxies, against one
    galaxy: median 0.93, 10th percentile 0.80); centred, they spread over [-1, 1] (median -0.17) and rank
    by what distinguishes the galaxies.
    """
    if (query_index is None) == (query_id is None):
        raise ValueError("give exactly one of query_index or query_id")
    if query_id is not None:
        matches = np.flatnonzero(table.ids.astype(str) == str(query_id))
        if matches.size == 0:
            raise ValueError(f"id {query_id!r} is not in the embeddings file ({len(table)} rows)")
        query_index = int(matches[0])
    if not -len(table) <= query_index < len(table):
        raise IndexError(f"query_index {query_index} is out of range for {len(table)} rows")
    query_index %= len(table)
    vectors = np.asarray(table.embeddings, dtype=np.float32)
    if centre:
        vectors = vectors - np.nanmean(vectors, axis=0, keepdims=True)
    index = CosineIndex.build(vectors, backend)
    found, scores = index.search(index.vectors[query_index], k + 1)
    others = [(int(p), float(s)) for p, s in zip(found[0], scores[0]) if p != query_index][:k]
    positions = np.array([query_index] + [p for p, _ in others], dtype=np.int64)
    rows = table.columns.get("row")
    return Neighbours(
        positions=positions,
        ids=[str(table.ids[p]) for p in positions],
        rows=[int(rows[p]) if rows is not None else -1 for p in positions],
        scores=np.array([1.0] + [s for _, s in others], dtype=np.float32),
        model=str(table.metadata.get("model", "")),
    )


def fetch_examples(dataset, id_column: str | None, ids: list[str], rows: list[int]) -> list[dict]:
    """The dataset's examples for `ids`: by row number when it still holds that id, else by scanning the ids."""
    wanted: dict[str, dict | None] = {row_id: None for row_id in ids}
    if not is_streaming_dataset(dataset):
        for row_id, row in zip(ids, rows):
            if 0 <= row < len(dataset):
                example = dataset[row]
                if id_column is None or str(example[id_column]) == row_id:
                    wanted[row_id] = example
        missing = [row_id for row_id, example in wanted.items() if example is None]
        if missing and id_column is not None:
            position = {str(v): i for i, v in enumerate(dataset[id_column])}
            for row_id in missing:
                if row_id in position:
                    wanted[row_id] = dataset[position[row_id]]
    else:
        for number, example in enumerate(dataset):
            key = str(example[id_column]) if id_column else str(number)
            if key in wanted and wanted[key] is None:
                wanted[key] = example
            if all(example is not None for example in wanted.values()):
                break
    missing = [row_id for row_id, example in wanted.items() if example is None]
    if missing:
        raise ValueError(f"ids {missing[:5]} of the embeddings file are not in the dataset; is it the same dataset?")
    return [wanted[row_id] for row_id in ids]


def fetch_images(dataset, image_column: str, id_column: str | None, ids: list[str], rows: list[int]) -> list:
    """Raw images for `ids` (see `fetch_examples`)."""
    return [example[image_column] for example in fetch_examples(dataset, id_column, ids, rows)]


def _caption_properties(example: dict, columns) -> dict[str, float]:
    """The example's numeric catalogue values among `columns` (for figure captions)."""
    found = {}
    for column in columns:
        value = example.get(column)
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            found[column] = float(value)
    return found


def neighbour_images(result: Neighbours, dataset_spec: dict, output, processor=None):
    """Draw the query and its neighbours (images from the dataset `dataset_spec` describes) into a PNG.

    Images are shown as the model saw them: decoded by the data layer and passed through the model's
    image processor (loaded from the embeddings file's model unless given), then colour-stretched.
    """
    from transformers import AutoImageProcessor

    import astropt_hf  # noqa: F401  (Auto classes for local folders)
    from astropt_hf.data import decode_image
    from astropt_hf.data.arguments import open_dataset
    from astropt_hf.plotting import plot_neighbours
    from astropt_hf.plotting.galaxies import NEIGHBOUR_CAPTION_COLUMNS

    source = open_dataset(dataset_spec)
    examples = fetch_examples(source.dataset, source.id_column, result.ids, result.rows)
    raw = [example[source.image_column] for example in examples]
    properties = [_caption_properties(example, NEIGHBOUR_CAPTION_COLUMNS) for example in examples]
    if processor is None:
        processor = AutoImageProcessor.from_pretrained(result.model, trust_remote_code=True)
    images = processor([decode_image(image, source=row_id) for image, row_id in zip(raw, result.ids)],
                       return_tensors="np")["pixel_values"]  # fmt: skip
    return plot_neighbours(
        images[0], images[1:], result.scores[1:], output,
        query_title=f"query\n{result.ids[0]}", neighbour_titles=result.ids[1:],
        query_properties=properties[0], neighbour_properties=properties[1:],
    )  # fmt: skip
