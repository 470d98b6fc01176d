#!/usr/bin/env python
"""Linear probes of catalogue columns from astroPT embeddings, against a random-init model and pixel PCA.

    python scripts/linear_probe.py --model runs/astropt-demo --dataset synthetic --split test \\
        --targets redshift,mag_r,g_r,half_light_radius,axis_ratio --output_dir runs/probes
    python scripts/linear_probe.py --model runs/astropt-demo --embeddings emb.parquet --targets redshift ...

Writes OUTPUT_DIR/probe_results.json ({"targets": {T: {"astropt": {"r2": ...}, "random_init": ...,
"pixel_pca": ...}}}), probe_bars.png and pred_vs_true_<features>.png. Float columns get k-fold ridge
probes (R², MAE; σ_NMAD and outlier fraction for redshifts), other columns logistic ones (accuracy, F1).
"""

import argparse
import logging
import sys

from astropt_hf.data.arguments import add_dataset_arguments, dataset_spec, open_dataset


def layer_choice(value: str):
    return int(value) if value.lstrip("-").isdigit() else value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pretrained astroPT folder or hub id")
    parser.add_argument("--targets", required=True, help="comma-separated catalogue columns to probe")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--embeddings", default=None,
                        help="reuse astroPT embeddings from extract_embeddings.py (matched to the dataset by id)")
    add_dataset_arguments(parser)
    parser.add_argument("--baselines", default="random_init,pixel_pca",
                        help="comma-separated: random_init, pixel_pca (empty: none)")
    parser.add_argument("--n_folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--robust_normalisation", action="store_true",
                        help="fit ridge on (y - median) / (1.4826 MAD) targets, as upstream's probes can")
    parser.add_argument("--target_clip", type=float, default=None,
                        help="with --robust_normalisation: clip training targets to +-this many robust sigmas")
    parser.add_argument("--layer", type=layer_choice, default=None, help="'last', 'middle' or a block index")
    parser.add_argument("--pooling", choices=("mean", "mean_first_k", "last"), default=None)
    parser.add_argument("--pooling_num_patches", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args = parse_args(argv)
    import torch
    from transformers import AutoConfig

    from astropt_hf.downstream.linear_probe import LinearProbeOptions, run_linear_probes

    image_size = AutoConfig.from_pretrained(args.model, trust_remote_code=True).image_size
    source = open_dataset(dataset_spec(args, image_size=image_size))
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
