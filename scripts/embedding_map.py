#!/usr/bin/env python
"""A 2-D map of an embeddings file coloured by a catalogue column, with galaxy thumbnails drawn on it.

    python scripts/embedding_map.py --embeddings emb.parquet --color_by redshift --output map.png
    python scripts/embedding_map.py --embeddings emb.parquet --color_by mag_r --method pca --thumbnails 0 --output m.png

--method auto (default) is UMAP where umap-learn is installed (pip install umap-learn), else t-SNE;
pca is linear and fast. The thumbnails come from the dataset recorded in the embeddings file
(--split picks another split of it).
"""

import sys
from dataclasses import dataclass
from typing import Literal

from astropt_hf.command_line import ArgumentParser, option


@dataclass
class EmbeddingMapArguments:
    embeddings: str = option(help="Parquet file from extract_embeddings.py")
    color_by: str = option(help="catalogue column of the file to colour the points by")
    output: str = option(help="PNG to write")
    method: Literal["auto", "umap", "tsne", "pca"] = option("auto", "projection (auto: UMAP if installed, else t-SNE)")
    thumbnails: int = option(60, "galaxies drawn as thumbnails (0: points only)")
    split: str | None = option(None, "reopen this split of the recorded dataset")
    seed: int = option(0, "seed of the projection and the thumbnail sample")
    title: str | None = option(None, "figure title")


def parse_args(argv=None) -> EmbeddingMapArguments:
    (args,) = ArgumentParser(EmbeddingMapArguments, description=__doc__).parse(argv)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from astropt_hf.downstream.embedding_map import build_embedding_map
    from astropt_hf.downstream.embeddings import read_embeddings

    spec = None
    if args.split is not None:
        spec = dict(read_embeddings(args.embeddings, columns=[]).metadata.get("dataset") or {}, split=args.split)
    try:
        result = build_embedding_map(args.embeddings, args.color_by, args.output, method=args.method,
                                     thumbnails=args.thumbnails, dataset_spec=spec, seed=args.seed, title=args.title)
    except (ValueError, ImportError) as error:
        sys.exit(f"embedding_map.py: {error}")
    print(f"wrote {result.path} ({result.method}, {len(result.coords)} galaxies, "
          f"{len(result.thumbnail_positions)} thumbnails)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
