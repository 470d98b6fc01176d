#!/usr/bin/env python
"""Linear probes of catalogue columns from astroPT embeddings, against a random-init model and pixel PCA
(and, for embeddings made from spectra, PCA of the spectra).

    python scripts/linear_probe.py --model runs/astropt-demo --dataset synthetic --split test \\
        --targets redshift,mag_r,g_r,half_light_radius,axis_ratio --output_dir runs/probes
    python scripts/linear_probe.py --model runs/astropt-demo --embeddings emb.parquet --targets redshift ...
    python scripts/linear_probe.py --model runs/astropt-demo --targets redshift,mag_r --output_dir runs/probes \
        --layers all --attentive
    python scripts/linear_probe.py --model runs/astropt-multimodal --inputs spectra --targets redshift ...

Writes OUTPUT_DIR/probe_results.json ({"targets": {T: {"astropt": {"r2": ...}, "random_init": ...,
"pixel_pca": ..., "spectrum_pca": ...}}}), probe_bars.png and pred_vs_true_<features>.png. Float columns get k-fold ridge
probes (R², MAE; σ_NMAD and outlier fraction for redshifts), other columns logistic ones (accuracy, F1).

`--layers all` (or e.g. 0,2,4; 0 is the patch embeddings) adds the same probes on every listed layer, all
from one forward pass per batch: "layers" ({T: {LAYER: scores}}), "random_init_layers" and "best_layer"
({T: LAYER}) in probe_results.json, with probe_layers.png (a layers x targets heat map) and a line plot.
`--attentive` adds an attentive probe (a learned query attending over the frozen patch features of the
model's embedding layer, then a linear head) as "attentive" beside "astropt" for every target, with
"attentive_random_init" as its baseline.
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
    inputs: Literal["images", "spectra", "images+spectra"] = option(
        "images", "embed from the images, the spectra (a model with spectra) or both"
    )
    baselines: str | None = option(
        None, "comma-separated: random_init, pixel_pca, spectrum_pca (empty: none; default: random_init,pixel_pca "
        "and, with spectra --inputs, spectrum_pca)"
    )
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
    layers: str | None = option(None, "also probe every layer ('all') or these (e.g. 0,2,4; 0: patch embeddings)")
    attentive: bool = option(False, "also fit an attentive probe over the patch features of the embedding layer")
    attentive_max_epochs: int = option(60, "with --attentive: most epochs per fold")
    attentive_patience: int = option(10, "with --attentive: stop this many epochs after the best held-out loss")


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
        inputs=args.inputs,
        baselines=None if args.baselines is None else [b.strip() for b in args.baselines.split(",") if b.strip()],
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
    if args.inputs != "images" and (args.layers or args.attentive):
        raise SystemExit("--layers and --attentive probe image embeddings: use them with --inputs images")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    result = run_linear_probes(args.model, source.dataset, targets, args.output_dir, options)
    print(result.summary_table())
    print(f"wrote {result.json_path}, {result.bar_chart} and {len(result.hexbin_paths)} hexbin figure(s)")
    # After the linear probes, which write probe_results.json afresh; these add their keys to it.
    linear = result.suite.results["targets"]
    if args.layers:
        print(layer_table(run_layer_probes_for(args, source, targets, options), linear))
    if args.attentive:
        print(attentive_table(run_attentive_probes_for(args, source, targets, options), linear))
    return 0


def _baselines(options) -> tuple[str, ...]:
    from astropt_hf.downstream.linear_probe import default_baselines

    return default_baselines(options.inputs) if options.baselines is None else tuple(options.baselines)


def _metric(scores: dict) -> str:
    return "r2" if "r2" in scores else "accuracy"


def run_layer_probes_for(args: ProbeArguments, source, targets: list[str], linear_options) -> dict:
    """The layer-wise probes, with the linear probes' settings (`linear_options`: `LinearProbeOptions`)."""
    from astropt_hf.downstream.layer_probes import LayerProbeOptions, run_layer_probes

    options = LayerProbeOptions(
        n_folds=args.n_folds, seed=args.seed, batch_size=args.batch_size, pooling=args.pooling,
        pooling_num_patches=args.pooling_num_patches, bf16=args.bf16, device=linear_options.device,
        random_init_baseline="random_init" in _baselines(linear_options),
        robust_normalisation=args.robust_normalisation, target_clip=args.target_clip,
    )  # fmt: skip
    layered = run_layer_probes(args.model, source, targets, args.output_dir, layers=args.layers, options=options)
    print(f"wrote the layer probes to {layered.json_path}, {layered.heatmap} and {layered.line_plot}")
    return layered.results


def run_attentive_probes_for(args: ProbeArguments, source, targets: list[str], linear_options) -> dict:
    """The attentive probes, with the linear probes' fold count, seed and device."""
    from astropt_hf.downstream.attentive_probe import (
        AttentiveProbeOptions,
        AttentiveWorkflowOptions,
        run_attentive_probes,
    )

    probe = AttentiveProbeOptions(max_epochs=args.attentive_max_epochs, patience=args.attentive_patience)
    options = AttentiveWorkflowOptions(n_folds=args.n_folds, seed=args.seed, batch_size=args.batch_size,
                                       bf16=args.bf16, device=linear_options.device, probe=probe,
                                       random_init_baseline="random_init" in _baselines(linear_options))  # fmt: skip
    return run_attentive_probes(args.model, source, targets, args.output_dir, options=options)


def layer_table(results: dict, linear: dict) -> str:
    """Markdown: per target the best layer and its score beside the linear probe's layer."""
    lines = ["| target | metric | best layer | best layer's score | linear probe (--layer) |", "|---|---|---|---|---|"]
    for target, best in results["best_layer"].items():
        scores, metric = results["layers"][target][str(best)], results["layer_metric"][target]
        lines.append(f"| {target} | {metric} | {best} | {scores[metric]:.3f} | {linear[target]['astropt'][metric]:.3f} |")
    return "\n".join(lines)


def attentive_table(scores: dict, linear: dict) -> str:
    """Markdown: per target the attentive probe beside the linear one (and their random-init baselines)."""
    lines = ["| target | metric | attentive | linear | attentive, random init | linear, random init |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for target, by_probe in scores.items():
        metric = _metric(by_probe["attentive"])
        cells = [by_probe["attentive"], linear[target]["astropt"], by_probe.get("attentive_random_init"),
                 linear[target].get("random_init")]  # fmt: skip
        text = [f"{c[metric]:.3f}" if c else "-" for c in cells]
        lines.append(f"| {target} | {metric} | " + " | ".join(text) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
