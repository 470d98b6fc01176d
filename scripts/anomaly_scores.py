#!/usr/bin/env python
"""Rank a catalogue's galaxies by how strange they are to a pretrained astroPT.

    python scripts/anomaly_scores.py --model runs/astropt-demo --dataset synthetic --output scores.parquet \\
        --grid strangest.png
    python scripts/anomaly_scores.py --model DIR --dataset my_cutouts/ --split all --reference synthetic \\
        --reference_split validation --output scores.parquet

Writes one row per readable image, strangest first: `id`, `anomaly_score` (higher = stranger) and its
parts `surprise`, `surprise_worst` (the model's next-patch loss over the loss pixel noise alone would
give, standardised per patch position against the reference), `embedding_outlier` (k-NN distance or
isolation-forest score of the embedding), each part's p-value against the reference, the raw mean
`loss` and its `noise_loss`. The reference defaults to the scored catalogue itself (up to
--max_reference images of it, scored in a first pass); how the parts are made and combined is in
`astropt_hf.downstream.anomaly`. `--grid` draws the top-k with heat maps of
where each one surprised the model.
"""

import dataclasses
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Literal

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning

SPLITS = Literal["train", "validation", "test", "all"]


@dataclass
class AnomalyScoreArguments:
    model: str = field(metadata={"help": "pretraining checkpoint folder or hub id (needs the next-patch head)"})
    output: str = field(metadata={"help": "Parquet file to write the scores to"})
    split: SPLITS = field(default="test", metadata={"help": "split to score"})
    reference: str | None = field(default=None, metadata={
        "help": "dataset to measure strangeness against (default: the scored catalogue itself); its image and "
                "id columns are auto-detected"})
    reference_split: SPLITS | None = field(default=None, metadata={
        "help": "split of the reference (default: --split)"})
    top_k: int = field(default=16, metadata={"help": "strangest galaxies kept for --grid"})
    grid: str | None = field(default=None, metadata={"help": "PNG of the top-k strangest galaxies"})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})
    worst_patches: int = field(default=3, metadata={"help": "patches averaged in surprise_worst"})
    neighbours: int = field(default=10, metadata={"help": "k of the k-NN embedding distance"})
    outlier: Literal["knn", "isolation_forest"] = field(default="knn", metadata={"help": "embedding outlier score"})
    max_reference: int = field(default=20000, metadata={"help": "at most this many reference images are fitted"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    seed: int = field(default=0, metadata={"help": "seed of the reference subset and the isolation forest"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available)"})


def parse_args(argv: list[str] | None = None):
    """(AnomalyScoreArguments, DataArguments: the scored catalogue)."""
    from astropt_hf.command_line import ArgumentParser
    from astropt_hf.data.arguments import DataArguments

    return ArgumentParser((AnomalyScoreArguments, DataArguments), description=__doc__.split("\n\n")[0]).parse(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    from astropt_hf.data.arguments import open_dataset
    from astropt_hf.downstream import anomaly

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args, data = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = anomaly.load_pretraining_model(args.model, device)
    options = anomaly.AnomalyOptions(
        batch_size=args.batch_size, worst_patches=args.worst_patches, neighbours=args.neighbours,
        outlier=args.outlier, max_reference=args.max_reference, top_k=args.top_k, num_workers=args.num_workers,
        seed=args.seed,
    )  # fmt: skip
    size = model.config.image_size
    target_spec = data.spec(args.split, image_size=size)
    if args.reference is not None:  # another dataset: its columns are detected, not the catalogue's
        data = dataclasses.replace(data, dataset=args.reference, image_column=None, id_column=None)
    reference_spec = data.spec(args.reference_split or args.split, image_size=size)
    target = open_dataset(target_spec)
    reference = anomaly.fit_reference(model, processor, open_dataset(reference_spec), options)
    columns, strangest = anomaly.score_catalogue(model, processor, target, reference, options)
    metadata = {"model": args.model, "dataset": target_spec, "reference": reference_spec,
                "options": asdict(options)}  # fmt: skip
    anomaly.write_scores(columns, args.output, metadata)
    print(f"scored {len(columns['id'])} images of {target.origin} against {len(reference.ids)} reference images "
          f"-> {args.output}")  # fmt: skip
    if args.grid and strangest:
        from astropt_hf.plotting.anomaly import plot_anomaly_grid

        plot_anomaly_grid(strangest, args.grid, title=f"{len(strangest)} strangest of {target.origin}")
        print(f"top {len(strangest)} -> {args.grid}")
    for item in strangest[:5]:
        print(json.dumps({"id": item.id, "anomaly_score": round(item.anomaly_score, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
