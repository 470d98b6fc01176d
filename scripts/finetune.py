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

import json
import logging
import sys

from astropt_hf.command_line import ArgumentParser
from astropt_hf.data.arguments import DataArguments, open_dataset
from astropt_hf.downstream.finetuning import FinetuneArguments


def parse_args(argv=None) -> tuple[FinetuneArguments, DataArguments]:
    return ArgumentParser((FinetuneArguments, DataArguments), description=__doc__).parse(argv)


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("astropt_hf").setLevel(logging.INFO)
    options, data = parse_args(argv)
    from transformers import AutoConfig

    from astropt_hf.downstream.finetuning import finetune

    image_size = AutoConfig.from_pretrained(options.model, trust_remote_code=True).image_size
    spec = data.spec(None, image_size=image_size)
    train, evaluation = open_dataset(spec, options.train_split), open_dataset(spec, options.eval_split)
    if train.image_column != evaluation.image_column:
        sys.exit(f"finetune.py: the splits name their image columns differently: {train.image_column}, {evaluation.image_column}")
    calibration = None
    if options.head != "linear" and options.calibration_split:
        calibration = open_dataset(spec, options.calibration_split).dataset
    result = finetune(
        options,
        train.dataset,
        evaluation.dataset,
        image_column=train.image_column,
        dataset_description=f"{train.origin} for training, {evaluation.origin} for evaluation",
        calibration_dataset=calibration,
    )
    print(json.dumps({k: round(v, 5) for k, v in result.metrics.items()}, indent=2))
    print(f"saved to {result.output_dir} ({result.mode}, {result.num_trainable_parameters:,} trainable parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
