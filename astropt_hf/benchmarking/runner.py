"""What to measure on which machine, and the rows the measurements become.

`settings_for(device, quick)` picks shapes and repeats; `run_benchmark(settings)` measures and returns the
table rows plus everything needed for the JSON.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .ceiling import measure_matmul_ceiling
from .completion import measure_completion
from .embeddings import measure_embeddings
from .input_pipeline import measure_input_pipeline
from .machine import MachineInfo, default_precision, describe_machine
from .memory import measure_peak_memory
from .preprocessing import measure_preprocessing
from .report import Row, error_row, rows_as_dicts
from .shapes import ModelShape
from .train_step import measure_train_step

MEASURES = ("preprocessing", "input_pipeline", "train", "embeddings", "completion", "memory", "train_large")
# dense bf16 tensor-core peaks (FLOP/s) from the vendors' spec sheets, matched against the device name
GPU_BF16_DENSE_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


@dataclass
class BenchmarkSettings:
    """Shapes, batch sizes and repeats of one benchmark run (see `settings_for`)."""

    device: str = "cpu"
    quick: bool = False
    repeats: int = 3
    slow_repeats: int = 3  # completion and embeddings: the longest measures, so they may repeat less often
    warmup_batch: int = 1
    train_shape: ModelShape = field(default_factory=lambda: ModelShape.preset("astropt-005M"))
    train_batch: int = 4
    # where bf16 is emulated (CPUs without amx_bf16/avx512_bf16) its matmuls are far slower than fp32,
    # so the bf16 comparison there uses this smaller shape to keep the run short
    emulated_bf16_shape: ModelShape = field(default_factory=lambda: ModelShape.preset("astropt-005M", image_size=128))
    emulated_bf16_batch: int = 1
    embed_batch: int = 32
    completion_batch: int = 1
    prompt_patches: int = 512
    new_patches: int = 128
    preprocess_images: int = 32
    pipeline_images: int = 64
    pipeline_batch: int = 16
    pipeline_workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    memory_shape: ModelShape = field(default_factory=lambda: ModelShape.preset("astropt-089M"))
    memory_batch: int = 1
    memory_isolated: bool = True
    large_shape: ModelShape = field(default_factory=lambda: ModelShape.preset("astropt-089M"))
    large_batch: int = 16
    peak_flops: float | None = None  # the accelerator's dense bf16 peak, for MFU against the spec sheet
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    measures: tuple[str, ...] = MEASURES

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def settings_for(device: str = "cpu", quick: bool = False, **overrides) -> BenchmarkSettings:
    """The reference shapes (the `BenchmarkSettings` defaults) on a GPU; the same shapes on a CPU with fewer
    repeats and a smaller embedding batch; tiny shapes and one repeat with `quick` (a smoke test)."""
    if quick:
        tiny = ModelShape(num_hidden_layers=2, num_attention_heads=4, hidden_size=64, image_size=64, patch_size=8)
        base = BenchmarkSettings(
            device=device, quick=True, repeats=1, slow_repeats=1, train_shape=tiny, train_batch=2,
            emulated_bf16_shape=tiny, emulated_bf16_batch=1, embed_batch=2, prompt_patches=32, new_patches=8,
            preprocess_images=4, pipeline_images=8, pipeline_batch=4, pipeline_workers=1, memory_shape=tiny,
            memory_batch=2, memory_isolated=False, large_shape=tiny, large_batch=2,
            measures=tuple(m for m in MEASURES if m != "train_large" or device.startswith("cuda")),
        )
    elif device.startswith("cuda"):
        base = BenchmarkSettings(
            device=device, repeats=5, slow_repeats=5, warmup_batch=4, embed_batch=32, completion_batch=16,
            preprocess_images=64, pipeline_images=256, pipeline_batch=32, memory_batch=8,
        )
    else:  # a full run on a CPU: the reference shapes, with an embedding batch of 8 (not 32) to keep it short
        base = BenchmarkSettings(
            device=device, repeats=5, slow_repeats=3, embed_batch=8,
            measures=tuple(m for m in MEASURES if m != "train_large"),
        )
    return dataclasses.replace(base, **overrides)


@dataclass
class BenchmarkRun:
    machine: MachineInfo
    settings: BenchmarkSettings
    rows: list[Row]
    ceilings: dict
    elapsed_s: float

    def payload(self) -> dict:
        return {
            "machine": self.machine.to_dict(),
            "settings": self.settings.to_dict(),
            "matmul_ceilings": self.ceilings,
            "rows": rows_as_dicts(self.rows),
            "elapsed_s": self.elapsed_s,
        }


def _throughput_row(measure: str, unit: str, result: dict, work: float, goal: float | None) -> Row:
    """Row for a timed pair where `work` units (tokens, images) are done per call."""
    timing = result["timing"]
    return Row(
        measure=measure,
        unit=unit,
        ours=work / timing.median_ours,
        upstream=work / timing.median_upstream,
        ratio=timing.median_ratio,
        goal=goal,
        details={**{k: v for k, v in result.items() if k != "timing"}, **timing.to_dict()},
    )


class _Runner:
    def __init__(self, settings: BenchmarkSettings, log: Callable[[str], None]):
        self.settings = settings
        self.device = settings.device
        self.log = log
        self.machine = describe_machine(self.device)
        self.default = default_precision(self.machine)
        self.bf16_emulated = self.device == "cpu" and not self.machine.cpu_has_fast_bf16
        if settings.peak_flops is None and self.device != "cpu":
            name = self.machine.device_name
            self.settings.peak_flops = next((v for k, v in GPU_BF16_DENSE_PEAKS.items() if k in name), None)
        self.rows: list[Row] = []
        self.ceilings: dict[str, dict] = {}
        self.train_images_per_s: dict[str, float] = {}
        self.pending_mfu: list[tuple] = []

    # --- helpers ----------------------------------------------------------------------------------
    def ceiling(self, precision: str, remeasure: bool = False) -> float:
        """The matmul ceiling for `precision`: the best rate seen so far (`remeasure`: measure once more)."""
        if precision not in self.ceilings or remeasure:
            result = measure_matmul_ceiling(self.device, precision)
            best = self.ceilings.get(precision)
            if best is None or result["flops_per_s"] > best["flops_per_s"]:
                self.ceilings[precision] = result
        return self.ceilings[precision]["flops_per_s"]

    def no_default_goal_reason(self) -> str:
        return (
            "no amx_bf16/avx512_bf16 on this CPU, so bf16 is emulated and our CPU default is fp32; the >= 2x "
            "goal relies on hardware bf16 and does not apply here (the ratio shown is fp32 vs fp32)"
        )

    def guarded(self, name: str, measure: Callable[[], None]) -> None:
        self.log(f"measuring {name} ...")
        start = time.perf_counter()
        try:
            measure()
        except Exception as error:  # keep going: an unattended run should still print the rest
            traceback.print_exc(file=sys.stderr)
            self.rows.append(error_row(name, error))
        self.log(f"  {name} done in {time.perf_counter() - start:.1f} s")

    # --- measures ---------------------------------------------------------------------------------
    def preprocessing(self) -> None:
        s = self.settings
        result = measure_preprocessing(s.train_shape, s.preprocess_images, self.device, s.repeats)
        timing = result["timing"]
        where = "on the GPU from uint8, host copy included" if self.device != "cpu" else "batched, from uint8"
        self.rows.append(Row(
            measure=f"preprocessing {s.train_shape.image_size}px uint8 -> ordered normalised patches",
            unit="ms/image",
            ours=1000 * timing.median_ours / result["images"],
            upstream=1000 * timing.median_upstream / result["images"],
            ratio=timing.median_ratio,
            goal=2.0,
            note=f"ours {where}; upstream per image on the CPU (reference path); max |difference| "
                 f"{result['max_abs_difference']:.1e} (upstream rounds to float16)",
            details={**timing.to_dict(), "images": result["images"]},
        ).judge())

    def input_pipeline(self) -> None:
        s = self.settings
        result = measure_input_pipeline(
            s.train_shape, s.pipeline_images, s.pipeline_batch, s.pipeline_workers, self.device, s.repeats
        )
        row = _throughput_row(
            f"input pipeline: PNG decode + preprocess, {result['workers']} workers", "images/s", result,
            result["images"], goal=None,
        )
        self.rows.append(row.judge())
        self.pipeline_row = row

    def train(self) -> None:
        s = self.settings
        for precision in ("fp32", "bf16"):
            shape, batch = s.train_shape, s.train_batch
            emulated = precision == "bf16" and self.bf16_emulated
            if emulated:
                shape, batch = s.emulated_bf16_shape, s.emulated_bf16_batch
            self.guarded(f"train {precision}", lambda p=precision, sh=shape, b=batch, e=emulated: self._train(p, sh, b, e))
        if self.device == "cpu":
            self.guarded("train CPU default", self._train_cpu_default)

    def _train(self, precision: str, shape: ModelShape, batch: int, emulated: bool) -> None:
        s = self.settings
        result = measure_train_step(shape, batch, precision, self.device, s.repeats, s.warmup_batch)
        label = f"train step {precision}{' autocast' if precision == 'bf16' else ''}"
        label += f" ({shape.describe()}, batch {batch})"
        row = _throughput_row(label, "tokens/s", result, result["tokens_per_step"], goal=1.2)
        if emulated:
            reason = ("bf16 is emulated on this CPU (no amx_bf16/avx512_bf16; see the bf16 matmul ceiling): measured "
                      "at a reduced shape to finish, both sides spend the step in the same emulated matmuls, so the "
                      "goal is judged where bf16 is native (GPU run)")
            self.rows.append(row.judge(applicable=False, reason=reason))
        else:
            self.rows.append(row.judge())
        if not emulated:  # an emulated dtype has no meaningful ceiling to compare against
            self.train_images_per_s[precision] = batch / result["timing"].median_ours
            self.train_images_per_s[precision + "_upstream"] = batch / result["timing"].median_upstream
            self._mfu_row(precision, result, shape, batch)

    def _mfu_row(self, precision: str, result: dict, shape: ModelShape, batch: int) -> None:
        """A placeholder row, filled in by `fill_mfu_rows` once the ceiling has been measured again at the end
        (a ceiling measured while someone else used the machine would flatter the MFU)."""
        row = Row(measure="", unit="%", ratio=result["timing"].median_ratio)
        self.pending_mfu.append((row, precision, result, shape, batch))
        self.rows.append(row)

    def fill_mfu_rows(self) -> None:
        for precision in {precision for _, precision, *_ in self.pending_mfu}:
            self.ceiling(precision, remeasure=True)
        for row, precision, result, shape, batch in self.pending_mfu:
            timing, flops, ceiling = result["timing"], result["flops_per_step"], self.ceiling(precision)
            row.measure = (f"MFU {precision} train step ({shape.describe()}, batch {batch}) vs measured "
                           f"{precision} matmul ceiling {ceiling / 1e9:,.1f} GFLOP/s")
            row.ours = 100 * flops / timing.median_ours / ceiling
            row.upstream = 100 * flops / timing.median_upstream / ceiling
            row.details = {"flops_per_step": flops, "ceiling_flops_per_s": ceiling}
            row.judge()

    def _train_cpu_default(self) -> None:
        s = self.settings
        if self.default == "fp32":
            fp32 = next((r for r in self.rows if r.measure.startswith("train step fp32")), None)
            if fp32 is None:
                raise RuntimeError("the fp32 train step was not measured")
            row = dataclasses.replace(fp32, measure="train step: our CPU default (fp32) vs upstream CPU default (fp32)",
                                      goal=2.0, goal_text="", note="", details={"same_as": fp32.measure})
            self.rows.append(row.judge(applicable=False, reason=self.no_default_goal_reason()))
            return
        result = measure_train_step(s.train_shape, s.train_batch, "bf16", self.device, s.repeats, s.warmup_batch,
                                    upstream_precision="fp32")
        row = _throughput_row("train step: our CPU default (bf16 autocast) vs upstream CPU default (fp32)",
                              "tokens/s", result, result["tokens_per_step"], goal=2.0)
        self.rows.append(row.judge())

    def embeddings(self) -> None:
        precisions = ["fp32"] + (["bf16"] if not self.bf16_emulated else [])
        for precision in precisions:
            self.guarded(f"embeddings {precision}", lambda p=precision: self._embeddings(p))
        if self.device == "cpu":
            self.guarded("embeddings CPU default", self._embeddings_cpu_default)

    def _embeddings(self, precision: str, upstream_precision: str | None = None) -> dict:
        s = self.settings
        layers = ("last", "middle") if upstream_precision is None else ("last",)
        results = measure_embeddings(s.train_shape, s.embed_batch, precision, self.device, s.slow_repeats, layers,
                                     warmup_batch=s.warmup_batch, upstream_precision=upstream_precision)
        if upstream_precision is None:
            for layer, goal in (("last", 1.2), ("middle", 1.8)):
                result = results[layer]
                label = (f"embeddings {precision}, {layer} block ({s.train_shape.describe()}, batch {s.embed_batch})")
                row = _throughput_row(label, "images/s", result, result["images"], goal=goal)
                if layer == "middle":
                    row.note = (f"ours runs {result['blocks_run_ours']} of {s.train_shape.num_hidden_layers} blocks; "
                                f"upstream's get_embeddings runs all {result['blocks_run_upstream']}")
                self.rows.append(row.judge())
        return results

    def _embeddings_cpu_default(self) -> None:
        if self.default == "fp32":
            last = next((r for r in self.rows if r.measure.startswith("embeddings fp32, last")), None)
            if last is None:
                raise RuntimeError("the fp32 last-block embeddings were not measured")
            row = dataclasses.replace(last, measure="embeddings: our CPU default (fp32) vs upstream CPU default (fp32)",
                                      goal=2.0, goal_text="", note="", details={"same_as": last.measure})
            self.rows.append(row.judge(applicable=False, reason=self.no_default_goal_reason()))
            return
        result = self._embeddings("bf16", upstream_precision="fp32")["last"]
        row = _throughput_row("embeddings: our CPU default (bf16 autocast) vs upstream CPU default (fp32), last block",
                              "images/s", result, result["images"], goal=2.0)
        self.rows.append(row.judge())

    def completion(self) -> None:
        s = self.settings
        precision = "bf16" if self.device != "cpu" else self.default
        result = measure_completion(s.train_shape, s.completion_batch, s.prompt_patches, s.new_patches, precision,
                                    self.device, s.slow_repeats)
        timing = result["timing"]
        self.rows.append(Row(
            measure=f"completion {precision}: {s.new_patches} patches after a {s.prompt_patches}-patch prompt, "
                    f"batch {s.completion_batch}",
            unit="s",
            ours=timing.median_ours,
            upstream=timing.median_upstream,
            ratio=timing.median_ratio,
            goal=10.0,
            note="ours with the key/value cache; upstream 2.0.9 `generate` re-runs the prompt every step and, with "
                 f"one image modality, appends nothing (it returned {result['upstream_patches_appended']} new "
                 "patches), so it did less work than a real completion: the ratio is a lower bound",
            details={**{k: v for k, v in result.items() if k != "timing"}, **timing.to_dict()},
        ).judge())

    def memory(self) -> None:
        s = self.settings
        precision = "bf16" if self.device != "cpu" else self.default
        specs = [
            {"impl": impl, "shape": s.memory_shape.to_dict(), "batch": s.memory_batch, "precision": precision,
             "device": self.device}
            for impl in ("ours", "ours_checkpointing", "upstream")
        ]
        # quick mode measures in this process (no interpreter start-ups; numbers only roughly comparable)
        results = measure_peak_memory(specs, isolated=s.memory_isolated)
        by_impl = {r["impl"]: r for r in results}
        upstream = by_impl["upstream"]["step_mib"]
        method = by_impl["ours"]["method"]
        what = ("CUDA max_memory_allocated" if self.device != "cpu" else "peak RSS (VmHWM)")
        for impl, label in (("ours", "no checkpointing"), ("ours_checkpointing", "ours with gradient checkpointing")):
            ours = by_impl[impl]["step_mib"]
            self.rows.append(Row(
                measure=f"train-step memory {precision} ({s.memory_shape.describe()}, batch {s.memory_batch}), "
                        f"{label}",
                unit="MiB",
                ours=ours,
                upstream=upstream,
                ratio=upstream / ours if ours > 0 else None,
                note=(f"{what} during one train step in a fresh process minus the memory in use before it "
                      f"(weights and AdamW state already allocated): activations, gradients and temporaries; "
                      f"method: {method}; upstream has no checkpointing") if impl == "ours" else "",
                details={"ours": by_impl[impl], "upstream": by_impl["upstream"]},
            ).judge())

    def train_large(self) -> None:
        s = self.settings
        result = measure_train_step(s.large_shape, s.large_batch, "bf16", self.device, s.repeats, s.warmup_batch)
        label = f"train step bf16 autocast ({s.large_shape.describe()}, batch {s.large_batch})"
        self.rows.append(_throughput_row(label, "tokens/s", result, result["tokens_per_step"], goal=None).judge())
        self._mfu_row("bf16", result, s.large_shape, s.large_batch)
        if s.peak_flops:
            timing, flops = result["timing"], result["flops_per_step"]
            self.rows.append(Row(
                measure=f"MFU bf16 train step ({s.large_shape.describe()}, batch {s.large_batch}) vs dense bf16 peak "
                        f"{s.peak_flops / 1e12:,.0f} TFLOP/s",
                unit="%",
                ours=100 * flops / timing.median_ours / s.peak_flops,
                upstream=100 * flops / timing.median_upstream / s.peak_flops,
                ratio=timing.median_ratio,
            ).judge())

    def keeps_up_row(self) -> None:
        """Can the input pipeline feed training? pipeline images/s over train-step images/s, default precision."""
        pipeline = getattr(self, "pipeline_row", None)
        key = self.default if self.default in self.train_images_per_s else "fp32"
        if pipeline is None or key not in self.train_images_per_s:
            return
        ours = pipeline.ours / self.train_images_per_s[key]
        upstream = pipeline.upstream / self.train_images_per_s[key + "_upstream"]
        self.rows.append(Row(
            measure=f"input pipeline images/s / train-step images/s ({key}, {self.settings.train_shape.describe()})",
            unit="x", ours=ours, upstream=upstream, goal_text=">= 1x (keeps up)",
            status="pass" if ours >= 1.0 else "fail",
            note="the pipeline was measured alone; during training its workers share the CPU with the model",
        ))

    def run(self) -> BenchmarkRun:
        start = time.perf_counter()
        torch.manual_seed(0)
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
            self.machine.torch_threads = torch.get_num_threads()
        self.log(f"machine: {self.machine.one_line()}")
        self.ceiling("fp32")
        if not self.bf16_emulated or "train" in self.settings.measures:
            self.ceiling("bf16")
        for name in self.settings.measures:
            if name not in MEASURES:
                raise ValueError(f"unknown measure {name!r}; expected some of {MEASURES}")
            if name in ("train", "embeddings"):  # these guard each precision separately
                getattr(self, name)()
            else:
                self.guarded(name, getattr(self, name))
        self.keeps_up_row()
        self.fill_mfu_rows()
        return BenchmarkRun(self.machine, self.settings, self.rows, self.ceilings, time.perf_counter() - start)


def run_benchmark(settings: BenchmarkSettings, log: Callable[[str], None] | None = None) -> BenchmarkRun:
    """Measure everything `settings.measures` names, ours against upstream, interleaved."""
    return _Runner(settings, log or (lambda message: print(message, file=sys.stderr, flush=True))).run()
