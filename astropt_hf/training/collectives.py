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


def first_failure(accelerator, failure: str | None) -> str | None:
    """`failure` (a description, or None when this process is fine) agreed over processes: None on every
    process if none failed, else on every process the description of the lowest failed rank (prefixed with
    its rank when there are several processes). One small all-reduce when nothing failed."""
    if not any_process(accelerator, failure is not None):
        return None
    if accelerator.num_processes == 1:
        return failure
    from accelerate.utils import gather_object

    reports = gather_object([(accelerator.process_index, failure)])
    rank, description = next((rank, text) for rank, text in reports if text is not None)
    return f"process {rank}: {description}"


def leave_process_group() -> None:
    """Tear down this process's share of the process group before the interpreter exits. Without it the
    C++ teardown at exit races the group's threads and can abort a process ("terminate called without an
    active exception"), most often one that finishes while another is still writing. Local: no collective."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


__all__ = ["any_process", "first_failure", "leave_process_group", "sum_over_processes"]
