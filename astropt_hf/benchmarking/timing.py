"""Interleaved wall-clock timing of ours against upstream.

Shared machines are noisy, so ours and upstream alternate within every repeat (and swap who goes first
each repeat), the per-repeat ratio of the pair is kept, and medians are reported.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str) -> float:
    """Seconds one call of `fn` takes, with the device drained before and after and Python's GC paused."""
    synchronize(device)
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - start
    finally:
        gc.enable()


@dataclass
class PairTiming:
    """Seconds per call for ours and upstream, one entry per repeat, measured back to back."""

    ours: list[float] = field(default_factory=list)
    upstream: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        """upstream time / our time for each repeat (> 1: ours is faster)."""
        return [u / o for o, u in zip(self.ours, self.upstream)]

    @property
    def median_ours(self) -> float:
        return statistics.median(self.ours)

    @property
    def median_upstream(self) -> float:
        return statistics.median(self.upstream)

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios)

    def to_dict(self) -> dict:
        return {
            "seconds_ours": self.ours,
            "seconds_upstream": self.upstream,
            "ratios": self.ratios,
            "median_ratio": self.median_ratio,
        }


def interleaved(
    ours: Callable[[], object],
    upstream: Callable[[], object],
    repeats: int,
    device: str,
    warmup: tuple[Callable[[], object], Callable[[], object]] | None = None,
) -> PairTiming:
    """Time `ours` and `upstream` alternately `repeats` times after one warm-up call of each.

    `warmup` replaces the warm-up calls (e.g. a smaller batch that still builds kernels and optimizer state).
    """
    warm_ours, warm_upstream = warmup or (ours, upstream)
    warm_ours()
    warm_upstream()
    timing = PairTiming()
    for repeat in range(repeats):
        pair = [("ours", ours), ("upstream", upstream)]
        if repeat % 2:
            pair.reverse()
        for name, fn in pair:
            getattr(timing, name).append(time_call(fn, device))
    return timing


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for "bf16", a no-op for "fp32"."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision={precision!r} is not valid; expected 'fp32' or 'bf16'")
