"""The model card (`README.md`) written next to the final checkpoint, from the shipped `pretrained` template."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

from astropt_hf.data.synthetic import PIXEL_BINNING, PIXEL_SCALE
from astropt_hf.model_cards import build_card, card_data, read_template

# A hub dataset id ("owner/name"); local folders and files are not hub datasets.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def pretrained_card_data(dataset: str = "synthetic") -> ModelCardData:
    """Front matter of a pretrained card; `dataset` (the run's dataset spec) is listed when it is a hub id."""
    spec = dataset.strip()
    is_hub_dataset = bool(_HUB_ID.match(spec)) and not Path(spec).expanduser().exists()
    return card_data(
        "image-feature-extraction",
        tags=("self-supervised", "custom_code"),
        license="apache-2.0",
        datasets=[spec] if is_hub_dataset else None,
    )


def render_card(values: dict[str, Any], template: str | None = None, data: ModelCardData | None = None) -> str:
    """Fill the template's `{{ name }}` placeholders (numbers formatted for reading) below `data`'s front matter.

    A placeholder without a value is an error (a stale template).
    """
    template = read_template("pretrained") if template is None else template
    data = pretrained_card_data() if data is None else data
    return str(build_card(template, data, {name: _format(value) for name, value in values.items()}))


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


_ATTENTION = {
    "causal": "causal (each patch sees the ones before it)",
    "prefix": "prefix (bidirectional inside a prefix of random length, causal after it; features use the whole "
    "image as prefix)",
    "bidirectional": "bidirectional (every patch sees every patch)",
}


def objective_values(config) -> dict[str, str]:
    """The card's facts about the training objective and attention pattern of `config`."""
    pattern = getattr(config, "attention_pattern", "causal")
    if getattr(config, "objective", "next_patch") == "masked_patch":
        return {
            "objective_summary": f"reconstruct masked patches (a learned mask token replaces {config.mask_ratio:.0%} "
            "of the patch embeddings; the loss counts the masked patches)",
            "objective": f"masked patches, mask ratio {config.mask_ratio:g}, "
            f"norm_pix_loss {'on' if config.norm_pix_loss else 'off'}",
            "attention_pattern": _ATTENTION[pattern],
            "pretraining_head_usage": "`fill_masked_patches` inpaints the patches marked in `bool_masked_pos`",
        }
    return {
        "objective_summary": "regress the next patch"
        + (" after a bidirectional prefix" if pattern == "prefix" else ""),
        "objective": "next-patch regression",
        "attention_pattern": _ATTENTION[pattern],
        "pretraining_head_usage": "`.generate_patches` continues an image patch by patch",
    }


def card_values(args, config, summary: dict[str, Any], repo_id: str) -> dict[str, Any]:
    """Placeholder values from the run's arguments, model config and summary."""
    is_synthetic = args.dataset.strip().lower() == "synthetic"
    dataset = (
        f"the built-in synthetic DESI-like galaxies (GalSim, grz, {args.synthetic_num_train} training images, "
        f'{PIXEL_SCALE:g}"/pixel: Legacy Surveys pixels binned {PIXEL_BINNING}x{PIXEL_BINNING})'
        if is_synthetic
        else f"`{args.dataset}`"
    )
    limitations = (
        "Trained on *synthetic* galaxies for a demonstration: its embeddings describe simulated bulge+disk "
        "profiles, not real survey images. Use it to check a pipeline, not for science."
        if is_synthetic
        else "Representations reflect the training survey's depth, bands, seeing and selection; check them on "
        "your own data (e.g. with linear probes) before relying on them."
    )
    patch_norm = config.patch_norm.replace("_", "-")
    processor = args.image_processor()
    stretch = f"asinh(x / {processor.asinh_scale:g})" if processor.stretch == "asinh" else "none"
    return {
        "model_name": Path(repo_id).name or "astroPT",
        "repo_id": repo_id,
        "num_parameters": summary.get("num_parameters", 0),
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "hidden_size": config.hidden_size,
        "num_channels": config.num_channels,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_patches": config.num_patches,
        "patch_order": config.patch_order,
        "patch_norm": patch_norm,
        "patch_embedding": config.patch_embedding,
        "input_stretch": f"{stretch}, then {patch_norm} standardisation",
        "loss": "Huber" if config.loss == "huber" else "MSE",
        "dataset": dataset,
        "steps": summary.get("steps", 0),
        "tokens_seen": summary.get("tokens_seen", 0),
        "images_seen": summary.get("images_seen", 0),
        "tokens_per_step": summary.get("tokens_per_step", 0),
        "learning_rate": args.learning_rate,
        "min_lr": args.resolved_min_lr(),
        "warmup_steps": args.warmup_steps,
        "final_train_loss": summary.get("final_train_loss"),
        "final_val_loss": summary.get("final_val_loss"),
        "first_val_loss": summary.get("first_val_loss"),
        "skipped_samples": summary.get("skipped_samples", 0),
        "num_processes": summary.get("num_processes", 1),
        "mixed_precision": {"no": "fp32"}.get(summary.get("mixed_precision", "no"), summary.get("mixed_precision")),
        "wall_time": f"{_duration(summary.get('wall_seconds', 0.0))} (data preparation "
        f"{_duration(summary.get('data_seconds', 0.0))}, training {_duration(summary.get('train_seconds', 0.0))})",
        "limitations": limitations,
        **objective_values(config),
    }


def write_model_card(path: str | os.PathLike, args, config, summary: dict[str, Any], repo_id: str) -> Path:
    """Render the card and write it to `path` (usually `output_dir/README.md`)."""
    path = Path(path)
    path.write_text(render_card(card_values(args, config, summary, repo_id), data=pretrained_card_data(args.dataset)))
    return path


__all__ = ["card_values", "objective_values", "pretrained_card_data", "render_card", "write_model_card"]
