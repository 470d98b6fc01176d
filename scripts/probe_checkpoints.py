#!/usr/bin/env python
"""Linear probes of every checkpoint of a pretraining run, against tokens seen, beside the validation loss.

    python scripts/probe_checkpoints.py --run runs/astropt-demo --targets redshift,mag_r --split test
    python scripts/probe_checkpoints.py --run runs/astropt-demo --targets redshift --layers all

Writes RUN/checkpoint_probes/checkpoint_probes.json ([{"step", "tokens_seen", "targets": {T: {"r2", ...}}}])
and checkpoint_probes.png; each checkpoint's embeddings are cached there, and a rerun only probes
checkpoints (or targets, or layers) it has not probed yet.
"""

import logging
import sys
from dataclasses import dataclass
from typing import Literal

from astropt_hf.command_line import ArgumentParser, option
from astropt_hf.data.arguments import DataArguments


@dataclass
class ProbeCheckpointsArguments:
    run: str = option(help="pretraining output folder holding checkpoint-<step> folders")
    targets: str = option(help="comma-separated catalogue columns to probe")
    split: Literal["train", "validation", "test", "all"] = option("test", "split to probe (default: test)")
    layers: str | None = option(None, "also probe these layers: 'all' or e.g. 0,2,4")
    output_dir: str | None = option(None, "default: RUN/checkpoint_probes")
    n_folds: int = option(5)
    seed: int = option(0)
    batch_size: int = option(64)
    bf16: bool = option(False)
    device: str | None = option(None, "torch device (default: cuda if available)")


def parse_args(argv=None) -> tuple[ProbeCheckpointsArguments, DataArguments]:
    return ArgumentParser((ProbeCheckpointsArguments, DataArguments), description=__doc__).parse(argv)


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args, data_args = parse_args(argv)
    import torch
    from transformers import AutoConfig

    from astropt_hf.downstream.checkpoint_probes import (
        CheckpointProbeOptions,
        checkpoint_model_dir,
        find_checkpoints,
        probe_checkpoints,
    )

    try:
        checkpoints = find_checkpoints(args.run)
    except FileNotFoundError as error:
        sys.exit(f"probe_checkpoints.py: {error}")
    if not checkpoints:
        sys.exit(f"probe_checkpoints.py: {args.run} holds no loadable checkpoint-<step> folders")
    config = AutoConfig.from_pretrained(str(checkpoint_model_dir(checkpoints[0][1])), trust_remote_code=True)
    spec = data_args.spec(args.split, image_size=config.image_size)
    options = CheckpointProbeOptions(
        split=args.split, layers=args.layers, n_folds=args.n_folds, seed=args.seed, batch_size=args.batch_size,
        bf16=args.bf16, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        output_dir=args.output_dir,
    )  # fmt: skip
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    result = probe_checkpoints(args.run, spec, targets, options)
    print("| step | tokens seen | " + " | ".join(targets) + " |")
    print("|---" * (len(targets) + 2) + "|")
    for entry in result.entries:
        cells = []
        for target in targets:
            scores = entry["targets"][target]
            cells.append(f"{scores['r2' if 'r2' in scores else 'accuracy']:.3f}")
        print(f"| {entry['step']} | {entry['tokens_seen'] or '?'} | " + " | ".join(cells) + " |")
    print(f"probed {len(result.computed_steps)} checkpoint(s), reused {len(result.entries) - len(result.computed_steps)}; "
          f"wrote {result.json_path} and {result.plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
