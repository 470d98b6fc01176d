"""Choosing the mixed-precision mode for `mixed_precision: auto`."""

from __future__ import annotations

import functools
import os

import torch

# CPU flags that give bf16 matmuls in hardware (oneDNN uses them); without them torch emulates bf16 and a
# training step is many times slower than in fp32.
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def parse_cpu_flags(cpuinfo_text: str) -> set[str]:
    """The `flags` of the first processor in /proc/cpuinfo text (empty set if there is none)."""
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """Which of `FAST_BF16_CPU_FLAGS` this machine's CPU has (from /proc/cpuinfo; () where unreadable)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = parse_cpu_flags(handle.read())
    except OSError:
        flags = set()
    return tuple(flag for flag in FAST_BF16_CPU_FLAGS if flag in flags)


def resolve_mixed_precision(requested: str, cpu_flags: tuple[str, ...] | None = None) -> str:
    """'no', 'bf16' or 'fp16' for the configured value.

    `auto` means: what the Accelerate launch config asked for, if it asked for a low precision; else
    bf16 on a GPU that supports it (fp16 on older GPUs); else bf16 on a CPU with hardware bf16 (AMX or
    AVX512-BF16); else full precision. Without those flags torch emulates bf16 matmuls in software, which
    makes a bf16 autocast training step many times slower than fp32, so those CPUs train in fp32.
    """
    if requested != "auto":
        return requested
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launched in ("bf16", "fp16"):
        return launched
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if cpu_flags is None:
        cpu_flags = cpu_bf16_flags()
    return "bf16" if cpu_flags else "no"


__all__ = ["FAST_BF16_CPU_FLAGS", "cpu_bf16_flags", "parse_cpu_flags", "resolve_mixed_precision"]
