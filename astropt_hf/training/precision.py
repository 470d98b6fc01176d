"""Choosing the mixed-precision mode for `mixed_precision: auto`."""

from __future__ import annotations

import os

import torch


def resolve_mixed_precision(requested: str) -> str:
    """'no', 'bf16' or 'fp16' for the configured value.

    `auto` means: what the Accelerate launch config asked for, if it asked for a low precision; else
    bf16 on a GPU that supports it (fp16 on older GPUs); else full precision. CPUs get full precision
    because bf16 autocast was measured 12-22x *slower* per training step on the development CPU (AMD EPYC
    with AVX2 but neither AVX512-BF16 nor AMX, where bf16 matmuls are emulated; one thread, CPU time, demo
    model 262 ms vs 3174 ms). On CPUs with AMX, set `mixed_precision: bf16` and measure.
    """
    if requested != "auto":
        return requested
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launched in ("bf16", "fp16"):
        return launched
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


__all__ = ["resolve_mixed_precision"]
