"""Pieces both studies use: argv flag names, the probe galaxies, finished runs and the headline probe score."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PROBE_SCORE_METRICS", "completed_summary", "flag_names", "load_probe_source", "probe_score"]

# Probe metrics that stand for a feature set's quality, first found wins (regression first, then labels).
PROBE_SCORE_METRICS = ("r2", "accuracy", "f1")


def flag_names(argv: Sequence[str]) -> set[str]:
    """The `--key` names given in an argv list (`--key value`, `--key=value`, `--key-name` as `key_name`)."""
    return {item[2:].split("=", 1)[0].replace("-", "_") for item in argv if item.startswith("--")}


def completed_summary(run_dir: Path, max_steps: int) -> dict[str, Any] | None:
    """The `summary.json` of a study's run (one size, one variant) if its training completed all
    `max_steps`, else None (train or resume it). A run completed with another step count is refused: the
    study's runs must share one budget."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    if summary.get("status") != "completed" or summary.get("final_val_loss") is None:
        return None
    if summary.get("steps") != max_steps:
        raise ValueError(
            f"{path}: a completed run of {summary.get('steps')} steps, but this study trains {max_steps}; "
            f"use the same --max_steps or a new --output_dir"
        )
    return summary


def load_probe_source(arguments, split: str):
    """The galaxies the probes read: the pretraining dataset's `split`, loaded the way pretraining loads
    it (same synthetic cache)."""
    from astropt_hf.data.arguments import open_dataset

    return open_dataset(arguments.dataset_spec(split))



def probe_score(metrics: Mapping[str, Any]) -> tuple[str, float] | None:
    """(metric name, value) of one feature set's headline probe score: R², else accuracy, else F1."""
    for name in PROBE_SCORE_METRICS:
        if metrics.get(name) is not None:
            return name, float(metrics[name])
    return None
