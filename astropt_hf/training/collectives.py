"""Small collectives of the pretraining loop. Every process must call them at the same point."""

from __future__ import annotations

import torch


def any_process(accelerator, flag: bool) -> bool:
    """True on every process if `flag` is true on any of them."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def sum_over_processes(accelerator, values: list[float]) -> list[float]:
    """Element-wise sum of `values` over processes, in float64 so that image counts stay exact."""
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        tensor = accelerator.reduce(tensor, reduction="sum")
    return tensor.tolist()


__all__ = ["any_process", "sum_over_processes"]
