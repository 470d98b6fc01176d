"""Map upstream's training objective and attention type onto `AstroPTConfig`'s `objective` and
`attention_pattern` (plus `mask_ratio` and `norm_pix_loss` for masked checkpoints).

Upstream's `model_args` carry `objective` ("ar" or "mae"), `attn_type` ("causal", "full" or "prefix"),
`mae_mask_ratio` and `norm_pix_loss`. What each combination computed upstream:

* ar + causal: next-patch regression with causal attention (every released model before the masked ones).
* mae + full: a learned mask token replaces the masked patch embeddings, all blocks run bidirectionally,
  the decoder reconstructs every position; the loss counts the masked positions.
* ar + full: next-patch regression with bidirectional attention. Upstream builds and trains it without
  complaint; every position also sees the patch it is asked to predict. Converted as it is.
* any + prefix: upstream builds a prefix-LM block mask, but its transformer blocks call attention with
  `block_mask=None`, so the mask never reaches the attention: these models trained fully bidirectional.
  By default the conversion records that (`attention_pattern="bidirectional"`, the faithful
  reproduction); `keep_prefix_attention=True` records `"prefix"` (AIM's recipe, which the model does
  implement) for users who want to fine-tune with the pattern upstream intended.
* mae + causal: upstream itself refuses it (MAE needs bidirectional attention); so does the converter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .upstream_formats import UpstreamWeights

OBJECTIVE_FOR_UPSTREAM = {"ar": "next_patch", "mae": "masked_patch"}
UPSTREAM_ATTN_TYPES = ("causal", "full", "prefix")
UPSTREAM_DEFAULT_MASK_RATIO = 0.15  # GPTConfig.mae_mask_ratio when a config does not set it


class UpstreamPrefixAttentionWarning(UserWarning):
    """An upstream `attn_type="prefix"` checkpoint: upstream never applied its prefix mask."""


def prefix_attention_warning(source: str, recorded_pattern: str) -> str:
    """What upstream computed for a prefix checkpoint, and what the conversion records."""
    recorded = (
        "recorded attention_pattern='bidirectional', which reproduces that computation; pass "
        "keep_prefix_attention=True to record 'prefix' instead"
        if recorded_pattern == "bidirectional"
        else "recorded attention_pattern='prefix' as asked (keep_prefix_attention=True): the converted model applies "
        "AIM's prefix mask, which this checkpoint never trained with; give prefix_length equal to the sequence "
        "length (or use the embeddings, whose default prefix is the whole image) to reproduce upstream's numbers"
    )
    return (
        f"{source}: model_args['attn_type']='prefix', but upstream's transformer blocks call attention with "
        f"block_mask=None, so its prefix mask was never applied: this model trained and runs with full "
        f"bidirectional attention over every patch; {recorded}"
    )


@dataclass
class ObjectiveMapping:
    """`AstroPTConfig` arguments for the objective and attention, with notes and warnings for the report."""

    config_kwargs: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def feeds_whole_sequence(self) -> bool:
        """Whether upstream fed every patch (masked objective) rather than all but the last (next-patch)."""
        return self.config_kwargs["objective"] == "masked_patch"


def _choice(model_args: dict, name: str, default: str, choices, source: str) -> str:
    value = model_args.get(name, default)
    if value not in choices:
        raise ValueError(f"{source}: not supported: model_args[{name!r}]={value!r}; expected one of {list(choices)}")
    return value


def _objective(model_args: dict, weights: UpstreamWeights, source: str) -> str:
    """Upstream's objective, checked against the weights (a masked model has a mask token)."""
    implied = "mae" if weights.has_mask_token else "ar"
    objective = _choice(model_args, "objective", implied, OBJECTIVE_FOR_UPSTREAM, source)
    if objective != implied:
        held = "hold a mask_token" if weights.has_mask_token else "hold no mask_token"
        raise ValueError(f"{source}: model_args['objective']={objective!r} disagrees with the weights, which {held}")
    return objective


def _masked_settings(model_args: dict, source: str, notes: list[str]) -> dict[str, Any]:
    ratio = model_args.get("mae_mask_ratio")
    if ratio is None:
        ratio = UPSTREAM_DEFAULT_MASK_RATIO
        notes.append(f"model_args lacks mae_mask_ratio: upstream's default {ratio} recorded as mask_ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
        raise ValueError(f"{source}: not supported: model_args['mae_mask_ratio']={ratio!r}; expected a value in (0, 1)")
    norm_pix_loss = model_args.get("norm_pix_loss", False)
    if not isinstance(norm_pix_loss, bool):
        raise ValueError(f"{source}: model_args['norm_pix_loss']={norm_pix_loss!r} is not True or False")
    notes.append(
        f"masked-patch model (upstream objective='mae', mae_mask_ratio={ratio}, norm_pix_loss={norm_pix_loss}); "
        "upstream masks each patch independently with that probability (at least one per image), this model's "
        "default mask takes exactly round(mask_ratio * patches) per image; give bool_masked_pos to choose"
    )
    return {"mask_ratio": float(ratio), "norm_pix_loss": norm_pix_loss}


def map_objective(
    model_args: dict, weights: UpstreamWeights, source: str = "checkpoint", keep_prefix_attention: bool = False
) -> ObjectiveMapping:
    """The objective and attention settings that reproduce what the upstream checkpoint computed."""
    objective = _objective(model_args, weights, source)
    attn_type = _choice(model_args, "attn_type", "causal", UPSTREAM_ATTN_TYPES, source)
    notes: list[str] = []
    warnings: list[str] = []
    kwargs: dict[str, Any] = {"objective": OBJECTIVE_FOR_UPSTREAM[objective]}
    if objective == "mae":
        if attn_type == "causal":
            raise ValueError(
                f"{source}: model_args has objective='mae' with attn_type='causal', a combination upstream refuses "
                "(a masked patch needs bidirectional attention); the checkpoint's settings are inconsistent"
            )
        kwargs.update(_masked_settings(model_args, source, notes))
    if attn_type == "causal":
        kwargs["attention_pattern"] = "causal"
    elif attn_type == "full":
        kwargs["attention_pattern"] = "bidirectional"
    else:
        kwargs["attention_pattern"] = "prefix" if keep_prefix_attention else "bidirectional"
        warnings.append(prefix_attention_warning(source, kwargs["attention_pattern"]))
    if objective == "ar" and attn_type != "causal":
        notes.append(
            f"next-patch model with non-causal attention (upstream attn_type={attn_type!r}): each position also saw "
            "the patch it predicts. Upstream fed the first T-1 patches of an image; to reproduce its numbers exactly, "
            "pass input_patches=model.image_to_patches(pixel_values)[:, :-1] (with the whole image every position "
            "also sees the last patch)"
        )
    return ObjectiveMapping(config_kwargs=kwargs, notes=notes, warnings=warnings)
