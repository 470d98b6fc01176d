#!/usr/bin/env python
"""Cosine nearest neighbours of a galaxy in an embeddings file, drawn as a PNG.

    python scripts/similarity_search.py --embeddings emb.parquet --query_index 0 --k 8 --output neighbours.png
    python scripts/similarity_search.py --embeddings emb.parquet --query_id synthetic-s0-test-0000007 --k 8 \\
        --output n.png --backend faiss_hnsw          # graph index for large catalogues (pip install faiss-cpu)
    python scripts/similarity_search.py --benchmark --benchmark_sizes 1000,10000,100000   # where faiss pays

The images come from the dataset recorded in the embeddings file (override with --dataset/--split ...).
The printed list starts with the query itself (rank 0, similarity 1); the PNG shows the query and its
k nearest other galaxies.
"""

import json
import logging
import sys
from dataclasses import dataclass
from typing import Literal

from astropt_hf.command_line import ArgumentParser, option
from astropt_hf.data.arguments import DataArguments


@dataclass
class SearchArguments:
    embeddings: str | None = option(None, "Parquet file from extract_embeddings.py")
    query_index: int | None = option(None, "row of the embeddings file to search from")
    query_id: str | None = option(None, "id of the galaxy to search from")
    k: int = option(8, "neighbours to find (besides the query)")
    output: str | None = option(None, "PNG to write")
    backend: Literal["exact", "faiss_flat", "faiss_hnsw"] = option("exact")
    no_centre: bool = option(
        False, "cosine of the raw embeddings (default: of the embeddings minus the catalogue mean)"
    )
    split: Literal["train", "validation", "test", "all"] | None = option(
        None, "split to use (default: the one recorded in the embeddings file)"
    )


@dataclass
class RecordedDataArguments(DataArguments):
    """The dataset options, by default the dataset recorded in the embeddings file."""

    dataset: str | None = option(
        None, "'synthetic', an image folder, parquet/arrow file(s), a save_to_disk folder or a hub dataset id "
        "(default: the one recorded in the embeddings file)"
    )


@dataclass
class BenchmarkArguments:
    _argument_group_name = "benchmark"

    benchmark: bool = option(False, "time the backends instead of searching")
    benchmark_sizes: str = option("1000,10000,100000,1000000")
    benchmark_dim: int = option(128)
    benchmark_queries: int = option(200)
    benchmark_output: str | None = option(None, "also write the rows as JSON here")
    benchmark_plot: str | None = option(None, "also draw query and build times as this PNG")


def parse_args(argv=None) -> tuple[SearchArguments, RecordedDataArguments, BenchmarkArguments]:
    parser = ArgumentParser((SearchArguments, RecordedDataArguments, BenchmarkArguments), description=__doc__)
    args, data, bench = parser.parse(argv)
    if args.query_index is not None and args.query_id is not None:
        parser.error("argument --query_id: not allowed with argument --query_index")
    if not bench.benchmark:
        missing = [flag for flag, value in (("--embeddings", args.embeddings), ("--output", args.output)) if not value]
        if args.query_index is None and args.query_id is None:
            missing.append("--query_index or --query_id")
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
    return args, data, bench


def run_benchmark(args) -> int:
    from astropt_hf.downstream.similarity import benchmark_knn, knn_crossover

    sizes = [int(size) for size in args.benchmark_sizes.split(",")]
    rows = benchmark_knn(sizes=sizes, dim=args.benchmark_dim, num_queries=args.benchmark_queries, progress=True)
    print("| catalogue | backend | build s | one query ms | batched ms/query | recall@10 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['size']:,} | {row['backend']} | {row['build_seconds']:.3f} | {1e3 * row['query_seconds']:.3f} "
              f"| {1e3 * row['batched_query_seconds']:.4f} | {row['recall_at_10']:.3f} |")
    crossover = {timing: knn_crossover(rows, timing=f"{timing}_seconds") for timing in ("query", "batched_query")}
    for timing, found in crossover.items():
        how = "single queries" if timing == "query" else f"queries in batches of {args.benchmark_queries}"
        if found["size"] is None:
            print(f"faiss_hnsw answered {how} no faster than exact search at any size measured")
            continue
        paid_back = ", ".join(f"{size:,}: {n:,}" for size, n in found["break_even_queries"].items() if n is not None)
        print(f"faiss_hnsw answers {how} faster than exact search from {found['size']:,} embeddings on; its build "
              f"time is paid back after this many queries (catalogue size: queries): {paid_back}")
    if args.benchmark_output:
        with open(args.benchmark_output, "w") as handle:
            json.dump({"rows": rows, "crossover": crossover}, handle, indent=2)
    if args.benchmark_plot:
        from astropt_hf.plotting import plot_knn_benchmark

        print(f"wrote {plot_knn_benchmark(rows, args.benchmark_plot, crossover['batched_query']['size'])}")
    return 0


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args, data, bench = parse_args(argv)
    if bench.benchmark:
        return run_benchmark(bench)
    from astropt_hf.downstream.embeddings import read_embeddings
    from astropt_hf.downstream.similarity import find_neighbours, neighbour_images

    table = read_embeddings(args.embeddings, columns=["row"])
    spec = dict(table.metadata.get("dataset") or {})
    if data.dataset is not None:
        spec = data.spec(args.split, image_size=(spec.get("synthetic") or {}).get("image_size"))
    elif args.split is not None:
        spec["split"] = args.split
    if not spec:
        sys.exit(f"similarity_search.py: {args.embeddings} records no dataset; pass --dataset (and --split)")
    result = find_neighbours(table, args.k, query_index=args.query_index, query_id=args.query_id, backend=args.backend,
                             centre=not args.no_centre)
    for rank, (row_id, score) in enumerate(zip(result.ids, result.scores)):
        print(f"{rank:3d}  {score:.4f}  {row_id}" + ("  (query)" if rank == 0 else ""))
    path = neighbour_images(result, spec, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
