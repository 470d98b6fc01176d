"""What ends a pretraining run early as "failed": a non-finite loss (divergence), non-finite weights about
to be saved, or an output the main process could not write (a full disk).

Each process notes what it sees as it goes, at no cost (the loss is on the host already for the loss sums);
the processes agree on it only at the loop's health checks, a collective, so that every process stops at
the same step and none is left waiting for another.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .checkpointing import find_latest_checkpoint
from .collectives import first_failure


def kept_checkpoint(output_dir: Path) -> str:
    latest = find_latest_checkpoint(output_dir)
    return f"the last good checkpoint, {latest.name}, is kept" if latest else "no checkpoint was saved yet"


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter this process holds is finite (one host sync)."""
    checks = [torch.isfinite(p.detach()).all() for p in model.parameters() if p.numel()]
    return bool(torch.stack(checks).all().item()) if checks else True


class RunHealth:
    """This process's observations, and `failure`: the agreed reason the run failed (None while it has not)."""

    def __init__(self, accelerator, output_dir: Path):
        self.accelerator, self.output_dir = accelerator, output_dir
        self.nonfinite_loss: tuple[int, float] | None = None  # (step, loss) of the first one on this process
        self.write_failure: str | None = None  # the first output this process could not write
        self.failure: str | None = None

    def observe_loss(self, step: int, value: float) -> None:
        if not math.isfinite(value) and self.nonfinite_loss is None:
            self.nonfinite_loss = (step, value)

    def write(self, what: str, action, *arguments, **keywords) -> None:
        """Run a write; a failure (a full disk) is kept for the next check instead of raised, so that the
        other processes are not left waiting. Once one failed, later writes are not tried."""
        if self.write_failure is not None:
            return
        try:
            action(*arguments, **keywords)
        except OSError as err:
            self.write_failure = f"could not write {what} in {self.output_dir} ({err})"

    def check(self, step: int, model: torch.nn.Module | None = None) -> bool:
        """Whether any process saw a non-finite loss or a failed write (or, given `model`, holds non-finite
        weights, which must not be saved); a collective. Sets `failure`."""
        failure = self.write_failure
        if self.nonfinite_loss is not None:
            bad_step, value = self.nonfinite_loss
            failure = (f"the training loss became {value} at step {bad_step} (a learning rate too high for this "
                       "model and batch size is the usual cause, the more so with grad_clip 0)")
        elif failure is None and model is not None and not weights_finite(model):
            failure = f"the weights became non-finite at step {step}"
        failure = first_failure(self.accelerator, failure)
        if failure is not None:
            self.failure = f"{failure}; nothing of it was saved: {kept_checkpoint(self.output_dir)}"
        return failure is not None


__all__ = ["RunHealth", "kept_checkpoint", "weights_finite"]
