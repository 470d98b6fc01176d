#!/usr/bin/env python
"""Compare input normalisations on the science: pretrain the same model once per choice and linear-probe
each on held-out galaxies (with the random-init and pixel-PCA baselines under the same normalisation).

    python scripts/compare_normalisations.py --output_dir runs/normalisations \\
        --targets redshift,mag_r,g_r,half_light_radius,axis_ratio
    python scripts/compare_normalisations.py --output_dir runs/norms-desi --dataset my_cutouts/ \\
        --targets mag_r --variants per_patch,asinh --asinh_scale 0.05 --max_steps 2000

Variants: per_patch (upstream), per_image, asinh (no standardisation; asinh stretch with softening
--asinh_scale, in the images' flux units), per_image_asinh (the stretch, then per-image standardisation:
the demo's default). Every other `--key value` is a pretraining setting shared by all
variants (default: the demo, scripts/configs/demo.yaml). Writes OUTPUT_DIR/normalisations.json, .md
(the table) and .png (bar chart); each variant trains in OUTPUT_DIR/<variant>. Run it again to resume.
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep (see scripts/pretrain.py)

from astropt_hf.command_line import ArgumentParser, option, run_pretraining_driver  # noqa: E402
from astropt_hf.studies.normalisation_study import (  # noqa: E402
    DEFAULT_ASINH_SCALE,
    VARIANTS,
    StudyOptions,
    check_study_options,
    parse_variants,
    run_normalisation_study,
)


@dataclass
class StudyArguments:
    output_dir: str = option()
    targets: str = option(help="comma-separated catalogue columns to probe")
    variants: str = option(",".join(VARIANTS), f"subset of {','.join(VARIANTS)}")
    asinh_scale: float = option(
        DEFAULT_ASINH_SCALE, "softening of the asinh variant (default 0.02 nanomaggies: ~1.5 sigma of the synthetic r-band sky per pixel)"
    )
    probe_split: Literal["train", "validation", "test", "all"] = option("test")
    probe_batch_size: int = option(64)


def build_parser() -> ArgumentParser:
    return ArgumentParser(StudyArguments, prog="compare_normalisations.py", description=__doc__)


def study_options(own: StudyArguments, pretrain_argv: list[str]) -> StudyOptions:
    return StudyOptions(
        output_dir=Path(own.output_dir), variants=parse_variants(own.variants),
        targets=[t.strip() for t in own.targets.split(",") if t.strip()], pretrain_argv=pretrain_argv,
        asinh_scale=own.asinh_scale, probe_split=own.probe_split, probe_batch_size=own.probe_batch_size,
    )


def main(argv: list[str] | None = None) -> int:
    # check_study_options parses every variant's settings before any training
    return run_pretraining_driver(build_parser(), argv, study_options, check_study_options, run_normalisation_study)


if __name__ == "__main__":
    sys.exit(main())
