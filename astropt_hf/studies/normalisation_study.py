"""Which input normalisation serves the science best: pretrain once per choice, probe each the same way.

Upstream standardises every patch on its own (``per_patch``), which hides each patch's brightness and
colour offsets from the model; the probes then have to recover magnitudes and colours from what is left.
The study trains the same model on the same data with the same schedule under each normalisation and runs
the linear probes of `astropt_hf.downstream` (with their random-init and pixel-PCA baselines, which see the same
normalised input) on held-out galaxies:

* ``per_patch``: upstream; each patch vector standardised on its own;
* ``per_image``: each image standardised as a whole (one mean and std per image);
* ``asinh``: no standardisation, an asinh stretch of the fluxes instead (softening ``asinh_scale``, by
  default 0.02 nanomaggies, about 1.5 sigma of the synthetic r-band sky noise per pixel);
* ``per_image_asinh``: the asinh stretch, then each image standardised as a whole. The stretch compresses
  bright cores more than faint wings, so a galaxy's shape after standardisation still says how bright it is.

Finished variants are not retrained (their folders hold a completed ``summary.json``); a half-trained one
resumes. Validation losses are *not* comparable across variants (each predicts differently scaled
patches); the probes are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astropt_hf.run_files import write_json_atomic, write_text_atomic
from astropt_hf.studies.common import completed_summary, flag_names, load_probe_source, probe_score

__all__ = [
    "VARIANTS",
    "check_study_options",
    "StudyOptions",
    "parse_variants",
    "run_normalisation_study",
    "study_markdown",
    "variant_arguments",
]

DEFAULT_ASINH_SCALE = 0.02

#: command-line overrides of each normalisation variant
VARIANTS: dict[str, list[str]] = {
    "per_patch": ["--patch_norm", "per_patch", "--stretch", "none"],
    "per_image": ["--patch_norm", "per_image", "--stretch", "none"],
    "asinh": ["--patch_norm", "none", "--stretch", "asinh"],
    "per_image_asinh": ["--patch_norm", "per_image", "--stretch", "asinh"],
}
VARIANT_KEYS = ("patch_norm", "stretch", "asinh_scale", "output_dir", "resume_from_checkpoint", "overwrite_output_dir")
RESULTS_FILE = "normalisations.json"


@dataclass
class StudyOptions:
    """What the study trains and probes.

    Attributes:
        output_dir: variant `name` trains in `output_dir/<name>` and is probed in `output_dir/<name>/probes`.
        variants: names from `VARIANTS`.
        targets: catalogue columns to probe.
        pretrain_argv: pretraining settings shared by every variant (`--config`, `--max_steps`, ...).
        asinh_scale: softening of the asinh variant, in the images' flux units.
        probe_split: the split the probes read (held out from pretraining).
        probe_batch_size: batch size when embedding the probe galaxies.
    """

    output_dir: Path
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    targets: list[str] = field(default_factory=list)
    pretrain_argv: list[str] = field(default_factory=list)
    asinh_scale: float = DEFAULT_ASINH_SCALE
    probe_split: str = "test"
    probe_batch_size: int = 64


def parse_variants(text: str | Sequence[str]) -> list[str]:
    """'per_patch,asinh' -> ['per_patch', 'asinh'], refusing names that are not in `VARIANTS`."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"--variants {unknown or names} not valid; expected a comma-separated subset of {list(VARIANTS)}")
    return list(dict.fromkeys(names))


def variant_arguments(options: StudyOptions, variant: str):
    """The `PretrainArguments` of one variant: the shared settings plus its normalisation and folder."""
    from astropt_hf.training import parse_pretrain_args

    overrides = [*VARIANTS[variant], "--output_dir", str(Path(options.output_dir) / variant),
                 "--resume_from_checkpoint", "latest"]
    if "asinh" in variant:
        overrides += ["--asinh_scale", repr(options.asinh_scale)]
    return parse_pretrain_args([*options.pretrain_argv, *overrides])


def check_study_options(options: StudyOptions) -> list:
    if not options.targets:
        raise ValueError("no probe targets given; expected e.g. --targets redshift,mag_r")
    clashes = sorted(flag_names(options.pretrain_argv) & set(VARIANT_KEYS))
    if clashes:
        raise ValueError(f"the study sets {', '.join('--' + c for c in clashes)} itself per variant; remove them")
    if not options.asinh_scale > 0:
        raise ValueError(f"--asinh_scale {options.asinh_scale!r} is not valid; expected > 0")
    arguments = [variant_arguments(options, v) for v in parse_variants(options.variants)]
    if arguments[0].streaming:
        raise ValueError("the probes need a map-style dataset; drop --streaming")
    return arguments


def _score(metrics: dict[str, Any]) -> float | None:
    """The headline score of one feature set's metrics (R², else accuracy), None if it has none."""
    found = probe_score(metrics)
    return found[1] if found is not None else None


def study_markdown(result: dict[str, Any]) -> str:
    """One row per target: astroPT's score under each variant (best in bold), and each variant's baselines."""
    variants = [v["name"] for v in result["variants"]]
    targets = result["targets"]
    header = "| target | " + " | ".join(f"astroPT `{v}`" for v in variants) + " | " + " | ".join(
        f"random init `{v}`" for v in variants) + " | " + " | ".join(f"pixel PCA `{v}`" for v in variants) + " |"
    lines = [header, "|---|" + "---:|" * (3 * len(variants))]
    for target in targets:
        cells = []
        for feature in ("astropt", "random_init", "pixel_pca"):
            scores = [_score(v["probe"][target].get(feature, {})) for v in result["variants"]]
            best = max((s for s in scores if s is not None), default=None)
            for score in scores:
                text = "n/a" if score is None else f"{score:.3f}"
                cells.append(f"**{text}**" if feature == "astropt" and score is not None and score == best else text)
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    wins = ", ".join(f"`{v['name']}` {v['wins_over_random_init']}/{len(targets)}" for v in result["variants"])
    lines += ["", f"Targets where astroPT beats the random-init model under the same normalisation: {wins}.",
              f"Best (most targets above random init, then the highest mean score): `{result['best']}`."]
    return "\n".join(lines) + "\n"


def run_normalisation_study(options: StudyOptions, log=print) -> dict[str, Any]:
    """Train and probe every variant; write normalisations.json / .md / .png; return the JSON content."""
    from astropt_hf.downstream.linear_probe import probe_trained_run
    from astropt_hf.plotting import plot_normalisation_study
    from astropt_hf.training import run_pretraining

    arguments = check_study_options(options)
    variants = parse_variants(options.variants)
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    source = load_probe_source(arguments[0], options.probe_split)
    entries = []
    for index, (variant, args) in enumerate(zip(variants, arguments), start=1):
        variant_dir = output_dir / variant
        summary = completed_summary(variant_dir, args.max_steps)
        trained = summary is None
        if trained:
            summary = run_pretraining(args)
            if summary.get("status") != "completed":
                log(f"stopped during {variant} ({summary.get('status')}); run the same command to resume")
                return {"variants": entries, "stopped": variant}
        probe = probe_trained_run(variant_dir, source, options.targets, batch_size=options.probe_batch_size,
                                  seed=args.seed, device=_device(), reuse=not trained)
        wins = sum(
            1 for t in options.targets
            if (_score(probe[t].get("astropt", {})) or -1e9) > (_score(probe[t].get("random_init", {})) or 1e9)
        )
        entry = {"name": variant, "patch_norm": args.model["patch_norm"], "stretch": args.processor["stretch"],
                 "asinh_scale": args.processor.get("asinh_scale") if "asinh" in variant else None,
                 "final_val_loss": summary.get("final_val_loss"), "probe": probe, "wins_over_random_init": wins,
                 "mean_score": sum(_score(probe[t].get("astropt", {})) or 0.0 for t in options.targets)
                 / len(options.targets)}
        entries.append(entry)
        log(f"[{index}/{len(variants)}] {variant}: " + ", ".join(
            f"{t} {_score(probe[t].get('astropt', {})):.3f}" for t in options.targets
            if _score(probe[t].get("astropt", {})) is not None) + f" (beats random init on {wins}/{len(options.targets)})")
    best = max(entries, key=lambda e: (e["wins_over_random_init"], e["mean_score"]))["name"]
    result = {"targets": list(options.targets), "variants": entries, "best": best,
              "probe_split": options.probe_split, "pretrain_argv": list(options.pretrain_argv)}
    write_json_atomic(output_dir / RESULTS_FILE, result)
    write_text_atomic(output_dir / "normalisations.md", study_markdown(result))
    plot_normalisation_study(entries, options.targets, output_dir / "normalisations.png")
    log(f"best: {best}; wrote {output_dir / RESULTS_FILE}, normalisations.md, normalisations.png")
    return result


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
