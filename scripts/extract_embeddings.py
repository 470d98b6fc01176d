#!/usr/bin/env python
"""Embed a galaxy catalogue with a pretrained astroPT into Parquet (id, row, embedding, catalogue columns).

    python scripts/extract_embeddings.py --model runs/astropt-demo --dataset synthetic --split test --output emb.parquet
    accelerate launch scripts/extract_embeddings.py --model smith42/astropt-v2 --dataset Smith42/galaxies \\
        --split train --streaming --bf16 --batch_size 512 --output galaxies.parquet     # every GPU takes a share
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/extract_embeddings.py ...

    python scripts/extract_embeddings.py --model runs/astropt-multimodal --inputs spectra --output spectra.parquet

Rerunning the same command resumes: rows already in the output (or in its .parts/ folder) are skipped.
"""

import logging
import sys
from dataclasses import dataclass
from typing import Literal

from astropt_hf.command_line import ArgumentParser, option
from astropt_hf.data.arguments import DataArguments, open_dataset

SPLITS = Literal["train", "validation", "test", "all"]
POOLINGS = Literal["mean", "mean_first_k", "last"]


@dataclass
class ExtractArguments:
    model: str = option(help="pretrained astroPT folder or hub id")
    output: str = option(help="Parquet file to write (resumed if it exists)")
    split: SPLITS = option("test", "split to use (default: test)")
    inputs: Literal["images", "spectra", "images+spectra"] = option(
        "images", "embed from the images, the spectra (a model with spectra) or both"
    )
    batch_size: int = option(64)
    bf16: bool = option(False, "bfloat16 autocast for the forward pass")
    layer: int | str | None = option(None, "'last', 'middle' (upstream v2) or a block index (default: the model config's)")
    pooling: POOLINGS | None = option(None, "pooling over patches (default: the model config's)")
    pooling_num_patches: int | None = option(None, "k for mean_first_k (upstream probes: 64)")
    carry_columns: str | None = option(None, "comma-separated catalogue columns to copy (default: every scalar column)")
    rows_per_chunk: int = option(4096, "rows per chunk file / row group; a killed run loses at most one chunk per process")
    num_workers: int = option(0, "DataLoader workers per process")
    overwrite: bool = option(False, "start afresh instead of resuming")
    no_trust_remote_code: bool = option(False, "refuse remote code from the hub")


def parse_args(argv=None) -> tuple[ExtractArguments, DataArguments]:
    return ArgumentParser((ExtractArguments, DataArguments), description=__doc__).parse(argv)


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args, data = parse_args(argv)
    from accelerate import Accelerator

    from astropt_hf.downstream.embeddings import (
        ExtractionOptions,
        extract_embeddings,
        load_backbone,
        load_spectrum_extractor,
    )
    from astropt_hf.training.collectives import leave_process_group

    accelerator = Accelerator()
    trust = not args.no_trust_remote_code
    model, processor = load_backbone(args.model, accelerator.device, trust_remote_code=trust)
    spectrum_extractor = load_spectrum_extractor(model, args.model, args.inputs, trust_remote_code=trust)
    spec = data.spec(args.split, image_size=model.config.image_size)
    source = open_dataset(spec)
    options = ExtractionOptions(
        batch_size=args.batch_size,
        layer=args.layer,
        pooling=args.pooling,
        pooling_num_patches=args.pooling_num_patches,
        bf16=args.bf16,
        image_column=source.image_column,
        id_column=source.id_column,
        carry_columns=args.carry_columns.split(",") if args.carry_columns else None,
        rows_per_chunk=args.rows_per_chunk,
        num_workers=args.num_workers,
        overwrite=args.overwrite,
        inputs=args.inputs,
        spectrum_extractor=spectrum_extractor,
        model_name=args.model,
        extra_metadata={"dataset": spec},
    )
    try:
        summary = extract_embeddings(model, source.dataset, processor, args.output, options, accelerator=accelerator)
    finally:
        leave_process_group()
    if accelerator.is_main_process:
        print(summary.throughput_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
