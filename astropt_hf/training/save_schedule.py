"""At which steps a pretraining run saves checkpoints, which of them are kept for good, and which hold a
loadable model.

`regular` saves every `save_steps` steps and at `max_steps`; `save_total_limit` keeps the newest few.
`log` adds log-spaced checkpoints at steps 1, 2, 4, 8, ... below the first regular save (`save_steps`, or
`max_steps` when `save_steps` is 0), as Pythia-style suites do, so that the fast early changes of a model
can be studied alongside the evenly spaced later ones. The log-spaced checkpoints are never pruned, and
with `log` every checkpoint carries a `model/` folder (`save_pretrained` of the model, the processor and
the remote code) that `from_pretrained` and `scripts/probe_checkpoints.py` load; `regular` writes one only
with `save_model_in_checkpoints`, since it doubles the size of each checkpoint.
"""

from __future__ import annotations

SAVE_SCHEDULES = ("regular", "log")

__all__ = ["SAVE_SCHEDULES", "checkpoint_steps", "is_log_checkpoint", "log_spaced_steps", "saves_model",
           "should_save"]  # fmt: skip


def _check(schedule: str) -> None:
    if schedule not in SAVE_SCHEDULES:
        raise ValueError(f"save schedule {schedule!r}: expected one of {list(SAVE_SCHEDULES)}")


def log_spaced_steps(max_steps: int, save_steps: int) -> list[int]:
    """Steps 1, 2, 4, ... strictly below the first regular save (`save_steps`; `max_steps` when it is 0)."""
    limit = min(save_steps or max_steps, max_steps)
    steps, step = [], 1
    while step < limit:
        steps.append(step)
        step *= 2
    return steps


def is_log_checkpoint(step: int, max_steps: int, save_steps: int, schedule: str) -> bool:
    """Whether the checkpoint of `step` is a log-spaced one (kept whatever `save_total_limit` says)."""
    _check(schedule)
    if schedule != "log" or step < 1 or step & (step - 1):  # not a power of two
        return False
    return step < min(save_steps or max_steps, max_steps)


def should_save(step: int, max_steps: int, save_steps: int, schedule: str = "regular") -> bool:
    """Whether the schedule saves a checkpoint after optimizer step `step` (a stop signal saves too)."""
    regular = step == max_steps or (save_steps > 0 and step % save_steps == 0)
    return regular or is_log_checkpoint(step, max_steps, save_steps, schedule)


def checkpoint_steps(max_steps: int, save_steps: int, schedule: str = "regular") -> list[int]:
    """Every step an uninterrupted run of `max_steps` steps saves a checkpoint at, in order."""
    _check(schedule)
    steps = set(range(save_steps, max_steps + 1, save_steps)) if save_steps > 0 else set()
    steps.add(max_steps)
    if schedule == "log":
        steps.update(log_spaced_steps(max_steps, save_steps))
    return sorted(steps)


def saves_model(schedule: str, save_model_in_checkpoints: bool) -> bool:
    """Whether the run's checkpoints carry a loadable `model/` folder."""
    _check(schedule)
    return schedule == "log" or bool(save_model_in_checkpoints)
