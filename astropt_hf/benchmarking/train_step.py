"""Train step (forward + backward + grad clip + AdamW) on the same images, ours against upstream."""

from __future__ import annotations

import torch

from ..modeling_astropt import AstroPTForPreTraining
from ..training.optim import build_optimizer
from .inputs import images_as_tensor, synthetic_images
from .shapes import ModelShape, train_flops_per_token
from .timing import autocast, interleaved
from .upstream_reference import build_upstream_gpt, upstream_adamw, upstream_train_batch

GRAD_CLIP = 1.0


def enable_checkpointing(model: AstroPTForPreTraining) -> None:
    """Activation (gradient) checkpointing, under whichever name this transformers version uses."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


class OurTrainer:
    """One optimizer step of ours on uint8 images (patchify included: it is part of our train step)."""

    def __init__(self, shape: ModelShape, device: str, precision: str, checkpointing: bool = False):
        self.model = AstroPTForPreTraining(shape.config()).to(device).train()
        if checkpointing:
            enable_checkpointing(self.model)
        # the optimizer pretraining builds: (0.9, 0.95), decay 0.1 on >= 2-D weights, fused
        self.optimizer = build_optimizer(self.model, learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
        self.device, self.precision = device, precision

    def step(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            loss = self.model(pixel_values=pixel_values).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


class UpstreamTrainer:
    """One optimizer step of upstream's GPT on its (X, Y) batch, as its training loop does it."""

    def __init__(self, shape: ModelShape, device: str, precision: str):
        self.model = build_upstream_gpt(shape, device).train()
        self.optimizer = upstream_adamw(self.model, device)
        self.device, self.precision = device, precision

    def step(self, inputs: dict, targets: dict) -> torch.Tensor:
        with autocast(self.device, self.precision):
            _, loss = self.model(inputs, targets=targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def measure_train_step(
    shape: ModelShape,
    batch: int,
    precision: str,
    device: str,
    repeats: int,
    warmup_batch: int = 1,
    upstream_precision: str | None = None,
) -> dict:
    """Seconds per train step on `batch` images of `shape.num_patches` tokens, ours against upstream.

    Both see the same images: ours as uint8 pixels (our step includes the patchify), upstream as the
    normalised spiral-ordered patches it would get from its data loader (patches 0..T-2 in, 1..T-1 as
    targets). Tokens per step = batch x patches per image for both. `upstream_precision` (default: the
    same as ours) compares against upstream at another precision, e.g. its CPU default fp32.
    """
    torch.manual_seed(0)
    pixels = images_as_tensor(synthetic_images(batch, shape.image_size, shape.num_channels), device)
    ours = OurTrainer(shape, device, precision)
    upstream = UpstreamTrainer(shape, device, upstream_precision or precision)
    with torch.no_grad():
        inputs, targets = upstream_train_batch(ours.model.image_to_patches(pixels))
    small = min(warmup_batch, batch)
    small_inputs = {key: value[:small] for key, value in inputs.items()}
    small_targets = {key: value[:small] for key, value in targets.items()}
    timing = interleaved(
        lambda: ours.step(pixels),
        lambda: upstream.step(inputs, targets),
        repeats,
        device,
        warmup=(lambda: ours.step(pixels[:small]), lambda: upstream.step(small_inputs, small_targets)),
    )
    tokens = batch * shape.num_patches
    return {
        "timing": timing,
        "tokens_per_step": tokens,
        "images_per_step": batch,
        "flops_per_step": train_flops_per_token(shape, shape.num_patches) * tokens,
        "precision": precision,
        "upstream_precision": upstream_precision or precision,
    }
