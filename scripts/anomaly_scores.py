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
    dataset: str = field(default="synthetic", metadata={
        "help": "'synthetic', an image folder, parquet/arrow file(s), a save_to_disk folder or a hub id"})
    split: SPLITS = field(default="test", metadata={"help": "split to score"})
    reference: str | None = field(default=None, metadata={
        "help": "dataset to measure strangeness against (default: the scored catalogue itself); its image and "
                "id columns are auto-detected"})
    reference_split: SPLITS | None = field(default=None, metadata={
        "help": "split of the reference (default: --split)"})
    streaming: bool = field(default=False, metadata={"help": "read the datasets lazily (IterableDataset)"})
    image_column: str | None = field(default=None, metadata={"help": "image column (auto-detected when omitted)"})
    id_column: str | None = field(default=None, metadata={"help": "id column (auto-detected when omitted)"})
    data_cache_dir: str | None = field(default=None, metadata={"help": "cache for the synthetic set / downloads"})
    synthetic_num_train: int = field(default=3000, metadata={"help": "synthetic set: train size"})
    synthetic_num_validation: int = field(default=256, metadata={"help": "synthetic set: validation size"})
    synthetic_num_test: int = field(default=512, metadata={"help": "synthetic set: test size"})
    synthetic_seed: int = field(default=0, metadata={"help": "synthetic set: seed"})
    synthetic_image_size: int | None = field(default=None, metadata={
        "help": "synthetic stamp size in pixels (default: the model's image_size)"})
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


def parse_args(argv: list[str] | None = None) -> AnomalyScoreArguments:
    from astropt_hf.command_line import ArgumentParser

    (args,) = ArgumentParser(AnomalyScoreArguments, description=__doc__.split("\n\n")[0]).parse(argv)
    return args


def dataset_spec(args: AnomalyScoreArguments, dataset: str, split: str, image_size: int, columns: bool) -> dict:
    """The `astropt_hf.data.arguments.open_dataset` spec of `dataset`; `columns` passes the column options."""
    spec = {"dataset": dataset, "split": split, "streaming": args.streaming,
            "image_column": args.image_column if columns else None, "id_column": args.id_column if columns else None,
            "data_cache_dir": args.data_cache_dir}  # fmt: skip
    if dataset.strip().lower() == "synthetic":
        spec["synthetic"] = {"num_train": args.synthetic_num_train, "num_validation": args.synthetic_num_validation,
                             "num_test": args.synthetic_num_test, "seed": args.synthetic_seed,
                             "image_size": int(args.synthetic_image_size or image_size)}  # fmt: skip
    return spec


def main(argv: list[str] | None = None) -> int:
    import torch

    from astropt_hf.data.arguments import open_dataset
    from astropt_hf.downstream import anomaly

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = anomaly.load_pretraining_model(args.model, device)
    options = anomaly.AnomalyOptions(
        batch_size=args.batch_size, worst_patches=args.worst_patches, neighbours=args.neighbours,
        outlier=args.outlier, max_reference=args.max_reference, top_k=args.top_k, num_workers=args.num_workers,
        seed=args.seed,
    )  # fmt: skip
    size = model.config.image_size
    target_spec = dataset_spec(args, args.dataset, args.split, size, columns=True)
    if args.reference is None:
        reference_spec = dataset_spec(args, args.dataset, args.reference_split or args.split, size, columns=True)
    else:
        reference_spec = dataset_spec(args, args.reference, args.reference_split or args.split, size, columns=False)
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
