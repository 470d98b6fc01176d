"""Resumable checkpoints that are either complete or invisible.

A checkpoint is written into `checkpoint-<step>.tmp`, finished with a marker file, and only then renamed
to `checkpoint-<step>` (`os.replace`, atomic on one filesystem). A run killed mid-save leaves at most a
`.tmp` folder, which `find_latest_checkpoint` never picks and the next run deletes. Folders are named by
step, so the newest complete one is the one with the highest step and a marker.

Contents: `Accelerator.save_state` (model as safetensors, optimizer, scheduler, RNG per process; loaded
back with `weights_only=True`), `trainer_state.json` (counters, loss history), one `data_state_<rank>.json`
per process (where its data stream stands) and `run_settings.json` (the settings that define the run, which
a resume must repeat: see `KEYS_THAT_MAY_CHANGE_ON_RESUME`). No pickled Python objects of ours. Optionally
a `model/` folder that `from_pretrained` loads (see `save_schedule`). A checkpoint whose marker says
`"permanent": true` (a log-spaced one) is never rotated out.

A save that fails (a full disk, a vanished mount) raises `CheckpointSaveError` on every process, after its
`.tmp` folder is deleted; the checkpoints saved before it are untouched (old ones are only rotated out once
a new one is in place).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..run_files import check_recorded_settings, fsync_folder, json_safe, replace_path
from .collectives import first_failure

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TMP_SUFFIX = ".tmp"
COMPLETE_MARKER = "checkpoint_complete.json"
TRAINER_STATE_NAME = "trainer_state.json"
RUN_SETTINGS_NAME = "run_settings.json"

# Settings a resume may change: how often to log, evaluate and save, what to report and where, how to read
# the data (not which data, nor in what order), and how long to train. Every other key defines the run (the
# model, the processor, the data and its order, the optimiser and its schedule, the precision) and must be
# repeated, so that a resumed run ends where an uninterrupted run with the resume's settings would.
# `max_steps` may change only because the recorded `lr_decay_steps` is the resolved one (null means
# max_steps): a run whose max_steps changes keeps its schedule only with --lr_decay_steps set to the
# recorded value (past it, the learning rate stays at min_lr); otherwise the resume is refused.
# `num_workers` is fixed for streaming data, whose order depends on how the shards are dealt to workers.
# Evaluations draw from the RNG (each DataLoader takes a seed from it), so with dropout a changed eval_steps
# gives other dropout masks after the resume: a run as valid, not an identical one.
KEYS_THAT_MAY_CHANGE_ON_RESUME = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "max_steps",
    "data_cache_dir", "num_workers", "id_column", "gradient_checkpointing",
    "eval_steps", "eval_batches", "eval_batch_size", "num_plot_images", "log_steps",
    "save_steps", "save_total_limit", "save_model_in_checkpoints", "report_to", "run_name", "record_sample_ids",
    "push_to_hub", "hub_model_id", "hub_private",
})
# Defining keys added after checkpoints began recording their settings, each with the value that does what
# the runs before it did: a checkpoint that does not record one resumes with that value (and only with it).
KEYS_ADDED_SINCE_RECORDING: dict[str, Any] = {"save_schedule": "regular", "max_image_side_factor": 16}
MODEL_SUBFOLDER = "model"


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (on any process); the earlier checkpoints are intact."""
_NOT_ADDED = object()
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """Step of a `checkpoint-<step>` folder name, or None for any other name (including `.tmp`)."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """A checkpoint folder whose save finished (marker written last, before the rename)."""
    path = Path(path)
    return checkpoint_step(path) is not None and (path / COMPLETE_MARKER).is_file()


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest (lowest step) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and is_complete_checkpoint(p)]
    return sorted(found, key=lambda p: checkpoint_step(p))


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_resume_path(resume_from_checkpoint: str | None, output_dir: str | os.PathLike) -> Path | None:
    """`'latest'` -> newest complete checkpoint in `output_dir` (None if there is none yet, so that a
    restarted job starts afresh); a path -> that checkpoint, which must be complete."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        return find_latest_checkpoint(output_dir)
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint={str(path)!r}: no such folder")
    if not (path / COMPLETE_MARKER).is_file():
        raise ValueError(
            f"resume_from_checkpoint={str(path)!r} is not a complete checkpoint (no {COMPLETE_MARKER}); "
            "it may be from a save that was interrupted"
        )
    return path


def remove_incomplete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Delete leftovers of interrupted saves (`checkpoint-<step>.tmp`). Main process only."""
    output_dir = Path(output_dir)
    removed = []
    if not output_dir.is_dir():
        return removed
    for path in output_dir.iterdir():
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and path.name.endswith(TMP_SUFFIX):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            logger.warning("Removed incomplete checkpoint %s (an interrupted save)", path)
    return removed


def is_permanent_checkpoint(path: str | os.PathLike) -> bool:
    """A complete checkpoint saved to be kept for good (a log-spaced one): `rotate_checkpoints` leaves it."""
    try:
        marker = json.loads((Path(path) / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("permanent") is True


def rotate_checkpoints(output_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the `keep` newest complete checkpoints, not counting the permanent ones (which stay);
    returns what was deleted."""
    checkpoints = [path for path in list_checkpoints(output_dir) if not is_permanent_checkpoint(path)]
    doomed = checkpoints[: max(0, len(checkpoints) - keep)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def _init_values(obj) -> dict[str, Any]:
    """The values of `obj`'s constructor arguments, as it holds them (defaults included)."""
    names = inspect.signature(type(obj).__init__).parameters
    return {name: getattr(obj, name) for name in names if name not in ("self", "kwargs") and hasattr(obj, name)}


def run_settings(flat_settings: dict[str, Any], lr_decay_steps: int, model_config=None, processor=None) -> dict:
    """The settings a checkpoint records and a resume must repeat: every key of `flat_settings` (a run's
    `to_flat_dict()`) but `KEYS_THAT_MAY_CHANGE_ON_RESUME`, with `lr_decay_steps` resolved and every argument
    of `model_config` and `processor` as they resolved it (so that a default written out is no change), as
    JSON values."""
    may_change = KEYS_THAT_MAY_CHANGE_ON_RESUME - ({"num_workers"} if flat_settings.get("streaming") else set())
    settings = {k: v for k, v in flat_settings.items() if k not in may_change}
    for obj in (model_config, processor):
        if obj is not None:
            settings.update(_init_values(obj))
    settings["lr_decay_steps"] = lr_decay_steps
    return json.loads(json.dumps(json_safe(settings), default=str))


def check_run_settings(checkpoint: str | os.PathLike, settings: dict[str, Any]) -> bool:
    """Raise `ValueError` naming every key (recorded -> new) where `settings` differ from those recorded in
    `checkpoint`; returns False for a checkpoint saved before settings were recorded (nothing to check)."""
    path = Path(checkpoint) / RUN_SETTINGS_NAME
    if not path.is_file():
        return False
    recorded = json.loads(path.read_text())
    settings = {key: value for key, value in settings.items()
                if key in recorded or KEYS_ADDED_SINCE_RECORDING.get(key, _NOT_ADDED) != value}  # fmt: skip
    check_recorded_settings(
        path, settings, "the run it resumes",
        "Resume with the recorded values (a changed max_steps needs --lr_decay_steps at the recorded value), "
        "or start afresh with --overwrite_output_dir true or another --output_dir.",
    )
    return True


def _write_json(path: Path, payload: Any) -> None:
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def _attempt(action) -> str | None:
    """Run `action`; a failure becomes its one-line description. Any error counts, not only `OSError`: a
    full disk reaches us as `OSError` from our writes, `SafetensorError` from the model file and
    `RuntimeError` from torch's zip writer."""
    try:
        action()
    except Exception as err:  # noqa: BLE001
        if not isinstance(err, OSError):
            logger.debug("checkpoint save failed", exc_info=True)
        return f"{type(err).__name__}: {err}"
    return None


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    trainer_state: dict,
    data_state: dict,
    total_limit: int,
    settings: dict | None = None,
    permanent: bool = False,
    export_model: Callable[[Path], str | None] | None = None,
) -> Path:
    """Save a resumable checkpoint atomically; every process must call this.

    Args:
        accelerator: the run's `Accelerator` (its prepared model/optimizer/scheduler are saved).
        step: optimizer steps done; names the folder.
        trainer_state: JSON-able counters shared by all processes (written by the main process).
        data_state: JSON-able position of this process's data stream.
        total_limit: complete checkpoints to keep after this one is in place.
        settings: the run's settings (`run_settings`), recorded for the resume check.
        permanent: never rotated out (a log-spaced checkpoint); it does not count towards `total_limit`.
        export_model: called on every process with the checkpoint's `model/` folder, writes a loadable model
            there (`output_dir.save_final_model`) and returns None or, on every process, why it could not.

    Raises:
        CheckpointSaveError: on every process, if any of them failed to write its part.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f"{CHECKPOINT_PREFIX}{step}{TMP_SUFFIX}"
    main = accelerator.is_main_process

    def prepare() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    def write_own_part() -> None:
        accelerator.save_state(str(tmp), safe_serialization=True)
        _write_json(tmp / f"data_state_{accelerator.process_index}.json", data_state)

    def write_model() -> None:
        failure = export_model(tmp / MODEL_SUBFOLDER)
        if failure is not None:
            raise OSError(failure)

    def finish() -> None:
        _write_json(tmp / TRAINER_STATE_NAME, trainer_state)
        if settings is not None:
            _write_json(tmp / RUN_SETTINGS_NAME, settings)
        _write_json(tmp / COMPLETE_MARKER, {"step": step, "num_processes": accelerator.num_processes,
                                            "saved_at": time.time(), "permanent": bool(permanent)})
        fsync_folder(tmp)
        # Drops a checkpoint of the same step from an earlier, interrupted attempt.
        replace_path(tmp, final, durable=True)
        rotate_checkpoints(output_dir, total_limit)

    # Each phase ends in an agreement (a collective) instead of a plain barrier, so that a process whose
    # write failed does not leave the others waiting for it.
    phases = (prepare if main else None, write_own_part, *((write_model,) if export_model else ()),
              finish if main else None)
    for phase in phases:
        failure = first_failure(accelerator, _attempt(phase) if phase is not None else None)
        if failure is not None:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            latest = find_latest_checkpoint(output_dir)
            kept = f"the latest complete checkpoint, {latest.name}, is kept" if latest else "no earlier checkpoint"
            raise CheckpointSaveError(f"could not save {final.name} in {output_dir} ({failure}); {kept}")
    return final


def load_checkpoint(accelerator, path: str | os.PathLike) -> tuple[dict, dict]:
    """Restore model, optimizer, scheduler and RNG; returns (trainer_state, this process's data_state)."""
    path = Path(path)
    marker = json.loads((path / COMPLETE_MARKER).read_text())
    if marker.get("num_processes", accelerator.num_processes) != accelerator.num_processes:
        raise ValueError(
            f"checkpoint {path} was saved by {marker['num_processes']} processes; this run has "
            f"{accelerator.num_processes}. Exact resume needs the same number of processes (the data "
            "position and RNG are per process)."
        )
    accelerator.load_state(str(path))
    trainer_state = json.loads((path / TRAINER_STATE_NAME).read_text())
    data_state = json.loads((path / f"data_state_{accelerator.process_index}.json").read_text())
    return trainer_state, data_state


class StopSignal:
    """Turns SIGTERM (and SIGINT, if asked) into a flag the loop checks between steps.

    The loop then saves a checkpoint and exits cleanly instead of dying mid-step. A second SIGINT
    while the flag is set falls back to the default handler (Ctrl-C twice still stops at once).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.received: int | None = None
        self._signals = signals
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.received = signum
        logger.warning("Received %s: will save a checkpoint and stop after this step", signal.Signals(signum).name)

    def __enter__(self) -> StopSignal:
        for signum in self._signals:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    @property
    def requested(self) -> bool:
        return self.received is not None


__all__ = [
    "COMPLETE_MARKER",
    "KEYS_ADDED_SINCE_RECORDING",
    "KEYS_THAT_MAY_CHANGE_ON_RESUME",
    "MODEL_SUBFOLDER",
    "RUN_SETTINGS_NAME",
    "CheckpointSaveError",
    "check_run_settings",
    "run_settings",
    "StopSignal",
    "checkpoint_step",
    "find_latest_checkpoint",
    "is_complete_checkpoint",
    "is_permanent_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "remove_incomplete_checkpoints",
    "resolve_resume_path",
    "rotate_checkpoints",
    "save_checkpoint",
]
