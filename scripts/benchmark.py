#!/usr/bin/env python
"""Benchmark astropt_hf against upstream astroPT on the same work, and print a markdown table.

    python scripts/benchmark.py --quick                    # smoke test, tiny shapes, < 1 minute
    python scripts/benchmark.py --output results.json      # full CPU run at the upstream 5M shape (~6-9 min)
    python scripts/benchmark.py --device cuda --output results_cuda.json   # GPU: issue shapes, 89M bf16 + MFU

Needs upstream's model: pip install --no-deps astropt==2.0.9 loralib einops
"""

import os
import sys
from dataclasses import dataclass

# Idle OpenMP threads sleep instead of spinning (as scripts/pretrain.py): on a busy machine spinning threads
# stall every parallel region, which distorts both sides. Set before torch loads; the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from astropt_hf.benchmarking import (  # noqa: E402
    MEASURES,
    markdown_table,
    run_benchmark,
    settings_for,
    write_json,
)
from astropt_hf.command_line import ArgumentParser, option  # noqa: E402


@dataclass
class BenchmarkArguments:
    device: str = option("cpu", "cpu or cuda[:N] (default: cpu)")
    quick: bool = option(False, "tiny shapes, one repeat: a smoke test")
    output: str | None = option(None, "write the rows, machine and settings as JSON here")
    only: str | None = option(None, f"comma-separated subset of: {', '.join(MEASURES)}")
    repeats: int | None = option(None, "repeats of the fast measures (default: per device)")
    slow_repeats: int | None = option(None, "repeats of embeddings and completion")
    embed_batch: int | None = option(None, "embedding batch (issue: 32; CPU default: 8)")
    train_batch: int | None = option(None, "train-step batch (default: 4)")
    large_batch: int | None = option(None, "batch of the GPU 89M bf16 train step (default: 16)")
    threads: int | None = option(None, "torch intra-op threads for both sides (default: torch's)")
    peak_tflops: float | None = option(
        None, "accelerator bf16 dense peak for MFU (default: from the GPU name, H100/H200 989, A100 312)"
    )


def parse_args(argv: list[str] | None = None) -> BenchmarkArguments:
    return ArgumentParser(BenchmarkArguments, description=__doc__).parse(argv)[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {
        key: value
        for key, value in {
            "repeats": args.repeats,
            "slow_repeats": args.slow_repeats,
            "embed_batch": args.embed_batch,
            "train_batch": args.train_batch,
            "large_batch": args.large_batch,
            "peak_flops": args.peak_tflops * 1e12 if args.peak_tflops else None,
            "threads": args.threads,
        }.items()
        if value is not None
    }
    if args.only:
        overrides["measures"] = tuple(name.strip() for name in args.only.split(",") if name.strip())
    run = run_benchmark(settings_for(args.device, quick=args.quick, **overrides))
    print(f"Machine: {run.machine.one_line()}")
    ceilings = ", ".join(f"{k} {v['flops_per_s'] / 1e9:,.1f} GFLOP/s" for k, v in run.ceilings.items())
    print(f"Matmul ceiling (measured): {ceilings}; total time {run.elapsed_s:.0f} s\n")
    print(markdown_table(run.rows))
    if args.output:
        write_json(args.output, run.payload())
        print(f"wrote {args.output}")
    return 1 if any(row.status == "error" for row in run.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
