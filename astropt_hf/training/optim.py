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
    """AdamW over `parameter_groups`, fused on CUDA when this torch offers it."""
    groups = parameter_groups(model, weight_decay)
    on_cuda = any(p.is_cuda for group in groups for p in group["params"])
    extra = {"fused": True} if on_cuda and "fused" in inspect.signature(torch.optim.AdamW).parameters else {}
    return torch.optim.AdamW(groups, lr=learning_rate, betas=tuple(betas), eps=eps, **extra)


__all__ = ["build_optimizer", "parameter_groups"]
