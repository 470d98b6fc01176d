"""Learning-rate schedule: linear warmup, then cosine decay to `min_lr` (upstream astroPT / nanoGPT)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def learning_rate_at(step: int, peak_lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Learning rate of optimizer update number `step` (0-based).

    Warmup rises linearly to `peak_lr`, reaching it at `step == warmup_steps` (the first update uses
    `peak_lr / (warmup_steps + 1)`, never zero); the cosine then falls to `min_lr` at `decay_steps` and
    stays there.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak_lr - min_lr)


def build_scheduler(
    optimizer: torch.optim.Optimizer, peak_lr: float, min_lr: float, warmup_steps: int, decay_steps: int
) -> LambdaLR:
    """A `LambdaLR` following `learning_rate_at`; step it once per optimizer update.

    The optimizer's param groups must have `lr == peak_lr` (the lambda returns a multiplier of it).
    Its state is plain numbers, so it is saved by `Accelerator.save_state` and loaded back without pickles.
    """
    if peak_lr <= 0:
        return LambdaLR(optimizer, lambda step: 0.0)

    def multiplier(step: int) -> float:
        return learning_rate_at(step, peak_lr, min_lr, warmup_steps, decay_steps) / peak_lr

    return LambdaLR(optimizer, multiplier)


__all__ = ["build_scheduler", "learning_rate_at"]
