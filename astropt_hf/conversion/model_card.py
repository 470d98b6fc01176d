"""Fill the shipped `converted` model-card template for a converted checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from astropt_hf.model_cards import build_card, card_data, read_template

if TYPE_CHECKING:  # pragma: no cover
    from .convert import ConversionReport


def _format_parameters(count: int) -> str:
    return f"{count / 1e6:.2f}M ({count:,})"


def _objective_values(report: ConversionReport) -> dict[str, str]:
    """The card's facts about the objective and attention, and what they mean for using the model."""
    config = report.config
    objective = config.get("objective", "next_patch")
    pattern = config.get("attention_pattern", "causal")
    attn_type = report.upstream_settings.get("attn_type", "causal")
    attention = {"causal": "causal", "bidirectional": "bidirectional", "prefix": "prefix (AIM)"}[pattern]
    if attn_type == "prefix":
        attention += " (upstream `attn_type='prefix'`, whose prefix mask upstream never applied: it trained bidirectional)"
    elif attn_type == "full":
        attention += " (upstream `attn_type='full'`)"
    if objective == "masked_patch":
        return {
            "objective": f"masked patches (upstream `objective='mae'`), mask ratio {config['mask_ratio']}, "
            f"norm_pix_loss {'on' if config.get('norm_pix_loss') else 'off'}",
            "attention_pattern": attention,
            "pretraining_usage": "reconstructions under a random mask (pass bool_masked_pos to choose it)",
            "objective_details": "Upstream fed every patch: pass `bool_masked_pos` (batch, patches; True = masked) "
            "in sequence order and `predictions` reconstructs every position while `loss` counts the masked ones; "
            "without it a random mask of `mask_ratio` is drawn. `fill_masked_patches` inpaints an image; the "
            "embedding is of the unmasked image.",
            "parity_compared": "the reconstructions and the loss for the same mask (in sequence order) on both "
            "sides, and the embeddings of the unmasked images",
        }
    values = {"objective": "next-patch regression (upstream `objective='ar'`)", "attention_pattern": attention,
              "pretraining_usage": "next-patch predictions, as upstream's forward"}  # fmt: skip
    if "spectra" in config.get("modalities", ()):
        return {**values, **_multimodal_values(config)}
    if pattern == "causal":
        values["objective_details"] = (
            "Upstream feeds the sequence without its last patch, so `predictions[:, t]` predicts patch `t + 1` and "
            "the embedding averages the positions upstream sees."
        )
        values["parity_compared"] = "the next-patch predictions and the image embeddings"
        return values
    values["objective_details"] = (
        "Upstream fed the first T-1 patches with bidirectional attention, so `predictions[:, t]` predicts patch "
        "`t + 1` from an input that holds it; pass `input_patches=pretraining.image_to_patches(pixel_values)[:, :-1]` "
        "to reproduce upstream's numbers exactly (given the whole image, every position also sees the last patch)."
    )
    values["parity_compared"] = (
        "the next-patch predictions and the image embeddings, both sides given upstream's input (the first T-1 patches)"
    )
    return values


def _multimodal_values(config: dict) -> dict[str, str]:
    """Card facts for an images+spectra checkpoint."""
    placement = (
        f"by wavelength, `(wavelength - {config['spectrum_wavelength_offset']:g}) / "
        f"{config['spectrum_wavelength_scale']:g}` (Angstrom)"
        if config["spectrum_position_encoding"] == "wavelength"
        else "by a learned table indexed by the patch's place in the spectrum"
    )
    return {
        "objective_details": (
            "Images and spectra in one sequence (upstream's multimodal GPT): every image patch, then the spectrum "
            f"in patches of {config['spectrum_patch_size']} samples, zero-padded at the end and placed {placement}. "
            "`predictions[:, t]` predicts image patch `t + 1`; `spectrum_predictions[:, s]` predicts spectrum patch "
            "`s` (the first from the last image position); the loss weighs images by "
            f"{config['image_loss_weight']:g} and spectra by {config['spectrum_loss_weight']:g}. Load "
            "`AutoProcessor` for both inputs (spectra as flux, wavelengths in Angstrom, ivar and mask; the flux is "
            "not normalised, as upstream fed it) and `generate_spectrum` continues an image into its spectrum."
        ),
        "parity_compared": "the predictions of both modalities, each modality's embedding, and the loss (same "
        "images and spectra on both sides)",
    }


def render_model_card(report: ConversionReport, repo_id: str, template: str | None = None) -> str:
    """The README.md text for a converted checkpoint described by `report` (`template`: jinja text to use
    instead of the shipped one)."""
    config = report.config
    notes = [*report.notes, *(f"dropped `{key}`: {why}" for key, why in report.dropped_keys.items())]
    notes_block = "## Notes\n\n" + "\n".join(f"- {note}" for note in notes) if notes else ""
    warnings_block = "## Warning\n\n" + "\n".join(f"- {text}" for text in report.warnings) if report.warnings else ""
    layer = config["embedding_layer"]
    pooling = config.get("pooling", "mean_first_k")
    values = {
        "title": f"astroPT ({Path(report.source).name}, {report.detected_format}) for Transformers",
        "repo_id": repo_id,
        "source_file": report.public_source,
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
        "pooling_description": (
            f"mean over the first {config['pooling_num_patches']} sequence positions"
            if pooling == "mean_first_k"
            else "mean over each modality's positions (images, spectra, or the mean of the two)"
            if "spectra" in config.get("modalities", ())
            else "mean over all sequence positions"
        ),
        **_objective_values(report),
        "parity_result": report.parity_summary(),
        "converter_version": report.converter_version,
        "notes": notes_block,
        "warnings": warnings_block,
    }
    # No licence in the front matter: the weights keep the source checkpoint's, which the converter cannot know.
    data = card_data("image-feature-extraction", tags=("converted",))
    return str(build_card(read_template("converted") if template is None else template, data, values))
