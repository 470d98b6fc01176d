"""Files a run writes and reads back: atomic writes (a reader never sees half a file) and settings guards
(record a run's settings once, refuse to resume it with settings that would change its results)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_recorded_settings", "json_safe", "record_settings", "write_json_atomic", "write_text_atomic"]


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def write_json_atomic(path: Path, value: Any) -> None:
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
