"""Files a run writes and reads back: atomic writes (a reader, or a run resumed after a kill, sees the old
file or the new one, never half of one) and settings guards (record a run's settings once, refuse to resume
it with settings that would change its results)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_path",
    "check_recorded_settings",
    "fsync_folder",
    "json_safe",
    "record_settings",
    "remove_stale_temporaries",
    "replace_path",
    "temporary_path",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh name beside `path` to write it under: `.<name>.<8 hex digits>.tmp`. The same folder keeps the
    final rename on one filesystem (so it is atomic); the leading dot and `.tmp` keep leftovers of a killed
    write out of globs such as `*.parquet` and easy to delete (`.*.tmp`); the random part lets processes
    write the same file without clashing."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete what killed writes of `path` left beside it (`temporary_path` names) and return their paths.
    Call it only where no other process is writing `path`, e.g. when the only writer starts."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[0-9a-f]{{8}}\.tmp$")
    if not path.parent.is_dir():
        return []
    stale = [p for p in path.parent.iterdir() if pattern.match(p.name)]
    for leftover in stale:
        _remove(leftover)
    return stale


def fsync_folder(path: str | os.PathLike) -> None:
    """Flush a folder's entries to disk (so a rename in it survives a power cut); a no-op where folders
    cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_path(temporary: str | os.PathLike, final: str | os.PathLike, durable: bool = False) -> None:
    """Put a finished file or folder `temporary` in place of `final` in one rename (`os.replace`).

    A folder already at `final` is deleted first (a rename cannot overwrite a non-empty folder), so only
    a file is replaced without any moment of absence. With `durable`, the parent folder is flushed after
    the rename, so it survives a power cut.
    """
    temporary, final = Path(temporary), Path(final)
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    os.replace(temporary, final)
    if durable:
        fsync_folder(final.parent)


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` (see `temporary_path`) to write a file or folder to; when the
    block ends normally it is put in place of `path` (`replace_path`), when it raises it is deleted.

        with atomic_path(output) as tmp:
            pq.write_table(table, tmp)
    """
    path = Path(path)
    temporary = temporary_path(path)
    try:
        yield temporary
        replace_path(temporary, path, durable=durable)
    finally:
        _remove(temporary)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_path`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    """`value` as indented JSON with a final newline, written atomically."""
    write_text_atomic(path, json.dumps(value, indent=2) + "\n")


def json_safe(value: Any) -> Any:
    """A JSON-ready copy: numpy scalars become Python numbers and non-finite floats None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def check_recorded_settings(path: Path, settings: Mapping[str, Any], what: str, advice: str) -> None:
    """Raise `ValueError` if `path` records settings that differ from `settings`, naming every changed key
    with its recorded and new value; `what` names the run ("this sweep"), `advice` ends the message.
    Nothing is checked before the settings are first recorded."""
    path = Path(path)
    if not path.is_file():
        return
    stored = json.loads(path.read_text())
    changed = {key: (stored.get(key), settings.get(key)) for key in set(stored) | set(settings)
               if stored.get(key) != settings.get(key)}
    if changed:
        details = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in sorted(changed.items()))
        raise ValueError(f"{path} records different settings for {what} ({details}). {advice}")


def record_settings(path: Path, settings: Mapping[str, Any]) -> None:
    """Write `settings` to `path` unless it exists already (the first run's settings stay the record)."""
    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, dict(settings))
