#!/usr/bin/env python
"""Benchmark the anomaly scores on injected survey artefacts, against simple pixel baselines.

    python scripts/evaluate_anomalies.py --model runs/astropt-demo --output_dir runs/anomaly-benchmark

Takes the held-out galaxies (default: the built-in synthetic test split) as the catalogue and a separate
clean split (default: validation) as the reference; for each artefact kind of
`astropt_hf.data.artefacts` damages a random --fraction of the catalogue and reports ROC AUC and
precision at k (k = number damaged) per kind and overall, for the combined anomaly score, its parts and
the baselines (see `astropt_hf.studies.anomaly_benchmark`). Writes anomaly_benchmark.json, .md (the
tables), anomaly_benchmark_auc.png and anomaly_benchmark_strangest.png (the top of the mixed catalogue,
with heat maps of where the model was surprised). Images must be (C, H, W) arrays in flux units, as the built-in
set's nanomaggies: the artefacts are scaled to each stamp's sky noise.
"""

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning

SPLITS = Literal["train", "validation", "test"]


@dataclass
class EvaluateAnomaliesArguments:
    model: str = field(metadata={"help": "pretraining checkpoint folder or hub id (needs the next-patch head)"})
    output_dir: str = field(metadata={"help": "folder for the JSON, markdown table and bar chart"})
    split: SPLITS = field(default="test", metadata={"help": "split damaged and scored"})
    reference_split: SPLITS = field(default="validation", metadata={"help": "clean split fitted as the reference"})
    max_images: int | None = field(default=None, metadata={"help": "use at most this many catalogue images"})
    fraction: float = field(default=0.1, metadata={"help": "fraction of the catalogue damaged per kind"})
    kinds: str | None = field(default=None, metadata={"help": "comma-separated artefact kinds (default: all)"})
    seed: int = field(default=0, metadata={"help": "seed of which images are damaged and how"})
    pca_components: int = field(default=16, metadata={"help": "components of the PCA baseline"})
    neighbours: int = field(default=10, metadata={"help": "k of the k-NN embedding distance"})
    worst_patches: int = field(default=3, metadata={"help": "patches averaged in surprise_worst"})
    strangest: int = field(default=16, metadata={"help": "draw the N strangest of the mixed catalogue (0: no figure)"})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available)"})


def parse_args(argv: list[str] | None = None):
    """(EvaluateAnomaliesArguments, DataArguments: the dataset of (C, H, W) flux images)."""
    from astropt_hf.command_line import ArgumentParser
    from astropt_hf.data.arguments import DataArguments

    return ArgumentParser((EvaluateAnomaliesArguments, DataArguments),
                          description=__doc__.split("\n\n")[0]).parse(argv)


def load_images(data, split: str, image_size: int, limit: int | None = None):
    """(N, C, H, W) float32 flux images of one split of `data` (a `DataArguments`), through `open_dataset`."""
    import numpy as np

    from astropt_hf.data.arguments import open_dataset
    from astropt_hf.data.decoding import decode_image

    spec = dataclasses.replace(data, streaming=False, id_column=None).spec(split, image_size=image_size)
    source = open_dataset(spec)
    count = len(source.dataset) if limit is None else min(limit, len(source.dataset))
    images = np.stack([decode_image(value) for value in source.dataset.select(range(count))[source.image_column]])
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{data.dataset} [{split}]: expected (C, H, W) float flux images; got {images.shape} {images.dtype}")
    return images.astype(np.float32), source.origin


def main(argv: list[str] | None = None) -> int:
    import torch

    from astropt_hf.data.artefacts import ARTEFACT_KINDS
    from astropt_hf.downstream.anomaly import AnomalyOptions, load_pretraining_model
    from astropt_hf.studies.anomaly_benchmark import (
        BenchmarkOptions,
        run_anomaly_benchmark,
        write_benchmark_report,
    )

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args, data = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_pretraining_model(args.model, device)
    catalogue, origin = load_images(data, args.split, model.config.image_size, args.max_images)
    reference, reference_origin = load_images(data, args.reference_split, model.config.image_size)
    kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else tuple(ARTEFACT_KINDS)
    options = BenchmarkOptions(
        fraction=args.fraction, kinds=kinds, seed=args.seed, pca_components=args.pca_components,
        anomaly=AnomalyOptions(batch_size=args.batch_size, neighbours=args.neighbours, worst_patches=args.worst_patches),
    )  # fmt: skip
    report = run_anomaly_benchmark(model, processor, catalogue, reference, options, strangest=args.strangest)
    report["settings"].update({"model": args.model, "catalogue": origin, "reference": reference_origin})
    paths = write_benchmark_report(report, args.output_dir, title=f"artefacts in {origin}, reference {reference_origin}")
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
