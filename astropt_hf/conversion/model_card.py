"""Fill the shipped `converted` model-card template for a converted checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from astropt_hf.model_cards import build_card, card_data, read_template

if TYPE_CHECKING:  # pragma: no cover
    from .convert import ConversionReport


def _format_parameters(count: int) -> str:
    return f"{count / 1e6:.2f}M ({count:,})"


def render_model_card(report: ConversionReport, repo_id: str, template: str | None = None) -> str:
    """The README.md text for a converted checkpoint described by `report` (`template`: jinja text to use
    instead of the shipped one)."""
    config = report.config
    notes = [*report.notes, *(f"dropped `{key}`: {why}" for key, why in report.dropped_keys.items())]
    notes_block = "## Notes\n\n" + "\n".join(f"- {note}" for note in notes) if notes else ""
    layer = config["embedding_layer"]
    values = {
        "title": f"astroPT ({Path(report.source).name}, {report.detected_format}) for Transformers",
        "repo_id": repo_id,
        "source_file": Path(report.source).name,
        "detected_format": report.format_description,
        "compile_prefix": "yes (removed)" if report.had_compile_prefix else "no",
        "num_parameters": _format_parameters(report.num_parameters),
        "image_size": config["image_size"],
        "image_size_source": report.image_size_source,
        "patch_size": config["patch_size"],
        "num_channels": config["num_channels"],
        "num_patches": (config["image_size"] // config["patch_size"]) ** 2,
        "num_layers": config["num_hidden_layers"],
        "num_heads": config["num_attention_heads"],
        "hidden_size": config["hidden_size"],
        "patch_embedding": config["patch_embedding"],
        "embedding_layer": (
            f"{config['num_hidden_layers'] // 2} (the middle one, upstream's `draw_from_centre`)"
            if layer == "middle"
            else f"{layer} (the last, before the final LayerNorm, as upstream v1)"
        ),
        "pooling_num_patches": config["pooling_num_patches"],
        "parity_result": report.parity_summary(),
        "converter_version": report.converter_version,
        "notes": notes_block,
    }
    # No licence in the front matter: the weights keep the source checkpoint's, which the converter cannot know.
    data = card_data("image-feature-extraction", tags=("converted",))
    return str(build_card(read_template("converted") if template is None else template, data, values))
