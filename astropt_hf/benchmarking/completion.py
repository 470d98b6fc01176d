"""Completion: 128 new patches after a 512-patch prompt, ours (key/value cache) against upstream's
`generate` (which re-runs the whole sequence for every new patch)."""

from __future__ import annotations

import torch

from ..modeling_astropt import AstroPTForPreTraining
from .inputs import images_as_tensor, synthetic_images
from .shapes import ModelShape
from .timing import autocast, interleaved
from .upstream_reference import build_upstream_gpt, upstream_inputs


def measure_completion(
    shape: ModelShape, batch: int, prompt_patches: int, new_patches: int, precision: str, device: str, repeats: int
) -> dict:
    """Seconds to continue `batch` prompts of `prompt_patches` patches by `new_patches` patches.

    Upstream 2.0.9's `generate` with a single "images" modality re-runs the model on the whole prompt for
    every step but never appends the new patch (its output slice is empty), so each of its steps runs the
    prompt length rather than a growing sequence: it does slightly *less* work than a real completion,
    which makes the measured ratio a lower bound. `upstream_patches_appended` records what it returned.
    """
    torch.manual_seed(0)
    pixels = images_as_tensor(synthetic_images(batch, shape.image_size, shape.num_channels), device)
    ours = AstroPTForPreTraining(shape.config()).to(device).eval()
    upstream = build_upstream_gpt(shape, device).eval()
    with torch.inference_mode():
        prompt = ours.image_to_patches(pixels)[:, :prompt_patches].contiguous()
    appended = {}

    def ours_fn() -> torch.Tensor:
        with autocast(device, precision):
            return ours.generate_patches(prompt, new_patches, use_cache=True)

    def upstream_fn() -> dict:
        with autocast(device, precision):
            result = upstream.generate(upstream_inputs(prompt), new_tokens=new_patches, target_modality="images")
        appended["patches"] = result["images"].shape[1] - prompt_patches
        return result

    def upstream_warmup() -> None:  # one forward of the prompt: a whole `generate` is too slow to repeat
        with torch.inference_mode(), autocast(device, precision):
            upstream(upstream_inputs(prompt), target_modality="images")

    timing = interleaved(ours_fn, upstream_fn, repeats, device, warmup=(ours_fn, upstream_warmup))
    return {
        "timing": timing,
        "batch": batch,
        "prompt_patches": prompt_patches,
        "new_patches": new_patches,
        "precision": precision,
        "upstream_patches_appended": appended.get("patches"),
    }
