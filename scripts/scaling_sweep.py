#!/usr/bin/env python
"""Scaling sweep: train a ladder of astroPT sizes on the same data, schedule and token budget, fit
L(N) = L_inf + (N_c / N)^alpha, and plot validation loss (and optionally probe scores) against size.

    python scripts/scaling_sweep.py --sizes 1x2x16,1x2x32,2x2x32,2x4x64,3x4x96 --max_steps 200 \\
        --output_dir runs/scaling
    accelerate launch scripts/scaling_sweep.py --sizes astropt-001M,astropt-005M,astropt-012M \\
        --config scripts/configs/astropt-001M.yaml --dataset Smith42/galaxies --max_steps 20000 \\
        --output_dir runs/scaling-desi --probe_targets mag_r,redshift

Sizes are preset names (astropt-001M ... astropt-2100M) or shapes LAYERSxHEADSxWIDTH. Every other
`--key value` is a pretraining setting shared by all sizes (see `scripts/pretrain.py --help`). Writes
OUTPUT_DIR/scaling.json, scaling.png, scaling.md (and probe_scaling.png with --probe_targets); each size
trains in OUTPUT_DIR/sizes/<name>. Run it again to resume: finished sizes are reused, a half-trained one
continues from its latest checkpoint, and new sizes can be added to the ladder.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from astropt_hf.command_line import ArgumentParser, option, run_pretraining_driver
from astropt_hf.studies.scaling_laws import PARAM_COUNTS, parse_sizes
from astropt_hf.studies.scaling_sweep import SweepOptions, run_scaling_sweep, validate_sweep_options


@dataclass
class SweepArguments:
    sizes: str = option(help="comma-separated preset names or LAYERSxHEADSxWIDTH shapes")
    output_dir: str = option(help="sweep folder")
    probe_targets: str = option(
        "", "comma-separated catalogue columns to linear-probe on every size (e.g. redshift,mag_r)"
    )
    probe_split: Literal["train", "validation", "test", "all"] = option(
        "test", "split the probes read (default: test, held out from pretraining)"
    )
    probe_batch_size: int = option(64)
    param_count: Literal[PARAM_COUNTS] = option(
        "non_embedding", "parameter count for the fit and plots (both are recorded); default non_embedding"
    )
    preset_learning_rates: bool = option(
        False, "preset names use their upstream peak learning rate instead of the shared one"
    )


def build_parser() -> ArgumentParser:
    return ArgumentParser(SweepArguments, prog="scaling_sweep.py", description=__doc__)


def sweep_options(own: SweepArguments, pretrain_argv: list[str]) -> SweepOptions:
    return SweepOptions(
        sizes=parse_sizes(own.sizes),
        output_dir=Path(own.output_dir),
        pretrain_argv=pretrain_argv,
        probe_targets=[t.strip() for t in own.probe_targets.split(",") if t.strip()],
        probe_split=own.probe_split,
        param_count=own.param_count,
        preset_learning_rates=own.preset_learning_rates,
        probe_batch_size=own.probe_batch_size,
    )


def main(argv: list[str] | None = None) -> int:
    # validate_sweep_options parses every size's settings before any training
    return run_pretraining_driver(build_parser(), argv, sweep_options, validate_sweep_options, run_scaling_sweep)


if __name__ == "__main__":
    sys.exit(main())
