"""Fill the model-card template (`model_cards/converted.md`) for a converted checkpoint."""

from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .convert import ConversionReport

# The template lives in the repository's model_cards/ folder, next to the other hub card templates.
TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "model_cards" / "converted.md"

# Used when astropt_hf is installed without the repository (the template is not package data).
_FALLBACK_TEMPLATE = """---
library_name: transformers
tags:
- astronomy
- astropt
- converted
---

# $title

Converted from upstream astroPT `$source_file` ($detected_format) with astropt_hf $converter_version.
Load with `AutoModel.from_pretrained("$repo_id", trust_remote_code=True)` and
`AutoImageProcessor.from_pretrained("$repo_id", trust_remote_code=True)`.

- parameters: $num_parameters
- image size: $image_size px ($image_size_source); $patch_size px patches, $num_channels bands
- parity check: $parity_result

$notes
"""


def _format_parameters(count: int) -> str:
    return f"{count / 1e6:.2f}M ({count:,})"


def render_model_card(report: ConversionReport, repo_id: str, template_path: Path | None = None) -> str:
    """The README.md text for a converted checkpoint described by `report`."""
    path = template_path or TEMPLATE_PATH
    template = path.read_text() if path.is_file() else _FALLBACK_TEMPLATE
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
    return string.Template(template).safe_substitute(values)
