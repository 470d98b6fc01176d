"""Side-by-side benchmark of astropt_hf against upstream astroPT (PyPI `astropt`), run by
`scripts/benchmark.py`.

Each measure lives in its own module (preprocessing, input_pipeline, train_step, embeddings, completion,
memory); `runner` decides shapes and repeats per machine and turns measurements into `report.Row`s.
Upstream's model is imported from its package; its per-image preprocessing is reproduced in
`upstream_reference` for comparison only.
"""

from .machine import MachineInfo, default_precision, describe_machine
from .report import Row, markdown_table, write_json
from .runner import MEASURES, BenchmarkRun, BenchmarkSettings, run_benchmark, settings_for
from .shapes import ModelShape, forward_flops_per_token, train_flops_per_token

__all__ = [
    "MEASURES",
    "BenchmarkRun",
    "BenchmarkSettings",
    "MachineInfo",
    "ModelShape",
    "Row",
    "default_precision",
    "describe_machine",
    "forward_flops_per_token",
    "markdown_table",
    "run_benchmark",
    "settings_for",
    "train_flops_per_token",
    "write_json",
]
