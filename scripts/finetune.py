#!/usr/bin/env python
"""Fine-tune a pretrained astroPT on one catalogue column with transformers.Trainer.

    python scripts/finetune.py --model runs/astropt-demo --dataset synthetic --target redshift \\
        --output_dir runs/ft-redshift --max_steps 300                       # regression, every weight trained
    python scripts/finetune.py ... --mode frozen                            # linear head only (a probe)
    python scripts/finetune.py ... --mode lora --lora_r 8                   # adapters (pip install peft)
    python scripts/finetune.py ... --head pdf                               # a calibrated PDF per galaxy
    python scripts/finetune.py ... --sample_weighting inverse_density       # rare redshifts weigh more

Trains on --train_split (default train) and evaluates on --eval_split (default test). The output folder
loads with AutoModelForImageClassification.from_pretrained(dir, trust_remote_code=True) and holds a model
card (README.md) with the metrics, finetune_results.json (with, for redshifts, the bias dz/(1+z) in bins of
true z), trainer_log.jsonl (the Trainer's log entries) and, for regressions, pred_vs_true.png. With
--head pdf it also holds test_predictions.parquet (median, mode, mean, 68% and 95% intervals per test galaxy,
raw and calibrated on --calibration_split) and the PDF figures (pdf_*.png).
"""

import json
import logging
import os
import sys
import time

# Idle OpenMP threads sleep instead of spinning, as in scripts/pretrain.py: on a machine whose cores are
# shared with other jobs, spinning threads take the cores the working threads need. Must be set before
# torch is imported; an explicit OMP_WAIT_POLICY in the environment wins. The number of threads is torch's
# default (one per physical core), as under `accelerate launch`; OMP_NUM_THREADS overrides it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from astropt_hf.command_line import ArgumentParser  # noqa: E402
from astropt_hf.data.arguments import DataArguments, open_dataset  # noqa: E402
from astropt_hf.downstream.finetuning import FinetuneArguments  # noqa: E402


def parse_args(argv=None) -> tuple[FinetuneArguments, DataArguments]:
    return ArgumentParser((FinetuneArguments, DataArguments), description=__doc__).parse(argv)


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("astropt_hf").setLevel(logging.INFO)
    options, data = parse_args(argv)
    started = time.perf_counter()
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
    data_seconds = time.perf_counter() - started
    result = finetune(
        options,
        train.dataset,
        evaluation.dataset,
        image_column=train.image_column,
        dataset_description=f"{train.origin} for training, {evaluation.origin} for evaluation",
        calibration_dataset=calibration,
    )
    print(json.dumps({k: round(v, 5) for k, v in result.metrics.items()}, indent=2))
    if result.redshift_bias is not None:
        print(format_redshift_bias(result.redshift_bias))
    print(f"saved to {result.output_dir} ({result.mode}, {result.num_trainable_parameters:,} trainable parameters)")
    print(f"time: data {data_seconds:.0f} s, model set-up {result.setup_seconds:.0f} s, training and evaluation "
          f"{result.train_seconds:.0f} s ({result.max_steps / max(result.train_seconds, 1e-9):.2f} steps/s, "
          f"{result.torch_threads} threads)")
    return 0


def format_redshift_bias(bias: dict) -> str:
    """The binned bias as a few readable lines."""
    overall = bias["overall"]
    lines = [f"bias dz/(1+z): mean {overall['mean']:+.4f}, median {overall['median']:+.4f} (n={overall['n']})"]
    for entry in bias["bins"]:
        lines.append(f"  z {entry['z_lo']:.2f}-{entry['z_hi']:.2f}: mean {entry['mean']:+.4f}, "
                     f"median {entry['median']:+.4f} (n={entry['n']})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
