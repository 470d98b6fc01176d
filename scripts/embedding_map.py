#!/usr/bin/env python
"""A 2-D map of an embeddings file coloured by a catalogue column, with galaxy thumbnails drawn on it.

    python scripts/embedding_map.py --embeddings emb.parquet --color_by redshift --output map.png
    python scripts/embedding_map.py --embeddings emb.parquet --color_by mag_r --method pca --thumbnails 0 --output m.png

--method auto (default) is UMAP where umap-learn is installed (pip install umap-learn), else t-SNE;
pca is linear and fast. The thumbnails come from the dataset recorded in the embeddings file
(--split picks another split of it).
"""

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser


@dataclass
class EmbeddingMapArguments:
    embeddings: str = field(metadata={"help": "Parquet file from extract_embeddings.py"})
    color_by: str = field(metadata={"help": "catalogue column of the file to colour the points by"})
    output: str = field(metadata={"help": "PNG to write"})
    method: str = field(default="auto", metadata={"choices": ["auto", "umap", "tsne", "pca"],
                                                  "help": "projection (auto: UMAP if installed, else t-SNE)"})
    thumbnails: int = field(default=60, metadata={"help": "galaxies drawn as thumbnails (0: points only)"})
    split: str | None = field(default=None, metadata={"help": "reopen this split of the recorded dataset"})
    seed: int = field(default=0, metadata={"help": "seed of the projection and the thumbnail sample"})
    title: str | None = field(default=None, metadata={"help": "figure title"})


def parse_args(argv=None) -> EmbeddingMapArguments:
    parser = HfArgumentParser(EmbeddingMapArguments, description=__doc__, allow_abbrev=False)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
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
