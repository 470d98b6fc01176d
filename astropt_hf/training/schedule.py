"""Learning-rate schedule: linear warmup, then cosine decay to `min_lr` (upstream astroPT / nanoGPT), built on
transformers' `get_cosine_with_min_lr_schedule_with_warmup`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_cosine_with_min_lr_schedule_with_warmup


def _multiplier(peak_lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> Callable[[int], float]:
    """Factor of `peak_lr` for optimizer update number `step` (0-based).

    transformers' warmup gives update 0 a learning rate of zero, so that update would be wasted. Read one step
    later, with one more warmup step and one more decay step, the same curve gives upstream's warmup
    `peak_lr * (step + 1) / (warmup_steps + 1)` and the same cosine. Past its end transformers' cosine rises
    again, so from `max(warmup_steps, decay_steps)` on the factor is held at `min_lr / peak_lr`.
    """
    # transformers hands its formula out only as a scheduler; this one is built on a throwaway optimizer so that
    # nothing of the real one (its learning rates, `initial_lr`) is touched before the real scheduler exists.
    throwaway = torch.optim.SGD([torch.zeros(1)], lr=peak_lr)
    cosine = get_cosine_with_min_lr_schedule_with_warmup(
        throwaway, num_warmup_steps=warmup_steps + 1, num_training_steps=decay_steps + 1, min_lr=min_lr
    ).lr_lambdas[0]
    end = max(warmup_steps, decay_steps)
    floor = min_lr / peak_lr

    def multiplier(step: int) -> float:
        return cosine(step + 1) if step < end else floor

    return multiplier


def learning_rate_at(step: int, peak_lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Learning rate of optimizer update number `step` (0-based).

    Warmup rises linearly to `peak_lr`, reaching it at `step == warmup_steps` (the first update uses
    `peak_lr / (warmup_steps + 1)`, never zero); the cosine then falls to `min_lr` at `decay_steps` and
    stays there.
    """
    if peak_lr <= 0:
        return 0.0
    return peak_lr * _multiplier(peak_lr, min_lr, warmup_steps, decay_steps)(step)


def build_scheduler(
    optimizer: torch.optim.Optimizer, peak_lr: float, min_lr: float, warmup_steps: int, decay_steps: int
) -> LambdaLR:
    """A `LambdaLR` following `learning_rate_at`; step it once per optimizer update.

    The optimizer's param groups must have `lr == peak_lr` (the lambda returns a multiplier of it).
    Its state is plain numbers (the multiplier is a closure, which `LambdaLR.state_dict` leaves out), so it is
    saved by `Accelerator.save_state` and loaded back without pickles.
    """
    if peak_lr <= 0:
        return LambdaLR(optimizer, lambda step: 0.0)
    return LambdaLR(optimizer, _multiplier(peak_lr, min_lr, warmup_steps, decay_steps))


__all__ = ["build_scheduler", "learning_rate_at"]
