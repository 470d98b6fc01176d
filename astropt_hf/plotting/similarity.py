"""Similarity-search benchmark figure: k-NN query and index build times against catalogue size."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .style import save_figure

__all__ = ["plot_knn_benchmark"]


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
    return save_figure(fig, path)
