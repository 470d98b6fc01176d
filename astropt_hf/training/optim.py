"""AdamW with upstream's weight-decay rule: decay matrices (2-D and up), never biases, norms or scalars."""

from __future__ import annotations

import inspect

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: tensors with >= 2 dims get `weight_decay`, the rest (biases, LayerNorm) none.

    Position embeddings are a 2-D table and are decayed, as upstream does.
    """
    decay, no_decay = [], []
    for _, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`, fused (one kernel for all parameters) where this torch offers it.

    Fused is used on CPUs too: the for-each step runs many small per-tensor operations, and for small models
    their overhead, not the arithmetic, is most of the step (more so on a machine other jobs load).
    """
    groups = parameter_groups(model, weight_decay)
    options = dict(lr=learning_rate, betas=tuple(betas), eps=eps)
    if wants_fused_adamw(model):
        try:
            return torch.optim.AdamW(groups, fused=True, **options)
        except RuntimeError:  # a device or dtype without the fused kernel
            pass
    return torch.optim.AdamW(groups, **options)


def wants_fused_adamw(model: nn.Module) -> bool:
    """Fused AdamW for floating-point parameters on the CPU or CUDA, if this torch has the option."""
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())


__all__ = ["build_optimizer", "parameter_groups", "wants_fused_adamw"]
