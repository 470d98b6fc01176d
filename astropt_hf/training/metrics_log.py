"""`metrics.jsonl`: one JSON object per log or evaluation event, appended as the run goes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..run_files import write_text_atomic


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; null keeps the file strict JSON
    return value


class MetricsLog:
    """Append-only JSON-lines log; write from the main process only."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """All complete records; a line torn by a kill mid-write is dropped."""
        if not self.path.is_file():
            return []
        records = []
        with open(self.path) as handle:
            for line in handle:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run redoes those steps and logs them again."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def reset(self) -> None:
        if self.path.exists():
            self.path.unlink()


__all__ = ["MetricsLog"]
