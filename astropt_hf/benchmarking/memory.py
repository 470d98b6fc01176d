"""Peak memory of one train step, each measurement in a fresh process.

What is measured: the peak during one train step (forward, backward, grad clip, AdamW step) minus the memory
in use just before it (weights, AdamW state, inputs, libraries): activations + gradients + temporaries, the
part that gradient checkpointing and the implementation change. The AdamW state is created beforehand by
one optimizer step on zero gradients, so that its one-off allocation does not hide the activations.
- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus `memory_allocated` before.
- CPU: the kernel's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs just before
  the step) minus VmRSS before it. The child runs with glibc's mmap threshold pinned at 64 KiB so that freed
  tensors go back to the kernel and the RSS follows live tensors rather than the allocator's free lists.

Run as `python -m astropt_hf.benchmarking.memory '<json list of specs>'`; prints one JSON line per spec.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import torch

from .inputs import images_as_tensor, synthetic_images
from .shapes import ModelShape

MIB = 2**20
IMPLEMENTATIONS = ("ours", "ours_checkpointing", "upstream")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} field")


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # "5" resets the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def create_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Allocate the optimizer's state (AdamW moments) with one step on zero gradients, then drop the gradients."""
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_in_this_process(spec: dict) -> dict:
    """Peak memory of one train step for `spec` = {impl, shape, batch, precision, device}."""
    from .train_step import OurTrainer, UpstreamTrainer
    from .upstream_reference import upstream_train_batch

    impl, device, precision = spec["impl"], spec["device"], spec["precision"]
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"memory spec impl={impl!r} is not valid; expected one of {IMPLEMENTATIONS}")
    shape = ModelShape(**spec["shape"])
    torch.manual_seed(0)
    pixels = images_as_tensor(synthetic_images(spec["batch"], shape.image_size, shape.num_channels), device)
    if impl == "upstream":
        trainer = UpstreamTrainer(shape, device, precision)
        from ..modeling_astropt import AstroPTPatchify

        with torch.no_grad():
            inputs, targets = upstream_train_batch(AstroPTPatchify(shape.config())(pixels))
        del pixels
        step = lambda: trainer.step(inputs, targets)  # noqa: E731
    else:
        trainer = OurTrainer(shape, device, precision, checkpointing=impl == "ours_checkpointing")
        step = lambda: trainer.step(pixels)  # noqa: E731
    create_optimizer_state(trainer.model, trainer.optimizer)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        method = "torch.cuda.max_memory_allocated"
    else:
        before = _status_kib("VmRSS") * 1024
        method = "VmHWM reset" if _reset_cpu_peak() else "ru_maxrss (peak not resettable here)"
        step()
        peak = _status_kib("VmHWM") * 1024
    return {**spec, "before_mib": before / MIB, "peak_mib": peak / MIB, "step_mib": (peak - before) / MIB,
            "method": method}


def measure_peak_memory(specs: list[dict], isolated: bool = True) -> list[dict]:
    """Run every spec in its own fresh Python process and collect the results. Not `isolated` (the quick
    smoke test), they run one after another in this process: cheaper, and only roughly comparable."""
    if not isolated:
        results = []
        for spec in specs:
            results.append(measure_in_this_process(spec))
            gc.collect()
        return results
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    results = []
    for group in ([spec] for spec in specs):
        completed = subprocess.run(
            [sys.executable, "-m", "astropt_hf.benchmarking.memory", json.dumps(group)],
            capture_output=True, text=True, env=env, check=False,
        )
        if completed.returncode != 0:
            names = ", ".join(spec["impl"] for spec in group)
            raise RuntimeError(f"memory probe for {names} failed:\n{completed.stderr[-2000:]}")
        lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
        results += [json.loads(line) for line in lines[-len(group):]]
    return results


def main(argv: list[str] | None = None) -> None:
    for spec in json.loads((argv or sys.argv[1:])[0]):
        print(json.dumps(measure_in_this_process(spec)), flush=True)
        gc.collect()


if __name__ == "__main__":
    main()
