#!/usr/bin/env python
"""Embed a galaxy catalogue with a pretrained astroPT into Parquet (id, row, embedding, catalogue columns).

    python scripts/extract_embeddings.py --model runs/astropt-demo --dataset synthetic --split test --output emb.parquet
    accelerate launch scripts/extract_embeddings.py --model smith42/astropt-v2 --dataset Smith42/galaxies \\
        --split train --streaming --bf16 --batch_size 512 --output galaxies.parquet     # every GPU takes a share
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/extract_embeddings.py ...

Rerunning the same command resumes: rows already in the output (or in its .parts/ folder) are skipped.
"""

import argparse
import logging
import sys

from astropt_hf.data.arguments import add_dataset_arguments, dataset_spec, open_dataset


def layer_choice(value: str):
    """'last', 'middle' or a block index."""
    return int(value) if value.lstrip("-").isdigit() else value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pretrained astroPT folder or hub id")
    parser.add_argument("--output", required=True, help="Parquet file to write (resumed if it exists)")
    add_dataset_arguments(parser)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward pass")
    parser.add_argument("--layer", type=layer_choice, default=None,
                        help="'last', 'middle' (upstream v2) or a block index (default: the model config's)")
    parser.add_argument("--pooling", choices=("mean", "mean_first_k", "last"), default=None,
                        help="pooling over patches (default: the model config's)")
    parser.add_argument("--pooling_num_patches", type=int, default=None,
                        help="k for mean_first_k (upstream probes: 64)")
    parser.add_argument("--carry_columns", default=None,
                        help="comma-separated catalogue columns to copy (default: every scalar column)")
    parser.add_argument("--rows_per_chunk", type=int, default=4096,
                        help="rows per chunk file / row group; a killed run loses at most one chunk per process")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers per process")
    parser.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    parser.add_argument("--no_trust_remote_code", action="store_true", help="refuse remote code from the hub")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args = parse_args(argv)
    from accelerate import Accelerator

    from astropt_hf.downstream.embeddings import ExtractionOptions, extract_embeddings, load_backbone

    accelerator = Accelerator()
    model, processor = load_backbone(args.model, accelerator.device, trust_remote_code=not args.no_trust_remote_code)
    spec = dataset_spec(args, image_size=model.config.image_size)
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
        model_name=args.model,
        extra_metadata={"dataset": spec},
    )
    summary = extract_embeddings(model, source.dataset, processor, args.output, options, accelerator=accelerator)
    if accelerator.is_main_process:
        print(summary.throughput_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
