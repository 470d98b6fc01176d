"""Benchmark rows, their goals, and the markdown table / JSON they are written as."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

STATUSES = ("pass", "fail", "n/a", "info", "error")


@dataclass
class Row:
    """One line of the results table.

    `ratio` is how many times better ours is than upstream (throughput ours/upstream, time and memory
    upstream/ours), so > 1 always favours ours. `goal` is the minimum ratio wanted (None: reported only).
    """

    measure: str
    unit: str
    ours: float | None = None
    upstream: float | None = None
    ratio: float | None = None
    goal: float | None = None
    goal_text: str = ""
    status: str = "info"
    note: str = ""
    details: dict = field(default_factory=dict)

    def judge(self, applicable: bool = True, reason: str = "") -> Row:
        """Set `status` from the ratio and goal; a goal that does not apply here is "n/a" with its reason."""
        if self.goal is not None and not self.goal_text:
            self.goal_text = f">= {self.goal:g}x"
        if not applicable:
            self.status = "n/a"
            self.note = "; ".join(text for text in (reason, self.note) if text)
        elif self.goal is None or self.ratio is None:
            self.status = "info"
        else:
            self.status = "pass" if self.ratio >= self.goal else "fail"
        return self


def error_row(measure: str, error: BaseException) -> Row:
    return Row(measure=measure, unit="", status="error", note=f"{type(error).__name__}: {error}")


def format_number(value: float | None) -> str:
    """Three significant figures, thousands separated; "-" for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0:
        return "0"
    digits = max(0, 2 - int(math.floor(math.log10(abs(value)))))
    return f"{value:,.{digits}f}"


def markdown_table(rows: list[Row]) -> str:
    """The results as a markdown table, notes numbered underneath."""
    lines = ["| measure | ours | upstream | ratio | goal | pass/fail |", "|---|---:|---:|---:|---|---|"]
    notes: list[str] = []
    for row in rows:
        label = row.measure
        if row.note:
            notes.append(row.note)
            label += f" [{len(notes)}]"
        unit = f" {row.unit}" if row.unit else ""
        ours = format_number(row.ours) + (unit if row.ours is not None else "")
        upstream = format_number(row.upstream) + (unit if row.upstream is not None else "")
        ratio = f"{format_number(row.ratio)}x" if row.ratio is not None else "-"
        lines.append(f"| {label} | {ours} | {upstream} | {ratio} | {row.goal_text or '-'} | {row.status} |")
    lines += [""] + [f"[{index}] {note}" for index, note in enumerate(notes, 1)]
    return "\n".join(lines).rstrip() + "\n"


def _plain(value):
    """JSON-safe copy: dataclasses and objects with `to_dict` become dicts."""
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, payload: dict) -> None:
    with open(path, "w") as handle:
        json.dump(_plain(payload), handle, indent=2)
        handle.write("\n")


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    return [_plain(asdict(row)) for row in rows]
