"""The machine's matmul ceiling: the FLOP rate of a large square matmul in a given dtype.

Model FLOP utilisation (MFU) is reported against this measured rate as well as, on GPUs, against the
vendor's peak, because a CPU's peak depends on clocks, SIMD width and the BLAS in ways no table captures.
"""

from __future__ import annotations

import math

import torch

from .timing import time_call

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def measure_matmul_ceiling(device: str, precision: str, repeats: int = 5, target_seconds: float = 0.3) -> dict:
    """Best FLOP/s over `repeats` of an n x n @ n x n matmul, n grown until one call takes about
    `target_seconds` (so that emulated dtypes, far slower than native ones, still finish quickly). The best, not the median:
    a ceiling is what the machine can do, and on a shared machine slower samples are other people's load."""
    dtype = PRECISION_DTYPES[precision]
    size, limit = 256, 8192 if device.startswith("cuda") else 4096
    while True:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        seconds = time_call(lambda a=a, b=b: a @ b, device)
        if seconds >= target_seconds / 8 or size >= limit:
            break
        size *= 2
    # fast devices: several matmuls per timed call so launch and sync overheads do not count
    calls = max(1, math.ceil(target_seconds / 8 / max(seconds, 1e-9)))

    def run() -> None:
        for _ in range(calls):
            a @ b

    time_call(run, device)  # warm-up at the final size
    seconds = min(time_call(run, device) for _ in range(repeats)) / calls
    return {"precision": precision, "size": size, "seconds": seconds, "flops_per_s": 2.0 * size**3 / seconds}
