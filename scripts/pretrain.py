#!/usr/bin/env python
"""Pretrain astroPT.

    accelerate launch scripts/pretrain.py                      # the demo: synthetic galaxies, a few minutes on CPU
    accelerate launch scripts/pretrain.py --config scripts/configs/astropt-089M.yaml --dataset Smith42/galaxies
    accelerate launch scripts/pretrain.py --max_steps 50 --hidden_size 64 --learning_rate 3e-4
    accelerate launch scripts/pretrain.py --output_dir runs/x --resume_from_checkpoint latest
    accelerate launch scripts/pretrain.py --save_schedule log --save_steps 100   # for probes across training

Every key of a YAML preset can be overridden as `--key value`; `--help` lists them all.

`--save_schedule log` also keeps checkpoints at steps 1, 2, 4, ... below `save_steps` (never pruned by
`save_total_limit`), and writes into every checkpoint a `model/` folder that `from_pretrained` loads, so that
`scripts/probe_checkpoints.py --run OUTPUT_DIR` can probe the model across training; each checkpoint's
`trainer_state.json` records its `tokens_seen` and `images_seen`. `--max_image_side_factor N` skips (and
counts) images of more than (N x image_size)^2 pixels per band, read from the file header before decoding.
"""

import logging
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a machine whose cores are shared (other jobs, DataLoader
# workers), spinning threads take the cores the working threads need and a training step becomes several
# times slower. Must be set before torch is imported; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from astropt_hf.training import ConfigError, parse_pretrain_args, run_pretraining  # noqa: E402
from astropt_hf.training.collectives import leave_process_group  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("astropt_hf").setLevel(logging.INFO)
    try:
        args = parse_pretrain_args(argv)
        summary = run_pretraining(args)
    except ConfigError as err:
        print(f"pretrain.py: error: {err}", file=sys.stderr)
        return 2
    finally:
        leave_process_group()
    return 1 if summary["status"] == "failed" else 0  # the reason is printed, and in summary.json


if __name__ == "__main__":
    sys.exit(main())
