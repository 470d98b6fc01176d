"""Convert an upstream astroPT `ckpt.pt` into a Transformers checkpoint directory, checked for parity."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .hub_reference import resolve_checkpoint_source
from .model_card import render_model_card
from .parity import PARITY_TOLERANCE, ParityResult, check_parity
from .safe_unpickle import load_upstream_checkpoint
from .upstream_classes import UpstreamRecord
from .upstream_config import map_upstream_config
from .upstream_formats import (
    UpstreamWeights,
    check_supported_modalities,
    read_upstream_weights,
    rename_to_astropt_hf,
)
from .upstream_objective import UpstreamPrefixAttentionWarning

__all__ = ["PARITY_TOLERANCE", "ConversionReport", "ParityCheckError", "ParityResult", "check_parity",
           "convert_upstream_checkpoint"]  # fmt: skip


class ParityCheckError(RuntimeError):
    """The converted model does not reproduce upstream's forward pass."""


@dataclass
class ConversionReport:
    """What a conversion found and checked; `summary()` gives a printable digest."""

    source: str
    detected_format: str
    format_description: str
    had_compile_prefix: bool
    num_parameters: int
    image_size: int
    image_size_source: str
    config: dict[str, Any]
    output_dir: str | None = None
    dropped_keys: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # where upstream computed other than its settings say
    parity_checked: bool = False
    prediction_max_abs_diff: float | None = None
    embedding_max_abs_diff: float | None = None
    loss_max_abs_diff: float | None = None  # masked models: the loss for the same mask on both sides
    spectrum_prediction_max_abs_diff: float | None = None  # images+spectra models
    parity_allowed_diff: float | None = None
    hub_model_id: str | None = None
    hub_source: str | None = None  # "owner/repo/path/in/repo@commit" when the checkpoint came from the hub
    upstream_settings: dict[str, Any] = field(default_factory=dict)  # objective / attention as upstream recorded
    converter_version: str = ""

    @property
    def public_source(self) -> str:
        """The source as the card and the saved report name it: the hub reference, else the file name."""
        return self.hub_source or Path(self.source).name

    @property
    def parity_passed(self) -> bool | None:
        """True/False after a parity check, None when it was skipped."""
        if not self.parity_checked:
            return None
        diffs = [self.prediction_max_abs_diff, self.embedding_max_abs_diff]
        diffs += [d for d in (self.loss_max_abs_diff, self.spectrum_prediction_max_abs_diff) if d is not None]
        return max(diffs) <= self.parity_allowed_diff

    def parity_summary(self) -> str:
        if not self.parity_checked:
            return "skipped (--no_parity_check)"
        verdict = "passed" if self.parity_passed else "FAILED"
        masked = self.config.get("objective") == "masked_patch"
        loss = f", {self.loss_max_abs_diff:.2e} in the loss" if self.loss_max_abs_diff is not None else ""
        spectra = self.spectrum_prediction_max_abs_diff
        what = "reconstructions (the same mask on both sides)" if masked else "next-patch predictions"
        what = what if spectra is None else f"image predictions, {spectra:.2e} in spectrum predictions"
        return (
            f"{verdict}: max abs difference {self.prediction_max_abs_diff:.2e} in {what}{loss}, "
            f"{self.embedding_max_abs_diff:.2e} in embeddings (allowed {self.parity_allowed_diff:.1e}, fp32)"
        )

    def summary(self) -> str:
        lines = [
            f"source:      {self.hub_source or self.source}",
            f"format:      {self.format_description}" + (" with _orig_mod. prefix" if self.had_compile_prefix else ""),
            f"parameters:  {self.num_parameters:,}",
            f"image size:  {self.image_size} px ({self.image_size_source})",
            f"objective:   {self.config.get('objective', 'next_patch')}, attention "
            f"{self.config.get('attention_pattern', 'causal')}"
            + (f", modalities {' + '.join(self.config['modalities'])}" if "modalities" in self.config else "")
            + (f", mask ratio {self.config['mask_ratio']}" if self.config.get("objective") == "masked_patch" else ""),
            f"parity:      {self.parity_summary()}",
        ]
        if self.output_dir:
            lines.append(f"saved to:    {self.output_dir}")
        if self.hub_model_id:
            lines.append(f"pushed to:   {self.hub_model_id}")
        lines += [f"warning:     {warning}" for warning in self.warnings]
        lines += [f"note:        {note}" for note in self.notes]
        lines += [f"dropped:     {key} ({why})" for key, why in self.dropped_keys.items()]
        return "\n".join(lines)


def _check_registry(checkpoint: dict, source: str) -> None:
    registry = checkpoint.get("modality_registry")
    names = registry.names() if isinstance(registry, UpstreamRecord) and hasattr(registry, "names") else None
    if names is not None:
        check_supported_modalities(names, source)


def _load_weights_into(model: torch.nn.Module, renamed: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load our-named weights strictly; pad the position table if upstream's is one row short."""
    notes = []
    key = "astropt.embeddings.position_embeddings.weight"
    needed = model.config.num_patches
    if renamed[key].shape[0] < needed:
        # block_size = T - 1 is enough upstream (it feeds T - 1 patches); our model also runs the last patch,
        # whose position only affects the prediction past the image. A zero row keeps everything else exact.
        missing = needed - renamed[key].shape[0]
        renamed[key] = torch.cat([renamed[key], renamed[key].new_zeros(missing, renamed[key].shape[1])])
        notes.append(f"position table padded with {missing} zero row(s): block_size was {needed - missing}")
    result = model.load_state_dict(renamed, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source}: converted weights do not match AstroPTForPreTraining: missing {result.missing_keys[:6]}, "
            f"unexpected {result.unexpected_keys[:6]}"
        )
    return notes


def _push_to_hub(output_dir: Path, hub_model_id: str) -> None:
    from huggingface_hub import create_repo, upload_folder

    create_repo(hub_model_id, exist_ok=True)
    upload_folder(repo_id=hub_model_id, folder_path=str(output_dir), commit_message="Add astroPT converted from upstream")


def _upstream_settings(checkpoint: dict) -> dict[str, Any]:
    """The objective and attention fields of upstream's `model_args`, as recorded (for the report and card)."""
    model_args = checkpoint.get("model_args") or {}
    names = ("objective", "attn_type", "mae_mask_ratio", "norm_pix_loss")
    return {name: model_args[name] for name in names if name in model_args}


def _converted_model(checkpoint: dict, image_size: int | None, source: str, keep_prefix_attention: bool = False,
                     spectrum_wavelength_scale: float | None = None):
    """(model, the weights read, the config mapping, the config kwargs used, notes) for a loaded checkpoint."""
    from .. import AstroPTConfig, AstroPTForPreTraining

    state_dict = checkpoint.get("model")
    if not isinstance(state_dict, dict):
        raise ValueError(f"{source}: expected a state dict under 'model', found {type(state_dict).__name__}")
    _check_registry(checkpoint, source)
    weights = read_upstream_weights(state_dict, source)
    mapping = map_upstream_config(
        checkpoint, weights, image_size=image_size, source=source, keep_prefix_attention=keep_prefix_attention,
        spectrum_wavelength_scale=spectrum_wavelength_scale,
    )
    num_patches = (mapping.config_kwargs["image_size"] // mapping.config_kwargs["patch_size"]) ** 2
    config_kwargs = dict(mapping.config_kwargs)
    config_kwargs["max_position_embeddings"] = max(config_kwargs["max_position_embeddings"], num_patches)
    model = AstroPTForPreTraining(AstroPTConfig(**config_kwargs))
    notes = list(mapping.notes)
    notes += _load_weights_into(model, rename_to_astropt_hf(weights, source), source)
    model.eval()
    return model, weights, mapping, config_kwargs, notes


def _record_parity(report: ConversionReport, model: torch.nn.Module, weights: UpstreamWeights, source: str) -> None:
    """Run the parity check into `report`; raise if the converted model does not reproduce upstream."""
    result = check_parity(model, weights, model.config.num_attention_heads)
    report.parity_checked = True
    report.prediction_max_abs_diff, report.embedding_max_abs_diff = result.prediction_diff, result.embedding_diff
    report.loss_max_abs_diff, report.parity_allowed_diff = result.loss_diff, result.allowed
    report.spectrum_prediction_max_abs_diff = result.spectrum_prediction_diff
    if not report.parity_passed:
        raise ParityCheckError(f"{source}: converted model does not reproduce upstream: {report.parity_summary()}")


def _write_conversion(report: ConversionReport, model: torch.nn.Module, output_dir: Path, card_repo_id: str) -> None:
    """Save the model, its image processor (with spectra: an `AstroPTProcessor` holding it and a spectrum
    feature extractor), the model card and the public conversion report."""
    from .. import AstroPTImageProcessor, AstroPTProcessor, AstroPTSpectrumFeatureExtractor

    config = model.config
    model.save_pretrained(output_dir)
    image_processor = AstroPTImageProcessor(image_size=config.image_size, num_channels=config.num_channels)
    if config.has_spectra:
        # upstream fed the flux as it is: no normalisation, so the converted model gets upstream's inputs
        AstroPTProcessor(image_processor, AstroPTSpectrumFeatureExtractor(normalisation="none")).save_pretrained(
            output_dir
        )
    else:
        image_processor.save_pretrained(output_dir)
    (output_dir / "README.md").write_text(render_model_card(report, card_repo_id))
    # the card and report travel to the hub: record the file name, not this machine's path
    public_report = {**asdict(report), "source": report.public_source, "output_dir": None}
    (output_dir / "conversion_report.json").write_text(json.dumps(public_report, indent=2, default=str) + "\n")


def _new_report(resolved, checkpoint: dict, model, weights: UpstreamWeights, mapping, config_kwargs: dict,
                notes: list[str]) -> ConversionReport:
    """The report of a conversion before its parity check."""
    from .. import __version__

    return ConversionReport(
        source=str(resolved.path),
        hub_source=resolved.description if resolved.repo_id else None,
        upstream_settings=_upstream_settings(checkpoint),
        warnings=list(mapping.warnings),
        detected_format=weights.format,
        format_description=weights.format_description,
        had_compile_prefix=weights.had_compile_prefix,
        num_parameters=sum(p.numel() for p in model.parameters()),
        image_size=model.config.image_size,
        image_size_source=mapping.image_size_source,
        config=config_kwargs,
        dropped_keys=dict(weights.dropped_keys),
        notes=notes,
        converter_version=__version__,
    )


def convert_upstream_checkpoint(
    path: str | Path,
    output_dir: str | Path | None,
    image_size: int | None = None,
    push_to_hub: bool = False,
    hub_model_id: str | None = None,
    parity_check: bool = True,
    checkpoint_file: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    keep_prefix_attention: bool = False,
    spectrum_wavelength_scale: float | None = None,
) -> ConversionReport:
    """Convert an upstream astroPT checkpoint (v1, v2.x or v3 layout) to a Transformers checkpoint.

    `path` is a local `ckpt.pt`, or with `checkpoint_file` a local folder or a hub repository holding it
    (e.g. `"Smith42/astroPT_v2.0"` and `"astropt/095M/ckpt.pt"`, at `revision`, through the hub cache
    `cache_dir`; see `resolve_checkpoint`). Loads the file without running code from it, maps weights and
    settings (objective and attention included) onto `AstroPTForPreTraining`, checks that the result
    reproduces upstream's forward pass (unless `parity_check=False`), and writes to `output_dir`: the model
    (safetensors, with the remote-code files), an `AstroPTImageProcessor`, a model card (README.md) and
    `conversion_report.json`. With `push_to_hub`, uploads the directory to `hub_model_id`.
    `output_dir=None` converts and checks without writing.

    Upstream `attn_type="prefix"` checkpoints trained with full bidirectional attention (upstream never
    applied the prefix mask): they are recorded as `attention_pattern="bidirectional"` with an
    `UpstreamPrefixAttentionWarning`, or as `"prefix"` with `keep_prefix_attention=True`.

    Images+spectra checkpoints (PyPI astropt 2.0.9's multimodal GPT) convert with both modalities; the
    converted model takes flux and wavelengths in Angstrom and places the spectrum patches as upstream's
    dataset did, by `(wavelength - 3000) / spectrum_wavelength_scale` (default 7000, astropt 2.0.9's
    scaling; give the scale a checkpoint's training data used if it was another). The output directory then
    holds an `AstroPTProcessor` (images and spectra, flux not normalised, as upstream fed it).

    Raises:
        UnsafeCheckpointError: the file's pickle asks for code outside the allowlist.
        CheckpointReferenceError: (a `ValueError`) the hub reference names no file that can be had.
        ValueError: unknown layout, unsupported modalities, or inconsistent settings (the message says which).
        ParityCheckError: the converted model's outputs differ from upstream's beyond fp32 tolerance.
    """
    if push_to_hub and not hub_model_id:
        raise ValueError("push_to_hub=True needs hub_model_id (e.g. 'your-name/astropt-089M')")
    if push_to_hub and output_dir is None:
        raise ValueError("push_to_hub=True needs an output_dir to stage the files in")

    resolved = resolve_checkpoint_source(path, checkpoint_file, revision, cache_dir)
    path = resolved.path
    source = resolved.description
    checkpoint = load_upstream_checkpoint(path)
    checkpoint.pop("optimizer", None)  # not converted; let it go (it is memory-mapped, never read)
    model, weights, mapping, config_kwargs, notes = _converted_model(
        checkpoint, image_size, source, keep_prefix_attention, spectrum_wavelength_scale
    )
    for warning in mapping.warnings:
        warnings.warn(warning, UpstreamPrefixAttentionWarning, stacklevel=2)
    report = _new_report(resolved, checkpoint, model, weights, mapping, config_kwargs, notes)
    if parity_check:
        _record_parity(report, model, weights, source)
    if output_dir is None:
        return report
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report.output_dir = str(output_dir)
    report.hub_model_id = hub_model_id if push_to_hub else None
    _write_conversion(report, model, output_dir, card_repo_id=hub_model_id or str(output_dir))
    if push_to_hub:
        _push_to_hub(output_dir, hub_model_id)
    return report
