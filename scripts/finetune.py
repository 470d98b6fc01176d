#!/usr/bin/env python
"""Fine-tune a pretrained astroPT on one catalogue column with transformers.Trainer.

    python scripts/finetune.py --model runs/astropt-demo --dataset synthetic --target redshift \\
        --output_dir runs/ft-redshift --max_steps 300                       # regression, every weight trained
    python scripts/finetune.py ... --mode frozen                            # linear head only (a probe)
    python scripts/finetune.py ... --mode lora --lora_r 8                   # adapters (pip install peft)
    python scripts/finetune.py ... --head pdf                               # a calibrated PDF per galaxy

Trains on --train_split (default train) and evaluates on --eval_split (default test). The output folder
loads with AutoModelForImageClassification.from_pretrained(dir, trust_remote_code=True) and holds a model
card (README.md) with the metrics, finetune_results.json and, for regressions, pred_vs_true.png. With
--head pdf it also holds test_predictions.parquet (median, mode, mean, 68% and 95% intervals per test galaxy,
raw and calibrated on --calibration_split) and the PDF figures (pdf_*.png).
"""

import argparse
import json
import logging
import sys

from astropt_hf.data.arguments import add_dataset_arguments, dataset_spec, open_dataset


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pretrained astroPT folder or hub id")
    parser.add_argument("--target", required=True, help="catalogue column to predict")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--task", choices=("regression", "classification"), default=None,
                        help="default: regression for float columns, classification otherwise")
    parser.add_argument("--mode", choices=("frozen", "full", "lora"), default="full")
    parser.add_argument("--head_init", choices=("probe", "random"), default=None,
                        help="start the head from the linear probe of the training embeddings or at random "
                        "(default: probe for --mode frozen, random otherwise)")
    parser.add_argument("--augment", choices=("none", "dihedral"), default="none",
                        help="dihedral: train on random 90-degree turns and mirror images (not for position angles)")
    parser.add_argument("--head", choices=("linear", "pdf", "binned_pdf", "gaussian_mixture"), default="linear",
                        help="pdf: a probability density of a regression target (a softmax over bins, binned_pdf)")
    parser.add_argument("--pdf_bins", default=None,
                        help="PDF bins: a count over the training targets' range (default 64) or comma-separated edges")
    parser.add_argument("--calibration_split", default="validation",
                        help="split on which the PDF temperature is fitted ('' for none)")
    add_dataset_arguments(parser, default_split=None)
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_split", default="test")
    parser.add_argument("--max_steps", type=int, default=1500,
                        help="optimizer steps (default 1500: on the demo galaxies 500 full-mode steps did not yet beat the frozen head)")
    parser.add_argument("--learning_rate", type=float, default=None, help="default per mode: frozen 3e-3, full 3e-4, lora 1e-3")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--warmup_ratio", type=float, default=0.05)
    parser.add_argument("--eval_steps", type=int, default=None, help="default: 5 evaluations per run")
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument("--lora_alpha", type=int, default=16)
    parser.add_argument("--lora_dropout", type=float, default=0.0)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--report_to", default="none", help="none, tensorboard, wandb, ...")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("astropt_hf").setLevel(logging.INFO)
    args = parse_args(argv)
    from transformers import AutoConfig

    from astropt_hf.downstream.finetuning import finetune

    image_size = AutoConfig.from_pretrained(args.model, trust_remote_code=True).image_size
    spec = dataset_spec(args, image_size=image_size)
    train, evaluation = open_dataset(spec, args.train_split), open_dataset(spec, args.eval_split)
    if train.image_column != evaluation.image_column:
        sys.exit(f"finetune.py: the splits name their image columns differently: {train.image_column}, {evaluation.image_column}")
    calibration = None
    if args.head != "linear" and args.calibration_split:
        calibration = open_dataset(spec, args.calibration_split).dataset
    pdf_bins = None
    if args.pdf_bins:
        pdf_bins = [float(e) for e in args.pdf_bins.split(",")] if "," in args.pdf_bins else int(args.pdf_bins)
    result = finetune(
        args.model,
        train.dataset,
        evaluation.dataset,
        args.target,
        args.output_dir,
        mode=args.mode,
        task=args.task,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        eval_steps=args.eval_steps,
        logging_steps=args.logging_steps,
        seed=args.seed,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        head_init=args.head_init,
        augment=args.augment,
        image_column=train.image_column,
        bf16=args.bf16,
        dataloader_num_workers=args.num_workers,
        report_to=args.report_to,
        dataset_description=f"{train.origin} for training, {evaluation.origin} for evaluation",
        head=args.head,
        pdf_bins=pdf_bins,
        calibration_dataset=calibration,
    )
    print(json.dumps({k: round(v, 5) for k, v in result.metrics.items()}, indent=2))
    print(f"saved to {result.output_dir} ({result.mode}, {result.num_trainable_parameters:,} trainable parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
