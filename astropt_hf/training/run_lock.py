"""One run per output folder: an exclusive lock on `output_dir/.run.lock`, held by the main process for the
run's whole life, with the holder's PID and host in `output_dir/.run.lock.owner` for the refusal message.

The lock is an OS file lock (`filelock.FileLock`: `flock` on Unix, with filelock's own marker-file fallback
on file systems without it), so the operating system drops it when its process dies, even by SIGKILL: a
stale lock never blocks a new run. The owner file, though, stays behind after such a death; a new run that
gets the lock finds it, logs that it takes over from the dead run and rewrites it. An owner file naming a
process that still runs on this host means the file system's locks do not work across processes (some
network file systems): that run is refused too, rather than trusting a lock that did not hold.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..run_files import write_json_atomic
from .arguments import ConfigError
from .collectives import first_failure

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
# Not *.json: the hub upload takes every *.json of the folder, and the owner file is no part of a model.
OWNER_NAME = ".run.lock.owner"


class OutputDirLocked(ConfigError):
    """Another live run holds the output folder."""


def process_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


def _read_owner(path: Path) -> dict[str, Any]:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner.get("pid"):
        return "another run (its PID is not recorded yet)"
    started = owner.get("started")
    since = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if started else ""
    return f"another run (PID {owner['pid']} on host {owner.get('host', '?')}{since})"


class OutputDirLock:
    """The exclusive lock of one output folder; `acquire` raises `OutputDirLocked` naming the holder."""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self.owner_path = self.output_dir / OWNER_NAME
        self._lock: FileLock | None = None

    def acquire(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.output_dir / LOCK_NAME))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise OutputDirLocked(self._refusal(_read_owner(self.owner_path))) from None
        previous = _read_owner(self.owner_path)
        host, pid = socket.gethostname(), os.getpid()
        if previous.get("pid") and previous.get("pid") != pid:
            if previous.get("host") == host and process_alive(int(previous["pid"])):
                lock.release()
                raise OutputDirLocked(self._refusal(previous) + (
                    f" The file system let this process lock the folder as well, so its locks cannot be trusted;"
                    f" if that process is not a run, delete {self.owner_path}."
                ))
            logger.warning(
                "%s: taking over the lock of an earlier run (PID %s on host %s) that ended without releasing it",
                self.output_dir, previous["pid"], previous.get("host", "?"),
            )
        write_json_atomic(self.owner_path, {"pid": pid, "host": host, "started": time.time()})
        self._lock = lock

    def _refusal(self, owner: dict[str, Any]) -> str:
        return (
            f"output_dir {str(self.output_dir)!r} is in use by {_describe(owner)}: one run per folder. "
            "Wait for it to end, stop it, or choose another --output_dir."
        )

    def release(self) -> None:
        """Delete the owner file, then drop the lock (in that order, so a new holder's file is never lost)."""
        if self._lock is None:
            return
        try:
            if _read_owner(self.owner_path).get("pid") == os.getpid():
                self.owner_path.unlink()
        except OSError:
            pass
        self._lock.release()
        self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def __enter__(self) -> OutputDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_output_dir(accelerator, output_dir: str | os.PathLike) -> OutputDirLock | None:
    """Lock `output_dir` for this run: the main process takes the lock (the others share its folder, and on
    several machines the folder is shared too); if it cannot, every process raises `OutputDirLocked`.
    Returns the held lock on the main process, None on the others."""
    lock = OutputDirLock(output_dir) if accelerator.is_main_process else None
    failure = None
    if lock is not None:
        try:
            lock.acquire()
        except OutputDirLocked as err:
            failure = str(err)
        except OSError as err:
            failure = f"could not create or lock output_dir {str(output_dir)!r}: {err}"
    failure = first_failure(accelerator, failure)
    if failure is not None:
        if lock is not None:
            lock.release()
        raise OutputDirLocked(failure)
    return lock


__all__ = ["LOCK_NAME", "OWNER_NAME", "OutputDirLock", "OutputDirLocked", "lock_output_dir", "process_alive"]
