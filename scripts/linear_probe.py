#!/usr/bin/env python
"""Linear probes of catalogue columns from astroPT embeddings, against a random-init model and pixel PCA.

    python scripts/linear_probe.py --model runs/astropt-demo --dataset synthetic --split test \\
        --targets redshift,mag_r,g_r,half_light_radius,axis_ratio --output_dir runs/probes
    python scripts/linear_probe.py --model runs/astropt-demo --embeddings emb.parquet --targets redshift ...

Writes OUTPUT_DIR/probe_results.json ({"targets": {T: {"astropt": {"r2": ...}, "random_init": ...,
"pixel_pca": ...}}}), probe_bars.png and pred_vs_true_<features>.png. Float columns get k-fold ridge
probes (R², MAE; σ_NMAD and outlier fraction for redshifts), other columns logistic ones (accuracy, F1).
"""

import logging
import sys
from dataclasses import dataclass
from typing import Literal

from astropt_hf.command_line import ArgumentParser, option
from astropt_hf.data.arguments import DataArguments, open_dataset


@dataclass
class ProbeArguments:
    model: str = option(help="pretrained astroPT folder or hub id")
    targets: str = option(help="comma-separated catalogue columns to probe")
    output_dir: str = option()
    embeddings: str | None = option(
        None, "reuse astroPT embeddings from extract_embeddings.py (matched to the dataset by id)"
    )
    split: Literal["train", "validation", "test", "all"] = option("test", "split to use (default: test)")
    baselines: str = option("random_init,pixel_pca", "comma-separated: random_init, pixel_pca (empty: none)")
    n_folds: int = option(5)
    seed: int = option(0)
    robust_normalisation: bool = option(
        False, "fit ridge on (y - median) / (1.4826 MAD) targets, as upstream's probes can"
    )
    target_clip: float | None = option(
        None, "with --robust_normalisation: clip training targets to +-this many robust sigmas"
    )
    layer: int | str | None = option(None, "'last', 'middle' or a block index")
    pooling: Literal["mean", "mean_first_k", "last"] | None = option(None)
    pooling_num_patches: int | None = option(None)
    batch_size: int = option(64)
    bf16: bool = option(False)
    device: str | None = option(None, "torch device (default: cuda if available, else cpu)")


def parse_args(argv=None) -> tuple[ProbeArguments, DataArguments]:
    return ArgumentParser((ProbeArguments, DataArguments), description=__doc__).parse(argv)


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args, data = parse_args(argv)
    import torch
    from transformers import AutoConfig

    from astropt_hf.downstream.linear_probe import LinearProbeOptions, run_linear_probes

    image_size = AutoConfig.from_pretrained(args.model, trust_remote_code=True).image_size
    source = open_dataset(data.spec(args.split, image_size=image_size))
    options = LinearProbeOptions(
        embeddings_path=args.embeddings,
        baselines=[b.strip() for b in args.baselines.split(",") if b.strip()],
        batch_size=args.batch_size,
        layer=args.layer,
        pooling=args.pooling,
        pooling_num_patches=args.pooling_num_patches,
        bf16=args.bf16,
        n_folds=args.n_folds,
        seed=args.seed,
        robust_normalisation=args.robust_normalisation,
        target_clip=args.target_clip,
        image_column=source.image_column,
        id_column=source.id_column,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
    )
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    result = run_linear_probes(args.model, source.dataset, targets, args.output_dir, options)
    print(result.summary_table())
    print(f"wrote {result.json_path}, {result.bar_chart} and {len(result.hexbin_paths)} hexbin figure(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
